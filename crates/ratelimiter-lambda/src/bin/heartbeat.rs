//! The `heartbeat` Lambda function.

// The SDK's nested futures are deeper than the default limit allows.
#![recursion_limit = "256"]

use std::sync::Arc;

use lambda_runtime::{Error, service_fn};
use ratelimiter_lambda::heartbeat::HeartbeatHandler;
use ratelimiter_lambda::management::ManagementApi;
use ratelimiter_lambda::runtime::{init_logging, limiter_from_env};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_logging();
    let sender = Arc::new(ManagementApi::from_env().await);
    let handler = HeartbeatHandler::new(limiter_from_env().await?, sender);
    lambda_runtime::run(service_fn(|event| handler.handle(event))).await
}
