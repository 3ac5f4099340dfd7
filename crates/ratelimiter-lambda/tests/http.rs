//! The tower layer in front of an HTTP Lambda (`lambda_http`): the standard
//! fields on every response, the seed's 429 for a denial.

use std::sync::Arc;

use lambda_http::{Body, Error, Request, Response};
use ratelimiter::{Builder, Config, FakeClock, MemoryStore, RateLimitService};
use ratelimiter_lambda::layer::{RateLimitLayer, Subject};
use serde_json::Value;
use tower::{ServiceBuilder, ServiceExt, service_fn};

fn limiter() -> Arc<RateLimitService<MemoryStore, FakeClock>> {
    let config = Config::from_file_text(
        "limits.toml",
        "[policy.api_calls]\nkey = \"tenant\"\nlimits = [\"2/s\", \"3/min\"]\n",
        |_| None,
    )
    .unwrap();
    Arc::new(
        Builder::from_config(config)
            .clock(FakeClock::at_secs(1_700_000_000))
            .in_memory(),
    )
}

fn request(tenant: Option<&str>) -> Request {
    let mut request = lambda_http::http::Request::builder().uri("https://api.example.com/items");
    if let Some(tenant) = tenant {
        request = request.header("x-tenant", tenant);
    }
    request.body(Body::Empty).unwrap()
}

#[tokio::test]
async fn every_http_response_carries_the_fields_and_a_denial_is_the_seeds_429() {
    let limiter = limiter();
    let api_calls = limiter.policy_id("api_calls").unwrap();
    let service = ServiceBuilder::new()
        .layer(RateLimitLayer::new(
            limiter.clone(),
            move |request: &Request| {
                let tenant = request.headers().get("x-tenant")?.to_str().ok()?;
                Some(Subject::new(api_calls, tenant))
            },
        ))
        .service(service_fn(|_request: Request| async {
            Ok::<_, Error>(Response::new(Body::from("hello")))
        }));
    let call = |tenant| service.clone().oneshot(request(tenant));

    let first = call(Some("acme")).await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(first.body(), &Body::from("hello"));
    assert_eq!(
        first.headers()["ratelimit-policy"],
        r#""api_calls@1";q=2;w=1, "api_calls@60";q=3;w=60"#
    );
    // One of 2/s taken: back in 0.5 s; one of 3/min: back in 20 s.
    assert_eq!(
        first.headers()["ratelimit"],
        r#""api_calls@1";r=1;t=1, "api_calls@60";r=2;t=20"#
    );
    assert!(!first.headers().contains_key("retry-after"));

    assert_eq!(call(Some("acme")).await.unwrap().status(), 200);
    let denied = call(Some("acme")).await.unwrap();
    assert_eq!(denied.status(), 429);
    assert_eq!(denied.headers()["retry-after"], "1");
    assert_eq!(
        denied.headers()["ratelimit"],
        r#""api_calls@1";r=0;t=1, "api_calls@60";r=1;t=20"#
    );
    assert_eq!(denied.headers()["content-type"], "application/json");
    let body: Value = match denied.body() {
        Body::Text(text) => serde_json::from_str(text).unwrap(),
        other => panic!("expected a text body, got {other:?}"),
    };
    assert_eq!(body["code"], "RATE_LIMIT_EXCEEDED");
    assert_eq!(body["details"]["retryAfter"], 1);

    // A request the classifier does not count passes untouched.
    let uncounted = call(None).await.unwrap();
    assert_eq!(uncounted.status(), 200);
    assert!(!uncounted.headers().contains_key("ratelimit"));
}
