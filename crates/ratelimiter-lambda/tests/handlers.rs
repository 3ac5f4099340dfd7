//! The handlers, called with realistic API Gateway WebSocket events.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use aws_lambda_events::encodings::Body;
use lambda_runtime::{Context, LambdaEvent};
use ratelimiter::{Builder, Config, FakeClock, Kind, MemoryStore, PolicyId, RateLimitService};
use ratelimiter_lambda::connect::{ConnectHandler, ConnectHook, Role};
use ratelimiter_lambda::disconnect::{DisconnectHandler, DisconnectHook};
use ratelimiter_lambda::heartbeat::HeartbeatHandler;
use ratelimiter_lambda::layer::{RateLimitLayer, Refusal, Subject};
use ratelimiter_lambda::management::{ConnectionSender, SendError};
use ratelimiter_lambda::message::{MessageHandler, MessageHook};
use ratelimiter_lambda::soft::{ConnectReject, FollowUp, Scheduled, SoftReject};
use ratelimiter_testing::{Capturing, Format, Logs};
use serde_json::{Value, json};
use tower::{ServiceBuilder, ServiceExt, service_fn};

type Limiter = Arc<RateLimitService<MemoryStore, FakeClock>>;

/// A limiter configured by the variables `env`, on a fake clock.
fn limiter(env: &'static [(&'static str, &'static str)]) -> Limiter {
    let config = Config::from_lookup(|var| {
        env.iter()
            .find(|(name, _)| *name == var)
            .map(|(_, value)| (*value).to_owned())
    })
    .unwrap();
    Arc::new(
        Builder::from_config(config)
            .clock(FakeClock::at_secs(1_700_000_000))
            .in_memory(),
    )
}

/// A `$connect` event as API Gateway sends it, with the oddities real events
/// have: `messageId: null`, an authorizer with numeric fields, `httpMethod`.
fn connect_event(ip: Option<&str>, user: Option<Value>) -> Value {
    let mut authorizer = json!({"principalId": "me", "integrationLatency": 12});
    if let Some(user) = user {
        authorizer["userId"] = user;
    }
    let mut identity = json!({"userAgent": "test", "sourceIp": ip});
    if ip.is_none() {
        identity.as_object_mut().unwrap().remove("sourceIp");
    }
    json!({
        "headers": {"Host": "abc123.execute-api.us-east-1.amazonaws.com", "X-Forwarded-For": "6.6.6.6", "Sec-WebSocket-Version": "13"},
        "multiValueHeaders": {"X-Forwarded-For": ["6.6.6.6"]},
        "isBase64Encoded": false,
        "httpMethod": "GET",
        "requestContext": {
            "routeKey": "$connect",
            "eventType": "CONNECT",
            "extendedRequestId": "abc=",
            "requestTime": "09/Nov/2023:03:22:03 +0000",
            "messageDirection": "IN",
            "stage": "prod",
            "connectedAt": 1_699_500_123_456i64,
            "requestTimeEpoch": 1_699_500_123_456i64,
            "identity": identity,
            "requestId": "req-1",
            "domainName": "abc123.execute-api.us-east-1.amazonaws.com",
            "connectionId": "L0SM9cOFvHcCIhw=",
            "apiId": "abc123",
            "messageId": null,
            "authorizer": authorizer
        }
    })
}

fn heartbeat_event(connection: &str, body: &str) -> Value {
    json!({
        "isBase64Encoded": false,
        "body": body,
        "requestContext": {
            "routeKey": "heartbeat",
            "messageId": "msg-1",
            "eventType": "MESSAGE",
            "extendedRequestId": "def=",
            "requestTime": "09/Nov/2023:03:22:04 +0000",
            "messageDirection": "IN",
            "stage": "prod",
            "connectedAt": 1_699_500_123_456i64,
            "requestTimeEpoch": 1_699_500_124_000i64,
            "identity": {"sourceIp": "203.0.113.1"},
            "requestId": "req-2",
            "domainName": "abc123.execute-api.us-east-1.amazonaws.com",
            "connectionId": connection,
            "apiId": "abc123"
        }
    })
}

fn invoke(payload: Value) -> LambdaEvent<Value> {
    LambdaEvent::new(payload, Context::default())
}

fn body(response: &ApiGatewayProxyResponse) -> Value {
    match &response.body {
        Some(Body::Text(text)) => serde_json::from_str(text).unwrap(),
        other => panic!("expected a JSON text body, got {other:?}"),
    }
}

fn assert_rate_limited(response: &ApiGatewayProxyResponse, retry_after: u64) {
    assert_eq!(response.status_code, 429, "{response:?}");
    assert_eq!(
        response.headers["retry-after"],
        retry_after.to_string().as_str()
    );
    let body = body(response);
    assert_eq!(body["type"], "error");
    assert_eq!(body["code"], "RATE_LIMIT_EXCEEDED");
    assert_eq!(
        body["message"],
        format!("Rate limit exceeded. Retry after {retry_after} seconds.")
    );
    // The seed's body exactly: the numbers are in the standard fields.
    assert_eq!(body["details"], json!({"retryAfter": retry_after}));
    assert!(body["timestamp"].as_u64().unwrap() > 1_600_000_000_000);
    let state = response.headers["ratelimit"].to_str().unwrap();
    assert!(
        state.ends_with(&format!(";t={retry_after}")),
        "RateLimit: {state}"
    );
    assert!(response.headers.contains_key("ratelimit-policy"));
}

#[tokio::test]
async fn the_eleventh_listener_from_one_ip_is_refused() {
    let handler = ConnectHandler::new(limiter(&[]));
    for i in 0..10 {
        let response = handler
            .handle(invoke(connect_event(Some("198.51.100.1"), None)))
            .await
            .unwrap();
        assert_eq!(response.status_code, 200, "listener {}", i + 1);
    }
    let response = handler
        .handle(invoke(connect_event(Some("198.51.100.1"), None)))
        .await
        .unwrap();
    assert_rate_limited(&response, 6);
    assert_eq!(
        response.headers["ratelimit-policy"],
        r#""listener_join";q=10;w=60"#
    );
    assert_eq!(response.headers["ratelimit"], r#""listener_join";r=0;t=6"#);
    // Another IP is not affected.
    let response = handler
        .handle(invoke(connect_event(Some("198.51.100.2"), None)))
        .await
        .unwrap();
    assert_eq!(response.status_code, 200);
}

#[tokio::test]
async fn speakers_count_against_sessions_and_everyone_against_connection_attempts() {
    let handler = ConnectHandler::new(limiter(&[("RATE_LIMIT_SESSIONS_PER_HOUR", "2")]));
    let speaker = || connect_event(Some("192.0.2.1"), Some(json!("user-1")));
    assert_eq!(
        handler.handle(invoke(speaker())).await.unwrap().status_code,
        200
    );
    assert_eq!(
        handler.handle(invoke(speaker())).await.unwrap().status_code,
        200
    );
    assert_rate_limited(&handler.handle(invoke(speaker())).await.unwrap(), 1800);
    // Sessions are per user, whatever the IP.
    let elsewhere = connect_event(Some("192.0.2.99"), Some(json!("user-1")));
    assert_rate_limited(&handler.handle(invoke(elsewhere)).await.unwrap(), 1800);
    // A numeric user id from the authorizer counts as that user.
    let numeric = || connect_event(Some("192.0.2.50"), Some(json!(42)));
    assert_eq!(
        handler.handle(invoke(numeric())).await.unwrap().status_code,
        200
    );
    assert_eq!(
        handler.handle(invoke(numeric())).await.unwrap().status_code,
        200
    );
    assert_eq!(
        handler.handle(invoke(numeric())).await.unwrap().status_code,
        429
    );

    // Connection attempts: the 21st from one IP is refused, even by new speakers.
    let handler = ConnectHandler::new(limiter(&[]));
    for i in 0..20 {
        let event = connect_event(Some("203.0.113.5"), Some(json!(format!("speaker-{i}"))));
        assert_eq!(
            handler.handle(invoke(event)).await.unwrap().status_code,
            200
        );
    }
    let event = connect_event(Some("203.0.113.5"), Some(json!("speaker-new")));
    assert_rate_limited(&handler.handle(invoke(event)).await.unwrap(), 3);
}

#[tokio::test]
async fn the_source_ip_comes_from_the_request_context_only() {
    let handler = ConnectHandler::new(limiter(&[]));
    // Different X-Forwarded-For headers do not make different clients.
    for i in 0..10 {
        let mut event = connect_event(Some("198.51.100.7"), None);
        event["headers"]["X-Forwarded-For"] = json!(format!("10.0.0.{i}"));
        assert_eq!(
            handler.handle(invoke(event)).await.unwrap().status_code,
            200
        );
    }
    assert_eq!(
        handler
            .handle(invoke(connect_event(Some("198.51.100.7"), None)))
            .await
            .unwrap()
            .status_code,
        429
    );
    // No source IP at all: counted as "unknown".
    for _ in 0..10 {
        assert_eq!(
            handler
                .handle(invoke(connect_event(None, None)))
                .await
                .unwrap()
                .status_code,
            200
        );
    }
    assert_eq!(
        handler
            .handle(invoke(connect_event(None, None)))
            .await
            .unwrap()
            .status_code,
        429
    );
    let status = handler
        .limiter()
        .get_rate_limit_status(PolicyId::LISTENER_JOIN, &Kind::IP, "unknown")
        .await
        .unwrap();
    assert_eq!(status.count, 10);
}

#[derive(Clone, Default)]
struct Gatekeeper {
    calls: Arc<AtomicU32>,
}

impl ConnectHook for Gatekeeper {
    async fn on_connect(
        &self,
        _: &ApiGatewayWebsocketProxyRequest,
        role: Role<'_>,
    ) -> Result<Option<ApiGatewayProxyResponse>, lambda_runtime::Error> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        match role {
            Role::Speaker { user_id: "banned" } => Ok(Some(
                ratelimiter_lambda::response::error_response(403, "FORBIDDEN", "No.", 0),
            )),
            Role::Speaker { user_id: "broken" } => Err("database password is hunter2".into()),
            _ => Ok(None),
        }
    }
}

#[tokio::test]
async fn the_hook_runs_after_the_limits_and_its_errors_do_not_leak() {
    let hook = Gatekeeper {
        calls: Arc::default(),
    };
    let handler = ConnectHandler::new(limiter(&[])).with_hook(hook);
    let banned = handler
        .handle(invoke(connect_event(
            Some("192.0.2.1"),
            Some(json!("banned")),
        )))
        .await
        .unwrap();
    assert_eq!(banned.status_code, 403);
    let broken = handler
        .handle(invoke(connect_event(
            Some("192.0.2.1"),
            Some(json!("broken")),
        )))
        .await
        .unwrap();
    assert_eq!(broken.status_code, 500);
    let body = body(&broken);
    assert_eq!(body["code"], "INTERNAL_ERROR");
    assert_eq!(body["message"], "Internal server error");
    assert!(!format!("{broken:?}").contains("hunter2"));
    // A refused connection never reaches the hook.
    let calls = Arc::new(AtomicU32::new(0));
    let handler = ConnectHandler::new(limiter(&[])).with_hook(Gatekeeper {
        calls: calls.clone(),
    });
    for _ in 0..11 {
        handler
            .handle(invoke(connect_event(Some("192.0.2.2"), None)))
            .await
            .unwrap();
    }
    assert_eq!(calls.load(Ordering::SeqCst), 10);
}

#[tokio::test]
async fn malformed_connect_events_get_a_clear_400() {
    let handler = ConnectHandler::new(limiter(&[]));
    for (payload, expected) in [
        (json!({"headers": {}}), "no requestContext"),
        (json!([1, 2]), "not a JSON object"),
        (
            json!({"requestContext": {"routeKey": "$connect"}}),
            "connectedAt",
        ),
    ] {
        let response = handler.handle(invoke(payload)).await.unwrap();
        assert_eq!(response.status_code, 400);
        let body = body(&response);
        assert_eq!(body["code"], "BAD_REQUEST");
        assert!(
            body["message"].as_str().unwrap().contains(expected),
            "{body}"
        );
    }
}

/// Records what the handler posts, as the Management API would receive it.
#[derive(Default)]
struct Recorder {
    posts: Mutex<Vec<(String, String, Value)>>,
    answer: Mutex<Option<SendError>>,
    /// The connections `GetConnection` says are gone, and those it was
    /// asked about.
    gone: Mutex<Vec<String>>,
    asked: Mutex<Vec<String>>,
    /// The connections `DeleteConnection` closed.
    deleted: Mutex<Vec<String>>,
}

impl ConnectionSender for Recorder {
    async fn post(
        &self,
        endpoint: &str,
        connection_id: &str,
        data: Vec<u8>,
    ) -> Result<(), SendError> {
        let value = serde_json::from_slice(&data).unwrap();
        self.posts
            .lock()
            .unwrap()
            .push((endpoint.to_owned(), connection_id.to_owned(), value));
        match self.answer.lock().unwrap().clone() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    async fn gone(&self, _: &str, connection_id: &str) -> Result<bool, SendError> {
        self.asked.lock().unwrap().push(connection_id.to_owned());
        Ok(self.gone.lock().unwrap().iter().any(|c| c == connection_id))
    }

    async fn delete(&self, _: &str, connection_id: &str) -> Result<(), SendError> {
        self.deleted.lock().unwrap().push(connection_id.to_owned());
        Ok(())
    }
}

#[tokio::test]
async fn heartbeats_are_acked_then_limited_with_the_error_on_the_connection() {
    let sender = Arc::new(Recorder::default());
    let handler = HeartbeatHandler::new(limiter(&[]), sender.clone());
    let beat = || invoke(heartbeat_event("conn-1", r#"{"action":"heartbeat"}"#));
    for _ in 0..2 {
        assert_eq!(handler.handle(beat()).await.unwrap().status_code, 200);
    }
    let limited = handler.handle(beat()).await.unwrap();
    assert_rate_limited(&limited, 30);
    let posts = sender.posts.lock().unwrap().clone();
    assert_eq!(posts.len(), 3);
    for (endpoint, connection, _) in &posts {
        assert_eq!(
            endpoint,
            "https://abc123.execute-api.us-east-1.amazonaws.com/prod"
        );
        assert_eq!(connection, "conn-1");
    }
    assert_eq!(posts[0].2["type"], "heartbeat_ack");
    assert!(posts[0].2["timestamp"].as_u64().unwrap() > 1_600_000_000_000);
    // The client gets the same error body, with the numbers of the
    // RateLimit fields in its details, since no header reaches it.
    let mut expected = body(&limited);
    expected["details"]["policy"] = json!("heartbeat");
    expected["details"]["limits"] =
        json!([{"name": "heartbeat", "quota": 2, "window": 60, "remaining": 0, "reset": 30}]);
    assert_eq!(posts[2].2, expected);
}

#[tokio::test]
async fn a_gone_connection_is_not_an_error_but_a_failed_post_is() {
    let sender = Arc::new(Recorder::default());
    *sender.answer.lock().unwrap() = Some(SendError::Gone);
    let handler = HeartbeatHandler::new(limiter(&[]), sender.clone());
    let beat = || invoke(heartbeat_event("conn-2", r#"{"action":"heartbeat"}"#));
    assert_eq!(handler.handle(beat()).await.unwrap().status_code, 200);
    *sender.answer.lock().unwrap() = Some(SendError::Failed("boom".into()));
    let response = handler.handle(beat()).await.unwrap();
    assert_eq!(response.status_code, 500);
    assert_eq!(body(&response)["code"], "INTERNAL_ERROR");
}

#[tokio::test]
async fn malformed_heartbeats_get_a_clear_400() {
    let sender = Arc::new(Recorder::default());
    let handler = HeartbeatHandler::new(limiter(&[]), sender.clone());
    let mut no_connection = heartbeat_event("x", r#"{"action":"heartbeat"}"#);
    no_connection["requestContext"]
        .as_object_mut()
        .unwrap()
        .remove("connectionId");
    let mut no_domain = heartbeat_event("x", r#"{"action":"heartbeat"}"#);
    no_domain["requestContext"]
        .as_object_mut()
        .unwrap()
        .remove("domainName");
    for (payload, expected) in [
        (heartbeat_event("x", "heartbeat please"), "not JSON"),
        (no_connection, "connectionId"),
        (no_domain, "domainName"),
        (json!("hello"), "not a JSON object"),
    ] {
        let response = handler.handle(invoke(payload)).await.unwrap();
        assert_eq!(response.status_code, 400);
        assert!(
            body(&response)["message"]
                .as_str()
                .unwrap()
                .contains(expected),
            "{:?}",
            response.body
        );
    }
    assert!(
        sender.posts.lock().unwrap().is_empty(),
        "nothing is sent for a malformed event"
    );
}

#[tokio::test]
async fn the_layer_limits_any_handler_without_calling_it_when_denied() {
    let calls = Arc::new(AtomicU32::new(0));
    let counted = calls.clone();
    let limiter = limiter(&[("RATE_LIMIT_LISTENER_JOINS_PER_MIN", "3")]);
    let service = ServiceBuilder::new()
        .layer(RateLimitLayer::new(
            limiter,
            |event: &LambdaEvent<Value>| {
                event.payload["ip"]
                    .as_str()
                    .map(|ip| Subject::new(PolicyId::LISTENER_JOIN, ip))
            },
        ))
        .service(service_fn(move |_event: LambdaEvent<Value>| {
            counted.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, lambda_runtime::Error>(ratelimiter_lambda::ok_response()) }
        }));
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let response = service
            .clone()
            .oneshot(invoke(json!({"ip": "192.0.2.8"})))
            .await
            .unwrap();
        statuses.push(response.status_code);
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    // Requests the classifier skips are not counted.
    for _ in 0..5 {
        let response = service.clone().oneshot(invoke(json!({}))).await.unwrap();
        assert_eq!(response.status_code, 200);
    }
}

/// The handlers' log lines, as the functions write them (JSON), captured
/// from the test's thread.
fn capture_logs() -> (Logs, Capturing) {
    Logs::capture(Format::Json)
}

/// (message, operation, key_type, decision) of each decision line.
fn decisions(logs: &Logs) -> Vec<(String, String, String, String)> {
    logs.text()
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap()["fields"].clone())
        .filter(|fields| !fields["decision"].is_null())
        .map(|f| {
            let field = |name: &str| f[name].as_str().unwrap().to_owned();
            (
                field("message"),
                field("operation"),
                field("key_type"),
                field("decision"),
            )
        })
        .collect()
}

fn line(
    message: &str,
    operation: &str,
    key_type: &str,
    decision: &str,
) -> (String, String, String, String) {
    (
        message.into(),
        operation.into(),
        key_type.into(),
        decision.into(),
    )
}

#[tokio::test]
async fn connect_logs_one_line_per_decision_and_never_the_ip_or_user() {
    let handler = ConnectHandler::new(limiter(&[("RATE_LIMIT_SESSIONS_PER_HOUR", "1")]));
    let (logs, _guard) = capture_logs();
    let speaker = || {
        invoke(connect_event(
            Some("203.0.113.99"),
            Some(json!("user-secret-42")),
        ))
    };
    assert_eq!(handler.handle(speaker()).await.unwrap().status_code, 200);
    assert_eq!(handler.handle(speaker()).await.unwrap().status_code, 429);
    assert_eq!(
        decisions(&logs),
        [
            line("rate limit checked", "connection_attempt", "ip", "allowed"),
            line("rate limit checked", "session_create", "user", "allowed"),
            line("rate limit checked", "connection_attempt", "ip", "allowed"),
            line("rate limit exceeded", "session_create", "user", "denied"),
        ]
    );
    let text = logs.text();
    assert!(!text.contains("203.0.113.99"), "{text}");
    assert!(!text.contains("user-secret-42"), "{text}");
}

#[tokio::test]
async fn heartbeat_logs_its_decisions_like_connect_and_never_the_connection_id() {
    let shadowed = limiter(&[("RATE_LIMIT_SHADOW_MODE", "true")]);
    let sender = Arc::new(Recorder::default());
    let (logs, _guard) = capture_logs();
    let beat = || invoke(heartbeat_event("conn-secret=", r#"{"action":"heartbeat"}"#));
    let handler = HeartbeatHandler::new(limiter(&[]), sender.clone());
    for expected in [200, 200, 429] {
        assert_eq!(handler.handle(beat()).await.unwrap().status_code, expected);
    }
    let shadow = HeartbeatHandler::new(shadowed, sender);
    for _ in 0..3 {
        assert_eq!(shadow.handle(beat()).await.unwrap().status_code, 200);
    }
    let checked = |decision| line("rate limit checked", "heartbeat", "connection", decision);
    assert_eq!(
        decisions(&logs),
        [
            checked("allowed"),
            checked("allowed"),
            line("rate limit exceeded", "heartbeat", "connection", "denied"),
            checked("allowed"),
            checked("allowed"),
            checked("would_deny"),
        ]
    );
    let text = logs.text();
    assert!(!text.contains("conn-secret"), "{text}");
}

#[tokio::test]
async fn a_denial_line_says_how_it_was_decided_as_an_allowed_one_does() {
    // Behind the deny cache, as on a shared store: the second allowed call
    // tells the TAT, so the denials after it make no call.
    let limiter = Arc::new(
        Builder::new()
            .clock(FakeClock::at_secs(1_700_000_000))
            .build(MemoryStore::new()),
    );
    let handler = HeartbeatHandler::new(limiter, Arc::new(Recorder::default()));
    let (logs, _guard) = capture_logs();
    for expected in [200, 200, 429, 429] {
        let beat = invoke(heartbeat_event("conn-1=", r#"{"action":"heartbeat"}"#));
        assert_eq!(handler.handle(beat).await.unwrap().status_code, expected);
    }
    let fields: Vec<Value> = logs
        .text()
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap()["fields"].clone())
        .filter(|fields| !fields["decision"].is_null())
        .collect();
    let how = |f: &Value| {
        (
            f["decision"].clone(),
            f["remaining"].clone(),
            f["degraded"].clone(),
            f["cached"].clone(),
            f["calls"].clone(),
        )
    };
    assert_eq!(
        fields.iter().map(how).collect::<Vec<_>>(),
        [
            (
                json!("allowed"),
                json!(1),
                json!(false),
                json!(false),
                json!(1)
            ),
            (
                json!("allowed"),
                json!(0),
                json!(false),
                json!(false),
                json!(1)
            ),
            (
                json!("denied"),
                json!(0),
                json!(false),
                json!(true),
                json!(0)
            ),
            (
                json!("denied"),
                json!(0),
                json!(false),
                json!(true),
                json!(0)
            ),
        ]
    );
    assert_eq!(fields[2]["retry_after"], 30);
}

#[tokio::test]
async fn the_layer_answers_any_response_type_through_a_responder() {
    #[derive(Debug, PartialEq)]
    enum Reply {
        Done,
        SlowDown(u64),
    }
    let limiter = limiter(&[("RATE_LIMIT_HEARTBEATS_PER_MIN", "1")]);
    let service = ServiceBuilder::new()
        .layer(
            RateLimitLayer::new(limiter, |event: &LambdaEvent<Value>| {
                Some(Subject::new(
                    PolicyId::HEARTBEAT,
                    event.payload["c"].as_str()?,
                ))
            })
            .with_responder(|refusal: &Refusal| match refusal {
                Refusal::Limited { denied, .. } => Reply::SlowDown(denied.retry_after_secs()),
                Refusal::Failed { .. } => Reply::SlowDown(0),
            }),
        )
        .service(service_fn(|_event: LambdaEvent<Value>| async {
            Ok::<_, lambda_runtime::Error>(Reply::Done)
        }));
    let beat = || service.clone().oneshot(invoke(json!({"c": "x"})));
    assert_eq!(beat().await.unwrap(), Reply::Done);
    assert_eq!(beat().await.unwrap(), Reply::SlowDown(60));
}

#[tokio::test]
async fn the_tier_comes_from_the_authorizer_context_field() {
    let config = Config::from_file_text(
        "limits.toml",
        "[policy.session_create]\nlimits = [\"1/h\"]\n[policy.session_create.tier.pro]\nlimits = [\"3/h\"]\n",
        |var| (var == "RATE_LIMIT_TIER_FIELD").then(|| "plan".to_owned()),
    )
    .unwrap();
    let limiter: Limiter = Arc::new(
        Builder::from_config(config)
            .clock(FakeClock::at_secs(1_700_000_000))
            .in_memory(),
    );
    let handler = ConnectHandler::new(limiter);
    let speaker = |user: &str, plan: Option<&str>| {
        let mut event = connect_event(Some("192.0.2.60"), Some(json!(user)));
        if let Some(plan) = plan {
            event["requestContext"]["authorizer"]["plan"] = json!(plan);
        }
        invoke(event)
    };
    for expected in [200, 200, 200, 429] {
        let response = handler
            .handle(speaker("paying", Some("pro")))
            .await
            .unwrap();
        assert_eq!(response.status_code, expected);
    }
    for expected in [200, 429] {
        let response = handler.handle(speaker("free", None)).await.unwrap();
        assert_eq!(response.status_code, expected);
    }
    // An unknown tier gets the default limits.
    for expected in [200, 429] {
        let response = handler.handle(speaker("odd", Some("gold"))).await.unwrap();
        assert_eq!(response.status_code, expected);
    }
}

#[tokio::test]
async fn a_refused_attempt_takes_nothing_from_the_speakers_sessions() {
    let handler = ConnectHandler::new(limiter(&[("RATE_LIMIT_CONNECTION_ATTEMPTS_PER_MIN", "1")]));
    let speaker = || invoke(connect_event(Some("192.0.2.61"), Some(json!("alice"))));
    assert_eq!(handler.handle(speaker()).await.unwrap().status_code, 200);
    assert_rate_limited(&handler.handle(speaker()).await.unwrap(), 60);
    let sessions = handler
        .limiter()
        .get_rate_limit_status(PolicyId::SESSION_CREATE, &Kind::USER, "alice")
        .await
        .unwrap();
    assert_eq!(sessions.count, 1);
}

#[tokio::test]
async fn a_hostile_field_is_never_echoed_whole() {
    let handler = ConnectHandler::new(limiter(&[]));
    let (logs, _guard) = capture_logs();
    let hostile = "A".repeat(100_000);
    let mut event = connect_event(Some("192.0.2.70"), None);
    // A string where API Gateway sends a number: the deserializer quotes it.
    event["requestContext"]["connectedAt"] = json!(hostile);
    let response = handler.handle(invoke(event)).await.unwrap();
    assert_eq!(response.status_code, 400);
    let message = body(&response)["message"].as_str().unwrap().to_owned();
    assert!(message.contains("does not fit"), "{message}");
    assert!(message.contains("(cut)"), "{message}");
    assert!(message.len() < 400, "{} bytes", message.len());
    let text = logs.text();
    assert!(
        text.contains("rejected a malformed $connect event"),
        "{text}"
    );
    assert!(text.len() < 1000, "the log line is {} bytes", text.len());
    // Heartbeats too: a body that is not JSON, 100 KB of it.
    let sender = Arc::new(Recorder::default());
    let heartbeat = HeartbeatHandler::new(limiter(&[]), sender);
    let response = heartbeat
        .handle(invoke(heartbeat_event(
            "c",
            &format!("{{\"action\": {hostile}"),
        )))
        .await
        .unwrap();
    assert_eq!(response.status_code, 400);
    assert!(body(&response)["message"].as_str().unwrap().len() < 400);
}

/// A Management API stand-in that answers every post with `status`, and
/// counts the posts.
async fn management_answering(status: u16) -> (String, Arc<AtomicU32>) {
    use ratelimiter_testing::faults::read_message;
    use tokio::io::{AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let posts = Arc::new(AtomicU32::new(0));
    let counted = posts.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                let mut socket = BufReader::new(socket);
                // Every post is answered alike: what it says does not matter.
                while read_message(&mut socket).await.is_some() {
                    counted.fetch_add(1, Ordering::SeqCst);
                    let response = format!(
                        "HTTP/1.1 {status} Oops\r\ncontent-type: application/json\r\nx-amzn-errortype: InternalServerError\r\ncontent-length: 2\r\n\r\n{{}}"
                    );
                    socket
                        .get_mut()
                        .write_all(response.as_bytes())
                        .await
                        .unwrap();
                }
            });
        }
    });
    (format!("http://{address}/prod"), posts)
}

#[tokio::test]
async fn a_post_that_fails_with_a_5xx_is_never_sent_again() {
    let (endpoint, posts) = management_answering(500).await;
    let sender = Arc::new(ratelimiter_lambda::management::ManagementApi::local(
        endpoint,
    ));
    let handler = HeartbeatHandler::new(limiter(&[]), sender);
    let beat = || invoke(heartbeat_event("conn-5xx", r#"{"action":"heartbeat"}"#));
    for (expected, posted) in [(500, 1), (500, 2), (429, 3)] {
        let response = handler.handle(beat()).await.unwrap();
        assert_eq!(response.status_code, expected);
        assert_eq!(
            posts.load(Ordering::SeqCst),
            posted,
            "one post per heartbeat"
        );
    }
}

/// A limiter with a `sendMessage` route (a count and a byte quota per
/// connection, a count per user) and `$default` (a count per connection).
fn routed_limiter() -> Limiter {
    let config = Config::from_file_text(
        "limits.toml",
        "[policy.messages]\nkey = \"connection\"\nlimits = [\"3/s\"]\n\
         [policy.message_bytes]\nkey = \"connection\"\nunit = \"bytes\"\nlimits = [\"100/min\"]\n\
         [policy.user_messages]\nkey = \"user\"\nlimits = [\"1/min\"]\n\
         [policy.other_messages]\nkey = \"connection\"\nlimits = [\"1/min\"]\n\
         [route.sendMessage]\npolicies = [\"messages\", \"message_bytes\", \"user_messages\"]\n\
         [route.\"$default\"]\npolicies = [\"other_messages\"]\n",
        |_| None,
    )
    .unwrap();
    Arc::new(
        Builder::from_config(config)
            .clock(FakeClock::at_secs(1_700_000_000))
            .in_memory(),
    )
}

/// A message on `route` from `connection`, by `user` if given.
fn message_event(route: &str, connection: &str, user: Option<&str>, body: &str) -> Value {
    let mut event = heartbeat_event(connection, body);
    event["requestContext"]["routeKey"] = json!(route);
    if let Some(user) = user {
        event["requestContext"]["authorizer"] = json!({"userId": user});
    }
    event
}

/// Counts the messages that reach the application.
#[derive(Clone, Default)]
struct Backend(Arc<AtomicU32>);

impl MessageHook for Backend {
    async fn on_message(
        &self,
        _: &ApiGatewayWebsocketProxyRequest,
    ) -> Result<ApiGatewayProxyResponse, lambda_runtime::Error> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(ratelimiter_lambda::ok_response())
    }
}

#[tokio::test]
async fn a_routes_messages_are_counted_and_sized_and_a_denied_one_never_reaches_the_app() {
    let sender = Arc::new(Recorder::default());
    let backend = Backend::default();
    let handler = MessageHandler::new(routed_limiter(), sender.clone()).with_hook(backend.clone());
    let send = |body: &str| invoke(message_event("sendMessage", "conn-1", None, body));
    let forty = format!(r#"{{"action":"sendMessage","text":"{}"}}"#, "x".repeat(6));
    assert_eq!(forty.len(), 40);
    for _ in 0..2 {
        assert_eq!(handler.handle(send(&forty)).await.unwrap().status_code, 200);
    }
    assert_eq!(backend.0.load(Ordering::SeqCst), 2);
    assert!(
        sender.posts.lock().unwrap().is_empty(),
        "nothing posted when allowed"
    );
    // 80 of 100 bytes used: another 40 is refused by the byte quota until
    // 20 more come back, at 100/min.
    let refused = handler.handle(send(&forty)).await.unwrap();
    assert_rate_limited(&refused, 12);
    assert_eq!(backend.0.load(Ordering::SeqCst), 2, "never reached the app");
    let posts = sender.posts.lock().unwrap().clone();
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0].1, "conn-1");
    assert_eq!(posts[0].2["details"]["retryAfter"], 12);
    assert_eq!(posts[0].2["details"]["policy"], "message_bytes");
    assert_eq!(
        posts[0].2["details"]["limits"],
        json!([{"name": "message_bytes", "quota": 100, "window": 60, "unit": "bytes", "remaining": 20, "reset": 12}])
    );
    // A small one still fits, and the refused one took no message token
    // (3/s: this is the third).
    assert_eq!(handler.handle(send("{}")).await.unwrap().status_code, 200);
    assert_eq!(handler.handle(send("{}")).await.unwrap().status_code, 429);
}

#[tokio::test]
async fn a_message_larger_than_its_byte_quota_is_refused_without_a_call() {
    let sender = Arc::new(Recorder::default());
    let handler = MessageHandler::new(routed_limiter(), sender.clone());
    let big = format!(
        r#"{{"action":"sendMessage","text":"{}"}}"#,
        "x".repeat(128 * 1024)
    );
    let response = handler
        .handle(invoke(message_event("sendMessage", "conn-2", None, &big)))
        .await
        .unwrap();
    assert_eq!(response.status_code, 413);
    let body = body(&response);
    assert_eq!(body["code"], "MESSAGE_TOO_LARGE");
    assert_eq!(
        body["message"],
        format!(
            "Message of {} bytes exceeds the 100 bytes message_bytes allows at once.",
            big.len()
        )
    );
    let posts = sender.posts.lock().unwrap().clone();
    assert_eq!(posts[0].2["code"], "MESSAGE_TOO_LARGE");
}

#[tokio::test]
async fn a_user_policy_counts_speakers_only_and_default_routes_by_action() {
    let sender = Arc::new(Recorder::default());
    let backend = Backend::default();
    let handler = MessageHandler::new(routed_limiter(), sender.clone()).with_hook(backend.clone());
    let small = r#"{"action":"sendMessage"}"#;
    // alice's 1/min holds across her connections.
    let alice = |connection| {
        invoke(message_event(
            "sendMessage",
            connection,
            Some("alice"),
            small,
        ))
    };
    assert_eq!(handler.handle(alice("a")).await.unwrap().status_code, 200);
    assert_eq!(handler.handle(alice("b")).await.unwrap().status_code, 429);
    // A listener has no user: only the per-connection policies count it.
    let listener = || invoke(message_event("sendMessage", "c", None, small));
    assert_eq!(handler.handle(listener()).await.unwrap().status_code, 200);
    assert_eq!(handler.handle(listener()).await.unwrap().status_code, 200);
    // Through $default, a configured action keeps its route's policies...
    let via_default = |connection, body| invoke(message_event("$default", connection, None, body));
    for _ in 0..3 {
        let response = handler.handle(via_default("d", small)).await.unwrap();
        assert_eq!(response.status_code, 200);
    }
    assert_eq!(
        handler
            .handle(via_default("d", small))
            .await
            .unwrap()
            .status_code,
        429
    );
    // ...and anything else gets $default's.
    let other = r#"{"action":"unknown"}"#;
    assert_eq!(
        handler
            .handle(via_default("e", other))
            .await
            .unwrap()
            .status_code,
        200
    );
    assert_eq!(
        handler
            .handle(via_default("e", "not json"))
            .await
            .unwrap()
            .status_code,
        429
    );
    assert_eq!(backend.0.load(Ordering::SeqCst), 7);
}

#[tokio::test]
async fn a_failing_hook_is_answered_with_the_seeds_500() {
    struct Failing;
    impl MessageHook for Failing {
        async fn on_message(
            &self,
            _: &ApiGatewayWebsocketProxyRequest,
        ) -> Result<ApiGatewayProxyResponse, lambda_runtime::Error> {
            Err("the backend is away".into())
        }
    }
    let handler =
        MessageHandler::new(routed_limiter(), Arc::new(Recorder::default())).with_hook(Failing);
    let (logs, _capturing) = capture_logs();
    let event = invoke(message_event("sendMessage", "conn-f", None, "{}"));
    let response = handler.handle(event).await.unwrap();
    assert_eq!(response.status_code, 500);
    assert_eq!(body(&response)["code"], "INTERNAL_ERROR");
    let logged = logs.text();
    assert!(logged.contains("the message hook failed"), "{logged}");
    assert!(logged.contains("the backend is away"), "{logged}");
}

#[tokio::test]
async fn connect_checks_from_the_file_come_after_the_seeds_per_role() {
    let config = Config::from_file_text(
        "limits.toml",
        "[policy.connects_per_hour]\nkey = \"ip\"\nlimits = [\"3/h\"]\n\
         [policy.user_connects]\nkey = \"user\"\nlimits = [\"1/h\"]\n\
         [connect]\npolicies = [\"connects_per_hour\"]\nspeaker = [\"user_connects\"]\n",
        |_| None,
    )
    .unwrap();
    let limiter: Limiter = Arc::new(
        Builder::from_config(config)
            .clock(FakeClock::at_secs(1_700_000_000))
            .in_memory(),
    );
    let handler = ConnectHandler::new(limiter.clone());
    let connect =
        |ip: &str, user: Option<&str>| invoke(connect_event(Some(ip), user.map(|u| json!(u))));
    // bob's second session is refused by his own 1/h; the address's
    // attempts (seed's and hourly) still count it.
    assert_eq!(
        handler
            .handle(connect("192.0.2.70", Some("bob")))
            .await
            .unwrap()
            .status_code,
        200
    );
    let refused = handler
        .handle(connect("192.0.2.70", Some("bob")))
        .await
        .unwrap();
    assert_eq!(refused.status_code, 429);
    assert_eq!(
        refused.headers["ratelimit-policy"],
        r#""user_connects";q=1;w=3600"#
    );
    // A listener from the same address: its third connect this hour.
    assert_eq!(
        handler
            .handle(connect("192.0.2.70", None))
            .await
            .unwrap()
            .status_code,
        200
    );
    let refused = handler.handle(connect("192.0.2.70", None)).await.unwrap();
    assert_rate_limited(&refused, 1200);
    assert_eq!(
        refused.headers["ratelimit-policy"],
        r#""connects_per_hour";q=3;w=3600"#
    );
    let status = |policy| limiter.get_rate_limit_status(policy, &Kind::IP, "192.0.2.70");
    // The refused fourth attempt took nothing; the listener join counted once.
    assert_eq!(status(PolicyId::CONNECTION_ATTEMPT).await.unwrap().count, 3);
    assert_eq!(status(PolicyId::LISTENER_JOIN).await.unwrap().count, 1);
}

/// A limiter with a cap of two open connections per address, checked at
/// every `$connect`.
fn capped_limiter() -> Limiter {
    capped_limiter_on(&FakeClock::at_secs(1_700_000_000))
}

/// [`capped_limiter`], on `clock`.
fn capped_limiter_on(clock: &FakeClock) -> Limiter {
    let config = Config::from_file_text(
        "limits.toml",
        "[policy.open_per_ip]\nkey = \"ip\"\nconcurrent = 2\n\
         [connect]\npolicies = [\"open_per_ip\"]\n",
        |_| None,
    )
    .unwrap();
    Arc::new(
        Builder::from_config(config)
            .clock(clock.clone())
            .in_memory(),
    )
}

/// A cap of two open connections per address: the third is refused with
/// the cap's numbers, and `$disconnect` gives a seat back.
#[tokio::test]
async fn a_cap_refuses_the_third_connection_until_one_disconnects() {
    let limiter = capped_limiter();
    let (connect, disconnect) = (
        ConnectHandler::new(limiter.clone()),
        DisconnectHandler::new(limiter.clone()),
    );
    assert_eq!(
        disconnect.caps(),
        [limiter.policy_id("open_per_ip").unwrap()]
    );
    let event = |connection: &str, route: &str| {
        let mut event = connect_event(Some("192.0.2.80"), None);
        event["requestContext"]["connectionId"] = json!(connection);
        event["requestContext"]["connectedAt"] = json!(1_700_000_000_000i64);
        event["requestContext"]["routeKey"] = json!(route);
        invoke(event)
    };
    for connection in ["c1", "c2"] {
        let response = connect.handle(event(connection, "$connect")).await.unwrap();
        assert_eq!(response.status_code, 200, "{connection}");
    }
    let refused = connect.handle(event("c3", "$connect")).await.unwrap();
    assert_rate_limited(&refused, 30);
    assert_eq!(
        refused.headers["ratelimit-policy"],
        r#""open_per_ip";q=2;qu="concurrent-requests""#
    );
    assert_eq!(refused.headers["ratelimit"], r#""open_per_ip";r=0;t=30"#);
    let response = disconnect.handle(event("c1", "$disconnect")).await.unwrap();
    assert_eq!(response.status_code, 200);
    let response = connect.handle(event("c3", "$connect")).await.unwrap();
    assert_eq!(response.status_code, 200, "c1's seat was given back");
    // Without a start there is no seat to take: refused, never an
    // uncounted connection.
    let mut no_start = connect_event(Some("192.0.2.81"), None);
    no_start["requestContext"]["connectedAt"] = json!(0);
    let response = connect.handle(invoke(no_start.clone())).await.unwrap();
    assert_eq!(response.status_code, 500, "{response:?}");
    no_start["requestContext"]
        .as_object_mut()
        .unwrap()
        .remove("connectedAt");
    let response = connect.handle(invoke(no_start)).await.unwrap();
    assert_eq!(response.status_code, 400, "{response:?}");
}

/// A full cap whose holders' `$disconnect`s were lost: `$connect` asks API
/// Gateway about them, releases the gone ones' seats and admits the new
/// connection; one still open keeps its seat. A heartbeat whose post finds
/// its connection gone releases its seat at once.
#[tokio::test]
async fn a_full_cap_releases_the_seats_of_gone_connections() {
    let clock = FakeClock::at_secs(1_700_000_000);
    let limiter = capped_limiter_on(&clock);
    let sender = Arc::new(Recorder::default());
    let connect = ConnectHandler::new(limiter.clone()).with_sender(sender.clone());
    let event = |connection: &str| {
        let mut event = connect_event(Some("192.0.2.90"), None);
        event["requestContext"]["connectionId"] = json!(connection);
        event["requestContext"]["connectedAt"] = json!(1_700_000_000_000i64);
        event
    };
    for connection in ["c1", "c2"] {
        let response = connect.handle(invoke(event(connection))).await.unwrap();
        assert_eq!(response.status_code, 200, "{connection}");
    }
    // Both open: the third is refused after asking about both.
    let refused = connect.handle(invoke(event("c3"))).await.unwrap();
    assert_rate_limited(&refused, 30);
    assert_eq!(*sender.asked.lock().unwrap(), ["c1", "c2"]);
    // c1 went without a $disconnect, but it was found open a moment ago:
    // not asked about again for a minute.
    sender.gone.lock().unwrap().push("c1".to_owned());
    let refused = connect.handle(invoke(event("c3"))).await.unwrap();
    assert_rate_limited(&refused, 30);
    assert_eq!(sender.asked.lock().unwrap().len(), 2);
    // A minute on, c1 is asked about again, and its seat given to c3.
    clock.advance(std::time::Duration::from_secs(61));
    let admitted = connect.handle(invoke(event("c3"))).await.unwrap();
    assert_eq!(admitted.status_code, 200, "{admitted:?}");
    let seats = |limiter: &Limiter| {
        let cap = limiter.policy_id("open_per_ip").unwrap();
        let limiter = limiter.clone();
        async move {
            let mut ids: Vec<String> = limiter
                .seats((cap, "192.0.2.90"))
                .await
                .unwrap()
                .into_iter()
                .map(|s| s.id)
                .collect();
            ids.sort();
            ids
        }
    };
    assert_eq!(seats(&limiter).await, ["c2", "c3"]);
    // c2's heartbeat finds it gone (410): its seat goes at once.
    *sender.answer.lock().unwrap() = Some(SendError::Gone);
    let heartbeat = HeartbeatHandler::new(limiter.clone(), sender.clone());
    let mut beat = event("c2");
    beat["requestContext"]["routeKey"] = json!("heartbeat");
    beat["requestContext"]["eventType"] = json!("MESSAGE");
    beat["body"] = json!(r#"{"action":"heartbeat"}"#);
    let response = heartbeat.handle(invoke(beat)).await.unwrap();
    assert_eq!(response.status_code, 200);
    assert_eq!(seats(&limiter).await, ["c3"]);
}

/// The application's cleanup runs on `$disconnect`, once the seat is given
/// back; a failing hook is logged and the answer is still a 200.
#[tokio::test]
async fn the_disconnect_hook_runs_after_the_seats_are_given_back() {
    struct Cleanup {
        limiter: Limiter,
        seen: Mutex<Vec<(String, usize)>>,
        fail: bool,
    }
    /// The hook, shared with the test that reads what it saw.
    struct Shared(Arc<Cleanup>);
    impl DisconnectHook for Shared {
        async fn on_disconnect(
            &self,
            event: &ApiGatewayWebsocketProxyRequest,
        ) -> Result<(), lambda_runtime::Error> {
            let this = &self.0;
            let cap = this.limiter.policy_id("open_per_ip").unwrap();
            let held = this.limiter.seats((cap, "192.0.2.95")).await?.len();
            let id = event.request_context.connection_id.clone().unwrap();
            this.seen.lock().unwrap().push((id, held));
            if this.fail {
                return Err("the session store is down".into());
            }
            Ok(())
        }
    }
    let limiter = capped_limiter();
    let connect = ConnectHandler::new(limiter.clone());
    let event = |connection: &str, route: &str| {
        let mut event = connect_event(Some("192.0.2.95"), None);
        event["requestContext"]["connectionId"] = json!(connection);
        event["requestContext"]["connectedAt"] = json!(1_700_000_000_000i64);
        event["requestContext"]["routeKey"] = json!(route);
        invoke(event)
    };
    for fail in [false, true] {
        let cleanup = Arc::new(Cleanup {
            limiter: limiter.clone(),
            seen: Mutex::default(),
            fail,
        });
        let disconnect = DisconnectHandler::new(limiter.clone()).with_hook(Shared(cleanup.clone()));
        let response = connect.handle(event("c1", "$connect")).await.unwrap();
        assert_eq!(response.status_code, 200);
        let response = disconnect.handle(event("c1", "$disconnect")).await.unwrap();
        assert_eq!(response.status_code, 200, "fail: {fail}");
        assert_eq!(*cleanup.seen.lock().unwrap(), [("c1".to_owned(), 0)]);
    }
}

/// Records the soft rejections `$connect` schedules, and fails when told.
#[derive(Default)]
struct FollowUps {
    jobs: Mutex<Vec<SoftReject>>,
    fail: AtomicU32,
}

impl FollowUp for FollowUps {
    fn schedule(&self, job: SoftReject) -> Scheduled<'_> {
        let failing = self.fail.load(Ordering::SeqCst) > 0;
        if !failing {
            self.jobs.lock().unwrap().push(job);
        }
        Box::pin(async move {
            if failing {
                Err("the invocation was refused".to_owned())
            } else {
                Ok(())
            }
        })
    }
}

/// Two connection attempts a minute per address, rejected softly, on a
/// store shared with other processes (with a deny cache).
fn soft_limiter(clock: &FakeClock) -> Limiter {
    let mut config = Config::from_lookup(|var| {
        (var == "RATE_LIMIT_CONNECTION_ATTEMPTS_PER_MIN").then(|| "2".into())
    })
    .unwrap();
    ConnectReject::Soft.apply(&mut config.policies).unwrap();
    Arc::new(
        Builder::from_config(config)
            .clock(clock.clone())
            .build(MemoryStore::new()),
    )
}

/// A `$connect` of `connection`, from one address, connected at `now_ms`.
fn soft_connect_event(connection: &str, now_ms: u64) -> Value {
    let mut event = connect_event(Some("198.51.100.7"), None);
    event["requestContext"]["connectionId"] = json!(connection);
    event["requestContext"]["connectedAt"] = json!(now_ms);
    event
}

/// A message of `connection` on `route`, connected at `connected_ms`.
fn soft_message_event(route: &str, connection: &str, connected_ms: u64) -> Value {
    let body = format!(r#"{{"action":"{route}"}}"#);
    let mut event = message_event(route, connection, None, &body);
    event["requestContext"]["connectedAt"] = json!(connected_ms);
    event
}

#[tokio::test]
async fn soft_rejection_accepts_marks_and_schedules_the_seeds_body() {
    let clock = FakeClock::at_secs(1_700_000_000);
    let limiter = soft_limiter(&clock);
    let (sender, follow_ups) = (
        Arc::new(Recorder::default()),
        Arc::new(FollowUps::default()),
    );
    let hook = Gatekeeper::default();
    let handler = ConnectHandler::new(limiter.clone())
        .with_hook(hook.clone())
        .with_sender(sender.clone())
        .with_soft_rejection(follow_ups.clone())
        .unwrap();
    let now = limiter.now_ms();
    for id in ["c1", "c2"] {
        let response = handler
            .handle(invoke(soft_connect_event(id, now)))
            .await
            .unwrap();
        assert_eq!(response.status_code, 200);
    }
    assert_eq!(hook.calls.load(Ordering::SeqCst), 2);
    // The third is refused by its attempts, and accepted: 200, with no
    // hook (the application never sees it) and a follow-up scheduled.
    let soft = handler
        .handle(invoke(soft_connect_event("c3", now)))
        .await
        .unwrap();
    assert_eq!(soft.status_code, 200, "{soft:?}");
    assert_eq!(hook.calls.load(Ordering::SeqCst), 2, "the hook never ran");
    let jobs = follow_ups.jobs.lock().unwrap().clone();
    assert_eq!(jobs.len(), 1);
    let job = &jobs[0];
    assert_eq!(job.connection_id, "c3");
    assert_eq!(
        job.endpoint,
        "https://abc123.execute-api.us-east-1.amazonaws.com/prod"
    );
    assert_eq!(job.retry_after, 30);
    let body: Value = serde_json::from_str(&job.body).unwrap();
    assert_eq!(body["code"], "RATE_LIMIT_EXCEEDED");
    // As every body posted to a connection: the numbers of the RateLimit
    // fields beside retryAfter, since no header reaches it.
    assert_eq!(body["details"]["retryAfter"], 30);
    assert_eq!(body["details"]["policy"], "connection_attempt");
    assert_eq!(body["details"]["limits"][0]["remaining"], 0);
    assert_eq!(job.close_reason(), "RATE_LIMIT_EXCEEDED: retry after 30 s");
    // Connecting again before the retryAfter: this container already knows
    // the refusal, its client was told, so it is refused hard, for free.
    let hard = handler
        .handle(invoke(soft_connect_event("c4", now)))
        .await
        .unwrap();
    assert_rate_limited(&hard, 30);
    assert_eq!(follow_ups.jobs.lock().unwrap().len(), 1);
    // The follow-up, as the function's own asynchronous invocation runs
    // it: the body posted, then the connection deleted.
    let payload = json!({ "softReject": job });
    assert_eq!(
        handler.handle(invoke(payload)).await.unwrap().status_code,
        200
    );
    let posts = sender.posts.lock().unwrap().clone();
    assert_eq!(posts.len(), 1);
    assert_eq!((posts[0].1.as_str(), &posts[0].2), ("c3", &body));
    assert_eq!(*sender.deleted.lock().unwrap(), ["c3"]);
    // A payload that is not a soft rejection is refused, and does nothing.
    let bad = json!({"softReject": {"connectionId": "c1"}});
    assert_eq!(handler.handle(invoke(bad)).await.unwrap().status_code, 400);
    assert_eq!(sender.posts.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_marked_connections_messages_never_reach_the_app_and_a_late_one_closes_it() {
    let clock = FakeClock::at_secs(1_700_000_000);
    let limiter = soft_limiter(&clock);
    let (sender, follow_ups) = (
        Arc::new(Recorder::default()),
        Arc::new(FollowUps::default()),
    );
    let connect = ConnectHandler::new(limiter.clone())
        .with_sender(sender.clone())
        .with_soft_rejection(follow_ups.clone())
        .unwrap();
    let now = limiter.now_ms();
    for id in ["ok", "ok2", "refused"] {
        let response = connect
            .handle(invoke(soft_connect_event(id, now)))
            .await
            .unwrap();
        assert_eq!(response.status_code, 200);
    }
    assert_eq!(follow_ups.jobs.lock().unwrap()[0].connection_id, "refused");
    let backend = Backend::default();
    let messages = MessageHandler::new(limiter.clone(), sender.clone()).with_hook(backend.clone());
    let heartbeats = HeartbeatHandler::new(limiter.clone(), sender.clone());
    // An unlimited route: the probe alone decides. The accepted connection
    // reaches the application; the marked one does not, and nothing is
    // posted to it (its follow-up tells it why).
    let ok = messages
        .handle(invoke(soft_message_event("chat", "ok", now)))
        .await
        .unwrap();
    assert_eq!(ok.status_code, 200);
    let refused = messages
        .handle(invoke(soft_message_event("chat", "refused", now)))
        .await
        .unwrap();
    assert_eq!(refused.status_code, 403, "{refused:?}");
    assert_eq!(body(&refused)["code"], "CONNECTION_REFUSED");
    assert_eq!(backend.0.load(Ordering::SeqCst), 1);
    // The heartbeat probes the mark in its own call: no ack.
    let beat = heartbeats
        .handle(invoke(soft_message_event("heartbeat", "refused", now)))
        .await
        .unwrap();
    assert_eq!(beat.status_code, 403);
    let beat = heartbeats
        .handle(invoke(soft_message_event("heartbeat", "ok", now)))
        .await
        .unwrap();
    assert_eq!(beat.status_code, 200);
    let posts = sender.posts.lock().unwrap().clone();
    assert_eq!(
        posts.len(),
        1,
        "only the accepted connection's ack: {posts:?}"
    );
    assert_eq!(posts[0].1, "ok");
    assert!(
        sender.deleted.lock().unwrap().is_empty(),
        "left to its follow-up"
    );
    // Still open past the follow-up's deadline: its follow-up never ran,
    // so the next message closes it.
    clock.advance(std::time::Duration::from_secs(6));
    let late = messages
        .handle(invoke(soft_message_event("chat", "refused", now)))
        .await
        .unwrap();
    assert_eq!(late.status_code, 403);
    assert_eq!(*sender.deleted.lock().unwrap(), ["refused"]);
    assert_eq!(backend.0.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_soft_rejection_that_cannot_be_followed_up_is_hard() {
    let clock = FakeClock::at_secs(1_700_000_000);
    let limiter = soft_limiter(&clock);
    let follow_ups = Arc::new(FollowUps::default());
    follow_ups.fail.store(1, Ordering::SeqCst);
    let handler = ConnectHandler::new(limiter.clone())
        .with_sender(Arc::new(Recorder::default()))
        .with_soft_rejection(follow_ups.clone())
        .unwrap();
    let now = limiter.now_ms();
    for id in ["c1", "c2"] {
        handler
            .handle(invoke(soft_connect_event(id, now)))
            .await
            .unwrap();
    }
    let refused = handler
        .handle(invoke(soft_connect_event("c3", now)))
        .await
        .unwrap();
    assert_rate_limited(&refused, 30);
    // Soft rejection needs the mark's policy and a sender.
    let error = ConnectHandler::new(limiter.clone())
        .with_soft_rejection(follow_ups.clone())
        .err()
        .expect("no sender");
    assert!(
        error.to_string().contains("RATE_LIMIT_CONNECT_REJECT"),
        "{error}"
    );
    let error = ConnectHandler::new(self::limiter(&[]))
        .with_sender(Arc::new(Recorder::default()))
        .with_soft_rejection(follow_ups)
        .err()
        .expect("no mark");
    assert!(error.to_string().contains("mark"), "{error}");
}

#[tokio::test]
async fn an_empty_message_passes_a_byte_quota_while_a_byte_is_left() {
    let sender = Arc::new(Recorder::default());
    let backend = Backend::default();
    let handler = MessageHandler::new(routed_limiter(), sender.clone()).with_hook(backend.clone());
    let send = |body: &str| invoke(message_event("sendMessage", "conn-e", None, body));
    // An empty message takes no byte: it is a probe of the byte quota.
    assert_eq!(handler.handle(send("")).await.unwrap().status_code, 200);
    let hundred = format!(r#"{{"action":"sendMessage","text":"{}"}}"#, "x".repeat(66));
    assert_eq!(hundred.len(), 100);
    assert_eq!(
        handler.handle(send(&hundred)).await.unwrap().status_code,
        200
    );
    assert_eq!(backend.0.load(Ordering::SeqCst), 2);
    // Every byte spent: even an empty message waits for one to come back.
    let refused = handler.handle(send("")).await.unwrap();
    assert_rate_limited(&refused, 1);
    assert_eq!(backend.0.load(Ordering::SeqCst), 2);
}
