//! The built `ratelimit` binary: JSON shapes, exit statuses, configuration
//! errors, state that survives between runs, and many processes at once.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

/// A `ratelimit` command in `dir`, with no rate-limit or AWS settings
/// inherited from the environment, and no way to reach AWS.
fn ratelimit(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ratelimit"));
    command.current_dir(dir).stdin(Stdio::null());
    for (name, _) in std::env::vars() {
        if name.starts_with("RATE_LIMIT_") || name.starts_with("AWS_") {
            command.env_remove(name);
        }
    }
    command
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1");
    command
}

fn run(command: &mut Command) -> Output {
    command.output().expect("the binary runs")
}

fn json(output: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON object ({e}): {stdout:?}, stderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

fn code(output: &Output) -> i32 {
    output.status.code().expect("the process exited")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn check_status_reset_on_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let check = || run(ratelimit(dir.path()).args(["check", "heartbeat", "conn-1"]));

    let first = check();
    assert_eq!(code(&first), 0, "{}", stderr(&first));
    let value = json(&first);
    let keys: Vec<&str> = value
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    // The seed-era fields first, then how the decision was made and
    // every limit's numbers.
    assert_eq!(
        keys,
        [
            "allowed",
            "operation",
            "identifier",
            "limit",
            "remaining",
            "retry_after",
            "reset_in_seconds",
            "degraded",
            "degraded_reason",
            "store_calls",
            "capacity_units",
            "cached",
            "limits"
        ]
    );
    assert_eq!(value["store_calls"], 1);
    // The embedded store answers as DynamoDB does: one write unit.
    assert_eq!(
        value["capacity_units"],
        serde_json::json!({"write": 1, "read": 0})
    );
    assert_eq!(value["cached"], false);
    assert_eq!(value["degraded_reason"], serde_json::Value::Null);
    assert_eq!(value["limits"].as_array().unwrap().len(), 1);
    assert_eq!(value["allowed"], true);
    assert_eq!(value["operation"], "heartbeat");
    assert_eq!(value["identifier"], "conn-1");
    assert_eq!(value["limit"], 2);
    assert_eq!(value["remaining"], 1);
    assert_eq!(value["retry_after"], 0);
    assert_eq!(value["reset_in_seconds"], 30);
    assert_eq!(value["degraded"], false);

    // The state survives between processes.
    assert_eq!(code(&check()), 0);
    let third = check();
    assert_eq!(code(&third), 1);
    let value = json(&third);
    assert_eq!(value["allowed"], false);
    assert!(
        (29..=30).contains(&value["retry_after"].as_u64().unwrap()),
        "{value}"
    );
    assert!(dir.path().join(".ratelimit/ratelimit.db").exists());

    let status = run(ratelimit(dir.path()).args(["status", "heartbeat", "conn-1"]));
    assert_eq!(code(&status), 0, "{}", stderr(&status));
    let value = json(&status);
    assert_eq!(value["count"], 2);
    assert_eq!(value["limit"], 2);
    assert_eq!(value["window_duration"], 60);
    let keys: Vec<&str> = value
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "count",
            "limit",
            "reset_in_seconds",
            "window_duration",
            "limits"
        ]
    );

    let reset = run(ratelimit(dir.path()).args(["reset", "heartbeat", "conn-1"]));
    assert_eq!(code(&reset), 0, "{}", stderr(&reset));
    assert_eq!(json(&reset)["reset"], true);
    assert_eq!(code(&check()), 0);
}

#[test]
fn cost_kind_and_data_dir_options() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("state");
    let output = run(ratelimit(dir.path()).args(["--data-dir"]).arg(&data).args([
        "check",
        "listener-join",
        "192.0.2.1",
        "--cost",
        "10",
    ]));
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    assert_eq!(json(&output)["remaining"], 0);
    assert!(data.join("ratelimit.db").exists());
    // The same value counted as a user is another key.
    let output = run(ratelimit(dir.path()).args(["--data-dir"]).arg(&data).args([
        "check",
        "listener-join",
        "192.0.2.1",
        "--kind",
        "user",
    ]));
    assert_eq!(json(&output)["remaining"], 9);
}

#[test]
fn the_memory_store_forgets_between_runs() {
    let dir = tempfile::tempdir().unwrap();
    for _ in 0..3 {
        let output =
            run(ratelimit(dir.path()).args(["--store", "memory", "check", "heartbeat", "c"]));
        assert_eq!(code(&output), 0);
        assert_eq!(json(&output)["remaining"], 1);
    }
    assert!(!dir.path().join(".ratelimit").exists());
}

#[test]
fn limits_come_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let output = run(ratelimit(dir.path())
        .env("RATE_LIMIT_SESSIONS_PER_HOUR", "1")
        .args(["check", "session-create", "user-1"]));
    assert_eq!(json(&output)["limit"], 1);
    let output = run(ratelimit(dir.path())
        .env("RATE_LIMIT_SESSIONS_PER_HOUR", "1")
        .args(["check", "session-create", "user-1"]));
    assert_eq!(code(&output), 1);
    assert_eq!(json(&output)["retry_after"], 3600);
}

/// Arguments, environment, and what stderr must say.
type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);

#[test]
fn bad_arguments_and_configuration_exit_with_status_two() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[Case] = &[
        (
            &["check", "sessions", "u"],
            &[],
            "unknown policy \"sessions\"",
        ),
        (&["check", "heartbeat"], &[], "IDENTIFIER"),
        (&["check", "heartbeat", "c", "--cost", "0"], &[], "--cost"),
        (
            &["check", "heartbeat", "c", "--cost", "3"],
            &[],
            "exceeds the capacity of 2",
        ),
        (
            &["check", "heartbeat", "c", "--kind", "a b"],
            &[],
            "not a valid name",
        ),
        (
            &["--store", "redis", "check", "heartbeat", "c"],
            &[],
            "redis",
        ),
        (&["frobnicate"], &[], "frobnicate"),
        (
            &["check", "heartbeat", "c"],
            &[("RATE_LIMIT_HEARTBEATS_PER_MIN", "0")],
            "RATE_LIMIT_HEARTBEATS_PER_MIN must be a positive integer",
        ),
        (
            &["check", "heartbeat", "c"],
            &[("RATE_LIMIT_HEARTBEATS_PER_MIN", "abc")],
            "\"abc\"",
        ),
        (
            &["check", "heartbeat", "c"],
            &[("RATE_LIMIT_FAILURE_MODE", "maybe")],
            "RATE_LIMIT_FAILURE_MODE must be one of open, closed, local",
        ),
        (
            &["check", "heartbeat", "c"],
            &[("RATE_LIMIT_TIMEOUT_MS", "-5")],
            "RATE_LIMIT_TIMEOUT_MS",
        ),
        (
            &["check", "heartbeat", "c"],
            &[("RATE_LIMIT_TABLE_NAME", "no spaces")],
            "RATE_LIMIT_TABLE_NAME",
        ),
        (&["--table", "x", "check", "heartbeat", "c"], &[], "--table"),
        (
            &["check", "heartbeat", "c"],
            &[("RATE_LIMIT_SHADOW_MODE", "on")],
            "RATE_LIMIT_SHADOW_MODE must be one of true, false",
        ),
        (
            &["--store", "memory", "create-table"],
            &[],
            "create-table needs",
        ),
        (&["--store", "memory", "migrate"], &[], "migrate needs"),
        (
            &["--config", "missing.toml", "policies"],
            &[],
            "missing.toml: cannot read the configuration file",
        ),
        (
            &["check", "heartbeat", "c"],
            &[("RATE_LIMIT_CONFIG", "missing.toml")],
            "missing.toml: cannot read",
        ),
        (
            &["check", "heartbeat", "c"],
            &[("RATE_LIMIT_KEY_SECRET", "too short")],
            "RATE_LIMIT_KEY_SECRET must be at least 32 bytes, got 9 bytes",
        ),
        (
            &[
                "--endpoint-url",
                "http://127.0.0.1:9",
                "check",
                "heartbeat",
                "c",
            ],
            &[],
            "not to the embedded store",
        ),
    ];
    for (args, env, expected) in cases {
        let mut command = ratelimit(dir.path());
        command.args(*args).envs(env.iter().copied());
        let output = run(&mut command);
        assert_eq!(code(&output), 2, "{args:?} {env:?}: {}", stderr(&output));
        assert!(output.stdout.is_empty(), "{args:?}: nothing on stdout");
        assert!(
            stderr(&output).contains(expected),
            "{args:?} {env:?}: {}",
            stderr(&output)
        );
    }
}

#[test]
fn many_processes_at_once_never_admit_more_than_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    // Create the data dir first, then start 30 processes at once on one key;
    // the limit is 10 per hour, so no token comes back during the test.
    assert_eq!(
        code(&run(ratelimit(dir.path()).args([
            "status",
            "heartbeat",
            "warm-up"
        ]))),
        0
    );
    let children: Vec<_> = (0..30)
        .map(|_| {
            ratelimit(dir.path())
                .env("RATE_LIMIT_SESSIONS_PER_HOUR", "10")
                .args(["check", "session-create", "user-1"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("the binary starts")
        })
        .collect();
    let outputs: Vec<Output> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let allowed = outputs.iter().filter(|o| code(o) == 0).count();
    let limited = outputs.iter().filter(|o| code(o) == 1).count();
    assert_eq!(
        (allowed, limited),
        (10, 20),
        "{:?}",
        outputs.iter().map(stderr).collect::<Vec<_>>()
    );
    assert!(outputs.iter().all(|o| json(o)["degraded"] == false));
}

#[test]
fn the_dynamodb_store_talks_to_an_endpoint() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let endpoint = runtime.block_on(ratelimiter_testing::dynoxide());
    let dir = tempfile::tempdir().unwrap();
    let dynamodb = |args: &[&str]| {
        run(ratelimit(dir.path())
            .env("RATE_LIMIT_TIMEOUT_MS", "5000")
            .args([
                "--store",
                "dynamodb",
                "--endpoint-url",
                &endpoint,
                "--table",
                "Limits",
            ])
            .args(args))
    };
    let created = dynamodb(&["create-table"]);
    assert_eq!(code(&created), 0, "{}", stderr(&created));
    assert_eq!(json(&created)["table"], "Limits");
    assert_eq!(code(&dynamodb(&["create-table"])), 0, "idempotent");
    for expected in [0, 0, 1] {
        let output = dynamodb(&["check", "heartbeat", "c"]);
        assert_eq!(code(&output), expected, "{}", stderr(&output));
        assert_eq!(json(&output)["degraded"], false);
    }
    assert_eq!(json(&dynamodb(&["status", "heartbeat", "c"]))["count"], 2);

    // A table that does not exist: check fails open, status fails with status 3.
    let output = run(ratelimit(dir.path())
        .env("RATE_LIMIT_TIMEOUT_MS", "5000")
        .args([
            "--store",
            "dynamodb",
            "--endpoint-url",
            &endpoint,
            "--table",
            "Missing",
            "check",
            "heartbeat",
            "c",
        ]));
    assert_eq!(code(&output), 0);
    assert_eq!(json(&output)["degraded"], true);
    assert!(stderr(&output).contains("fail open"), "{}", stderr(&output));
    let output = run(ratelimit(dir.path()).args([
        "--store",
        "dynamodb",
        "--endpoint-url",
        &endpoint,
        "--table",
        "Missing",
        "status",
        "heartbeat",
        "c",
    ]));
    assert_eq!(code(&output), 3, "{}", stderr(&output));
    assert!(
        stderr(&output).contains("ResourceNotFoundException"),
        "{}",
        stderr(&output)
    );
    drop(runtime);
}

#[test]
fn invoke_runs_a_handler_on_an_event_file() {
    let dir = tempfile::tempdir().unwrap();
    let event = serde_json::json!({
        "requestContext": {
            "routeKey": "$connect", "eventType": "CONNECT", "stage": "prod",
            "connectedAt": 1_699_500_123_456i64, "requestTimeEpoch": 1_699_500_123_456i64,
            "identity": {"sourceIp": "203.0.113.9"}, "connectionId": "abc=",
            "domainName": "example.execute-api.us-east-1.amazonaws.com", "messageId": null
        }
    });
    std::fs::write(dir.path().join("connect.json"), event.to_string()).unwrap();
    let invoke = || {
        run(ratelimit(dir.path())
            .env("RATE_LIMIT_LISTENER_JOINS_PER_MIN", "1")
            .args(["invoke", "connect", "connect.json"]))
    };
    let first = invoke();
    assert_eq!(code(&first), 0, "{}", stderr(&first));
    assert_eq!(json(&first)["statusCode"], 200);
    let second = invoke();
    let response = json(&second);
    assert_eq!(response["statusCode"], 429);
    assert_eq!(response["headers"]["retry-after"], "60");
    let body: Value = serde_json::from_str(response["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["details"]["retryAfter"], 60);

    // From standard input, a malformed event gets the handler's 400.
    let mut child = ratelimit(dir.path())
        .args(["invoke", "connect", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"{\"headers\": {}}").unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(json(&output)["statusCode"], 400);

    // A file that is not JSON is a usage error.
    std::fs::write(dir.path().join("bad.json"), "not json").unwrap();
    let output = run(ratelimit(dir.path()).args(["invoke", "heartbeat", "bad.json"]));
    assert_eq!(code(&output), 2);
    assert!(stderr(&output).contains("not JSON"), "{}", stderr(&output));
}

#[test]
fn shadow_mode_never_denies() {
    let dir = tempfile::tempdir().unwrap();
    for _ in 0..4 {
        let output = run(ratelimit(dir.path())
            .env("RATE_LIMIT_SHADOW_MODE_HEARTBEAT", "true")
            .args(["check", "heartbeat", "c"]));
        assert_eq!(code(&output), 0, "{}", stderr(&output));
        assert_eq!(json(&output)["allowed"], true);
    }
    let output = run(ratelimit(dir.path()).args(["check", "heartbeat", "c"]));
    assert_eq!(
        code(&output),
        1,
        "out of shadow mode the same key is limited"
    );
}

const LIMITS: &str = r#"
[policy.send_message]
key = "connection"
limits = ["3/10s", "100/min"]

[policy.api_calls]
key = "tenant"
limits = ["2/min"]

[policy.api_calls.tier.pro]
limits = ["5/min"]

[route.sendMessage]
policies = ["send_message"]

[connect]
speaker = ["api_calls"]
"#;

#[test]
fn policies_from_a_file_are_checked_listed_and_enforced() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("limits.toml"), LIMITS).unwrap();
    let with_config = |args: &[&str]| {
        run(ratelimit(dir.path())
            .args(["--store", "memory", "--config", "limits.toml"])
            .args(args))
    };

    let listed = with_config(&["policies"]);
    assert_eq!(code(&listed), 0, "{}", stderr(&listed));
    let policies = json(&listed)["policies"].as_array().unwrap().clone();
    let names: Vec<_> = policies
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "session_create",
            "listener_join",
            "connection_attempt",
            "heartbeat",
            "api_calls",
            "send_message"
        ]
    );
    let send = &policies[5];
    assert_eq!(send["key"], "connection");
    assert_eq!(send["limits"], serde_json::json!(["3/10s", "100/min"]));
    assert_eq!(policies[4]["tiers"]["pro"], serde_json::json!(["5/min"]));
    assert_eq!(send["unit"], "requests");
    assert_eq!(
        send["batch"], "auto",
        "hot keys served from batches, by default"
    );
    assert_eq!(
        json(&listed)["routes"],
        serde_json::json!({"sendMessage": ["send_message"]})
    );
    assert_eq!(
        json(&listed)["connect"],
        serde_json::json!({
            "every": ["connection_attempt"],
            "speaker": ["session_create", "api_calls"],
            "listener": ["listener_join"]
        })
    );

    // Two limits: the check reports the tightest and every limit.
    let output = with_config(&["check", "send-message", "conn-1", "--cost", "3"]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let value = json(&output);
    assert_eq!(
        (value["limit"].as_u64(), value["remaining"].as_u64()),
        (Some(3), Some(0))
    );
    assert_eq!(value["limits"][1]["limit"], 100);
    assert_eq!(value["limits"][1]["remaining"], 97);
    assert_eq!(value["limits"][1]["window_duration"], 60);

    // A tier, from the command line.
    let output = with_config(&["check", "api_calls", "acme", "--tier", "pro", "--cost", "5"]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    assert_eq!(json(&output)["limit"], 5);

    // `config check` validates a file and prints what it gives.
    let output = run(ratelimit(dir.path()).args(["config", "check", "limits.toml"]));
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    assert_eq!(json(&output)["valid"], true);
    assert_eq!(json(&output)["policies"].as_array().unwrap().len(), 6);
    std::fs::write(
        dir.path().join("bad.toml"),
        "[policy.a]\nkey = \"ip\"\nlimits = [\"5/fortnight\"]\n",
    )
    .unwrap();
    let output = run(ratelimit(dir.path()).args(["config", "check", "bad.toml"]));
    assert_eq!(code(&output), 2);
    assert!(output.stdout.is_empty());
    assert!(
        stderr(&output).contains("bad.toml:3: "),
        "{}",
        stderr(&output)
    );
    assert!(
        stderr(&output).contains("unknown unit"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn config_check_reads_only_the_file_it_names() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("fixed.toml"), LIMITS).unwrap();
    std::fs::write(
        dir.path().join("broken.toml"),
        "[policy.a]\nkey = \"ip\"\nlimits = [\"5/fortnight\"]\n",
    )
    .unwrap();
    // The file in force for other commands is broken, in the environment
    // or on the command line: `config check` is how one checks a fix
    // before pointing either at it, so only its own file counts.
    let from_env = run(ratelimit(dir.path())
        .env("RATE_LIMIT_CONFIG", "broken.toml")
        .args(["config", "check", "fixed.toml"]));
    let from_flag = run(ratelimit(dir.path()).args([
        "--config",
        "broken.toml",
        "config",
        "check",
        "fixed.toml",
    ]));
    for output in [from_env, from_flag] {
        assert_eq!(code(&output), 0, "{}", stderr(&output));
        let value = json(&output);
        assert_eq!(value["file"], "fixed.toml");
        assert_eq!(value["valid"], true);
        assert_eq!(value["policies"].as_array().unwrap().len(), 6);
    }
    // The file it names still gets the environment's overrides.
    let output = run(ratelimit(dir.path())
        .env("RATE_LIMIT_HEARTBEATS_PER_MIN", "7")
        .args(["config", "check", "fixed.toml"]));
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    assert_eq!(
        json(&output)["policies"][3]["limits"],
        serde_json::json!(["7/min"])
    );
}

#[test]
fn the_first_dynamodb_call_gets_the_connect_timeout_more() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let proxy = runtime.block_on(async {
        ratelimiter_testing::faults::FaultProxy::start(&ratelimiter_testing::dynoxide().await).await
    });
    let dir = tempfile::tempdir().unwrap();
    let dynamodb = |timeout_ms: &str, args: &[&str]| {
        run(ratelimit(dir.path())
            .env("RATE_LIMIT_TIMEOUT_MS", timeout_ms)
            .args([
                "--store",
                "dynamodb",
                "--endpoint-url",
                proxy.endpoint(),
                "--table",
                "Limits",
            ])
            .args(args))
    };
    let created = dynamodb("5000", &["create-table"]);
    assert_eq!(code(&created), 0, "{}", stderr(&created));
    // Every call now takes 300 ms more than the 100 ms a call may take.
    // Each run of the command is a new process, so its call is a first
    // call: with the default connect timeout (1 s) added, it is answered.
    proxy.set(ratelimiter_testing::faults::Fault::Stall(
        std::time::Duration::from_millis(300),
    ));
    let output = dynamodb("100", &["check", "heartbeat", "c"]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let value = json(&output);
    assert_eq!(value["degraded"], false, "{value} {}", stderr(&output));
    assert_eq!(value["remaining"], 1);
    // With the least connect timeout (1 ms) the same call times out and
    // fails open: without the connect timeout, the stall is too long.
    let output = run(ratelimit(dir.path())
        .env("RATE_LIMIT_TIMEOUT_MS", "100")
        .env("RATE_LIMIT_CONNECT_TIMEOUT_MS", "1")
        .args([
            "--store",
            "dynamodb",
            "--endpoint-url",
            proxy.endpoint(),
            "--table",
            "Limits",
            "check",
            "heartbeat",
            "c",
        ]));
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    assert_eq!(json(&output)["degraded"], true, "{}", stderr(&output));
    drop(runtime);
}

#[test]
fn status_shows_every_limit_of_a_policy() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("limits.toml"), LIMITS).unwrap();
    let env = [("RATE_LIMIT_CONFIG", "limits.toml")];
    for _ in 0..2 {
        let output = run(ratelimit(dir.path())
            .envs(env)
            .args(["check", "send_message", "c"]));
        assert_eq!(code(&output), 0, "{}", stderr(&output));
    }
    let output = run(ratelimit(dir.path())
        .envs(env)
        .args(["status", "send_message", "c"]));
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let value = json(&output);
    // The seed's fields for the fullest bucket, and every bucket's.
    assert_eq!(
        (value["count"].as_u64(), value["limit"].as_u64()),
        (Some(2), Some(3))
    );
    let limits = value["limits"].as_array().unwrap();
    assert_eq!(limits.len(), 2);
    assert_eq!(limits[0]["window_duration"], 10);
    assert_eq!(limits[1]["count"], 2);
    assert_eq!(limits[1]["limit"], 100);
    assert_eq!(limits[1]["window_duration"], 60);
}

#[test]
fn caps_are_listed_with_their_seats_and_their_status() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("limits.toml"),
        "[policy.open_per_ip]\nkey = \"ip\"\nconcurrent = 2\n[connect]\npolicies = [\"open_per_ip\"]\n",
    )
    .unwrap();
    let with_config = |args: &[&str]| {
        run(ratelimit(dir.path())
            .args(["--store", "memory", "--config", "limits.toml"])
            .args(args))
    };
    let listed = with_config(&["policies"]);
    assert_eq!(code(&listed), 0, "{}", stderr(&listed));
    let cap = json(&listed)["policies"][4].clone();
    assert!(
        cap.get("batch").is_none(),
        "a cap's seats are never batched"
    );
    assert_eq!(
        (
            &cap["name"],
            &cap["unit"],
            &cap["concurrent"],
            &cap["lease_secs"]
        ),
        (
            &serde_json::json!("open_per_ip"),
            &serde_json::json!("connections"),
            &serde_json::json!(2),
            &serde_json::json!(7500)
        )
    );
    assert_eq!(
        json(&listed)["connect"]["every"],
        serde_json::json!(["connection_attempt", "open_per_ip"])
    );
    // `check` takes no seat: a seat is a connection's.
    let check = with_config(&["check", "open_per_ip", "192.0.2.1"]);
    assert_eq!(code(&check), 2, "{}", stderr(&check));
    assert!(stderr(&check).contains("is a cap"), "{}", stderr(&check));
    // A cap's status: its seats held, out of N; reset gives them back.
    let status = with_config(&["status", "open_per_ip", "192.0.2.1"]);
    assert_eq!(code(&status), 0, "{}", stderr(&status));
    assert_eq!(
        (&json(&status)["count"], &json(&status)["limit"]),
        (&serde_json::json!(0), &serde_json::json!(2))
    );
    let reset = with_config(&["reset", "open_per_ip", "192.0.2.1"]);
    assert_eq!(code(&reset), 0, "{}", stderr(&reset));
}

#[test]
fn soft_rejection_lists_its_mark_and_a_bad_mode_or_a_taken_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // Soft: the mark is a policy like any, listed with its one token per
    // lease lifetime, counted per connection.
    let listed = run(ratelimit(dir.path())
        .args(["--store", "memory", "policies"])
        .env("RATE_LIMIT_CONNECT_REJECT", "soft"));
    assert_eq!(code(&listed), 0, "{}", stderr(&listed));
    let policies = json(&listed)["policies"].as_array().unwrap().clone();
    let mark = policies
        .iter()
        .find(|p| p["name"] == "connection_refused")
        .expect("the mark's policy is listed");
    assert_eq!(mark["key"], "connection", "{mark}");
    let hard = run(ratelimit(dir.path()).args(["--store", "memory", "policies"]));
    assert!(
        !json(&hard)["policies"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "connection_refused"),
        "hard by default: no mark"
    );
    // Anything but hard or soft stops `serve` before it listens.
    let bad = run(ratelimit(dir.path())
        .args(["--store", "memory", "serve", "--listen", "127.0.0.1:0"])
        .env("RATE_LIMIT_CONNECT_REJECT", "polite"));
    assert_eq!(code(&bad), 2, "{}", stderr(&bad));
    assert!(
        stderr(&bad)
            .contains(r#"RATE_LIMIT_CONNECT_REJECT must be one of hard or soft, got "polite""#),
        "{}",
        stderr(&bad)
    );
    // A configuration's own policy of that name is not replaced.
    std::fs::write(
        dir.path().join("limits.toml"),
        "[policy.connection_refused]\nkey = \"ip\"\nlimits = [\"5/min\"]\n",
    )
    .unwrap();
    let taken = run(ratelimit(dir.path())
        .args(["--store", "memory", "--config", "limits.toml", "policies"])
        .env("RATE_LIMIT_CONNECT_REJECT", "soft"));
    assert_eq!(code(&taken), 2, "{}", stderr(&taken));
    assert!(stderr(&taken).contains("reserves"), "{}", stderr(&taken));
}

#[test]
fn plan_prints_the_bill_of_the_seeds_limits_for_100_000_connections() {
    let dir = tempfile::tempdir().unwrap();
    let output = run(ratelimit(dir.path()).args(["plan", "--connections", "100000"]));
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let text = String::from_utf8_lossy(&output.stdout);
    // The worked example of docs/operations.md (the arithmetic is checked
    // by hand in the plan module's tests).
    for line in [
        "13.9 connects/s",
        "heartbeat                              3333.3     1.12       3733.3       3733.3  connection item at its rate",
        "total                                                        3747.2       3747.2",
        "on-demand:   $     6154.81",
        "provisioned: $     2540.47  (5354 WCU, 70% utilised",
        "hot keys: none",
    ] {
        assert!(text.contains(line), "{line:?} is missing from:\n{text}");
    }
    // The heartbeat limit comes from the environment, and with it whether
    // clients at 2/min are at their rate.
    let output = run(ratelimit(dir.path())
        .env("RATE_LIMIT_HEARTBEATS_PER_MIN", "4")
        .args(["plan", "--connections", "100000"]));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("heartbeat                              6666.7     1.12"),
        "{text}"
    );
    let output = run(ratelimit(dir.path())
        .env("RATE_LIMIT_HEARTBEATS_PER_MIN", "4")
        .args(["plan", "--connections", "100000", "--heartbeat", "2/min"]));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("heartbeat                              3333.3     1.00"),
        "{text}"
    );
    // Bad traffic: status 2 and the reason.
    for (args, message) in [
        (
            vec!["plan", "--connections", "10", "--route", "chat=1/s"],
            "the configuration limits no route \"chat\" (its routes: none)",
        ),
        (
            vec!["plan", "--connections", "10", "--lifetime", "2d"],
            "is not a duration: write a whole number of ms, s, min or h",
        ),
        (
            vec!["plan", "--connections", "10", "--heartbeat", "2/fortnight"],
            "unknown unit",
        ),
        (
            vec!["plan", "--connections", "10", "--speakers", "2"],
            "--speakers must be a share from 0 to 1, got 2",
        ),
    ] {
        let output = run(ratelimit(dir.path()).args(&args));
        assert_eq!(code(&output), 2, "{args:?}");
        assert!(
            stderr(&output).contains(message),
            "{args:?}: {}",
            stderr(&output)
        );
    }
}
