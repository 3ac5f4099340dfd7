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
//! configuration file; the `cap` rows a cap of two open connections per
//! address (`concurrent = 2`) instead. `$disconnect` gives back the seats
//! of the `listener, cap` row's connections; `listener, full cap` is the
//! third connection from addresses holding two (refused; the handler has
//! no Management API, so no repair). `listener, soft` is a connection
//! rejected softly (`RATE_LIMIT_CONNECT_REJECT=soft`): refused by its
//! attempts, marked, its follow-up scheduled; `listener, told` the same
//! client connecting again before its `retryAfter`, refused hard.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lambda_runtime::{Context, LambdaEvent};
use ratelimiter::{Builder, Config};
use ratelimiter_dynamodb::{ClientOptions, DynamoDbStore, client};
use ratelimiter_lambda::connect::ConnectHandler;
use ratelimiter_lambda::disconnect::DisconnectHandler;
use ratelimiter_lambda::management::{ConnectionSender, SendError};
use ratelimiter_lambda::soft::{self, ConnectReject, FollowUp, SoftReject};
use serde_json::{Value, json};

const CONNECTS: usize = 2000;

fn event(ip: &str, user: Option<&str>) -> LambdaEvent<Value> {
    event_of(ip, user, "L0SM9cOFvHcCIhw=", 1_699_500_123_456)
}

fn event_of(
    ip: &str,
    user: Option<&str>,
    connection: &str,
    connected_at: u64,
) -> LambdaEvent<Value> {
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
            "connectedAt": connected_at,
            "requestTimeEpoch": connected_at,
            "identity": {"sourceIp": ip},
            "requestId": "r",
            "domainName": "abc123.execute-api.us-east-1.amazonaws.com",
            "connectionId": connection,
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
        let capped_config = Config::from_file_text(
            "bench.toml",
            "[policy.open]\nkey = \"ip\"\nconcurrent = 2\n[connect]\npolicies = [\"open\"]\n",
            |_| None,
        )
        .unwrap();
        let third_store = DynamoDbStore::new(configured.store().client().clone(), "RateLimits");
        let capped = Arc::new(Builder::from_config(capped_config).build(third_store));
        let capped_handler = ConnectHandler::new(capped.clone());
        let disconnect = DisconnectHandler::new(capped.clone());
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
        // Caps: seats taken, given back, and refused.
        let since = capped.now_ms();
        let row = |name: &str, calls: u64, latencies: &mut Vec<Duration>| {
            latencies.sort();
            println!(
                "{name:<20} {:>10.2} {:>10.1} {:>10.1}",
                calls as f64 / CONNECTS as f64,
                latencies[CONNECTS / 2].as_secs_f64() * 1e6,
                latencies[CONNECTS * 99 / 100].as_secs_f64() * 1e6,
            );
        };
        for (round, (name, speaker)) in [("listener, cap", false), ("speaker, cap", true)]
            .into_iter()
            .enumerate()
        {
            let calls_before = capped.store().calls();
            let mut latencies = Vec::with_capacity(CONNECTS);
            for i in 0..CONNECTS {
                let ip = format!("10.{}.{}.{}", 20 + round, i / 256, i % 256);
                let user = format!("cap-{round}-{i}");
                let id = format!("{round}-{i}");
                let event = event_of(&ip, speaker.then_some(user.as_str()), &id, since);
                let started = Instant::now();
                let response = capped_handler.handle(event).await.unwrap();
                latencies.push(started.elapsed());
                assert_eq!(response.status_code, 200);
            }
            row(name, capped.store().calls() - calls_before, &mut latencies);
        }
        let calls_before = capped.store().calls();
        let mut latencies = Vec::with_capacity(CONNECTS);
        for i in 0..CONNECTS {
            let ip = format!("10.20.{}.{}", i / 256, i % 256);
            let mut event = event_of(&ip, None, &format!("0-{i}"), since);
            event.payload["requestContext"]["routeKey"] = json!("$disconnect");
            event.payload["requestContext"]["eventType"] = json!("DISCONNECT");
            let started = Instant::now();
            let response = disconnect.handle(event).await.unwrap();
            latencies.push(started.elapsed());
            assert_eq!(response.status_code, 200);
        }
        row("$disconnect", capped.store().calls() - calls_before, &mut latencies);
        // Two seats taken per address (not measured), then the third.
        let mut calls = 0;
        let mut latencies = Vec::with_capacity(CONNECTS);
        for i in 0..CONNECTS {
            let ip = format!("10.30.{}.{}", i / 256, i % 256);
            for n in 0..2 {
                let event = event_of(&ip, None, &format!("full-{i}-{n}"), since);
                assert_eq!(capped_handler.handle(event).await.unwrap().status_code, 200);
            }
            let calls_before = capped.store().calls();
            let event = event_of(&ip, None, &format!("full-{i}-2"), since);
            let started = Instant::now();
            let response = capped_handler.handle(event).await.unwrap();
            latencies.push(started.elapsed());
            calls += capped.store().calls() - calls_before;
            assert_eq!(response.status_code, 429);
        }
        row("listener, full cap", calls, &mut latencies);
        // Soft rejection: one attempt a minute per address; the second is
        // rejected softly (the refusal, then the mark), the third, from a
        // client told, hard. The follow-up is counted, not run.
        let mut soft_config =
            Config::from_lookup(|var| (var == "RATE_LIMIT_CONNECTION_ATTEMPTS_PER_MIN").then(|| "1".into()))
                .unwrap();
        ConnectReject::Soft.apply(&mut soft_config.policies).unwrap();
        let fourth_store = DynamoDbStore::new(capped.store().client().clone(), "RateLimits");
        let soft = Arc::new(Builder::from_config(soft_config).build(fourth_store));
        let follow_ups = Arc::new(Scheduled::default());
        let soft_handler = ConnectHandler::new(soft.clone())
            .with_sender(Arc::new(Nowhere))
            .with_soft_rejection(follow_ups.clone())
            .unwrap();
        let (mut soft_calls, mut hard_calls) = (0, 0);
        let (mut soft_latencies, mut hard_latencies) = (Vec::new(), Vec::new());
        for i in 0..CONNECTS {
            let ip = format!("10.40.{}.{}", i / 256, i % 256);
            let first = event_of(&ip, None, &format!("soft-{i}-0"), since);
            assert_eq!(soft_handler.handle(first).await.unwrap().status_code, 200);
            for (n, status, calls, latencies) in [
                (1, 200, &mut soft_calls, &mut soft_latencies),
                (2, 429, &mut hard_calls, &mut hard_latencies),
            ] {
                let calls_before = soft.store().calls();
                let event = event_of(&ip, None, &format!("soft-{i}-{n}"), since);
                let started = Instant::now();
                let response = soft_handler.handle(event).await.unwrap();
                latencies.push(started.elapsed());
                *calls += soft.store().calls() - calls_before;
                assert_eq!(response.status_code, status);
            }
        }
        assert_eq!(follow_ups.0.load(Ordering::Relaxed), CONNECTS as u64);
        row("listener, soft", soft_calls, &mut soft_latencies);
        row("listener, told", hard_calls, &mut hard_latencies);
    });
}

/// A Management API that is never reached: the follow-ups are not run.
struct Nowhere;

impl ConnectionSender for Nowhere {
    async fn post(&self, _: &str, _: &str, _: Vec<u8>) -> Result<(), SendError> {
        Ok(())
    }

    async fn gone(&self, _: &str, _: &str) -> Result<bool, SendError> {
        Ok(false)
    }

    async fn delete(&self, _: &str, _: &str) -> Result<(), SendError> {
        Ok(())
    }
}

/// Counts the follow-ups scheduled.
#[derive(Default)]
struct Scheduled(AtomicU64);

impl FollowUp for Scheduled {
    fn schedule(&self, _: SoftReject) -> soft::Scheduled<'_> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Box::pin(async { Ok(()) })
    }
}
