//! The seed's responses as API Gateway proxy responses: the 429 with
//! `Retry-After`, the 500, and the error format for other statuses. The
//! bodies come from [`ratelimiter::response::ErrorBody`]; the timestamps
//! from the caller, who reads them off the service's clock
//! ([`ratelimiter::RateLimitService::now_ms`]).

use aws_lambda_events::apigw::ApiGatewayProxyResponse;
use aws_lambda_events::encodings::Body;
use aws_lambda_events::http::{HeaderMap, HeaderValue, header};
use ratelimiter::response::{ErrorBody, INTERNAL_ERROR};

/// The 200 response that accepts a connection or a message.
pub fn ok_response() -> ApiGatewayProxyResponse {
    let mut response = ApiGatewayProxyResponse::default();
    response.status_code = 200;
    response
}

/// The seed's 429 response, with a `Retry-After` header.
///
/// ```
/// let response = ratelimiter_lambda::response::rate_limit_error_response(45, 1_699_500_123_456);
/// assert_eq!(response.status_code, 429);
/// assert_eq!(response.headers["retry-after"], "45");
/// ```
pub fn rate_limit_error_response(retry_after: u64, timestamp_ms: u64) -> ApiGatewayProxyResponse {
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
/// let response = ratelimiter_lambda::response::internal_error_response(1);
/// assert_eq!(response.status_code, 500);
/// ```
pub fn internal_error_response(timestamp_ms: u64) -> ApiGatewayProxyResponse {
    error_response(500, INTERNAL_ERROR, "Internal server error", timestamp_ms)
}

/// An error response in the seed's format, such as
/// `error_response(400, "BAD_REQUEST", "the message has no body", now_ms)`.
pub fn error_response(
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
    fn rate_limit_response_is_the_seeds_exactly() {
        let response = rate_limit_error_response(45, 1_699_500_123_456);
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
    fn internal_error_response_is_the_seeds_exactly() {
        let response = internal_error_response(7);
        assert_eq!(response.status_code, 500);
        assert!(!response.headers.contains_key(header::RETRY_AFTER));
        assert_eq!(
            body_json(&response),
            json!({"type": "error", "code": "INTERNAL_ERROR", "message": "Internal server error", "timestamp": 7})
        );
    }

    #[test]
    fn the_proxy_response_serializes_with_a_string_body() {
        let value = serde_json::to_value(rate_limit_error_response(5, 1)).unwrap();
        assert_eq!(value["statusCode"], 429);
        assert!(value["body"].is_string(), "{value}");
        assert_eq!(value["headers"]["retry-after"], "5");
    }
}
