//! The heartbeat handler (route `heartbeat`, selected by `{"action": "heartbeat"}`).
//!
//! An allowed heartbeat is acknowledged on the connection with
//! `{"type": "heartbeat_ack", "timestamp": <ms>}` through the API Gateway
//! Management API; a limited one gets the seed's error body on the
//! connection, so the client learns `retryAfter`, and the 429 response.
//! It does not use [`crate::layer::RateLimitLayer`], because a denial must
//! also be sent to the connection.

use std::sync::Arc;

use aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use lambda_runtime::LambdaEvent;
use ratelimiter::response::{
    ErrorBody, internal_error_response, now_ms, rate_limit_error_response_at,
};
use ratelimiter::{
    Clock, Identifier, Operation, RateLimitError, RateLimitService, Store, SystemClock,
};
use serde_json::{Value, json};

use crate::event::{self, body_json, connection_id};
use crate::layer::check_logged;
use crate::management::{ConnectionSender, SendError};
use crate::ok_response;

/// The heartbeat handler: create one per container and share it.
pub struct HeartbeatHandler<S, N, C = SystemClock> {
    limiter: Arc<RateLimitService<S, C>>,
    sender: Arc<N>,
}

impl<S, N, C> Clone for HeartbeatHandler<S, N, C> {
    fn clone(&self) -> Self {
        Self {
            limiter: self.limiter.clone(),
            sender: self.sender.clone(),
        }
    }
}

impl<S: Store, N: ConnectionSender, C: Clock> HeartbeatHandler<S, N, C> {
    /// A handler on `limiter`, answering connections through `sender`.
    pub fn new(limiter: Arc<RateLimitService<S, C>>, sender: Arc<N>) -> Self {
        Self { limiter, sender }
    }

    /// The rate limiter the handler uses.
    pub fn limiter(&self) -> &Arc<RateLimitService<S, C>> {
        &self.limiter
    }

    /// Handles one raw Lambda invocation; a malformed event gets a 400.
    pub async fn handle(
        &self,
        event: LambdaEvent<Value>,
    ) -> Result<ApiGatewayProxyResponse, lambda_runtime::Error> {
        match event::parse(event.payload) {
            Ok(request) => Ok(self.handle_event(&request).await),
            Err(bad) => Ok(bad.reject("heartbeat")),
        }
    }

    /// Handles one typed heartbeat event.
    pub async fn handle_event(
        &self,
        event: &ApiGatewayWebsocketProxyRequest,
    ) -> ApiGatewayProxyResponse {
        let checked = connection_id(event).and_then(|id| {
            body_json(event)?;
            Ok((id, self.sender.endpoint(event)?))
        });
        let (connection, endpoint) = match checked {
            Ok(found) => found,
            Err(bad) => return bad.reject("heartbeat"),
        };
        let identifier = Identifier::connection(connection);
        match check_logged(&self.limiter, Operation::Heartbeat, identifier).await {
            Ok(_) => {
                let ack = json!({"type": "heartbeat_ack", "timestamp": now_ms()});
                match self.send(&endpoint, connection, ack.to_string()).await {
                    Ok(()) => ok_response(),
                    Err(()) => internal_error_response(),
                }
            }
            Err(RateLimitError::Exceeded { retry_after, .. }) => {
                let timestamp = now_ms();
                let body = ErrorBody::rate_limited(retry_after, timestamp).to_json();
                // The client learns retryAfter on its connection; the 429 goes
                // back to API Gateway whatever happened to that message.
                let _ = self.send(&endpoint, connection, body).await;
                rate_limit_error_response_at(retry_after, timestamp)
            }
            Err(_) => internal_error_response(),
        }
    }

    /// Posts `data` to the connection; a gone connection is logged, not an error.
    async fn send(&self, endpoint: &str, connection: &str, data: String) -> Result<(), ()> {
        match self
            .sender
            .post(endpoint, connection, data.into_bytes())
            .await
        {
            Ok(()) => Ok(()),
            Err(SendError::Gone) => {
                tracing::info!("the connection is gone (410); nothing sent");
                Ok(())
            }
            Err(SendError::Failed(error)) => {
                tracing::error!(%error, "could not post to the connection");
                Err(())
            }
        }
    }
}
