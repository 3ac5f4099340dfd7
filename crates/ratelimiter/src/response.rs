//! The seed's error bodies, as plain data: what a 429 or a 500 says,
//! whatever carries it (an API Gateway response, a WebSocket message, an
//! HTTP response of your own). The Lambda crate wraps them in API Gateway
//! responses. For example:
//!
//! ```json
//! {"type":"error","code":"RATE_LIMIT_EXCEEDED","message":"Rate limit exceeded. Retry after 45 seconds.",
//!  "timestamp":1699500123456,"details":{"retryAfter":45}}
//! ```
//!
//! A body sent on a WebSocket connection, where no header can go, also
//! carries the numbers of the `RateLimit` fields in `details`
//! ([`ErrorBody::limited`]), keeping `retryAfter`:
//!
//! ```json
//! {"type":"error","code":"RATE_LIMIT_EXCEEDED","message":"Rate limit exceeded. Retry after 30 seconds.",
//!  "timestamp":1699500123456,"details":{"retryAfter":30,"policy":"heartbeat",
//!  "limits":[{"name":"heartbeat","quota":2,"window":60,"remaining":0,"reset":30}]}}
//! ```

use serde::{Deserialize, Serialize};

use crate::headers::{LimitReport, QuotaReport};

/// The code of a rate-limit denial.
pub const RATE_LIMIT_EXCEEDED: &str = "RATE_LIMIT_EXCEEDED";

/// The code of an unexpected failure.
pub const INTERNAL_ERROR: &str = "INTERNAL_ERROR";

/// The seed's error body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Always `"error"`.
    #[serde(rename = "type")]
    pub kind: String,
    /// A machine-readable code, such as [`RATE_LIMIT_EXCEEDED`].
    pub code: String,
    /// A human-readable message.
    pub message: String,
    /// When the error was produced, in milliseconds since the Unix epoch.
    pub timestamp: u64,
    /// Extra fields; present for rate-limit denials.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub details: Option<ErrorDetails>,
}

/// The `details` of a rate-limit denial.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetails {
    /// Whole seconds to wait before retrying.
    #[serde(rename = "retryAfter")]
    pub retry_after: u64,
    /// The policy that refused, where the body reports its numbers.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub policy: Option<String>,
    /// Each of the policy's limits, as the `RateLimit` fields state them.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub limits: Vec<LimitReport>,
}

impl ErrorBody {
    /// The body of a rate-limit denial.
    pub fn rate_limited(retry_after: u64, timestamp_ms: u64) -> Self {
        Self {
            kind: "error".to_owned(),
            code: RATE_LIMIT_EXCEEDED.to_owned(),
            message: format!("Rate limit exceeded. Retry after {retry_after} seconds."),
            timestamp: timestamp_ms,
            details: Some(ErrorDetails {
                retry_after,
                policy: None,
                limits: Vec::new(),
            }),
        }
    }

    /// The body of a rate-limit denial with its numbers in `details`: what
    /// a WebSocket connection receives, since a header cannot reach it.
    /// `retryAfter` is the report's (at least 1).
    pub fn limited(report: &QuotaReport, timestamp_ms: u64) -> Self {
        let mut body = Self::rate_limited(report.retry_after().unwrap_or(1), timestamp_ms);
        if let Some(details) = &mut body.details {
            details.policy = Some(report.policy.clone());
            details.limits = report.limits.clone();
        }
        body
    }

    /// The body of any other error.
    pub fn new(code: &str, message: &str, timestamp_ms: u64) -> Self {
        Self {
            kind: "error".to_owned(),
            code: code.to_owned(),
            message: message.to_owned(),
            timestamp: timestamp_ms,
            details: None,
        }
    }

    /// The body as a JSON string.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("an error body always serializes")
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    #[test]
    fn rate_limit_body_is_the_seeds_exactly() {
        let body: Value =
            serde_json::from_str(&ErrorBody::rate_limited(45, 1_699_500_123_456).to_json())
                .unwrap();
        assert_eq!(
            body,
            json!({
                "type": "error",
                "code": "RATE_LIMIT_EXCEEDED",
                "message": "Rate limit exceeded. Retry after 45 seconds.",
                "timestamp": 1_699_500_123_456u64,
                "details": {"retryAfter": 45}
            })
        );
    }

    #[tokio::test]
    async fn a_websocket_body_adds_the_numbers_and_keeps_retry_after() {
        let limiter = crate::Builder::new().in_memory();
        let id = crate::PolicyId::HEARTBEAT;
        for _ in 0..2 {
            assert!(limiter.decide((id, "c")).await.unwrap().allowed());
        }
        let denied = limiter.decide((id, "c")).await.unwrap();
        let report = limiter.report(&denied).unwrap();
        let body: Value = serde_json::from_str(&ErrorBody::limited(&report, 9).to_json()).unwrap();
        assert_eq!(
            body,
            json!({
                "type": "error",
                "code": "RATE_LIMIT_EXCEEDED",
                "message": "Rate limit exceeded. Retry after 30 seconds.",
                "timestamp": 9,
                "details": {
                    "retryAfter": 30,
                    "policy": "heartbeat",
                    "limits": [{"name": "heartbeat", "quota": 2, "window": 60, "remaining": 0, "reset": 30}]
                }
            })
        );
    }

    #[test]
    fn internal_error_body() {
        let body: Value = serde_json::from_str(
            &ErrorBody::new(INTERNAL_ERROR, "Internal server error", 7).to_json(),
        )
        .unwrap();
        assert_eq!(
            body,
            json!({"type": "error", "code": "INTERNAL_ERROR", "message": "Internal server error", "timestamp": 7})
        );
    }
}
