//! The DynamoDB store against a release-built dynoxide server on loopback.
//!
//! `cargo bench -p ratelimiter-dynamodb --bench dynamodb`
//!
//! For each workload: decisions per second, p50 and p99 latency, and
//! DynamoDB calls per decision; then the overhead of a decision over a raw
//! `UpdateItem` of the same shape, and the time a decision takes while the
//! endpoint hangs, before and after the circuit breaker opens.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use ratelimiter::clock::wall_clock;
use ratelimiter::gcra::Quota;
use ratelimiter::key::{Key, Kind, Slot};
use ratelimiter::store::{Op, Store};
use ratelimiter::{Builder, Cached, Config};
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

/// A container's store: DynamoDB behind the deny cache, as the functions use it.
async fn store(endpoint: &str) -> Cached<DynamoDbStore> {
    Cached::new(DynamoDbStore::new(
        client(&ClientOptions::local(endpoint, TIMEOUT)).await,
        "RateLimits",
    ))
}

/// One decision of `limits` (a bucket and a quota each) on the item of IP
/// `id`, as the service makes it: the cache first, then the store.
async fn decide(store: &Cached<DynamoDbStore>, id: &str, limits: &[(Slot, Quota)]) {
    let key = Key::new(&Kind::IP, id);
    let now = wall_clock();
    let mut ops: Vec<Op<'_>> = limits
        .iter()
        .map(|(slot, quota)| Op::new(slot, quota.step(now, 1).unwrap()))
        .collect();
    let mut tats = vec![0; ops.len()];
    if store.prepare(&key, &mut ops, &mut tats).is_none() {
        store.apply(&key, &ops, 0, &mut tats).await.outcome.unwrap();
    }
}

/// The one bucket most workloads use.
fn one(quota: &Quota) -> Vec<(Slot, Quota)> {
    vec![(Slot::new("connection_attempt@60"), *quota)]
}

/// `n` sequential decisions of `limits`, each on the key `key(i)`.
async fn sequential_limits(
    name: &str,
    store: &Cached<DynamoDbStore>,
    limits: &[(Slot, Quota)],
    n: usize,
    key: impl Fn(usize) -> String,
) -> Stats {
    let calls_before = store.inner().calls();
    let mut latencies = Vec::with_capacity(n);
    let started = Instant::now();
    for i in 0..n {
        let id = key(i);
        let t = Instant::now();
        decide(store, &id, limits).await;
        latencies.push(t.elapsed());
    }
    Stats {
        name: name.to_owned(),
        latencies,
        wall: started.elapsed(),
        calls: store.inner().calls() - calls_before,
    }
}

/// `n` sequential decisions of one `quota`, each on the key `key(i)`.
async fn sequential(
    name: &str,
    store: &Cached<DynamoDbStore>,
    quota: &Quota,
    n: usize,
    key: impl Fn(usize) -> String,
) -> Stats {
    sequential_limits(name, store, &one(quota), n, key).await
}

/// Raw idle-shape `UpdateItem`s on fresh keys, as the store would send them.
async fn raw_updates(store: &Cached<DynamoDbStore>, n: usize) -> Stats {
    let mut latencies = Vec::with_capacity(n);
    let started = Instant::now();
    for i in 0..n {
        let now = wall_clock();
        let t = Instant::now();
        store
            .inner()
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

/// `tasks` tasks deciding on one key at once, under `quota` (large enough
/// that every decision is allowed).
async fn hot_key(
    name: &str,
    store: Arc<Cached<DynamoDbStore>>,
    quota: Quota,
    tasks: usize,
    per_task: usize,
) -> Stats {
    let calls_before = store.inner().calls();
    let started = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let store = store.clone();
            let id = name.to_owned();
            tokio::spawn(async move {
                let limits = one(&quota);
                let mut latencies = Vec::with_capacity(per_task);
                for _ in 0..per_task {
                    let t = Instant::now();
                    decide(&store, &id, &limits).await;
                    latencies.push(t.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for handle in handles {
        latencies.extend(handle.await.unwrap());
    }
    Stats {
        name: format!("{name}, {tasks} tasks"),
        latencies,
        wall: started.elapsed(),
        calls: store.inner().calls() - calls_before,
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
    let service = Builder::from_config(Config::default()).build(store);
    let mut before = Vec::new();
    let mut after = Vec::new();
    for i in 0..1005 {
        let t = Instant::now();
        let verdict = service.check_heartbeat_limit("c").await.unwrap();
        assert!(verdict.is_degraded());
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
        service.store().inner().calls(),
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
        let setup = store(&endpoint).await;
        setup.inner().create_table().await.unwrap();
        let n = 3000;
        let quota = Quota::per_minute(NonZeroU32::new(20).unwrap());
        println!(
            "{:<34} {:>9} {:>10} {:>10} {:>10}",
            "workload", "dec/s", "p50 µs", "p99 µs", "calls/dec"
        );

        // Warm the connection pool and the server.
        sequential("warm-up", &setup, &quota, 300, |i| format!("warm-{i}")).await;

        let raw = raw_updates(&setup, n).await;
        let ours = sequential("idle keys (new key each time)", &setup, &quota, n, |i| {
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

        // A fresh store (a new container) on keys that are all mid-window.
        let fresh = store(&endpoint).await;
        sequential("mid-window keys, fresh container", &fresh, &quota, n, |i| {
            format!("10.0.{}.{}", i / 256, i % 256)
        })
        .await
        .print();

        // A hot key is busy: requests come faster than tokens come back
        // (here 1 000 000 an hour, one token every 3.6 ms).
        let busy = Quota::per_hour(NonZeroU32::new(1_000_000).unwrap());
        hot_key(
            "one hot key",
            Arc::new(store(&endpoint).await),
            busy,
            16,
            300,
        )
        .await
        .print();
        // The worst case: tokens come back as fast as requests arrive, so the
        // key hovers between idle and busy and concurrent writers race.
        let edge = Quota::per_second(NonZeroU32::new(1_000_000).unwrap());
        hot_key(
            "one key at the idle/busy edge",
            Arc::new(store(&endpoint).await),
            edge,
            16,
            300,
        )
        .await
        .print();

        // A policy of two limits in one item (5 per 10 s and 1000 per hour):
        // one conditional write checks and takes both.
        let two = vec![
            (
                Slot::new("two@10"),
                Quota::new(NonZeroU32::new(5).unwrap(), Duration::from_secs(10)).unwrap(),
            ),
            (
                Slot::new("two@3600"),
                Quota::per_hour(NonZeroU32::new(1000).unwrap()),
            ),
        ];
        sequential_limits("two limits, new keys", &setup, &two, n, |i| {
            format!("10.2.{}.{}", i / 256, i % 256)
        })
        .await
        .print();
        sequential_limits("two limits, busy keys (4 per key)", &setup, &two, n, |i| {
            format!("10.3.{}.{}", i / 1024, (i / 4) % 256)
        })
        .await
        .print();
        let fresh = store(&endpoint).await;
        sequential_limits(
            "two limits, mid-window, fresh container",
            &fresh,
            &two,
            n,
            |i| format!("10.2.{}.{}", i / 256, i % 256),
        )
        .await
        .print();

        let denier = store(&endpoint).await;
        let tight = Quota::per_minute(NonZeroU32::new(1).unwrap());
        sequential("repeated denials, one key", &denier, &tight, 20_000, |_| {
            "flood".to_owned()
        })
        .await
        .print();
        println!(
            "  (the first of those decisions is the one allowed; one more call learns the denial)"
        );

        hanging().await;
    });
}
