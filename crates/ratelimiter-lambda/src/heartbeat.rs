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
use ratelimiter::{Clock, PolicyId, RateLimitService, Request, Store, SystemClock};
use serde_json::{Value, json};

use crate::disconnect::release_if_gone;
use crate::event::{self, authorizer_field, body_json, connection_id};
use crate::layer::{Responder, SeedResponses, refusal_all};
use crate::management::{ConnectionSender, post_refusal, post_to};
use crate::response::{internal_error_response, ok_response};
use crate::soft::{marked, refused_by_mark, with_probe};

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
            Err(bad) => Ok(bad.reject("heartbeat", self.limiter.now_ms())),
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
            Err(bad) => return bad.reject("heartbeat", self.limiter.now_ms()),
        };
        let tier = authorizer_field(event, self.limiter.tier_field());
        let request = Request::from((PolicyId::HEARTBEAT, connection)).tier(tier.as_deref());
        // Soft rejection on: the connection's mark is probed in the
        // heartbeat's own call (both count the connection).
        let mut requests = vec![request];
        let mark = with_probe(self.limiter.policies(), &mut requests, connection);
        let decided = self.limiter.decide_all(&requests).await;
        if refused_by_mark(mark, &decided) {
            return marked(&self.limiter, &*self.sender, &endpoint, connection, event).await;
        }
        let refused = refusal_all(&self.limiter, request.policy, decided);
        match refused {
            None => {
                let ack = json!({"type": "heartbeat_ack", "timestamp": self.limiter.now_ms()});
                match post_to(&*self.sender, &endpoint, connection, ack.to_string()).await {
                    Ok(delivered) => {
                        release_if_gone(&self.limiter, delivered, event).await;
                        ok_response()
                    }
                    Err(()) => internal_error_response(self.limiter.now_ms()),
                }
            }
            Some(refused) => {
                let delivered = post_refusal(&*self.sender, &endpoint, connection, &refused).await;
                release_if_gone(&self.limiter, delivered, event).await;
                SeedResponses.respond(&refused)
            }
        }
    }
}
