//! The command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use ratelimiter::Kind;

/// Check, inspect and reset the rate limits of a serverless WebSocket API.
///
/// Policies come from the file --config (or RATE_LIMIT_CONFIG) names, and the
/// seed's four from RATE_LIMIT_SESSIONS_PER_HOUR, RATE_LIMIT_LISTENER_JOINS_PER_MIN,
/// RATE_LIMIT_CONNECTION_ATTEMPTS_PER_MIN and RATE_LIMIT_HEARTBEATS_PER_MIN; failure
/// handling from RATE_LIMIT_FAILURE_MODE (open, closed, local) and RATE_LIMIT_TIMEOUT_MS;
/// RATE_LIMIT_KEY_SECRET turns identifiers into keyed digests.
#[derive(Debug, Parser)]
#[command(name = "ratelimit", version)]
pub struct Cli {
    /// Options that apply to every command.
    #[command(flatten)]
    pub global: GlobalOptions,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Where the state lives, and the policies.
#[derive(Debug, Args)]
pub struct GlobalOptions {
    /// A TOML file of policies [default: $RATE_LIMIT_CONFIG, else the seed's four only].
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// The store: `embedded` (a DynamoDB-compatible store on a SQLite file in
    /// --data-dir, through the same code as DynamoDB), `memory` (this process
    /// only), or `dynamodb` (a real table).
    #[arg(long, global = true, value_enum, default_value_t = StoreKind::Embedded)]
    pub store: StoreKind,
    /// The embedded store's folder.
    #[arg(long, global = true, default_value = ".ratelimit")]
    pub data_dir: PathBuf,
    /// The table's name [default: $RATE_LIMIT_TABLE_NAME, else RateLimits].
    #[arg(long, global = true)]
    pub table: Option<String>,
    /// A DynamoDB endpoint to use instead of the region's (the standard
    /// AWS_ENDPOINT_URL_DYNAMODB and AWS_ENDPOINT_URL also apply).
    #[arg(long, global = true)]
    pub endpoint_url: Option<String>,
    /// The AWS region [default: the standard AWS environment].
    #[arg(long, global = true)]
    pub region: Option<String>,
}

/// The kinds of store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StoreKind {
    /// DynamoDB-compatible, in this process, on a SQLite file.
    Embedded,
    /// In this process's memory; forgotten when it exits.
    Memory,
    /// A DynamoDB table.
    #[value(name = "dynamodb")]
    DynamoDb,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Consume tokens; print the decision as JSON. Exit status 0 when allowed, 1 when rate limited.
    Check {
        /// The key.
        #[command(flatten)]
        target: Target,
        /// Tokens to consume.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        cost: u32,
    },
    /// Print the status of one key, consuming nothing: the seed's fields (count, limit,
    /// reset_in_seconds, window_duration) for the fullest limit, and every limit's under `limits`.
    Status {
        /// The key.
        #[command(flatten)]
        target: Target,
    },
    /// Forget one key's usage, so that its bucket is full again.
    Reset {
        /// The key.
        #[command(flatten)]
        target: Target,
    },
    /// Create the table (on-demand, TTL enabled) and wait until it is active; nothing happens if it exists.
    CreateTable,
    /// Carry items of the one-item-per-operation layout over to the current one, once, after upgrading.
    Migrate,
    /// List the policies in force: name, kind, limits, tiers, failure mode, shadow mode.
    Policies,
    /// Work with configuration files.
    Config {
        /// What to do.
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Run a local API Gateway WebSocket API with the real handlers: connect to ws://ADDRESS/local.
    ///
    /// `$connect` on upgrade (source IP: the TCP peer; `?userId=` stands in for
    /// an authorizer, for development only), messages routed on their `action`,
    /// the Management API on POST /local/@connections/ID.
    Serve {
        /// The address to listen on (port 0 picks a free port; the first line on stdout says which).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
    },
    /// Work out what the limiter costs for some traffic, before deploying it: DynamoDB writes
    /// and reads per second, capacity units, the monthly bill on on-demand and provisioned
    /// capacity (us-east-1 prices), and the keys that would be hot.
    ///
    /// Calls per decision are the measured ones of each case (BENCHMARKS.md): one per item a
    /// decision touches, more for a key at its limit's rate (heartbeats, usually).
    Plan {
        /// Connections open at once.
        #[arg(long)]
        connections: u64,
        /// How long a connection lasts on average (API Gateway ends one at 2h): 90s, 15min, 2h.
        #[arg(long, default_value = "2h", value_parser = parse_duration)]
        lifetime: std::time::Duration,
        /// The share of connections that are speakers (a userId from the authorizer), 0 to 1.
        #[arg(long, default_value_t = 0.0)]
        speakers: f64,
        /// Heartbeats per connection, such as 2/min or 1/30s, or `none` [default: the heartbeat
        /// policy's limit: clients at their rate].
        #[arg(long, value_parser = parse_rate)]
        heartbeat: Option<Heartbeats>,
        /// Messages per connection on a route of the configuration, ACTION=RATE (sendMessage=10/min);
        /// repeat for each route.
        #[arg(long = "route", value_parser = parse_route)]
        routes: Vec<(String, ratelimiter::LimitSpec)>,
    },
    /// Run one handler on one event and print its response as JSON, like `sam local invoke`.
    Invoke {
        /// The handler.
        #[arg(value_enum)]
        handler: HandlerKind,
        /// A file holding the event as JSON, or `-` for standard input.
        event: PathBuf,
    },
}

/// What `config` does.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a configuration file and print the policies it gives (with the environment's
    /// overrides). Exit status 2, with the file, line and fault, when it is wrong.
    Check {
        /// The TOML file.
        file: PathBuf,
    },
}

/// The Lambda handlers `invoke` can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum HandlerKind {
    /// The `$connect` handler.
    Connect,
    /// The `$disconnect` handler: gives back the caps' seats.
    Disconnect,
    /// The `heartbeat` handler.
    Heartbeat,
    /// The `message` handler: every route the configuration limits.
    Message,
}

/// One key: a policy and an identifier.
#[derive(Debug, Args)]
pub struct Target {
    /// The policy: session-create, listener-join, connection-attempt, heartbeat, or one of the
    /// configuration's (`ratelimit policies` lists them).
    pub policy: String,
    /// The user id, IP address, connection id, ... the policy counts.
    pub identifier: String,
    /// The caller's tier, for policies with tiers.
    #[arg(long)]
    pub tier: Option<String>,
    /// Count the identifier as this kind instead of the policy's own.
    #[arg(long, value_parser = parse_kind)]
    pub kind: Option<Kind>,
}

fn parse_kind(s: &str) -> Result<Kind, String> {
    Kind::new(s).map_err(|e| e.to_string())
}

/// Heartbeats per connection: a rate, or none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heartbeats(pub Option<ratelimiter::LimitSpec>);

/// A rate (`2/min`), or `none`.
fn parse_rate(s: &str) -> Result<Heartbeats, String> {
    if s == "none" {
        return Ok(Heartbeats(None));
    }
    s.parse()
        .map(|rate| Heartbeats(Some(rate)))
        .map_err(|e: ratelimiter::policy::LimitError| e.to_string())
}

/// `ACTION=RATE`.
fn parse_route(s: &str) -> Result<(String, ratelimiter::LimitSpec), String> {
    let (action, rate) = s
        .split_once('=')
        .ok_or_else(|| "write ACTION=RATE, such as sendMessage=10/min".to_owned())?;
    let rate = rate
        .parse()
        .map_err(|e: ratelimiter::policy::LimitError| e.to_string())?;
    Ok((action.to_owned(), rate))
}

/// A connection's lifetime, written as configuration writes durations
/// (90s, 15min, 2h): at least a second.
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let duration = ratelimiter::config::parse_duration(s)?;
    if duration < std::time::Duration::from_secs(1) {
        return Err("a lifetime is at least 1s".to_owned());
    }
    Ok(duration)
}
