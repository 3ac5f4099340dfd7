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
//! folder.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ratelimiter::{Builder, Config, Request};
use ratelimiter_dynamodb::{ClientOptions, DynamoDbStore, client};

#[path = "../tests/venv.rs"]
mod venv;

use venv::{Venv, run};

const ROUNDS: usize = 1000;

const CONFIG: &str = "[policy.busy]\nkey = \"connection\"\nlimits = [\"100000/min\"]\n";

/// p50 and p99 in µs, and calls per decision.
fn row(mut times: Vec<Duration>, calls: u32) -> (f64, f64, f64) {
    times.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    (
        calls as f64 / times.len() as f64,
        us(times[times.len() / 2]),
        us(times[times.len() * 99 / 100]),
    )
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let package = Path::new(env!("CARGO_MANIFEST_DIR"));
    let scratch = Path::new(env!("CARGO_TARGET_TMPDIR")).join("vs-boto3");
    std::fs::create_dir_all(&scratch).unwrap();
    let config_file = scratch.join("limits.toml");
    std::fs::write(&config_file, CONFIG).unwrap();
    let venv = Venv::with_package(&scratch.join("venv"), &["boto3>=1.35,<2"], None);

    // The Rust service, same server, same cases; its store makes the table.
    let (endpoint, rust) = runtime.block_on(async {
        let endpoint = ratelimiter_testing::dynoxide().await;
        let store = DynamoDbStore::new(
            client(&ClientOptions::local(&endpoint, Duration::from_secs(5))).await,
            "RateLimits",
        );
        store.create_table().await.unwrap();
        let config = Config::from_file_text("limits.toml", CONFIG, |_| None).expect("a valid file");
        let limiter = Builder::from_config(config).build(store);
        let attempt = limiter.policy_id("connection_attempt").unwrap();
        let busy = limiter.policy_id("busy").unwrap();
        let heartbeat = limiter.policy_id("heartbeat").unwrap();
        for i in 0..50 {
            limiter
                .decide((attempt, format!("warm-{i}").as_str()))
                .await
                .unwrap();
        }
        let mut rows = Vec::new();
        for (name, policy) in [
            ("new key", attempt),
            ("busy key", busy),
            ("repeated denial", heartbeat),
        ] {
            if name == "repeated denial" {
                for _ in 0..2 {
                    limiter.decide((heartbeat, "rust-spent")).await.unwrap();
                }
            }
            let (mut times, mut calls) = (Vec::with_capacity(ROUNDS), 0);
            for i in 0..ROUNDS {
                let key = match name {
                    "new key" => format!("rust-new-{i}"),
                    "busy key" => "rust-busy".to_owned(),
                    _ => "rust-spent".to_owned(),
                };
                let started = Instant::now();
                let verdict = limiter
                    .decide(Request::from((policy, key.as_str())))
                    .await
                    .unwrap();
                times.push(started.elapsed());
                calls += verdict.calls;
                assert_eq!(verdict.allowed(), name != "repeated denial", "{name}");
            }
            rows.push((name, row(times, calls)));
        }
        (endpoint, rows)
    });

    let printed = run(
        "the Python side (vs_boto3.py)",
        Command::new(venv.bin("python"))
            .arg(package.join("benches/vs_boto3.py"))
            .current_dir(&scratch)
            .env("ROUNDS", ROUNDS.to_string())
            .env("AWS_ENDPOINT_URL_DYNAMODB", &endpoint)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "bench")
            .env("AWS_SECRET_ACCESS_KEY", "bench")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("RATE_LIMIT_TIMEOUT_MS", "5000")
            .env("RATE_LIMIT_CONFIG", &config_file),
    );
    let python: serde_json::Value = serde_json::from_str(printed.trim()).expect("one JSON object");
    println!(
        "{:<16} {:<12} {:>8} {:>10} {:>10}",
        "case", "side", "calls", "p50 µs", "p99 µs"
    );
    for (name, (calls, p50, p99)) in &rust {
        println!(
            "{name:<16} {:<12} {calls:>8.2} {p50:>10.1} {p99:>10.1}",
            "rust"
        );
        for side in ["ratelimiter", "boto3"] {
            let numbers = &python[name][side];
            println!(
                "{name:<16} {side:<12} {:>8.2} {:>10.1} {:>10.1}",
                numbers["calls"].as_f64().unwrap(),
                numbers["p50_us"].as_f64().unwrap(),
                numbers["p99_us"].as_f64().unwrap()
            );
        }
    }
    println!(
        "import ratelimiter: p50 {:.1} ms, max {:.1} ms (python -X importtime, 20 fresh interpreters)",
        python["import ms"]["p50"].as_f64().unwrap(),
        python["import ms"]["max"].as_f64().unwrap()
    );
}
