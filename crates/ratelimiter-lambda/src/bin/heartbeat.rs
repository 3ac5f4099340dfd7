//! The `heartbeat` Lambda function.

// The SDK's nested futures are deeper than the default limit allows.
#![recursion_limit = "256"]

use std::sync::Arc;

use lambda_runtime::{Error, service_fn};
use ratelimiter_lambda::emf::flush_after_each;
use ratelimiter_lambda::heartbeat::HeartbeatHandler;
use ratelimiter_lambda::management::ManagementApi;
use ratelimiter_lambda::runtime::{init_logging, limiter_from_env, metrics_from_env};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_logging();
    let metrics = metrics_from_env()?;
    let sender = Arc::new(ManagementApi::from_env().await);
    let handler = HeartbeatHandler::new(limiter_from_env().await?, sender);
    let service = service_fn(|event| handler.handle(event));
    lambda_runtime::run(flush_after_each(service, metrics)).await
}
