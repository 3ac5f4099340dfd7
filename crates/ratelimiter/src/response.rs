//! The seed's error responses, shaped as API Gateway proxy responses.
//!
//! The body is a JSON string, as API Gateway expects:
//!
//! ```json
//! {"type":"error","code":"RATE_LIMIT_EXCEEDED","message":"Rate limit exceeded. Retry after 45 seconds.",
//!  "timestamp":1699500123456,"details":{"retryAfter":45}}
//! ```

use std::time::{SystemTime, UNIX_EPOCH};

use aws_lambda_events::apigw::ApiGatewayProxyResponse;
use aws_lambda_events::encodings::Body;
use aws_lambda_events::http::{HeaderMap, HeaderValue, header};
use serde::{Deserialize, Serialize};

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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetails {
    /// Whole seconds to wait before retrying.
    #[serde(rename = "retryAfter")]
    pub retry_after: u64,
}

impl ErrorBody {
    /// The body of a rate-limit denial.
    pub fn rate_limited(retry_after: u64, timestamp_ms: u64) -> Self {
        Self {
            kind: "error".to_owned(),
            code: RATE_LIMIT_EXCEEDED.to_owned(),
            message: format!("Rate limit exceeded. Retry after {retry_after} seconds."),
            timestamp: timestamp_ms,
            details: Some(ErrorDetails { retry_after }),
        }
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

/// The current time in milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The seed's 429 response, with a `Retry-After` header.
///
/// ```
/// let response = ratelimiter::response::rate_limit_error_response(45);
/// assert_eq!(response.status_code, 429);
/// assert_eq!(response.headers["retry-after"], "45");
/// ```
pub fn rate_limit_error_response(retry_after: u64) -> ApiGatewayProxyResponse {
    rate_limit_error_response_at(retry_after, now_ms())
}

/// [`rate_limit_error_response`] with a given timestamp.
pub fn rate_limit_error_response_at(
    retry_after: u64,
    timestamp_ms: u64,
) -> ApiGatewayProxyResponse {
    let mut response = json_response(429, &ErrorBody::rate_limited(retry_after, timestamp_ms));
    response
        .headers
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    response
}

/// The seed's 500 response: `INTERNAL_ERROR`, "Internal server error", and
/// nothing about the cause, which belongs in the logs.
///
/// ```
/// let response = ratelimiter::response::internal_error_response();
/// assert_eq!(response.status_code, 500);
/// ```
pub fn internal_error_response() -> ApiGatewayProxyResponse {
    error_response(500, INTERNAL_ERROR, "Internal server error")
}

/// An error response in the seed's format, such as
/// `error_response(400, "BAD_REQUEST", "the message has no body")`.
pub fn error_response(status: u16, code: &str, message: &str) -> ApiGatewayProxyResponse {
    error_response_at(status, code, message, now_ms())
}

/// [`error_response`] with a given timestamp.
pub fn error_response_at(
    status: u16,
    code: &str,
    message: &str,
    timestamp_ms: u64,
) -> ApiGatewayProxyResponse {
    json_response(status, &ErrorBody::new(code, message, timestamp_ms))
}

fn json_response(status: u16, body: &ErrorBody) -> ApiGatewayProxyResponse {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let mut response = ApiGatewayProxyResponse::default();
    response.status_code = i64::from(status);
    response.headers = headers;
    response.body = Some(Body::Text(body.to_json()));
    response
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn body_json(response: &ApiGatewayProxyResponse) -> Value {
        match &response.body {
            Some(Body::Text(text)) => serde_json::from_str(text).unwrap(),
            other => panic!("expected a text body, got {other:?}"),
        }
    }

    #[test]
    fn rate_limit_body_is_the_seeds_exactly() {
        let response = rate_limit_error_response_at(45, 1_699_500_123_456);
        assert_eq!(response.status_code, 429);
        assert_eq!(response.headers[header::RETRY_AFTER], "45");
        assert_eq!(response.headers[header::CONTENT_TYPE], "application/json");
        assert_eq!(
            body_json(&response),
            json!({
                "type": "error",
                "code": "RATE_LIMIT_EXCEEDED",
                "message": "Rate limit exceeded. Retry after 45 seconds.",
                "timestamp": 1_699_500_123_456u64,
                "details": {"retryAfter": 45}
            })
        );
    }

    #[test]
    fn internal_error_body() {
        let response = error_response_at(500, INTERNAL_ERROR, "Internal server error", 7);
        assert_eq!(response.status_code, 500);
        assert!(!response.headers.contains_key(header::RETRY_AFTER));
        assert_eq!(
            body_json(&response),
            json!({"type": "error", "code": "INTERNAL_ERROR", "message": "Internal server error", "timestamp": 7})
        );
    }

    #[test]
    fn the_timestamp_is_now_in_milliseconds() {
        let before = now_ms();
        let response = rate_limit_error_response(3);
        let stamp = body_json(&response)["timestamp"].as_u64().unwrap();
        assert!(stamp >= before && stamp <= now_ms(), "{stamp}");
        assert!(stamp > 1_600_000_000_000, "not milliseconds: {stamp}");
    }

    #[test]
    fn the_proxy_response_serializes_with_a_string_body() {
        let value = serde_json::to_value(rate_limit_error_response_at(5, 1)).unwrap();
        assert_eq!(value["statusCode"], 429);
        assert!(value["body"].is_string(), "{value}");
        assert_eq!(value["headers"]["retry-after"], "5");
    }
}
