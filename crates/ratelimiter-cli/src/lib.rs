//! The `ratelimit` command-line tool: the rate-limit service on an embedded,
//! in-memory or DynamoDB store.
//!
//! Exit status: 0 when a command succeeds (for `check`: allowed), 1 when
//! `check` is rate limited, 2 for bad arguments or configuration, 3 when the
//! store fails a command that cannot fail open (`status`, `reset`,
//! `create-table`, `migrate`).

// The SDK's nested futures are deeper than the default limit allows.
#![recursion_limit = "256"]

pub mod args;
pub mod gateway;
pub mod plan;
pub mod stores;

use std::process::ExitCode;

use clap::Parser;
use ratelimiter::gcra::{Status, ceil_secs};
use ratelimiter::{
    Builder, Config, Policies, Policy, RateLimitError, RateLimitService, Request, Store,
};
use ratelimiter_lambda::soft::ConnectReject;
use serde_json::{Value, json};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::args::{Cli, Command, ConfigCommand, GlobalOptions, HandlerKind, Target};
use crate::stores::{Opened, open_store};

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

/// The configuration `cli` runs with: the file `config check` names, for
/// that command; else `--config` if given, else `RATE_LIMIT_CONFIG`; then
/// the environment, `RATE_LIMIT_CONNECT_REJECT` included.
///
/// Only one file is read. `config check` is how a fixed file is tried
/// before `--config` or `RATE_LIMIT_CONFIG` points at it, so the file in
/// force (broken, perhaps) must not be read first and fail the command.
fn configuration(cli: &Cli) -> Result<Config, CliError> {
    let env = |var: &str| std::env::var(var).ok();
    let file = match &cli.command {
        Command::Config {
            command: ConfigCommand::Check { file },
        } => Some(file),
        _ => cli.global.config.as_ref(),
    };
    let mut config = match file {
        Some(path) => Config::from_file(path, env)?,
        None => Config::from_lookup(env)?,
    };
    // Soft rejection's mark is a policy like any: listed, and served.
    ConnectReject::from_lookup(env)?.apply(&mut config.policies)?;
    Ok(config)
}

/// Runs one parsed command; returns the exit status.
pub async fn run(cli: Cli) -> Result<ExitCode, CliError> {
    let config = configuration(&cli)?;
    let global = &cli.global;
    match cli.command {
        Command::Policies => {
            print(&policies_json(&config.policies));
            Ok(ExitCode::SUCCESS)
        }
        Command::Plan {
            connections,
            lifetime,
            speakers,
            heartbeat,
            routes,
        } => {
            // Clients at their limit's rate unless told otherwise.
            let heartbeat = match heartbeat {
                Some(args::Heartbeats(rate)) => rate,
                None => Some(config.policies[ratelimiter::PolicyId::HEARTBEAT].limits()[0].spec()),
            };
            let traffic = plan::Traffic {
                connections,
                lifetime,
                speakers,
                heartbeat,
                routes,
            };
            let plan = plan::Plan::new(&config.policies, traffic)
                .map_err(|e| CliError::Usage(e.to_string()))?;
            out(&plan.render());
            Ok(ExitCode::SUCCESS)
        }
        Command::Config {
            command: ConfigCommand::Check { file },
        } => {
            let mut listed = policies_json(&config.policies);
            print(&json!({
                "file": file.display().to_string(),
                "valid": true,
                "policies": listed["policies"].take(),
                "routes": listed["routes"].take(),
                "connect": listed["connect"].take(),
            }));
            Ok(ExitCode::SUCCESS)
        }
        Command::CreateTable => {
            let store = table(global, "create-table").await?;
            store
                .create_table()
                .await
                .map_err(|e| CliError::Store(e.to_string()))?;
            print(&json!({"table": store.table(), "status": "ACTIVE"}));
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate => {
            let store = table(global, "migrate").await?;
            let now_secs = ratelimiter::Clock::now(&ratelimiter::SystemClock) / 1_000_000_000;
            let migration = ratelimiter_dynamodb::admin::migrate_legacy_items(
                &store,
                now_secs,
                config.secret.as_ref(),
            )
            .await
            .map_err(|e| CliError::Store(e.to_string()))?;
            print(&json!({
                "table": store.table(),
                "migrated": migration.migrated,
                "expired": migration.expired,
                "skipped": migration.skipped,
            }));
            Ok(ExitCode::SUCCESS)
        }
        command => {
            // The store is picked once; the command runs on it generically.
            let builder = Builder::from_config(config);
            match open_store(global).await? {
                Opened::Memory => on_service(builder.in_memory(), command).await,
                Opened::Table(store) => on_service(builder.build(store), command).await,
            }
        }
    }
}

/// Runs a command that decides, reads or resets through the service.
async fn on_service<S: Store + 'static>(
    service: RateLimitService<S>,
    command: Command,
) -> Result<ExitCode, CliError> {
    match command {
        Command::Check { target, cost } => check(&service, &target, cost).await,
        Command::Status { target } => {
            let request = request(&service, &target)?;
            let statuses = service
                .status(request)
                .await
                .map_err(|e| CliError::Store(e.to_string()))?;
            let mut value = json!(Status::fullest(&statuses).expect("a policy has limits"));
            value["limits"] = statuses.iter().map(|s| json!(s)).collect();
            print(&value);
            Ok(ExitCode::SUCCESS)
        }
        Command::Reset { target } => {
            let request = request(&service, &target)?;
            service
                .reset(request)
                .await
                .map_err(|e| CliError::Store(e.to_string()))?;
            print(&json!({
                "reset": true,
                "operation": cli_name(&service.policies()[request.policy]),
                "identifier": target.identifier,
            }));
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve { listen } => {
            gateway::serve(service, listen).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Invoke { handler, event } => invoke(service, handler, &event).await,
        Command::Policies
        | Command::Plan { .. }
        | Command::Config { .. }
        | Command::CreateTable
        | Command::Migrate => {
            unreachable!("run handles the commands that need no service")
        }
    }
}

/// The table `global` names, for commands that need one.
async fn table(
    global: &GlobalOptions,
    command: &str,
) -> Result<ratelimiter_dynamodb::DynamoDbStore, CliError> {
    match open_store(global).await? {
        Opened::Table(store) => Ok(store),
        Opened::Memory => Err(CliError::Usage(format!(
            "{command} needs --store dynamodb or --store embedded; the memory store has no table"
        ))),
    }
}

/// The request `target` names, against the service's policies.
fn request<'a, S: Store>(
    service: &RateLimitService<S>,
    target: &'a Target,
) -> Result<Request<'a>, CliError> {
    let policy = service
        .policies()
        .find(&target.policy)
        .map_err(|e| CliError::Usage(e.to_string()))?;
    Ok(Request::from((policy, &target.identifier))
        .tier(target.tier.as_deref())
        .kind(target.kind.as_ref()))
}

/// The name a policy goes by on the command line (`session-create`).
fn cli_name(policy: &Policy) -> String {
    policy.name().replace('_', "-")
}

/// Every policy, as `policies` and `config check` print them.
fn policies_json(policies: &Policies) -> Value {
    let limits = |limits: &[ratelimiter::policy::Limit]| -> Vec<String> {
        limits.iter().map(|l| l.spec().to_string()).collect()
    };
    let list: Vec<Value> = policies
        .iter()
        .map(|(id, policy)| {
            let tiers: serde_json::Map<String, Value> = policy
                .tiers()
                .map(|(name, tier)| (name.to_owned(), json!(limits(tier))))
                .collect();
            let mut shown = json!({
                "name": policy.name(),
                "key": policy.kind().as_str(),
                "limits": limits(policy.limits()),
                "tiers": tiers,
                "unit": policy.unit().as_str(),
                "failure_mode": policy.failure_mode().as_str(),
                "shadow": policy.shadow(),
                "builtin": id.index() < ratelimiter::policy::BUILTINS.len(),
            });
            if !policy.tolerance().is_zero() {
                // Traded exactness: say so wherever policies are listed.
                shown["tolerance_ms"] = json!(policy.tolerance().as_millis() as u64);
            }
            if policy.cap().is_none() {
                // How its hot keys are served: "auto", "off" or a size.
                shown["batch"] = json!(policy.batching().to_string());
            }
            if let Some(cap) = policy.cap() {
                // A cap: open connections at a time, each a lease.
                shown["concurrent"] = json!(cap.concurrent());
                shown["lease_secs"] = json!(ratelimiter::lease::LEASE_LIFETIME.as_secs());
            }
            shown
        })
        .collect();
    let names = |ids: &[ratelimiter::PolicyId]| -> Vec<&str> {
        ids.iter().map(|&id| policies[id].name()).collect()
    };
    let routes: serde_json::Map<String, Value> = policies
        .routes()
        .map(|(action, ids)| (action.to_owned(), json!(names(ids))))
        .collect();
    let connect = policies.connect();
    json!({
        "policies": list,
        "routes": routes,
        "connect": {
            "every": names(connect.every()),
            "speaker": names(connect.speaker()),
            "listener": names(connect.listener()),
        },
    })
}

/// Runs one handler on the event in `path` (or standard input) and prints its response.
async fn invoke<S: Store + 'static>(
    service: RateLimitService<S>,
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
        HandlerKind::Disconnect => {
            ratelimiter_lambda::disconnect::DisconnectHandler::new(limiter)
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
        HandlerKind::Message => {
            let sender = std::sync::Arc::new(
                ratelimiter_lambda::management::ManagementApi::from_env().await,
            );
            ratelimiter_lambda::message::MessageHandler::new(limiter, sender)
                .handle(event)
                .await
        }
    }
    .map_err(|e| CliError::Store(format!("the handler failed: {e}")))?;
    print(&serde_json::to_value(&response).expect("a proxy response serializes"));
    Ok(ExitCode::SUCCESS)
}

async fn check<S: Store>(
    service: &RateLimitService<S>,
    target: &Target,
    cost: u32,
) -> Result<ExitCode, CliError> {
    let request = request(service, target)?.cost(cost);
    if service.policies()[request.policy].cap().is_some() {
        // A seat belongs to a connection, which only `$connect` has.
        return Err(CliError::Usage(format!(
            "{} is a cap (concurrent = N): its seats are taken by connections at $connect; `status` shows them, `reset` gives them back",
            target.policy
        )));
    }
    let verdict = match service.decide(request).await {
        Ok(verdict) => verdict,
        Err(RateLimitError::InvalidCost { source, .. }) => {
            return Err(CliError::Usage(format!("--cost {cost}: {source}")));
        }
        Err(error) => return Err(CliError::Store(error.to_string())),
    };
    let policy = &service.policies()[request.policy];
    let windows: Vec<u64> = policy
        .limits_for(request.tier)
        .iter()
        .map(|limit| limit.quota().period().as_secs())
        .collect();
    let limits: Vec<Value> = verdict
        .limits()
        .iter()
        .zip(windows)
        .map(|(decision, window)| {
            json!({
                "limit": decision.limit,
                "remaining": decision.remaining,
                "retry_after": ceil_secs(decision.retry_after),
                "reset_in_seconds": ceil_secs(decision.reset_after),
                "window_duration": window,
            })
        })
        .collect();
    print(&json!({
        "allowed": verdict.allowed(),
        "operation": cli_name(policy),
        "identifier": target.identifier,
        "limit": verdict.decision.limit,
        "remaining": verdict.decision.remaining,
        "retry_after": verdict.retry_after_secs(),
        "reset_in_seconds": ceil_secs(verdict.decision.reset_after),
        "degraded": verdict.is_degraded(),
        "degraded_reason": verdict.degraded.map(|why| why.as_str()),
        "store_calls": verdict.calls,
        "capacity_units": {"write": verdict.capacity.write, "read": verdict.capacity.read},
        "cached": verdict.cached,
        "limits": limits,
    }));
    Ok(if verdict.allowed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn print(value: &serde_json::Value) {
    out(&value.to_string());
}

/// Writes `text` and a newline to standard output. A reader that closed
/// the pipe (`| head`) wanted no more: that is not an error, and not a
/// panic, as `println!` makes it.
fn out(text: &str) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{text}").and_then(|()| stdout.flush());
}
