//! What the service records through the `metrics` facade, captured by a
//! recorder installed for the test's thread only, with a fake clock so that
//! latencies are exact.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::{
    Counter, CounterFn, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use ratelimiter::telemetry::{self, DECISION_LATENCY, OPERATION_LABEL};
use ratelimiter::{Builder, Config, FakeClock, PolicyId, RateLimitService, Request};
use ratelimiter_testing::fakes::{Faulty, Slow};

/// Every counter and histogram sample, by `name{Operation}`, and the units described.
#[derive(Default)]
struct Capture {
    counters: Mutex<BTreeMap<String, Arc<Count>>>,
    samples: Mutex<BTreeMap<String, Arc<Samples>>>,
    units: Mutex<BTreeMap<String, Unit>>,
}

#[derive(Default)]
struct Count(AtomicU64);

impl CounterFn for Count {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::Relaxed);
    }
    fn absolute(&self, value: u64) {
        self.0.store(value, Ordering::Relaxed);
    }
}

#[derive(Default)]
struct Samples(Mutex<Vec<f64>>);

impl HistogramFn for Samples {
    fn record(&self, value: f64) {
        self.0.lock().unwrap().push(value);
    }
}

fn name(key: &Key) -> String {
    let labels: Vec<String> = key
        .labels()
        .map(|l| format!("{}={}", l.key(), l.value()))
        .collect();
    format!("{}{{{}}}", key.name(), labels.join(","))
}

impl Recorder for Capture {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, _: SharedString) {
        self.units
            .lock()
            .unwrap()
            .insert(key.as_str().to_owned(), unit.unwrap());
    }
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {
        panic!("the service has no gauges");
    }
    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, _: SharedString) {
        self.describe_counter(key, unit, SharedString::const_str(""));
    }
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let count = self
            .counters
            .lock()
            .unwrap()
            .entry(name(key))
            .or_default()
            .clone();
        Counter::from_arc(count)
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        panic!("the service registered a gauge: {key}");
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        let samples = self
            .samples
            .lock()
            .unwrap()
            .entry(name(key))
            .or_default()
            .clone();
        Histogram::from_arc(samples)
    }
}

impl Capture {
    /// The counters that are not zero.
    fn counts(&self) -> BTreeMap<String, u64> {
        self.counters
            .lock()
            .unwrap()
            .iter()
            .map(|(name, count)| (name.clone(), count.0.load(Ordering::Relaxed)))
            .filter(|(_, count)| *count > 0)
            .collect()
    }

    fn samples(&self, name: &str) -> Vec<f64> {
        self.samples.lock().unwrap()[name].0.lock().unwrap().clone()
    }
}

fn counts(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(n, c)| (n.to_string(), *c)).collect()
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

#[test]
fn each_decision_is_counted_and_timed_by_policy() {
    let capture = Capture::default();
    let _local = metrics::set_default_local_recorder(&capture);
    telemetry::describe();
    let clock = FakeClock::at_secs(1_700_000_000);
    let store = Slow::new(clock.clone(), Duration::from_micros(2_500));
    // No deny cache: every decision reaches the slow store.
    let service = Builder::new().clock(clock).deny_cache(0).build(store);

    block_on(async {
        for _ in 0..3 {
            let _ = service.check_heartbeat_limit("conn-1").await;
        }
        service
            .check_listener_join_limit("198.51.100.1")
            .await
            .unwrap();
    });

    assert_eq!(
        capture.counts(),
        counts(&[
            ("Allowed{Operation=heartbeat}", 2),
            ("Allowed{Operation=listener_join}", 1),
            ("Denied{Operation=heartbeat}", 1),
            // The store's calls, per policy, under the name the store gives.
            ("SlowCalls{Operation=heartbeat}", 3),
            ("SlowCalls{Operation=listener_join}", 1),
        ])
    );
    // The store's 2.5 ms are in every latency, and nothing else is.
    assert_eq!(
        capture.samples("DecisionLatency{Operation=heartbeat}"),
        [2.5, 2.5, 2.5]
    );
    assert_eq!(
        capture.samples("DecisionLatency{Operation=listener_join}"),
        [2.5]
    );
    let units = capture.units.lock().unwrap().clone();
    assert_eq!(units[DECISION_LATENCY], Unit::Milliseconds);
    assert_eq!(units["Allowed"], Unit::Count);
    assert_eq!(units.len(), 9, "{units:?}");
    assert_eq!(units["HotKey"], Unit::Count);
    assert_eq!(units["Batched"], Unit::Count);
    // The capacity a store's calls consumed: none here (a store with no
    // backing service reports none, and nothing is counted).
    assert_eq!(units["ConsumedWriteCapacity"], Unit::Count);
    assert_eq!(units["ConsumedReadCapacity"], Unit::Count);
    assert_eq!(OPERATION_LABEL, "Operation");
}

/// Decisions a hot key's batches made count in `Batched`, beside
/// `Allowed`: here, one batch of 5 taken in one call, then spent.
#[test]
fn decisions_from_batches_are_counted() {
    let capture = Capture::default();
    let _local = metrics::set_default_local_recorder(&capture);
    let config = Config::from_file_text(
        "limits.toml",
        "[policy.api]\nkey = \"tenant\"\nlimits = [\"10/s\"]\nbatch = 5\n",
        |_| None,
    )
    .unwrap();
    let service = Builder::from_config(config)
        .clock(FakeClock::at_secs(1_700_000_000))
        .build(Faulty::default());
    let api = service.policy_id("api").unwrap();
    block_on(async {
        for _ in 0..5 {
            assert!(service.decide((api, "acme")).await.unwrap().allowed());
        }
    });
    assert_eq!(
        capture.counts(),
        counts(&[("Allowed{Operation=api}", 5), ("Batched{Operation=api}", 5)])
    );
}

#[test]
fn a_service_built_before_the_recorder_records_nowhere() {
    let service = Builder::new().in_memory();
    let capture = Capture::default();
    let _local = metrics::set_default_local_recorder(&capture);
    service.decide_sync((PolicyId::HEARTBEAT, "c")).unwrap();
    assert_eq!(capture.counts(), counts(&[]));
    // A service built now records.
    let service = Builder::new().in_memory();
    service.decide_sync((PolicyId::HEARTBEAT, "c")).unwrap();
    assert_eq!(
        capture.counts(),
        counts(&[("Allowed{Operation=heartbeat}", 1)])
    );
}

/// A service on a store whose calls take 2.5 ms of fake time, without a
/// deny cache, configured by `vars`.
fn slow_service(
    vars: &'static [(&'static str, &'static str)],
) -> RateLimitService<Slow, FakeClock> {
    let clock = FakeClock::at_secs(1_700_000_000);
    let config = Config::from_lookup(|var| {
        vars.iter()
            .find(|(name, _)| *name == var)
            .map(|(_, value)| (*value).to_owned())
    })
    .unwrap();
    let store = Slow::new(clock.clone(), Duration::from_micros(2_500));
    Builder::from_config(config)
        .clock(clock)
        .deny_cache(0)
        .build(store)
}

const ATTEMPT: &str = "connection_attempt";

#[test]
fn a_listeners_connect_counts_each_decision_once_even_when_the_join_is_refused() {
    let capture = Capture::default();
    let _local = metrics::set_default_local_recorder(&capture);
    let service = slow_service(&[("RATE_LIMIT_LISTENER_JOINS_PER_MIN", "1")]);
    let attempt = (PolicyId::CONNECTION_ATTEMPT, "198.51.100.1");
    let join = (PolicyId::LISTENER_JOIN, "198.51.100.1");
    block_on(async {
        // Both allowed, in one call.
        let (_, joined) = service.decide_both(attempt, join).await.unwrap();
        assert!(joined.unwrap().allowed());
        // The join is refused: the attempt counts again, in a call of its own.
        let (first, joined) = service.decide_both(attempt, join).await.unwrap();
        assert!(first.allowed() && !joined.unwrap().allowed());
        assert_eq!(first.calls, 2);
    });
    assert_eq!(
        capture.counts(),
        counts(&[
            ("Allowed{Operation=connection_attempt}", 2),
            ("Allowed{Operation=listener_join}", 1),
            ("Denied{Operation=listener_join}", 1),
            ("SlowCalls{Operation=connection_attempt}", 3),
        ])
    );
    // One latency per decision: one call, then two.
    let latency = |policy: &str| capture.samples(&format!("DecisionLatency{{Operation={policy}}}"));
    assert_eq!(latency(ATTEMPT), [2.5, 5.0]);
    assert_eq!(latency("listener_join"), [2.5, 5.0]);
}

#[test]
fn a_refused_attempt_counts_once_and_its_given_back_session_not_at_all() {
    let capture = Capture::default();
    let _local = metrics::set_default_local_recorder(&capture);
    let service = slow_service(&[("RATE_LIMIT_CONNECTION_ATTEMPTS_PER_MIN", "1")]);
    let attempt = (PolicyId::CONNECTION_ATTEMPT, "203.0.113.5");
    let session = (PolicyId::SESSION_CREATE, "alice");
    block_on(async {
        service.decide_both(attempt, session).await.unwrap();
        // Refused: the session decided at the same time is given back.
        let (first, second) = service.decide_both(attempt, session).await.unwrap();
        assert!(!first.allowed() && second.is_none());
        // The attempt's call, the session's, and the refund.
        assert_eq!(first.calls, 3);
    });
    assert_eq!(
        capture.counts(),
        counts(&[
            ("Allowed{Operation=connection_attempt}", 1),
            ("Allowed{Operation=session_create}", 1),
            ("Denied{Operation=connection_attempt}", 1),
            ("SlowCalls{Operation=connection_attempt}", 4),
            ("SlowCalls{Operation=session_create}", 1),
        ])
    );
    assert_eq!(
        capture.samples("DecisionLatency{Operation=connection_attempt}"),
        [5.0, 7.5]
    );
    assert_eq!(
        capture.samples("DecisionLatency{Operation=session_create}"),
        [5.0]
    );
}

#[test]
fn a_connect_the_store_failed_is_counted_and_timed_once_per_decision() {
    let capture = Capture::default();
    let _local = metrics::set_default_local_recorder(&capture);
    let service = Builder::new()
        .clock(FakeClock::at_secs(1_700_000_000))
        .build(Faulty::broken());
    let ip = "198.51.100.2";
    block_on(async {
        let (first, second) = service
            .decide_both(
                (PolicyId::CONNECTION_ATTEMPT, ip),
                Request::from((PolicyId::LISTENER_JOIN, ip)),
            )
            .await
            .unwrap();
        assert!(first.is_degraded() && second.unwrap().is_degraded());
    });
    assert_eq!(
        capture.counts(),
        counts(&[
            ("Allowed{Operation=connection_attempt}", 1),
            ("Allowed{Operation=listener_join}", 1),
            ("Degraded{Operation=connection_attempt}", 1),
            ("Degraded{Operation=listener_join}", 1),
        ])
    );
    assert_eq!(
        capture.samples("DecisionLatency{Operation=connection_attempt}"),
        [0.0]
    );
    assert_eq!(
        capture.samples("DecisionLatency{Operation=listener_join}"),
        [0.0]
    );
}
