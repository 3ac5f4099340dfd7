//! A real DynamoDB-API server for the tests: dynoxide, in process, on port 0.

#![allow(dead_code)]

use std::time::Duration;

use ratelimiter::{Builder, Config, FailureMode, FakeClock, PolicyId, RateLimitService};
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
) -> RateLimitService<DynamoDbStore, FakeClock> {
    Builder::new().clock(clock.clone()).build(store)
}

/// The same, with every policy in failure mode `mode`.
pub fn service_in(
    store: DynamoDbStore,
    clock: &FakeClock,
    mode: FailureMode,
) -> RateLimitService<DynamoDbStore, FakeClock> {
    Builder::new()
        .clock(clock.clone())
        .failure_mode(mode)
        .build(store)
}

/// A service on `store`, behind the deny cache, whose listener-join policy
/// allows `per_minute`: what the tests of calls per decision use.
pub fn joins(
    store: DynamoDbStore,
    per_minute: u32,
    clock: &FakeClock,
) -> RateLimitService<DynamoDbStore, FakeClock> {
    let limit = per_minute.to_string();
    let config = Config::from_lookup(|var| {
        (var == "RATE_LIMIT_LISTENER_JOINS_PER_MIN").then(|| limit.clone())
    })
    .expect("a positive limit is valid");
    Builder::from_config(config)
        .clock(clock.clone())
        .build(store)
}

/// One listener join from `ip`: whether it was allowed, and the calls it made.
pub async fn decide(service: &RateLimitService<DynamoDbStore, FakeClock>, ip: &str) -> (bool, u32) {
    let verdict = service
        .decide((PolicyId::LISTENER_JOIN, ip))
        .await
        .expect("a decision");
    (verdict.allowed(), verdict.calls)
}
