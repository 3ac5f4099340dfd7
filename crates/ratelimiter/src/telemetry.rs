//! What the service reports through the [`metrics`] facade.
//!
//! Every decision counts once in [`ALLOWED`] or [`DENIED`], labelled with its
//! operation ([`OPERATION_LABEL`]), and records its latency in
//! [`DECISION_LATENCY`]. A shadow-mode denial that let the request through
//! also counts in [`WOULD_DENY`]; a decision the failure mode made because
//! the store could not be used also counts in [`DEGRADED`]. Stores add their
//! own metrics with the same label (the DynamoDB store counts its calls).
//!
//! A service registers its metrics with the recorder in force when it is
//! built: install the recorder first (the Lambda functions install a
//! CloudWatch EMF one). Without a recorder, recording costs about a
//! nanosecond. Synchronous in-memory decisions ([`RateLimitService::check_now`])
//! are counted but not timed: they take tens of nanoseconds, and reading the
//! clock again would add a third of that.
//!
//! The names are CloudWatch-style; a Prometheus exporter turns them into, for
//! example, `Allowed{Operation="heartbeat"}`.
//!
//! [`RateLimitService::check_now`]: crate::RateLimitService::check_now
//!
//! ```
//! use ratelimiter::telemetry::{ALLOWED, OPERATION_LABEL};
//!
//! assert_eq!((ALLOWED, OPERATION_LABEL), ("Allowed", "Operation"));
//! ```

use metrics::{Counter, Histogram, Key, Label, Level, Metadata, Unit};

use crate::gcra::Nanos;
use crate::key::Operation;
use crate::service::Verdict;

/// The label carrying the operation's name (`heartbeat`, …) on every metric.
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
/// Time from the start of a decision to its verdict, store call included
/// (milliseconds).
pub const DECISION_LATENCY: &str = "DecisionLatency";

/// The operation label of each operation, in [`Operation::ALL`] order, so
/// that recording builds no label at run time.
static LABELS: [[Label; 1]; 4] = {
    const fn label(operation: Operation) -> [Label; 1] {
        [Label::from_static_parts(
            OPERATION_LABEL,
            operation.as_str(),
        )]
    }
    [
        label(Operation::ALL[0]),
        label(Operation::ALL[1]),
        label(Operation::ALL[2]),
        label(Operation::ALL[3]),
    ]
};

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// The labels that identify `operation` in every metric.
pub fn operation_labels(operation: Operation) -> &'static [Label] {
    &LABELS[operation as usize]
}

/// The counter `name` of `operation` in the recorder in force (for stores
/// adding their own metrics).
pub fn counter(name: &'static str, operation: Operation) -> Counter {
    let key = Key::from_static_parts(name, operation_labels(operation));
    metrics::with_recorder(|recorder| recorder.register_counter(&key, &METADATA))
}

fn histogram(name: &'static str, operation: Operation) -> Histogram {
    let key = Key::from_static_parts(name, operation_labels(operation));
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
    ] {
        metrics::describe_counter!(name, Unit::Count, text);
    }
    metrics::describe_histogram!(
        DECISION_LATENCY,
        Unit::Milliseconds,
        "Time to decide, store call included"
    );
}

/// One operation's metric handles.
#[derive(Clone, Debug)]
struct OperationMetrics {
    allowed: Counter,
    denied: Counter,
    would_deny: Counter,
    degraded: Counter,
    latency: Histogram,
}

/// The service's metric handles, registered once with the recorder in force
/// when the service is built, so that recording a decision looks nothing up.
#[derive(Clone, Debug)]
pub(crate) struct DecisionMetrics([OperationMetrics; 4]);

impl DecisionMetrics {
    pub(crate) fn register() -> Self {
        Self(Operation::ALL.map(|operation| OperationMetrics {
            allowed: counter(ALLOWED, operation),
            denied: counter(DENIED, operation),
            would_deny: counter(WOULD_DENY, operation),
            degraded: counter(DEGRADED, operation),
            latency: histogram(DECISION_LATENCY, operation),
        }))
    }

    /// Counts `verdict`.
    #[inline]
    pub(crate) fn count(&self, verdict: &Verdict) {
        let metrics = &self.0[verdict.operation as usize];
        if verdict.allowed() {
            metrics.allowed.increment(1);
        } else {
            metrics.denied.increment(1);
        }
        if verdict.would_deny() {
            metrics.would_deny.increment(1);
        }
        if verdict.degraded {
            metrics.degraded.increment(1);
        }
    }

    /// Records that a decision on `operation` took `elapsed` nanoseconds.
    #[inline]
    pub(crate) fn latency(&self, operation: Operation, elapsed: Nanos) {
        self.0[operation as usize]
            .latency
            .record(elapsed as f64 / 1e6);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_operation_has_its_own_label_in_all_order() {
        for operation in Operation::ALL {
            let labels = operation_labels(operation);
            assert_eq!(labels.len(), 1);
            assert_eq!(labels[0].key(), OPERATION_LABEL);
            assert_eq!(labels[0].value(), operation.as_str());
        }
    }
}
