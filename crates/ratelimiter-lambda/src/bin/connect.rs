//! The `$connect` Lambda function.

use lambda_runtime::{Error, service_fn};
use ratelimiter_lambda::connect::ConnectHandler;
use ratelimiter_lambda::runtime::{init_logging, limiter_from_env};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_logging();
    let handler = ConnectHandler::new(limiter_from_env().await?);
    lambda_runtime::run(service_fn(|event| handler.handle(event))).await
}
