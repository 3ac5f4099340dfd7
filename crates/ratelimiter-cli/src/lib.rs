//! The `ratelimit` command-line tool: the rate-limit service on an embedded,
//! in-memory or DynamoDB store.
//!
//! Exit status: 0 when a command succeeds (for `check`: allowed), 1 when
//! `check` is rate limited, 2 for bad arguments or configuration, 3 when the
//! store fails a command that cannot fail open (`status`, `reset`,
//! `create-table`).

pub mod args;
pub mod gateway;
pub mod stores;

use std::process::ExitCode;

use clap::Parser;
use ratelimiter::gcra::ceil_secs;
use ratelimiter::{
    FailurePolicy, Identifier, Limits, RateLimitError, RateLimitService, ShadowMode,
};
use serde_json::json;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::args::{Cli, Command, HandlerKind, Target, operation_name};
use crate::stores::{AnyStore, open_store};

/// Why a command failed, and so its exit status.
#[derive(Debug)]
pub enum CliError {
    /// Bad arguments or configuration: exit status 2.
    Usage(String),
    /// The store failed: exit status 3.
    Store(String),
}

impl From<ratelimiter::ConfigError> for CliError {
    fn from(error: ratelimiter::ConfigError) -> Self {
        CliError::Usage(format!("configuration error: {error}"))
    }
}

/// Runs the command line of this process.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // Our logs only: the embedded server logs every failed condition, which
    // is how the limiter works, not something to report. The gateway logs
    // each connection and decision; other commands only warnings.
    let level = match cli.command {
        Command::Serve { .. } => tracing::Level::INFO,
        _ => tracing::Level::WARN,
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .finish()
        .with(Targets::new().with_target("ratelimiter", level))
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("ratelimit: cannot start the async runtime: {error}");
            return ExitCode::from(3);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(CliError::Usage(message)) => {
            eprintln!("ratelimit: {message}");
            ExitCode::from(2)
        }
        Err(CliError::Store(message)) => {
            eprintln!("ratelimit: {message}");
            ExitCode::from(3)
        }
    }
}

/// Runs one parsed command; returns the exit status.
pub async fn run(cli: Cli) -> Result<ExitCode, CliError> {
    let limits = Limits::from_env()?;
    let policy = FailurePolicy::from_env()?;
    let shadow = ShadowMode::from_env()?;
    let store = open_store(&cli.global).await?;
    let service = RateLimitService::new(store, limits)
        .with_policy(policy)
        .with_shadow(shadow);
    match cli.command {
        Command::Check { target, cost } => check(&service, &target, cost).await,
        Command::Status { target } => {
            let status = service
                .get_rate_limit_status(target.operation, target.kind(), &target.identifier)
                .await
                .map_err(|e| CliError::Store(e.to_string()))?;
            print(&json!(status));
            Ok(ExitCode::SUCCESS)
        }
        Command::Reset { target } => {
            service
                .reset(target.operation, identifier(&target))
                .await
                .map_err(|e| CliError::Store(e.to_string()))?;
            print(&json!({
                "reset": true,
                "operation": operation_name(target.operation),
                "identifier": target.identifier,
            }));
            Ok(ExitCode::SUCCESS)
        }
        Command::CreateTable => match service.store() {
            AnyStore::DynamoDb(store) => {
                store
                    .create_table()
                    .await
                    .map_err(|e| CliError::Store(e.to_string()))?;
                print(&json!({"table": store.table(), "status": "ACTIVE"}));
                Ok(ExitCode::SUCCESS)
            }
            AnyStore::Memory(_) => Err(CliError::Usage(
                "create-table needs --store dynamodb or --store embedded; the memory store has no table"
                    .to_owned(),
            )),
        },
        Command::Serve { listen } => {
            gateway::serve(service, listen).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Invoke { handler, event } => invoke(service, handler, &event).await,
    }
}

/// Runs one handler on the event in `path` (or standard input) and prints its response.
async fn invoke(
    service: RateLimitService<AnyStore>,
    handler: HandlerKind,
    path: &std::path::Path,
) -> Result<ExitCode, CliError> {
    let text = if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).map_err(|e| {
            CliError::Usage(format!("cannot read the event from standard input: {e}"))
        })?
    } else {
        std::fs::read_to_string(path).map_err(|e| {
            CliError::Usage(format!(
                "cannot read the event file {}: {e}",
                path.display()
            ))
        })?
    };
    let payload: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        CliError::Usage(format!("the event in {} is not JSON: {e}", path.display()))
    })?;
    let event = lambda_runtime::LambdaEvent::new(payload, lambda_runtime::Context::default());
    let limiter = std::sync::Arc::new(service);
    let response = match handler {
        HandlerKind::Connect => {
            ratelimiter_lambda::connect::ConnectHandler::new(limiter)
                .handle(event)
                .await
        }
        HandlerKind::Heartbeat => {
            let sender = std::sync::Arc::new(
                ratelimiter_lambda::management::ManagementApi::from_env().await,
            );
            ratelimiter_lambda::heartbeat::HeartbeatHandler::new(limiter, sender)
                .handle(event)
                .await
        }
    }
    .map_err(|e| CliError::Store(format!("the handler failed: {e}")))?;
    print(&serde_json::to_value(&response).expect("a proxy response serializes"));
    Ok(ExitCode::SUCCESS)
}

async fn check(
    service: &RateLimitService<AnyStore>,
    target: &Target,
    cost: u32,
) -> Result<ExitCode, CliError> {
    let verdict = match service
        .decide(target.operation, identifier(target), cost)
        .await
    {
        Ok(verdict) => verdict,
        Err(RateLimitError::InvalidCost { source, .. }) => {
            return Err(CliError::Usage(format!("--cost {cost}: {source}")));
        }
        Err(error) => return Err(CliError::Store(error.to_string())),
    };
    print(&json!({
        "allowed": verdict.allowed(),
        "operation": operation_name(target.operation),
        "identifier": target.identifier,
        "limit": verdict.decision.limit,
        "remaining": verdict.decision.remaining,
        "retry_after": verdict.retry_after_secs(),
        "reset_in_seconds": ceil_secs(verdict.decision.reset_after),
        "degraded": verdict.degraded,
    }));
    Ok(if verdict.allowed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn identifier(target: &Target) -> Identifier<'_> {
    Identifier {
        kind: target.kind(),
        value: &target.identifier,
    }
}

fn print(value: &serde_json::Value) {
    println!("{value}");
}
