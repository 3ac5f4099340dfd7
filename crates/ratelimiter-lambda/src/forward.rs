//! Forwarding allowed messages to another Lambda function: the limiter in
//! front of an existing WebSocket backend, in any language, without
//! changing its code.
//!
//! With [`FORWARD_FUNCTION_VAR`] set, the `message` function invokes the
//! named function with each allowed message's event, unchanged, as API
//! Gateway would have. The invocation is **asynchronous** (`Event`):
//!
//! - the limiter answers API Gateway as soon as Lambda has queued the event,
//!   so it never pays for the backend's run time, and a slow backend does
//!   not hold the client's route;
//! - a WebSocket backend answers its clients with `PostToConnection`
//!   anyway; what it returns would only reach a client through a route
//!   response, which a forwarded route does not have;
//! - Lambda retries an asynchronous invocation whose function fails (twice
//!   by default), so the backend should tolerate a message twice, or set
//!   its own retry attempts to 0;
//! - an event is at most 256 KB: API Gateway's largest message (128 KB, or
//!   about 171 KB base64-encoded for a binary one) fits with its context.
//!
//! A synchronous invocation would bill both functions for the backend's
//! run time and tie the limiter's concurrency to the backend's latency.

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::InvocationType;
use ratelimiter::ConfigError;

use crate::message::MessageHook;
use crate::response::ok_response;

/// The variable that names the function allowed messages go to: a name,
/// an ARN, or a partial ARN, as Lambda's `Invoke` takes it.
pub const FORWARD_FUNCTION_VAR: &str = "RATE_LIMIT_FORWARD_FUNCTION";

/// How long one `Invoke` may take before the message is answered 500.
const INVOKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Forwards each allowed message's event to a Lambda function,
/// asynchronously.
#[derive(Clone, Debug)]
pub struct Forward {
    client: aws_sdk_lambda::Client,
    function: String,
}

impl Forward {
    /// A forwarder to `function` through `client`.
    pub fn new(client: aws_sdk_lambda::Client, function: impl Into<String>) -> Self {
        Self {
            client,
            function: function.into(),
        }
    }

    /// The forwarder [`FORWARD_FUNCTION_VAR`] asks for, with the standard
    /// AWS configuration (`AWS_ENDPOINT_URL_LAMBDA` included); `None` when
    /// it is not set. Set but empty, or longer than Lambda allows, is an
    /// error.
    pub async fn from_env() -> Result<Option<Self>, ConfigError> {
        let Some(function) = std::env::var(FORWARD_FUNCTION_VAR).ok() else {
            return Ok(None);
        };
        let function = check_function(&function)?;
        let config = aws_config::defaults(BehaviorVersion::latest())
            .http_client(ratelimiter_dynamodb::https_client())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(INVOKE_TIMEOUT)
                    .operation_timeout(INVOKE_TIMEOUT)
                    .build(),
            )
            // An invocation that failed with a 5xx may have been queued:
            // sending it again could deliver the message twice.
            .retry_config(RetryConfig::disabled())
            .load()
            .await;
        Ok(Some(Self::new(
            aws_sdk_lambda::Client::new(&config),
            function,
        )))
    }
}

/// The function name of [`FORWARD_FUNCTION_VAR`], checked.
fn check_function(function: &str) -> Result<String, ConfigError> {
    let function = function.trim();
    // Lambda takes up to 140 characters for a name or an ARN (170 with a
    // version or alias); no spaces.
    if (1..=170).contains(&function.len()) && !function.contains(char::is_whitespace) {
        Ok(function.to_owned())
    } else {
        Err(ConfigError::Invalid {
            var: FORWARD_FUNCTION_VAR.to_owned(),
            value: function.chars().take(80).collect(),
            expected: "a Lambda function name or ARN (1 to 170 characters, no spaces)",
        })
    }
}

impl MessageHook for Forward {
    async fn on_message(
        &self,
        event: &ApiGatewayWebsocketProxyRequest,
    ) -> Result<ApiGatewayProxyResponse, lambda_runtime::Error> {
        let payload = serde_json::to_vec(event)?;
        let sent = self
            .client
            .invoke()
            .function_name(&self.function)
            .invocation_type(InvocationType::Event)
            .payload(Blob::new(payload))
            .send()
            .await;
        // A failure goes back to the handler, which logs it and answers
        // the seed's 500.
        sent.map_err(|error| {
            format!(
                "could not forward the message to {}: {}",
                self.function,
                aws_sdk_lambda::error::DisplayErrorContext(error)
            )
        })?;
        Ok(ok_response())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_function_must_be_a_name_or_an_arn() {
        assert_eq!(check_function(" backend ").unwrap(), "backend");
        for bad in ["", "two words", &"x".repeat(171)] {
            let error = check_function(bad).unwrap_err().to_string();
            assert!(error.contains(FORWARD_FUNCTION_VAR), "{error}");
        }
    }
}
