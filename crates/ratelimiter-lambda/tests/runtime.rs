//! The `connect` and `heartbeat` binaries under a stand-in for the Lambda
//! Runtime API, with their table in dynoxide and their `PostToConnection`
//! calls answered by the stand-in: one allowed and one limited invocation each.

use std::collections::VecDeque;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::routing::{get, post};
use ratelimiter_dynamodb::{ClientOptions, DynamoDbStore, client};
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};

/// What the stand-in hands out and what it receives.
#[derive(Clone)]
struct RuntimeApi {
    queue: Arc<Mutex<VecDeque<(String, Value)>>>,
    queued: Arc<Notify>,
    results: mpsc::UnboundedSender<(String, String, Value)>,
}

async fn next(State(api): State<RuntimeApi>) -> (HeaderMap, String) {
    loop {
        let notified = api.queued.notified();
        if let Some((id, event)) = api.queue.lock().unwrap().pop_front() {
            let mut headers = HeaderMap::new();
            headers.insert(
                "lambda-runtime-aws-request-id",
                HeaderValue::from_str(&id).unwrap(),
            );
            headers.insert(
                "lambda-runtime-deadline-ms",
                HeaderValue::from_static("4102444800000"),
            );
            headers.insert(
                "lambda-runtime-invoked-function-arn",
                HeaderValue::from_static("arn:aws:lambda:us-east-1:123456789012:function:test"),
            );
            return (headers, event.to_string());
        }
        notified.await;
    }
}

async fn result(
    State(api): State<RuntimeApi>,
    Path((id, kind)): Path<(String, String)>,
    body: Bytes,
) -> StatusCode {
    let value = serde_json::from_slice(&body)
        .unwrap_or(Value::String(String::from_utf8_lossy(&body).into()));
    api.results.send((id, kind, value)).unwrap();
    StatusCode::ACCEPTED
}

async fn init_error(State(api): State<RuntimeApi>, body: Bytes) -> StatusCode {
    api.results
        .send((
            "init".into(),
            "error".into(),
            Value::String(String::from_utf8_lossy(&body).into()),
        ))
        .unwrap();
    StatusCode::ACCEPTED
}

/// The Management API's `PostToConnection`, as the heartbeat binary calls it.
async fn post_to_connection(
    State(api): State<RuntimeApi>,
    Path((_stage, connection)): Path<(String, String)>,
    body: Bytes,
) -> StatusCode {
    let value = serde_json::from_slice(&body).unwrap();
    api.results
        .send((connection, "posted".into(), value))
        .unwrap();
    StatusCode::OK
}

struct Harness {
    api: RuntimeApi,
    results: mpsc::UnboundedReceiver<(String, String, Value)>,
    address: String,
    dynamodb: String,
}

impl Harness {
    async fn start() -> Self {
        let (sender, results) = mpsc::unbounded_channel();
        let api = RuntimeApi {
            queue: Arc::default(),
            queued: Arc::default(),
            results: sender,
        };
        let app = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route("/2018-06-01/runtime/invocation/{id}/{kind}", post(result))
            .route("/2018-06-01/runtime/init/error", post(init_error))
            .route(
                "/{stage}/@connections/{connection}",
                post(post_to_connection),
            )
            .with_state(api.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

        let dynamodb = ratelimiter_testing::dynoxide().await;
        let store = DynamoDbStore::new(
            client(&ClientOptions::local(&dynamodb, Duration::from_secs(5))).await,
            "RateLimits",
        );
        store.create_table().await.unwrap();
        Self {
            api,
            results,
            address,
            dynamodb,
        }
    }

    fn spawn(&self, binary: &str) -> Child {
        let mut command = Command::new(binary);
        for (name, _) in std::env::vars() {
            if name.starts_with("RATE_LIMIT_") || name.starts_with("AWS_") {
                command.env_remove(name);
            }
        }
        command
            .env("AWS_LAMBDA_RUNTIME_API", &self.address)
            .env("AWS_LAMBDA_FUNCTION_NAME", "test")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_LOG_STREAM_NAME", "stream")
            .env("AWS_LAMBDA_LOG_GROUP_NAME", "group")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_ENDPOINT_URL_DYNAMODB", &self.dynamodb)
            .env("RATE_LIMIT_TIMEOUT_MS", "5000")
            .env("RATE_LIMIT_LISTENER_JOINS_PER_MIN", "1")
            .env(
                "RATE_LIMIT_MANAGEMENT_ENDPOINT",
                format!("http://{}/prod", self.address),
            )
            .env("RATE_LIMIT_METRICS_NAMESPACE", "RateLimiter/runtime-test")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the binary starts")
    }

    fn invoke(&self, id: &str, event: Value) {
        self.api
            .queue
            .lock()
            .unwrap()
            .push_back((id.to_owned(), event));
        self.api.queued.notify_waiters();
    }

    async fn receive(&mut self) -> (String, String, Value) {
        tokio::time::timeout(Duration::from_secs(30), self.results.recv())
            .await
            .expect("the binary answers within 30 s")
            .unwrap()
    }
}

fn event(route: &str, body: Option<&str>) -> Value {
    json!({
        "body": body,
        "isBase64Encoded": false,
        "requestContext": {
            "routeKey": route,
            "eventType": if route == "$connect" { "CONNECT" } else { "MESSAGE" },
            "stage": "prod",
            "connectedAt": 1_699_500_123_456i64,
            "requestTimeEpoch": 1_699_500_123_456i64,
            "identity": {"sourceIp": "203.0.113.10"},
            "requestId": "r",
            "domainName": "abc123.execute-api.us-east-1.amazonaws.com",
            "connectionId": "conn-1",
            "apiId": "abc123",
            "messageId": null
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connect_binary_allows_then_limits() {
    let mut harness = Harness::start().await;
    let child = harness.spawn(env!("CARGO_BIN_EXE_connect"));
    harness.invoke("a", event("$connect", None));
    let (id, kind, response) = harness.receive().await;
    assert_eq!(
        (id.as_str(), kind.as_str()),
        ("a", "response"),
        "{response}"
    );
    assert_eq!(response["statusCode"], 200, "{response}");
    harness.invoke("b", event("$connect", None));
    let (id, kind, response) = harness.receive().await;
    assert_eq!(
        (id.as_str(), kind.as_str()),
        ("b", "response"),
        "{response}"
    );
    assert_eq!(response["statusCode"], 429, "{response}");
    let body: Value = serde_json::from_str(response["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["code"], "RATE_LIMIT_EXCEEDED");
    assert_eq!(body["details"]["retryAfter"], 60);

    // Each invocation's metrics were written before its response.
    let metrics = emf_documents(child);
    let listener_joins: Vec<_> = metrics
        .iter()
        .filter(|d| d["Operation"] == "listener_join")
        .map(|d| {
            (
                d["RequestId"].as_str().unwrap(),
                d["Allowed"].as_u64(),
                d["Denied"].as_u64(),
            )
        })
        .collect();
    assert_eq!(
        listener_joins,
        [("a", Some(1), None), ("b", None, Some(1))],
        "{metrics:#?}"
    );
    for document in &metrics {
        assert_eq!(
            document["_aws"]["CloudWatchMetrics"][0]["Namespace"],
            "RateLimiter/runtime-test"
        );
    }
}

/// Stops the function and returns the EMF documents among the lines it
/// wrote to stdout (its logs are there too).
fn emf_documents(mut child: Child) -> Vec<Value> {
    use std::io::Read;
    child.kill().unwrap();
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child.wait().unwrap();
    stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line.get("_aws").is_some())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_heartbeat_binary_acks_then_limits() {
    let mut harness = Harness::start().await;
    let child = harness.spawn(env!("CARGO_BIN_EXE_heartbeat"));
    let mut acks = 0;
    for (i, expected) in [200, 200, 429].into_iter().enumerate() {
        harness.invoke(
            &i.to_string(),
            event("heartbeat", Some(r#"{"action":"heartbeat"}"#)),
        );
        // First the message to the connection, then the response.
        let (connection, kind, posted) = harness.receive().await;
        assert_eq!(
            (connection.as_str(), kind.as_str()),
            ("conn-1", "posted"),
            "{posted}"
        );
        let (id, kind, response) = harness.receive().await;
        assert_eq!((id, kind.as_str()), (i.to_string(), "response"));
        assert_eq!(response["statusCode"], expected, "{response}");
        if expected == 200 {
            assert_eq!(posted["type"], "heartbeat_ack");
            acks += 1;
        } else {
            assert_eq!(posted["code"], "RATE_LIMIT_EXCEEDED");
            assert_eq!(posted["details"]["retryAfter"], 30);
        }
    }
    assert_eq!(acks, 2);
    let metrics = emf_documents(child);
    let heartbeats: Vec<_> = metrics
        .iter()
        .map(|d| {
            (
                d["Operation"].as_str().unwrap(),
                d["Allowed"].as_u64(),
                d["Denied"].as_u64(),
            )
        })
        .collect();
    assert_eq!(
        heartbeats,
        [
            ("heartbeat", Some(1), None),
            ("heartbeat", Some(1), None),
            ("heartbeat", None, Some(1))
        ],
        "{metrics:#?}"
    );
}

#[test]
fn a_bad_configuration_stops_the_container_at_start_up() {
    let dir = std::env::temp_dir().join(format!("ratelimiter-runtime-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad_file = dir.join("limits.toml");
    std::fs::write(
        &bad_file,
        "[policy.chat]\nkey = \"connection\"\nlimits = [\"0/min\"]\n",
    )
    .unwrap();
    let bad_file = bad_file.to_str().unwrap().to_owned();
    let missing = dir.join("missing.toml").to_str().unwrap().to_owned();
    for (var, value, expected) in [
        (
            "RATE_LIMIT_CONFIG",
            bad_file.as_str(),
            // Printed as JSON, so the quotes around the value are escaped.
            "limits.toml:3: \\\"0/min\\\": the count must be",
        ),
        (
            "RATE_LIMIT_CONFIG",
            missing.as_str(),
            "cannot read the configuration file",
        ),
        (
            "RATE_LIMIT_KEY_SECRET",
            "short",
            "RATE_LIMIT_KEY_SECRET must be at least 32 bytes, got 5 bytes",
        ),
        (
            "RATE_LIMIT_HEARTBEATS_PER_MIN",
            "lots",
            "RATE_LIMIT_HEARTBEATS_PER_MIN must be a positive integer",
        ),
        (
            "RATE_LIMIT_METRICS",
            "cloudwatch",
            "RATE_LIMIT_METRICS must be one of emf or off",
        ),
        (
            "RATE_LIMIT_METRICS_NAMESPACE",
            "AWS/Lambda",
            "RATE_LIMIT_METRICS_NAMESPACE must be a CloudWatch namespace",
        ),
    ] {
        // The binary must fail before it asks the Runtime API for an event, so
        // no Runtime API is needed: the address is never contacted.
        let output = Command::new(env!("CARGO_BIN_EXE_connect"))
            .env("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9")
            .env(var, value)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!output.status.success(), "{var}={value}");
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(printed.contains(expected), "{printed}");
        match var {
            // Files are named, not quoted; secrets are never printed.
            "RATE_LIMIT_CONFIG" => assert!(printed.contains(value), "{printed}"),
            "RATE_LIMIT_KEY_SECRET" => assert!(!printed.contains("\"short\""), "{printed}"),
            _ => assert!(printed.contains(&format!("{value:?}")), "{printed}"),
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_authorizer_binary_reads_the_configuration_file_at_start_up() {
    // The authorizer takes its tier field from the same configuration as the
    // handlers, so a file that stops them stops it too, with the same
    // message, before it fetches the JWKS (nothing listens at that address).
    let dir = std::env::temp_dir().join(format!(
        "ratelimiter-runtime-authorizer-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("limits.toml");
    std::fs::write(&file, "failure_mode = \"open\"\ntier_field = \"\"\n").unwrap();
    let file = file.to_str().unwrap().to_owned();
    let mut command = Command::new(env!("CARGO_BIN_EXE_authorizer"));
    for (name, _) in std::env::vars() {
        if name.starts_with("RATE_LIMIT_") {
            command.env_remove(name);
        }
    }
    let output = command
        .env("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9")
        .env("RATE_LIMIT_JWKS_URL", "http://127.0.0.1:9/jwks")
        .env("RATE_LIMIT_CONFIG", &file)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        printed.contains(&format!(
            "{file}:2: tier_field must be the name of an authorizer-context field"
        )),
        "{printed}"
    );
    assert!(!printed.contains("cannot fetch"), "{printed}");
    std::fs::remove_dir_all(&dir).unwrap();
}
