//! The DynamoDB store against a release-built dynoxide server on loopback.
//!
//! `cargo bench -p ratelimiter-dynamodb --bench dynamodb`
//!
//! For each workload: decisions per second, p50 and p99 latency, and
//! DynamoDB calls per decision; then the overhead of a decision over a raw
//! `UpdateItem` of the same shape, and the time a decision takes while the
//! endpoint hangs, before and after the circuit breaker opens.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use ratelimiter::clock::wall_clock;
use ratelimiter::{Builder, Kind, LimitSpec, Policy, PolicyId, RateLimitService};
use ratelimiter_dynamodb::{ClientOptions, DynamoDbStore, client};

const TIMEOUT: Duration = Duration::from_secs(5);

struct Stats {
    name: String,
    latencies: Vec<Duration>,
    wall: Duration,
    calls: u64,
}

impl Stats {
    fn print(&mut self) {
        self.latencies.sort();
        let n = self.latencies.len();
        let at = |p: f64| self.latencies[((n - 1) as f64 * p).round() as usize];
        println!(
            "{:<34} {:>9.0} {:>10.1} {:>10.1} {:>10.2}",
            self.name,
            n as f64 / self.wall.as_secs_f64(),
            at(0.5).as_secs_f64() * 1e6,
            at(0.99).as_secs_f64() * 1e6,
            self.calls as f64 / n as f64,
        );
    }
}

/// A container's limiter: the service on DynamoDB, behind the deny cache,
/// as the functions build it, with the bench's policies beside the seed's.
type Container = RateLimitService<DynamoDbStore>;

/// The bench's own policies, on IP addresses: name and limits.
const POLICIES: [(&str, &[(u32, u64)]); 4] = [
    // A hot key is busy: requests come faster than tokens come back (one
    // token every 3.6 ms).
    ("busy", &[(1_000_000, 3600)]),
    // Tokens come back as fast as requests arrive, so the key hovers
    // between idle and busy and concurrent writers race.
    ("edge", &[(1_000_000, 1)]),
    // Two limits in one item: one conditional write checks and takes both.
    ("two", &[(5, 10), (1000, 3600)]),
    ("tight", &[(1, 60)]),
];

async fn store(endpoint: &str) -> DynamoDbStore {
    DynamoDbStore::new(
        client(&ClientOptions::local(endpoint, TIMEOUT)).await,
        "RateLimits",
    )
}

/// A new container on the table at `endpoint`.
async fn container(endpoint: &str) -> Container {
    let mut builder = Builder::new();
    for (name, limits) in POLICIES {
        let specs: Vec<LimitSpec> = limits
            .iter()
            .map(|&(count, secs)| LimitSpec {
                count,
                period: Duration::from_secs(secs),
            })
            .collect();
        builder = builder.policy(Policy::new(name, Kind::IP, &specs).unwrap());
    }
    builder.build(store(endpoint).await)
}

/// One decision of `policy` on IP `id`; the calls it made.
async fn decide(limiter: &Container, policy: PolicyId, id: &str) -> u32 {
    let verdict = limiter.decide((policy, id)).await.unwrap();
    assert!(!verdict.is_degraded(), "{verdict:?}");
    verdict.calls
}

/// `n` sequential decisions of `policy`, each on the key `key(i)`.
async fn sequential(
    name: &str,
    limiter: &Container,
    policy: &str,
    n: usize,
    key: impl Fn(usize) -> String,
) -> Stats {
    let policy = limiter.policy_id(policy).unwrap();
    let mut calls = 0;
    let mut latencies = Vec::with_capacity(n);
    let started = Instant::now();
    for i in 0..n {
        let id = key(i);
        let t = Instant::now();
        calls += u64::from(decide(limiter, policy, &id).await);
        latencies.push(t.elapsed());
    }
    Stats {
        name: name.to_owned(),
        latencies,
        wall: started.elapsed(),
        calls,
    }
}

/// Raw idle-shape `UpdateItem`s on fresh keys, as the store would send them.
async fn raw_updates(store: &DynamoDbStore, n: usize) -> Stats {
    let mut latencies = Vec::with_capacity(n);
    let started = Instant::now();
    for i in 0..n {
        let now = wall_clock();
        let t = Instant::now();
        store
            .client()
            .update_item()
            .table_name("RateLimits")
            .key(
                "pk",
                AttributeValue::S(format!("raw#10.9.{}.{}", i / 256, i % 256)),
            )
            .update_expression("SET #tat = :target, #ttl = :ttl")
            .condition_expression("attribute_not_exists(#tat) OR #tat <= :now")
            .expression_attribute_names("#tat", "connection_attempt@60")
            .expression_attribute_names("#ttl", "ttl")
            .expression_attribute_values(":now", AttributeValue::N(now.to_string()))
            .expression_attribute_values(
                ":target",
                AttributeValue::N((now + 3_000_000_000).to_string()),
            )
            .expression_attribute_values(
                ":ttl",
                AttributeValue::N((now / 1_000_000_000 + 3).to_string()),
            )
            .return_values(aws_sdk_dynamodb::types::ReturnValue::UpdatedNew)
            .send()
            .await
            .unwrap();
        latencies.push(t.elapsed());
    }
    Stats {
        name: "raw UpdateItem (idle shape)".into(),
        latencies,
        wall: started.elapsed(),
        calls: n as u64,
    }
}

/// `tasks` tasks deciding on one key at once, under `policy` (large enough
/// that every decision is allowed).
async fn hot_key(
    name: &str,
    limiter: Arc<Container>,
    policy: &str,
    tasks: usize,
    per_task: usize,
) -> Stats {
    let policy = limiter.policy_id(policy).unwrap();
    let started = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let limiter = limiter.clone();
            let id = name.to_owned();
            tokio::spawn(async move {
                let mut calls = 0;
                let mut latencies = Vec::with_capacity(per_task);
                for _ in 0..per_task {
                    let t = Instant::now();
                    calls += u64::from(decide(&limiter, policy, &id).await);
                    latencies.push(t.elapsed());
                }
                (latencies, calls)
            })
        })
        .collect();
    let (mut latencies, mut calls) = (Vec::new(), 0);
    for handle in handles {
        let (more, n) = handle.await.unwrap();
        latencies.extend(more);
        calls += n;
    }
    Stats {
        name: format!("{name}, {tasks} tasks"),
        latencies,
        wall: started.elapsed(),
        calls,
    }
}

async fn hanging() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let timeout = Duration::from_millis(100);
    let store = DynamoDbStore::new(
        client(&ClientOptions::local(&endpoint, timeout)).await,
        "RateLimits",
    );
    let service = Builder::new().build(store);
    let mut before = Vec::new();
    let mut after = Vec::new();
    let mut calls = 0;
    for i in 0..1005 {
        let t = Instant::now();
        let verdict = service.decide((PolicyId::HEARTBEAT, "c")).await.unwrap();
        assert!(verdict.is_degraded());
        calls += verdict.calls;
        if i < 5 {
            before.push(t.elapsed())
        } else {
            after.push(t.elapsed())
        }
    }
    after.sort();
    println!(
        "hanging endpoint (timeout 100 ms): breaker closed: {:.1} ms per decision (max {:.1} ms); breaker open: p50 {:.2} µs, p99 {:.2} µs, max {:.2} µs; calls made {}",
        before.iter().sum::<Duration>().as_secs_f64() * 1e3 / before.len() as f64,
        before.iter().max().unwrap().as_secs_f64() * 1e3,
        after[after.len() / 2].as_secs_f64() * 1e6,
        after[after.len() * 99 / 100].as_secs_f64() * 1e6,
        after.last().unwrap().as_secs_f64() * 1e6,
        calls,
    );
}

fn main() {
    // Quiet: the hanging endpoint logs a warning per failed call.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let endpoint = ratelimiter_testing::dynoxide().await;
        let table = store(&endpoint).await;
        table.create_table().await.unwrap();
        let setup = container(&endpoint).await;
        let n = 3000;
        // The seed's connection attempts: 20 a minute.
        let attempts = "connection_attempt";
        println!(
            "{:<34} {:>9} {:>10} {:>10} {:>10}",
            "workload", "dec/s", "p50 µs", "p99 µs", "calls/dec"
        );

        // Warm the connection pool and the server. (Not the raw updates:
        // their keys would then be mid-window, and the idle-shape
        // condition would fail.)
        sequential("warm-up", &setup, attempts, 300, |i| format!("warm-{i}")).await;

        let raw = raw_updates(&table, n).await;
        let ours = sequential("idle keys (new key each time)", &setup, attempts, n, |i| {
            format!("10.0.{}.{}", i / 256, i % 256)
        })
        .await;
        let (mut raw, mut ours) = (raw, ours);
        raw.print();
        ours.print();
        let overhead =
            ours.latencies[n / 2].as_secs_f64() / raw.latencies[n / 2].as_secs_f64() - 1.0;
        println!(
            "decision overhead over a raw UpdateItem, p50: {:+.1}%",
            overhead * 100.0
        );

        // A new container on keys that are all mid-window.
        let fresh = container(&endpoint).await;
        sequential(
            "mid-window keys, fresh container",
            &fresh,
            attempts,
            n,
            |i| format!("10.0.{}.{}", i / 256, i % 256),
        )
        .await
        .print();

        let hot = Arc::new(container(&endpoint).await);
        hot_key("one hot key", hot, "busy", 16, 300).await.print();
        let edge = Arc::new(container(&endpoint).await);
        hot_key("one key at the idle/busy edge", edge, "edge", 16, 300)
            .await
            .print();

        // A policy of two limits in one item (5 per 10 s and 1000 per hour).
        sequential("two limits, new keys", &setup, "two", n, |i| {
            format!("10.2.{}.{}", i / 256, i % 256)
        })
        .await
        .print();
        sequential("two limits, busy keys (4 per key)", &setup, "two", n, |i| {
            format!("10.3.{}.{}", i / 1024, (i / 4) % 256)
        })
        .await
        .print();
        let fresh = container(&endpoint).await;
        sequential(
            "two limits, mid-window, fresh container",
            &fresh,
            "two",
            n,
            |i| format!("10.2.{}.{}", i / 256, i % 256),
        )
        .await
        .print();

        let denier = container(&endpoint).await;
        sequential(
            "repeated denials, one key",
            &denier,
            "tight",
            20_000,
            |_| "flood".to_owned(),
        )
        .await
        .print();
        println!(
            "  (the first of those decisions is the one allowed; one more call learns the denial)"
        );

        hanging().await;
    });
}
