//! The `$disconnect` handler: gives back the seats `$connect` took.
//!
//! A cap (`concurrent = N`) in `$connect`'s checks holds a seat per open
//! connection. `$disconnect` releases the connection's seat under every
//! cap of those checks whose identifier the event carries (the
//! authorizer's context reaches `$disconnect` as it reached `$connect`):
//! one DynamoDB call per cap, and none when no cap is configured.
//! Releasing a seat the connection does not hold (a role's cap it never
//! took) does nothing.
//!
//! API Gateway sends `$disconnect` on a best-effort basis, and ignores its
//! response. A seat whose release is lost, or fails, ends by itself with
//! its lease ([`ratelimiter::lease::LEASE_LIFETIME`]). The application's
//! own cleanup (leaving a session) goes in a [`DisconnectHook`], which runs
//! after the seats are given back, whatever became of them.

use std::future::Future;
use std::sync::Arc;

use aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use lambda_runtime::LambdaEvent;
use ratelimiter::{Clock, Policies, PolicyId, RateLimitService, Request, Store, SystemClock};
use serde_json::Value;

use crate::event::{self, subjects};
use crate::management::Delivered;
use crate::response::ok_response;

/// The application's logic when a connection goes. An error is logged;
/// API Gateway ignores `$disconnect`'s response anyway.
pub trait DisconnectHook: Send + Sync + 'static {
    /// Runs once per `$disconnect`, after the connection's seats are given
    /// back.
    fn on_disconnect(
        &self,
        event: &ApiGatewayWebsocketProxyRequest,
    ) -> impl Future<Output = Result<(), lambda_runtime::Error>> + Send;
}

/// The default hook: nothing to clean up.
#[derive(Clone, Copy, Debug, Default)]
pub struct NothingToClean;

impl DisconnectHook for NothingToClean {
    async fn on_disconnect(
        &self,
        _: &ApiGatewayWebsocketProxyRequest,
    ) -> Result<(), lambda_runtime::Error> {
        Ok(())
    }
}

/// The `$disconnect` handler: create one per container and share it.
pub struct DisconnectHandler<S, C = SystemClock, H = NothingToClean> {
    limiter: Arc<RateLimitService<S, C>>,
    /// Every cap `$connect` may take, whatever the role: computed once.
    caps: Vec<PolicyId>,
    hook: Arc<H>,
}

impl<S, C, H> Clone for DisconnectHandler<S, C, H> {
    fn clone(&self) -> Self {
        Self {
            limiter: self.limiter.clone(),
            caps: self.caps.clone(),
            hook: self.hook.clone(),
        }
    }
}

/// Every cap `$connect` may take, whatever the role, each once.
pub fn connect_caps(policies: &Policies) -> Vec<PolicyId> {
    let checks = policies.connect();
    let mut caps: Vec<PolicyId> = Vec::new();
    for &id in [checks.every(), checks.speaker(), checks.listener()]
        .concat()
        .iter()
    {
        if policies[id].cap().is_some() && !caps.contains(&id) {
            caps.push(id);
        }
    }
    caps
}

/// Releases `event`'s connection's seats under `caps`: one store call per
/// cap whose identifier the event carries; what fails is logged (the seat
/// then ends with its lease). What `$disconnect` does, and what a handler
/// does whose post found the connection gone (410).
pub async fn release_seats<S: Store, C: Clock>(
    limiter: &RateLimitService<S, C>,
    caps: &[PolicyId],
    event: &ApiGatewayWebsocketProxyRequest,
) {
    if caps.is_empty() {
        return;
    }
    let Some(holder) = event::holder(event) else {
        tracing::warn!(
            "event without requestContext.connectionId or connectedAt: no seat released"
        );
        return;
    };
    for (id, identifier) in subjects(event, limiter.policies(), caps) {
        let request = Request::from((id, identifier.as_str())).holder(holder);
        if let Err(error) = limiter.release(request).await {
            tracing::warn!(
                policy = limiter.policies()[id].name(),
                %error,
                "could not release a connection's seat; it ends with its lease"
            );
        }
    }
}

/// After a post to `event`'s connection: if it found the connection gone
/// (410), its `$disconnect` may never come, so its seats under `$connect`'s
/// caps are released now.
pub(crate) async fn release_if_gone<S: Store, C: Clock>(
    limiter: &RateLimitService<S, C>,
    delivered: Delivered,
    event: &ApiGatewayWebsocketProxyRequest,
) {
    if delivered == Delivered::Gone {
        release_seats(limiter, &connect_caps(limiter.policies()), event).await;
    }
}

impl<S: Store, C: Clock> DisconnectHandler<S, C> {
    /// A handler on `limiter`, with nothing of the application's to run.
    pub fn new(limiter: Arc<RateLimitService<S, C>>) -> Self {
        let caps = connect_caps(limiter.policies());
        Self {
            limiter,
            caps,
            hook: Arc::new(NothingToClean),
        }
    }
}

impl<S: Store, C: Clock, H: DisconnectHook> DisconnectHandler<S, C, H> {
    /// The same handler, running `hook` after the seats are given back.
    pub fn with_hook<H2: DisconnectHook>(self, hook: H2) -> DisconnectHandler<S, C, H2> {
        DisconnectHandler {
            limiter: self.limiter,
            caps: self.caps,
            hook: Arc::new(hook),
        }
    }

    /// The caps whose seats a `$disconnect` gives back.
    pub fn caps(&self) -> &[PolicyId] {
        &self.caps
    }

    /// Handles one raw Lambda invocation; a malformed event gets a 400.
    pub async fn handle(
        &self,
        event: LambdaEvent<Value>,
    ) -> Result<ApiGatewayProxyResponse, lambda_runtime::Error> {
        match event::parse(event.payload) {
            Ok(request) => Ok(self.handle_event(&request).await),
            Err(bad) => Ok(bad.reject("$disconnect", self.limiter.now_ms())),
        }
    }

    /// Handles one typed `$disconnect` event: always a 200, which API
    /// Gateway ignores; what could not be released, and a failing hook,
    /// are logged.
    pub async fn handle_event(
        &self,
        event: &ApiGatewayWebsocketProxyRequest,
    ) -> ApiGatewayProxyResponse {
        release_seats(&self.limiter, &self.caps, event).await;
        if let Err(error) = self.hook.on_disconnect(event).await {
            tracing::error!(%error, "the $disconnect hook failed");
        }
        ok_response()
    }
}
