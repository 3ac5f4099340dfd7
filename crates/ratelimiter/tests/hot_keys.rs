//! Hot keys served from batches, through the service: processes (services
//! on one shared store, each with its own deny cache and batches) never
//! admit more than the exact rule in any span of time, whatever the
//! traffic, batch sizes and throttles; a busy key uses nearly all of its
//! rate in far fewer writes than decisions; a throttled key of a batching
//! policy is refused, not decided in each process at its own limits.

use std::num::NonZeroU32;
use std::time::Duration;

use proptest::prelude::*;
use ratelimiter::gcra::Nanos;
use ratelimiter::policy::Batching;
use ratelimiter::{Builder, Clock, Degradation, FakeClock, Kind, Policy, RateLimitService};
use ratelimiter_testing::fakes::Faulty;

mod model;

use model::{START, worst_excess};

/// Requests on one key: (gap since the previous one, which process,
/// whether the store starts or stops throttling the key first).
#[derive(Clone, Debug)]
struct Traffic {
    limit: u32,
    period_secs: u64,
    batching: Batching,
    processes: usize,
    requests: Vec<(Nanos, usize, bool)>,
}

fn traffic() -> impl Strategy<Value = Traffic> {
    (2u32..=400, 1u64..=60, 1usize..=5, 0u32..=3).prop_flat_map(
        |(limit, period_secs, processes, fixed)| {
            let t = period_secs * 1_000_000_000 / u64::from(limit);
            let gap = prop_oneof![
                6 => 0..=t / 8,
                3 => 0..=t,
                1 => 0..=t * 8,
            ];
            let batching = match fixed {
                0 => Batching::Fixed(NonZeroU32::new(limit.div_ceil(3)).unwrap()),
                _ => Batching::Auto,
            };
            prop::collection::vec((gap, 0..processes, prop::bool::weighted(0.02)), 1..300).prop_map(
                move |requests| Traffic {
                    limit,
                    period_secs,
                    batching,
                    processes,
                    requests,
                },
            )
        },
    )
}

/// The services of `processes` processes on one store, the policy `hot`
/// (per tenant) with `limit` per `period_secs`, served as `batching` says.
fn processes(
    store: &Faulty,
    clock: &FakeClock,
    spec: &str,
    batching: Batching,
    processes: usize,
) -> Vec<RateLimitService<Faulty, FakeClock>> {
    let policy = Policy::new(
        "hot",
        Kind::new("tenant").unwrap(),
        &[spec.parse().unwrap()],
    )
    .unwrap()
    .with_batching(batching)
    .unwrap();
    (0..processes)
        .map(|_| {
            Builder::new()
                .clock(clock.clone())
                .policy(policy.clone())
                .build(store.clone())
        })
        .collect()
}

/// Runs the traffic: the times of the admissions.
fn run(traffic: &Traffic) -> Vec<Nanos> {
    let store = Faulty::default();
    let clock = FakeClock::at_secs(START / 1_000_000_000);
    let spec = format!("{}/{}s", traffic.limit, traffic.period_secs);
    let services = processes(&store, &clock, &spec, traffic.batching, traffic.processes);
    let id = services[0].policy_id("hot").unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut admitted = Vec::new();
    let mut throttled = false;
    runtime.block_on(async {
        for &(gap, process, toggle) in &traffic.requests {
            clock.advance(Duration::from_nanos(gap));
            if toggle {
                throttled = !throttled;
                store.throttle(throttled.then_some("tenant#acme"));
            }
            let verdict = services[process].decide((id, "acme")).await.unwrap();
            if verdict.allowed() {
                admitted.push(Clock::now(&clock));
            }
        }
    });
    admitted
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever the processes, batch sizes, traffic and throttles: never
    /// more than the exact bound in any span.
    #[test]
    fn batched_hot_keys_never_admit_more_than_exact(traffic in traffic()) {
        let admitted = run(&traffic);
        let quota = ratelimiter::Quota::new(
            NonZeroU32::new(traffic.limit).unwrap(),
            Duration::from_secs(traffic.period_secs),
        ).unwrap();
        prop_assert_eq!(worst_excess(&quota, &admitted), 0, "admitted at {:?}", admitted);
    }
}

/// Four processes, each asking every millisecond for 5 s (1 000 a second
/// each, enough for `auto`), one after the other, on a key of 400/s
/// served as `batching` says: the times of the admissions, and the calls
/// the store took.
fn saturate(batching: Batching) -> (Vec<Nanos>, usize) {
    let store = Faulty::default();
    let clock = FakeClock::at_secs(START / 1_000_000_000);
    let services = processes(&store, &clock, "400/s", batching, 4);
    let id = services[0].policy_id("hot").unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut admitted = Vec::new();
    runtime.block_on(async {
        for i in 0..20_000 {
            clock.advance(Duration::from_micros(250));
            let verdict = services[i % 4].decide((id, "acme")).await.unwrap();
            if verdict.allowed() {
                admitted.push(Clock::now(&clock));
            }
        }
    });
    (admitted, store.calls() as usize)
}

/// Batched, a saturated key uses nearly all of its rate, in far fewer
/// writes than admissions, and never more than exact.
#[test]
fn a_saturated_key_uses_its_rate_in_few_writes() {
    let (admitted, calls) = saturate(Batching::Auto);
    let quota = ratelimiter::Quota::per_second(NonZeroU32::new(400).unwrap());
    assert_eq!(worst_excess(&quota, &admitted), 0);
    // The exact bound over the 5 s: the burst and what refills.
    let bound = 400 + 5 * 400;
    assert!(
        admitted.len() * 100 >= bound * 90,
        "{} admitted of {bound}",
        admitted.len()
    );
    assert!(
        calls * 2 <= admitted.len(),
        "{calls} calls for {} admissions",
        admitted.len()
    );
}

/// The same key with batching off: a write per admission at least (the
/// comparison the test above rests on).
#[test]
fn unbatched_the_same_key_takes_a_write_per_admission() {
    let (admitted, calls) = saturate(Batching::Off);
    assert!(calls >= admitted.len(), "{calls} calls");
}

/// A key the store throttles: with batching, it is refused while held,
/// not decided in this process at its own limits (which, in every
/// process, admits one limit each); with batching off, as before.
#[test]
fn a_throttled_key_of_a_batching_policy_is_refused_not_decided_here() {
    for (batching, admitted_while_throttled) in [(Batching::Auto, 0), (Batching::Off, 10)] {
        let store = Faulty::default();
        let clock = FakeClock::at_secs(START / 1_000_000_000);
        let services = processes(&store, &clock, "10/s", batching, 1);
        let id = services[0].policy_id("hot").unwrap();
        store.throttle(Some("tenant#acme"));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let verdicts = runtime.block_on(async {
            let mut verdicts = Vec::new();
            for _ in 0..20 {
                verdicts.push(services[0].decide((id, "acme")).await.unwrap());
            }
            verdicts
        });
        let admitted = verdicts.iter().filter(|v| v.allowed()).count();
        assert_eq!(admitted, admitted_while_throttled, "{batching}");
        assert!(
            verdicts
                .iter()
                .all(|v| v.degraded == Some(Degradation::Throttled)),
            "{batching}: {verdicts:?}"
        );
        // Refused for the hold, and told when to come back.
        if batching == Batching::Auto {
            assert_eq!(verdicts[5].retry_after_secs(), 1);
        }
    }
}

/// Once the throttle ends, a batching policy's key takes a batch and is
/// served from it: writes well under one per decision.
#[test]
fn after_a_throttle_the_key_is_served_from_batches() {
    let store = Faulty::default();
    let clock = FakeClock::at_secs(START / 1_000_000_000);
    let services = processes(&store, &clock, "1000/s", Batching::Auto, 1);
    let id = services[0].policy_id("hot").unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        store.throttle(Some("tenant#acme"));
        assert!(!services[0].decide((id, "acme")).await.unwrap().allowed());
        store.throttle(None);
        clock.advance(Duration::from_secs(1));
        let before = store.calls();
        let mut admitted = 0;
        for _ in 0..200 {
            clock.advance(Duration::from_millis(1));
            admitted += u32::from(services[0].decide((id, "acme")).await.unwrap().allowed());
        }
        assert_eq!(admitted, 200);
        let calls = store.calls() - before;
        assert!(calls <= 20, "{calls} calls for 200 decisions");
    });
}

/// Built from a file: `batch = "auto" | "off" | N`, and what is wrong
/// with anything else.
#[test]
fn batch_settings_read_from_a_file() {
    use ratelimiter::Config;
    let read = |batch: &str| {
        Config::from_file_text(
            "limits.toml",
            &format!("[policy.api]\nkey = \"tenant\"\nlimits = [\"500/s\"]\nbatch = {batch}\n"),
            |_| None,
        )
        .map(|config| {
            let builder = Builder::from_config(config);
            let limiter = builder.in_memory();
            let id = limiter.policy_id("api").unwrap();
            limiter.policies()[id].batching()
        })
        .map_err(|e| e.to_string())
    };
    assert_eq!(read("\"auto\""), Ok(Batching::Auto));
    assert_eq!(read("\"off\""), Ok(Batching::Off));
    assert_eq!(
        read("50"),
        Ok(Batching::Fixed(NonZeroU32::new(50).unwrap()))
    );
    for (batch, expected) in [
        (
            "\"big\"",
            "limits.toml:4: policy \"api\": batch must be \"auto\", \"off\" or a whole number of tokens from 1, got \"big\"",
        ),
        (
            "0",
            "batch must be \"auto\", \"off\" or a whole number of tokens from 1, got 0",
        ),
        (
            "1.5",
            "batch must be \"auto\", \"off\" or a whole number of tokens from 1, got a float",
        ),
        ("600", "a batch of 600 tokens exceeds the limit 500/s"),
    ] {
        let error = read(batch).unwrap_err();
        assert!(error.contains(expected), "{batch}: {error}");
    }
    // A cap's seats are not tokens.
    let cap = Config::from_file_text(
        "limits.toml",
        "[policy.open]\nkey = \"ip\"\nconcurrent = 2\nbatch = \"auto\"\n",
        |_| None,
    )
    .unwrap_err()
    .to_string();
    assert!(cap.contains("it takes no batch"), "{cap}");
}

/// A reset key starts from a full bucket: the batch this process held
/// before is dropped, not spent on top of it.
#[test]
fn a_reset_drops_the_batch_in_hand() {
    let store = Faulty::default();
    let clock = FakeClock::at_secs(START / 1_000_000_000);
    let fixed = Batching::Fixed(NonZeroU32::new(5).unwrap());
    let services = processes(&store, &clock, "10/s", fixed, 1);
    let id = services[0].policy_id("hot").unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        let first = services[0].decide((id, "acme")).await.unwrap();
        let second = services[0].decide((id, "acme")).await.unwrap();
        assert_eq!(
            (first.calls, second.calls),
            (1, 0),
            "the second from the batch"
        );
        services[0].reset((id, "acme")).await.unwrap();
        let after = services[0].decide((id, "acme")).await.unwrap();
        assert_eq!(after.calls, 1, "a new batch, from the full bucket");
        assert_eq!(after.decision.remaining, 9, "{after:?}");
    });
}
