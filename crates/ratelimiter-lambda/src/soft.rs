//! Soft rejection: a refused `$connect` a browser can read.
//!
//! A browser's WebSocket API shows a page neither the status nor the body
//! of a refused handshake, only close code 1006, so a page cannot tell a
//! rate limit from a network fault and retries at once. With
//! [`CONNECT_REJECT_VAR`]`=soft`, the `$connect` handler accepts a connection
//! that its limits refuse, and then:
//!
//! 1. **marks it**, in the connection's own item: one token taken from
//!    [`MARK_POLICY`], a bucket of one token per [`LEASE_LIFETIME`], longer
//!    than API Gateway keeps any connection (one store call);
//! 2. **schedules a follow-up** ([`FollowUp`]), which posts the seed's 429
//!    body (with `details.retryAfter`) to the connection, retrying while it
//!    is not there yet (410, as before `$connect` has returned), and then
//!    closes it: in AWS an asynchronous invocation of the `$connect`
//!    function itself ([`SelfInvoke`]) that calls `PostToConnection`, then
//!    `DeleteConnection`; in `ratelimit serve`, a task that closes the
//!    socket with code 1008 and a reason;
//! 3. answers 200, without running the application's hook.
//!
//! In the window between the 200 and the close, every message of the
//! connection is checked against its mark by a *probe* of [`MARK_POLICY`]
//! (a request of cost 0: allowed while the token is there, taking
//! nothing). The probe rides in the store call a message makes anyway
//! when its route has a per-connection policy (the heartbeat always
//! does), so it costs no call there; on other routes it is a call of its
//! own. A marked connection's messages are refused without reaching the
//! application ([`marked`]).
//!
//! What an abusive client gets from it: the mark and the follow-up cost a
//! store call and an invocation per soft rejection, so a client (its
//! address and user) is rejected softly once per `retryAfter` in a
//! container. Connecting again before then, it is refused hard (429 at the
//! handshake), at no more cost than any refusal: it has been told.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::InvocationType;
use ratelimiter::config::read_one_of;
use ratelimiter::lease::LEASE_LIFETIME;
use ratelimiter::{
    Clock, ConfigError, FailureMode, Kind, LimitSpec, Policies, Policy, PolicyId, RateLimitError,
    RateLimitService, Request, Store, Verdict,
};
use serde::{Deserialize, Serialize};

use crate::management::{ConnectionSender, SendError};
use crate::response::error_response;

/// How a refused `$connect` is answered: `hard` (the default) or `soft`.
pub const CONNECT_REJECT_VAR: &str = "RATE_LIMIT_CONNECT_REJECT";

/// The policy whose one token marks a softly rejected connection. The
/// name is reserved while soft rejection is on.
pub const MARK_POLICY: &str = "connection_refused";

/// The top-level field of the follow-up's invocation payload; an API
/// Gateway event never has it.
pub const FOLLOW_UP_FIELD: &str = "softReject";

/// The code of the error body a marked connection's messages are answered
/// with (never posted: the follow-up posts the real reason).
pub const CONNECTION_REFUSED: &str = "CONNECTION_REFUSED";

/// How long the follow-up keeps posting to a connection that is not there
/// yet, before it gives up: the client went away, or never finished its
/// handshake. Also how long after its `connectedAt` a marked connection
/// still open is left to its follow-up, before a message of it closes it.
pub const FOLLOW_UP_DEADLINE: Duration = Duration::from_secs(3);

/// The close code of a softly rejected connection where the closer can
/// choose one (`ratelimit serve`): 1008, policy violation.
pub const CLOSE_CODE: u16 = 1008;

/// How a refused `$connect` is answered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ConnectReject {
    /// The seed's 429 at the handshake (a browser sees close code 1006).
    #[default]
    Hard,
    /// Accepted, told why on the connection, then closed.
    Soft,
}

impl ConnectReject {
    /// [`CONNECT_REJECT_VAR`] as `lookup` gives it: `hard` when unset;
    /// `hard` or `soft` in any case with white space around; anything else
    /// is an error naming the variable and the value.
    ///
    /// ```
    /// use ratelimiter_lambda::soft::ConnectReject;
    ///
    /// assert_eq!(ConnectReject::from_lookup(|_| None).unwrap(), ConnectReject::Hard);
    /// assert_eq!(ConnectReject::from_lookup(|_| Some(" Soft".into())).unwrap(), ConnectReject::Soft);
    /// assert_eq!(
    ///     ConnectReject::from_lookup(|_| Some("gentle".into())).unwrap_err().to_string(),
    ///     r#"RATE_LIMIT_CONNECT_REJECT must be one of hard or soft, got "gentle""#
    /// );
    /// ```
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mode = read_one_of(
            &lookup,
            CONNECT_REJECT_VAR,
            "hard or soft",
            |value| match value.trim().to_ascii_lowercase().as_str() {
                "hard" => Some(Self::Hard),
                "soft" => Some(Self::Soft),
                _ => None,
            },
        )?;
        Ok(mode.unwrap_or_default())
    }

    /// [`CONNECT_REJECT_VAR`] from the environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|var| std::env::var(var).ok())
    }

    /// Makes `policies` ready for this mode: with soft rejection, the
    /// mark's policy added. A configuration that already defines a policy
    /// of that name is an error, not replaced.
    pub fn apply(self, policies: &mut Policies) -> Result<(), ConfigError> {
        if self == Self::Hard {
            return Ok(());
        }
        if policies.id(MARK_POLICY).is_some() {
            return Err(ConfigError::Invalid {
                var: CONNECT_REJECT_VAR.to_owned(),
                value: "soft".to_owned(),
                expected: "hard while the configuration defines a policy named \
                           connection_refused, which soft rejection reserves",
            });
        }
        policies.insert(mark_policy());
        Ok(())
    }
}

/// The mark's policy: one token per connection per [`LEASE_LIFETIME`], so
/// that a mark outlives any connection. A store failure does not refuse a
/// connection's messages over a mark it could not read (open).
pub fn mark_policy() -> Policy {
    let spec = LimitSpec {
        count: 1,
        period: LEASE_LIFETIME,
    };
    Policy::new(MARK_POLICY, Kind::CONNECTION, &[spec])
        .expect("one token per lease lifetime is a valid policy")
        .with_failure_mode(FailureMode::Open)
}

/// The mark's policy in `policies`: soft rejection is on.
pub fn mark_of(policies: &Policies) -> Option<PolicyId> {
    policies.id(MARK_POLICY)
}

/// Adds to a message's `requests` the probe of `connection`'s mark, when
/// soft rejection is on (the mark's policy is in `policies`), and returns
/// that policy: the probe rides in the requests' call when one counts the
/// connection.
pub(crate) fn with_probe<'a>(
    policies: &Policies,
    requests: &mut Vec<Request<'a>>,
    connection: &'a str,
) -> Option<PolicyId> {
    let mark = mark_of(policies)?;
    requests.push(Request::from((mark, connection)).cost(0));
    Some(mark)
}

/// Whether `decided` (the requests [`with_probe`] added `mark`'s probe to)
/// was refused because the connection is marked.
pub(crate) fn refused_by_mark(
    mark: Option<PolicyId>,
    decided: &Result<Vec<Verdict>, RateLimitError>,
) -> bool {
    match (mark, decided) {
        (Some(mark), Ok(verdicts)) => verdicts.iter().any(|v| v.policy == mark && !v.allowed()),
        _ => false,
    }
}

/// The answer to a message of a marked connection: refused without
/// reaching the application, and nothing posted (its follow-up posts the
/// reason). A connection still open [`FOLLOW_UP_DEADLINE`] after it
/// connected outlived its follow-up (the invocation failed or was
/// throttled): it is closed now.
pub(crate) async fn marked<S: Store, C: Clock, N: ConnectionSender>(
    limiter: &RateLimitService<S, C>,
    sender: &N,
    endpoint: &str,
    connection: &str,
    event: &ApiGatewayWebsocketProxyRequest,
) -> ApiGatewayProxyResponse {
    let now = limiter.now_ms();
    let connected = u64::try_from(event.request_context.connected_at).unwrap_or(0);
    tracing::info!("a message of a connection refused at $connect: refused");
    if now.saturating_sub(connected) > FOLLOW_UP_DEADLINE.as_millis() as u64 {
        match sender.delete(endpoint, connection).await {
            Ok(()) | Err(SendError::Gone) => {}
            Err(SendError::Failed(error)) => {
                tracing::error!(%error, "could not close a connection refused at $connect");
            }
        }
    }
    error_response(
        403,
        CONNECTION_REFUSED,
        "This connection was refused at $connect and is being closed.",
        now,
    )
}

/// What the follow-up of one soft rejection does: post `body` to the
/// connection, then close it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SoftReject {
    /// The Management API endpoint of the connection's API and stage.
    pub endpoint: String,
    /// The connection.
    pub connection_id: String,
    /// The seed's 429 body, as the handshake would have carried it.
    pub body: String,
    /// Its `retryAfter`, in seconds, for the close reason.
    pub retry_after: u64,
}

/// How a follow-up's post went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// The body reached API Gateway: the connection should be closed.
    Posted,
    /// The connection never answered within [`FOLLOW_UP_DEADLINE`]: the
    /// client went away, or its handshake never finished.
    NeverOpen,
    /// The post failed otherwise (logged); the connection is closed all
    /// the same.
    Failed,
}

impl SoftReject {
    /// The close reason, where the closer can give one: the error code
    /// and when to come back, far below the 123 bytes a reason may take.
    pub fn close_reason(&self) -> String {
        format!("RATE_LIMIT_EXCEEDED: retry after {} s", self.retry_after)
    }

    /// Posts the body through `sender`, again while the connection is not
    /// there yet (410), for up to [`FOLLOW_UP_DEADLINE`].
    pub async fn deliver<N: ConnectionSender>(&self, sender: &N) -> Delivery {
        let mut waited = Duration::ZERO;
        let mut pause = Duration::from_millis(10);
        loop {
            match sender
                .post(
                    &self.endpoint,
                    &self.connection_id,
                    self.body.clone().into_bytes(),
                )
                .await
            {
                Ok(()) => return Delivery::Posted,
                Err(SendError::Failed(error)) => {
                    tracing::error!(%error, "could not tell a softly rejected connection why");
                    return Delivery::Failed;
                }
                Err(SendError::Gone) if waited >= FOLLOW_UP_DEADLINE => {
                    tracing::info!(
                        waited_ms = waited.as_millis() as u64,
                        "a softly rejected connection never opened; nothing to close"
                    );
                    return Delivery::NeverOpen;
                }
                Err(SendError::Gone) => {
                    tokio::time::sleep(pause).await;
                    waited += pause;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
            }
        }
    }

    /// The whole follow-up through the Management API: [`deliver`], then
    /// `DeleteConnection` (whose close code is API Gateway's own).
    ///
    /// [`deliver`]: SoftReject::deliver
    pub async fn run<N: ConnectionSender>(&self, sender: &N) -> Delivery {
        let delivery = self.deliver(sender).await;
        if delivery != Delivery::NeverOpen {
            match sender.delete(&self.endpoint, &self.connection_id).await {
                Ok(()) | Err(SendError::Gone) => {}
                Err(SendError::Failed(error)) => {
                    tracing::error!(%error, "could not close a softly rejected connection");
                }
            }
        }
        delivery
    }
}

/// A future that schedules a follow-up.
pub type Scheduled<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// Runs a [`SoftReject`] after `$connect` has answered: the connection
/// does not exist before.
pub trait FollowUp: Send + Sync + 'static {
    /// Schedules `job`. An error (the follow-up cannot run) makes the
    /// rejection hard.
    fn schedule(&self, job: SoftReject) -> Scheduled<'_>;
}

/// The follow-up in AWS: an asynchronous invocation of the `$connect`
/// function itself, with `{"softReject": job}`, which
/// [`crate::connect::ConnectHandler::handle`] runs ([`SoftReject::run`]).
#[derive(Clone, Debug)]
pub struct SelfInvoke {
    client: aws_sdk_lambda::Client,
    function: String,
}

impl SelfInvoke {
    /// A follow-up invoking `function` through `client`.
    pub fn new(client: aws_sdk_lambda::Client, function: impl Into<String>) -> Self {
        Self {
            client,
            function: function.into(),
        }
    }

    /// The follow-up of the running function (`AWS_LAMBDA_FUNCTION_NAME`,
    /// which Lambda sets), with the standard AWS configuration.
    pub async fn from_env() -> Result<Self, ConfigError> {
        const VAR: &str = "AWS_LAMBDA_FUNCTION_NAME";
        let function = std::env::var(VAR).ok().filter(|f| !f.trim().is_empty());
        let Some(function) = function else {
            return Err(ConfigError::Invalid {
                var: VAR.to_owned(),
                value: String::new(),
                expected: "the function's name (Lambda sets it), for the follow-up of \
                           RATE_LIMIT_CONNECT_REJECT=soft",
            });
        };
        let config = aws_config::defaults(BehaviorVersion::latest())
            .http_client(ratelimiter_dynamodb::https_client())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(2))
                    .operation_timeout(Duration::from_secs(2))
                    .build(),
            )
            .retry_config(RetryConfig::disabled())
            .load()
            .await;
        Ok(Self::new(aws_sdk_lambda::Client::new(&config), function))
    }
}

impl FollowUp for SelfInvoke {
    fn schedule(&self, job: SoftReject) -> Scheduled<'_> {
        Box::pin(async move {
            let payload = serde_json::json!({ FOLLOW_UP_FIELD: job });
            self.client
                .invoke()
                .function_name(&self.function)
                .invocation_type(InvocationType::Event)
                .payload(Blob::new(payload.to_string()))
                .send()
                .await
                .map(drop)
                .map_err(|error| {
                    format!(
                        "could not invoke {} for the follow-up: {}",
                        self.function,
                        aws_sdk_lambda::error::DisplayErrorContext(error)
                    )
                })
        })
    }
}
