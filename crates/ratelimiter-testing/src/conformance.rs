//! The store conformance suite: what every [`Store`] must do, as seen
//! through the service. Each crate with a store runs every function here on
//! it (the memory store, DynamoDB on dynoxide, the embedded store), so the
//! seed's scenarios are written once.
//!
//! Each function takes a fresh, empty store (with its table, if it has one)
//! and panics with a message on the first thing that is wrong.

use std::sync::Arc;
use std::time::Duration;

use ratelimiter::clock::wall_clock;
use ratelimiter::lease::{Holder, LEASE_LIFETIME};
use ratelimiter::{
    Builder, Config, FakeClock, Kind, PolicyId, RateLimitError, RateLimitService, Request, Status,
    Store,
};

/// A fake clock at the current wall time, whole seconds, so that TTLs a
/// store writes are in the future for its server too.
pub fn clock_now() -> FakeClock {
    FakeClock::new(wall_clock() / 1_000_000_000 * 1_000_000_000)
}

/// A service with the seed's policies on `store`, behind the deny cache,
/// as `Builder::build` makes it for a shared store.
pub fn service<S: Store>(store: S, clock: &FakeClock) -> RateLimitService<S, FakeClock> {
    Builder::new().clock(clock.clone()).build(store)
}

/// A service configured by `file` (TOML) on `store`, behind the deny cache.
pub fn service_with<S: Store>(
    store: S,
    clock: &FakeClock,
    file: &str,
) -> RateLimitService<S, FakeClock> {
    let config = Config::from_file_text("conformance.toml", file, |_| None)
        .expect("the suite's configuration is valid");
    Builder::from_config(config)
        .clock(clock.clone())
        .build(store)
}

/// The `retry_after` of a denial; panics on anything else.
pub fn retry_after(result: Result<ratelimiter::Verdict, RateLimitError>) -> u64 {
    match result {
        Err(RateLimitError::Exceeded(denied)) => denied.retry_after_secs(),
        other => panic!("expected a rate-limit denial, got {other:?}"),
    }
}

/// Decides `request`, and panics unless it was allowed.
pub async fn allow<'r, S: Store, C: ratelimiter::Clock>(
    service: &RateLimitService<S, C>,
    request: impl Into<Request<'r>>,
) -> ratelimiter::Verdict {
    let verdict = service.decide(request).await.expect("a decision");
    assert!(
        verdict.allowed(),
        "expected an allowed request, got {verdict:?}"
    );
    verdict
}

/// The seed's four limits with their defaults, and time healing them.
pub async fn seed_scenarios<S: Store>(store: S) {
    let clock = clock_now();
    let service = service(store, &clock);

    service.check_heartbeat_limit("conn-1").await.unwrap();
    service.check_heartbeat_limit("conn-1").await.unwrap();
    assert_eq!(
        retry_after(service.check_heartbeat_limit("conn-1").await),
        30
    );
    // Another connection is not affected.
    service.check_heartbeat_limit("conn-2").await.unwrap();

    for _ in 0..10 {
        service
            .check_listener_join_limit("198.51.100.4")
            .await
            .unwrap();
    }
    assert_eq!(
        retry_after(service.check_listener_join_limit("198.51.100.4").await),
        6
    );
    // Connection attempts from the same address are a policy of their own.
    for _ in 0..20 {
        service
            .check_connection_attempt_limit("198.51.100.4")
            .await
            .unwrap();
    }
    assert_eq!(
        retry_after(service.check_connection_attempt_limit("198.51.100.4").await),
        3
    );

    for i in 0..50 {
        service
            .check_session_creation_limit("user-123")
            .await
            .unwrap_or_else(|e| panic!("session {} refused: {e}", i + 1));
    }
    assert_eq!(
        retry_after(service.check_session_creation_limit("user-123").await),
        72
    );
    service
        .check_session_creation_limit("user-456")
        .await
        .unwrap();

    // Time heals: half a minute later the connection may heartbeat again.
    clock.advance(Duration::from_secs(30));
    service.check_heartbeat_limit("conn-1").await.unwrap();
}

/// The seed's status reads without consuming; reset empties one policy's
/// buckets and no other's.
pub async fn status_and_reset<S: Store>(store: S) {
    let clock = clock_now();
    let service = service(store, &clock);
    async fn status<S: Store>(
        service: &RateLimitService<S, FakeClock>,
    ) -> Result<Status, RateLimitError> {
        service
            .get_rate_limit_status(PolicyId::SESSION_CREATE, &Kind::USER, "user-123")
            .await
    }
    assert_eq!(
        status(&service).await.unwrap(),
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
    let fifteen = Status {
        count: 15,
        limit: 50,
        reset_in_seconds: 1080,
        window_duration: 3600,
    };
    assert_eq!(status(&service).await.unwrap(), fifteen);
    assert_eq!(status(&service).await.unwrap(), fifteen, "asking consumed");
    // The same value as another kind is another item.
    let other = service
        .get_rate_limit_status(PolicyId::SESSION_CREATE, &Kind::IP, "user-123")
        .await
        .unwrap();
    assert_eq!(other.count, 0);

    // Two policies on one address share an item; resetting one keeps the other.
    service
        .check_connection_attempt_limit("192.0.2.9")
        .await
        .unwrap();
    service
        .check_listener_join_limit("192.0.2.9")
        .await
        .unwrap();
    service
        .reset((PolicyId::LISTENER_JOIN, "192.0.2.9"))
        .await
        .unwrap();
    let attempts = service
        .get_rate_limit_status(PolicyId::CONNECTION_ATTEMPT, &Kind::IP, "192.0.2.9")
        .await
        .unwrap();
    let joins = service
        .get_rate_limit_status(PolicyId::LISTENER_JOIN, &Kind::IP, "192.0.2.9")
        .await
        .unwrap();
    assert_eq!((attempts.count, joins.count), (1, 0));

    service
        .reset((PolicyId::SESSION_CREATE, "user-123"))
        .await
        .unwrap();
    assert_eq!(status(&service).await.unwrap().count, 0);
    // Resetting a key that never was is not an error.
    service
        .reset((PolicyId::HEARTBEAT, "never-seen"))
        .await
        .unwrap();
    // A full hour later everything is full again whatever happened.
    for _ in 0..15 {
        service
            .check_session_creation_limit("user-123")
            .await
            .unwrap();
    }
    clock.advance(Duration::from_secs(3600));
    assert_eq!(status(&service).await.unwrap().count, 0);
}

/// A policy of two limits, in one item: both are checked and taken
/// together, a denial by one takes nothing from the other, and a tier has
/// limits and buckets of its own.
pub async fn several_limits_and_tiers<S: Store>(store: S) {
    let clock = clock_now();
    let service = service_with(
        store,
        &clock,
        r#"
[policy.send_message]
key = "connection"
limits = ["4/10s", "6/min"]

[policy.send_message.tier.pro]
limits = ["8/10s", "60/min"]
"#,
    );
    let id = service.policy_id("send_message").unwrap();
    for _ in 0..4 {
        allow(&service, (id, "c")).await;
    }
    let verdict = service.decide((id, "c")).await.unwrap();
    assert!(!verdict.allowed());
    assert_eq!((verdict.decision.limit, verdict.retry_after_secs()), (4, 3));
    // The minute's bucket gave nothing to the refused request.
    assert_eq!(verdict.limits()[1].remaining, 2);
    clock.advance(Duration::from_secs(10));
    // The ten seconds have refilled; the minute has given one token back.
    for _ in 0..3 {
        allow(&service, (id, "c")).await;
    }
    let verdict = service.decide((id, "c")).await.unwrap();
    assert!(!verdict.allowed());
    assert_eq!(verdict.decision.limit, 6);
    assert_eq!(verdict.retry_after_secs(), 10);
    assert_eq!(verdict.limits().len(), 2);
    let statuses = service.status((id, "c")).await.unwrap();
    assert_eq!(statuses.iter().map(|s| s.count).collect::<Vec<_>>(), [3, 6]);
    // The pro tier's limits, in its own buckets.
    let pro = Request::from((id, "c")).tier(Some("pro"));
    for _ in 0..8 {
        let verdict = allow(&service, pro).await;
        assert_eq!(
            verdict.limits().iter().map(|d| d.limit).collect::<Vec<_>>(),
            [8, 60]
        );
    }
    assert!(!service.decide(pro).await.unwrap().allowed());
    let statuses = service.status(pro).await.unwrap();
    assert_eq!(
        statuses
            .iter()
            .map(|s| (s.count, s.limit))
            .collect::<Vec<_>>(),
        [(8, 8), (8, 60)]
    );
    // Resetting the policy empties the tier's buckets too.
    service.reset((id, "c")).await.unwrap();
    allow(&service, pro).await;
    allow(&service, (id, "c")).await;
    // A cost beyond a limit's capacity is an error, not a denial.
    assert!(matches!(
        service.decide(Request::from((id, "d")).cost(5)).await,
        Err(RateLimitError::InvalidCost { .. })
    ));
}

/// `tasks` decisions at once on one key of a 20-per-minute policy, spread
/// over `stores` (processes): exactly 20 are allowed, and a minute later
/// 20 again.
pub async fn concurrent_decisions_never_over_admit<S: Store + 'static>(
    stores: Vec<S>,
    tasks: usize,
) {
    let clock = clock_now();
    let services: Vec<_> = stores
        .into_iter()
        .map(|store| Arc::new(service(store, &clock)))
        .collect();
    for round in 0..2 {
        let handles: Vec<_> = (0..tasks)
            .map(|i| {
                let service = services[i % services.len()].clone();
                tokio::spawn(async move {
                    service
                        .check_connection_attempt_limit("203.0.113.50")
                        .await
                        .is_ok()
                })
            })
            .collect();
        let mut allowed = 0;
        for handle in handles {
            allowed += usize::from(handle.await.expect("the task ran"));
        }
        assert_eq!(allowed, 20, "round {round}");
        clock.advance(Duration::from_secs(60));
    }
}

/// With a key secret, decisions, status and reset work on the raw
/// identifier as before. Returns the identifiers the suite used, for the
/// caller to check they never reached the store's own data, and the
/// service, which keeps the store open while the caller looks.
pub async fn keyed_digests<S: Store>(
    store: S,
) -> (Vec<&'static str>, RateLimitService<S, FakeClock>) {
    let clock = clock_now();
    let config = Config::from_lookup(|var| {
        (var == "RATE_LIMIT_KEY_SECRET").then(|| "conformance-secret-of-32-bytes!!".to_owned())
    })
    .expect("a 32-byte secret is valid");
    let service = Builder::from_config(config).clock(clock).build(store);
    service
        .check_heartbeat_limit("conn-secret-1")
        .await
        .unwrap();
    service
        .check_heartbeat_limit("conn-secret-1")
        .await
        .unwrap();
    assert_eq!(
        retry_after(service.check_heartbeat_limit("conn-secret-1").await),
        30
    );
    service
        .check_listener_join_limit("198.51.100.77")
        .await
        .unwrap();
    service
        .check_session_creation_limit("user-secret-1")
        .await
        .unwrap();
    let status = service
        .get_rate_limit_status(PolicyId::HEARTBEAT, &Kind::CONNECTION, "conn-secret-1")
        .await
        .unwrap();
    assert_eq!(status.count, 2);
    service
        .reset((PolicyId::HEARTBEAT, "conn-secret-1"))
        .await
        .unwrap();
    service
        .check_heartbeat_limit("conn-secret-1")
        .await
        .unwrap();
    (
        vec!["conn-secret-1", "198.51.100.77", "user-secret-1"],
        service,
    )
}

/// A route's two policies on one item (a count and a byte quota per
/// connection) in one call; all or nothing.
pub async fn route_policies<S: Store>(store: S) {
    let clock = clock_now();
    let service = service_with(
        store,
        &clock,
        "[policy.messages]\nkey = \"connection\"\nlimits = [\"3/s\"]\n\
         [policy.message_bytes]\nkey = \"connection\"\nunit = \"bytes\"\nlimits = [\"100/min\"]\n",
    );
    let (messages, bytes) = (
        service.policy_id("messages").unwrap(),
        service.policy_id("message_bytes").unwrap(),
    );
    let send = |size| {
        [
            Request::from((messages, "conn-r")),
            Request::from((bytes, "conn-r")).cost(size),
        ]
    };
    for remaining in [2, 1] {
        let verdicts = service.decide_all(&send(30)).await.unwrap();
        assert!(verdicts.iter().all(|v| v.allowed()), "{verdicts:?}");
        assert_eq!(verdicts[0].decision.remaining, remaining);
        let calls: u32 = verdicts.iter().map(|v| v.calls).sum();
        assert_eq!(calls, 1, "two policies on one item take one call");
    }
    // 60 bytes do not fit in the 40 left: refused, and nothing counted.
    let refused = service.decide_all(&send(60)).await.unwrap();
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].policy, bytes);
    assert!(!refused[0].allowed());
    let counted = service
        .status(Request::from((messages, "conn-r")))
        .await
        .unwrap();
    assert_eq!(counted[0].count, 2, "the refused message took nothing");
    let verdicts = service.decide_all(&send(40)).await.unwrap();
    assert!(verdicts.iter().all(|v| v.allowed()));
    assert_eq!(verdicts[1].decision.remaining, 0);
}

/// Probes (requests of cost 0): allowed while a token is left, taking
/// none, alone or in the call of the other requests on their item; a
/// one-token bucket taken once (a soft rejection's mark) refuses them
/// until it refills, and its refusal takes nothing from the others.
pub async fn probes<S: Store>(store: S) {
    let clock = clock_now();
    let service = service_with(
        store,
        &clock,
        "[policy.messages]\nkey = \"connection\"\nlimits = [\"2/min\"]\n\
         [policy.user_messages]\nkey = \"user\"\nlimits = [\"1/min\"]\n\
         [policy.mark]\nkey = \"connection\"\nlimits = [\"1/2h\"]\n",
    );
    let (messages, user_messages, mark) = (
        service.policy_id("messages").unwrap(),
        service.policy_id("user_messages").unwrap(),
        service.policy_id("mark").unwrap(),
    );
    let probe = |id| Request::from((mark, id)).cost(0);
    // Unmarked: the probe passes in the message's own call, taking nothing.
    let message = |id| [Request::from((messages, id)), probe(id)];
    let verdicts = service.decide_all(&message("conn-p")).await.unwrap();
    assert!(verdicts.iter().all(|v| v.allowed()), "{verdicts:?}");
    assert_eq!(verdicts.iter().map(|v| v.calls).sum::<u32>(), 1, "one call");
    assert_eq!(verdicts[1].decision.remaining, 1, "the mark is untouched");
    let probe_of_messages = Request::from((messages, "conn-p")).cost(0);
    let verdict = allow(&service, probe_of_messages).await;
    assert_eq!(verdict.decision.remaining, 1, "a probe takes nothing");
    // Marked: the probe refuses, alone and with the message, which then
    // takes nothing.
    allow(&service, Request::from((mark, "conn-q"))).await;
    assert!(!service.decide(probe("conn-q")).await.unwrap().allowed());
    let refused = service.decide_all(&message("conn-q")).await.unwrap();
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].policy, mark);
    let counted = service
        .status(Request::from((messages, "conn-q")))
        .await
        .unwrap();
    assert_eq!(counted[0].count, 0, "the refused message took nothing");
    // Spent: a probe of an empty bucket refuses as a request of one would.
    allow(&service, Request::from((messages, "conn-p"))).await;
    let spent = service.decide(probe_of_messages).await.unwrap();
    assert!(!spent.allowed());
    assert_eq!(spent.retry_after_secs(), 30);
    // A probe alone on its item, beside a request another item refuses:
    // one call each, and none to give the probe back (it took nothing).
    let by_user = |id| [Request::from((user_messages, "user-p")), probe(id)];
    allow(&service, Request::from((user_messages, "user-p"))).await;
    let refused = service.decide_all(&by_user("conn-u")).await.unwrap();
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].policy, user_messages);
    // The user item is known spent (no call); the probe's item, one.
    assert_eq!(
        refused[0].calls, 1,
        "no call to give a probe back: {refused:?}"
    );
    // The mark ends with its period: two hours later, the probe passes.
    clock.advance(Duration::from_secs(2 * 3600));
    assert!(service.decide(probe("conn-q")).await.unwrap().allowed());
}

/// Two checks in a row of several policies on one item (a configured
/// listener's `$connect`): one call when both are allowed; a refused second
/// still counts the first; a refused first takes nothing from the second.
pub async fn checks_in_turn<S: Store>(store: S) {
    let clock = clock_now();
    let service = service_with(
        store,
        &clock,
        "[policy.hourly]\nkey = \"ip\"\nlimits = [\"3/h\"]\n\
         [policy.listener_join]\nlimits = [\"1/min\"]\n",
    );
    let hourly = service.policy_id("hourly").unwrap();
    let ip = "198.51.100.77";
    let first = [
        Request::from((PolicyId::CONNECTION_ATTEMPT, ip)),
        Request::from((hourly, ip)),
    ];
    let second = [Request::from((PolicyId::LISTENER_JOIN, ip))];
    let (v1, v2) = service.decide_in_turn(&first, &second).await.unwrap();
    assert!(v1.iter().all(|v| v.allowed()) && v2.as_ref().unwrap()[0].allowed());
    let calls: u32 = v1.iter().chain(v2.iter().flatten()).map(|v| v.calls).sum();
    assert_eq!(calls, 1, "both checks on the address's item in one call");
    // The join is refused; the first check still counts.
    let (v1, v2) = service.decide_in_turn(&first, &second).await.unwrap();
    assert!(v1.iter().all(|v| v.allowed()), "{v1:?}");
    let refused = v2.unwrap();
    assert_eq!(
        (refused.len(), refused[0].policy),
        (1, PolicyId::LISTENER_JOIN)
    );
    let count = |policy| service.get_rate_limit_status(policy, &Kind::IP, ip);
    assert_eq!(count(hourly).await.unwrap().count, 2);
    assert_eq!(count(PolicyId::LISTENER_JOIN).await.unwrap().count, 1);
    // A minute on the join is back, but the hourly is spent after a third:
    // a refused first takes nothing from the join.
    clock.advance(Duration::from_secs(60));
    service.decide_in_turn(&first, &second).await.unwrap();
    clock.advance(Duration::from_secs(60));
    let (v1, v2) = service.decide_in_turn(&first, &second).await.unwrap();
    assert_eq!((v1.len(), v1[0].policy, v2), (1, hourly, None));
    assert_eq!(count(PolicyId::LISTENER_JOIN).await.unwrap().count, 0);
}

/// The configuration of the cap scenarios: two open connections per
/// address, checked at every `$connect`.
const CAP_FILE: &str = "[policy.open_per_ip]\nkey = \"ip\"\nconcurrent = 2\n\
                        [policy.hourly_user]\nkey = \"user\"\nlimits = [\"1/h\"]\n\
                        [connect]\npolicies = [\"open_per_ip\"]\n";

/// A cap of two open connections per address beside the seed's checks (a
/// listener's `$connect`): one call when allowed; a third connection is
/// refused with the cap's retry, its attempt still counted; a release
/// frees a seat; a connection asking again takes no second seat; leases
/// whose release was lost end by themselves.
pub async fn caps<S: Store>(store: S) {
    let clock = clock_now();
    let service = service_with(store, &clock, CAP_FILE);
    let cap = service.policy_id("open_per_ip").unwrap();
    let ip = "198.51.100.9";
    let connect = |id: &'static str, since_ms: u64| {
        let holder = Holder::new(id, since_ms);
        (
            [
                Request::from((PolicyId::CONNECTION_ATTEMPT, ip)).holder(holder),
                Request::from((cap, ip)).holder(holder),
            ],
            [Request::from((PolicyId::LISTENER_JOIN, ip)).holder(holder)],
        )
    };
    let since = service.now_ms();
    let outcome = |(v1, v2): (Vec<ratelimiter::Verdict>, Option<Vec<ratelimiter::Verdict>>)| {
        let calls: u32 = v1.iter().chain(v2.iter().flatten()).map(|v| v.calls).sum();
        let refused: Vec<_> = v1
            .iter()
            .chain(v2.iter().flatten())
            .filter(|v| !v.allowed())
            .cloned()
            .collect();
        (refused, calls)
    };
    for (id, new) in [("c1", true), ("c1", false), ("c2", true)] {
        let (first, second) = connect(id, since);
        let (refused, calls) = outcome(service.decide_in_turn(&first, &second).await.unwrap());
        assert!(refused.is_empty(), "{id}: {refused:?}");
        if new {
            assert_eq!(
                calls, 1,
                "{id}: the attempt, the seat and the join in one call"
            );
        }
    }
    // c1 asking again, in an action another item refuses: the seat it
    // held before is not given back with the refusal.
    let hourly = service.policy_id("hourly_user").unwrap();
    let again = [
        Request::from((cap, ip)).holder(Holder::new("c1", since)),
        Request::from((hourly, "someone")),
    ];
    assert!(
        service
            .decide_all(&again)
            .await
            .unwrap()
            .iter()
            .all(|v| v.allowed())
    );
    let refused = service.decide_all(&again).await.unwrap();
    assert_eq!((refused.len(), refused[0].policy), (1, hourly));
    let mut seats = service.seats((cap, ip)).await.unwrap();
    seats.sort_by(|a, b| a.id.cmp(&b.id));
    let held: Vec<(&str, u64)> = seats.iter().map(|s| (s.id.as_str(), s.since_ms)).collect();
    assert_eq!(held, [("c1", since), ("c2", since)]);
    let status = service.status((cap, ip)).await.unwrap();
    assert_eq!((status[0].count, status[0].limit), (2, 2));
    let (first, second) = connect("c3", since);
    let (refused, _) = outcome(service.decide_in_turn(&first, &second).await.unwrap());
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].policy, cap);
    assert_eq!(refused[0].retry_after_secs(), 30);
    assert_eq!(
        (refused[0].decision.limit, refused[0].decision.remaining),
        (2, 0)
    );
    let attempts = service
        .get_rate_limit_status(PolicyId::CONNECTION_ATTEMPT, &Kind::IP, ip)
        .await
        .unwrap();
    assert_eq!(
        attempts.count, 4,
        "a connection the cap refused still counts its attempt"
    );
    // A release frees a seat, once.
    service
        .release(first[1])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let c1 = connect("c1", since).0[1];
    service.release(c1).await.unwrap();
    service.release(c1).await.unwrap();
    let (first, second) = connect("c3", since);
    let (refused, _) = outcome(service.decide_in_turn(&first, &second).await.unwrap());
    assert!(refused.is_empty(), "a released seat is free: {refused:?}");
    let (first, second) = connect("c4", since);
    let (refused, _) = outcome(service.decide_in_turn(&first, &second).await.unwrap());
    assert_eq!(refused.len(), 1, "c2 and c3 hold both seats");
    // Lost releases: the leases end by themselves.
    clock.advance(LEASE_LIFETIME);
    assert_eq!(service.seats((cap, ip)).await.unwrap(), []);
    let since = service.now_ms();
    for (id, allowed) in [("c5", true), ("c6", true), ("c7", false)] {
        let (first, second) = connect(id, since);
        let (refused, _) = outcome(service.decide_in_turn(&first, &second).await.unwrap());
        assert_eq!(refused.is_empty(), allowed, "{id}: {refused:?}");
    }
    // A reset gives every seat back at once.
    service.reset((cap, ip)).await.unwrap();
    assert_eq!(service.seats((cap, ip)).await.unwrap(), []);
    let (first, second) = connect("c8", since);
    let (refused, _) = outcome(service.decide_in_turn(&first, &second).await.unwrap());
    assert!(refused.is_empty(), "{refused:?}");
    // A cap needs a holder that can be a live connection.
    let no_holder = service.decide((cap, ip)).await.unwrap_err();
    assert!(
        no_holder.to_string().contains("needs a holder"),
        "{no_holder}"
    );
    let stale = Request::from((cap, ip)).holder(Holder::new("old", since - 3 * 3600 * 1000));
    let stale = service.decide(stale).await.unwrap_err();
    assert!(stale.to_string().contains("longer ago"), "{stale}");
}

/// `tasks` connections at once, each its own holder, on one address
/// capped at three, spread over `stores` (processes): exactly three are
/// admitted; once they are released, three others.
pub async fn caps_never_over_admit<S: Store + 'static>(stores: Vec<S>, tasks: usize) {
    let clock = clock_now();
    let services: Vec<_> = stores
        .into_iter()
        .map(|store| {
            Arc::new(service_with(
                store,
                &clock,
                "[policy.open]\nkey = \"ip\"\nconcurrent = 3\n",
            ))
        })
        .collect();
    let cap = services[0].policy_id("open").unwrap();
    let since = services[0].now_ms();
    for round in 0..2 {
        let handles: Vec<_> = (0..tasks)
            .map(|i| {
                let service = services[i % services.len()].clone();
                tokio::spawn(async move {
                    let id = format!("r{round}-conn-{i}");
                    let request =
                        Request::from((cap, "203.0.113.60")).holder(Holder::new(&id, since));
                    let verdict = service.decide(request).await.expect("a decision");
                    assert!(verdict.degraded.is_none(), "{verdict:?}");
                    let allowed = verdict.allowed();
                    allowed.then_some(id)
                })
            })
            .collect();
        let mut admitted = Vec::new();
        for handle in handles {
            admitted.extend(handle.await.expect("the task ran"));
        }
        assert_eq!(admitted.len(), 3, "round {round}: {admitted:?}");
        for id in &admitted {
            let request = Request::from((cap, "203.0.113.60")).holder(Holder::new(id, since));
            services[0].release(request).await.unwrap();
        }
    }
}

/// A cap per address for speakers, whose checks are on two items (the
/// address and the user): allowed, a call per item; a full cap still
/// counts the attempt and the session; a refused session gives back the
/// seat taken at once with it.
pub async fn caps_on_two_items<S: Store>(store: S) {
    let clock = clock_now();
    let service = service_with(
        store,
        &clock,
        "[policy.open_per_ip]\nkey = \"ip\"\nconcurrent = 1\n\
         [policy.session_create]\nlimits = [\"1/h\"]\n\
         [connect]\npolicies = [\"open_per_ip\"]\n",
    );
    let cap = service.policy_id("open_per_ip").unwrap();
    let since = service.now_ms();
    let connect = |ip: &'static str, user: &'static str, id: &'static str| {
        let holder = Holder::new(id, since);
        (
            [
                Request::from((PolicyId::CONNECTION_ATTEMPT, ip)).holder(holder),
                Request::from((cap, ip)).holder(holder),
            ],
            [Request::from((PolicyId::SESSION_CREATE, user)).holder(holder)],
        )
    };
    let refusals = |(v1, v2): (Vec<ratelimiter::Verdict>, Option<Vec<ratelimiter::Verdict>>)| {
        v1.into_iter()
            .chain(v2.into_iter().flatten())
            .filter(|v| !v.allowed())
            .map(|v| v.policy)
            .collect::<Vec<_>>()
    };
    let (first, second) = connect("198.51.100.30", "u1", "c1");
    let decided = service.decide_in_turn(&first, &second).await.unwrap();
    let calls: u32 = decided
        .0
        .iter()
        .chain(decided.1.iter().flatten())
        .map(|v| v.calls)
        .sum();
    assert_eq!(calls, 2, "a call per item, the seat with the attempt");
    assert_eq!(refusals(decided), []);
    // The address's one seat is taken: refused by the cap, counted by the
    // rates.
    let (first, second) = connect("198.51.100.30", "u2", "c2");
    let decided = service.decide_in_turn(&first, &second).await.unwrap();
    assert_eq!(refusals(decided), [cap]);
    let count = |policy, kind: &'static Kind, id: &'static str| {
        service.get_rate_limit_status(policy, kind, id)
    };
    assert_eq!(
        count(PolicyId::CONNECTION_ATTEMPT, &Kind::IP, "198.51.100.30")
            .await
            .unwrap()
            .count,
        2
    );
    assert_eq!(
        count(PolicyId::SESSION_CREATE, &Kind::USER, "u2")
            .await
            .unwrap()
            .count,
        1
    );
    // u1's second session is refused: the seat taken on the other address
    // at once with it is given back.
    let (first, second) = connect("198.51.100.31", "u1", "c3");
    let decided = service.decide_in_turn(&first, &second).await.unwrap();
    assert_eq!(refusals(decided), [PolicyId::SESSION_CREATE]);
    assert_eq!(service.seats((cap, "198.51.100.31")).await.unwrap(), []);
    let seats = service.seats((cap, "198.51.100.30")).await.unwrap();
    assert_eq!(seats.len(), 1);
    assert_eq!(seats[0].id, "c1");
}

/// A policy with a tolerance (`tolerance = "9s"` on 2 a minute): a bucket
/// up to 9 s behind now is charged from its state, one further behind from
/// now; every store decides the same, in at most two calls.
pub async fn tolerance<S: Store>(store: S) {
    let clock = clock_now();
    let service = service_with(
        store,
        &clock,
        "[policy.beat]\nkey = \"connection\"\nlimits = [\"2/min\"]\ntolerance = \"9s\"\n",
    );
    let beat = service.policy_id("beat").unwrap();
    let request = Request::from((beat, "conn-t"));
    // t0: TAT t0 + 30 s.
    allow(&service, request).await;
    // t0 + 35 s: 5 s behind, charged from it: TAT t0 + 60 s (exact: 65).
    clock.advance(Duration::from_secs(35));
    let verdict = allow(&service, request).await;
    assert!(verdict.calls <= 2, "{verdict:?}");
    // Then at once: TAT t0 + 90 s; a third is refused for 25 s (exact:
    // the second's TAT t0 + 65 s, the third's t0 + 95 s, 30 s).
    allow(&service, request).await;
    let refused = service.decide(request).await.unwrap();
    assert!(!refused.allowed());
    assert_eq!(refused.decision.retry_after, Duration::from_secs(25));
    // 110 s on (t0 + 145 s): 55 s behind, beyond the tolerance: charged
    // from now, as exactly.
    clock.advance(Duration::from_secs(110));
    allow(&service, request).await;
    allow(&service, request).await;
    let refused = service.decide(request).await.unwrap();
    assert_eq!(refused.decision.retry_after, Duration::from_secs(30));
}
