//! When DynamoDB is missing, refuses or hangs: decisions stay bounded in
//! time, follow the failure mode, are marked degraded and logged; the
//! circuit breaker stops calling a failing table and closes when it is back.

mod common;

use std::time::{Duration, Instant};

use common::{clock_now, dynoxide, service, service_in, store_at};
use ratelimiter::failure::BreakerState;
use ratelimiter::{Builder, CircuitBreaker, Config, Degradation, FailureMode};
use ratelimiter_testing::faults::read_message;
use ratelimiter_testing::{Format, Logs};
use tokio::net::TcpListener;

const TIMEOUT: Duration = Duration::from_millis(100);

/// An endpoint whose port refuses connections.
async fn refused_endpoint() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{address}")
}

/// An endpoint that accepts connections and never answers.
async fn hanging_endpoint() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    format!("http://{address}")
}

/// Checks a heartbeat on a store at `endpoint` (no table created) and
/// expects it allowed, degraded, warned about, and answered well within a
/// second although the store never answers.
async fn fails_open_quickly(endpoint: &str, table: &str, expect_in_log: &str, why: Degradation) {
    let (logs, _guard) = Logs::capture(Format::Text);
    let clock = clock_now();
    let service = service(store_at(endpoint, table, TIMEOUT).await, &clock);
    let started = Instant::now();
    let verdict = service.check_heartbeat_limit("conn-1").await.unwrap();
    let elapsed = started.elapsed();
    assert!(verdict.allowed() && verdict.is_degraded(), "{verdict:?}");
    assert_eq!(verdict.degraded, Some(why), "{verdict:?}");
    assert_eq!(verdict.calls, 1);
    // Bounded: the timeout is 100 ms; without it a hanging endpoint never answers.
    assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
    let text = logs.text();
    assert!(text.contains("WARN"), "{text}");
    assert!(text.contains("fail open"), "{text}");
    assert!(text.contains(expect_in_log), "{text}");
}

#[tokio::test]
async fn a_missing_table_fails_open() {
    let endpoint = dynoxide().await;
    fails_open_quickly(
        &endpoint,
        "Missing",
        "ResourceNotFoundException",
        Degradation::Unavailable,
    )
    .await;
}

#[tokio::test]
async fn a_refused_port_fails_open() {
    fails_open_quickly(
        &refused_endpoint().await,
        "RateLimits",
        "Unavailable",
        Degradation::Unavailable,
    )
    .await;
}

#[tokio::test]
async fn a_hanging_endpoint_fails_open_within_the_timeout() {
    fails_open_quickly(
        &hanging_endpoint().await,
        "RateLimits",
        "Timeout",
        Degradation::Timeout,
    )
    .await;
}

#[tokio::test]
async fn the_breaker_stops_calling_a_hanging_endpoint() {
    let (_logs, _guard) = Logs::capture(Format::Text);
    let clock = clock_now();
    let store = store_at(&hanging_endpoint().await, "RateLimits", TIMEOUT).await;
    let service = Builder::new()
        .clock(clock.clone())
        .breaker(CircuitBreaker::new(3, Duration::from_secs(5)))
        .build(store);
    for _ in 0..3 {
        assert!(
            service
                .check_heartbeat_limit("c")
                .await
                .unwrap()
                .is_degraded()
        );
    }
    assert_eq!(service.store().calls(), 3);
    let now = ratelimiter::Clock::now(&clock);
    assert_eq!(service.breaker().state(now), BreakerState::Open);
    // While open, no call is made at all.
    for _ in 0..100 {
        let verdict = service.check_heartbeat_limit("c").await.unwrap();
        assert_eq!(verdict.degraded, Some(Degradation::BreakerOpen));
    }
    assert_eq!(service.store().calls(), 3);
}

#[tokio::test]
async fn the_breaker_closes_when_the_table_comes_back() {
    let (logs, _guard) = Logs::capture(Format::Text);
    let endpoint = dynoxide().await;
    let clock = clock_now();
    let store = store_at(&endpoint, "RateLimits", common::TEST_TIMEOUT).await;
    let service = Builder::new()
        .clock(clock.clone())
        .breaker(CircuitBreaker::new(2, Duration::from_secs(5)))
        .build(store);
    for _ in 0..2 {
        assert!(
            service
                .check_listener_join_limit("192.0.2.1")
                .await
                .unwrap()
                .is_degraded()
        );
    }
    assert!(
        logs.text().contains("circuit breaker opened"),
        "{}",
        logs.text()
    );
    service.store().create_table().await.unwrap();
    // Still open: the table is back but nobody asks yet.
    assert!(
        service
            .check_listener_join_limit("192.0.2.1")
            .await
            .unwrap()
            .is_degraded()
    );
    clock.advance(Duration::from_secs(5));
    let verdict = service
        .check_listener_join_limit("192.0.2.1")
        .await
        .unwrap();
    assert!(
        !verdict.is_degraded(),
        "the probe reached the table: {verdict:?}"
    );
    let now = ratelimiter::Clock::now(&clock);
    assert_eq!(service.breaker().state(now), BreakerState::Closed);
    assert!(
        logs.text().contains("circuit breaker closed"),
        "{}",
        logs.text()
    );
}

#[tokio::test]
async fn closed_mode_denies_while_the_table_is_away() {
    let (logs, _guard) = Logs::capture(Format::Text);
    let clock = clock_now();
    let store = store_at(&hanging_endpoint().await, "RateLimits", TIMEOUT).await;
    let service = service_in(store, &clock, FailureMode::Closed);
    let err = service
        .check_session_creation_limit("user-1")
        .await
        .unwrap_err();
    assert!(err.denied().unwrap().retry_after_secs() >= 1);
    assert!(
        logs.text().contains("failure_mode=\"closed\""),
        "{}",
        logs.text()
    );
}

#[tokio::test]
async fn local_mode_stops_one_client_while_the_table_is_away() {
    let (_logs, _guard) = Logs::capture(Format::Text);
    let clock = clock_now();
    let store = store_at(&refused_endpoint().await, "RateLimits", TIMEOUT).await;
    let config = Config::from_lookup(|var| {
        (var == "RATE_LIMIT_FAILURE_MODE_HEARTBEAT").then(|| "local".to_owned())
    })
    .unwrap();
    let service = Builder::from_config(config)
        .clock(clock.clone())
        .build(store);
    assert!(
        service
            .check_heartbeat_limit("noisy")
            .await
            .unwrap()
            .is_degraded()
    );
    assert!(
        service
            .check_heartbeat_limit("noisy")
            .await
            .unwrap()
            .is_degraded()
    );
    assert_eq!(
        service
            .check_heartbeat_limit("noisy")
            .await
            .unwrap_err()
            .denied()
            .map(|denied| denied.retry_after_secs()),
        Some(30)
    );
    // Other policies stay in their own mode: open.
    for _ in 0..30 {
        service
            .check_listener_join_limit("192.0.2.9")
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn missing_credentials_fail_open() {
    let (logs, _guard) = Logs::capture(Format::Text);
    let endpoint = dynoxide().await;
    // A client with no credentials provider at all, as on a host where none resolves.
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version_latest()
        .http_client(ratelimiter_dynamodb::https_client())
        .region(aws_sdk_dynamodb::config::Region::new("us-east-1"))
        .endpoint_url(&endpoint)
        .build();
    let store = ratelimiter_dynamodb::DynamoDbStore::new(
        aws_sdk_dynamodb::Client::from_conf(config),
        "RateLimits",
    );
    let clock = clock_now();
    let service = service(store, &clock);
    let verdict = service
        .check_connection_attempt_limit("192.0.2.77")
        .await
        .unwrap();
    assert!(verdict.allowed() && verdict.is_degraded(), "{verdict:?}");
    assert!(logs.text().contains("fail open"), "{}", logs.text());
}

/// An endpoint that rejects every `UpdateItem` as DynamoDB does when its
/// condition fails, returning an old TAT of the connection-attempt bucket
/// that is busy (`now + 1 s`) and idle (1 ns after the epoch) in turn: the
/// shape the store picks is always wrong.
async fn shape_flipping_endpoint(now: u64) -> String {
    use tokio::io::{AsyncWriteExt, BufReader};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut answered = 0u64;
        while let Ok((socket, _)) = listener.accept().await {
            let mut socket = BufReader::new(socket);
            // Every request is rejected alike: what it asks does not matter.
            while read_message(&mut socket).await.is_some() {
                let tat = if answered.is_multiple_of(2) {
                    now + 1_000_000_000
                } else {
                    1
                };
                answered += 1;
                let body = format!(
                    r#"{{"__type":"com.amazonaws.dynamodb.v20120810#ConditionalCheckFailedException","message":"The conditional request failed","Item":{{"connection_attempt@60":{{"N":"{tat}"}}}}}}"#
                );
                let response = format!(
                    "HTTP/1.1 400 Bad Request\r\ncontent-type: application/x-amz-json-1.0\r\nx-amzn-requestid: flip-{answered}\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                socket
                    .get_mut()
                    .write_all(response.as_bytes())
                    .await
                    .unwrap();
            }
        }
    });
    format!("http://{address}")
}

/// A service on `store` whose connection-attempt policy is served as
/// `batching` says.
fn attempts_batched(
    store: ratelimiter_dynamodb::DynamoDbStore,
    clock: &ratelimiter::FakeClock,
    batching: ratelimiter::policy::Batching,
) -> ratelimiter::RateLimitService<ratelimiter_dynamodb::DynamoDbStore, ratelimiter::FakeClock> {
    let config = Config::from_file_text("limits.toml", "", |_| None).unwrap();
    let attempts = config.policies[ratelimiter::PolicyId::CONNECTION_ATTEMPT]
        .clone()
        .with_batching(batching)
        .unwrap();
    Builder::from_config(config)
        .clock(clock.clone())
        .policy(attempts)
        .build(store)
}

/// A key whose shape keeps changing is given up after three calls, and is
/// hot: with `batch = "off"`, decided in this process at its own limits,
/// not failed open; by default (a batching policy), refused until a batch
/// can be taken. Neither counts for the breaker.
#[tokio::test]
async fn a_key_whose_shape_keeps_changing_is_given_up_after_three_calls_and_decided_here() {
    use ratelimiter::policy::Batching;

    let (logs, _guard) = Logs::capture(Format::Text);
    let clock = clock_now();
    let now = ratelimiter::Clock::now(&clock);
    let endpoint = shape_flipping_endpoint(now).await;
    let store = store_at(&endpoint, "RateLimits", common::TEST_TIMEOUT).await;
    let off = attempts_batched(store, &clock, Batching::Off);
    let verdict = off
        .check_connection_attempt_limit("192.0.2.80")
        .await
        .unwrap();
    // A contended key is decided in this process at its own limits, not
    // failed open, and the breaker does not count it.
    assert!(verdict.allowed(), "{verdict:?}");
    assert_eq!(verdict.degraded, Some(Degradation::Contended));
    assert_eq!((verdict.calls, off.store().calls()), (3, 3));
    for _ in 0..25 {
        off.check_connection_attempt_limit("192.0.2.80").await.ok();
    }
    let verdict = off
        .decide((ratelimiter::PolicyId::CONNECTION_ATTEMPT, "192.0.2.80"))
        .await
        .unwrap();
    assert!(!verdict.allowed(), "20 a minute, decided here: {verdict:?}");
    assert_eq!(
        off.breaker().state(ratelimiter::Clock::now(&clock)),
        BreakerState::Closed
    );
    assert!(
        logs.text().contains("gave up after 3 calls"),
        "{}",
        logs.text()
    );

    // The default: refused for the hold, with no call while held. (The
    // endpoint serves one connection at a time: another for this client.)
    let endpoint = shape_flipping_endpoint(now).await;
    let store = store_at(&endpoint, "RateLimits", common::TEST_TIMEOUT).await;
    let batched = service(store, &clock);
    let verdict = batched
        .decide((ratelimiter::PolicyId::CONNECTION_ATTEMPT, "192.0.2.81"))
        .await
        .unwrap();
    assert!(!verdict.allowed(), "{verdict:?}");
    assert_eq!(verdict.degraded, Some(Degradation::Contended));
    assert_eq!(verdict.retry_after_secs(), 1);
    let held = batched
        .decide((ratelimiter::PolicyId::CONNECTION_ATTEMPT, "192.0.2.81"))
        .await
        .unwrap();
    assert!(!held.allowed() && held.is_degraded(), "{held:?}");
    assert_eq!(batched.store().calls(), 3, "no call while held");
    assert_eq!(
        batched.breaker().state(ratelimiter::Clock::now(&clock)),
        BreakerState::Closed
    );
}

#[tokio::test]
async fn a_new_containers_first_call_may_take_the_connect_timeout_more() {
    let (_logs, _guard) = Logs::capture(Format::Text);
    let clock = clock_now();
    let store = store_at(&hanging_endpoint().await, "RateLimits", TIMEOUT)
        .await
        .with_connect_timeout(Duration::from_millis(400));
    let service = service(store, &clock);
    // Until a call has answered, a call has 100 + 400 ms.
    for _ in 0..2 {
        let started = Instant::now();
        let verdict = service.check_heartbeat_limit("c").await.unwrap();
        let elapsed = started.elapsed();
        assert_eq!(verdict.degraded, Some(Degradation::Timeout));
        assert!(elapsed >= Duration::from_millis(450), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
    }
    // Once a call has answered (here, on a healthy table), 100 ms again.
    let endpoint = dynoxide().await;
    let store = store_at(&endpoint, "RateLimits", TIMEOUT)
        .await
        .with_connect_timeout(Duration::from_secs(5));
    store.create_table().await.unwrap();
    let service = common::service(store, &clock);
    service.check_heartbeat_limit("c").await.unwrap();
    assert!(
        !service
            .check_heartbeat_limit("c")
            .await
            .unwrap()
            .is_degraded()
    );
}

#[tokio::test]
async fn a_new_containers_first_call_may_be_a_read_a_refund_or_a_reset() {
    use ratelimiter::gcra::Quota;
    use ratelimiter::key::{Key, Kind, Slot};
    use ratelimiter::store::{Op, Store, StoreErrorKind};
    let store = store_at(&hanging_endpoint().await, "RateLimits", TIMEOUT)
        .await
        .with_connect_timeout(Duration::from_millis(400));
    let key = Key::new(&Kind::CONNECTION, "c");
    let slot = Slot::new("heartbeat@60");
    let step = Quota::per_minute(std::num::NonZeroU32::new(2).unwrap())
        .step(ratelimiter::Clock::now(&clock_now()), 1)
        .unwrap();
    // A status read, a refund or a reset may come first in a new
    // container: until a call has answered, each has 100 + 400 ms too.
    let started = Instant::now();
    let loaded = store.load(&key, &[&slot], &mut [0]).await;
    let refunded = store
        .refund(&key, &[Op::new(&slot, step)])
        .await
        .map(|_| ());
    let removed = store.remove(&key, &[&slot]).await;
    let elapsed = started.elapsed();
    for result in [loaded, refunded, removed] {
        assert_eq!(result.unwrap_err().kind(), StoreErrorKind::Timeout);
    }
    assert!(elapsed >= 3 * Duration::from_millis(450), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(6), "{elapsed:?}");
    assert_eq!(store.calls(), 3);
}

#[tokio::test]
async fn a_first_read_that_is_answered_ends_the_first_call_time() {
    use ratelimiter::key::{Key, Kind, Slot};
    use ratelimiter::store::{Store, StoreErrorKind};
    use ratelimiter_testing::faults::{Fault, FaultProxy};
    let endpoint = dynoxide().await;
    common::store_with_table(&endpoint).await;
    let proxy = FaultProxy::start(&endpoint).await;
    let store = store_at(proxy.endpoint(), "RateLimits", TIMEOUT)
        .await
        .with_connect_timeout(Duration::from_secs(3));
    let key = Key::new(&Kind::CONNECTION, "c");
    let slot = Slot::new("heartbeat@60");
    // Answered (no item): a connection is set up.
    store.load(&key, &[&slot], &mut [0]).await.unwrap();
    // So the next call, of another kind, has the client's 100 ms, not
    // 100 ms + 3 s, and gives up long before the stalled answer comes.
    proxy.set(Fault::Stall(Duration::from_secs(10)));
    let started = Instant::now();
    let err = store.remove(&key, &[&slot]).await.unwrap_err();
    let elapsed = started.elapsed();
    assert_eq!(err.kind(), StoreErrorKind::Timeout);
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
}
