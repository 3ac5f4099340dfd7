//! The `$disconnect` Lambda function.

// The SDK's nested futures are deeper than the default limit allows.
#![recursion_limit = "256"]

use lambda_runtime::Error;
use ratelimiter_lambda::disconnect::DisconnectHandler;
use ratelimiter_lambda::runtime::{self, Metrics, limiter_from_env};

#[tokio::main]
async fn main() -> Result<(), Error> {
    runtime::run(
        Metrics::FromEnv,
        async || Ok(DisconnectHandler::new(limiter_from_env().await?)),
        DisconnectHandler::handle,
    )
    .await
}
