//! CloudWatch metrics from the functions, in the Embedded Metric Format.
//!
//! The service and the DynamoDB store record their metrics through the
//! `metrics` facade ([`ratelimiter::telemetry`]); this module installs
//! `metrics_cloudwatch_embedded` as the recorder and writes what was recorded
//! to stdout after each invocation, where Lambda hands it to CloudWatch Logs
//! and CloudWatch turns it into metrics. No API call, no extra latency beyond
//! one write.
//!
//! One JSON document per operation per invocation, for example:
//!
//! ```json
//! {"_aws":{"Timestamp":1764241200000,"CloudWatchMetrics":[{"Namespace":"RateLimiter/prod",
//!   "Dimensions":[["Operation"]],"Metrics":[{"Name":"Allowed","Unit":"Count"}, …]}]},
//!  "Operation":"heartbeat","Allowed":1,"DecisionLatency":[3.1],"DynamoDbCalls":1,
//!  "RequestId":"8f5…"}
//! ```
//!
//! Configuration: [`METRICS_VAR`] (`emf`, the default, or `off`) and
//! [`NAMESPACE_VAR`] (default [`DEFAULT_NAMESPACE`]).

use std::io::Write;

use lambda_runtime::LambdaEvent;
use metrics_cloudwatch_embedded::{Builder, Collector};
use ratelimiter::config::ConfigError;
use serde_json::Value;
use tower::{Service, ServiceExt};

/// `emf` (the default) to emit metrics, `off` not to.
pub const METRICS_VAR: &str = "RATE_LIMIT_METRICS";
/// The CloudWatch namespace the metrics go to.
pub const NAMESPACE_VAR: &str = "RATE_LIMIT_METRICS_NAMESPACE";
/// The namespace when [`NAMESPACE_VAR`] is not set.
pub const DEFAULT_NAMESPACE: &str = "RateLimiter";
/// The property naming the invocation each document came from, so that a
/// metric leads back to the invocation's logs.
pub const REQUEST_ID_PROPERTY: &str = "RequestId";

/// Whether and where metrics go, from the environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricsConfig {
    /// The CloudWatch namespace, or `None` when metrics are off.
    pub namespace: Option<String>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            namespace: Some(DEFAULT_NAMESPACE.to_owned()),
        }
    }
}

impl MetricsConfig {
    /// The configuration set by the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|var| std::env::var(var).ok())
    }

    /// The configuration set by `lookup` ([`METRICS_VAR`], [`NAMESPACE_VAR`]).
    ///
    /// ```
    /// use ratelimiter_lambda::emf::MetricsConfig;
    ///
    /// let config = MetricsConfig::from_lookup(|var| {
    ///     (var == "RATE_LIMIT_METRICS_NAMESPACE").then(|| "RateLimiter/prod".to_owned())
    /// })
    /// .unwrap();
    /// assert_eq!(config.namespace.as_deref(), Some("RateLimiter/prod"));
    ///
    /// let off = MetricsConfig::from_lookup(|var| (var == "RATE_LIMIT_METRICS").then(|| "off".into()));
    /// assert_eq!(off.unwrap().namespace, None);
    /// ```
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let enabled = match lookup(METRICS_VAR).as_deref().map(str::trim) {
            None | Some("emf") => true,
            Some("off") => false,
            Some(other) => {
                return Err(ConfigError::NotOneOf {
                    var: METRICS_VAR.to_owned(),
                    value: other.to_owned(),
                    expected: "emf or off",
                });
            }
        };
        let namespace = match lookup(NAMESPACE_VAR) {
            Some(namespace) => validate_namespace(&namespace)?,
            None => DEFAULT_NAMESPACE.to_owned(),
        };
        Ok(Self {
            namespace: enabled.then_some(namespace),
        })
    }
}

/// Checks a namespace against CloudWatch's rules: 1 to 255 of `0-9 A-Z a-z
/// . - _ / # :` and space, not only spaces, and not starting with `AWS/`.
fn validate_namespace(namespace: &str) -> Result<String, ConfigError> {
    let valid = (1..=255).contains(&namespace.len())
        && namespace
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_/#: ".contains(&b))
        && !namespace.trim().is_empty()
        && !namespace.starts_with("AWS/");
    if valid {
        Ok(namespace.to_owned())
    } else {
        Err(ConfigError::Invalid {
            var: NAMESPACE_VAR.to_owned(),
            value: namespace.to_owned(),
            expected: "a CloudWatch namespace (1 to 255 characters of 0-9, A-Z, a-z, '.', '-', '_', '/', '#', ':' and space, not starting with 'AWS/')",
        })
    }
}

/// Why the metrics recorder could not be installed.
#[derive(Debug, thiserror::Error)]
#[error("cannot install the CloudWatch metrics recorder: {0}")]
pub struct InstallError(String);

/// The installed EMF recorder: where the process's metrics accumulate until
/// [`Emf::flush`] writes them.
#[derive(Clone, Copy)]
pub struct Emf {
    collector: &'static Collector,
    sink: fn(&[u8]),
}

impl std::fmt::Debug for Emf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emf")
            .field("namespace", &self.collector.config.cloudwatch_namespace)
            .finish_non_exhaustive()
    }
}

impl Emf {
    /// Installs the process-wide recorder for `namespace`, writing to stdout.
    ///
    /// A process has one recorder: a second call fails.
    pub fn install(namespace: &str) -> Result<Self, InstallError> {
        let collector = Builder::new()
            .cloudwatch_namespace(namespace.to_owned())
            .init()
            .map_err(|e| InstallError(e.to_string()))?;
        ratelimiter::telemetry::describe();
        ratelimiter_dynamodb::describe_metrics();
        Ok(Self {
            collector,
            sink: write_stdout,
        })
    }

    /// The same recorder, writing its documents to `sink` instead of stdout.
    #[must_use]
    pub fn with_sink(self, sink: fn(&[u8])) -> Self {
        Self { sink, ..self }
    }

    /// Takes what was recorded since the last call: one EMF document per
    /// line and per operation, nothing when nothing was recorded.
    pub fn drain(&self) -> Vec<u8> {
        let mut documents = Vec::new();
        // Writing into a Vec cannot fail.
        let _ = self.collector.flush(&mut documents);
        documents
    }

    /// Writes what was recorded since the last flush to the sink, at once.
    pub fn flush(&self) {
        let documents = self.drain();
        if !documents.is_empty() {
            (self.sink)(&documents);
        }
    }

    /// Names the invocation in the documents flushed from now on.
    pub fn set_request_id(&self, request_id: &str) {
        self.collector
            .set_property(REQUEST_ID_PROPERTY, Value::from(request_id));
    }
}

fn write_stdout(documents: &[u8]) {
    let mut stdout = std::io::stdout().lock();
    if let Err(error) = stdout.write_all(documents).and_then(|()| stdout.flush()) {
        tracing::warn!(%error, "could not write metrics to stdout");
    }
}

/// `service`, flushing the metrics its invocation recorded before the
/// response goes back to Lambda (after which the container may be frozen),
/// each document tagged with the invocation's request id. Without `emf`,
/// `service` unchanged in behaviour.
pub fn flush_after_each<S, T>(
    service: S,
    emf: Option<Emf>,
) -> impl Service<LambdaEvent<T>, Response = S::Response, Error = S::Error>
where
    S: Service<LambdaEvent<T>>,
{
    service
        .map_request(move |event: LambdaEvent<T>| {
            if let Some(emf) = emf {
                emf.set_request_id(&event.context.request_id);
            }
            event
        })
        .map_result(move |result| {
            if let Some(emf) = emf {
                emf.flush();
            }
            result
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |var| pairs.iter().find(|(k, _)| k == var).map(|(_, v)| v.clone())
    }

    #[test]
    fn metrics_are_on_by_default_in_the_default_namespace() {
        assert_eq!(
            MetricsConfig::from_lookup(lookup(&[])).unwrap(),
            MetricsConfig::default()
        );
        assert_eq!(
            MetricsConfig::default().namespace.as_deref(),
            Some("RateLimiter")
        );
    }

    #[test]
    fn a_wrong_switch_is_an_error_naming_the_variable() {
        let error = MetricsConfig::from_lookup(lookup(&[(METRICS_VAR, "yes")])).unwrap_err();
        assert_eq!(
            error.to_string(),
            r#"RATE_LIMIT_METRICS must be one of emf or off, got "yes""#
        );
    }

    #[test]
    fn namespaces_follow_cloudwatch_rules() {
        for good in ["RateLimiter/prod", "a", "My App:ws#1", "x.y-z_w"] {
            let config = MetricsConfig::from_lookup(lookup(&[(NAMESPACE_VAR, good)])).unwrap();
            assert_eq!(config.namespace.as_deref(), Some(good));
        }
        let long = "n".repeat(256);
        for bad in ["", "   ", "AWS/Lambda", "rate*limiter", "é", long.as_str()] {
            let error = MetricsConfig::from_lookup(lookup(&[(NAMESPACE_VAR, bad)])).unwrap_err();
            let message = error.to_string();
            assert!(message.starts_with(NAMESPACE_VAR), "{message}");
            assert!(message.contains(&format!("{bad:?}")), "{message}");
        }
    }

    #[test]
    fn a_bad_namespace_is_an_error_even_with_metrics_off() {
        let result =
            MetricsConfig::from_lookup(lookup(&[(METRICS_VAR, "off"), (NAMESPACE_VAR, "AWS/x")]));
        assert!(result.is_err(), "{result:?}");
    }
}
