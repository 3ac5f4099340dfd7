//! The `$connect` authorizer Lambda function.

use lambda_runtime::{Error, LambdaEvent};
use ratelimiter::{Clock, SystemClock};
use ratelimiter_lambda::authorizer::Authorizer;
use ratelimiter_lambda::runtime::{self, Metrics};

#[tokio::main]
async fn main() -> Result<(), Error> {
    runtime::run(
        Metrics::Unused,
        async || Ok(Authorizer::from_env().await?),
        async |authorizer: &Authorizer, event: LambdaEvent<_>| {
            Ok(authorizer.authorize(&event.payload, SystemClock.now() / 1_000_000_000))
        },
    )
    .await
}
