//! The service API with a fake clock: errors, costs, failure modes, shadow
//! mode, policies of several limits, tiers, secrets, `decide_both` and
//! verdicts. The seed's scenarios on every store are in the conformance
//! suite (`conformance.rs`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ratelimiter::{
    Builder, CircuitBreaker, Config, Degradation, FailureMode, FakeClock, Key, Kind, MemoryStore,
    PolicyId, RateLimitError, RateLimitService, Request, Slot, Store, StoreErrorKind, Verdict,
};
use ratelimiter_testing::conformance::retry_after;
use ratelimiter_testing::fakes::Faulty;

/// One decision, a denial as an error: what the seed's checks do, for any
/// request.
async fn check<'r, S: Store>(
    service: &RateLimitService<S, FakeClock>,
    request: impl Into<Request<'r>>,
) -> Result<Verdict, RateLimitError> {
    Ok(service.decide(request).await?.into_result()?)
}

fn service() -> (RateLimitService<MemoryStore, FakeClock>, FakeClock) {
    let clock = FakeClock::at_secs(1_700_000_000);
    (Builder::new().clock(clock.clone()).in_memory(), clock)
}

#[tokio::test]
async fn third_heartbeat_in_a_minute_is_denied_for_thirty_seconds() {
    let (service, clock) = service();
    let first = service.check_heartbeat_limit("conn-1").await.unwrap();
    assert_eq!((first.decision.remaining, first.degraded), (1, None));
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
async fn denials_carry_the_operation_and_limit() {
    let (service, _) = service();
    service.check_heartbeat_limit("c").await.unwrap();
    service.check_heartbeat_limit("c").await.unwrap();
    let err = service.check_heartbeat_limit("c").await.unwrap_err();
    let denied = err.denied().expect("a denial");
    assert_eq!(denied.policy_name(), "heartbeat");
    assert_eq!(denied.verdict().decision.limit, 2);
    assert_eq!(denied.retry_after_secs(), 30);
    assert_eq!(denied.retry_after(), Duration::from_secs(30));
    // The whole verdict is kept: how it was decided too.
    assert_eq!(
        (denied.verdict().calls, denied.verdict().cached),
        (1, false)
    );
    assert_eq!(
        err.to_string(),
        "rate limit exceeded for heartbeat; retry after 30 seconds"
    );
    assert_eq!(
        denied.to_string(),
        "rate limit exceeded for heartbeat; retry after 30 seconds"
    );
}

#[tokio::test]
async fn retry_after_is_rounded_up_and_never_zero() {
    let (service, clock) = service();
    service.check_heartbeat_limit("c").await.unwrap();
    service.check_heartbeat_limit("c").await.unwrap();
    clock.advance(Duration::from_millis(29_999));
    let verdict = service.decide((PolicyId::HEARTBEAT, "c")).await.unwrap();
    assert!(!verdict.allowed());
    assert_eq!(verdict.decision.retry_after, Duration::from_millis(1));
    assert_eq!(verdict.retry_after_secs(), 1);
}

#[tokio::test]
async fn cost_and_reset() {
    let (service, _) = service();
    let id = "192.0.2.1";
    let verdict = check(
        &service,
        Request::from((PolicyId::LISTENER_JOIN, id)).cost(7),
    )
    .await
    .unwrap();
    assert_eq!(verdict.decision.remaining, 3);
    assert_eq!(
        retry_after(
            check(
                &service,
                Request::from((PolicyId::LISTENER_JOIN, id)).cost(4)
            )
            .await
        ),
        6
    );
    let err = check(
        &service,
        Request::from((PolicyId::LISTENER_JOIN, id)).cost(11),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, RateLimitError::InvalidCost { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("cost of 11 exceeds the capacity of 10"),
        "{err}"
    );
    service.reset((PolicyId::LISTENER_JOIN, id)).await.unwrap();
    let verdict = check(
        &service,
        Request::from((PolicyId::LISTENER_JOIN, id)).cost(10),
    )
    .await
    .unwrap();
    assert_eq!(verdict.decision.remaining, 0);
}

#[tokio::test]
async fn configured_limits_apply() {
    let config =
        Config::from_lookup(|var| (var == "RATE_LIMIT_HEARTBEATS_PER_MIN").then(|| "4".into()))
            .unwrap();
    let service = Builder::from_config(config)
        .clock(FakeClock::at_secs(10))
        .in_memory();
    for _ in 0..4 {
        service.check_heartbeat_limit("c").await.unwrap();
    }
    assert_eq!(retry_after(service.check_heartbeat_limit("c").await), 15);
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

/// A service on a store that fails everything, and a handle on the store.
fn broken(mode: FailureMode, clock: &FakeClock) -> (RateLimitService<Faulty, FakeClock>, Faulty) {
    let store = Faulty::broken();
    let service = Builder::new()
        .clock(clock.clone())
        .failure_mode(mode)
        .breaker(CircuitBreaker::new(3, Duration::from_secs(5)))
        .deny_cache(0)
        .build(store.clone());
    (service, store)
}

#[test]
fn an_unavailable_store_fails_open_with_a_warning_then_the_breaker_skips_it() {
    let clock = FakeClock::at_secs(1_700_000_000);
    let (service, store) = broken(FailureMode::Open, &clock);
    let logs = with_logs(async {
        for _ in 0..10 {
            let verdict = service.check_heartbeat_limit("conn-1").await.unwrap();
            assert!(verdict.allowed() && verdict.is_degraded());
        }
        let err = service
            .get_rate_limit_status(PolicyId::HEARTBEAT, &Kind::CONNECTION, "conn-1")
            .await
            .unwrap_err();
        assert!(matches!(err, RateLimitError::Store(ref e) if e.kind() == StoreErrorKind::Timeout));
    });
    // Three failures open the breaker; the other seven decisions skip the store.
    assert_eq!(store.calls(), 3);
    assert_eq!(
        logs.matches("rate-limit store unavailable").count(),
        3,
        "{logs}"
    );
    assert_eq!(logs.matches("fail open: allowed").count(), 3, "{logs}");
    assert_eq!(logs.matches("circuit breaker opened").count(), 1, "{logs}");
    assert!(logs.contains("policy=\"heartbeat\""), "{logs}");
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
    assert_eq!(store.calls(), 4);
}

#[test]
fn closed_mode_denies_until_the_breaker_may_close() {
    let clock = FakeClock::at_secs(1_700_000_000);
    let (service, _) = broken(FailureMode::Closed, &clock);
    with_logs(async {
        let verdict = service
            .decide((PolicyId::LISTENER_JOIN, "a"))
            .await
            .unwrap();
        assert!(!verdict.allowed() && verdict.is_degraded());
        assert_eq!(verdict.degraded, Some(Degradation::Unavailable));
        assert_eq!(verdict.retry_after_secs(), 1);
        for _ in 0..2 {
            let verdict = service
                .decide((PolicyId::LISTENER_JOIN, "a"))
                .await
                .unwrap();
            assert_eq!(verdict.calls, 1);
        }
        // The breaker is open for 5 s: that is how long to wait.
        let verdict = service
            .decide((PolicyId::LISTENER_JOIN, "a"))
            .await
            .unwrap();
        assert_eq!(verdict.degraded, Some(Degradation::BreakerOpen));
        assert_eq!(verdict.calls, 0);
        let err = service.check_listener_join_limit("a").await.unwrap_err();
        assert_eq!(err.denied().map(|d| d.retry_after_secs()), Some(5));
    });
}

#[test]
fn local_mode_still_stops_one_abusive_client() {
    let clock = FakeClock::at_secs(1_700_000_000);
    let (service, _) = broken(FailureMode::Local, &clock);
    with_logs(async {
        for _ in 0..2 {
            let verdict = service.check_heartbeat_limit("flood").await.unwrap();
            assert!(verdict.is_degraded());
        }
        let err = service.check_heartbeat_limit("flood").await.unwrap_err();
        assert_eq!(err.denied().map(|d| d.retry_after_secs()), Some(30));
        // Others are not affected.
        service.check_heartbeat_limit("calm").await.unwrap();
    });
}

#[test]
fn modes_apply_per_operation() {
    let clock = FakeClock::at_secs(1_700_000_000);
    let config = Config::from_lookup(|var| {
        (var == "RATE_LIMIT_FAILURE_MODE_SESSION_CREATE").then(|| "closed".into())
    })
    .unwrap();
    let service = Builder::from_config(config)
        .clock(clock)
        .build(Faulty::broken());
    with_logs(async {
        assert!(service.check_heartbeat_limit("c").await.is_ok());
        assert!(service.check_session_creation_limit("u").await.is_err());
    });
}

#[tokio::test]
async fn shadow_mode_decides_and_counts_but_never_denies() {
    let clock = FakeClock::at_secs(1_700_000_000);
    let config = Config::from_lookup(|var| {
        (var == "RATE_LIMIT_SHADOW_MODE_HEARTBEAT").then(|| "true".into())
    })
    .unwrap();
    let service = Builder::from_config(config).clock(clock).in_memory();
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
        .get_rate_limit_status(PolicyId::HEARTBEAT, &Kind::CONNECTION, "c")
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

/// A custom policy of two limits and a tier, from a configuration file.
fn custom() -> (
    RateLimitService<MemoryStore, FakeClock>,
    FakeClock,
    PolicyId,
    PolicyId,
) {
    let file = r#"
[policy.send_message]
key = "connection"
limits = ["3/10s", "100/min"]

[policy.api_calls]
key = "tenant"
limits = ["2/min"]

[policy.api_calls.tier.pro]
limits = ["5/min", "1000/h"]
"#;
    let config = Config::from_file_text("limits.toml", file, |_| None).unwrap();
    let clock = FakeClock::at_secs(1_700_000_000);
    let service = Builder::from_config(config)
        .clock(clock.clone())
        .in_memory();
    let send = service.policy_id("send_message").unwrap();
    let api = service.policy_id("api_calls").unwrap();
    (service, clock, send, api)
}

#[tokio::test]
async fn a_two_window_policy_denies_on_the_tightest_and_reports_every_limit() {
    let (service, clock, send, _) = custom();
    for expect in [2, 1, 0] {
        let verdict = check(&service, (send, "conn-1")).await.unwrap();
        assert_eq!(verdict.decision.remaining, expect);
        assert_eq!(verdict.limits().len(), 2);
        assert_eq!(verdict.limits()[1].remaining, 97 + expect);
    }
    // The fourth message within ten seconds waits for the short window.
    let verdict = service.decide((send, "conn-1")).await.unwrap();
    assert!(!verdict.allowed());
    assert_eq!(verdict.decision.limit, 3);
    assert_eq!(verdict.retry_after_secs(), 4);
    // The long window would allow; it is reported, and nothing was taken.
    assert_eq!(verdict.limits()[1].retry_after, Duration::ZERO);
    assert_eq!(verdict.limits()[1].remaining, 97);
    let statuses = service
        .status(Request::from((send, "conn-1")))
        .await
        .unwrap();
    assert_eq!(statuses.iter().map(|s| s.count).collect::<Vec<_>>(), [3, 3]);
    assert_eq!(
        statuses
            .iter()
            .map(|s| s.window_duration)
            .collect::<Vec<_>>(),
        [10, 60]
    );
    // The seed's status reports the fullest bucket.
    let status = service
        .get_rate_limit_status(send, &Kind::CONNECTION, "conn-1")
        .await
        .unwrap();
    assert_eq!((status.count, status.limit), (3, 3));
    clock.advance(Duration::from_millis(3334));
    check(&service, (send, "conn-1")).await.unwrap();
}

#[tokio::test]
async fn the_long_window_of_a_policy_holds_when_the_short_one_refills() {
    let config = Config::from_file_text(
        "limits.toml",
        "[policy.burst]\nkey = \"user\"\nlimits = [\"10/s\", \"30/min\"]\n",
        |_| None,
    )
    .unwrap();
    let clock = FakeClock::at_secs(1_700_000_000);
    let service = Builder::from_config(config)
        .clock(clock.clone())
        .in_memory();
    let id = service.policy_id("burst").unwrap();
    // Ten a second for ten seconds: the second's bucket always refills,
    // the minute's (30, one back every 2 s) runs dry in the third second.
    let mut allowed = Vec::new();
    let mut last = None;
    for _ in 0..10 {
        let mut this_second = 0;
        for _ in 0..10 {
            let verdict = service.decide((id, "u")).await.unwrap();
            this_second += u32::from(verdict.allowed());
            last = Some(verdict);
        }
        allowed.push(this_second);
        clock.advance(Duration::from_secs(1));
    }
    assert_eq!(allowed, [10, 10, 10, 1, 1, 0, 1, 0, 1, 0]);
    let last = last.unwrap();
    assert!(!last.allowed());
    assert_eq!(last.decision.limit, 30, "the minute decides");
    assert_eq!(last.limits()[0].retry_after, Duration::ZERO);
}

#[test]
fn tiers_get_their_limits_and_unknown_tiers_the_default_with_one_warning() {
    let (service, _, _, api) = custom();
    let logs = with_logs(async {
        let pro = Request::from((api, "acme")).tier(Some("pro"));
        for _ in 0..5 {
            check(&service, pro).await.unwrap();
        }
        let verdict = service.decide(pro).await.unwrap();
        assert!(!verdict.allowed());
        assert_eq!(verdict.decision.limit, 5);
        // Another tenant in a tier the policy does not know: the default 2/min.
        let odd = Request::from((api, "globex")).tier(Some("platinum"));
        for _ in 0..2 {
            check(&service, odd).await.unwrap();
        }
        assert!(check(&service, odd).await.is_err());
        // Each tier has its own buckets: acme on the default tier starts full.
        check(&service, (api, "acme")).await.unwrap();
    });
    assert_eq!(logs.matches("unknown tier").count(), 1, "{logs}");
    assert!(logs.contains("platinum"), "{logs}");
}

#[tokio::test]
async fn a_key_secret_changes_keys_not_decisions() {
    let config =
        Config::from_lookup(|var| (var == "RATE_LIMIT_KEY_SECRET").then(|| "k".repeat(32)))
            .unwrap();
    let store = Faulty::default();
    let service = Builder::from_config(config).build(store.clone());
    for _ in 0..2 {
        service.check_heartbeat_limit("conn-1").await.unwrap();
    }
    assert!(service.check_heartbeat_limit("conn-1").await.is_err());
    // Nothing under the raw identifier; status and reset take it all the same.
    let slot = service.policies()[PolicyId::HEARTBEAT].limits()[0]
        .slot()
        .clone();
    assert_eq!(
        store
            .tat(&Key::new(&Kind::CONNECTION, "conn-1"), &slot)
            .await,
        0
    );
    let status = service
        .get_rate_limit_status(PolicyId::HEARTBEAT, &Kind::CONNECTION, "conn-1")
        .await
        .unwrap();
    assert_eq!(status.count, 2);
    service
        .reset((PolicyId::HEARTBEAT, "conn-1"))
        .await
        .unwrap();
    service.check_heartbeat_limit("conn-1").await.unwrap();
}

#[tokio::test]
async fn verdicts_say_how_they_were_decided() {
    let clock = FakeClock::at_secs(1_700_000_000);
    let service = Builder::new()
        .clock(clock.clone())
        .build(MemoryStore::new());
    let first = service.decide((PolicyId::HEARTBEAT, "c")).await.unwrap();
    assert_eq!(
        (first.calls, first.cached, first.degraded),
        (1, false, None)
    );
    service.decide((PolicyId::HEARTBEAT, "c")).await.unwrap();
    let denied = service.decide((PolicyId::HEARTBEAT, "c")).await.unwrap();
    // The second allowed call told the TAT: the denial needs no call.
    assert!(!denied.allowed());
    assert_eq!((denied.calls, denied.cached), (0, true));
    assert_eq!(denied.retry_after_secs(), 30);
}

#[test]
fn a_known_exhausted_key_stays_denied_and_cached_denials_leave_the_breaker_alone() {
    let clock = FakeClock::at_secs(1_700_000_000);
    let flaky = Faulty::default();
    let service = Builder::new()
        .clock(clock.clone())
        .breaker(CircuitBreaker::new(2, Duration::from_secs(5)))
        .build(flaky.clone());
    with_logs(async {
        service.check_heartbeat_limit("flood").await.unwrap();
        service.check_heartbeat_limit("flood").await.unwrap();
        flaky.down(true);
        // The table is away; the flood is denied from what this process knows.
        for _ in 0..10 {
            let verdict = service
                .decide((PolicyId::HEARTBEAT, "flood"))
                .await
                .unwrap();
            assert!(!verdict.allowed());
            assert_eq!(
                (verdict.cached, verdict.calls, verdict.degraded),
                (true, 0, None)
            );
        }
        assert_eq!(flaky.calls(), 2);
        // One failure is not enough to open this breaker: cached denials did
        // not count as successes in between.
        assert!(
            service
                .decide((PolicyId::HEARTBEAT, "a"))
                .await
                .unwrap()
                .is_degraded()
        );
        service
            .decide((PolicyId::HEARTBEAT, "flood"))
            .await
            .unwrap();
        let verdict = service.decide((PolicyId::HEARTBEAT, "b")).await.unwrap();
        assert_eq!(verdict.degraded, Some(Degradation::Timeout));
        assert_eq!(
            service.breaker().state(ratelimiter::Clock::now(&clock)),
            ratelimiter::failure::BreakerState::Open
        );
        // While the breaker is open, the exhausted key is still denied.
        let verdict = service
            .decide((PolicyId::HEARTBEAT, "flood"))
            .await
            .unwrap();
        assert!(!verdict.allowed() && verdict.cached);
        let other = service.decide((PolicyId::HEARTBEAT, "c")).await.unwrap();
        assert_eq!(other.degraded, Some(Degradation::BreakerOpen));
    });
}

/// A listener's `$connect`: attempts and joins count the same address.
fn listener(ip: &str) -> (Request<'_>, Request<'_>) {
    (
        Request::from((PolicyId::CONNECTION_ATTEMPT, ip)),
        Request::from((PolicyId::LISTENER_JOIN, ip)),
    )
}

#[tokio::test]
async fn a_listeners_two_checks_take_one_call_and_keep_the_seeds_order() {
    let clock = FakeClock::at_secs(1_700_000_000);
    let config =
        Config::from_lookup(|var| (var == "RATE_LIMIT_LISTENER_JOINS_PER_MIN").then(|| "2".into()))
            .unwrap();
    let flaky = Faulty::default();
    let service = Builder::from_config(config)
        .clock(clock)
        .build(flaky.clone());
    let calls = || flaky.calls();
    let (attempt, join) = listener("198.51.100.1");
    for n in 1..=2 {
        let (v1, v2) = service.decide_both(attempt, join).await.unwrap();
        assert!(v1.allowed() && v2.unwrap().allowed());
        assert_eq!((v1.calls, calls()), (1, n), "one call for both");
    }
    // The join is refused; the attempt still counts (a second call).
    let (v1, v2) = service.decide_both(attempt, join).await.unwrap();
    assert!(v1.allowed());
    assert!(!v2.as_ref().unwrap().allowed());
    assert_eq!(v2.unwrap().retry_after_secs(), 30);
    let status = |policy| service.get_rate_limit_status(policy, &Kind::IP, "198.51.100.1");
    assert_eq!(status(PolicyId::CONNECTION_ATTEMPT).await.unwrap().count, 3);
    assert_eq!(status(PolicyId::LISTENER_JOIN).await.unwrap().count, 2);
    // Attempts run out: refused, and the join is not even asked.
    for _ in 0..17 {
        service.decide_both(attempt, join).await.unwrap();
    }
    let (v1, v2) = service.decide_both(attempt, join).await.unwrap();
    assert!(!v1.allowed() && v2.is_none());
    assert_eq!(
        status(PolicyId::CONNECTION_ATTEMPT).await.unwrap().count,
        20
    );
    assert_eq!(status(PolicyId::LISTENER_JOIN).await.unwrap().count, 2);
}

#[tokio::test]
async fn an_attempt_shadow_mode_lets_through_still_leads_to_the_join() {
    let config = Config::from_lookup(|var| match var {
        "RATE_LIMIT_CONNECTION_ATTEMPTS_PER_MIN" => Some("1".into()),
        "RATE_LIMIT_SHADOW_MODE_CONNECTION_ATTEMPT" => Some("true".into()),
        _ => None,
    })
    .unwrap();
    // With the deny cache (decided in turn) and without (one call for both).
    for cached_buckets in [10_000, 0] {
        let service = Builder::from_config(config.clone())
            .clock(FakeClock::at_secs(1_700_000_000))
            .deny_cache(cached_buckets)
            .build(MemoryStore::new());
        let (attempt, join) = listener("198.51.100.3");
        service.decide_both(attempt, join).await.unwrap();
        // The attempt is over its limit, but only in shadow mode: let
        // through, and the join is decided (and counted) as after it.
        let (first, second) = service.decide_both(attempt, join).await.unwrap();
        assert!(first.would_deny() && first.allowed(), "{first:?}");
        assert!(second.expect("the join is decided").allowed());
        let joins = service
            .get_rate_limit_status(PolicyId::LISTENER_JOIN, &Kind::IP, "198.51.100.3")
            .await
            .unwrap();
        assert_eq!(joins.count, 2, "deny cache of {cached_buckets}");
    }
}

#[tokio::test]
async fn a_refused_attempt_gives_back_the_session_it_raced() {
    let clock = FakeClock::at_secs(1_700_000_000);
    let config = Config::from_lookup(|var| {
        (var == "RATE_LIMIT_CONNECTION_ATTEMPTS_PER_MIN").then(|| "1".into())
    })
    .unwrap();
    // Without the deny cache, so that both calls really race.
    let service = Builder::from_config(config)
        .clock(clock)
        .deny_cache(0)
        .build(MemoryStore::new());
    let attempt = Request::from((PolicyId::CONNECTION_ATTEMPT, "203.0.113.5"));
    let session = Request::from((PolicyId::SESSION_CREATE, "alice"));
    let (v1, v2) = service.decide_both(attempt, session).await.unwrap();
    assert!(v1.allowed() && v2.unwrap().allowed());
    let (v1, v2) = service.decide_both(attempt, session).await.unwrap();
    assert!(!v1.allowed() && v2.is_none());
    // The refused attempt took nothing from alice's sessions.
    let sessions = service
        .get_rate_limit_status(PolicyId::SESSION_CREATE, &Kind::USER, "alice")
        .await
        .unwrap();
    assert_eq!(sessions.count, 1);
}

#[test]
fn a_throttled_hot_key_is_decided_here_at_its_limits_and_the_breaker_stays_closed() {
    let clock = FakeClock::at_secs(1_700_000_000);
    let flaky = Faulty::default();
    // Open on failure, and a breaker that a single failure would open.
    let service = Builder::new()
        .clock(clock.clone())
        .breaker(CircuitBreaker::new(1, Duration::from_secs(5)))
        .deny_cache(0)
        .build(flaky.clone());
    flaky.throttle(Some("connection#hot"));
    let logs = with_logs(async {
        let mut admitted = 0;
        for _ in 0..20 {
            let verdict = service.decide((PolicyId::HEARTBEAT, "hot")).await.unwrap();
            assert_eq!(verdict.degraded, Some(Degradation::Throttled));
            admitted += u32::from(verdict.allowed());
        }
        // At most its limit, not fail-open's twenty.
        assert_eq!(admitted, 2);
        // Other keys are exact and not degraded; the breaker never opened.
        let cold = service.decide((PolicyId::HEARTBEAT, "cold")).await.unwrap();
        assert_eq!((cold.degraded, cold.calls), (None, 1));
    });
    assert_eq!(
        service.breaker().state(ratelimiter::Clock::now(&clock)),
        ratelimiter::failure::BreakerState::Closed
    );
    // Reported once, not twenty times.
    assert_eq!(logs.matches("hot key").count(), 1, "{logs}");
    assert!(!logs.contains("circuit breaker opened"), "{logs}");
}

#[test]
fn the_local_fallback_starts_from_what_the_store_last_said() {
    let clock = FakeClock::at_secs(1_700_000_000);
    let flaky = Faulty::default();
    let service = Builder::new()
        .clock(clock)
        .failure_mode(FailureMode::Local)
        .build(flaky.clone());
    with_logs(async {
        // One of the connection's two heartbeats is used while the store is up.
        assert!(
            service
                .decide((PolicyId::HEARTBEAT, "c"))
                .await
                .unwrap()
                .allowed()
        );
        flaky.down(true);
        // The store is down: one more, not two.
        let allowed: Vec<bool> = decide_in_turn(&service, 3).await;
        assert_eq!(allowed, [true, false, false]);
    });
}

/// A service on a [`Faulty`] store, behind the deny cache, whose breaker
/// opens at the first failure for 5 s; and a handle on the store.
fn flaky_with_breaker(clock: &FakeClock) -> (RateLimitService<Faulty, FakeClock>, Faulty) {
    let flaky = Faulty::default();
    let service = Builder::new()
        .clock(clock.clone())
        .breaker(CircuitBreaker::new(1, Duration::from_secs(5)))
        .build(flaky.clone());
    (service, flaky)
}

#[test]
fn a_cached_denial_after_the_cool_down_leaves_the_probe_to_a_call() {
    let clock = FakeClock::at_secs(1_700_000_000);
    let (service, flaky) = flaky_with_breaker(&clock);
    with_logs(async {
        // An address that used its 10 joins: the cache knows it is refused.
        let (attempt, join) = listener("198.51.100.7");
        for _ in 0..10 {
            let (_, joined) = service.decide_both(attempt, join).await.unwrap();
            assert!(joined.unwrap().allowed());
        }
        // The store fails once: the breaker opens for 5 s.
        flaky.down(true);
        let failed = service.decide((PolicyId::HEARTBEAT, "a")).await.unwrap();
        assert_eq!(failed.degraded, Some(Degradation::Timeout));
        flaky.down(false);
        // The cool-down is over; the next join comes back only at 6 s.
        clock.advance(Duration::from_secs(5));
        // The first decision after the cool-down is the flooder's, refused
        // from the cache: it must not take the one probe and drop it.
        let (attempt_verdict, joined) = service.decide_both(attempt, join).await.unwrap();
        assert!(joined.is_none_or(|v| !v.allowed()), "still refused");
        // The attempt went to the store as the probe, and closed the breaker.
        assert_eq!(attempt_verdict.degraded, None, "{attempt_verdict:?}");
        let next = service.decide((PolicyId::HEARTBEAT, "b")).await.unwrap();
        assert_eq!((next.degraded, next.calls), (None, 1), "{next:?}");
    });
}

#[test]
fn a_throttled_probe_closes_the_breaker() {
    let clock = FakeClock::at_secs(1_700_000_000);
    let (service, flaky) = flaky_with_breaker(&clock);
    with_logs(async {
        flaky.down(true);
        service.decide((PolicyId::HEARTBEAT, "a")).await.unwrap();
        flaky.down(false);
        clock.advance(Duration::from_secs(6));
        // The probe finds the store answering, if only to throttle this key.
        flaky.throttle(Some("connection#hot"));
        let hot = service.decide((PolicyId::HEARTBEAT, "hot")).await.unwrap();
        assert_eq!(hot.degraded, Some(Degradation::Throttled));
        let next = service.decide((PolicyId::HEARTBEAT, "b")).await.unwrap();
        assert_eq!((next.degraded, next.calls), (None, 1), "{next:?}");
    });
}

#[test]
fn a_timed_out_call_that_was_applied_is_counted_by_the_local_fallback_too() {
    let clock = FakeClock::at_secs(1_700_000_000);
    let flaky = Faulty::default();
    let service = Builder::new()
        .clock(clock)
        .failure_mode(FailureMode::Local)
        .build(flaky.clone());
    with_logs(async {
        // The table takes the heartbeat, but its answer never arrives.
        flaky.lose_answers(true);
        let lost = service.decide((PolicyId::HEARTBEAT, "c")).await.unwrap();
        assert_eq!(lost.degraded, Some(Degradation::Timeout));
        assert!(lost.allowed(), "decided here, and counted here");
        flaky.lose_answers(false);
        flaky.down(true);
        // Two a minute: the fallback knows one is used, so one more, not two.
        assert_eq!(decide_in_turn(&service, 2).await, [true, false]);
        // The table counted it as well: back up, it refuses the third.
        flaky.down(false);
        let key = Key::new(&Kind::CONNECTION, "c");
        let tat = flaky.tat(&key, &Slot::new("heartbeat@60")).await;
        assert!(tat > 1_700_000_000 * 1_000_000_000, "the table holds it");
    });
}

async fn decide_in_turn(service: &RateLimitService<Faulty, FakeClock>, n: usize) -> Vec<bool> {
    let mut allowed = Vec::new();
    for _ in 0..n {
        let verdict = service.decide((PolicyId::HEARTBEAT, "c")).await.unwrap();
        assert!(verdict.is_degraded() || !verdict.allowed());
        allowed.push(verdict.allowed());
    }
    allowed
}

#[tokio::test]
async fn a_hot_listener_address_is_held_for_both_of_its_checks() {
    let clock = FakeClock::at_secs(1_700_000_000);
    let flaky = Faulty::default();
    let service = Builder::new()
        .clock(clock)
        .deny_cache(0)
        .build(flaky.clone());
    flaky.throttle(Some("ip#198.51.100.99"));
    let (attempt, join) = listener("198.51.100.99");
    let calls = || flaky.calls();
    let (v1, v2) = service.decide_both(attempt, join).await.unwrap();
    assert_eq!(v1.degraded, Some(Degradation::Throttled));
    assert!(v1.allowed() && v2.unwrap().allowed());
    let after_first = calls();
    // Held: the next connects from that address ask the store nothing, and
    // are decided here at the address's own limits.
    let mut admitted = 1;
    for _ in 0..12 {
        let (_, join) = service.decide_both(attempt, join).await.unwrap();
        admitted += u32::from(join.is_some_and(|v| v.allowed()));
    }
    assert_eq!(calls(), after_first, "no call while held");
    assert_eq!(admitted, 10, "the listener limit, decided here");
}

/// A route's policies: messages and bytes per connection, messages per user.
fn route_config(shadow_bytes: bool) -> Config {
    Config::from_file_text(
        "limits.toml",
        &format!(
            "[policy.messages]\nkey = \"connection\"\nlimits = [\"3/s\"]\n\
             [policy.message_bytes]\nkey = \"connection\"\nunit = \"bytes\"\nlimits = [\"100/min\"]\nshadow = {shadow_bytes}\n\
             [policy.user_messages]\nkey = \"user\"\nlimits = [\"4/min\"]\n"
        ),
        |_| None,
    )
    .unwrap()
}

fn route_requests<'a>(
    service: &RateLimitService<Faulty, FakeClock>,
    connection: &'a str,
    user: Option<&'a str>,
    size: u32,
) -> Vec<Request<'a>> {
    let id = |name| service.policy_id(name).unwrap();
    let mut requests = vec![
        Request::from((id("messages"), connection)),
        Request::from((id("message_bytes"), connection)).cost(size),
    ];
    if let Some(user) = user {
        requests.push(Request::from((id("user_messages"), user)));
    }
    requests
}

#[tokio::test]
async fn a_routes_policies_on_one_item_take_one_call_and_all_or_nothing() {
    let flaky = Faulty::default();
    let service = Builder::from_config(route_config(false))
        .clock(FakeClock::at_secs(1_700_000_000))
        .build(flaky.clone());
    let send = |size| route_requests(&service, "conn-1", None, size);
    let verdicts = service.decide_all(&send(60)).await.unwrap();
    assert_eq!(verdicts.len(), 2);
    assert!(verdicts.iter().all(Verdict::allowed));
    assert_eq!(
        verdicts[0].calls + verdicts[1].calls,
        1,
        "one call for both"
    );
    assert_eq!(verdicts[1].decision.remaining, 40);
    assert_eq!(flaky.calls(), 1);
    // 60 more bytes do not fit: refused by the byte quota alone, and the
    // message is not counted either. The first call's answer already says
    // so: no call.
    let refused = service.decide_all(&send(60)).await.unwrap();
    assert_eq!(refused.len(), 1);
    assert_eq!(
        refused[0].policy,
        service.policy_id("message_bytes").unwrap()
    );
    assert!(!refused[0].allowed());
    assert_eq!(
        refused[0].retry_after_secs(),
        12,
        "20 bytes back at 100/min"
    );
    assert!(refused[0].cached);
    assert_eq!((refused[0].calls, flaky.calls()), (0, 1));
    let verdicts = service.decide_all(&send(10)).await.unwrap();
    assert_eq!(
        verdicts[0].decision.remaining, 1,
        "the refused ones took nothing"
    );
}

#[tokio::test]
async fn a_refusal_on_one_item_gives_back_what_the_other_took() {
    let service = Builder::from_config(route_config(false))
        .clock(FakeClock::at_secs(1_700_000_000))
        .deny_cache(0)
        .build(Faulty::default());
    // alice's 4/min runs out over two connections.
    for connection in ["a", "a", "b", "b"] {
        let verdicts = service
            .decide_all(&route_requests(&service, connection, Some("alice"), 1))
            .await
            .unwrap();
        assert_eq!(verdicts.len(), 3);
        assert!(verdicts.iter().all(Verdict::allowed));
    }
    let refused = service
        .decide_all(&route_requests(&service, "c", Some("alice"), 1))
        .await
        .unwrap();
    assert_eq!(refused.len(), 1);
    assert_eq!(
        refused[0].policy,
        service.policy_id("user_messages").unwrap()
    );
    // Two items at once, then the connection's share given back: 3 calls.
    assert_eq!(refused[0].calls, 3);
    let status = service
        .status(Request::from((service.policy_id("messages").unwrap(), "c")))
        .await
        .unwrap();
    assert_eq!(status[0].count, 0, "connection c's message was given back");
}

#[tokio::test]
async fn a_shadow_policy_on_a_route_never_stops_the_others() {
    let service = Builder::from_config(route_config(true))
        .clock(FakeClock::at_secs(1_700_000_000))
        .build(Faulty::default());
    let send = || route_requests(&service, "conn-1", None, 60);
    service.decide_all(&send()).await.unwrap();
    let verdicts = service.decide_all(&send()).await.unwrap();
    assert_eq!(verdicts.len(), 2);
    assert!(verdicts.iter().all(Verdict::allowed));
    assert!(verdicts[1].would_deny(), "{:?}", verdicts[1]);
    assert_eq!(verdicts[0].decision.remaining, 1, "the message counted");
}

#[tokio::test]
async fn a_route_with_a_store_down_follows_each_policys_failure_mode() {
    let flaky = Faulty::default();
    let service = Builder::from_config(route_config(false))
        .clock(FakeClock::at_secs(1_700_000_000))
        .build(flaky.clone());
    flaky.down(true);
    let verdicts = service
        .decide_all(&route_requests(&service, "conn-1", None, 10))
        .await
        .unwrap();
    assert!(verdicts.iter().all(|v| v.allowed() && v.degraded.is_some()));
}

#[tokio::test]
async fn a_shadow_would_be_denial_is_not_given_back_when_another_item_refuses() {
    let config = Config::from_file_text(
        "limits.toml",
        "[policy.shadowed]\nkey = \"connection\"\nlimits = [\"1/min\"]\nshadow = true\n\
         [policy.per_user]\nkey = \"user\"\nlimits = [\"1/min\"]\n",
        |_| None,
    )
    .unwrap();
    let service = Builder::from_config(config)
        .clock(FakeClock::at_secs(1_700_000_000))
        .deny_cache(0)
        .build(MemoryStore::new());
    let (shadowed, per_user) = (
        service.policy_id("shadowed").unwrap(),
        service.policy_id("per_user").unwrap(),
    );
    let action = [
        Request::from((shadowed, "conn-s")),
        Request::from((per_user, "alice")),
    ];
    assert!(
        service
            .decide_all(&action)
            .await
            .unwrap()
            .iter()
            .all(Verdict::allowed)
    );
    // The connection's bucket is spent (a would-be denial, let through),
    // and alice's refuses: nothing was taken from the connection this
    // time, so nothing may be given back to it.
    let refused = service.decide_all(&action).await.unwrap();
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].policy, per_user);
    let status = service
        .status(Request::from((shadowed, "conn-s")))
        .await
        .unwrap();
    assert_eq!(
        status[0].count, 1,
        "the first action's token is still taken"
    );
}

#[tokio::test]
async fn checks_in_turn_on_two_items_take_a_call_each_and_fail_by_mode() {
    let config = Config::from_file_text(
        "limits.toml",
        "[policy.user_connects]\nkey = \"user\"\nlimits = [\"1/h\"]\n",
        |_| None,
    )
    .unwrap();
    let flaky = Faulty::default();
    let service = Builder::from_config(config)
        .clock(FakeClock::at_secs(1_700_000_000))
        .build(flaky.clone());
    let users = service.policy_id("user_connects").unwrap();
    let first = [Request::from((PolicyId::CONNECTION_ATTEMPT, "192.0.2.9"))];
    let second = [
        Request::from((PolicyId::SESSION_CREATE, "carol")),
        Request::from((users, "carol")),
    ];
    let (v1, v2) = service.decide_in_turn(&first, &second).await.unwrap();
    assert!(v1[0].allowed() && v2.unwrap().iter().all(Verdict::allowed));
    assert_eq!(flaky.calls(), 2, "the address's item, then the user's");
    // carol's second: refused by her own hourly limit; the attempt counted.
    let (v1, v2) = service.decide_in_turn(&first, &second).await.unwrap();
    assert!(v1[0].allowed());
    assert_eq!(v2.unwrap()[0].policy, users);
    // The store down: each policy's failure mode decides (open).
    flaky.down(true);
    let (v1, v2) = service.decide_in_turn(&first, &[]).await.unwrap();
    assert!(v1[0].allowed() && v1[0].degraded.is_some());
    assert_eq!(v2, Some(Vec::new()));
    // ...also where both checks share an item, in their one call.
    let join = [Request::from((PolicyId::LISTENER_JOIN, "192.0.2.10"))];
    let attempt = [Request::from((PolicyId::CONNECTION_ATTEMPT, "192.0.2.10"))];
    let (v1, v2) = service.decide_in_turn(&attempt, &join).await.unwrap();
    let v2 = v2.expect("the attempt is allowed, open");
    assert!(v1[0].allowed() && v1[0].degraded.is_some(), "{v1:?}");
    assert!(v2[0].allowed() && v2[0].degraded.is_some(), "{v2:?}");
}

#[tokio::test]
async fn checks_in_turn_on_two_items_go_at_once_and_a_refused_first_gives_back_the_second() {
    let config = Config::from_lookup(|var| {
        (var == "RATE_LIMIT_CONNECTION_ATTEMPTS_PER_MIN").then(|| "1".into())
    })
    .unwrap();
    // Without the deny cache, so that both calls really go at once.
    let service = Builder::from_config(config)
        .clock(FakeClock::at_secs(1_700_000_000))
        .deny_cache(0)
        .build(MemoryStore::new());
    let first = [Request::from((
        PolicyId::CONNECTION_ATTEMPT,
        "203.0.113.50",
    ))];
    let second = [Request::from((PolicyId::SESSION_CREATE, "dora"))];
    let (v1, v2) = service.decide_in_turn(&first, &second).await.unwrap();
    assert!(v1[0].allowed() && v2.unwrap()[0].allowed());
    let (v1, v2) = service.decide_in_turn(&first, &second).await.unwrap();
    assert!(!v1[0].allowed() && v2.is_none());
    assert_eq!(v1[0].calls, 3, "both at once, then the session given back");
    let sessions = service
        .get_rate_limit_status(PolicyId::SESSION_CREATE, &Kind::USER, "dora")
        .await
        .unwrap();
    assert_eq!(
        sessions.count, 1,
        "the refused attempt took nothing from dora"
    );
}

/// A cap of two per address under each failure mode, on a store that does
/// not answer: only `closed` refuses; `local` lets it through, since a seat
/// taken in this process could not be given back by another's
/// `$disconnect`. Its fields name the unit the draft gives connections.
#[tokio::test]
async fn caps_fail_by_their_mode_and_report_concurrent_requests() {
    use ratelimiter::lease::Holder;
    let clock = FakeClock::at_secs(1_700_000_000);
    let file = "[policy.open]\nkey = \"ip\"\nconcurrent = 2\n";
    let config = Config::from_file_text("limits.toml", file, |_| None).unwrap();
    let service = Builder::from_config(config)
        .clock(clock.clone())
        .in_memory();
    let cap = service.policy_id("open").unwrap();
    let holder = Holder::new("conn-1", 1_700_000_000_000);
    let verdict = service
        .decide(Request::from((cap, "203.0.113.1")).holder(holder))
        .await
        .unwrap();
    let report = service.report(&verdict).unwrap();
    assert_eq!(
        report.policy_field(),
        "\"open\";q=2;qu=\"concurrent-requests\""
    );
    assert_eq!(report.state_field(), "\"open\";r=1;t=0");
    for (mode, allowed) in [
        (FailureMode::Open, true),
        (FailureMode::Local, true),
        (FailureMode::Closed, false),
    ] {
        let store = Faulty::default();
        store.down(true);
        let config = Config::from_file_text("limits.toml", file, |_| None).unwrap();
        let service = Builder::from_config(config)
            .clock(clock.clone())
            .failure_mode(mode)
            .build(store);
        let verdict = service
            .decide(Request::from((cap, "203.0.113.1")).holder(holder))
            .await
            .unwrap();
        assert_eq!(verdict.allowed(), allowed, "{mode}: {verdict:?}");
        assert_eq!(verdict.degraded, Some(Degradation::Timeout), "{mode}");
    }
}

/// A throttled key is never failed open: its cap refuses, whatever the
/// mode, since its seats cannot be counted in this process.
#[tokio::test]
async fn a_cap_on_a_hot_key_refuses() {
    use ratelimiter::lease::Holder;
    let clock = FakeClock::at_secs(1_700_000_000);
    let store = Faulty::default();
    let config = Config::from_file_text(
        "limits.toml",
        "[policy.open]\nkey = \"ip\"\nconcurrent = 2\n",
        |_| None,
    )
    .unwrap();
    let service = Builder::from_config(config)
        .clock(clock.clone())
        .failure_mode(FailureMode::Open)
        .build(store.clone());
    let cap = service.policy_id("open").unwrap();
    store.throttle(Some("ip#203.0.113.2"));
    let verdict = service
        .decide(Request::from((cap, "203.0.113.2")).holder(Holder::new("c", 1_700_000_000_000)))
        .await
        .unwrap();
    assert_eq!(verdict.degraded, Some(Degradation::Throttled));
    assert!(!verdict.allowed(), "{verdict:?}");
}

/// A client hammering `$connect` once its attempts are spent: with a cap
/// among the checks, a denial this process knows still costs no call, and
/// takes no seat (on one item, as a listener's, or two, as a speaker's).
#[tokio::test]
async fn a_known_denial_with_a_cap_costs_no_call() {
    use ratelimiter::lease::Holder;
    let clock = FakeClock::at_secs(1_700_000_000);
    let store = Faulty::default();
    let config = Config::from_file_text(
        "limits.toml",
        "[policy.open]\nkey = \"ip\"\nconcurrent = 5\n\
         [policy.connection_attempt]\nlimits = [\"1/min\"]\n\
         [connect]\npolicies = [\"open\"]\n",
        |_| None,
    )
    .unwrap();
    let service = Builder::from_config(config)
        .clock(clock.clone())
        .build(store.clone());
    let cap = service.policy_id("open").unwrap();
    for (i, user) in [None, None, Some("u1"), Some("u2")].into_iter().enumerate() {
        let id = format!("c{i}");
        let holder = Holder::new(&id, 1_700_000_000_000);
        let first = [
            Request::from((PolicyId::CONNECTION_ATTEMPT, "203.0.113.9")).holder(holder),
            Request::from((cap, "203.0.113.9")).holder(holder),
        ];
        let second = [match user {
            Some(user) => Request::from((PolicyId::SESSION_CREATE, user)),
            None => Request::from((PolicyId::LISTENER_JOIN, "203.0.113.9")),
        }
        .holder(holder)];
        let before = store.calls();
        let (v1, v2) = service.decide_in_turn(&first, &second).await.unwrap();
        let calls = store.calls() - before;
        if i == 0 {
            assert!(v1.iter().all(Verdict::allowed) && v2.is_some(), "{v1:?}");
            continue;
        }
        // The second attempt goes to the store; the container then knows.
        assert!(!v1.iter().all(Verdict::allowed), "{i}: {v1:?}");
        if i > 1 {
            assert_eq!(calls, 0, "{i}: a known denial asks nothing");
        }
    }
    let seats = service.seats((cap, "203.0.113.9")).await.unwrap();
    assert_eq!(
        seats.len(),
        1,
        "only the first connection holds a seat: {seats:?}"
    );
}
