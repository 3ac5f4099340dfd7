//! A `tower` layer that rate-limits any `lambda_runtime` service by any
//! policy.
//!
//! ```no_run
//! use std::sync::Arc;
//! use aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
//! use lambda_runtime::{LambdaEvent, service_fn};
//! use ratelimiter::{Builder, PolicyId};
//! use ratelimiter_lambda::layer::{RateLimitLayer, Subject};
//! use tower::ServiceBuilder;
//!
//! # async fn run() -> Result<(), lambda_runtime::Error> {
//! let limiter = Arc::new(Builder::from_env()?.in_memory());
//! let handler = ServiceBuilder::new()
//!     // At most RATE_LIMIT_CONNECTION_ATTEMPTS_PER_MIN per source IP; the
//!     // seed's 429 otherwise, without calling the handler.
//!     .layer(RateLimitLayer::new(limiter, |event: &LambdaEvent<ApiGatewayWebsocketProxyRequest>| {
//!         let ip = ratelimiter_lambda::event::source_ip(&event.payload);
//!         Some(Subject::new(PolicyId::CONNECTION_ATTEMPT, ip))
//!     }))
//!     .service(service_fn(|_event: LambdaEvent<ApiGatewayWebsocketProxyRequest>| async {
//!         Ok::<_, lambda_runtime::Error>(ApiGatewayProxyResponse::default())
//!     }));
//! lambda_runtime::run(handler).await
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use aws_lambda_events::apigw::ApiGatewayProxyResponse;
use lambda_runtime::LambdaEvent;
use ratelimiter::{Clock, PolicyId, RateLimitError, RateLimitService, Request, Store, Verdict};
use tower::{Layer, Service};

use crate::response::{internal_error_response, rate_limit_error_response};

/// What one request is counted against: a policy, an identifier, and the
/// caller's tier if it has one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subject {
    /// The policy whose limits apply.
    pub policy: PolicyId,
    /// The user id, IP address, connection id, tenant, ...
    pub identifier: String,
    /// The caller's tier (from the authorizer), if any.
    pub tier: Option<String>,
}

impl Subject {
    /// `identifier`, counted by `policy`.
    pub fn new(policy: PolicyId, identifier: impl Into<String>) -> Self {
        Self {
            policy,
            identifier: identifier.into(),
            tier: None,
        }
    }

    /// The same subject, in `tier`.
    #[must_use]
    pub fn tier(mut self, tier: Option<String>) -> Self {
        self.tier = tier;
        self
    }

    fn request(&self) -> Request<'_> {
        Request::new(self.policy, &self.identifier).tier(self.tier.as_deref())
    }
}

/// Why a layer answered instead of calling the handler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Denial {
    /// Over the limit: retry after this many whole seconds (at least 1).
    Limited {
        /// Whole seconds until the same request would be allowed.
        retry_after: u64,
        /// Now, in milliseconds since the Unix epoch, by the limiter's clock.
        timestamp_ms: u64,
    },
    /// The check itself failed (an invalid cost, an unknown policy).
    Failed {
        /// Now, in milliseconds since the Unix epoch, by the limiter's clock.
        timestamp_ms: u64,
    },
}

/// What a [`RateLimitLayer`] answers with, instead of calling the handler.
///
/// The default, [`SeedResponses`], answers API Gateway proxy responses. For
/// any other response type, give the layer a closure:
/// `.with_responder(|denial: &Denial| -> MyResponse { ... })`.
#[diagnostic::on_unimplemented(
    message = "the rate limit layer cannot answer a refused request with a `{R}`",
    label = "this responder makes no `{R}`",
    note = "`RateLimitLayer::new` answers with `ApiGatewayProxyResponse`; for a handler that returns `{R}`, add `.with_responder(|denial: &Denial| -> {R} {{ ... }})`"
)]
pub trait Responder<R>: Send + Sync + 'static {
    /// The response to a refused or failed check.
    fn respond(&self, denial: &Denial) -> R;
}

/// The seed's responses: 429 with `Retry-After`, or 500 `INTERNAL_ERROR`.
#[derive(Clone, Copy, Debug, Default)]
pub struct SeedResponses;

impl Responder<ApiGatewayProxyResponse> for SeedResponses {
    fn respond(&self, denial: &Denial) -> ApiGatewayProxyResponse {
        match *denial {
            Denial::Limited {
                retry_after,
                timestamp_ms,
            } => rate_limit_error_response(retry_after, timestamp_ms),
            Denial::Failed { timestamp_ms } => internal_error_response(timestamp_ms),
        }
    }
}

impl<R, F> Responder<R> for F
where
    F: Fn(&Denial) -> R + Send + Sync + 'static,
{
    fn respond(&self, denial: &Denial) -> R {
        self(denial)
    }
}

/// Applies one policy to every request of the wrapped service.
///
/// `classify` says what a request is counted against, or `None` to let it
/// through uncounted. A request over its limit gets the responder's answer
/// (by default the seed's 429 with `Retry-After`) and the inner service is
/// not called.
pub struct RateLimitLayer<S, C, F, R = SeedResponses> {
    limiter: Arc<RateLimitService<S, C>>,
    classify: Arc<F>,
    responder: Arc<R>,
}

impl<S, C, F> RateLimitLayer<S, C, F, SeedResponses> {
    /// A layer counting requests as `classify` says, on `limiter`, answering
    /// refusals with the seed's API Gateway responses.
    pub fn new(limiter: Arc<RateLimitService<S, C>>, classify: F) -> Self {
        Self {
            limiter,
            classify: Arc::new(classify),
            responder: Arc::new(SeedResponses),
        }
    }
}

impl<S, C, F, R> RateLimitLayer<S, C, F, R> {
    /// The same layer, answering refusals with `responder`.
    pub fn with_responder<R2>(self, responder: R2) -> RateLimitLayer<S, C, F, R2> {
        RateLimitLayer {
            limiter: self.limiter,
            classify: self.classify,
            responder: Arc::new(responder),
        }
    }
}

impl<S, C, F, R> Clone for RateLimitLayer<S, C, F, R> {
    fn clone(&self) -> Self {
        Self {
            limiter: self.limiter.clone(),
            classify: self.classify.clone(),
            responder: self.responder.clone(),
        }
    }
}

impl<Inner, S, C, F, R> Layer<Inner> for RateLimitLayer<S, C, F, R> {
    type Service = RateLimit<Inner, S, C, F, R>;

    fn layer(&self, inner: Inner) -> Self::Service {
        RateLimit {
            inner,
            limiter: self.limiter.clone(),
            classify: self.classify.clone(),
            responder: self.responder.clone(),
        }
    }
}

/// The service [`RateLimitLayer`] makes.
pub struct RateLimit<Inner, S, C, F, R = SeedResponses> {
    inner: Inner,
    limiter: Arc<RateLimitService<S, C>>,
    classify: Arc<F>,
    responder: Arc<R>,
}

impl<Inner: Clone, S, C, F, R> Clone for RateLimit<Inner, S, C, F, R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            limiter: self.limiter.clone(),
            classify: self.classify.clone(),
            responder: self.responder.clone(),
        }
    }
}

impl<Inner, E, S, C, F, R> Service<LambdaEvent<E>> for RateLimit<Inner, S, C, F, R>
where
    Inner: Service<LambdaEvent<E>> + Clone + Send + 'static,
    Inner::Future: Send,
    Inner::Response: Send + 'static,
    E: Send + 'static,
    S: Store + 'static,
    C: Clock + 'static,
    F: Fn(&LambdaEvent<E>) -> Option<Subject> + Send + Sync + 'static,
    R: Responder<Inner::Response>,
{
    type Response = Inner::Response;
    type Error = Inner::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Inner::Response, Inner::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, event: LambdaEvent<E>) -> Self::Future {
        // The clone takes the place of the service that was made ready.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let subject = (self.classify)(&event);
        let limiter = self.limiter.clone();
        let responder = self.responder.clone();
        Box::pin(async move {
            if let Some(subject) = subject
                && let Some(denial) =
                    denial(&limiter, check_logged(&limiter, &subject.request()).await)
            {
                return Ok(responder.respond(&denial));
            }
            inner.call(event).await
        })
    }
}

/// Why a checked request must not go on, if it must not.
pub(crate) fn denial<S: Store, C: Clock>(
    limiter: &RateLimitService<S, C>,
    result: Result<Verdict, RateLimitError>,
) -> Option<Denial> {
    // The clock is read only for a response that carries a timestamp.
    match result {
        Ok(_) => None,
        Err(RateLimitError::Exceeded { retry_after, .. }) => Some(Denial::Limited {
            retry_after,
            timestamp_ms: limiter.now_ms(),
        }),
        Err(_) => Some(Denial::Failed {
            timestamp_ms: limiter.now_ms(),
        }),
    }
}

/// Checks one request and logs the decision: the one log line every
/// handler writes per decision (never the identifier itself).
pub(crate) async fn check_logged<S: Store, C: Clock>(
    limiter: &RateLimitService<S, C>,
    request: &Request<'_>,
) -> Result<Verdict, RateLimitError> {
    let result = limiter.check_request(request).await;
    log_decision(limiter, request.policy, &result);
    result
}

/// What a handler does with one decided request: turns the verdict into
/// the seed's result (a denied verdict is [`RateLimitError::Exceeded`]),
/// logs its line, and says why the request must not go on, if it must not.
/// A decision that failed (`Err`) is logged and refused as it is.
///
/// One place for the three steps, so that a handler deciding requests
/// itself (the `$connect` handler's two in one round trip) logs and answers
/// exactly as [`check_logged`] and [`denial`] do.
pub(crate) fn logged_denial<S: Store, C: Clock>(
    limiter: &RateLimitService<S, C>,
    policy: PolicyId,
    decided: Result<Verdict, RateLimitError>,
) -> Option<Denial> {
    let result = decided.and_then(|verdict| limiter.to_result(verdict));
    log_decision(limiter, policy, &result);
    denial(limiter, result)
}

/// Logs one decision's line.
pub(crate) fn log_decision<S: Store, C: Clock>(
    limiter: &RateLimitService<S, C>,
    policy: PolicyId,
    result: &Result<Verdict, RateLimitError>,
) {
    let Some(found) = limiter.policies().get(policy) else {
        tracing::error!(
            ?policy,
            "rate limit check on a policy this limiter does not have"
        );
        return;
    };
    let (operation, key_type) = (found.name(), found.kind().as_str());
    match result {
        Ok(verdict) => tracing::info!(
            operation,
            key_type,
            decision = if verdict.would_deny() {
                "would_deny"
            } else {
                "allowed"
            },
            remaining = verdict.decision.remaining,
            degraded = verdict.is_degraded(),
            cached = verdict.cached,
            calls = verdict.calls,
            "rate limit checked"
        ),
        Err(RateLimitError::Exceeded { retry_after, .. }) => tracing::info!(
            operation,
            key_type,
            decision = "denied",
            retry_after,
            "rate limit exceeded"
        ),
        Err(error) => tracing::error!(operation, key_type, %error, "rate limit check failed"),
    }
}
