//! Messages on any route: custom actions and `$default`.
//!
//! A route is limited by the policies of its `[route.ACTION]` in the
//! configuration file, all decided together
//! ([`RateLimitService::decide_all`]): a message is allowed only if every
//! policy allows it, and a refused one takes nothing from any. Policies that
//! count the same identifier (the connection, say) share an item, so a
//! route's count and byte quota per connection cost one DynamoDB call.
//!
//! - **Which route.** API Gateway gives the message's route key. A message
//!   that reached `$default` is limited by `[route.<its action>]` when the
//!   configuration has one (the `action` field of its JSON body, the API's
//!   route selection expression), else by `[route."$default"]`; so routing
//!   `$default` to this function limits every configured action with no
//!   route of its own in the API. A route with neither is not limited.
//! - **Who is counted.** A policy counts the connection id (`connection`),
//!   the source address (`ip`), the authorizer's `userId` (`user`), or the
//!   authorizer-context field named as its kind (`tenant`, ...). A message
//!   without that identifier (a listener has no `userId`) is not counted by
//!   that policy.
//! - **What it costs.** One token per message, or its size in bytes for a
//!   policy with `unit = "bytes"`. A message larger than a byte quota's
//!   whole bucket can never pass: it is refused with `MESSAGE_TOO_LARGE`
//!   (413), without a call.
//! - **A denied message** gets the seed's error body on its connection,
//!   with the numbers of the `RateLimit` fields in `details`, and the 429;
//!   it never reaches the application.
//! - **An allowed message** goes to the [`MessageHook`]: the application's
//!   own handling, or [`crate::forward::Forward`], which hands the event to
//!   another Lambda function. The default, [`NoBackend`], answers 200 with
//!   no body: API Gateway sends the client nothing, as for a route without
//!   an integration response.

use std::future::Future;
use std::sync::Arc;

use aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use lambda_runtime::LambdaEvent;
use ratelimiter::policy::{DEFAULT_ROUTE, Unit};
use ratelimiter::response::ErrorBody;
use ratelimiter::{Clock, PolicyId, RateLimitError, RateLimitService, Request, Store, SystemClock};
use serde_json::Value;

use crate::disconnect::release_if_gone;
use crate::event::{self, authorizer_field, connection_id, subjects};
use crate::layer::{Responder, SeedResponses, refusal_all};
use crate::management::{ConnectionSender, post_refusal, post_to};
use crate::response::{error_response, internal_error_response, ok_response};
use crate::soft::{marked, refused_by_mark, with_probe};

/// The code of a message larger than a byte quota's whole bucket.
pub const MESSAGE_TOO_LARGE: &str = "MESSAGE_TOO_LARGE";

/// The application's handling of an allowed message.
pub trait MessageHook: Send + Sync + 'static {
    /// Handles an allowed message; the response goes back to API Gateway
    /// (and to the client, where the route has a route response). An
    /// error is logged and answered with the seed's 500.
    fn on_message(
        &self,
        event: &ApiGatewayWebsocketProxyRequest,
    ) -> impl Future<Output = Result<ApiGatewayProxyResponse, lambda_runtime::Error>> + Send;
}

/// No application behind the limiter: an allowed message is answered 200
/// with no body, so the client receives nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoBackend;

impl MessageHook for NoBackend {
    async fn on_message(
        &self,
        _: &ApiGatewayWebsocketProxyRequest,
    ) -> Result<ApiGatewayProxyResponse, lambda_runtime::Error> {
        Ok(ok_response())
    }
}

/// An optional hook: with none, as [`NoBackend`] (the `message` binary
/// without a function to forward to).
impl<H: MessageHook> MessageHook for Option<H> {
    async fn on_message(
        &self,
        event: &ApiGatewayWebsocketProxyRequest,
    ) -> Result<ApiGatewayProxyResponse, lambda_runtime::Error> {
        match self {
            Some(hook) => hook.on_message(event).await,
            None => Ok(ok_response()),
        }
    }
}

/// The handler of every limited route. Build it once per container.
pub struct MessageHandler<S, N, C = SystemClock, H = NoBackend> {
    limiter: Arc<RateLimitService<S, C>>,
    sender: Arc<N>,
    hook: Arc<H>,
}

impl<S, N, C, H> Clone for MessageHandler<S, N, C, H> {
    fn clone(&self) -> Self {
        Self {
            limiter: self.limiter.clone(),
            sender: self.sender.clone(),
            hook: self.hook.clone(),
        }
    }
}

impl<S: Store, N: ConnectionSender, C: Clock> MessageHandler<S, N, C, NoBackend> {
    /// A handler on `limiter`'s routes, posting denials through `sender`,
    /// with no application behind it.
    pub fn new(limiter: Arc<RateLimitService<S, C>>, sender: Arc<N>) -> Self {
        Self {
            limiter,
            sender,
            hook: Arc::new(NoBackend),
        }
    }
}

impl<S: Store, N: ConnectionSender, C: Clock, H: MessageHook> MessageHandler<S, N, C, H> {
    /// The same handler, with `hook` handling allowed messages.
    pub fn with_hook<H2: MessageHook>(self, hook: H2) -> MessageHandler<S, N, C, H2> {
        MessageHandler {
            limiter: self.limiter,
            sender: self.sender,
            hook: Arc::new(hook),
        }
    }

    /// The limiter.
    pub fn limiter(&self) -> &Arc<RateLimitService<S, C>> {
        &self.limiter
    }

    /// Handles one raw invocation: a malformed event gets a 400 naming what
    /// was wrong.
    pub async fn handle(
        &self,
        event: LambdaEvent<Value>,
    ) -> Result<ApiGatewayProxyResponse, lambda_runtime::Error> {
        match event::parse(event.payload) {
            Ok(request) => self.handle_event(&request).await,
            Err(bad) => Ok(bad.reject("message", self.limiter.now_ms())),
        }
    }

    /// Handles one message event.
    pub async fn handle_event(
        &self,
        event: &ApiGatewayWebsocketProxyRequest,
    ) -> Result<ApiGatewayProxyResponse, lambda_runtime::Error> {
        let checked = connection_id(event).and_then(|id| Ok((id, self.sender.endpoint(event)?)));
        let (connection, endpoint) = match checked {
            Ok(found) => found,
            Err(bad) => return Ok(bad.reject("message", self.limiter.now_ms())),
        };
        let size = message_size(event);
        let tier = authorizer_field(event, self.limiter.tier_field());
        let identifiers = match self.route(event) {
            Some(policies) => subjects(event, self.limiter.policies(), policies),
            None => Vec::new(),
        };
        let mut requests: Vec<Request<'_>> = identifiers
            .iter()
            .map(|(id, identifier)| {
                let request = Request::from((*id, identifier)).tier(tier.as_deref());
                match self.limiter.policies()[*id].unit() {
                    Unit::Bytes => request.cost(size),
                    // Routes take no caps (`Policies::set_route`).
                    Unit::Requests | Unit::Connections => request,
                }
            })
            .collect();
        // Soft rejection on: the connection's mark is probed with the
        // rest, in their call when one counts the connection.
        let mark = with_probe(self.limiter.policies(), &mut requests, connection);
        if requests.is_empty() {
            // An unlimited route, or no policy of the route counts this
            // message's caller.
            return Ok(self.allowed(event).await);
        }
        let decided = match self.limiter.decide_all(&requests).await {
            Err(RateLimitError::InvalidCost { policy, source }) => {
                let message = format!(
                    "Message of {size} bytes exceeds the {} bytes {policy} allows at once.",
                    source.capacity
                );
                tracing::info!(
                    policy = &*policy,
                    size,
                    "message larger than its byte quota"
                );
                let now = self.limiter.now_ms();
                let body = ErrorBody::new(MESSAGE_TOO_LARGE, &message, now).to_json();
                if let Ok(delivered) = post_to(&*self.sender, &endpoint, connection, body).await {
                    release_if_gone(&self.limiter, delivered, event).await;
                }
                return Ok(error_response(413, MESSAGE_TOO_LARGE, &message, now));
            }
            decided => decided,
        };
        if refused_by_mark(mark, &decided) {
            return Ok(marked(&self.limiter, &*self.sender, &endpoint, connection, event).await);
        }
        let refused = refusal_all(&self.limiter, requests[0].policy, decided);
        let Some(refused) = refused else {
            return Ok(self.allowed(event).await);
        };
        let delivered = post_refusal(&*self.sender, &endpoint, connection, &refused).await;
        release_if_gone(&self.limiter, delivered, event).await;
        Ok(SeedResponses.respond(&refused))
    }

    /// The hook's answer to an allowed message, or the seed's 500 when it
    /// failed.
    async fn allowed(&self, event: &ApiGatewayWebsocketProxyRequest) -> ApiGatewayProxyResponse {
        match self.hook.on_message(event).await {
            Ok(response) => response,
            Err(error) => {
                tracing::error!(%error, "the message hook failed");
                internal_error_response(self.limiter.now_ms())
            }
        }
    }

    /// The policies of the event's route, if it is limited.
    fn route(&self, event: &ApiGatewayWebsocketProxyRequest) -> Option<&[PolicyId]> {
        let policies = self.limiter.policies();
        let key = event
            .request_context
            .route_key
            .as_deref()
            .unwrap_or(DEFAULT_ROUTE);
        if key != DEFAULT_ROUTE {
            return policies
                .route(key)
                .or_else(|| policies.route(DEFAULT_ROUTE));
        }
        action(event)
            .and_then(|action| policies.route(&action))
            .or_else(|| policies.route(DEFAULT_ROUTE))
    }
}

/// The `action` of a JSON message body, if it has one.
fn action(event: &ApiGatewayWebsocketProxyRequest) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Selected {
        action: Option<String>,
    }
    let body = event.body.as_deref()?;
    serde_json::from_str::<Selected>(body).ok()?.action
}

/// The message's size in bytes, as the client sent it (base64 decoded for
/// a binary frame).
fn message_size(event: &ApiGatewayWebsocketProxyRequest) -> u32 {
    let Some(body) = event.body.as_deref() else {
        return 0;
    };
    let bytes = if event.is_base64_encoded {
        body.trim_end_matches('=').len() * 3 / 4
    } else {
        body.len()
    };
    u32::try_from(bytes).unwrap_or(u32::MAX)
}
