//! The `message` Lambda function: every limited route (`[route.*]`); an
//! allowed message goes to `RATE_LIMIT_FORWARD_FUNCTION`, if set.

// The SDK's nested futures are deeper than the default limit allows.
#![recursion_limit = "256"]

use std::sync::Arc;

use lambda_runtime::Error;
use ratelimiter_lambda::forward::Forward;
use ratelimiter_lambda::management::ManagementApi;
use ratelimiter_lambda::message::MessageHandler;
use ratelimiter_lambda::runtime::{self, Metrics, limiter_from_env};

#[tokio::main]
async fn main() -> Result<(), Error> {
    runtime::run(
        Metrics::FromEnv,
        // The limiter first: its configuration is checked before any AWS
        // client is made.
        async || {
            let limiter = limiter_from_env().await?;
            let forward = Forward::from_env().await?;
            let sender = Arc::new(ManagementApi::from_env().await);
            Ok(MessageHandler::new(limiter, sender).with_hook(forward))
        },
        MessageHandler::handle,
    )
    .await
}
