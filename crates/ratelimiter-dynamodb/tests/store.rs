//! The DynamoDB store against a real DynamoDB-API server: the seed's
//! behaviours, TTLs, no over-admission, and the calls each decision makes.

mod common;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use common::{clock_now, dynoxide, service, store_with_table};
use ratelimiter::gcra::{Outcome, Quota, Status};
use ratelimiter::{Identifier, IdentifierKind, Key, Operation, RateLimitError, Store};
use ratelimiter_dynamodb::{DynamoDbStore, PARTITION_KEY};

fn retry_after(result: Result<ratelimiter::Verdict, RateLimitError>) -> u64 {
    match result {
        Err(RateLimitError::Exceeded { retry_after, .. }) => retry_after,
        other => panic!("expected a rate-limit denial, got {other:?}"),
    }
}

async fn raw_item(store: &DynamoDbStore, key: &Key<'_>) -> HashMap<String, AttributeValue> {
    store
        .client()
        .get_item()
        .table_name(store.table())
        .key(PARTITION_KEY, AttributeValue::S(key.to_string()))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item()
        .cloned()
        .expect("the item exists")
}

fn number(item: &HashMap<String, AttributeValue>, name: &str) -> u64 {
    item[name].as_n().unwrap().parse().unwrap()
}

#[tokio::test]
async fn seed_limits_hold_through_dynamodb() {
    let endpoint = dynoxide().await;
    let clock = clock_now();
    let service = service(store_with_table(&endpoint).await, &clock);

    service.check_heartbeat_limit("conn-1").await.unwrap();
    service.check_heartbeat_limit("conn-1").await.unwrap();
    assert_eq!(
        retry_after(service.check_heartbeat_limit("conn-1").await),
        30
    );

    for _ in 0..10 {
        service
            .check_listener_join_limit("198.51.100.4")
            .await
            .unwrap();
    }
    assert_eq!(
        retry_after(service.check_listener_join_limit("198.51.100.4").await),
        6
    );

    for _ in 0..20 {
        service
            .check_connection_attempt_limit("198.51.100.4")
            .await
            .unwrap();
    }
    assert_eq!(
        retry_after(service.check_connection_attempt_limit("198.51.100.4").await),
        3
    );

    for _ in 0..50 {
        service
            .check_session_creation_limit("user-123")
            .await
            .unwrap();
    }
    assert_eq!(
        retry_after(service.check_session_creation_limit("user-123").await),
        72
    );

    // Time heals: half a minute later the connection may heartbeat again.
    clock.advance(Duration::from_secs(30));
    service.check_heartbeat_limit("conn-1").await.unwrap();
}

#[tokio::test]
async fn status_reads_the_table_without_consuming_and_ttls_are_right() {
    let endpoint = dynoxide().await;
    let clock = clock_now();
    let now_secs = ratelimiter::Clock::now(&clock) / 1_000_000_000;
    let service = service(store_with_table(&endpoint).await, &clock);
    for _ in 0..15 {
        service
            .check_session_creation_limit("user-123")
            .await
            .unwrap();
    }
    let status = service
        .get_rate_limit_status(Operation::SessionCreate, IdentifierKind::User, "user-123")
        .await
        .unwrap();
    assert_eq!(
        status,
        Status {
            count: 15,
            limit: 50,
            reset_in_seconds: 1080,
            window_duration: 3600
        }
    );
    let again = service
        .get_rate_limit_status(Operation::SessionCreate, IdentifierKind::User, "user-123")
        .await
        .unwrap();
    assert_eq!(again, status);

    let key = Key::new(Operation::SessionCreate, Identifier::user("user-123"));
    let item = raw_item(service.store(), &key).await;
    assert_eq!(number(&item, "tat"), (now_secs + 15 * 72) * 1_000_000_000);
    // The TTL is never before the TAT: deleting the item then changes nothing.
    let ttl = number(&item, "ttl");
    assert!(ttl >= now_secs + 15 * 72, "ttl {ttl}");
    assert!(ttl <= now_secs + 3600, "ttl {ttl} beyond a full period");

    // A brand-new key's TTL is when its one token comes back.
    service.check_heartbeat_limit("c").await.unwrap();
    let item = raw_item(
        service.store(),
        &Key::new(Operation::Heartbeat, Identifier::connection("c")),
    )
    .await;
    assert_eq!(number(&item, "ttl"), now_secs + 30);
    assert_eq!(item["pk"].as_s().unwrap(), "heartbeat#connection#c");

    // Reset deletes the item.
    service
        .reset(Operation::SessionCreate, Identifier::user("user-123"))
        .await
        .unwrap();
    let status = service
        .get_rate_limit_status(Operation::SessionCreate, IdentifierKind::User, "user-123")
        .await
        .unwrap();
    assert_eq!(status.count, 0);
}

#[tokio::test]
async fn create_table_is_idempotent() {
    let endpoint = dynoxide().await;
    let store = store_with_table(&endpoint).await;
    store.create_table().await.unwrap();
    let ttl = store
        .client()
        .describe_time_to_live()
        .table_name("RateLimits")
        .send()
        .await
        .unwrap();
    let description = ttl.time_to_live_description().unwrap();
    assert_eq!(description.attribute_name(), Some("ttl"));
}

/// Runs `tasks` concurrent decisions on one key; returns how many were allowed.
async fn hammer(
    stores: &[Arc<DynamoDbStore>],
    key: &str,
    quota: &Quota,
    now: u64,
    tasks: usize,
) -> usize {
    let step = quota.step(now, 1).unwrap();
    let handles: Vec<_> = (0..tasks)
        .map(|i| {
            let store = stores[i % stores.len()].clone();
            let key = key.to_owned();
            tokio::spawn(async move {
                let key = Key::new(Operation::ConnectionAttempt, Identifier::ip(&key));
                matches!(
                    store.apply(&key, &step).await.unwrap(),
                    Outcome::Allowed { .. }
                )
            })
        })
        .collect();
    let mut allowed = 0;
    for handle in handles {
        allowed += usize::from(handle.await.unwrap());
    }
    allowed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_concurrent_tasks_never_over_admit() {
    let endpoint = dynoxide().await;
    let store = Arc::new(store_with_table(&endpoint).await);
    let quota = Quota::per_minute(NonZeroU32::new(20).unwrap());
    let now = ratelimiter::Clock::now(&clock_now());
    for round in 0..8u64 {
        // Each round on a new key, and once more on the same key a minute later.
        let key = format!("203.0.113.{round}");
        assert_eq!(
            hammer(std::slice::from_ref(&store), &key, &quota, now, 64).await,
            20,
            "round {round}"
        );
        assert_eq!(
            hammer(std::slice::from_ref(&store), &key, &quota, now, 64).await,
            0,
            "round {round}, again"
        );
        let later = now + 60_000_000_000;
        assert_eq!(
            hammer(std::slice::from_ref(&store), &key, &quota, later, 64).await,
            20,
            "round {round}, later"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_containers_on_one_table_never_over_admit() {
    let endpoint = dynoxide().await;
    let a = Arc::new(store_with_table(&endpoint).await);
    let b = Arc::new(common::store_at(&endpoint, "RateLimits", common::TEST_TIMEOUT).await);
    let quota = Quota::per_minute(NonZeroU32::new(20).unwrap());
    let now = ratelimiter::Clock::now(&clock_now());
    for round in 0..6u64 {
        let key = format!("192.0.2.{round}");
        // Half-way through a window, from both sides at once.
        let mid = now + round * 1_000_000_000;
        let allowed = hammer(&[a.clone(), b.clone()], &key, &quota, mid, 64).await;
        assert_eq!(allowed, 20, "round {round}");
    }
}

/// The calls one decision makes, and whether it was allowed.
async fn decide(store: &DynamoDbStore, key: &str, quota: &Quota, now: u64) -> (bool, u32) {
    let key = Key::new(Operation::ListenerJoin, Identifier::ip(key));
    let applied = store
        .apply_counted(&key, &quota.step(now, 1).unwrap())
        .await;
    (
        matches!(applied.outcome.unwrap(), Outcome::Allowed { .. }),
        applied.calls,
    )
}

#[tokio::test]
async fn each_kind_of_decision_makes_the_expected_calls() {
    let endpoint = dynoxide().await;
    let a = store_with_table(&endpoint).await;
    let b = common::store_at(&endpoint, "RateLimits", common::TEST_TIMEOUT).await;
    let quota = Quota::per_minute(NonZeroU32::new(2).unwrap());
    let now = ratelimiter::Clock::now(&clock_now());

    assert_eq!(decide(&a, "new", &quota, now).await, (true, 1), "new key");
    assert_eq!(
        decide(&a, "new", &quota, now).await,
        (true, 1),
        "busy key with a hint"
    );
    // The bucket is empty; the hint says so: a cached denial makes no call.
    assert_eq!(
        decide(&a, "new", &quota, now).await,
        (false, 0),
        "cached denial"
    );
    // A minute later the key is idle again and the hint says so.
    assert_eq!(
        decide(&a, "new", &quota, now + 60_000_000_000).await,
        (true, 1),
        "idle key"
    );

    // Another container takes the last token: our hint is stale, one call tells.
    assert_eq!(decide(&a, "shared", &quota, now).await, (true, 1));
    assert!(decide(&b, "shared", &quota, now).await.0);
    assert_eq!(
        decide(&a, "shared", &quota, now).await,
        (false, 1),
        "denial"
    );
    assert_eq!(
        decide(&a, "shared", &quota, now).await,
        (false, 0),
        "repeated denial"
    );
    assert_eq!(
        decide(&a, "shared", &quota, now + 1).await,
        (false, 0),
        "still cached"
    );

    assert!(a.calls() >= 5, "the store counts its calls: {}", a.calls());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_race_costs_at_most_two_calls() {
    let endpoint = dynoxide().await;
    let a = Arc::new(store_with_table(&endpoint).await);
    let b = Arc::new(common::store_at(&endpoint, "RateLimits", common::TEST_TIMEOUT).await);
    let quota = Quota::per_minute(NonZeroU32::new(10).unwrap());
    let now = ratelimiter::Clock::now(&clock_now());
    for round in 0..10 {
        let key = format!("race-{round}");
        let (ka, kb) = (key.clone(), key.clone());
        let (sa, sb) = (a.clone(), b.clone());
        let ta = tokio::spawn(async move { decide(&sa, &ka, &quota, now).await });
        let tb = tokio::spawn(async move { decide(&sb, &kb, &quota, now).await });
        let (ra, rb) = (ta.await.unwrap(), tb.await.unwrap());
        assert!(ra.0 && rb.0, "both allowed: {ra:?} {rb:?}");
        assert!(ra.1 <= 2 && rb.1 <= 2, "round {round}: {ra:?} {rb:?}");
    }
}

#[tokio::test]
async fn a_fresh_container_learns_that_keys_are_mid_window() {
    let endpoint = dynoxide().await;
    let warm = store_with_table(&endpoint).await;
    let quota = Quota::per_minute(NonZeroU32::new(10).unwrap());
    let now = ratelimiter::Clock::now(&clock_now());
    let keys: Vec<String> = (0..60).map(|i| format!("10.1.0.{i}")).collect();
    for key in &keys {
        decide(&warm, key, &quota, now).await;
    }
    // A new container, no hints, meets all those keys ten seconds later.
    let fresh = common::store_at(&endpoint, "RateLimits", common::TEST_TIMEOUT).await;
    let mut calls = Vec::new();
    for key in &keys {
        let (allowed, n) = decide(&fresh, key, &quota, now + 10_000_000_000).await;
        assert!(allowed);
        calls.push(n);
    }
    let after_a_few: f64 =
        calls[5..].iter().map(|&n| f64::from(n)).sum::<f64>() / (calls.len() - 5) as f64;
    assert!(
        after_a_few <= 1.1,
        "calls per decision after five keys: {after_a_few} ({calls:?})"
    );
    let overall: f64 = calls.iter().map(|&n| f64::from(n)).sum::<f64>() / calls.len() as f64;
    assert!(overall <= 1.1, "calls per decision: {overall} ({calls:?})");
}
