//! A real DynamoDB-API server for the tests: dynoxide, in process, on port 0.

#![allow(dead_code)]

use std::time::Duration;

use ratelimiter::clock::wall_clock;
use ratelimiter::{FakeClock, Limits, RateLimitService};
use ratelimiter_dynamodb::{ClientOptions, DynamoDbStore, client};

pub use ratelimiter_testing::dynoxide;

/// Generous enough for a debug build on a loaded two-core machine.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(5);

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
