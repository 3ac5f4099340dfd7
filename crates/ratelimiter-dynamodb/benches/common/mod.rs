//! What the store's simulation benches (`at_rate`, `hot_key`) share: their
//! runtime, and a DynamoDB-API server with the table.

use std::time::Duration;

use ratelimiter_dynamodb::{ClientOptions, DynamoDbStore, client};

/// Two workers, as a small Lambda container or CI machine has.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

/// A store on `RateLimits` at `endpoint`, its calls bounded by `timeout`:
/// one container's client.
pub async fn store(endpoint: &str, timeout: Duration) -> DynamoDbStore {
    DynamoDbStore::new(
        client(&ClientOptions::local(endpoint, timeout)).await,
        "RateLimits",
    )
}

/// A DynamoDB-API server (dynoxide, in this process) with the table: its
/// endpoint.
pub async fn table() -> String {
    let endpoint = ratelimiter_testing::dynoxide().await;
    store(&endpoint, Duration::from_secs(5))
        .await
        .create_table()
        .await
        .expect("the table is created");
    endpoint
}
