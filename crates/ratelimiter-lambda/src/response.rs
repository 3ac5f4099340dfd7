//! The seed's responses as API Gateway proxy responses: the 429 with
//! `Retry-After`, the 500, and the error format for other statuses. The
//! bodies come from [`ratelimiter::response::ErrorBody`]; the timestamps
//! from the caller, who reads them off the service's clock
//! ([`ratelimiter::RateLimitService::now_ms`]).

use aws_lambda_events::apigw::ApiGatewayProxyResponse;
use aws_lambda_events::encodings::Body;
use aws_lambda_events::http::{self, HeaderMap, HeaderName, HeaderValue, header};
use ratelimiter::QuotaReport;
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

/// The seed's 429 for a denial, with its standard fields: `Retry-After`,
/// `RateLimit-Policy` and `RateLimit` (see [`ratelimiter::headers`]). The
/// body is the seed's exactly; the numbers are in the fields.
pub fn limited_response(report: &QuotaReport, timestamp_ms: u64) -> ApiGatewayProxyResponse {
    let retry_after = report.retry_after().unwrap_or(1);
    let mut response = json_response(429, &ErrorBody::rate_limited(retry_after, timestamp_ms));
    insert_fields(&mut response.headers, report);
    response
}

/// The same 429 as an `http::Response`, for `lambda_http` and other HTTP
/// services.
pub fn limited_http_response<B: From<String>>(
    report: &QuotaReport,
    timestamp_ms: u64,
) -> http::Response<B> {
    let retry_after = report.retry_after().unwrap_or(1);
    let mut response = http_json_response(429, &ErrorBody::rate_limited(retry_after, timestamp_ms));
    insert_fields(response.headers_mut(), report);
    response
}

/// The seed's 500 as an `http::Response`.
pub fn internal_error_http_response<B: From<String>>(timestamp_ms: u64) -> http::Response<B> {
    http_json_response(
        500,
        &ErrorBody::new(INTERNAL_ERROR, "Internal server error", timestamp_ms),
    )
}

fn http_json_response<B: From<String>>(status: u16, body: &ErrorBody) -> http::Response<B> {
    let mut response = http::Response::new(B::from(body.to_json()));
    *response.status_mut() =
        http::StatusCode::from_u16(status).expect("the seed's statuses are valid");
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Adds the report's fields to `headers` (`RateLimit-Policy`, `RateLimit`,
/// and `Retry-After` for a denial), replacing any already there.
pub fn insert_fields(headers: &mut HeaderMap, report: &QuotaReport) {
    for (name, value) in report.fields() {
        let name = HeaderName::from_bytes(name.as_bytes()).expect("the fields' names are valid");
        // The values are printable ASCII: numbers and quoted policy names.
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
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

    async fn denied_report() -> QuotaReport {
        let limiter = ratelimiter::Builder::new().in_memory();
        let attempt = (ratelimiter::PolicyId::CONNECTION_ATTEMPT, "203.0.113.7");
        let mut verdict = limiter.decide(attempt).await.unwrap();
        while verdict.allowed() {
            verdict = limiter.decide(attempt).await.unwrap();
        }
        limiter.report(&verdict).unwrap()
    }

    #[tokio::test]
    async fn the_429_carries_the_standard_fields_beside_retry_after() {
        let report = denied_report().await;
        let response = limited_response(&report, 1_699_500_123_456);
        assert_eq!(response.status_code, 429);
        assert_eq!(
            response.headers["ratelimit-policy"],
            r#""connection_attempt";q=20;w=60"#
        );
        assert_eq!(
            response.headers["ratelimit"],
            r#""connection_attempt";r=0;t=3"#
        );
        assert_eq!(response.headers[header::RETRY_AFTER], "3");
        // The body stays the seed's exactly.
        assert_eq!(
            body_json(&response),
            json!({
                "type": "error",
                "code": "RATE_LIMIT_EXCEEDED",
                "message": "Rate limit exceeded. Retry after 3 seconds.",
                "timestamp": 1_699_500_123_456u64,
                "details": {"retryAfter": 3}
            })
        );
        let http: http::Response<String> = limited_http_response(&report, 1);
        assert_eq!(http.status(), 429);
        assert_eq!(
            http.headers()["ratelimit"],
            r#""connection_attempt";r=0;t=3"#
        );
        assert_eq!(http.headers()[header::CONTENT_TYPE], "application/json");
    }

    #[test]
    fn the_proxy_response_serializes_with_a_string_body() {
        let value = serde_json::to_value(rate_limit_error_response(5, 1)).unwrap();
        assert_eq!(value["statusCode"], 429);
        assert!(value["body"].is_string(), "{value}");
        assert_eq!(value["headers"]["retry-after"], "5");
    }
}
