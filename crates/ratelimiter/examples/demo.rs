//! Runs the seed's scenarios against the in-memory store and prints each
//! decision as one JSON line. Time is simulated, so the run is instant and
//! repeatable: `cargo run -p ratelimiter --example demo`.
//!
//! The seed's environment variables and `RATE_LIMIT_CONFIG` apply, e.g.
//! `RATE_LIMIT_HEARTBEATS_PER_MIN=3 cargo run -p ratelimiter --example demo`.

use std::process::ExitCode;
use std::time::Duration;

use ratelimiter::{Builder, FakeClock, Kind, MemoryStore, PolicyId, RateLimitService, Verdict};
use serde_json::json;

fn print(
    service: &RateLimitService<MemoryStore, FakeClock>,
    start: u64,
    identifier: &str,
    verdict: &Verdict,
) {
    let line = json!({
        "t": format!("+{}s", (service.now_ms() - start) / 1_000),
        "operation": service.policies()[verdict.policy].name(),
        "identifier": identifier,
        "allowed": verdict.allowed(),
        "remaining": verdict.decision.remaining,
        "limit": verdict.decision.limit,
        "retry_after": verdict.retry_after_secs(),
    });
    println!("{line}");
}

async fn run(builder: Builder) -> Result<(), Box<dyn std::error::Error>> {
    let clock = FakeClock::at_secs(1_700_000_000);
    let start = ratelimiter::Clock::now(&clock) / 1_000_000;
    let service = builder.clock(clock.clone()).in_memory();
    let decide = |policy, identifier: &'static str| {
        let service = &service;
        async move {
            let verdict = service.decide((policy, identifier)).await?;
            print(service, start, identifier, &verdict);
            Ok::<_, ratelimiter::RateLimitError>(verdict)
        }
    };

    println!("# heartbeats on one connection; the third waits");
    for _ in 0..3 {
        decide(PolicyId::HEARTBEAT, "conn-A").await?;
    }
    clock.advance(Duration::from_secs(30));
    decide(PolicyId::HEARTBEAT, "conn-A").await?;

    println!("# listeners joining from one IP");
    let joins = service.policies()[PolicyId::LISTENER_JOIN].limits()[0]
        .quota()
        .limit();
    for _ in 0..joins + 1 {
        decide(PolicyId::LISTENER_JOIN, "203.0.113.7").await?;
    }

    println!("# a speaker creating sessions, one a minute");
    for _ in 0..3 {
        decide(PolicyId::SESSION_CREATE, "user-123").await?;
        clock.advance(Duration::from_secs(60));
    }
    let status = service
        .get_rate_limit_status(PolicyId::SESSION_CREATE, &Kind::USER, "user-123")
        .await?;
    println!("# status of user-123's sessions");
    println!("{}", serde_json::to_string(&status)?);
    Ok(())
}

fn main() -> ExitCode {
    let builder = match Builder::from_env() {
        Ok(builder) => builder,
        Err(error) => {
            eprintln!("configuration error: {error}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime builds");
    match runtime.block_on(run(builder)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
