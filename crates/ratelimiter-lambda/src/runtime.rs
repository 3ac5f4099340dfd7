//! What a Lambda binary does once, at start-up (the seed's module-level
//! initialisation): logging, configuration, and the AWS clients.

use std::sync::Arc;

use ratelimiter::{FailurePolicy, Limits, RateLimitService, ShadowMode};
use ratelimiter_dynamodb::{ClientOptions, DynamoDbConfig, DynamoDbStore, client};

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

/// The rate-limit service on the DynamoDB table, configured by the
/// environment. A configuration error stops the container at start-up, with
/// the message, rather than serving with defaults.
pub async fn limiter_from_env()
-> Result<Arc<RateLimitService<DynamoDbStore>>, lambda_runtime::Error> {
    let configured = Limits::from_env().and_then(|limits| {
        Ok((
            limits,
            FailurePolicy::from_env()?,
            ShadowMode::from_env()?,
            DynamoDbConfig::from_env()?,
        ))
    });
    let (limits, policy, shadow, config) = configured.inspect_err(|error| {
        // Logged in words: `main` returning the error prints only its Debug form.
        tracing::error!(%error, "configuration error: the function cannot start");
    })?;
    let options = ClientOptions {
        timeout: config.timeout,
        ..ClientOptions::default()
    };
    let store = DynamoDbStore::new(client(&options).await, config.table);
    Ok(Arc::new(
        RateLimitService::new(store, limits)
            .with_policy(policy)
            .with_shadow(shadow),
    ))
}
