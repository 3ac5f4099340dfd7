//! The store conformance suite on the memory store, bare and behind the
//! deny cache (the suite's services have none; `Builder::build` gives one).

use ratelimiter::MemoryStore;
use ratelimiter_testing::conformance;
use ratelimiter_testing::fakes::Faulty;

#[tokio::test]
async fn seed_scenarios() {
    conformance::seed_scenarios(MemoryStore::new()).await;
}

#[tokio::test]
async fn route_policies() {
    conformance::route_policies(MemoryStore::new()).await;
}

#[tokio::test]
async fn probes() {
    conformance::probes(MemoryStore::new()).await;
}

#[tokio::test]
async fn tolerance() {
    conformance::tolerance(MemoryStore::new()).await;
}

#[tokio::test]
async fn checks_in_turn() {
    conformance::checks_in_turn(MemoryStore::new()).await;
}

#[tokio::test]
async fn status_and_reset() {
    conformance::status_and_reset(MemoryStore::new()).await;
}

#[tokio::test]
async fn several_limits_and_tiers() {
    conformance::several_limits_and_tiers(MemoryStore::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_decisions_never_over_admit() {
    // Two services on one memory store (a `Faulty` that never fails: two
    // handles on one `MemoryStore`), as two processes on one table.
    let store = Faulty::default();
    conformance::concurrent_decisions_never_over_admit(vec![store.clone(), store], 64).await;
}

#[tokio::test]
async fn keyed_digests() {
    let store = Faulty::default();
    let (identifiers, _) = conformance::keyed_digests(store.clone()).await;
    assert_eq!(identifiers.len(), 3);
    assert!(store.calls() > 0);
}

#[tokio::test]
async fn caps() {
    conformance::caps(MemoryStore::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn caps_never_over_admit() {
    let store = Faulty::default();
    conformance::caps_never_over_admit(vec![store.clone(), store], 32).await;
}

#[tokio::test]
async fn caps_on_two_items() {
    conformance::caps_on_two_items(MemoryStore::new()).await;
}
