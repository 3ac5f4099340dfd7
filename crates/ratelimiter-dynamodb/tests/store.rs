//! The DynamoDB store against a real DynamoDB-API server: the conformance
//! suite, the item layout and TTLs, and the calls each decision makes.

mod common;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use common::{clock_now, decide, dynoxide, joins, service, store_at, store_with_table};
use ratelimiter::gcra::Quota;
use ratelimiter::store::{Op, Store};
use ratelimiter::{Builder, Config, PolicyId, Request};
use ratelimiter::{Key, Kind, Slot};
use ratelimiter_dynamodb::{DynamoDbStore, PARTITION_KEY};
use ratelimiter_testing::conformance;

async fn raw_item(store: &DynamoDbStore, pk: &str) -> HashMap<String, AttributeValue> {
    store
        .client()
        .get_item()
        .table_name(store.table())
        .key(PARTITION_KEY, AttributeValue::S(pk.to_owned()))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item()
        .cloned()
        .unwrap_or_else(|| panic!("the item {pk} exists"))
}

fn number(item: &HashMap<String, AttributeValue>, name: &str) -> u64 {
    item[name].as_n().unwrap().parse().unwrap()
}

/// Every item of the table, as text, to look for what must not be there.
async fn table_text(store: &DynamoDbStore) -> String {
    let scan = store
        .client()
        .scan()
        .table_name(store.table())
        .send()
        .await
        .unwrap();
    format!("{:?}", scan.items())
}

#[tokio::test]
async fn conformance_seed_scenarios() {
    let endpoint = dynoxide().await;
    conformance::seed_scenarios(store_with_table(&endpoint).await).await;
}

#[tokio::test]
async fn conformance_probes() {
    let endpoint = dynoxide().await;
    conformance::probes(store_with_table(&endpoint).await).await;
}

#[tokio::test]
async fn conformance_tolerance() {
    let endpoint = dynoxide().await;
    conformance::tolerance(store_with_table(&endpoint).await).await;
}

#[tokio::test]
async fn conformance_route_policies() {
    let endpoint = dynoxide().await;
    conformance::route_policies(store_with_table(&endpoint).await).await;
}

#[tokio::test]
async fn conformance_checks_in_turn() {
    let endpoint = dynoxide().await;
    conformance::checks_in_turn(store_with_table(&endpoint).await).await;
}

#[tokio::test]
async fn conformance_status_and_reset() {
    let endpoint = dynoxide().await;
    conformance::status_and_reset(store_with_table(&endpoint).await).await;
}

#[tokio::test]
async fn conformance_several_limits_and_tiers() {
    let endpoint = dynoxide().await;
    conformance::several_limits_and_tiers(store_with_table(&endpoint).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_two_containers_never_over_admit() {
    let endpoint = dynoxide().await;
    let a = store_with_table(&endpoint).await;
    let b = store_at(&endpoint, "RateLimits", common::TEST_TIMEOUT).await;
    conformance::concurrent_decisions_never_over_admit(vec![a, b], 64).await;
}

#[tokio::test]
async fn conformance_keyed_digests_leave_no_raw_identifier_in_the_table() {
    let endpoint = dynoxide().await;
    let store = store_with_table(&endpoint).await;
    let (identifiers, _) = conformance::keyed_digests(store).await;
    let text = table_text(&store_at(&endpoint, "RateLimits", common::TEST_TIMEOUT).await).await;
    assert!(text.contains("connection~"), "{text}");
    for id in identifiers {
        assert!(!text.contains(id), "{id} is in the table: {text}");
    }
}

#[tokio::test]
async fn one_item_per_identifier_with_a_bucket_per_limit_and_a_safe_ttl() {
    let endpoint = dynoxide().await;
    let clock = clock_now();
    let now_secs = ratelimiter::Clock::now(&clock) / 1_000_000_000;
    let service = service(store_with_table(&endpoint).await, &clock);
    // Another container's view of the table, to read its raw items.
    let table = store_at(&endpoint, "RateLimits", common::TEST_TIMEOUT).await;
    for _ in 0..15 {
        service
            .check_session_creation_limit("user-123")
            .await
            .unwrap();
    }
    let item = raw_item(&table, "user#user-123").await;
    assert_eq!(
        number(&item, "session_create@3600"),
        (now_secs + 15 * 72) * 1_000_000_000
    );
    // The TTL is never before any bucket is full: deleting the item then
    // changes nothing.
    let ttl = number(&item, "ttl");
    assert!(ttl >= now_secs + 15 * 72, "ttl {ttl}");
    assert!(
        ttl <= now_secs + 3600,
        "ttl {ttl} beyond the longest period"
    );
    // A one-minute policy counted against the same user (another kind than
    // its own) keeps the item as long as the user's hourly bucket needs.
    let user = ratelimiter::Kind::USER;
    let as_user = Request::from((PolicyId::LISTENER_JOIN, "user-123")).kind(Some(&user));
    assert!(service.decide(as_user).await.unwrap().allowed());
    let item = raw_item(&table, "user#user-123").await;
    assert_eq!(number(&item, "ttl"), now_secs + 3600, "{item:?}");
    assert!(item.contains_key("listener_join@60"), "{item:?}");

    // A listener's two policies share the item of its address.
    service
        .check_connection_attempt_limit("192.0.2.1")
        .await
        .unwrap();
    service
        .check_listener_join_limit("192.0.2.1")
        .await
        .unwrap();
    let item = raw_item(&table, "ip#192.0.2.1").await;
    assert_eq!(
        number(&item, "connection_attempt@60"),
        (now_secs + 3) * 1_000_000_000
    );
    assert_eq!(
        number(&item, "listener_join@60"),
        (now_secs + 6) * 1_000_000_000
    );
    // Kept until every policy on addresses is full again: a minute.
    assert_eq!(number(&item, "ttl"), now_secs + 60);
    assert_eq!(item.len(), 4, "{item:?}");
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
    assert!(store.table_exists().await);
}

#[tokio::test]
async fn each_kind_of_decision_makes_the_expected_calls() {
    let endpoint = dynoxide().await;
    let clock = clock_now();
    let a = joins(store_with_table(&endpoint).await, 2, &clock);
    let b = joins(
        store_at(&endpoint, "RateLimits", common::TEST_TIMEOUT).await,
        2,
        &clock,
    );

    assert_eq!(decide(&a, "new").await, (true, 1), "new key");
    assert_eq!(decide(&a, "new").await, (true, 1), "busy key with a hint");
    // The bucket is empty; the hint says so: a cached denial makes no call.
    assert_eq!(decide(&a, "new").await, (false, 0), "cached denial");
    // A minute later the key is idle again and the hint says so.
    clock.advance(Duration::from_secs(60));
    assert_eq!(decide(&a, "new").await, (true, 1), "idle key");

    // Another container takes the last token: our hint is stale, one call tells.
    assert_eq!(decide(&a, "shared").await, (true, 1));
    assert!(decide(&b, "shared").await.0);
    assert_eq!(decide(&a, "shared").await, (false, 1), "denial");
    assert_eq!(decide(&a, "shared").await, (false, 0), "repeated denial");
    clock.advance(Duration::from_nanos(1));
    assert_eq!(decide(&a, "shared").await, (false, 0), "still cached");
}

#[tokio::test]
async fn the_store_counts_its_calls() {
    let endpoint = dynoxide().await;
    let store = store_with_table(&endpoint).await;
    let (key, slot) = (Key::new(&Kind::IP, "a"), Slot::new("listener_join@60"));
    let quota = Quota::per_minute(NonZeroU32::new(2).unwrap());
    let now = ratelimiter::Clock::now(&clock_now());
    let op = Op::new(&slot, quota.step(now, 1).unwrap());
    let before = store.calls();
    let applied = store.apply(&key, &[op], None, 0, &mut [0]).await;
    assert_eq!(applied.calls, 1);
    assert_eq!(store.calls() - before, 1);
}

#[tokio::test]
async fn a_policy_of_two_limits_costs_one_call_per_allowed_decision() {
    let endpoint = dynoxide().await;
    let clock = clock_now();
    let config = Config::from_file_text(
        "limits.toml",
        "[policy.send_message]\nkey = \"connection\"\nlimits = [\"5/10s\", \"100/h\"]\n",
        |_| None,
    )
    .unwrap();
    let service = Builder::from_config(config)
        .clock(clock.clone())
        .build(store_with_table(&endpoint).await);
    let id = service.policy_id("send_message").unwrap();
    let mut calls = Vec::new();
    // New keys, busy keys (the same key again), and idle ones (a minute later).
    for round in 0..3 {
        for key in ["c1", "c2", "c3"] {
            for _ in 0..3 {
                let verdict = service.decide((id, key)).await.unwrap();
                assert!(verdict.allowed());
                calls.push(verdict.calls);
            }
        }
        assert!(round < 3);
        clock.advance(Duration::from_secs(60));
    }
    assert!(calls.iter().all(|&n| n == 1), "{calls:?}");
    // The hour's bucket kept counting across the idle minutes: nine tokens
    // of 36 s each, three minutes of refill, four still in use.
    let statuses = service.status((id, "c1")).await.unwrap();
    assert_eq!((statuses[0].count, statuses[1].count), (0, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_race_costs_at_most_two_calls() {
    let endpoint = dynoxide().await;
    let clock = clock_now();
    let a = Arc::new(joins(store_with_table(&endpoint).await, 10, &clock));
    let b = Arc::new(joins(
        store_at(&endpoint, "RateLimits", common::TEST_TIMEOUT).await,
        10,
        &clock,
    ));
    for round in 0..10 {
        let key = format!("race-{round}");
        let (ka, kb) = (key.clone(), key.clone());
        let (sa, sb) = (a.clone(), b.clone());
        let ta = tokio::spawn(async move { decide(&sa, &ka).await });
        let tb = tokio::spawn(async move { decide(&sb, &kb).await });
        let (ra, rb) = (ta.await.unwrap(), tb.await.unwrap());
        assert!(ra.0 && rb.0, "both allowed: {ra:?} {rb:?}");
        assert!(ra.1 <= 2 && rb.1 <= 2, "round {round}: {ra:?} {rb:?}");
    }
}

#[tokio::test]
async fn a_fresh_container_learns_that_keys_are_mid_window() {
    let endpoint = dynoxide().await;
    let clock = clock_now();
    let warm = joins(store_with_table(&endpoint).await, 10, &clock);
    let keys: Vec<String> = (0..60).map(|i| format!("10.1.0.{i}")).collect();
    for key in &keys {
        decide(&warm, key).await;
    }
    // A new container, no hints, meets all those keys ten seconds later.
    let fresh = joins(
        store_at(&endpoint, "RateLimits", common::TEST_TIMEOUT).await,
        10,
        &clock,
    );
    clock.advance(Duration::from_secs(10));
    let mut calls = Vec::new();
    for key in &keys {
        let (allowed, n) = decide(&fresh, key).await;
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

#[tokio::test]
async fn items_of_the_old_layout_are_migrated_once_and_never_misread() {
    use ratelimiter_dynamodb::admin::{Migration, migrate_legacy_items};
    let endpoint = dynoxide().await;
    let store = store_with_table(&endpoint).await;
    let clock = clock_now();
    let now = ratelimiter::Clock::now(&clock);
    let put = |pk: &str, tat: u64| {
        store
            .client()
            .put_item()
            .table_name("RateLimits")
            .item(PARTITION_KEY, AttributeValue::S(pk.to_owned()))
            .item("tat", AttributeValue::N(tat.to_string()))
            .item(
                "ttl",
                AttributeValue::N((tat / 1_000_000_000 + 1).to_string()),
            )
            .send()
    };
    // Two heartbeats used on conn-1 (a full bucket at now + 60 s), a spent
    // listener-join bucket, and one long past.
    put("heartbeat#connection#conn-1", now + 60_000_000_000)
        .await
        .unwrap();
    put("listener_join#ip#198.51.100.9", now + 60_000_000_000)
        .await
        .unwrap();
    put("session_create#user#old", now - 1).await.unwrap();
    let service = service(
        store_at(&endpoint, "RateLimits", common::TEST_TIMEOUT).await,
        &clock,
    );
    let table = store_at(&endpoint, "RateLimits", common::TEST_TIMEOUT).await;
    // Before the migration the old items are not read: nothing misreads them.
    let status = service
        .status((PolicyId::HEARTBEAT, "conn-1"))
        .await
        .unwrap();
    assert_eq!(status[0].count, 0);
    let migration = migrate_legacy_items(&table, now / 1_000_000_000, None)
        .await
        .unwrap();
    assert_eq!(
        migration,
        Migration {
            migrated: 2,
            expired: 1,
            skipped: 0
        }
    );
    assert!(service.check_heartbeat_limit("conn-1").await.is_err());
    assert!(
        service
            .check_listener_join_limit("198.51.100.9")
            .await
            .is_err()
    );
    assert!(!table_text(&table).await.contains("heartbeat#"));
    // Again: nothing left to do.
    let again = migrate_legacy_items(&table, now / 1_000_000_000, None)
        .await
        .unwrap();
    assert_eq!(again, Migration::default());
}

#[tokio::test]
async fn conformance_caps() {
    let endpoint = dynoxide().await;
    conformance::caps(store_with_table(&endpoint).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_caps_two_containers_never_over_admit() {
    let endpoint = dynoxide().await;
    let a = store_with_table(&endpoint).await;
    let b = store_at(&endpoint, "RateLimits", common::TEST_TIMEOUT).await;
    conformance::caps_never_over_admit(vec![a, b], 32).await;
}

#[tokio::test]
async fn conformance_caps_on_two_items() {
    let endpoint = dynoxide().await;
    conformance::caps_on_two_items(store_with_table(&endpoint).await).await;
}

/// Every call asks for its consumed capacity, and a verdict carries what
/// its calls consumed: one write unit for a small item, one more for a
/// first shape that was wrong (a failed condition is billed, though
/// DynamoDB does not report it), none for a denial the deny cache
/// answers.
#[tokio::test]
async fn verdicts_carry_the_capacity_their_calls_consumed() {
    let endpoint = dynoxide().await;
    let clock = clock_now();
    let file = "[policy.beat]\nkey = \"connection\"\nlimits = [\"2/min\"]\n";
    // Two containers on one table.
    let a = conformance::service_with(store_with_table(&endpoint).await, &clock, file);
    let b = conformance::service_with(
        store_at(&endpoint, "RateLimits", Duration::from_secs(5)).await,
        &clock,
        file,
    );
    let beat = a.policy_id("beat").unwrap();
    let spent =
        |v: &ratelimiter::Verdict| (v.allowed(), v.calls, v.capacity.write, v.capacity.read);
    // A new key: one write of one unit.
    let first = a.decide((beat, "conn-cap")).await.unwrap();
    assert_eq!(spent(&first), (true, 1, 1, 0));
    // Another container, which has not seen the key, guesses it idle: the
    // failed condition and the write after it, two units.
    let second = b.decide((beat, "conn-cap")).await.unwrap();
    assert_eq!(spent(&second), (true, 2, 2, 0));
    // The first container, refused by the table: the failed condition.
    let refused = a.decide((beat, "conn-cap")).await.unwrap();
    assert_eq!(spent(&refused), (false, 1, 1, 0));
    // Then refused by what it knows: nothing.
    let cached = a.decide((beat, "conn-cap")).await.unwrap();
    assert_eq!(spent(&cached), (false, 0, 0, 0));
}
