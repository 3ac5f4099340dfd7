//! The seed's behaviours through the service API, with a fake clock.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ratelimiter::gcra::{Nanos, Outcome, Status, Step};
use ratelimiter::{
    CircuitBreaker, FailureMode, FailurePolicy, FakeClock, Identifier, IdentifierKind, Key, Limits,
    MemoryStore, Operation, RateLimitError, RateLimitService, ShadowMode, Store, StoreError,
    StoreErrorKind,
};

fn service() -> (RateLimitService<MemoryStore, FakeClock>, FakeClock) {
    let clock = FakeClock::at_secs(1_700_000_000);
    (
        RateLimitService::with_clock(MemoryStore::new(), Limits::default(), clock.clone()),
        clock,
    )
}

fn retry_after(result: Result<ratelimiter::Verdict, RateLimitError>) -> u64 {
    match result {
        Err(RateLimitError::Exceeded { retry_after, .. }) => retry_after,
        other => panic!("expected a rate-limit denial, got {other:?}"),
    }
}

#[tokio::test]
async fn third_heartbeat_in_a_minute_is_denied_for_thirty_seconds() {
    let (service, clock) = service();
    let first = service.check_heartbeat_limit("conn-1").await.unwrap();
    assert_eq!((first.decision.remaining, first.degraded), (1, false));
    service.check_heartbeat_limit("conn-1").await.unwrap();
    assert_eq!(
        retry_after(service.check_heartbeat_limit("conn-1").await),
        30
    );
    // Another connection is not affected.
    service.check_heartbeat_limit("conn-2").await.unwrap();
    clock.advance(Duration::from_secs(29));
    assert_eq!(
        retry_after(service.check_heartbeat_limit("conn-1").await),
        1
    );
    clock.advance(Duration::from_secs(1));
    service.check_heartbeat_limit("conn-1").await.unwrap();
}

#[tokio::test]
async fn fifty_first_session_in_an_hour_is_denied() {
    let (service, clock) = service();
    for i in 0..50 {
        service
            .check_session_creation_limit("user-123")
            .await
            .unwrap_or_else(|e| panic!("session {} refused: {e}", i + 1));
        clock.advance(Duration::from_secs(1));
    }
    // 50 s in; the first token returns 72 s after the first session.
    assert_eq!(
        retry_after(service.check_session_creation_limit("user-123").await),
        22
    );
    service
        .check_session_creation_limit("user-456")
        .await
        .unwrap();
}

#[tokio::test]
async fn eleventh_listener_join_and_twenty_first_connection_attempt_are_denied() {
    let (service, _) = service();
    for _ in 0..10 {
        service
            .check_listener_join_limit("203.0.113.9")
            .await
            .unwrap();
    }
    assert_eq!(
        retry_after(service.check_listener_join_limit("203.0.113.9").await),
        6
    );
    for _ in 0..20 {
        service
            .check_connection_attempt_limit("203.0.113.9")
            .await
            .unwrap();
    }
    assert_eq!(
        retry_after(service.check_connection_attempt_limit("203.0.113.9").await),
        3
    );
}

#[tokio::test]
async fn denials_carry_the_operation_and_limit() {
    let (service, _) = service();
    service.check_heartbeat_limit("c").await.unwrap();
    service.check_heartbeat_limit("c").await.unwrap();
    let err = service.check_heartbeat_limit("c").await.unwrap_err();
    assert!(matches!(
        err,
        RateLimitError::Exceeded {
            operation: Operation::Heartbeat,
            limit: 2,
            retry_after: 30
        }
    ));
    assert_eq!(err.retry_after(), Some(30));
    assert_eq!(
        err.to_string(),
        "rate limit exceeded for heartbeat; retry after 30 seconds"
    );
}

#[tokio::test]
async fn retry_after_is_rounded_up_and_never_zero() {
    let (service, clock) = service();
    service.check_heartbeat_limit("c").await.unwrap();
    service.check_heartbeat_limit("c").await.unwrap();
    clock.advance(Duration::from_millis(29_999));
    let verdict = service
        .decide(Operation::Heartbeat, Identifier::connection("c"), 1)
        .await
        .unwrap();
    assert!(!verdict.allowed());
    assert_eq!(verdict.decision.retry_after, Duration::from_millis(1));
    assert_eq!(verdict.retry_after_secs(), 1);
}

#[tokio::test]
async fn status_reports_the_seeds_fields_without_consuming() {
    let (service, clock) = service();
    let status = service
        .get_rate_limit_status(Operation::SessionCreate, IdentifierKind::User, "user-123")
        .await
        .unwrap();
    assert_eq!(
        status,
        Status {
            count: 0,
            limit: 50,
            reset_in_seconds: 0,
            window_duration: 3600
        }
    );
    for _ in 0..15 {
        service
            .check_session_creation_limit("user-123")
            .await
            .unwrap();
    }
    let status = service
        .get_rate_limit_status(Operation::SessionCreate, IdentifierKind::User, "user-123")
        .await
        .unwrap();
    assert_eq!(
        status,
        Status {
            count: 15,
            limit: 50,
            reset_in_seconds: 1080,
            window_duration: 3600
        }
    );
    // Asking again consumed nothing.
    let again = service
        .get_rate_limit_status(Operation::SessionCreate, IdentifierKind::User, "user-123")
        .await
        .unwrap();
    assert_eq!(again, status);
    clock.advance(Duration::from_secs(3600));
    let status = service
        .get_rate_limit_status(Operation::SessionCreate, IdentifierKind::User, "user-123")
        .await
        .unwrap();
    assert_eq!((status.count, status.reset_in_seconds), (0, 0));
    // The status of the same value under another kind is a different key.
    let other = service
        .get_rate_limit_status(Operation::SessionCreate, IdentifierKind::Ip, "user-123")
        .await
        .unwrap();
    assert_eq!(other.count, 0);
}

#[tokio::test]
async fn cost_and_reset() {
    let (service, _) = service();
    let id = Identifier::ip("192.0.2.1");
    let verdict = service.check(Operation::ListenerJoin, id, 7).await.unwrap();
    assert_eq!(verdict.decision.remaining, 3);
    assert_eq!(
        retry_after(service.check(Operation::ListenerJoin, id, 4).await),
        6
    );
    let err = service
        .check(Operation::ListenerJoin, id, 11)
        .await
        .unwrap_err();
    assert!(matches!(err, RateLimitError::InvalidCost { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("cost of 11 exceeds the capacity of 10"),
        "{err}"
    );
    service.reset(Operation::ListenerJoin, id).await.unwrap();
    let verdict = service
        .check(Operation::ListenerJoin, id, 10)
        .await
        .unwrap();
    assert_eq!(verdict.decision.remaining, 0);
}

#[tokio::test]
async fn configured_limits_apply() {
    let limits =
        Limits::from_lookup(|var| (var == "RATE_LIMIT_HEARTBEATS_PER_MIN").then(|| "4".into()))
            .unwrap();
    let service = RateLimitService::with_clock(MemoryStore::new(), limits, FakeClock::at_secs(10));
    for _ in 0..4 {
        service.check_heartbeat_limit("c").await.unwrap();
    }
    assert_eq!(retry_after(service.check_heartbeat_limit("c").await), 15);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_tasks_on_one_key_never_over_admit() {
    let (service, _) = service();
    let service = Arc::new(service);
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let service = service.clone();
            tokio::spawn(async move {
                service
                    .check_connection_attempt_limit("198.51.100.7")
                    .await
                    .is_ok()
            })
        })
        .collect();
    let mut allowed = 0;
    for task in tasks {
        allowed += usize::from(task.await.unwrap());
    }
    assert_eq!(allowed, 20);
}

/// A store that always fails, as an unreachable table does, counting calls.
#[derive(Default)]
struct BrokenStore {
    calls: AtomicU32,
}

impl Store for BrokenStore {
    async fn apply(&self, _: &Key<'_>, _: &Step) -> Result<Outcome, StoreError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Err(StoreError::new(
            StoreErrorKind::Unavailable,
            "table RateLimits not found",
        ))
    }
    async fn load(&self, _: &Key<'_>) -> Result<Nanos, StoreError> {
        Err(StoreError::new(StoreErrorKind::Timeout, "no answer"))
    }
    async fn remove(&self, _: &Key<'_>) -> Result<(), StoreError> {
        Err(StoreError::new(StoreErrorKind::Timeout, "no answer"))
    }
}

/// Collects log output so that tests can read it.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs `body` on a current-thread runtime with logs captured; returns the logs.
fn with_logs(body: impl Future<Output = ()>) -> String {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    tracing::subscriber::with_default(subscriber, || runtime.block_on(body));
    String::from_utf8(logs.0.lock().unwrap().clone()).unwrap()
}

fn broken(mode: FailureMode, clock: &FakeClock) -> RateLimitService<BrokenStore, FakeClock> {
    RateLimitService::with_clock(BrokenStore::default(), Limits::default(), clock.clone())
        .with_policy(FailurePolicy::all(mode))
        .with_breaker(CircuitBreaker::new(3, Duration::from_secs(5)))
}

#[test]
fn an_unavailable_store_fails_open_with_a_warning_then_the_breaker_skips_it() {
    let clock = FakeClock::at_secs(1_700_000_000);
    let service = broken(FailureMode::Open, &clock);
    let logs = with_logs(async {
        for _ in 0..10 {
            let verdict = service.check_heartbeat_limit("conn-1").await.unwrap();
            assert!(verdict.allowed() && verdict.degraded);
        }
        let err = service
            .get_rate_limit_status(Operation::Heartbeat, IdentifierKind::Connection, "conn-1")
            .await
            .unwrap_err();
        assert!(matches!(err, RateLimitError::Store(ref e) if e.kind() == StoreErrorKind::Timeout));
    });
    // Three failures open the breaker; the other seven decisions skip the store.
    assert_eq!(service.store().calls.load(Ordering::SeqCst), 3);
    assert_eq!(
        logs.matches("rate-limit store unavailable").count(),
        3,
        "{logs}"
    );
    assert_eq!(logs.matches("fail open: allowed").count(), 3, "{logs}");
    assert_eq!(logs.matches("circuit breaker opened").count(), 1, "{logs}");
    assert!(logs.contains("operation=\"heartbeat\""), "{logs}");
    assert!(
        !logs.contains("conn-1"),
        "identifiers must not be logged: {logs}"
    );

    // After the cool-down one decision probes the store again.
    clock.advance(Duration::from_secs(5));
    with_logs(async {
        service.check_heartbeat_limit("conn-1").await.unwrap();
        service.check_heartbeat_limit("conn-1").await.unwrap();
    });
    assert_eq!(service.store().calls.load(Ordering::SeqCst), 4);
}

#[test]
fn closed_mode_denies_until_the_breaker_may_close() {
    let clock = FakeClock::at_secs(1_700_000_000);
    let service = broken(FailureMode::Closed, &clock);
    with_logs(async {
        let verdict = service
            .decide(Operation::ListenerJoin, Identifier::ip("a"), 1)
            .await
            .unwrap();
        assert!(!verdict.allowed() && verdict.degraded);
        assert_eq!(verdict.retry_after_secs(), 1);
        for _ in 0..2 {
            service
                .decide(Operation::ListenerJoin, Identifier::ip("a"), 1)
                .await
                .unwrap();
        }
        // The breaker is open for 5 s: that is how long to wait.
        let err = service.check_listener_join_limit("a").await.unwrap_err();
        assert_eq!(err.retry_after(), Some(5));
    });
}

#[test]
fn local_mode_still_stops_one_abusive_client() {
    let clock = FakeClock::at_secs(1_700_000_000);
    let service = broken(FailureMode::Local, &clock);
    with_logs(async {
        for _ in 0..2 {
            let verdict = service.check_heartbeat_limit("flood").await.unwrap();
            assert!(verdict.degraded);
        }
        let err = service.check_heartbeat_limit("flood").await.unwrap_err();
        assert_eq!(err.retry_after(), Some(30));
        // Others are not affected.
        service.check_heartbeat_limit("calm").await.unwrap();
    });
}

#[test]
fn modes_apply_per_operation() {
    let clock = FakeClock::at_secs(1_700_000_000);
    let service = RateLimitService::with_clock(BrokenStore::default(), Limits::default(), clock)
        .with_policy(
            FailurePolicy::all(FailureMode::Open)
                .with(Operation::SessionCreate, FailureMode::Closed),
        );
    with_logs(async {
        assert!(service.check_heartbeat_limit("c").await.is_ok());
        assert!(service.check_session_creation_limit("u").await.is_err());
    });
}

#[tokio::test]
async fn shadow_mode_decides_and_counts_but_never_denies() {
    let clock = FakeClock::at_secs(1_700_000_000);
    let service = RateLimitService::with_clock(MemoryStore::new(), Limits::default(), clock)
        .with_shadow(ShadowMode::all(false).with(Operation::Heartbeat, true));
    let mut would_deny = 0;
    for _ in 0..5 {
        let verdict = service.check_heartbeat_limit("c").await.unwrap();
        assert!(verdict.allowed() && verdict.shadow);
        assert_eq!(verdict.retry_after_secs(), 0);
        if verdict.would_deny() {
            would_deny += 1;
            assert!(!verdict.decision.allowed);
            assert_eq!(verdict.decision.retry_after, Duration::from_secs(30));
        }
    }
    assert_eq!(would_deny, 3);
    // Would-be denials consume nothing, as real ones.
    let status = service
        .get_rate_limit_status(Operation::Heartbeat, IdentifierKind::Connection, "c")
        .await
        .unwrap();
    assert_eq!(status.count, 2);
    // Operations not in shadow mode still deny.
    for _ in 0..10 {
        service
            .check_listener_join_limit("192.0.2.1")
            .await
            .unwrap();
    }
    assert_eq!(
        retry_after(service.check_listener_join_limit("192.0.2.1").await),
        6
    );
}
