//! The CloudWatch EMF documents the functions write: the real recorder
//! (`metrics_cloudwatch_embedded`), the real service and, where calls are
//! counted, the real DynamoDB store on dynoxide. The documents are captured
//! instead of going to stdout, then parsed.
//!
//! A process has one metrics recorder, so the tests share it and take turns.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use aws_lambda_events::apigw::ApiGatewayProxyResponse;
use lambda_runtime::{Context, LambdaEvent};
use ratelimiter::policy::BUILTINS;
use ratelimiter::{Builder, Config, PolicyId};
use ratelimiter_dynamodb::{ClientOptions, DynamoDbStore, client};
use ratelimiter_lambda::connect::ConnectHandler;
use ratelimiter_lambda::emf::{Emf, flush_after_each};
use serde_json::{Value, json};
use tower::{Service, ServiceExt, service_fn};

const NAMESPACE: &str = "RateLimiter/test";

static CAPTURED: Mutex<Vec<u8>> = Mutex::new(Vec::new());
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn capture(documents: &[u8]) {
    CAPTURED.lock().unwrap().extend_from_slice(documents);
}

/// The shared recorder, emptied, and this test's turn to use it.
async fn recorder() -> (Emf, tokio::sync::MutexGuard<'static, ()>) {
    static EMF: OnceLock<Emf> = OnceLock::new();
    let turn = TURN.lock().await;
    let emf = *EMF.get_or_init(|| Emf::install(NAMESPACE).unwrap().with_sink(capture));
    emf.drain();
    CAPTURED.lock().unwrap().clear();
    (emf, turn)
}

/// The captured documents, each checked for the EMF structure, by operation.
fn take_documents() -> Vec<Value> {
    let bytes = std::mem::take(&mut *CAPTURED.lock().unwrap());
    let text = String::from_utf8(bytes).unwrap();
    text.lines()
        .map(|line| {
            let document: Value = serde_json::from_str(line).unwrap();
            check_structure(&document);
            document
        })
        .collect()
}

/// What CloudWatch requires of a document for it to become metrics.
fn check_structure(document: &Value) {
    let aws = &document["_aws"];
    assert!(
        aws["Timestamp"].as_u64().unwrap() > 1_600_000_000_000,
        "{document}"
    );
    let directive = &aws["CloudWatchMetrics"][0];
    assert_eq!(directive["Namespace"], NAMESPACE, "{document}");
    assert_eq!(
        directive["Dimensions"],
        json!([["Operation"]]),
        "{document}"
    );
    let operation = document["Operation"].as_str().unwrap();
    assert!(
        BUILTINS.iter().any(|builtin| builtin.name == operation),
        "{document}"
    );
    for metric in directive["Metrics"].as_array().unwrap() {
        let name = metric["Name"].as_str().unwrap();
        let unit = if name == "DecisionLatency" {
            "Milliseconds"
        } else {
            "Count"
        };
        assert_eq!(metric["Unit"], unit, "{document}");
        assert!(!document[name].is_null(), "{name} has no value: {document}");
    }
}

/// Per operation, each metric's value: counts as numbers, latencies as the
/// number of samples.
fn summary(documents: &[Value]) -> BTreeMap<String, BTreeMap<String, u64>> {
    let mut summary = BTreeMap::<String, BTreeMap<String, u64>>::new();
    for document in documents {
        let operation = document["Operation"].as_str().unwrap().to_owned();
        for metric in document["_aws"]["CloudWatchMetrics"][0]["Metrics"]
            .as_array()
            .unwrap()
        {
            let name = metric["Name"].as_str().unwrap();
            let value = match &document[name] {
                Value::Array(samples) => {
                    for sample in samples {
                        let ms = sample.as_f64().unwrap();
                        assert!((0.0..10_000.0).contains(&ms), "{name}: {ms}");
                    }
                    samples.len() as u64
                }
                value => value.as_u64().unwrap(),
            };
            *summary
                .entry(operation.clone())
                .or_default()
                .entry(name.to_owned())
                .or_default() += value;
        }
    }
    summary
}

fn expect(pairs: &[(&str, &[(&str, u64)])]) -> BTreeMap<String, BTreeMap<String, u64>> {
    pairs
        .iter()
        .map(|(operation, metrics)| {
            let metrics = metrics.iter().map(|(n, v)| (n.to_string(), *v)).collect();
            (operation.to_string(), metrics)
        })
        .collect()
}

async fn dynamodb_store() -> DynamoDbStore {
    let url = ratelimiter_testing::dynoxide().await;
    let store = DynamoDbStore::new(
        client(&ClientOptions::local(&url, Duration::from_secs(5))).await,
        "RateLimits",
    );
    store.create_table().await.unwrap();
    store
}

/// A store whose every call is refused at once: nothing listens there.
async fn unreachable_store() -> DynamoDbStore {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    DynamoDbStore::new(
        client(&ClientOptions::local(&url, Duration::from_secs(2))).await,
        "RateLimits",
    )
}

fn connect_event(request_id: &str) -> LambdaEvent<Value> {
    let payload = json!({
        "isBase64Encoded": false,
        "requestContext": {
            "routeKey": "$connect",
            "eventType": "CONNECT",
            "stage": "prod",
            "connectedAt": 1_699_500_123_456i64,
            "requestTimeEpoch": 1_699_500_123_456i64,
            "identity": {"sourceIp": "198.51.100.7"},
            "requestId": "r",
            "domainName": "abc123.execute-api.us-east-1.amazonaws.com",
            "connectionId": "L0SM9cOFvHcCIhw=",
            "apiId": "abc123",
            "messageId": null
        }
    });
    let mut context = Context::default();
    context.request_id = request_id.to_owned();
    LambdaEvent::new(payload, context)
}

#[tokio::test]
async fn each_invocation_flushes_its_decisions_and_dynamodb_calls_per_operation() {
    let (emf, _turn) = recorder().await;
    let config = Config::from_lookup(|var| {
        (var == "RATE_LIMIT_LISTENER_JOINS_PER_MIN").then(|| "1".to_owned())
    })
    .unwrap();
    let handler = ConnectHandler::new(Arc::new(
        Builder::from_config(config).build(dynamodb_store().await),
    ));
    let mut service = flush_after_each(service_fn(|event| handler.handle(event)), Some(emf));

    let response: ApiGatewayProxyResponse = service
        .ready()
        .await
        .unwrap()
        .call(connect_event("req-a"))
        .await
        .unwrap();
    assert_eq!(response.status_code, 200);
    let first = take_documents();
    assert_eq!(first.len(), 2, "one document per operation: {first:#?}");
    assert!(
        first.iter().all(|d| d["RequestId"] == "req-a"),
        "{first:#?}"
    );
    // A listener's two limits share the item of its address: one call,
    // counted under the first, with the one write unit it consumed (as
    // the server reported it).
    assert_eq!(
        summary(&first),
        expect(&[
            (
                "connection_attempt",
                &[
                    ("Allowed", 1),
                    ("ConsumedWriteCapacity", 1),
                    ("DecisionLatency", 1),
                    ("DynamoDbCalls", 1)
                ]
            ),
            ("listener_join", &[("Allowed", 1), ("DecisionLatency", 1)]),
        ])
    );

    let response = service
        .ready()
        .await
        .unwrap()
        .call(connect_event("req-b"))
        .await
        .unwrap();
    assert_eq!(response.status_code, 429);
    let second = take_documents();
    assert!(
        second.iter().all(|d| d["RequestId"] == "req-b"),
        "{second:#?}"
    );
    // The listener's second join is denied from the deny cache: no call.
    assert_eq!(
        summary(&second),
        expect(&[
            (
                "connection_attempt",
                &[
                    ("Allowed", 1),
                    ("ConsumedWriteCapacity", 1),
                    ("DecisionLatency", 1),
                    ("DynamoDbCalls", 1)
                ]
            ),
            ("listener_join", &[("DecisionLatency", 1), ("Denied", 1)]),
        ])
    );
}

#[tokio::test]
async fn an_invocation_that_decides_nothing_writes_nothing() {
    let (emf, _turn) = recorder().await;
    let handler = ConnectHandler::new(Arc::new(Builder::new().in_memory()));
    let mut service = flush_after_each(service_fn(|event| handler.handle(event)), Some(emf));
    let mut event = connect_event("req-bad");
    event.payload = json!({"headers": {}});
    let response = service.ready().await.unwrap().call(event).await.unwrap();
    assert_eq!(response.status_code, 400);
    assert_eq!(take_documents(), Vec::<Value>::new());
}

#[tokio::test]
async fn decisions_without_the_table_count_as_degraded() {
    let (emf, _turn) = recorder().await;
    let config = Config::from_lookup(|var| {
        (var == "RATE_LIMIT_FAILURE_MODE_LISTENER_JOIN").then(|| "closed".to_owned())
    })
    .unwrap();
    let service = Builder::from_config(config).build(unreachable_store().await);
    let allowed = service.check_heartbeat_limit("conn-1").await.unwrap();
    assert!(allowed.is_degraded());
    service
        .check_listener_join_limit("198.51.100.9")
        .await
        .unwrap_err();
    emf.flush();
    assert_eq!(
        summary(&take_documents()),
        expect(&[
            (
                "heartbeat",
                &[
                    ("Allowed", 1),
                    ("DecisionLatency", 1),
                    ("Degraded", 1),
                    ("DynamoDbCalls", 1)
                ]
            ),
            (
                "listener_join",
                &[
                    ("DecisionLatency", 1),
                    ("Degraded", 1),
                    ("Denied", 1),
                    ("DynamoDbCalls", 1)
                ]
            ),
        ])
    );
}

#[tokio::test]
async fn shadow_mode_counts_what_it_would_deny_and_denies_nothing() {
    let (emf, _turn) = recorder().await;
    let config =
        Config::from_lookup(|var| (var == "RATE_LIMIT_SHADOW_MODE").then(|| "true".to_owned()))
            .unwrap();
    let service = Builder::from_config(config).in_memory();
    for _ in 0..5 {
        let verdict = service.decide((PolicyId::HEARTBEAT, "c")).await.unwrap();
        assert!(verdict.allowed());
    }
    emf.flush();
    assert_eq!(
        summary(&take_documents()),
        expect(&[(
            "heartbeat",
            &[("Allowed", 5), ("DecisionLatency", 5), ("WouldDeny", 3)]
        )])
    );
}

#[tokio::test]
async fn synchronous_in_memory_decisions_are_counted_but_not_timed() {
    let (emf, _turn) = recorder().await;
    let service = Builder::new().in_memory();
    for _ in 0..3 {
        let _ = service.decide_sync((PolicyId::HEARTBEAT, "s"));
    }
    emf.flush();
    assert_eq!(
        summary(&take_documents()),
        expect(&[("heartbeat", &[("Allowed", 2), ("Denied", 1)])])
    );
}
