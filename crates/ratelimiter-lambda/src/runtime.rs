//! What a Lambda binary does once, at start-up (the seed's module-level
//! initialisation): logging, configuration, and the AWS clients.

use std::sync::Arc;

use ratelimiter::{Builder, RateLimitService};
use ratelimiter_dynamodb::DynamoDbStore;

use crate::emf::{Emf, MetricsConfig};

/// Structured JSON logs on stdout, where Lambda collects them; level from
/// `RUST_LOG`-style `RATE_LIMIT_LOG_LEVEL` (`info` by default).
pub fn init_logging() {
    let level = std::env::var("RATE_LIMIT_LOG_LEVEL")
        .ok()
        .and_then(|l| l.parse::<tracing::Level>().ok())
        .unwrap_or(tracing::Level::INFO);
    tracing_subscriber::fmt()
        .json()
        .with_max_level(level)
        .with_current_span(false)
        .with_target(false)
        .without_time()
        .init();
}

/// The CloudWatch EMF recorder, unless `RATE_LIMIT_METRICS=off`. Install it
/// before the service is built. A configuration error stops the container.
pub fn metrics_from_env() -> Result<Option<Emf>, lambda_runtime::Error> {
    let config = MetricsConfig::from_env().inspect_err(|error| {
        tracing::error!(%error, "configuration error: the function cannot start");
    })?;
    match config.namespace {
        Some(namespace) => Ok(Some(Emf::install(&namespace)?)),
        None => Ok(None),
    }
}

/// The limiter of a function: the rate-limit service on the DynamoDB table,
/// configured by the environment and the file `RATE_LIMIT_CONFIG` names.
pub type Limiter = RateLimitService<DynamoDbStore>;

/// The rate-limit service on the DynamoDB table, configured by the
/// environment. A configuration error stops the container at start-up, with
/// the message, rather than serving with defaults; it is found before any
/// AWS client is made.
pub async fn limiter_from_env() -> Result<Arc<Limiter>, lambda_runtime::Error> {
    let configured = Builder::from_env()
        .and_then(|builder| Ok((builder, ratelimiter_dynamodb::DynamoDbConfig::from_env()?)));
    let (builder, table) = configured.inspect_err(|error| {
        // Logged in words: `main` returning the error prints only its Debug form.
        tracing::error!(%error, "configuration error: the function cannot start");
    })?;
    let store = DynamoDbStore::with_config(&table).await;
    Ok(Arc::new(builder.build(store)))
}
