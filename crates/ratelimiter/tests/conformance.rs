//! The store conformance suite on the memory store, bare and behind the
//! deny cache.

use ratelimiter::{Cached, MemoryStore};
use ratelimiter_testing::conformance;

#[tokio::test]
async fn seed_scenarios() {
    conformance::seed_scenarios(MemoryStore::new()).await;
    conformance::seed_scenarios(Cached::new(MemoryStore::new())).await;
}

#[tokio::test]
async fn status_and_reset() {
    conformance::status_and_reset(MemoryStore::new()).await;
    conformance::status_and_reset(Cached::new(MemoryStore::new())).await;
}

#[tokio::test]
async fn several_limits_and_tiers() {
    conformance::several_limits_and_tiers(MemoryStore::new()).await;
    conformance::several_limits_and_tiers(Cached::new(MemoryStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_decisions_never_over_admit() {
    let store = std::sync::Arc::new(MemoryStore::new());
    conformance::concurrent_decisions_never_over_admit(vec![store.clone(), store], 64).await;
}

#[tokio::test]
async fn keyed_digests() {
    let store = std::sync::Arc::new(MemoryStore::new());
    conformance::keyed_digests(store.clone()).await;
    assert!(!store.is_empty());
}
