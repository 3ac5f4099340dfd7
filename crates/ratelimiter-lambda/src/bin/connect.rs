//! The `$connect` Lambda function.

// The SDK's nested futures are deeper than the default limit allows.
#![recursion_limit = "256"]

use std::sync::Arc;

use lambda_runtime::Error;
use ratelimiter_lambda::connect::ConnectHandler;
use ratelimiter_lambda::disconnect::connect_caps;
use ratelimiter_lambda::management::ManagementApi;
use ratelimiter_lambda::runtime::{self, Metrics, limiter_from_env};
use ratelimiter_lambda::soft::{SelfInvoke, mark_of};

#[tokio::main]
async fn main() -> Result<(), Error> {
    runtime::run(
        Metrics::FromEnv,
        async || {
            let limiter = limiter_from_env().await?;
            let handler = ConnectHandler::new(limiter.clone());
            let soft = mark_of(limiter.policies()).is_some();
            // The Management API client only where a cap may need repair,
            // or a soft rejection's follow-up posts and closes.
            if connect_caps(limiter.policies()).is_empty() && !soft {
                return Ok(handler);
            }
            let handler = handler.with_sender(Arc::new(ManagementApi::from_env().await));
            if !soft {
                return Ok(handler);
            }
            let follow_up = Arc::new(SelfInvoke::from_env().await?);
            Ok(handler.with_soft_rejection(follow_up)?)
        },
        ConnectHandler::handle,
    )
    .await
}
