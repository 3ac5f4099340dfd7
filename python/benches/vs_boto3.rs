//! The Python package against a boto3 implementation of the guide, and
//! against the Rust service, on one DynamoDB-API server (dynoxide over
//! loopback) in one run: store calls per decision and p50/p99 latency for
//! a new key, a busy key and a repeated denial; and the package's import
//! time.
//!
//! `cargo bench -p ratelimiter-python --bench vs_boto3`
//!
//! The package is built as a user's `pip install ./python` builds it
//! (release), in a virtual environment with boto3, under the target
//! folder. The package and the Rust service are compared on equal terms:
//! each in a process of its own (the Rust side is this bench run again),
//! in alternating runs of `ROUNDS / REPEATS` decisions per case, so that
//! a slow spell of the machine falls on both. The Rust service is also
//! measured in the server's process, for reference.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ratelimiter::{Builder, Config, Request};
use ratelimiter_dynamodb::{ClientOptions, DynamoDbStore, client};
use serde_json::{Value, json};

#[path = "../tests/venv.rs"]
mod venv;

use venv::{Venv, run};

/// Decisions per case and side.
const ROUNDS: usize = 1000;
/// Alternating runs of the package and the Rust service they are split in.
const REPEATS: usize = 5;

const CASES: [&str; 3] = ["new key", "busy key", "repeated denial"];

const CONFIG: &str = "[policy.busy]\nkey = \"connection\"\nlimits = [\"100000/min\"]\n";

/// Set in the Rust side's own process: the server's endpoint.
const OWN_PROCESS: &str = "VS_BOTO3_RUST_ENDPOINT";

/// The three cases on the Rust service of `store`, `rounds` decisions
/// each, with keys under `prefix`: per case, as the Python side prints
/// it, `{"calls": n, "times_us": [...]}`.
async fn measure_rust(store: DynamoDbStore, rounds: usize, prefix: &str) -> Value {
    let config = Config::from_file_text("limits.toml", CONFIG, |_| None).expect("a valid file");
    let limiter = Builder::from_config(config).build(store);
    let attempt = limiter.policy_id("connection_attempt").unwrap();
    let busy = limiter.policy_id("busy").unwrap();
    let heartbeat = limiter.policy_id("heartbeat").unwrap();
    for i in 0..50 {
        limiter
            .decide((attempt, format!("{prefix}warm-{i}").as_str()))
            .await
            .unwrap();
    }
    let spent = format!("{prefix}spent");
    for _ in 0..2 {
        limiter.decide((heartbeat, spent.as_str())).await.unwrap();
    }
    let mut cases = serde_json::Map::new();
    for (name, policy) in CASES.into_iter().zip([attempt, busy, heartbeat]) {
        let (mut times, mut calls) = (Vec::with_capacity(rounds), 0);
        for i in 0..rounds {
            let key = match name {
                "new key" => format!("{prefix}new-{i}"),
                "busy key" => format!("{prefix}busy"),
                _ => spent.clone(),
            };
            let started = Instant::now();
            let verdict = limiter
                .decide(Request::from((policy, key.as_str())))
                .await
                .unwrap();
            times.push(started.elapsed().as_secs_f64() * 1e6);
            calls += verdict.calls;
            assert_eq!(verdict.allowed(), name != "repeated denial", "{name}");
        }
        cases.insert(name.into(), json!({"calls": calls, "times_us": times}));
    }
    Value::Object(cases)
}

fn runtime() -> tokio::runtime::Runtime {
    // As the package's: two workers.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn store(endpoint: &str) -> DynamoDbStore {
    DynamoDbStore::new(
        client(&ClientOptions::local(endpoint, Duration::from_secs(5))).await,
        "RateLimits",
    )
}

/// Every decision's time and the calls, of one side, over its runs.
#[derive(Default)]
struct Side {
    times: Vec<f64>,
    calls: f64,
}

impl Side {
    fn add(&mut self, sample: &Value) {
        let times = sample["times_us"].as_array().expect("times_us");
        self.times
            .extend(times.iter().map(|t| t.as_f64().expect("a time")));
        self.calls += sample["calls"].as_f64().expect("calls");
    }

    /// Calls per decision, p50 and p99 in µs.
    fn row(&self) -> (f64, f64, f64) {
        let mut times = self.times.clone();
        times.sort_by(f64::total_cmp);
        (
            self.calls / times.len() as f64,
            times[times.len() / 2],
            times[times.len() * 99 / 100],
        )
    }
}

fn main() {
    let rounds = |default: usize| {
        std::env::var("ROUNDS")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(default)
    };
    if let Ok(endpoint) = std::env::var(OWN_PROCESS) {
        let prefix = std::env::var("PREFIX").unwrap_or_default();
        let cases = runtime().block_on(async {
            measure_rust(store(&endpoint).await, rounds(ROUNDS), &prefix).await
        });
        println!("{cases}");
        return;
    }
    let runtime = runtime();
    let package = Path::new(env!("CARGO_MANIFEST_DIR"));
    let scratch = Path::new(env!("CARGO_TARGET_TMPDIR")).join("vs-boto3");
    std::fs::create_dir_all(&scratch).unwrap();
    let config_file = scratch.join("limits.toml");
    std::fs::write(&config_file, CONFIG).unwrap();
    let venv = Venv::with_package(&scratch.join("venv"), &["boto3>=1.35,<2"], None);

    // The server, and the Rust service in its process; its store makes the
    // table.
    let (endpoint, in_process) = runtime.block_on(async {
        let endpoint = ratelimiter_testing::dynoxide().await;
        let store = store(&endpoint).await;
        store.create_table().await.unwrap();
        let cases = measure_rust(store, ROUNDS, "in-").await;
        (endpoint, cases)
    });
    let aws = |command: &mut Command| {
        command
            .env("AWS_ENDPOINT_URL_DYNAMODB", &endpoint)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "bench")
            .env("AWS_SECRET_ACCESS_KEY", "bench")
            .env("AWS_EC2_METADATA_DISABLED", "true");
    };
    let python = |sides: &str, rounds: usize, prefix: &str, imports: bool| -> Value {
        let mut command = Command::new(venv.bin("python"));
        command
            .arg(package.join("benches/vs_boto3.py"))
            .current_dir(&scratch)
            .env("SIDES", sides)
            .env("ROUNDS", rounds.to_string())
            .env("PREFIX", prefix)
            .env("IMPORTS", if imports { "1" } else { "0" })
            .env("RATE_LIMIT_TIMEOUT_MS", "5000")
            .env("RATE_LIMIT_CONFIG", &config_file);
        aws(&mut command);
        let printed = run("the Python side (vs_boto3.py)", &mut command);
        serde_json::from_str(printed.trim()).expect("one JSON object")
    };

    let mut sides: BTreeMap<(&str, &str), Side> = BTreeMap::new();
    for case in CASES {
        sides
            .entry((case, "rust, in the server's process"))
            .or_default()
            .add(&in_process[case]);
    }
    for repeat in 0..REPEATS {
        let mut own = Command::new(std::env::current_exe().expect("the bench knows its path"));
        own.env(OWN_PROCESS, &endpoint)
            .env("ROUNDS", (ROUNDS / REPEATS).to_string())
            .env("PREFIX", format!("own-{repeat}-"));
        aws(&mut own);
        let printed = run("the Rust side in its own process", &mut own);
        let own: Value = serde_json::from_str(printed.trim()).expect("one JSON object");
        let ours = python(
            "ratelimiter",
            ROUNDS / REPEATS,
            &format!("py-{repeat}-"),
            false,
        );
        for case in CASES {
            sides
                .entry((case, "rust, own process"))
                .or_default()
                .add(&own[case]);
            sides
                .entry((case, "ratelimiter"))
                .or_default()
                .add(&ours[case]["ratelimiter"]);
        }
    }
    let boto = python("boto3", ROUNDS, "boto-", true);
    for case in CASES {
        sides
            .entry((case, "boto3"))
            .or_default()
            .add(&boto[case]["boto3"]);
    }

    println!(
        "{:<16} {:<30} {:>8} {:>10} {:>10}",
        "case", "side", "calls", "p50 µs", "p99 µs"
    );
    for case in CASES {
        for side in [
            "rust, in the server's process",
            "rust, own process",
            "ratelimiter",
            "boto3",
        ] {
            let (calls, p50, p99) = sides[&(case, side)].row();
            println!("{case:<16} {side:<30} {calls:>8.2} {p50:>10.1} {p99:>10.1}");
        }
        let ratio =
            sides[&(case, "ratelimiter")].row().1 / sides[&(case, "rust, own process")].row().1;
        println!("{case:<16} package / rust (own process), p50: {ratio:.2}");
    }
    println!(
        "import ratelimiter: p50 {:.1} ms, max {:.1} ms (python -X importtime, 20 fresh interpreters)",
        boto["import ms"]["p50"].as_f64().unwrap(),
        boto["import ms"]["max"].as_f64().unwrap()
    );
}
