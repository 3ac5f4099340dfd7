//! The `$connect` handler.
//!
//! Every connection counts against the connection-attempt limit of its
//! source IP; then a speaker (the authorizer identified a `userId`) counts
//! against the session-creation limit of that user, and anyone else against
//! the listener-join limit of the IP, as two checks in a row would:
//! a refused attempt takes nothing from the second limit, and a refused
//! second check still counts the attempt. Both are decided in one round
//! trip ([`RateLimitService::decide_both`]): one DynamoDB call for a
//! listener, whose two limits share the item of its address, and two calls
//! at once for a speaker. Then the [`ConnectHook`] runs: the application's
//! own logic (creating or joining a session).
//!
//! A configuration's `[connect]` section adds policies to both checks
//! ([`ratelimiter::policy::ConnectChecks`]): `policies` for everyone, with
//! the attempt, and `speaker` or `listener` with the role's. Each check is
//! then all or nothing, the two still in a row
//! ([`RateLimitService::decide_in_turn`]): one DynamoDB call for a listener
//! whose checks all count its address, one call per item, at once,
//! otherwise. A cap (`concurrent = N`) among them takes a seat for the
//! connection (its id and `connectedAt`), after the rates and in the same
//! call when it shares their item; `$disconnect`
//! ([`crate::disconnect::DisconnectHandler`]) gives it back.
//!
//! With soft rejection ([`ConnectHandler::with_soft_rejection`], see
//! [`crate::soft`]), a refused connection is marked, accepted (200, no
//! hook) and told why by a follow-up, which this handler also runs when
//! invoked with `{"softReject": ...}` instead of an API Gateway event.

use std::future::Future;
use std::sync::Arc;

use aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use lambda_runtime::LambdaEvent;
use ratelimiter::lease::Holder;
use ratelimiter::response::ErrorBody;
use ratelimiter::{Clock, ConfigError, PolicyId, RateLimitService, Request, Store, SystemClock};
use serde_json::Value;

use crate::event::{self, authorizer_field, connection_id, source_ip, subjects, user_id};
use crate::layer::{Refusal, Responder, SeedResponses, refusal, refusal_all};
use crate::management::{ConnectionSender, ManagementApi};
use crate::repair;
use crate::response::{error_response, internal_error_response, ok_response};
use crate::soft::{CONNECT_REJECT_VAR, FOLLOW_UP_FIELD, FollowUp, SoftReject, mark_of};

/// Who is connecting, as the `$connect` handler sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role<'a> {
    /// The authorizer identified a user: a speaker creating a session.
    Speaker {
        /// The authorizer's `userId`.
        user_id: &'a str,
    },
    /// Anyone else: a listener joining a session.
    Listener {
        /// The source IP address (or `unknown`).
        ip: &'a str,
    },
}

/// The application's logic after a connection passed its rate limits.
///
/// Return `Ok(None)` to accept the connection (200), `Ok(Some(response))` to
/// answer with a response of your own (for example 403), or an error, which
/// is logged and answered with the seed's 500 `INTERNAL_ERROR` without detail.
pub trait ConnectHook: Send + Sync + 'static {
    /// Runs once per allowed connection.
    fn on_connect(
        &self,
        event: &ApiGatewayWebsocketProxyRequest,
        role: Role<'_>,
    ) -> impl Future<Output = Result<Option<ApiGatewayProxyResponse>, lambda_runtime::Error>> + Send;
}

/// The default hook: accepts every connection that passed its limits.
#[derive(Clone, Copy, Debug, Default)]
pub struct AcceptAll;

impl ConnectHook for AcceptAll {
    async fn on_connect(
        &self,
        _: &ApiGatewayWebsocketProxyRequest,
        _: Role<'_>,
    ) -> Result<Option<ApiGatewayProxyResponse>, lambda_runtime::Error> {
        Ok(None)
    }
}

/// The `$connect` handler: create one per container and share it.
pub struct ConnectHandler<S, C = SystemClock, H = AcceptAll, N = ManagementApi> {
    limiter: Arc<RateLimitService<S, C>>,
    hook: Arc<H>,
    /// Asks API Gateway which holders of a full cap are gone; without it,
    /// a full cap refuses until its seats are released or end.
    sender: Option<Arc<N>>,
    /// The holders found open lately, not asked about again.
    verified: Arc<repair::Verified>,
    /// Soft rejection's mark and follow-up, when it is on.
    soft: Option<Soft>,
}

/// What soft rejection needs: the mark's policy and the follow-up, and
/// the clients this container told lately, until their `retryAfter`.
#[derive(Clone)]
struct Soft {
    mark: PolicyId,
    follow_up: Arc<dyn FollowUp>,
    told: Arc<repair::Recent>,
}

impl<S, C, H, N> Clone for ConnectHandler<S, C, H, N> {
    fn clone(&self) -> Self {
        Self {
            limiter: self.limiter.clone(),
            hook: self.hook.clone(),
            sender: self.sender.clone(),
            verified: self.verified.clone(),
            soft: self.soft.clone(),
        }
    }
}

impl<S: Store + 'static, C: Clock + 'static> ConnectHandler<S, C, AcceptAll> {
    /// A handler on `limiter` that accepts every allowed connection.
    pub fn new(limiter: Arc<RateLimitService<S, C>>) -> Self {
        Self {
            limiter,
            hook: Arc::new(AcceptAll),
            sender: None,
            verified: Arc::default(),
            soft: None,
        }
    }
}

impl<S: Store + 'static, C: Clock + 'static, H: ConnectHook, N: ConnectionSender>
    ConnectHandler<S, C, H, N>
{
    /// The same handler, running `hook` after the limits pass.
    pub fn with_hook<H2: ConnectHook>(self, hook: H2) -> ConnectHandler<S, C, H2, N> {
        ConnectHandler {
            limiter: self.limiter,
            hook: Arc::new(hook),
            sender: self.sender,
            verified: self.verified,
            soft: self.soft,
        }
    }

    /// The same handler, repairing full caps through `sender` (the
    /// Management API): before a cap refuses, the seats of its holders
    /// that `GetConnection` finds gone are released, and the seat asked
    /// for once more. See [`crate::repair`].
    pub fn with_sender<N2: ConnectionSender>(self, sender: Arc<N2>) -> ConnectHandler<S, C, H, N2> {
        ConnectHandler {
            limiter: self.limiter,
            hook: self.hook,
            sender: Some(sender),
            verified: self.verified,
            soft: self.soft,
        }
    }

    /// The same handler, rejecting softly ([`crate::soft`]): a connection
    /// its limits refuse is marked, accepted, told why by `follow_up`, and
    /// closed. Needs the mark's policy in the limiter
    /// ([`ConnectReject::apply`](crate::soft::ConnectReject::apply)) and a
    /// sender ([`ConnectHandler::with_sender`]) for the follow-up to post
    /// and close through.
    pub fn with_soft_rejection(
        mut self,
        follow_up: Arc<dyn FollowUp>,
    ) -> Result<Self, ConfigError> {
        let invalid = |expected| ConfigError::Invalid {
            var: CONNECT_REJECT_VAR.to_owned(),
            value: "soft".to_owned(),
            expected,
        };
        let mark = mark_of(self.limiter.policies()).ok_or_else(|| {
            invalid("hard on a limiter without the mark's policy (ConnectReject::apply adds it)")
        })?;
        if self.sender.is_none() {
            return Err(invalid(
                "hard on a handler without a sender (with_sender) to post and close through",
            ));
        }
        self.soft = Some(Soft {
            mark,
            follow_up,
            told: Arc::default(),
        });
        Ok(self)
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
        let (payload, context) = event.into_parts();
        if let Some(job) = payload.get(FOLLOW_UP_FIELD) {
            return Ok(self.follow_up(job.clone()).await);
        }
        match event::parse(payload) {
            Ok(request) => self.handle_event(LambdaEvent::new(request, context)).await,
            Err(bad) => Ok(bad.reject("$connect", self.limiter.now_ms())),
        }
    }

    /// The checks of a `[connect]` section: everyone's, all or nothing,
    /// then the role's, all or nothing, as two checks in a row (a refused
    /// first takes nothing from the second; a refused second still counts
    /// the first), in one store call when they all count one item (a
    /// listener's, all per address), else at once. A policy whose
    /// identifier the event lacks (a `user` one for a listener) does not
    /// count it.
    async fn configured(
        &self,
        event: &ApiGatewayWebsocketProxyRequest,
        role: Role<'_>,
        tier: Option<&str>,
    ) -> Option<Refusal> {
        let checks = self.limiter.policies().connect();
        let role_checks = match role {
            Role::Speaker { .. } => checks.speaker(),
            Role::Listener { .. } => checks.listener(),
        };
        let policies = self.limiter.policies();
        let (everyone, role) = (
            subjects(event, policies, checks.every()),
            subjects(event, policies, role_checks),
        );
        // A cap's seat is the connection's, taken until `$disconnect`.
        let holder = event::holder(event);
        fn requests<'a>(
            subjects: &'a [(PolicyId, String)],
            tier: Option<&'a str>,
            holder: Option<Holder<'a>>,
        ) -> Vec<Request<'a>> {
            subjects
                .iter()
                .map(|(id, identifier)| {
                    let request = Request::from((*id, identifier)).tier(tier);
                    match holder {
                        Some(holder) => request.holder(holder),
                        None => request,
                    }
                })
                .collect()
        }
        let (first, second) = (
            requests(&everyone, tier, holder),
            requests(&role, tier, holder),
        );
        let lead = first.first().or(second.first())?.policy;
        let (v1, v2) = match self.limiter.decide_in_turn(&first, &second).await {
            Ok(decided) => decided,
            Err(error) => return refusal_all(&self.limiter, lead, Err(error)),
        };
        let refused = v1
            .iter()
            .chain(v2.iter().flatten())
            .find(|v| !v.allowed())
            .map(|v| v.policy);
        if let (Some(policy), Some(sender)) = (refused, &self.sender)
            && self.limiter.policies()[policy].cap().is_some()
        {
            // Only caps refused: the rates before them passed and stay
            // counted, so only the seats are asked for again.
            let caps: Vec<Request<'_>> = first
                .iter()
                .chain(&second)
                .filter(|r| self.limiter.policies()[r.policy].cap().is_some())
                .copied()
                .collect();
            let freed =
                repair::free_gone_seats(&self.limiter, &**sender, &self.verified, event, &caps)
                    .await;
            if freed > 0 {
                return refusal_all(&self.limiter, lead, self.limiter.decide_all(&caps).await);
            }
        }
        refusal_all(&self.limiter, lead, Ok(v1))
            .or_else(|| v2.and_then(|v2| refusal_all(&self.limiter, lead, Ok(v2))))
    }

    /// Rejects `refused` softly, if soft rejection is on and this
    /// container has not told the same client (address and user) of a
    /// soft rejection whose `retryAfter` has not passed: marks the
    /// connection, schedules the follow-up, and says so. Any step failing
    /// leaves the rejection hard, and so does a client connecting again
    /// before its `retryAfter`: it was told, and a hard refusal costs
    /// nothing more, where a soft one costs a store call and an
    /// invocation.
    async fn rejected_softly(
        &self,
        event: &ApiGatewayWebsocketProxyRequest,
        refused: &Refusal,
    ) -> bool {
        let (Some(soft), Some(sender)) = (&self.soft, &self.sender) else {
            return false;
        };
        let Refusal::Limited {
            denied,
            report,
            timestamp_ms,
        } = refused
        else {
            return false;
        };
        let client = format!(
            "{}|{}",
            source_ip(event),
            user_id(event).unwrap_or_default()
        );
        let now = self.limiter.now_ms();
        if soft.told.recent(&client, now) {
            return false;
        }
        let (Ok(connection), Ok(endpoint)) = (connection_id(event), sender.endpoint(event)) else {
            return false;
        };
        match self
            .limiter
            .decide(Request::from((soft.mark, connection)))
            .await
        {
            Ok(mark) if mark.allowed() && mark.degraded.is_none() => {}
            Ok(_) => {
                tracing::warn!("could not mark a connection to reject softly: rejected hard");
                return false;
            }
            Err(error) => {
                tracing::warn!(%error, "could not mark a connection to reject softly: rejected hard");
                return false;
            }
        }
        let retry_after = denied.retry_after_secs();
        let job = SoftReject {
            endpoint,
            connection_id: connection.to_owned(),
            body: ErrorBody::limited(report, *timestamp_ms).to_json(),
            retry_after,
        };
        match soft.follow_up.schedule(job).await {
            Ok(()) => {
                tracing::info!(
                    policy = denied.policy_name(),
                    "rejected softly: accepted, to be told why and closed"
                );
                let until = now.saturating_add(retry_after.saturating_mul(1000));
                soft.told.remember(&client, now, until);
                true
            }
            Err(error) => {
                tracing::error!(%error, "could not schedule a soft rejection: rejected hard");
                false
            }
        }
    }

    /// Runs a soft rejection's follow-up (the payload of
    /// [`crate::soft::SelfInvoke`]): posts the reason, then closes the
    /// connection.
    async fn follow_up(&self, job: Value) -> ApiGatewayProxyResponse {
        let now = self.limiter.now_ms();
        let job: SoftReject = match serde_json::from_value(job) {
            Ok(job) => job,
            Err(error) => {
                tracing::error!(%error, "a follow-up payload that is not a soft rejection");
                return error_response(400, "INVALID_FOLLOW_UP", "Not a soft rejection.", now);
            }
        };
        let Some(sender) = &self.sender else {
            tracing::error!("a soft rejection's follow-up, but no sender to post through");
            return internal_error_response(now);
        };
        let delivery = job.run(&**sender).await;
        tracing::info!(?delivery, "soft rejection followed up");
        ok_response()
    }

    /// Handles one typed `$connect` event.
    pub async fn handle_event(
        &self,
        event: LambdaEvent<ApiGatewayWebsocketProxyRequest>,
    ) -> Result<ApiGatewayProxyResponse, lambda_runtime::Error> {
        let request = &event.payload;
        let ip = source_ip(request);
        let user = user_id(request);
        let tier = authorizer_field(request, self.limiter.tier_field());
        let attempt = Request::from((PolicyId::CONNECTION_ATTEMPT, ip)).tier(tier.as_deref());
        let (second, role) = match &user {
            Some(user_id) => (
                Request::from((PolicyId::SESSION_CREATE, user_id)),
                Role::Speaker { user_id },
            ),
            None => (
                Request::from((PolicyId::LISTENER_JOIN, ip)),
                Role::Listener { ip },
            ),
        };
        let second = second.tier(tier.as_deref());
        let refused = if self.limiter.policies().connect().is_seed() {
            // A failed round trip is logged once, under the attempt's
            // policy, and refused; the second check is logged only when it
            // was decided and the attempt allowed, as two checks in a row
            // would log them.
            let (first, then) = match self.limiter.decide_both(attempt, second).await {
                Ok((first, then)) => (Ok(first), then),
                Err(error) => (Err(error), None),
            };
            refusal(&self.limiter, attempt.policy, first)
                .or_else(|| then.and_then(|then| refusal(&self.limiter, second.policy, Ok(then))))
        } else {
            self.configured(request, role, tier.as_deref()).await
        };
        if let Some(refused) = refused {
            if self.rejected_softly(request, &refused).await {
                return Ok(ok_response());
            }
            return Ok(SeedResponses.respond(&refused));
        }
        Ok(match self.hook.on_connect(request, role).await {
            Ok(None) => ok_response(),
            Ok(Some(response)) => response,
            Err(error) => {
                // The detail stays in the logs; the client learns nothing internal.
                tracing::error!(%error, "the $connect hook failed");
                internal_error_response(self.limiter.now_ms())
            }
        })
    }
}
