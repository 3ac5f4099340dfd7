//! A fault-injection proxy between a DynamoDB client and a DynamoDB-API
//! server (dynoxide): it forwards requests as they are, or, as the test
//! says, stalls them, answers 500, throttles one key, or drops the
//! connection. For tests and benches of how the limiter behaves when the
//! table misbehaves.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy does to the requests it receives from now on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Fault {
    /// Forward every request.
    #[default]
    None,
    /// Hold every request this long, then forward it.
    Stall(Duration),
    /// Answer every request with a 500 `InternalServerError`.
    ServerError,
    /// Answer requests that name this partition key with
    /// `ThrottlingException`; forward the others.
    ThrottleKey(String),
    /// A stand-in for DynamoDB's per-item ceiling: forward at most
    /// `per_sec` requests naming the partition key `key` in any second,
    /// and answer the others with `ThrottlingException`; forward the rest.
    CeilingKey {
        /// The partition key (`tenant#acme`).
        key: String,
        /// Requests forwarded per second, at most.
        per_sec: usize,
    },
    /// Close the connection without an answer.
    Drop,
}

/// A running proxy; the fault can change at any time.
#[derive(Clone, Debug)]
pub struct FaultProxy {
    endpoint: String,
    fault: Arc<Mutex<Fault>>,
    requests: Arc<std::sync::atomic::AtomicU64>,
    /// When the requests forwarded under a ceiling went, within the last
    /// second.
    window: Arc<Mutex<std::collections::VecDeque<tokio::time::Instant>>>,
    /// Requests answered with `ThrottlingException`.
    throttled: Arc<std::sync::atomic::AtomicU64>,
    /// Requests naming a ceiling's key that were forwarded.
    forwarded: Arc<std::sync::atomic::AtomicU64>,
}

impl FaultProxy {
    /// A proxy on a free loopback port in front of `upstream`
    /// (`http://host:port`). Call it inside a Tokio runtime.
    pub async fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port is free");
        let endpoint = format!("http://{}", listener.local_addr().expect("an address"));
        let upstream = upstream
            .strip_prefix("http://")
            .expect("an http:// upstream")
            .to_owned();
        let proxy = Self {
            endpoint,
            fault: Arc::default(),
            requests: Arc::default(),
            window: Arc::default(),
            throttled: Arc::default(),
            forwarded: Arc::default(),
        };
        let serving = proxy.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(serving.clone().serve(socket, upstream.clone()));
            }
        });
        proxy
    }

    /// Where clients connect.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// From now on, do `fault`.
    pub fn set(&self, fault: Fault) {
        *self.fault.lock().unwrap_or_else(|e| e.into_inner()) = fault;
    }

    /// Requests received so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Requests answered with `ThrottlingException` so far.
    pub fn throttled(&self) -> u64 {
        self.throttled.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Requests naming a [`Fault::CeilingKey`]'s key forwarded so far: the
    /// writes that item took.
    pub fn forwarded(&self) -> u64 {
        self.forwarded.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Whether one more request on the ceiling's key fits in the last
    /// second's `per_sec`; if so, it is counted as forwarded now.
    fn under_ceiling(&self, per_sec: usize) -> bool {
        let now = tokio::time::Instant::now();
        let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        while window
            .front()
            .is_some_and(|&at| now.duration_since(at) >= Duration::from_secs(1))
        {
            window.pop_front();
        }
        if window.len() >= per_sec {
            return false;
        }
        window.push_back(now);
        self.forwarded
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        true
    }

    async fn serve(self, socket: TcpStream, upstream: String) {
        let mut client = BufReader::new(socket);
        while let Some((head, body)) = read_message(&mut client).await {
            self.requests
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let fault = self.fault.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let answer = match fault {
                Fault::None => forward(&upstream, &head, &body).await,
                Fault::Stall(duration) => {
                    tokio::time::sleep(duration).await;
                    forward(&upstream, &head, &body).await
                }
                Fault::ServerError => Some(error(500, "InternalServerError", "injected")),
                Fault::ThrottleKey(pk) => {
                    if names_key(&body, &pk) {
                        self.throttled
                            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        Some(error(400, "ThrottlingException", "Rate exceeded"))
                    } else {
                        forward(&upstream, &head, &body).await
                    }
                }
                Fault::CeilingKey { key, per_sec } => {
                    if names_key(&body, &key) && !self.under_ceiling(per_sec) {
                        self.throttled
                            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        Some(error(400, "ThrottlingException", "Rate exceeded"))
                    } else {
                        forward(&upstream, &head, &body).await
                    }
                }
                Fault::Drop => None,
            };
            match answer {
                Some(bytes) => {
                    if client.get_mut().write_all(&bytes).await.is_err() {
                        return;
                    }
                }
                None => return,
            }
        }
    }
}

/// Reads one HTTP/1.1 message (a request or a response) whose body, if
/// any, has a `content-length`: its head (start line and headers, with the
/// blank line that ends them) and its body. `None` at the end of the
/// stream, on a read error, or on a `content-length` that is not a number.
///
/// For the hand-rolled HTTP stand-ins of tests (this proxy, fake DynamoDB
/// or Management API endpoints), which answer what the SDK's clients send
/// over kept-alive connections: call it in a loop until `None`. A chunked
/// body is not understood (it would be read as part of the next message).
pub async fn read_message<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
) -> Option<(String, Vec<u8>)> {
    let mut head = String::new();
    let mut length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().ok()?;
        }
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).await.ok()?;
    Some((head, body))
}

/// Sends one request upstream on a connection of its own and returns the
/// response's bytes.
async fn forward(upstream: &str, head: &str, body: &[u8]) -> Option<Vec<u8>> {
    let mut server = BufReader::new(TcpStream::connect(upstream).await.ok()?);
    server.get_mut().write_all(head.as_bytes()).await.ok()?;
    server.get_mut().write_all(body).await.ok()?;
    let (head, body) = read_message(&mut server).await?;
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(&body);
    Some(bytes)
}

/// Whether a request's body names the partition key `pk`.
fn names_key(body: &[u8], pk: &str) -> bool {
    String::from_utf8_lossy(body).contains(&format!("{{\"S\":\"{pk}\"}}"))
}

/// A DynamoDB error response.
fn error(status: u16, code: &str, message: &str) -> Vec<u8> {
    let body =
        format!(r#"{{"__type":"com.amazonaws.dynamodb.v20120810#{code}","message":"{message}"}}"#);
    format!(
        "HTTP/1.1 {status} Error\r\ncontent-type: application/x-amz-json-1.0\r\nx-amzn-requestid: fault\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}
