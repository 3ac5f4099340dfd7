//! The limiter stays on when the table misbehaves: through a fault-injection
//! proxy in front of dynoxide, the real SDK client, the DynamoDB store and
//! the service with its deny cache, breaker and failure modes.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{clock_now, dynoxide, service_in, store_at, store_with_table};
use ratelimiter::failure::BreakerState;
use ratelimiter::{Degradation, FailureMode, FakeClock, PolicyId, RateLimitService};
use ratelimiter_dynamodb::DynamoDbStore;
use ratelimiter_testing::faults::{Fault, FaultProxy};
use ratelimiter_testing::{Format, Logs};

const TIMEOUT: Duration = Duration::from_millis(100);

type Limiter = Arc<RateLimitService<DynamoDbStore, FakeClock>>;

/// A table behind a proxy, and a container's limiter on it in `mode`.
async fn limiter(mode: FailureMode) -> (Limiter, FaultProxy, FakeClock) {
    let endpoint = dynoxide().await;
    store_with_table(&endpoint).await;
    let proxy = FaultProxy::start(&endpoint).await;
    let clock = clock_now();
    let store = store_at(proxy.endpoint(), "RateLimits", TIMEOUT).await;
    let limiter = service_in(store, &clock, mode);
    (Arc::new(limiter), proxy, clock)
}

/// `n` heartbeat decisions on `id` at once; how many were allowed.
async fn at_once(limiter: &Limiter, id: &str, n: usize) -> usize {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (limiter, id) = (limiter.clone(), id.to_owned());
            tokio::spawn(async move {
                limiter
                    .decide((PolicyId::HEARTBEAT, &id))
                    .await
                    .unwrap()
                    .allowed()
            })
        })
        .collect();
    let mut allowed = 0;
    for task in tasks {
        allowed += usize::from(task.await.unwrap());
    }
    allowed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_exhausted_key_admits_nothing_during_a_stall_in_every_mode() {
    let (_logs, _guard) = Logs::capture(Format::Text);
    for mode in [FailureMode::Open, FailureMode::Closed, FailureMode::Local] {
        let (limiter, proxy, _) = limiter(mode).await;
        assert_eq!(at_once(&limiter, "flood", 3).await, 2, "{mode}");
        proxy.set(Fault::Stall(Duration::from_secs(2)));
        let before = proxy.requests();
        assert_eq!(
            at_once(&limiter, "flood", 16).await,
            0,
            "{mode}: admissions"
        );
        assert_eq!(proxy.requests(), before, "{mode}: the deny cache answered");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_throttled_hot_key_admits_at_most_its_limit_and_leaves_the_rest_alone() {
    let (logs, _guard) = Logs::capture(Format::Text);
    let (limiter, proxy, clock) = limiter(FailureMode::Open).await;
    proxy.set(Fault::ThrottleKey("connection#hot".to_owned()));
    let before = proxy.requests();
    let mut admitted = 0;
    for _ in 0..20 {
        let verdict = limiter.decide((PolicyId::HEARTBEAT, "hot")).await.unwrap();
        assert_eq!(verdict.degraded, Some(Degradation::Throttled));
        admitted += u32::from(verdict.allowed());
    }
    assert_eq!(admitted, 2, "its limit, not fail-open's 20");
    // One call learnt the key is hot; the hold spared the table the rest.
    assert_eq!(proxy.requests() - before, 1);
    clock.advance(ratelimiter::failure::HOT_KEY_HOLD);
    limiter.decide((PolicyId::HEARTBEAT, "hot")).await.unwrap();
    assert_eq!(proxy.requests() - before, 2, "asked again after the hold");
    let cold = limiter.decide((PolicyId::HEARTBEAT, "cold")).await.unwrap();
    assert_eq!((cold.degraded, cold.calls), (None, 1));
    let now = ratelimiter::Clock::now(&clock);
    assert_eq!(limiter.breaker().state(now), BreakerState::Closed);
    assert_eq!(logs.text().matches("hot key").count(), 1, "{}", logs.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_stall_under_sixteen_decisions_does_not_open_the_breaker_an_outage_does() {
    let (_logs, _guard) = Logs::capture(Format::Text);
    let (limiter, proxy, clock) = limiter(FailureMode::Open).await;
    proxy.set(Fault::Stall(Duration::from_millis(300)));
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let limiter = limiter.clone();
            tokio::spawn(async move {
                limiter
                    .decide((PolicyId::HEARTBEAT, &format!("c{i}")))
                    .await
                    .unwrap()
                    .degraded
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), Some(Degradation::Timeout));
    }
    let now = ratelimiter::Clock::now(&clock);
    assert_eq!(limiter.breaker().state(now), BreakerState::Closed);
    proxy.set(Fault::None);
    let verdict = limiter
        .decide((PolicyId::HEARTBEAT, "after"))
        .await
        .unwrap();
    assert_eq!(verdict.degraded, None);
    // A table that keeps failing: three failures in a row open it.
    proxy.set(Fault::ServerError);
    for i in 0..3 {
        let verdict = limiter
            .decide((PolicyId::HEARTBEAT, &format!("o{i}")))
            .await
            .unwrap();
        assert_eq!(verdict.degraded, Some(Degradation::Unavailable));
    }
    let verdict = limiter.decide((PolicyId::HEARTBEAT, "o3")).await.unwrap();
    assert_eq!(verdict.degraded, Some(Degradation::BreakerOpen));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dropped_connections_fail_open_bounded_and_degraded() {
    let (_logs, _guard) = Logs::capture(Format::Text);
    let (limiter, proxy, _) = limiter(FailureMode::Open).await;
    proxy.set(Fault::Drop);
    let started = std::time::Instant::now();
    let verdict = limiter.decide((PolicyId::HEARTBEAT, "d")).await.unwrap();
    assert!(verdict.allowed() && verdict.is_degraded(), "{verdict:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

/// The proxy's stand-in for the per-item ceiling (what the hot-key bench
/// measures against): so many requests a second on one key, throttled
/// beyond, other keys untouched, and room again a second later.
#[tokio::test]
async fn the_proxys_ceiling_forwards_so_many_requests_a_second_on_one_key() {
    use ratelimiter::store::{Store, StoreErrorKind};
    use ratelimiter::{Key, Kind, Slot};

    let endpoint = dynoxide().await;
    store_with_table(&endpoint).await;
    let proxy = FaultProxy::start(&endpoint).await;
    let store = store_at(proxy.endpoint(), "RateLimits", Duration::from_secs(5)).await;
    proxy.set(Fault::CeilingKey {
        key: "connection#hot".to_owned(),
        per_sec: 3,
    });
    let slot = Slot::new("heartbeat@60");
    let (hot, cold) = (
        Key::new(&Kind::CONNECTION, "hot"),
        Key::new(&Kind::CONNECTION, "cold"),
    );
    let mut kinds = Vec::new();
    for _ in 0..5 {
        kinds.push(store.remove(&hot, &[&slot]).await.err().map(|e| e.kind()));
    }
    assert_eq!(
        kinds,
        [
            None,
            None,
            None,
            Some(StoreErrorKind::Throttled),
            Some(StoreErrorKind::Throttled)
        ]
    );
    assert!(store.remove(&cold, &[&slot]).await.is_ok(), "another key");
    assert_eq!((proxy.forwarded(), proxy.throttled()), (3, 2));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(store.remove(&hot, &[&slot]).await.is_ok(), "a second later");
    assert_eq!(proxy.forwarded(), 4);
}
