//! The limiter under faults: for each fault of the table and each failure
//! mode, what decisions cost and how many requests got past the limit.
//!
//! `cargo bench -p ratelimiter-dynamodb --bench faults`
//!
//! A release-built dynoxide behind a fault-injection proxy on loopback; one
//! container's limiter (the DynamoDB store behind the deny cache, 100 ms
//! timeout). 16 tasks decide for 2 s, one decision every 5 ms each, on 8
//! connection ids of the heartbeat policy (2 a minute each): an exact
//! limiter admits at most 2 per id, whatever the table does. Before the
//! fault, every id has used its 2, so the deny cache knows them all; the
//! "fresh" rows use ids it has never seen instead. "Beyond" counts the
//! admissions past 2 per id.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ratelimiter::{Builder, FailureMode, PolicyId};
use ratelimiter_dynamodb::{ClientOptions, DynamoDbStore, client};
use ratelimiter_testing::faults::{Fault, FaultProxy};

const TASKS: usize = 16;
const IDS: usize = 8;
const WINDOW: Duration = Duration::from_secs(2);

struct Row {
    p50_ms: f64,
    p99_ms: f64,
    decisions: usize,
    degraded: usize,
    calls: u64,
    beyond: usize,
}

async fn run(endpoint: &str, fault: &Fault, mode: FailureMode, fresh: bool, round: usize) -> Row {
    let proxy = FaultProxy::start(endpoint).await;
    let store = DynamoDbStore::new(
        client(&ClientOptions::local(
            proxy.endpoint(),
            Duration::from_millis(100),
        ))
        .await,
        "RateLimits",
    );
    let limiter = Arc::new(Builder::new().failure_mode(mode).build(store));
    let ids: Vec<String> = (0..IDS).map(|i| format!("r{round}-{i}")).collect();
    if !fresh {
        for id in &ids {
            for _ in 0..3 {
                limiter.decide((PolicyId::HEARTBEAT, id)).await.unwrap();
            }
        }
    }
    proxy.set(fault.clone());
    let calls_before = proxy.requests();
    let admitted: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let latencies: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let degraded: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
    let started = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let (limiter, ids, admitted, latencies, degraded) = (
                limiter.clone(),
                ids.clone(),
                admitted.clone(),
                latencies.clone(),
                degraded.clone(),
            );
            tokio::spawn(async move {
                let mut n = t;
                while started.elapsed() < WINDOW {
                    let id = &ids[n % IDS];
                    n += 1;
                    let at = Instant::now();
                    let verdict = limiter.decide((PolicyId::HEARTBEAT, id)).await.unwrap();
                    latencies.lock().unwrap().push(at.elapsed());
                    if verdict.is_degraded() {
                        degraded.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    // A client's pace: a decision every 5 ms per task.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    if verdict.allowed() {
                        *admitted.lock().unwrap().entry(id.clone()).or_default() += 1;
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let calls = proxy.requests() - calls_before;
    proxy.set(Fault::None);
    let mut latencies = latencies.lock().unwrap().clone();
    latencies.sort();
    let at = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e3;
    // Before the fault each id used its 2 (or none, when fresh).
    let allowance = if fresh { 2 } else { 0 };
    let beyond = admitted
        .lock()
        .unwrap()
        .values()
        .map(|&n| n.saturating_sub(allowance))
        .sum();
    Row {
        p50_ms: at(0.5),
        p99_ms: at(0.99),
        decisions: latencies.len(),
        degraded: degraded.load(std::sync::atomic::Ordering::Relaxed),
        calls,
        beyond,
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let endpoint = ratelimiter_testing::dynoxide().await;
        DynamoDbStore::new(
            client(&ClientOptions::local(&endpoint, Duration::from_secs(5))).await,
            "RateLimits",
        )
        .create_table()
        .await
        .unwrap();
        // No tracing subscriber: the warnings of failed calls go nowhere.
        let faults = [
            ("none", Fault::None),
            ("stall 2 s", Fault::Stall(Duration::from_secs(2))),
            ("5xx", Fault::ServerError),
            // The key is set per round below.
            ("throttle one id", Fault::ThrottleKey(String::new())),
            ("drop connections", Fault::Drop),
        ];
        println!(
            "{:<18} {:<7} {:<6} {:>9} {:>9} {:>10} {:>9} {:>7} {:>7}",
            "fault", "mode", "ids", "p50 ms", "p99 ms", "decisions", "degraded", "calls", "beyond"
        );
        let mut round = 0;
        for (name, fault) in &faults {
            for mode in [FailureMode::Open, FailureMode::Closed, FailureMode::Local] {
                for fresh in [false, true] {
                    round += 1;
                    let fault = match fault {
                        Fault::ThrottleKey(_) => {
                            Fault::ThrottleKey(format!("connection#r{round}-0"))
                        }
                        other => other.clone(),
                    };
                    let row = run(&endpoint, &fault, mode, fresh, round).await;
                    println!(
                        "{:<18} {:<7} {:<6} {:>9.2} {:>9.2} {:>10} {:>9} {:>7} {:>7}",
                        name,
                        mode.as_str(),
                        if fresh { "fresh" } else { "spent" },
                        row.p50_ms,
                        row.p99_ms,
                        row.decisions,
                        row.degraded,
                        row.calls,
                        row.beyond
                    );
                }
            }
        }
    });
}
