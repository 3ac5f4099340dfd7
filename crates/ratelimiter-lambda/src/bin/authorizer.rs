//! The `$connect` authorizer Lambda function.

use lambda_runtime::{Error, LambdaEvent, service_fn};
use ratelimiter::Clock;
use ratelimiter_lambda::authorizer::Authorizer;
use ratelimiter_lambda::runtime::init_logging;

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_logging();
    let authorizer = Authorizer::from_env().await.inspect_err(|error| {
        tracing::error!(%error, "configuration error: the function cannot start");
    })?;
    let clock = ratelimiter::SystemClock;
    let service = service_fn(|event: LambdaEvent<_>| {
        let response = authorizer.authorize(&event.payload, clock.now() / 1_000_000_000);
        async move { Ok::<_, Error>(response) }
    });
    lambda_runtime::run(service).await
}
