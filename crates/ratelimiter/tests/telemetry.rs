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
use ratelimiter::gcra::Nanos;
use ratelimiter::store::{Applied, Op};
use ratelimiter::telemetry::{self, DECISION_LATENCY, OPERATION_LABEL};
use ratelimiter::{
    Config, FakeClock, MemoryStore, PolicyId, RateLimitService, Slot, Store, StoreError,
};

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

/// An in-memory store whose answers take `delay` of fake time.
struct SlowStore {
    inner: MemoryStore,
    clock: FakeClock,
    delay: Duration,
}

impl Store for SlowStore {
    const CALLS_METRIC: Option<&'static str> = Some("SlowCalls");

    async fn apply(
        &self,
        key: &ratelimiter::Key<'_>,
        ops: &[Op<'_>],
        retention: Nanos,
        tats: &mut [Nanos],
    ) -> Applied {
        self.clock.advance(self.delay);
        self.inner.apply(key, ops, retention, tats).await
    }
    async fn refund(&self, key: &ratelimiter::Key<'_>, ops: &[Op<'_>]) -> Result<(), StoreError> {
        self.inner.refund(key, ops).await
    }
    async fn load(
        &self,
        key: &ratelimiter::Key<'_>,
        slots: &[&Slot],
        tats: &mut [Nanos],
    ) -> Result<(), StoreError> {
        self.inner.load(key, slots, tats).await
    }
    async fn remove(&self, key: &ratelimiter::Key<'_>, slots: &[&Slot]) -> Result<(), StoreError> {
        self.inner.remove(key, slots).await
    }
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
    let store = SlowStore {
        inner: MemoryStore::new(),
        clock: clock.clone(),
        delay: Duration::from_micros(2_500),
    };
    let service = RateLimitService::with_clock(store, Config::default(), clock);

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
    assert_eq!(units.len(), 6, "{units:?}");
    assert_eq!(units["HotKey"], Unit::Count);
    assert_eq!(OPERATION_LABEL, "Operation");
}

#[test]
fn a_service_built_before_the_recorder_records_nowhere() {
    let service = RateLimitService::in_memory(Config::default());
    let capture = Capture::default();
    let _local = metrics::set_default_local_recorder(&capture);
    service.check_now(PolicyId::HEARTBEAT, "c", 1).unwrap();
    assert_eq!(capture.counts(), counts(&[]));
    // A service built now records.
    let service = RateLimitService::in_memory(Config::default());
    service.check_now(PolicyId::HEARTBEAT, "c", 1).unwrap();
    assert_eq!(
        capture.counts(),
        counts(&[("Allowed{Operation=heartbeat}", 1)])
    );
}
