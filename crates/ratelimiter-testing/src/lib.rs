//! Test support shared by the crates' tests and benches (a dev-dependency
//! only): a real DynamoDB-API server in process, log capture that is safe
//! when tests run in parallel, the store [`conformance`] suite, stores that
//! fail as told ([`fakes`]), and a fault-injection proxy ([`faults`]).

pub mod conformance;
pub mod fakes;
pub mod faults;

use std::cell::RefCell;
use std::sync::{Arc, Mutex, Once};

/// Starts an empty in-memory dynoxide server on a free loopback port and
/// returns its endpoint URL. Call it inside a Tokio runtime: the server runs
/// as a task of that runtime.
pub async fn dynoxide() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port is free");
    let address = listener.local_addr().expect("the listener has an address");
    let database = dynoxide::Database::memory().expect("dynoxide opens an in-memory database");
    tokio::spawn(dynoxide::server::serve_on(listener, database));
    format!("http://{address}")
}

/// How captured lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `tracing_subscriber`'s default text lines, without colours.
    Text,
    /// One JSON object per line, as the Lambda functions log.
    Json,
}

/// Log lines captured from the current thread.
///
/// One process-wide subscriber sends each thread's lines to that thread's
/// capture. Scoped subscribers (`tracing::subscriber::set_default`) would be
/// simpler, but they race with tracing's per-callsite interest cache when
/// tests run in parallel, and lines get lost. A test on Tokio's default
/// current-thread runtime logs on its own thread only, so it sees exactly
/// its own lines.
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

thread_local! {
    static CAPTURING: RefCell<Option<Logs>> = const { RefCell::new(None) };
}

/// Ends the capture of this thread's lines when dropped.
#[must_use = "the capture ends when this guard is dropped"]
pub struct Capturing(());

impl Drop for Capturing {
    fn drop(&mut self) {
        CAPTURING.with(|current| current.borrow_mut().take());
    }
}

/// Writes to the capture of the thread that logs, if it has one.
struct ThreadWriter;

impl std::io::Write for ThreadWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        CAPTURING.with(|current| {
            if let Some(logs) = &*current.borrow() {
                logs.0
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend_from_slice(bytes);
            }
        });
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    /// Captures what this thread logs at `INFO` and above, in `format`, until
    /// the guard is dropped. A process has one format: asking for the other
    /// one later panics.
    pub fn capture(format: Format) -> (Self, Capturing) {
        static INSTALL: Once = Once::new();
        static INSTALLED: Mutex<Option<Format>> = Mutex::new(None);
        INSTALL.call_once(|| {
            let builder = tracing_subscriber::fmt()
                .with_writer(|| ThreadWriter)
                .with_max_level(tracing::Level::INFO)
                .with_ansi(false);
            match format {
                Format::Text => builder.init(),
                Format::Json => builder.json().init(),
            }
            *INSTALLED.lock().unwrap() = Some(format);
        });
        let installed = *INSTALLED.lock().unwrap();
        assert_eq!(
            installed,
            Some(format),
            "this test process already captures logs in another format"
        );
        let logs = Self::default();
        CAPTURING.with(|current| *current.borrow_mut() = Some(logs.clone()));
        (logs, Capturing(()))
    }

    /// Everything captured so far.
    pub fn text(&self) -> String {
        let bytes = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        String::from_utf8(bytes).expect("log lines are UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_thread_sees_its_own_lines_only() {
        let (logs, guard) = Logs::capture(Format::Text);
        tracing::info!("from the test thread");
        std::thread::spawn(|| tracing::info!("from another thread"))
            .join()
            .unwrap();
        drop(guard);
        tracing::info!("after the capture ended");
        let text = logs.text();
        assert!(text.contains("from the test thread"), "{text}");
        assert!(!text.contains("another thread"), "{text}");
        assert!(!text.contains("after the capture"), "{text}");
    }

    #[tokio::test]
    async fn dynoxide_answers_dynamodb_requests() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let endpoint = dynoxide().await;
        let address = endpoint.strip_prefix("http://").unwrap();
        let mut socket = tokio::net::TcpStream::connect(address).await.unwrap();
        let request = "POST / HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-amz-json-1.0\r\nx-amz-target: DynamoDB_20120810.ListTables\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}";
        socket.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        socket.read_to_string(&mut response).await.unwrap();
        // Unsigned, so refused; but by a DynamoDB-API server.
        assert!(response.starts_with("HTTP/1.1 "), "{response}");
        assert!(response.contains("server: Dynoxide"), "{response}");
    }
}
