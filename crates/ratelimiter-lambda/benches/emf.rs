//! What the CloudWatch EMF metrics cost: per decision, with and without the
//! recorder installed, and per invocation, the flush that writes them.
//!
//! `cargo bench -p ratelimiter-lambda --bench emf`
//!
//! Decisions are in-memory and always allowed (one key, a quota nothing
//! reaches), so that the metrics are a visible part of the time. Rounds
//! alternate between the two services; medians over rounds are printed.

use std::hint::black_box;
use std::time::{Duration, Instant};

use ratelimiter::policy::{BUILTINS, LimitSpec, Policy};
use ratelimiter::{Builder, PolicyId, RateLimitService};
use ratelimiter_lambda::emf::Emf;

const ROUNDS: usize = 101;
const DECISIONS: u32 = 100_000;
const FLUSHES: usize = 2_000;

/// The seed's policies with limits nothing reaches.
fn limiter() -> RateLimitService {
    let huge = LimitSpec {
        count: u32::MAX,
        period: Duration::from_secs(60),
    };
    BUILTINS
        .iter()
        .fold(Builder::new(), |builder, builtin| {
            builder.policy(Policy::new(builtin.name, builtin.kind.clone(), &[huge]).unwrap())
        })
        .in_memory()
}

fn ns_per_decision(service: &RateLimitService) -> f64 {
    let started = Instant::now();
    for _ in 0..DECISIONS {
        let verdict = service.decide_sync((PolicyId::CONNECTION_ATTEMPT, "198.51.100.7"));
        black_box(verdict.unwrap());
    }
    started.elapsed().as_nanos() as f64 / f64::from(DECISIONS)
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn discard(documents: &[u8]) {
    black_box(documents);
}

fn main() {
    // Handles are registered at construction: this one gets no-op handles.
    let without = limiter();
    let emf = Emf::install("RateLimiter/bench")
        .unwrap()
        .with_sink(discard);
    let with = limiter();

    let (mut no_recorder, mut recorder) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        no_recorder.push(ns_per_decision(&without));
        recorder.push(ns_per_decision(&with));
    }
    emf.drain();

    // One `$connect`: two timed decisions on two policies, then the flush.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut flush = Vec::with_capacity(FLUSHES);
    let mut bytes = 0;
    for _ in 0..FLUSHES {
        runtime.block_on(async {
            with.check_connection_attempt_limit("198.51.100.7")
                .await
                .unwrap();
            with.check_listener_join_limit("198.51.100.7")
                .await
                .unwrap();
        });
        emf.set_request_id("8f5a3c2e-4b1d-4e0f-9a6b-2c7d1e3f4a5b");
        let started = Instant::now();
        let documents = emf.drain();
        flush.push(started.elapsed().as_nanos() as f64);
        bytes = documents.len();
    }

    println!("decision (check_now, in memory)   ns median over {ROUNDS} rounds");
    println!(
        "  no recorder                      {:>8.1}",
        median(no_recorder)
    );
    println!(
        "  EMF recorder                     {:>8.1}",
        median(recorder)
    );
    println!(
        "flush of one $connect's metrics    {:>8.1} µs median over {FLUSHES} ({bytes} bytes, 2 documents)",
        median(flush) / 1000.0
    );
}
