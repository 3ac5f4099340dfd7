//! The embedded store reached in process, against dynoxide's HTTP server on a
//! loopback port (how `ratelimit` reached it before): the same SDK client,
//! store, deny cache and SQLite file layout, only the transport differs.
//!
//! `cargo bench -p ratelimiter-embedded --bench transport`
//!
//! Each round runs both transports, in alternating order, on fresh data dirs:
//! `N` listener joins from new addresses (each an `UpdateItem` creating an
//! item), then the same `N` addresses again (each updating an item), then a
//! `status` of each (a `GetItem`). Printed: decisions per second, p50 and p99
//! per workload and transport, over all rounds.

use std::path::Path;
use std::time::{Duration, Instant};

use ratelimiter::{Builder, PolicyId, RateLimitService};
use ratelimiter_dynamodb::{ClientOptions, DynamoDbStore, client};
use ratelimiter_embedded::{FILE, TIMEOUT};

const N: usize = 2_000;
const ROUNDS: usize = 3;

/// Both transports give the same type of service.
type Service = RateLimitService<DynamoDbStore>;

/// One workload's latencies on one transport, over every round.
#[derive(Default)]
struct Stats {
    latencies: Vec<Duration>,
    wall: Duration,
}

impl Stats {
    fn print(&mut self, name: &str) {
        self.latencies.sort();
        let n = self.latencies.len();
        let at = |p: f64| self.latencies[((n - 1) as f64 * p).round() as usize];
        println!(
            "{name:<34} {:>9.0} {:>10.1} {:>10.1}",
            n as f64 / self.wall.as_secs_f64(),
            at(0.5).as_secs_f64() * 1e6,
            at(0.99).as_secs_f64() * 1e6,
        );
    }
}

/// The three workloads, in order.
const WORKLOADS: [&str; 3] = ["join, new item", "join, existing item", "status (GetItem)"];

fn address(i: usize) -> String {
    format!("10.{}.{}.{}", i / 65_536, (i / 256) % 256, i % 256)
}

/// Runs the workloads on `service`, adding to `stats`.
async fn run(service: &Service, stats: &mut [Stats; 3]) {
    for (w, stats) in stats.iter_mut().enumerate() {
        let started = Instant::now();
        for i in 0..N {
            let ip = address(i);
            let t = Instant::now();
            if w < 2 {
                let verdict = service.check_listener_join_limit(&ip).await.unwrap();
                assert!(!verdict.is_degraded(), "{verdict:?}");
            } else {
                let statuses = service
                    .status((PolicyId::LISTENER_JOIN, &ip))
                    .await
                    .unwrap();
                assert_eq!(statuses.len(), 1);
            }
            stats.latencies.push(t.elapsed());
        }
        stats.wall += started.elapsed();
    }
}

/// The embedded store as `ratelimit` opens it: in process.
async fn in_process(data_dir: &Path) -> Service {
    let store = ratelimiter_embedded::open(data_dir, "RateLimits")
        .await
        .expect("the embedded store opens");
    Builder::new().build(store)
}

/// The same file served by dynoxide's HTTP server on a loopback port, from
/// a thread of its own, as `ratelimit` did before.
async fn loopback(data_dir: &Path) -> Service {
    std::fs::create_dir_all(data_dir).unwrap();
    let path = data_dir.join(FILE);
    let database = dynoxide::Database::new(path.to_str().unwrap()).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                dynoxide::server::serve_on(listener, database).await
            })
    });
    let store = DynamoDbStore::new(
        client(&ClientOptions::local(endpoint, TIMEOUT)).await,
        "RateLimits",
    );
    store.create_table().await.unwrap();
    Builder::new().build(store)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut in_process_stats: [Stats; 3] = Default::default();
    let mut loopback_stats: [Stats; 3] = Default::default();
    for round in 0..ROUNDS {
        let dir = tempfile::tempdir().unwrap();
        let a = in_process(&dir.path().join("in-process")).await;
        let b = loopback(&dir.path().join("loopback")).await;
        if round % 2 == 0 {
            run(&a, &mut in_process_stats).await;
            run(&b, &mut loopback_stats).await;
        } else {
            run(&b, &mut loopback_stats).await;
            run(&a, &mut in_process_stats).await;
        }
    }
    println!(
        "{:<34} {:>9} {:>10} {:>10}",
        "workload (transport)", "per s", "p50 µs", "p99 µs"
    );
    for (w, name) in WORKLOADS.iter().enumerate() {
        loopback_stats[w].print(&format!("{name} (loopback)"));
        in_process_stats[w].print(&format!("{name} (in process)"));
    }
}
