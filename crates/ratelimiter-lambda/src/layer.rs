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
use aws_lambda_events::http;
use ratelimiter::{
    Clock, Denied, PolicyId, QuotaReport, RateLimitError, RateLimitService, Request, Store, Verdict,
};
use tower::{Layer, Service};

use crate::response::{
    insert_fields, internal_error_http_response, internal_error_response, limited_http_response,
    limited_response,
};

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
        Request::from((self.policy, &self.identifier)).tier(self.tier.as_deref())
    }
}

/// Why a layer answered instead of calling the handler, and when.
#[derive(Debug)]
pub enum Refusal {
    /// Over the limit: the denial, which keeps the whole verdict (every
    /// limit's numbers, `calls`, `cached`, `degraded`).
    Limited {
        /// What was decided.
        denied: Denied,
        /// What the client may be told: the `RateLimit` fields, and the
        /// numbers of a WebSocket error body.
        report: QuotaReport,
        /// Now, in milliseconds since the Unix epoch, by the limiter's clock.
        timestamp_ms: u64,
    },
    /// No decision: the check itself failed (an invalid cost, an unknown
    /// policy). Answered as the seed's 500, with nothing of the cause.
    Failed {
        /// What went wrong, for the logs.
        error: RateLimitError,
        /// Now, in milliseconds since the Unix epoch, by the limiter's clock.
        timestamp_ms: u64,
    },
}

/// What a [`RateLimitLayer`] answers with, instead of calling the handler.
///
/// The default, [`SeedResponses`], answers API Gateway proxy responses and
/// `http::Response`s (`lambda_http`'s). For any other response type, give
/// the layer a closure:
/// `.with_responder(|refusal: &Refusal| -> MyResponse { ... })`.
#[diagnostic::on_unimplemented(
    message = "the rate limit layer cannot answer a refused request with a `{R}`",
    label = "this responder makes no `{R}`",
    note = "`RateLimitLayer::new` answers with `ApiGatewayProxyResponse` or `http::Response`; for a handler that returns `{R}`, add `.with_responder(|refusal: &Refusal| -> {R} {{ ... }})`"
)]
pub trait Responder<R>: Send + Sync + 'static {
    /// The response to a refused or failed check.
    fn respond(&self, refusal: &Refusal) -> R;

    /// Adds what the client may know of its quotas to the handler's
    /// response to an allowed request. [`SeedResponses`] adds the standard
    /// `RateLimit-Policy` and `RateLimit` fields; a closure adds nothing,
    /// since its response type may have no place for them.
    fn annotate(&self, response: &mut R, report: &QuotaReport) {
        let _ = (response, report);
    }
}

/// The seed's responses: 429 with `Retry-After`, or 500 `INTERNAL_ERROR`,
/// each with the standard `RateLimit-Policy` and `RateLimit` fields, which
/// it also adds to every allowed response.
#[derive(Clone, Copy, Debug, Default)]
pub struct SeedResponses;

impl Responder<ApiGatewayProxyResponse> for SeedResponses {
    fn respond(&self, refusal: &Refusal) -> ApiGatewayProxyResponse {
        match refusal {
            Refusal::Limited {
                report,
                timestamp_ms,
                ..
            } => limited_response(report, *timestamp_ms),
            Refusal::Failed { timestamp_ms, .. } => internal_error_response(*timestamp_ms),
        }
    }

    fn annotate(&self, response: &mut ApiGatewayProxyResponse, report: &QuotaReport) {
        insert_fields(&mut response.headers, report);
    }
}

impl<B: From<String> + 'static> Responder<http::Response<B>> for SeedResponses {
    fn respond(&self, refusal: &Refusal) -> http::Response<B> {
        match refusal {
            Refusal::Limited {
                report,
                timestamp_ms,
                ..
            } => limited_http_response(report, *timestamp_ms),
            Refusal::Failed { timestamp_ms, .. } => internal_error_http_response(*timestamp_ms),
        }
    }

    fn annotate(&self, response: &mut http::Response<B>, report: &QuotaReport) {
        insert_fields(response.headers_mut(), report);
    }
}

impl<R, F> Responder<R> for F
where
    F: Fn(&Refusal) -> R + Send + Sync + 'static,
{
    fn respond(&self, refusal: &Refusal) -> R {
        self(refusal)
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

impl<Inner, Event, S, C, F, R> Service<Event> for RateLimit<Inner, S, C, F, R>
where
    Inner: Service<Event> + Clone + Send + 'static,
    Inner::Future: Send,
    Inner::Response: Send + 'static,
    Event: Send + 'static,
    S: Store + 'static,
    C: Clock + 'static,
    F: Fn(&Event) -> Option<Subject> + Send + Sync + 'static,
    R: Responder<Inner::Response>,
{
    type Response = Inner::Response;
    type Error = Inner::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Inner::Response, Inner::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, event: Event) -> Self::Future {
        // The clone takes the place of the service that was made ready.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let subject = (self.classify)(&event);
        let limiter = self.limiter.clone();
        let responder = self.responder.clone();
        Box::pin(async move {
            let Some(subject) = subject else {
                return inner.call(event).await;
            };
            let request = subject.request();
            let decided = limiter.decide(request).await;
            // A denial's report is made with its refusal.
            let report = match &decided {
                Ok(verdict) if verdict.allowed() => limiter.report(verdict).ok(),
                _ => None,
            };
            if let Some(refusal) = refusal(&limiter, request.policy, decided) {
                return Ok(responder.respond(&refusal));
            }
            let mut response = inner.call(event).await?;
            if let Some(report) = report {
                responder.annotate(&mut response, &report);
            }
            Ok(response)
        })
    }
}

/// What a handler does with one decision: logs its line (the one line per
/// decision, never the identifier itself), and says why the request must
/// not go on, if it must not: a denied verdict, or a check that failed.
///
/// One place for both, so that every handler (the layer, the heartbeat, and
/// `$connect` with its two decisions in one round trip) logs and answers
/// alike.
pub(crate) fn refusal<S: Store, C: Clock>(
    limiter: &RateLimitService<S, C>,
    policy: PolicyId,
    decided: Result<Verdict, RateLimitError>,
) -> Option<Refusal> {
    log_decision(limiter, policy, &decided);
    // The clock is read only for a response that carries a timestamp.
    match decided.map(Verdict::into_result) {
        Ok(Ok(_)) => None,
        Ok(Err(denied)) => match limiter.report(denied.verdict()) {
            Ok(report) => Some(Refusal::Limited {
                denied,
                report,
                timestamp_ms: limiter.now_ms(),
            }),
            Err(error) => Some(Refusal::Failed {
                error,
                timestamp_ms: limiter.now_ms(),
            }),
        },
        Err(error) => Some(Refusal::Failed {
            error,
            timestamp_ms: limiter.now_ms(),
        }),
    }
}

/// [`refusal`] for the verdicts of one action (`decide_all`): each decision
/// logged, the first refusal returned; a failed check is logged under
/// `first`, the first request's policy.
pub(crate) fn refusal_all<S: Store, C: Clock>(
    limiter: &RateLimitService<S, C>,
    first: PolicyId,
    decided: Result<Vec<Verdict>, RateLimitError>,
) -> Option<Refusal> {
    let verdicts = match decided {
        Ok(verdicts) => verdicts,
        Err(error) => return refusal(limiter, first, Err(error)),
    };
    let mut refused = None;
    for verdict in verdicts {
        let policy = verdict.policy;
        if refused.is_none() && !verdict.allowed() {
            refused = refusal(limiter, policy, Ok(verdict));
        } else {
            log_decision(limiter, policy, &Ok(verdict));
        }
    }
    refused
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
        Ok(verdict) if verdict.allowed() => tracing::info!(
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
        Ok(verdict) => tracing::info!(
            operation,
            key_type,
            decision = "denied",
            retry_after = verdict.retry_after_secs(),
            remaining = verdict.decision.remaining,
            degraded = verdict.is_degraded(),
            cached = verdict.cached,
            calls = verdict.calls,
            "rate limit exceeded"
        ),
        Err(error) => tracing::error!(operation, key_type, %error, "rate limit check failed"),
    }
}
