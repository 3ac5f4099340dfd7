//! What one `$connect` costs on DynamoDB: calls and latency, for a listener
//! (connection attempt and listener join, both per IP) and a speaker
//! (connection attempt per IP, session creation per user), through the real
//! handler and the DynamoDB store on a release-built dynoxide over loopback.
//!
//! `cargo bench -p ratelimiter-lambda --bench connect`
//!
//! Each connect comes from a new address (and a new user), so every
//! decision is allowed and reaches the table, as most connects do. The
//! `[connect]` rows add a policy per address to everyone's check, from a
//! configuration file.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lambda_runtime::{Context, LambdaEvent};
use ratelimiter::{Builder, Config};
use ratelimiter_dynamodb::{ClientOptions, DynamoDbStore, client};
use ratelimiter_lambda::connect::ConnectHandler;
use serde_json::{Value, json};

const CONNECTS: usize = 2000;

fn event(ip: &str, user: Option<&str>) -> LambdaEvent<Value> {
    let authorizer = match user {
        Some(user) => json!({"userId": user}),
        None => json!({}),
    };
    let payload = json!({
        "isBase64Encoded": false,
        "requestContext": {
            "routeKey": "$connect",
            "eventType": "CONNECT",
            "stage": "prod",
            "connectedAt": 1_699_500_123_456i64,
            "requestTimeEpoch": 1_699_500_123_456i64,
            "identity": {"sourceIp": ip},
            "requestId": "r",
            "domainName": "abc123.execute-api.us-east-1.amazonaws.com",
            "connectionId": "L0SM9cOFvHcCIhw=",
            "apiId": "abc123",
            "authorizer": authorizer,
        }
    });
    LambdaEvent::new(payload, Context::default())
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let endpoint = ratelimiter_testing::dynoxide().await;
        let store = DynamoDbStore::new(
            client(&ClientOptions::local(&endpoint, Duration::from_secs(5))).await,
            "RateLimits",
        );
        store.create_table().await.unwrap();
        let second_store = DynamoDbStore::new(store.client().clone(), "RateLimits");
        let limiter = Arc::new(Builder::new().build(store));
        let handler = ConnectHandler::new(limiter.clone());
        let config = Config::from_file_text(
            "bench.toml",
            "[policy.hourly]\nkey = \"ip\"\nlimits = [\"100000/h\"]\n[connect]\npolicies = [\"hourly\"]\n",
            |_| None,
        )
        .unwrap();
        let configured = Arc::new(Builder::from_config(config).build(second_store));
        let configured_handler = ConnectHandler::new(configured.clone());
        println!(
            "{:<20} {:>10} {:>10} {:>10}",
            "connect", "calls", "p50 µs", "p99 µs"
        );
        for (round, (name, speaker)) in [
            ("warm-up", false),
            ("listener", false),
            ("speaker", true),
            ("listener, [connect]", false),
            ("speaker, [connect]", true),
        ]
        .into_iter()
        .enumerate()
        {
            let (handler, limiter) = if name.ends_with("[connect]") {
                (&configured_handler, &configured)
            } else {
                (&handler, &limiter)
            };
            let calls_before = limiter.store().calls();
            let mut latencies = Vec::with_capacity(CONNECTS);
            for i in 0..CONNECTS {
                let ip = format!("10.{round}.{}.{}", i / 256, i % 256);
                let user = format!("{round}-{i}");
                let event = event(&ip, speaker.then_some(user.as_str()));
                let started = Instant::now();
                let response = handler.handle(event).await.unwrap();
                latencies.push(started.elapsed());
                assert_eq!(response.status_code, 200);
            }
            if name == "warm-up" {
                continue;
            }
            latencies.sort();
            let calls = limiter.store().calls() - calls_before;
            println!(
                "{name:<20} {:>10.2} {:>10.1} {:>10.1}",
                calls as f64 / CONNECTS as f64,
                latencies[CONNECTS / 2].as_secs_f64() * 1e6,
                latencies[CONNECTS * 99 / 100].as_secs_f64() * 1e6,
            );
        }
    });
}
