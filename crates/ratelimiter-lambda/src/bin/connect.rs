//! The `$connect` Lambda function.

// The SDK's nested futures are deeper than the default limit allows.
#![recursion_limit = "256"]

use lambda_runtime::{Error, service_fn};
use ratelimiter_lambda::connect::ConnectHandler;
use ratelimiter_lambda::emf::flush_after_each;
use ratelimiter_lambda::runtime::{init_logging, limiter_from_env, metrics_from_env};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_logging();
    let metrics = metrics_from_env()?;
    let handler = ConnectHandler::new(limiter_from_env().await?);
    let service = service_fn(|event| handler.handle(event));
    lambda_runtime::run(flush_after_each(service, metrics)).await
}
