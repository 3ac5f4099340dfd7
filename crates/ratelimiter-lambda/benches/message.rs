//! What one message on a limited route costs on DynamoDB: calls and
//! latency, through the real `MessageHandler` and the DynamoDB store on a
//! release-built dynoxide over loopback.
//!
//! `cargo bench -p ratelimiter-lambda --bench message`
//!
//! - `one policy`: a count per connection;
//! - `two, one item`: a count and a byte quota per connection;
//! - `two items`: a count per connection and one per user;
//! - `known denial`: messages on a connection whose count this container
//!   already knows to be spent;
//! - `one, forwarded`: as `one`, then the event handed to another function
//!   (`Forward`, an asynchronous `Invoke`) on a local stand-in of Lambda's
//!   API that answers 202 at once: what forwarding adds in this process,
//!   without the network to Lambda's service;
//! - `unlimited`: a route with no policy (no call);
//! - `soft: ...`: the same with soft rejection on
//!   (`RATE_LIMIT_CONNECT_REJECT=soft`), each message probing its
//!   connection's mark; `soft: marked`, messages of a softly rejected
//!   connection, refused.
//!
//! Allowed messages each come from a new connection (and user), so every
//! decision reaches the table.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lambda_runtime::{Context, LambdaEvent};
use ratelimiter::{Builder, Config, Request};
use ratelimiter_dynamodb::{ClientOptions, DynamoDbStore, client};
use ratelimiter_lambda::forward::Forward;
use ratelimiter_lambda::management::{ConnectionSender, SendError};
use ratelimiter_lambda::message::MessageHandler;
use ratelimiter_lambda::soft::{ConnectReject, mark_of};
use serde_json::{Value, json};

const MESSAGES: usize = 2000;

const CONFIG: &str = r#"
[policy.messages]
key = "connection"
limits = ["5/s", "100/min"]

[policy.message_bytes]
key = "connection"
unit = "bytes"
limits = ["64000/min"]

[policy.user_messages]
key = "user"
limits = ["100/min"]

[route.one]
policies = ["messages"]

[route.two]
policies = ["messages", "message_bytes"]

[route.items]
policies = ["messages", "user_messages"]

[policy.hourly]
key = "connection"
limits = ["1/h"]

[route.hourly]
policies = ["hourly"]
"#;

/// Counts posts (denials), sends nothing.
#[derive(Default)]
struct Posts(AtomicU64);

impl ConnectionSender for Posts {
    async fn post(&self, _: &str, _: &str, _: Vec<u8>) -> Result<(), SendError> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn gone(&self, _: &str, _: &str) -> Result<bool, SendError> {
        Ok(false)
    }

    async fn delete(&self, _: &str, _: &str) -> Result<(), SendError> {
        Ok(())
    }
}

fn event(route: &str, connection: &str, user: &str) -> LambdaEvent<Value> {
    let payload = json!({
        "isBase64Encoded": false,
        "body": format!(r#"{{"action":"{route}","text":"hello, world"}}"#),
        "requestContext": {
            "routeKey": "$default",
            "eventType": "MESSAGE",
            "stage": "prod",
            "connectedAt": 1_699_500_123_456i64,
            "requestTimeEpoch": 1_699_500_123_456i64,
            "identity": {"sourceIp": "203.0.113.9"},
            "requestId": "r",
            "messageId": "m",
            "domainName": "abc123.execute-api.us-east-1.amazonaws.com",
            "connectionId": connection,
            "apiId": "abc123",
            "authorizer": {"userId": user},
        }
    });
    LambdaEvent::new(payload, Context::default())
}

/// A client of a local stand-in for Lambda's `Invoke`, which queues
/// nothing and answers 202 at once.
async fn lambda_stand_in() -> aws_sdk_lambda::Client {
    use aws_sdk_lambda::config::{Credentials, Region};
    let app = axum::Router::new().route(
        "/2015-03-31/functions/{function}/invocations",
        axum::routing::post(|| async { axum::http::StatusCode::ACCEPTED }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let config = aws_sdk_lambda::Config::builder()
        .behavior_version_latest()
        .http_client(ratelimiter_dynamodb::https_client())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("local", "local", None, None, "local"))
        .endpoint_url(format!("http://{address}"))
        .build();
    aws_sdk_lambda::Client::from_conf(config)
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
        let config = Config::from_file_text("bench.toml", CONFIG, |_| None).unwrap();
        // The same policies with soft rejection on: the mark's probe too.
        let mut soft_config = Config::from_file_text("bench.toml", CONFIG, |_| None).unwrap();
        ConnectReject::Soft
            .apply(&mut soft_config.policies)
            .unwrap();
        let soft_store = DynamoDbStore::new(store.client().clone(), "RateLimits");
        let limiter = Arc::new(Builder::from_config(config).build(store));
        let soft = Arc::new(Builder::from_config(soft_config).build(soft_store));
        let posts = Arc::new(Posts::default());
        // One type for both: the message binary's optional forwarder.
        let handler =
            MessageHandler::new(limiter.clone(), posts.clone()).with_hook(None::<Forward>);
        let forwarded = MessageHandler::new(limiter.clone(), posts.clone())
            .with_hook(Some(Forward::new(lambda_stand_in().await, "backend")));
        let soft_handler =
            MessageHandler::new(soft.clone(), posts.clone()).with_hook(None::<Forward>);
        println!(
            "{:<16} {:>8} {:>8} {:>10} {:>10}",
            "message", "status", "calls", "p50 µs", "p99 µs"
        );
        // A spent connection for the known denials: its 1/h taken; and a
        // softly rejected one, marked.
        let spent = handler.handle(event("hourly", "spent", "u")).await.unwrap();
        assert_eq!(spent.status_code, 200);
        soft.decide(Request::from((mark_of(soft.policies()).unwrap(), "marked")))
            .await
            .unwrap();
        for (round, name) in [
            "warm-up",
            "one",
            "two",
            "items",
            "known denial",
            "one, forwarded",
            "unlimited",
            "soft: one",
            "soft: two",
            "soft: items",
            "soft: unlimited",
            "soft: marked",
        ]
        .into_iter()
        .enumerate()
        {
            let route = match name.trim_start_matches("soft: ") {
                "known denial" => "hourly",
                "warm-up" | "one, forwarded" | "marked" => "one",
                "unlimited" => "free",
                route => route,
            };
            let (handler, limiter) = match name {
                "one, forwarded" => (&forwarded, &limiter),
                _ if name.starts_with("soft: ") => (&soft_handler, &soft),
                _ => (&handler, &limiter),
            };
            let expected = match name {
                "known denial" => 429,
                "soft: marked" => 403,
                _ => 200,
            };
            let calls_before = limiter.store().calls();
            let mut latencies = Vec::with_capacity(MESSAGES);
            for i in 0..MESSAGES {
                let connection = match name {
                    "known denial" => "spent".to_owned(),
                    "soft: marked" => "marked".to_owned(),
                    _ => format!("c{round}-{i}"),
                };
                let user = format!("u{round}-{i}");
                let event = event(route, &connection, &user);
                let started = Instant::now();
                let response = handler.handle(event).await.unwrap();
                latencies.push(started.elapsed());
                assert_eq!(response.status_code, expected, "{name}");
            }
            if name == "warm-up" {
                continue;
            }
            latencies.sort();
            let calls = limiter.store().calls() - calls_before;
            println!(
                "{name:<16} {expected:>8} {:>8.2} {:>10.1} {:>10.1}",
                calls as f64 / MESSAGES as f64,
                latencies[MESSAGES / 2].as_secs_f64() * 1e6,
                latencies[MESSAGES * 99 / 100].as_secs_f64() * 1e6,
            );
        }
        // Each denial posted its body to the connection (no DynamoDB call).
        println!("denials posted: {}", posts.0.load(Ordering::Relaxed));
    });
}
