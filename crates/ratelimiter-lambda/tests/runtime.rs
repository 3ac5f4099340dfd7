//! The `connect` and `heartbeat` binaries under a stand-in for the Lambda
//! Runtime API, with their table in dynoxide and their `PostToConnection`
//! calls answered by the stand-in: one allowed and one limited invocation each;
//! and all three binaries stopping at start-up on a configuration error.

use std::collections::VecDeque;
use std::process::{Child, Command, ExitStatus, Stdio};
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

/// The Management API's `DeleteConnection`, as a soft rejection's
/// follow-up calls it.
async fn delete_connection(
    State(api): State<RuntimeApi>,
    Path((_stage, connection)): Path<(String, String)>,
) -> StatusCode {
    api.results
        .send((connection, "deleted".into(), Value::Null))
        .unwrap();
    StatusCode::NO_CONTENT
}

/// Lambda's `Invoke`, as the message binary forwards an allowed message:
/// recorded as (function, invocation type, event).
async fn invoke_function(
    State(api): State<RuntimeApi>,
    Path(function): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let kind = headers
        .get("x-amz-invocation-type")
        .map_or("RequestResponse", |v| v.to_str().unwrap())
        .to_owned();
    let value = serde_json::from_slice(&body).unwrap();
    api.results.send((function, kind, value)).unwrap();
    StatusCode::ACCEPTED
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
                post(post_to_connection).delete(delete_connection),
            )
            .route(
                "/2015-03-31/functions/{function}/invocations",
                post(invoke_function),
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
        self.spawn_with(binary, &[])
    }

    /// [`Harness::spawn`] with more variables.
    fn spawn_with(&self, binary: &str, env: &[(&str, &str)]) -> Child {
        command(binary)
            .envs(env.iter().copied())
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

/// `binary`, without the `RATE_LIMIT_*` and `AWS_*` variables of whoever
/// runs the tests, so that a test sets all the configuration it means.
fn command(binary: &str) -> Command {
    let mut command = Command::new(binary);
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if name.starts_with("RATE_LIMIT_") || name.starts_with("AWS_") {
            command.env_remove(name);
        }
    }
    command
}

/// How a binary that was meant to stop at start-up ended.
struct Stopped {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Stopped {
    /// Everything it printed, stdout then stderr.
    fn printed(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    /// The fields of the JSON error lines it logged on stdout (where Lambda
    /// sends the logs to CloudWatch).
    fn logged_errors(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|line| line["level"] == "ERROR")
            .map(|line| line["fields"].clone())
            .collect()
    }
}

/// Runs `binary` with `vars` (and no other `RATE_LIMIT_*` or `AWS_*`
/// variable) until it exits, which it must do at start-up, within
/// [`START_UP`] (else it is killed and the test fails). Nothing answers at
/// its Runtime API address: a binary that gets past its configuration fails
/// there, without the message the test looks for.
fn start_up(binary: &str, vars: &[(&str, &str)]) -> Stopped {
    use std::io::Read;
    let mut child = command(binary)
        .env("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9")
        .envs(vars.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    // Read as it writes, so that a full pipe cannot keep it from exiting.
    let read = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            pipe.read_to_end(&mut text).unwrap();
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let stdout = read(Box::new(child.stdout.take().unwrap()));
    let stderr = read(Box::new(child.stderr.take().unwrap()));
    let deadline = std::time::Instant::now() + START_UP;
    let (status, timed_out) = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break (status, false);
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            break (child.wait().unwrap(), true);
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stopped = Stopped {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    };
    assert!(
        !timed_out,
        "{binary} with {vars:?} was still running after {START_UP:?}; it printed:\n{}",
        stopped.printed()
    );
    stopped
}

/// How long a binary may take to stop at start-up: it reads its
/// configuration and exits, in milliseconds; the margin is for a loaded
/// machine building and testing in parallel.
const START_UP: Duration = Duration::from_secs(10);

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_message_binary_limits_a_configured_route_on_dynamodb() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("limits.toml");
    std::fs::write(
        &file,
        "[policy.chat]\nkey = \"connection\"\nlimits = [\"1/min\"]\n\
         [policy.chat_bytes]\nkey = \"connection\"\nunit = \"bytes\"\nlimits = [\"1000/min\"]\n\
         [route.chat]\npolicies = [\"chat\", \"chat_bytes\"]\n",
    )
    .unwrap();
    let mut harness = Harness::start().await;
    let child = harness.spawn_with(
        env!("CARGO_BIN_EXE_message"),
        &[("RATE_LIMIT_CONFIG", file.to_str().unwrap())],
    );
    // Through $default, by its action.
    let chat = || event("$default", Some(r#"{"action":"chat","text":"hi"}"#));
    harness.invoke("1", chat());
    let (id, kind, response) = harness.receive().await;
    assert_eq!((id.as_str(), kind.as_str()), ("1", "response"));
    assert_eq!(response["statusCode"], 200, "{response}");
    harness.invoke("2", chat());
    let (connection, kind, posted) = harness.receive().await;
    assert_eq!((connection.as_str(), kind.as_str()), ("conn-1", "posted"));
    assert_eq!(posted["code"], "RATE_LIMIT_EXCEEDED");
    assert_eq!(posted["details"]["policy"], "chat");
    let (id, _, response) = harness.receive().await;
    assert_eq!(id, "2");
    assert_eq!(response["statusCode"], 429, "{response}");
    // Both policies share the connection's item: one call for the allowed
    // message, counted once; none for the denial, which the first call's
    // answer already told.
    let metrics = emf_documents(child);
    let calls: Vec<_> = metrics
        .iter()
        .map(|d| {
            (
                d["Operation"].as_str().unwrap(),
                d["DynamoDbCalls"].as_u64(),
                d["Denied"].as_u64(),
            )
        })
        .collect();
    assert_eq!(
        calls,
        [
            ("chat", Some(1), None),
            ("chat_bytes", None, None),
            ("chat", None, Some(1))
        ],
        "{metrics:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_message_binary_forwards_allowed_messages_asynchronously() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("limits.toml");
    std::fs::write(
        &file,
        "[policy.chat]\nkey = \"connection\"\nlimits = [\"1/min\"]\n\
         [route.\"$default\"]\npolicies = [\"chat\"]\n",
    )
    .unwrap();
    let mut harness = Harness::start().await;
    let lambda = format!("http://{}", harness.address);
    let mut child = harness.spawn_with(
        env!("CARGO_BIN_EXE_message"),
        &[
            ("RATE_LIMIT_CONFIG", file.to_str().unwrap()),
            ("RATE_LIMIT_FORWARD_FUNCTION", "chat-backend"),
            ("AWS_ENDPOINT_URL_LAMBDA", &lambda),
        ],
    );
    let chat = || event("$default", Some(r#"{"action":"say","text":"hi"}"#));
    harness.invoke("1", chat());
    // The event goes to the backend, unchanged, as an Event invocation...
    let (function, kind, forwarded) = harness.receive().await;
    assert_eq!(
        (function.as_str(), kind.as_str()),
        ("chat-backend", "Event")
    );
    assert_eq!(forwarded["body"], r#"{"action":"say","text":"hi"}"#);
    assert_eq!(forwarded["requestContext"]["connectionId"], "conn-1");
    assert_eq!(forwarded["requestContext"]["routeKey"], "$default");
    let (id, _, response) = harness.receive().await;
    assert_eq!(id, "1");
    assert_eq!(response["statusCode"], 200, "{response}");
    // ...and a denied one never does: the error goes to the connection.
    harness.invoke("2", chat());
    let (connection, kind, posted) = harness.receive().await;
    assert_eq!((connection.as_str(), kind.as_str()), ("conn-1", "posted"));
    assert_eq!(posted["code"], "RATE_LIMIT_EXCEEDED");
    let (id, _, response) = harness.receive().await;
    assert_eq!(
        (id.as_str(), response["statusCode"].as_u64()),
        ("2", Some(429))
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn a_bad_forward_function_stops_the_message_binary_at_start_up() {
    let stopped = start_up(
        env!("CARGO_BIN_EXE_message"),
        &[("RATE_LIMIT_FORWARD_FUNCTION", "two words")],
    );
    assert!(!stopped.status.success(), "{}", stopped.printed());
    assert!(
        stopped.printed().contains("RATE_LIMIT_FORWARD_FUNCTION"),
        "{}",
        stopped.printed()
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
        let stopped = start_up(env!("CARGO_BIN_EXE_connect"), &[(var, value)]);
        assert!(!stopped.status.success(), "{var}={value}");
        let printed = stopped.printed();
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
    let stopped = start_up(
        env!("CARGO_BIN_EXE_authorizer"),
        &[
            ("RATE_LIMIT_JWKS_URL", "http://127.0.0.1:9/jwks"),
            ("RATE_LIMIT_CONFIG", &file),
        ],
    );
    assert!(!stopped.status.success());
    let printed = stopped.printed();
    assert!(
        printed.contains(&format!(
            "{file}:2: tier_field must be the name of an authorizer-context field"
        )),
        "{printed}"
    );
    assert!(!printed.contains("cannot fetch"), "{printed}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The four binaries, for what they all do at start-up.
const BINARIES: [&str; 4] = [
    env!("CARGO_BIN_EXE_connect"),
    env!("CARGO_BIN_EXE_heartbeat"),
    env!("CARGO_BIN_EXE_message"),
    env!("CARGO_BIN_EXE_authorizer"),
];

#[test]
fn an_invalid_log_level_stops_every_binary_at_start_up() {
    for binary in BINARIES {
        let stopped = start_up(
            binary,
            &[
                ("RATE_LIMIT_LOG_LEVEL", "verbose"),
                // All else valid as far as it is read before the first event
                // (the JWKS is fetched at start-up; nothing answers there, so
                // an authorizer that got that far would say so).
                ("RATE_LIMIT_JWKS_URL", "http://127.0.0.1:9/jwks"),
            ],
        );
        assert!(!stopped.status.success(), "{binary}: {}", stopped.printed());
        // Logged in words, as a JSON line on stdout like every configuration
        // error, although the level meant for the logs is the wrong one.
        let errors = stopped.logged_errors();
        assert_eq!(
            errors.first().and_then(|fields| fields["error"].as_str()),
            Some(
                r#"RATE_LIMIT_LOG_LEVEL must be one of error, warn, info, debug or trace, got "verbose""#
            ),
            "{binary}: {}",
            stopped.printed()
        );
        assert_eq!(
            errors[0]["message"], "configuration error: the function cannot start",
            "{binary}"
        );
    }
}

#[test]
fn a_level_in_any_case_with_white_space_around_is_valid() {
    // Each binary then stops at the next mistake, a missing configuration
    // file, which it would not reach if it refused the level.
    let missing = std::env::temp_dir()
        .join(format!("ratelimiter-runtime-level-{}", std::process::id()))
        .join("limits.toml");
    let missing = missing.to_str().unwrap();
    for binary in BINARIES {
        let stopped = start_up(
            binary,
            &[
                ("RATE_LIMIT_LOG_LEVEL", " Debug "),
                ("RATE_LIMIT_JWKS_URL", "http://127.0.0.1:9/jwks"),
                ("RATE_LIMIT_CONFIG", missing),
            ],
        );
        assert!(!stopped.status.success(), "{binary}");
        let printed = stopped.printed();
        assert!(
            !printed.contains("RATE_LIMIT_LOG_LEVEL"),
            "{binary}: {printed}"
        );
        let errors = stopped.logged_errors();
        let error = errors.first().and_then(|fields| fields["error"].as_str());
        assert!(
            error.is_some_and(|error| error.contains("cannot read the configuration file")),
            "{binary}: {printed}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connect_binary_rejects_softly_and_follows_up_as_its_own_invocation() {
    let mut harness = Harness::start().await;
    let lambda = format!("http://{}", harness.address);
    let mut child = harness.spawn_with(
        env!("CARGO_BIN_EXE_connect"),
        &[
            ("RATE_LIMIT_CONNECT_REJECT", "soft"),
            ("AWS_ENDPOINT_URL_LAMBDA", &lambda),
        ],
    );
    harness.invoke("a", event("$connect", None));
    let (_, _, response) = harness.receive().await;
    assert_eq!(response["statusCode"], 200, "{response}");
    // The second listener join is refused: accepted, and the function
    // invokes itself, asynchronously, with the follow-up.
    harness.invoke("b", event("$connect", None));
    let (function, kind, payload) = harness.receive().await;
    assert_eq!(
        (function.as_str(), kind.as_str()),
        ("test", "Event"),
        "{payload}"
    );
    let job = &payload["softReject"];
    assert_eq!(job["connectionId"], "conn-1");
    assert_eq!(job["retryAfter"], 60);
    let (id, _, response) = harness.receive().await;
    assert_eq!(
        (id.as_str(), &response["statusCode"]),
        ("b", &json!(200)),
        "{response}"
    );
    // Lambda hands the follow-up back to the function: it posts the
    // seed's body to the connection, then deletes it.
    harness.invoke("c", payload.clone());
    let (connection, kind, body) = harness.receive().await;
    assert_eq!((connection.as_str(), kind.as_str()), ("conn-1", "posted"));
    assert_eq!(body["code"], "RATE_LIMIT_EXCEEDED");
    assert_eq!(body["details"]["retryAfter"], 60);
    let (connection, kind, _) = harness.receive().await;
    assert_eq!((connection.as_str(), kind.as_str()), ("conn-1", "deleted"));
    let (id, kind, response) = harness.receive().await;
    assert_eq!((id.as_str(), kind.as_str()), ("c", "response"));
    assert_eq!(response["statusCode"], 200, "{response}");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn a_bad_connect_reject_mode_stops_every_limiting_binary_at_start_up() {
    for binary in [
        env!("CARGO_BIN_EXE_connect"),
        env!("CARGO_BIN_EXE_heartbeat"),
        env!("CARGO_BIN_EXE_message"),
        env!("CARGO_BIN_EXE_disconnect"),
    ] {
        let stopped = start_up(binary, &[("RATE_LIMIT_CONNECT_REJECT", "gentle")]);
        assert!(!stopped.status.success());
        assert!(
            stopped.printed().contains(
                r#"RATE_LIMIT_CONNECT_REJECT must be one of hard or soft, got \"gentle\""#
            ),
            "{binary}: {}",
            stopped.printed()
        );
    }
}
