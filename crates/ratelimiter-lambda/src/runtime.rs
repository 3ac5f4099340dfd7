//! What a Lambda binary does once, at start-up (the seed's module-level
//! initialisation): logging, metrics, configuration, and the AWS clients,
//! then the invocations. The binaries only say which handler they build:
//! [`run`] does the rest, so that every function starts, and refuses to
//! start, the same way.

use std::sync::Arc;

use lambda_runtime::{Error, LambdaEvent, service_fn};
use ratelimiter::config::{ConfigError, read_one_of};
use ratelimiter::{Builder, Config, RateLimitService};
use ratelimiter_dynamodb::DynamoDbStore;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::Level;

use crate::emf::{Emf, MetricsConfig, flush_after_each};
use crate::soft::ConnectReject;

/// The most verbose level logged: one of [`LOG_LEVELS`], `info` when unset.
pub const LOG_LEVEL_VAR: &str = "RATE_LIMIT_LOG_LEVEL";

/// The values [`LOG_LEVEL_VAR`] accepts (in any case, surrounding white
/// space ignored), from the least to the most verbose.
pub const LOG_LEVELS: [(&str, Level); 5] = [
    ("error", Level::ERROR),
    ("warn", Level::WARN),
    ("info", Level::INFO),
    ("debug", Level::DEBUG),
    ("trace", Level::TRACE),
];

/// Whether a function records metrics, so whether [`run`] installs the
/// CloudWatch EMF recorder for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metrics {
    /// As [`MetricsConfig`] says (on unless `RATE_LIMIT_METRICS=off`),
    /// flushed after each invocation.
    FromEnv,
    /// The function records none: no recorder, and the metrics variables
    /// are not read.
    Unused,
}

/// Starts a Lambda function and serves its invocations until the runtime
/// stops: logging ([`init_logging`]), then the metrics recorder if
/// `metrics` asks for it (before the handler is built, which registers its
/// metric handles with the recorder), then the handler `build` makes from
/// the environment, then `handle` for each invocation, with the metrics it
/// recorded flushed before its response goes back (see
/// [`flush_after_each`]).
///
/// An error before the first invocation (the log level, the metrics or the
/// handler's configuration) stops the container: it is logged in words, as
/// a JSON line on stdout where CloudWatch Logs collects it, and returned,
/// so that the process exits non-zero (`main` returning it prints only its
/// `Debug` form, on stderr).
///
/// ```no_run
/// use ratelimiter_lambda::connect::ConnectHandler;
/// use ratelimiter_lambda::runtime::{self, Metrics, limiter_from_env};
///
/// #[tokio::main]
/// async fn main() -> Result<(), lambda_runtime::Error> {
///     runtime::run(
///         Metrics::FromEnv,
///         async || Ok(ConnectHandler::new(limiter_from_env().await?)),
///         ConnectHandler::handle,
///     )
///     .await
/// }
/// ```
pub async fn run<H, A, R>(
    metrics: Metrics,
    build: impl AsyncFnOnce() -> Result<H, Error>,
    handle: impl AsyncFn(&H, LambdaEvent<A>) -> Result<R, Error>,
) -> Result<(), Error>
where
    A: DeserializeOwned,
    R: Serialize,
{
    init_logging().map_err(cannot_start)?;
    let emf = match metrics {
        Metrics::FromEnv => metrics_from_env().map_err(cannot_start)?,
        Metrics::Unused => None,
    };
    let handler = build().await.map_err(cannot_start)?;
    let service = service_fn(|event| handle(&handler, event));
    lambda_runtime::run(flush_after_each(service, emf)).await
}

/// Logs why the function cannot start, and gives the error back to return.
fn cannot_start(error: impl Into<Error>) -> Error {
    let error = error.into();
    // A configuration error is the operator's to fix; anything else (the
    // recorder failing to install) is a fault of the function.
    if error.is::<ConfigError>() {
        tracing::error!(%error, "configuration error: the function cannot start");
    } else {
        tracing::error!(%error, "start-up error: the function cannot start");
    }
    error
}

/// Structured JSON logs on stdout, where Lambda collects them, at the level
/// [`LOG_LEVEL_VAR`] names (`info` when unset).
///
/// A set but invalid level is an error, not `info`. Logging is initialised
/// at `info` all the same, so that the caller can log the error where the
/// operator looks for it ([`run`] does).
///
/// # Panics
///
/// If the process already has a global `tracing` subscriber: call it once.
pub fn init_logging() -> Result<(), ConfigError> {
    // A value that is not Unicode is set, so invalid, not unset.
    let level = log_level_from_lookup(|var| {
        std::env::var_os(var).map(|value| value.to_string_lossy().into_owned())
    });
    tracing_subscriber::fmt()
        .json()
        .with_max_level(*level.as_ref().unwrap_or(&Level::INFO))
        .with_current_span(false)
        .with_target(false)
        .without_time()
        .init();
    level.map(drop)
}

/// The log level `lookup` sets in [`LOG_LEVEL_VAR`]: `info` when unset, the
/// level named when it is one of [`LOG_LEVELS`] in any case with surrounding
/// white space ignored, and otherwise an error naming the variable, the
/// value (at most 80 characters of it) and the valid values.
///
/// ```
/// use ratelimiter_lambda::runtime::log_level_from_lookup;
/// use tracing::Level;
///
/// assert_eq!(log_level_from_lookup(|_| None).unwrap(), Level::INFO);
/// assert_eq!(log_level_from_lookup(|_| Some(" Debug ".into())).unwrap(), Level::DEBUG);
/// assert_eq!(
///     log_level_from_lookup(|_| Some("verbose".into())).unwrap_err().to_string(),
///     r#"RATE_LIMIT_LOG_LEVEL must be one of error, warn, info, debug or trace, got "verbose""#
/// );
/// ```
pub fn log_level_from_lookup(
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Level, ConfigError> {
    // Names only: `tracing` would also take the digits 1 to 5, which nobody
    // reading the configuration would recognise as levels.
    let level = read_one_of(
        &lookup,
        LOG_LEVEL_VAR,
        "error, warn, info, debug or trace",
        |value| {
            LOG_LEVELS
                .iter()
                .find(|(name, _)| value.trim().eq_ignore_ascii_case(name))
                .map(|&(_, level)| level)
        },
    )?;
    Ok(level.unwrap_or(Level::INFO))
}

/// The CloudWatch EMF recorder, unless `RATE_LIMIT_METRICS=off`. Install it
/// before the service is built. The error (a configuration error, or the
/// recorder failing to install) is returned for the caller to report:
/// [`run`] logs it and stops the container.
pub fn metrics_from_env() -> Result<Option<Emf>, Error> {
    match MetricsConfig::from_env()?.namespace {
        Some(namespace) => Ok(Some(Emf::install(&namespace)?)),
        None => Ok(None),
    }
}

/// The limiter of a function: the rate-limit service on the DynamoDB table,
/// configured by the environment and the file `RATE_LIMIT_CONFIG` names.
pub type Limiter = RateLimitService<DynamoDbStore>;

/// The rate-limit service on the DynamoDB table, configured by the
/// environment, with the mark's policy when `$connect` rejects softly
/// ([`ConnectReject`]). A configuration error is found before any AWS
/// client is made, and returned (a [`ConfigError`]) rather than served with
/// defaults: [`run`] logs it and stops the container.
pub async fn limiter_from_env() -> Result<Arc<Limiter>, Error> {
    let mut config = Config::from_env()?;
    ConnectReject::from_env()?.apply(&mut config.policies)?;
    let builder = Builder::from_config(config);
    let table = ratelimiter_dynamodb::DynamoDbConfig::from_env()?;
    let store = DynamoDbStore::with_config(&table).await;
    Ok(Arc::new(builder.build(store)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn level(value: Option<&str>) -> Result<Level, ConfigError> {
        log_level_from_lookup(|var| {
            assert_eq!(var, LOG_LEVEL_VAR);
            value.map(str::to_owned)
        })
    }

    #[test]
    fn an_unset_level_is_info() {
        assert_eq!(level(None).unwrap(), Level::INFO);
    }

    #[test]
    fn every_level_name_is_accepted_in_any_case_with_white_space_around() {
        for (name, expected) in LOG_LEVELS {
            let upper = name.to_uppercase();
            let capitalised = format!("{}{}", &upper[..1], &name[1..]);
            for value in [
                name.to_owned(),
                upper.clone(),
                capitalised,
                format!(" {name}"),
                format!("{upper} "),
                format!("\t{name}\n"),
            ] {
                assert_eq!(level(Some(&value)).unwrap(), expected, "{value:?}");
            }
        }
    }

    #[test]
    fn anything_else_is_an_error_naming_the_variable_the_value_and_the_levels() {
        for value in [
            "verbose",
            "",
            "  ",
            "inf",
            "information",
            "warning",
            "off",
            "3",
            "in fo",
            "info,debug",
            "ratelimiter=debug",
        ] {
            let message = level(Some(value)).unwrap_err().to_string();
            assert_eq!(
                message,
                format!(
                    "RATE_LIMIT_LOG_LEVEL must be one of error, warn, info, debug or trace, got {value:?}"
                ),
            );
        }
    }

    #[test]
    fn a_long_value_is_quoted_shortened() {
        let value = "v".repeat(1000);
        let message = level(Some(&value)).unwrap_err().to_string();
        let quoted = format!("got \"{}...\"", "v".repeat(80));
        assert!(message.ends_with(&quoted), "{message}");
        // A multi-byte character at the cut is kept whole.
        let value = "é".repeat(100);
        let message = level(Some(&value)).unwrap_err().to_string();
        assert!(
            message.ends_with(&format!("got \"{}...\"", "é".repeat(80))),
            "{message}"
        );
    }
}
