//! The store conformance suite on the embedded store (dynoxide on a SQLite
//! file, in this process), as `ratelimit` opens it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ratelimiter_dynamodb::DynamoDbStore;
use ratelimiter_testing::conformance;

/// An embedded store on a new data dir (kept for the test's life), as
/// `ratelimit` opens it.
async fn embedded(dir: &tempfile::TempDir) -> DynamoDbStore {
    match ratelimiter_embedded::open(&dir.path().join("state"), "RateLimits").await {
        Ok(store) => store,
        Err(error) => panic!("the embedded store opens: {error}"),
    }
}

#[tokio::test]
async fn seed_scenarios() {
    let dir = tempfile::tempdir().unwrap();
    conformance::seed_scenarios(embedded(&dir).await).await;
}

#[tokio::test]
async fn route_policies() {
    let dir = tempfile::tempdir().unwrap();
    conformance::route_policies(embedded(&dir).await).await;
}

#[tokio::test]
async fn probes() {
    let dir = tempfile::tempdir().unwrap();
    conformance::probes(embedded(&dir).await).await;
}

#[tokio::test]
async fn tolerance() {
    let dir = tempfile::tempdir().unwrap();
    conformance::tolerance(embedded(&dir).await).await;
}

#[tokio::test]
async fn checks_in_turn() {
    let dir = tempfile::tempdir().unwrap();
    conformance::checks_in_turn(embedded(&dir).await).await;
}

#[tokio::test]
async fn status_and_reset() {
    let dir = tempfile::tempdir().unwrap();
    conformance::status_and_reset(embedded(&dir).await).await;
}

#[tokio::test]
async fn several_limits_and_tiers() {
    let dir = tempfile::tempdir().unwrap();
    conformance::several_limits_and_tiers(embedded(&dir).await).await;
}

#[tokio::test]
async fn caps() {
    let dir = tempfile::tempdir().unwrap();
    conformance::caps(embedded(&dir).await).await;
}

#[tokio::test]
async fn caps_on_two_items() {
    let dir = tempfile::tempdir().unwrap();
    conformance::caps_on_two_items(embedded(&dir).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn caps_on_one_data_dir_never_over_admit() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (embedded(&dir).await, embedded(&dir).await);
    conformance::caps_never_over_admit(vec![a, b], 32).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_processes_on_one_data_dir_never_over_admit() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (embedded(&dir).await, embedded(&dir).await);
    conformance::concurrent_decisions_never_over_admit(vec![a, b], 64).await;
}

#[tokio::test]
async fn keyed_digests_leave_no_raw_identifier_in_the_file() {
    let dir = tempfile::tempdir().unwrap();
    // Kept open while its files are read: closing it checkpoints and
    // removes the write-ahead log, on the store's own thread.
    let (identifiers, _open) = conformance::keyed_digests(embedded(&dir).await).await;
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(dir.path().join("state")).unwrap() {
        bytes.extend(std::fs::read(entry.unwrap().path()).unwrap());
    }
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        text.contains("connection~"),
        "the keyed keys are in the file"
    );
    for id in identifiers {
        assert!(!text.contains(id), "{id} is in the embedded store's files");
    }
}

/// Takes the file's write lock in another connection (as another process
/// would) for 6 s, longer than dynoxide's own 5 s wait; the flag is set
/// once it is released.
fn hold_the_lock(dir: &tempfile::TempDir) -> (std::thread::JoinHandle<()>, Arc<AtomicBool>) {
    let file = dir.path().join("state").join(ratelimiter_embedded::FILE);
    let released = Arc::new(AtomicBool::new(false));
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let flag = released.clone();
    let holder = std::thread::spawn(move || {
        let connection = rusqlite::Connection::open(file).unwrap();
        connection.execute_batch("BEGIN EXCLUSIVE").unwrap();
        locked_tx.send(()).unwrap();
        std::thread::sleep(std::time::Duration::from_secs(6));
        flag.store(true, Ordering::SeqCst);
        connection.execute_batch("ROLLBACK").unwrap();
    });
    locked_rx.recv().unwrap();
    (holder, released)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_waits_for_another_processs_lock_past_the_stores_own_five_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let store = embedded(&dir).await;
    let clock = conformance::clock_now();
    let service = conformance::service(store, &clock);
    service.check_heartbeat_limit("warm").await.unwrap();
    let (holder, released) = hold_the_lock(&dir);
    let verdict = service
        .decide((ratelimiter::PolicyId::HEARTBEAT, "waiting"))
        .await
        .unwrap();
    // Decided by the table once the lock was released, not failed open.
    assert!(
        released.load(Ordering::SeqCst),
        "answered only after the lock went"
    );
    assert_eq!(verdict.degraded, None, "{verdict:?}");
    assert!(verdict.allowed());
    assert_eq!(
        verdict.calls, 1,
        "one call, made again inside the store: {verdict:?}"
    );
    holder.join().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_waits_for_another_processs_lock_too() {
    let dir = tempfile::tempdir().unwrap();
    let store = embedded(&dir).await;
    let clock = conformance::clock_now();
    let service = conformance::service(store, &clock);
    service.check_heartbeat_limit("c").await.unwrap();
    service.check_heartbeat_limit("c").await.unwrap();
    let (holder, released) = hold_the_lock(&dir);
    service
        .reset((ratelimiter::PolicyId::HEARTBEAT, "c"))
        .await
        .expect("the reset waits for the lock instead of failing after 5 s");
    assert!(released.load(Ordering::SeqCst));
    holder.join().unwrap();
    service
        .check_heartbeat_limit("c")
        .await
        .expect("reset: full again");
}
