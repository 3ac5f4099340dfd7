//! Runs the seed's scenarios against the in-memory store and prints each
//! decision as one JSON line. Time is simulated, so the run is instant and
//! repeatable: `cargo run -p ratelimiter --example demo`.
//!
//! The seed's environment variables apply, e.g.
//! `RATE_LIMIT_HEARTBEATS_PER_MIN=3 cargo run -p ratelimiter --example demo`.

use std::process::ExitCode;
use std::time::Duration;

use ratelimiter::{
    FakeClock, Identifier, IdentifierKind, Limits, MemoryStore, Operation, RateLimitService,
    Verdict,
};
use serde_json::json;

fn print(at: &FakeClock, start: u64, identifier: &str, verdict: &Verdict) {
    let line = json!({
        "t": format!("+{}s", (ratelimiter::Clock::now(at) - start) / 1_000_000_000),
        "operation": verdict.operation.as_str(),
        "identifier": identifier,
        "allowed": verdict.allowed(),
        "remaining": verdict.decision.remaining,
        "limit": verdict.decision.limit,
        "retry_after": verdict.retry_after_secs(),
    });
    println!("{line}");
}

async fn run(limits: Limits) -> Result<(), Box<dyn std::error::Error>> {
    let clock = FakeClock::at_secs(1_700_000_000);
    let start = ratelimiter::Clock::now(&clock);
    let service = RateLimitService::with_clock(MemoryStore::new(), limits, clock.clone());
    let decide = |operation, identifier: Identifier<'static>| {
        let service = &service;
        let clock = &clock;
        async move {
            let verdict = service.decide(operation, identifier, 1).await?;
            print(clock, start, identifier.value, &verdict);
            Ok::<_, ratelimiter::RateLimitError>(verdict)
        }
    };

    println!("# heartbeats on one connection; the third waits");
    for _ in 0..3 {
        decide(Operation::Heartbeat, Identifier::connection("conn-A")).await?;
    }
    clock.advance(Duration::from_secs(30));
    decide(Operation::Heartbeat, Identifier::connection("conn-A")).await?;

    println!("# listeners joining from one IP");
    for _ in 0..limits.quota(Operation::ListenerJoin).limit() + 1 {
        decide(Operation::ListenerJoin, Identifier::ip("203.0.113.7")).await?;
    }

    println!("# a speaker creating sessions, one a minute");
    for _ in 0..3 {
        decide(Operation::SessionCreate, Identifier::user("user-123")).await?;
        clock.advance(Duration::from_secs(60));
    }
    let status = service
        .get_rate_limit_status(Operation::SessionCreate, IdentifierKind::User, "user-123")
        .await?;
    println!("# status of user-123's sessions");
    println!("{}", serde_json::to_string(&status)?);
    Ok(())
}

fn main() -> ExitCode {
    let limits = match Limits::from_env() {
        Ok(limits) => limits,
        Err(error) => {
            eprintln!("configuration error: {error}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime builds");
    match runtime.block_on(run(limits)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
