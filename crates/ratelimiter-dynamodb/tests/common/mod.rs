//! A real DynamoDB-API server for the tests: dynoxide, in process, on port 0.

#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ratelimiter::clock::wall_clock;
use ratelimiter::{FakeClock, Limits, RateLimitService};
use ratelimiter_dynamodb::{ClientOptions, DynamoDbStore, client};

/// Generous enough for a debug build on a loaded two-core machine.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Starts an empty in-memory dynoxide server; returns its endpoint URL.
pub async fn dynoxide() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let database = dynoxide::Database::memory().expect("dynoxide opens an in-memory database");
    tokio::spawn(dynoxide::server::serve_on(listener, database));
    format!("http://{address}")
}

/// A store on `table` at `endpoint`, calls bounded by `timeout`.
pub async fn store_at(endpoint: &str, table: &str, timeout: Duration) -> DynamoDbStore {
    DynamoDbStore::new(
        client(&ClientOptions::local(endpoint, timeout)).await,
        table,
    )
}

/// A store on a freshly created `RateLimits` table at `endpoint`.
pub async fn store_with_table(endpoint: &str) -> DynamoDbStore {
    let store = store_at(endpoint, "RateLimits", TEST_TIMEOUT).await;
    store.create_table().await.expect("the table is created");
    store
}

/// A fake clock at the current wall time, whole seconds, so that TTLs written
/// by the tests are in the future for the server too.
pub fn clock_now() -> FakeClock {
    FakeClock::new(wall_clock() / 1_000_000_000 * 1_000_000_000)
}

/// A service on `store` with the seed's limits and `clock`.
pub fn service<S: ratelimiter::Store>(
    store: S,
    clock: &FakeClock,
) -> RateLimitService<S, FakeClock> {
    RateLimitService::with_clock(store, Limits::default(), clock.clone())
}

/// Log output captured from the current thread.
///
/// One process-wide subscriber sends each thread's lines to that thread's
/// capture. Scoped subscribers (`set_default`) would be simpler, but they race
/// with tracing's per-callsite interest cache when tests run in parallel, and
/// lines get lost.
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

thread_local! {
    static CAPTURING: std::cell::RefCell<Option<Logs>> = const { std::cell::RefCell::new(None) };
}

/// Stops the capture of this thread's logs when dropped.
pub struct Capturing(());

impl Drop for Capturing {
    fn drop(&mut self) {
        CAPTURING.with(|current| current.borrow_mut().take());
    }
}

/// Writes to the capture of the thread that logs, if any.
struct ThreadWriter;

impl std::io::Write for ThreadWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        CAPTURING.with(|current| {
            if let Some(logs) = &*current.borrow() {
                logs.0.lock().unwrap().extend_from_slice(buf);
            }
        });
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    /// Captures everything logged on this thread until the guard is dropped
    /// (tests on the default current-thread runtime log on their thread only).
    pub fn capture() -> (Self, Capturing) {
        static INSTALL: std::sync::Once = std::sync::Once::new();
        INSTALL.call_once(|| {
            tracing_subscriber::fmt()
                .with_writer(|| ThreadWriter)
                .with_ansi(false)
                .init();
        });
        let logs = Self::default();
        CAPTURING.with(|current| *current.borrow_mut() = Some(logs.clone()));
        (logs, Capturing(()))
    }

    /// Everything captured so far.
    pub fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}
