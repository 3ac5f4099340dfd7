//! What the service reports through the [`metrics`] facade.
//!
//! Every decision counts once in [`ALLOWED`] or [`DENIED`], labelled with its
//! policy's name ([`OPERATION_LABEL`]), and records its latency in
//! [`DECISION_LATENCY`]. A shadow-mode denial that let the request through
//! also counts in [`WOULD_DENY`]; a decision the failure mode made because
//! the store could not be used also counts in [`DEGRADED`], and one made
//! by a hot key's batches in [`BATCHED`]. A store with a
//! backing service names a counter of its calls ([`crate::Store::CALLS_METRIC`],
//! `DynamoDbCalls`), which the service keeps per policy too, beside the
//! capacity those calls consumed: [`CONSUMED_WRITE_CAPACITY`] and
//! [`CONSUMED_READ_CAPACITY`] (DynamoDB's capacity units, what the bill
//! counts).
//!
//! A service registers its metrics with the recorder in force when it is
//! built: install the recorder first (the Lambda functions install a
//! CloudWatch EMF one). Without a recorder, recording costs about a
//! nanosecond. Synchronous in-memory decisions ([`RateLimitService::decide_sync`])
//! are counted but not timed: they take tens of nanoseconds, and reading the
//! clock again would add a third of that.
//!
//! The names are CloudWatch-style; a Prometheus exporter turns them into, for
//! example, `Allowed{Operation="heartbeat"}`.
//!
//! [`RateLimitService::decide_sync`]: crate::RateLimitService::decide_sync
//!
//! ```
//! use ratelimiter::telemetry::{ALLOWED, OPERATION_LABEL};
//!
//! assert_eq!((ALLOWED, OPERATION_LABEL), ("Allowed", "Operation"));
//! ```

use metrics::{Counter, Histogram, Key, Label, Level, Metadata, Unit};

use crate::gcra::Nanos;
use crate::policy::{Policies, PolicyId};
use crate::store::Capacity;
use crate::verdict::Verdict;

/// The label carrying the policy's name (`heartbeat`, …) on every metric.
/// It keeps the name `Operation` that the seed's four policies had, so that
/// dashboards and alarms built on it keep working.
pub const OPERATION_LABEL: &str = "Operation";
/// Requests let through, shadow-mode would-be denials included (count).
pub const ALLOWED: &str = "Allowed";
/// Requests refused (count).
pub const DENIED: &str = "Denied";
/// Requests shadow mode let through that the limit would have refused (count).
pub const WOULD_DENY: &str = "WouldDeny";
/// Decisions the failure mode made because the store failed or the circuit
/// breaker was open (count).
pub const DEGRADED: &str = "Degraded";
/// Decisions made in this process because the store throttled the key or
/// gave up on it (a hot key), whatever the failure mode (count).
pub const HOT_KEY: &str = "HotKey";
/// Decisions made by this process's batches of a hot key's tokens
/// ([`crate::policy::Batching`]): allowed from a batch, most with no call,
/// or refused while one is taken or the bucket refills (count).
pub const BATCHED: &str = "Batched";
/// Time from the start of a decision to its verdict, store call included
/// (milliseconds).
pub const DECISION_LATENCY: &str = "DecisionLatency";
/// Write capacity units a store's backing service charged for decisions
/// and for seats given back (count), for stores that have one.
pub const CONSUMED_WRITE_CAPACITY: &str = "ConsumedWriteCapacity";
/// Read capacity units a store's backing service charged for decisions
/// (count), for stores that have one.
pub const CONSUMED_READ_CAPACITY: &str = "ConsumedReadCapacity";

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// The labels that identify a policy called `name` in every metric.
fn policy_labels(name: &str) -> Vec<Label> {
    vec![Label::new(OPERATION_LABEL, name.to_owned())]
}

/// The counter `name` of the policy called `policy` in the recorder in force.
fn counter(name: &'static str, policy: &str) -> Counter {
    let key = Key::from_parts(name, policy_labels(policy));
    metrics::with_recorder(|recorder| recorder.register_counter(&key, &METADATA))
}

fn histogram(name: &'static str, policy: &str) -> Histogram {
    let key = Key::from_parts(name, policy_labels(policy));
    metrics::with_recorder(|recorder| recorder.register_histogram(&key, &METADATA))
}

/// Gives the recorder in force the unit and meaning of each metric. Call it
/// once, after installing the recorder; CloudWatch needs the units.
pub fn describe() {
    for (name, text) in [
        (ALLOWED, "Requests let through"),
        (DENIED, "Requests refused by a rate limit"),
        (
            WOULD_DENY,
            "Requests shadow mode let through over the limit",
        ),
        (DEGRADED, "Decisions made by the failure mode"),
        (HOT_KEY, "Decisions made in process on a hot key"),
        (BATCHED, "Decisions made by batches of a hot key's tokens"),
        (
            CONSUMED_WRITE_CAPACITY,
            "Write capacity units the rate-limit store charged",
        ),
        (
            CONSUMED_READ_CAPACITY,
            "Read capacity units the rate-limit store charged",
        ),
    ] {
        metrics::describe_counter!(name, Unit::Count, text);
    }
    metrics::describe_histogram!(
        DECISION_LATENCY,
        Unit::Milliseconds,
        "Time to decide, store call included"
    );
}

/// One policy's metric handles.
#[derive(Clone, Debug)]
struct PolicyMetrics {
    allowed: Counter,
    denied: Counter,
    would_deny: Counter,
    degraded: Counter,
    hot_key: Counter,
    batched: Counter,
    latency: Histogram,
    /// The store's calls to its backing service, and the capacity they
    /// consumed (write, read), for stores that have one.
    calls: Option<(Counter, Counter, Counter)>,
}

/// The service's metric handles, one set per policy, registered once with
/// the recorder in force when the service is built, so that recording a
/// decision looks nothing up.
#[derive(Clone, Debug)]
pub(crate) struct DecisionMetrics(Box<[PolicyMetrics]>);

impl DecisionMetrics {
    /// Handles for every policy; a call counter named `calls` when the
    /// store has one.
    pub(crate) fn register(policies: &Policies, calls: Option<&'static str>) -> Self {
        Self(
            policies
                .iter()
                .map(|(_, policy)| {
                    let name = policy.name();
                    PolicyMetrics {
                        allowed: counter(ALLOWED, name),
                        denied: counter(DENIED, name),
                        would_deny: counter(WOULD_DENY, name),
                        degraded: counter(DEGRADED, name),
                        hot_key: counter(HOT_KEY, name),
                        batched: counter(BATCHED, name),
                        latency: histogram(DECISION_LATENCY, name),
                        calls: calls.map(|metric| {
                            (
                                counter(metric, name),
                                counter(CONSUMED_WRITE_CAPACITY, name),
                                counter(CONSUMED_READ_CAPACITY, name),
                            )
                        }),
                    }
                })
                .collect(),
        )
    }

    /// Counts `verdict`, and the store calls it made.
    #[inline]
    pub(crate) fn count(&self, verdict: &Verdict) {
        let metrics = &self.0[verdict.policy.index()];
        if verdict.allowed() {
            metrics.allowed.increment(1);
        } else {
            metrics.denied.increment(1);
        }
        if verdict.would_deny() {
            metrics.would_deny.increment(1);
        }
        if let Some(why) = verdict.degraded {
            metrics.degraded.increment(1);
            if why.is_hot_key() {
                metrics.hot_key.increment(1);
            }
        }
        if verdict.batched {
            metrics.batched.increment(1);
        }
        self.spent(verdict.policy, verdict.calls, verdict.capacity);
    }

    /// Counts `calls` to the store's backing service on `policy`'s behalf,
    /// and the capacity they consumed.
    #[inline]
    pub(crate) fn spent(&self, policy: PolicyId, calls: u32, capacity: Capacity) {
        if let Some((counted, write, read)) = &self.0[policy.index()].calls
            && calls > 0
        {
            counted.increment(u64::from(calls));
            if capacity.write > 0 {
                write.increment(u64::from(capacity.write));
            }
            if capacity.read > 0 {
                read.increment(u64::from(capacity.read));
            }
        }
    }

    /// Records that a decision on `policy` took `elapsed` nanoseconds.
    #[inline]
    pub(crate) fn latency(&self, policy: PolicyId, elapsed: Nanos) {
        self.0[policy.index()].latency.record(elapsed as f64 / 1e6);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_policy_is_labelled_with_its_name() {
        let labels = policy_labels("send_message");
        assert_eq!(labels.len(), 1);
        assert_eq!(labels[0].key(), OPERATION_LABEL);
        assert_eq!(labels[0].value(), "send_message");
    }
}
