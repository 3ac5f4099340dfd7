//! A real DynamoDB-API server for the tests: dynoxide, in process, on port 0.

#![allow(dead_code)]

use std::time::Duration;

use ratelimiter::gcra::Quota;
use ratelimiter::key::{Key, Kind, Slot};
use ratelimiter::store::{Op, Outcome, Store};
use ratelimiter::{Builder, Cached, FailureMode, FakeClock, RateLimitService};
use ratelimiter_dynamodb::{ClientOptions, DynamoDbStore, client};

pub use ratelimiter_testing::conformance::clock_now;
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

/// A service on `store` with the seed's policies, `clock`, and the deny
/// cache, as the functions build it.
pub fn service(
    store: DynamoDbStore,
    clock: &FakeClock,
) -> RateLimitService<Cached<DynamoDbStore>, FakeClock> {
    Builder::new().clock(clock.clone()).build(store)
}

/// The same, with every policy in failure mode `mode`.
pub fn service_in(
    store: DynamoDbStore,
    clock: &FakeClock,
    mode: FailureMode,
) -> RateLimitService<Cached<DynamoDbStore>, FakeClock> {
    Builder::new()
        .clock(clock.clone())
        .failure_mode(mode)
        .build(store)
}

/// The bucket the tests' raw decisions use.
pub fn slot() -> Slot {
    Slot::new("listener_join@60")
}

/// One decision of `quota` on the item of IP `key`, as the service makes
/// it (the cache first); whether it was allowed and the calls it made.
pub async fn decide<S: Store>(store: &S, key: &str, quota: &Quota, now: u64) -> (bool, u32) {
    let key = Key::new(&Kind::IP, key);
    let slot = slot();
    let mut ops = [Op::new(&slot, quota.step(now, 1).unwrap())];
    let mut tats = [0];
    if let Some(outcome) = store.prepare(&key, &mut ops, &mut tats) {
        return (outcome == Outcome::Allowed, 0);
    }
    let applied = store.apply(&key, &ops, 0, &mut tats).await;
    (applied.outcome.unwrap() == Outcome::Allowed, applied.calls)
}
