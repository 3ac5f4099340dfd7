//! The `$connect` Lambda function.

// The SDK's nested futures are deeper than the default limit allows.
#![recursion_limit = "256"]

use std::sync::Arc;

use lambda_runtime::Error;
use ratelimiter_lambda::connect::ConnectHandler;
use ratelimiter_lambda::disconnect::connect_caps;
use ratelimiter_lambda::management::ManagementApi;
use ratelimiter_lambda::runtime::{self, Metrics, limiter_from_env};

#[tokio::main]
async fn main() -> Result<(), Error> {
    runtime::run(
        Metrics::FromEnv,
        async || {
            let limiter = limiter_from_env().await?;
            let handler = ConnectHandler::new(limiter.clone());
            // The Management API client only where a cap may need repair.
            if connect_caps(limiter.policies()).is_empty() {
                return Ok(handler);
            }
            Ok(handler.with_sender(Arc::new(ManagementApi::from_env().await)))
        },
        ConnectHandler::handle,
    )
    .await
}
