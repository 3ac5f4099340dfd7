//! A `tower` layer that rate-limits any `lambda_runtime` service.
//!
//! ```no_run
//! use std::sync::Arc;
//! use aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
//! use lambda_runtime::{LambdaEvent, service_fn};
//! use ratelimiter::{Limits, Operation, RateLimitService};
//! use ratelimiter_lambda::layer::{RateLimitLayer, Subject};
//! use tower::ServiceBuilder;
//!
//! # async fn run() -> Result<(), lambda_runtime::Error> {
//! let limiter = Arc::new(RateLimitService::in_memory(Limits::from_env()?));
//! let handler = ServiceBuilder::new()
//!     // At most RATE_LIMIT_CONNECTION_ATTEMPTS_PER_MIN per source IP; the
//!     // seed's 429 otherwise, without calling the handler.
//!     .layer(RateLimitLayer::new(limiter, |event: &LambdaEvent<ApiGatewayWebsocketProxyRequest>| {
//!         Some(Subject::ip(Operation::ConnectionAttempt, ratelimiter_lambda::event::source_ip(&event.payload)))
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
use ratelimiter::response::{internal_error_response, rate_limit_error_response};
use ratelimiter::{
    Clock, Identifier, IdentifierKind, Operation, RateLimitError, RateLimitService, Store, Verdict,
};
use tower::{Layer, Service};

/// What one request is counted against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subject {
    /// The operation whose limit applies.
    pub operation: Operation,
    /// What the value names.
    pub kind: IdentifierKind,
    /// The user id, IP address or connection id.
    pub value: String,
}

impl Subject {
    /// `operation`, counted per IP address.
    pub fn ip(operation: Operation, ip: &str) -> Self {
        Self {
            operation,
            kind: IdentifierKind::Ip,
            value: ip.to_owned(),
        }
    }

    /// `operation`, counted per user.
    pub fn user(operation: Operation, user_id: &str) -> Self {
        Self {
            operation,
            kind: IdentifierKind::User,
            value: user_id.to_owned(),
        }
    }

    /// `operation`, counted per connection.
    pub fn connection(operation: Operation, connection_id: &str) -> Self {
        Self {
            operation,
            kind: IdentifierKind::Connection,
            value: connection_id.to_owned(),
        }
    }

    fn identifier(&self) -> Identifier<'_> {
        Identifier {
            kind: self.kind,
            value: &self.value,
        }
    }
}

/// Applies one limit to every request of the wrapped service.
///
/// `classify` says what a request is counted against, or `None` to let it
/// through uncounted. A request over its limit gets the seed's 429 response
/// (with `Retry-After`) and the inner service is not called.
pub struct RateLimitLayer<S, C, F> {
    limiter: Arc<RateLimitService<S, C>>,
    classify: Arc<F>,
}

impl<S, C, F> RateLimitLayer<S, C, F> {
    /// A layer counting requests as `classify` says, on `limiter`.
    pub fn new(limiter: Arc<RateLimitService<S, C>>, classify: F) -> Self {
        Self {
            limiter,
            classify: Arc::new(classify),
        }
    }
}

impl<S, C, F> Clone for RateLimitLayer<S, C, F> {
    fn clone(&self) -> Self {
        Self {
            limiter: self.limiter.clone(),
            classify: self.classify.clone(),
        }
    }
}

impl<Inner, S, C, F> Layer<Inner> for RateLimitLayer<S, C, F> {
    type Service = RateLimit<Inner, S, C, F>;

    fn layer(&self, inner: Inner) -> Self::Service {
        RateLimit {
            inner,
            limiter: self.limiter.clone(),
            classify: self.classify.clone(),
        }
    }
}

/// The service [`RateLimitLayer`] makes.
pub struct RateLimit<Inner, S, C, F> {
    inner: Inner,
    limiter: Arc<RateLimitService<S, C>>,
    classify: Arc<F>,
}

impl<Inner: Clone, S, C, F> Clone for RateLimit<Inner, S, C, F> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            limiter: self.limiter.clone(),
            classify: self.classify.clone(),
        }
    }
}

impl<Inner, E, S, C, F> Service<LambdaEvent<E>> for RateLimit<Inner, S, C, F>
where
    Inner: Service<LambdaEvent<E>, Response = ApiGatewayProxyResponse> + Clone + Send + 'static,
    Inner::Future: Send,
    E: Send + 'static,
    S: Store + 'static,
    C: Clock + 'static,
    F: Fn(&LambdaEvent<E>) -> Option<Subject> + Send + Sync + 'static,
{
    type Response = ApiGatewayProxyResponse;
    type Error = Inner::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<ApiGatewayProxyResponse, Inner::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, event: LambdaEvent<E>) -> Self::Future {
        // The clone takes the place of the service that was made ready.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let subject = (self.classify)(&event);
        let limiter = self.limiter.clone();
        Box::pin(async move {
            if let Some(subject) = subject
                && let Some(denied) = enforce(&limiter, &subject).await
            {
                return Ok(denied);
            }
            inner.call(event).await
        })
    }
}

/// Checks `subject`; returns the response to send instead of calling the
/// handler, if any.
pub(crate) async fn enforce<S: Store, C: Clock>(
    limiter: &RateLimitService<S, C>,
    subject: &Subject,
) -> Option<ApiGatewayProxyResponse> {
    match check_logged(limiter, subject.operation, subject.identifier()).await {
        Ok(_) => None,
        Err(RateLimitError::Exceeded { retry_after, .. }) => {
            Some(rate_limit_error_response(retry_after))
        }
        Err(_) => Some(internal_error_response()),
    }
}

/// Counts one request of `operation` for `identifier` and logs the decision
/// (never the identifier itself): the one log line every handler writes.
pub(crate) async fn check_logged<S: Store, C: Clock>(
    limiter: &RateLimitService<S, C>,
    operation: Operation,
    identifier: Identifier<'_>,
) -> Result<Verdict, RateLimitError> {
    let result = limiter.check(operation, identifier, 1).await;
    let (operation, key_type) = (operation.as_str(), identifier.kind.as_str());
    match &result {
        Ok(verdict) => tracing::info!(
            operation,
            key_type,
            decision = if verdict.would_deny() {
                "would_deny"
            } else {
                "allowed"
            },
            remaining = verdict.decision.remaining,
            degraded = verdict.degraded,
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
    result
}
