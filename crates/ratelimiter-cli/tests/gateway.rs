//! End to end: real WebSocket clients against `ratelimit serve` on port 0,
//! with the embedded store, running the real handlers.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

mod common;

use common::Server;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A refused handshake, as a client other than a browser sees it.
#[derive(Debug)]
struct Refused {
    status: u16,
    retry_after: Option<String>,
    rate_limit: Option<String>,
    rate_limit_policy: Option<String>,
    body: Value,
}

impl Server {
    /// Connects from `source_ip` (any 127.x.y.z address), as `user` if given.
    async fn connect(&self, source_ip: &str, user: Option<&str>) -> Result<Socket, Refused> {
        let query = user.map(|user| format!("userId={user}"));
        self.connect_with(source_ip, query.as_deref()).await
    }

    /// Connects from `source_ip` with `query` on the URL.
    async fn connect_with(&self, source_ip: &str, query: Option<&str>) -> Result<Socket, Refused> {
        match open(self.address, source_ip, query).await {
            Ok(socket) => Ok(socket),
            Err(tungstenite::Error::Http(response)) => {
                let status = response.status().as_u16();
                let header = |name| {
                    response
                        .headers()
                        .get(name)
                        .map(|v: &tungstenite::http::HeaderValue| v.to_str().unwrap().to_owned())
                };
                let body = response
                    .body()
                    .as_deref()
                    .map_or(Value::Null, |b| serde_json::from_slice(b).unwrap());
                Err(Refused {
                    status,
                    retry_after: header("retry-after"),
                    rate_limit: header("ratelimit"),
                    rate_limit_policy: header("ratelimit-policy"),
                    body,
                })
            }
            Err(other) => panic!("connecting failed: {other}"),
        }
    }
}

/// Opens a WebSocket to the server at `address` from `source_ip` (any
/// 127.x.y.z address), with `query` on the URL: the handshake's own result,
/// for callers that read a refusal ([`Server::connect_with`]) and for a
/// spawned task, which cannot borrow the server.
async fn open(
    address: SocketAddr,
    source_ip: &str,
    query: Option<&str>,
) -> Result<Socket, tungstenite::Error> {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(format!("{source_ip}:0").parse().unwrap())
        .unwrap();
    let stream = socket.connect(address).await.unwrap();
    let url = match query {
        Some(query) => format!("ws://{address}/local?{query}"),
        None => format!("ws://{address}/local"),
    };
    tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream))
        .await
        .map(|(socket, _)| socket)
}

async fn next_json(socket: &mut Socket) -> Value {
    use futures_util::StreamExt;
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("a message within 10 s")
            .expect("the connection is open")
            .unwrap();
        if let Message::Text(text) = message {
            return serde_json::from_str(text.as_str()).unwrap();
        }
    }
}

async fn send(socket: &mut Socket, text: &str) {
    use futures_util::SinkExt;
    socket.send(Message::text(text)).await.unwrap();
}

fn assert_refused(result: Result<Socket, Refused>, retry_after: u64) {
    match result {
        Err(Refused {
            status,
            retry_after: header,
            rate_limit,
            rate_limit_policy,
            body,
        }) => {
            assert_eq!(status, 429, "{body}");
            assert_eq!(header.as_deref(), Some(retry_after.to_string().as_str()));
            // The standard fields, beside Retry-After, with the same wait.
            let rate_limit = rate_limit.expect("a RateLimit field");
            assert!(
                rate_limit.ends_with(&format!(";r=0;t={retry_after}")),
                "{rate_limit}"
            );
            assert!(
                rate_limit_policy
                    .expect("a RateLimit-Policy field")
                    .contains(";q=")
            );
            assert_eq!(body["type"], "error");
            assert_eq!(body["code"], "RATE_LIMIT_EXCEEDED");
            assert_eq!(body["details"]["retryAfter"], retry_after);
            assert_eq!(
                body["message"],
                format!("Rate limit exceeded. Retry after {retry_after} seconds.")
            );
        }
        Ok(_) => panic!("expected the connection to be refused"),
    }
}

#[tokio::test]
async fn heartbeats_are_acked_and_the_third_gets_the_error_body() {
    let server = Server::start(&[]);
    let mut socket = server.connect("127.0.0.1", None).await.unwrap();
    for _ in 0..2 {
        send(&mut socket, r#"{"action":"heartbeat"}"#).await;
        let ack = next_json(&mut socket).await;
        assert_eq!(ack["type"], "heartbeat_ack", "{ack}");
        assert!(ack["timestamp"].as_u64().unwrap() > 1_600_000_000_000);
    }
    send(&mut socket, r#"{"action":"heartbeat"}"#).await;
    let error = next_json(&mut socket).await;
    assert_eq!(error["code"], "RATE_LIMIT_EXCEEDED", "{error}");
    assert_eq!(error["details"]["retryAfter"], 30);
    // An action with no route gets API Gateway's answer.
    send(&mut socket, r#"{"action":"dance"}"#).await;
    assert_eq!(next_json(&mut socket).await["message"], "Forbidden");
}

#[tokio::test]
async fn the_eleventh_listener_from_one_ip_is_refused() {
    let server = Server::start(&[]);
    let mut open = Vec::new();
    for _ in 0..10 {
        open.push(server.connect("127.0.0.1", None).await.unwrap());
    }
    assert_refused(server.connect("127.0.0.1", None).await, 6);
    // Another address is another client.
    open.push(server.connect("127.0.0.2", None).await.unwrap());
}

#[tokio::test]
async fn the_twenty_first_connection_from_one_ip_is_refused_even_for_new_speakers() {
    let server = Server::start(&[]);
    let mut open = Vec::new();
    for i in 0..20 {
        open.push(
            server
                .connect("127.0.0.1", Some(&format!("speaker-{i}")))
                .await
                .unwrap(),
        );
    }
    assert_refused(server.connect("127.0.0.1", Some("speaker-new")).await, 3);
}

#[tokio::test]
async fn a_users_sessions_beyond_the_limit_are_refused_from_fresh_ips() {
    let server = Server::start(&[("RATE_LIMIT_SESSIONS_PER_HOUR", "2")]);
    let _a = server.connect("127.0.0.11", Some("user-1")).await.unwrap();
    let _b = server.connect("127.0.0.12", Some("user-1")).await.unwrap();
    assert_refused(server.connect("127.0.0.13", Some("user-1")).await, 1800);
    // Other users are not affected.
    let _c = server.connect("127.0.0.13", Some("user-2")).await.unwrap();
}

#[test]
fn posting_to_an_unknown_connection_is_gone() {
    let server = Server::start(&[]);
    let mut stream = std::net::TcpStream::connect(server.address).unwrap();
    write!(
        stream,
        "POST /local/@connections/nobody HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 410"), "{response}");
}

#[tokio::test]
async fn policies_from_a_file_and_a_tier_from_the_stand_in_authorizer() {
    let file = "[policy.heartbeat.tier.pro]\nlimits = [\"4/min\"]\n";
    let server = Server::start_with(
        &[("RATE_LIMIT_CONFIG", "limits.toml")],
        &[("limits.toml", file)],
    );
    // The tier given at connect time travels with every message, as an
    // authorizer's context does.
    let mut pro = server
        .connect_with("127.0.0.21", Some("userId=alice&tier=pro"))
        .await
        .unwrap();
    for _ in 0..4 {
        send(&mut pro, r#"{"action":"heartbeat"}"#).await;
        assert_eq!(next_json(&mut pro).await["type"], "heartbeat_ack");
    }
    send(&mut pro, r#"{"action":"heartbeat"}"#).await;
    let error = next_json(&mut pro).await;
    assert_eq!(error["details"]["retryAfter"], 15, "{error}");
    // Without the tier: the default two a minute.
    let mut free = server.connect("127.0.0.22", None).await.unwrap();
    for _ in 0..2 {
        send(&mut free, r#"{"action":"heartbeat"}"#).await;
        assert_eq!(next_json(&mut free).await["type"], "heartbeat_ack");
    }
    send(&mut free, r#"{"action":"heartbeat"}"#).await;
    assert_eq!(next_json(&mut free).await["details"]["retryAfter"], 30);
}

/// The close frame the server ends `socket` with.
async fn close_code(socket: &mut Socket) -> Option<u16> {
    use futures_util::StreamExt;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("an answer within 10 s")
        {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    }
}

#[tokio::test]
async fn frames_and_messages_over_api_gateways_limits_close_with_1009() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::protocol::frame::{
        Frame,
        coding::{Data, OpCode},
    };
    let server = Server::start(&[]);
    // A message of 129 KB in frames of 16 KB: every frame fits, the message does not.
    let mut socket = server.connect("127.0.0.31", None).await.unwrap();
    let big = "x".repeat(129 * 1024);
    let chunks: Vec<&[u8]> = big.as_bytes().chunks(16 * 1024).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let opcode = if i == 0 {
            OpCode::Data(Data::Text)
        } else {
            OpCode::Data(Data::Continue)
        };
        let frame = Frame::message(chunk.to_vec(), opcode, i + 1 == chunks.len());
        socket.send(Message::Frame(frame)).await.unwrap();
    }
    assert_eq!(close_code(&mut socket).await, Some(1009));
    // One frame of 33 KB.
    let mut socket = server.connect("127.0.0.32", None).await.unwrap();
    socket
        .send(Message::text("y".repeat(33 * 1024)))
        .await
        .unwrap();
    assert_eq!(close_code(&mut socket).await, Some(1009));
    // Just under both limits: answered as usual (no route for it).
    let mut socket = server.connect("127.0.0.33", None).await.unwrap();
    let fits = format!(r#"{{"action":"dance","pad":"{}"}}"#, "z".repeat(31 * 1024));
    socket.send(Message::text(fits)).await.unwrap();
    assert_eq!(next_json(&mut socket).await["message"], "Forbidden");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_waiting_for_the_stores_lock_does_not_stop_other_connections() {
    let server = Server::start(&[]);
    let mut early = server.connect("127.0.0.41", None).await.unwrap();
    // Another process takes the embedded store's write lock and holds it.
    let file = server.dir.path().join(".ratelimit/ratelimit.db");
    let holder = rusqlite::Connection::open(&file).unwrap();
    holder.execute_batch("BEGIN EXCLUSIVE").unwrap();
    // A new connection's $connect waits for that lock...
    let address = server.address;
    let waiting = tokio::spawn(async move { open(address, "127.0.0.42", None).await.is_ok() });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // ...while a message that needs no store is answered at once.
    let started = std::time::Instant::now();
    send(&mut early, r#"{"action":"dance"}"#).await;
    assert_eq!(next_json(&mut early).await["message"], "Forbidden");
    let elapsed = started.elapsed();
    assert!(
        !waiting.is_finished(),
        "the waiting connect was not held up"
    );
    assert!(
        elapsed < Duration::from_secs(2),
        "answered after {elapsed:?}"
    );
    holder.execute_batch("ROLLBACK").unwrap();
    assert!(waiting.await.unwrap(), "the waiting connect went through");
}

#[tokio::test]
async fn a_byte_quota_on_a_route_refuses_text_and_binary_alike() {
    let server = Server::start_with(
        &[("RATE_LIMIT_CONFIG", "limits.toml")],
        &[(
            "limits.toml",
            "[policy.message_bytes]\nkey = \"connection\"\nunit = \"bytes\"\nlimits = [\"100/min\"]\n\
             [route.sendMessage]\npolicies = [\"message_bytes\"]\n",
        )],
    );
    let mut socket = server.connect("127.0.0.41", None).await.unwrap();
    // 60 bytes: allowed, and with no backend the client gets no reply.
    let sixty = format!(r#"{{"action":"sendMessage","t":"{}"}}"#, "x".repeat(29));
    assert_eq!(sixty.len(), 60);
    send(&mut socket, &sixty).await;
    // Another 60 do not fit in the 40 left: the seed's body, with numbers.
    send(&mut socket, &sixty).await;
    let refused = next_json(&mut socket).await;
    assert_eq!(refused["code"], "RATE_LIMIT_EXCEEDED", "{refused}");
    assert_eq!(refused["details"]["retryAfter"], 12);
    assert_eq!(refused["details"]["policy"], "message_bytes");
    assert_eq!(refused["details"]["limits"][0]["remaining"], 40);
    // A binary message has no action: with no `$default` limit, it gets
    // API Gateway's answer for a message no route takes.
    use futures_util::SinkExt;
    socket.send(Message::binary(vec![0u8; 50])).await.unwrap();
    assert_eq!(next_json(&mut socket).await["message"], "Forbidden");
    // Any action the configuration does not limit, likewise.
    send(&mut socket, r#"{"action":"dance"}"#).await;
    assert_eq!(next_json(&mut socket).await["message"], "Forbidden");
}

#[tokio::test]
async fn default_route_limits_binary_messages_by_their_size() {
    let server = Server::start_with(
        &[("RATE_LIMIT_CONFIG", "limits.toml")],
        &[(
            "limits.toml",
            "[policy.message_bytes]\nkey = \"connection\"\nunit = \"bytes\"\nlimits = [\"100/min\"]\n\
             [route.\"$default\"]\npolicies = [\"message_bytes\"]\n",
        )],
    );
    let mut socket = server.connect("127.0.0.42", None).await.unwrap();
    use futures_util::SinkExt;
    socket.send(Message::binary(vec![7u8; 90])).await.unwrap();
    socket.send(Message::binary(vec![7u8; 20])).await.unwrap();
    let refused = next_json(&mut socket).await;
    assert_eq!(refused["code"], "RATE_LIMIT_EXCEEDED", "{refused}");
    assert_eq!(refused["details"]["limits"][0]["remaining"], 10);
    // A message larger than the whole quota can never pass: 413's body.
    socket.send(Message::binary(vec![7u8; 101])).await.unwrap();
    assert_eq!(next_json(&mut socket).await["code"], "MESSAGE_TOO_LARGE");
}

/// Waits until `server` admits a connection from `source_ip`: a
/// `$disconnect` runs after the socket is gone, so a freed seat shows
/// shortly after the close.
async fn connect_when_free(server: &Server, source_ip: &str) -> Socket {
    for _ in 0..200 {
        match server.connect(source_ip, None).await {
            Ok(socket) => return socket,
            Err(refused) => assert_eq!(refused.status, 429, "{refused:?}"),
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the seat was never given back");
}

#[tokio::test]
async fn a_cap_is_released_however_a_connection_goes() {
    let file = [(
        "limits.toml",
        "[policy.open_per_ip]\nkey = \"ip\"\nconcurrent = 1\n\
         [connect]\npolicies = [\"open_per_ip\"]\n",
    )];
    let env = [("RATE_LIMIT_CONFIG", "limits.toml")];
    let server = Server::start_with(&env, &file);
    let ip = "127.0.0.61";
    // A close frame.
    let mut first = server.connect(ip, None).await.unwrap();
    let refused = server.connect(ip, None).await.unwrap_err();
    assert_eq!(refused.status, 429);
    assert_eq!(refused.body["details"]["retryAfter"], 30);
    assert_eq!(
        refused.rate_limit_policy.as_deref(),
        Some(r#""open_per_ip";q=1;qu="concurrent-requests""#)
    );
    first.close(None).await.unwrap();
    // A dropped TCP connection, with no close frame.
    let second = connect_when_free(&server, ip).await;
    assert_eq!(server.connect(ip, None).await.unwrap_err().status, 429);
    drop(second);
    let third = connect_when_free(&server, ip).await;
    // The server shutting down: every connection is closed and released
    // in the store (the embedded one, in the server's folder), so a new
    // server on it admits the address at once.
    let server = server.restart(&env);
    drop(third);
    let fourth = server.connect(ip, None).await;
    assert!(fourth.is_ok(), "{:?}", fourth.err());
}

/// The Management API's `GetConnection`, through the SDK as the `$connect`
/// handler asks it: an open connection is there, an unknown one gone.
#[tokio::test]
async fn get_connection_tells_open_connections_from_gone_ones() {
    use ratelimiter_lambda::management::{ConnectionSender, ManagementApi};
    let server = Server::start(&[]);
    let endpoint = format!("http://{}/local", server.address);
    let api = ManagementApi::local(endpoint.clone());
    assert_eq!(api.gone(&endpoint, "nobody").await, Ok(true));
    let mut socket = server.connect("127.0.0.71", None).await.unwrap();
    // The connection's id: API Gateway's answer to a message no route
    // takes ("Forbidden") names it.
    send(&mut socket, r#"{"action":"nothing"}"#).await;
    let answer = next_json(&mut socket).await;
    let id = answer["connectionId"].as_str().unwrap().to_owned();
    assert_eq!(api.gone(&endpoint, &id).await, Ok(false));
    socket.close(None).await.unwrap();
    for _ in 0..200 {
        if api.gone(&endpoint, &id).await == Ok(true) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("a closed connection is never gone");
}

/// What a socket receives until the server closes it: its texts, and the
/// close frame's code and reason.
async fn until_closed(socket: &mut Socket) -> (Vec<Value>, Option<(u16, String)>) {
    use futures_util::StreamExt;
    let mut texts = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("closed within 10 s")
        {
            Some(Ok(Message::Text(text))) => {
                texts.push(serde_json::from_str(text.as_str()).unwrap())
            }
            Some(Ok(Message::Close(frame))) => {
                return (
                    texts,
                    frame.map(|f| (u16::from(f.code), f.reason.to_string())),
                );
            }
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn soft_rejection_accepts_tells_why_then_closes_with_1008() {
    let server = Server::start(&[
        ("RATE_LIMIT_CONNECT_REJECT", "soft"),
        ("RATE_LIMIT_CONNECTION_ATTEMPTS_PER_MIN", "2"),
    ]);
    let mut open = Vec::new();
    for _ in 0..2 {
        open.push(server.connect("127.0.0.31", None).await.unwrap());
    }
    // The third handshake succeeds: a client that cannot read a refused
    // handshake (a browser) reads this instead.
    let mut refused = server
        .connect("127.0.0.31", None)
        .await
        .expect("accepted, softly");
    // At once, a heartbeat: in the window before the close, it is refused
    // without an ack.
    send(&mut refused, r#"{"action":"heartbeat"}"#).await;
    let (texts, close) = until_closed(&mut refused).await;
    assert_eq!(texts.len(), 1, "the reason alone, no ack: {texts:?}");
    let body = &texts[0];
    assert_eq!(body["type"], "error");
    assert_eq!(body["code"], "RATE_LIMIT_EXCEEDED");
    assert_eq!(
        body["message"],
        "Rate limit exceeded. Retry after 30 seconds."
    );
    assert_eq!(body["details"]["retryAfter"], 30);
    assert_eq!(
        close,
        Some((1008, "RATE_LIMIT_EXCEEDED: retry after 30 s".to_owned()))
    );
    // Told once: connecting again before its retryAfter is refused at the
    // handshake, at no cost.
    assert_refused(server.connect("127.0.0.31", None).await, 30);
    // The accepted connections were not touched.
    for socket in &mut open {
        send(socket, r#"{"action":"heartbeat"}"#).await;
        assert_eq!(next_json(socket).await["type"], "heartbeat_ack");
    }
}
