//! Sending messages to WebSocket connections through the API Gateway
//! Management API (`PostToConnection`).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_lambda_events::apigw::ApiGatewayWebsocketProxyRequest;
use aws_sdk_apigatewaymanagement::Client;
use aws_sdk_apigatewaymanagement::error::SdkError;
use aws_sdk_apigatewaymanagement::primitives::Blob;
use ratelimiter::response::ErrorBody;

use crate::event::{BadEvent, management_endpoint};
use crate::layer::Refusal;

/// Replaces the endpoint built from the event's `domainName` and `stage`
/// (for a local gateway, or a custom domain that does not serve `@connections`).
pub const MANAGEMENT_ENDPOINT_VAR: &str = "RATE_LIMIT_MANAGEMENT_ENDPOINT";

/// How long one `PostToConnection` may take.
const POST_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a message did not reach a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SendError {
    /// The connection no longer exists (410 Gone).
    Gone,
    /// Anything else.
    Failed(String),
}

/// Something that can post a message to a WebSocket connection.
pub trait ConnectionSender: Send + Sync + 'static {
    /// The Management API endpoint for the event's API.
    fn endpoint(&self, event: &ApiGatewayWebsocketProxyRequest) -> Result<String, BadEvent> {
        management_endpoint(event)
    }

    /// Posts `data` to `connection_id` through `endpoint`.
    fn post(
        &self,
        endpoint: &str,
        connection_id: &str,
        data: Vec<u8>,
    ) -> impl Future<Output = Result<(), SendError>> + Send;

    /// Whether `connection_id` is gone: `GetConnection` answers 410. Asked
    /// of the holders of a full cap, whose seats a lost `$disconnect`
    /// left taken.
    fn gone(
        &self,
        endpoint: &str,
        connection_id: &str,
    ) -> impl Future<Output = Result<bool, SendError>> + Send;

    /// Closes `connection_id` (`DeleteConnection`): the follow-up of a
    /// soft rejection ([`crate::soft`]). A connection already gone is
    /// [`SendError::Gone`].
    fn delete(
        &self,
        endpoint: &str,
        connection_id: &str,
    ) -> impl Future<Output = Result<(), SendError>> + Send;
}

/// What became of a post.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Delivered {
    /// API Gateway took it.
    Sent,
    /// The connection is gone (410): its seats are released
    /// ([`crate::disconnect::release_seats`]), since its `$disconnect`
    /// may never come.
    Gone,
}

/// Posts `data` to `connection` through `sender`, as a handler does with
/// an ack or an error body: a connection that is gone (410) is not an
/// error, since its client cannot read an answer anyway, but is said; any
/// other failure is logged and returned.
pub(crate) async fn post_to<N: ConnectionSender>(
    sender: &N,
    endpoint: &str,
    connection: &str,
    data: String,
) -> Result<Delivered, ()> {
    match sender.post(endpoint, connection, data.into_bytes()).await {
        Ok(()) => Ok(Delivered::Sent),
        Err(SendError::Gone) => {
            tracing::info!("the connection is gone (410); nothing sent");
            Ok(Delivered::Gone)
        }
        Err(SendError::Failed(error)) => {
            tracing::error!(%error, "could not post to the connection");
            Err(())
        }
    }
}

/// Answers a refused check on the connection, where no header reaches: a
/// denial's error body, with `retryAfter` and the numbers of the
/// `RateLimit` fields, and its one timestamp, the 429's. A failed check
/// posts nothing: the 500 carries no detail to tell.
pub(crate) async fn post_refusal<N: ConnectionSender>(
    sender: &N,
    endpoint: &str,
    connection: &str,
    refused: &Refusal,
) -> Delivered {
    if let Refusal::Limited {
        report,
        timestamp_ms,
        ..
    } = refused
    {
        let body = ErrorBody::limited(report, *timestamp_ms).to_json();
        // Whatever happened to it, the 429 goes back to API Gateway.
        return post_to(sender, endpoint, connection, body)
            .await
            .unwrap_or(Delivered::Sent);
    }
    Delivered::Sent
}

/// The real Management API, one SDK client per endpoint, made once.
#[derive(Debug)]
pub struct ManagementApi {
    config: aws_sdk_apigatewaymanagement::Config,
    endpoint_override: Option<String>,
    clients: Mutex<HashMap<String, Client>>,
}

impl ManagementApi {
    /// Loads the standard AWS configuration, with bounded calls; honours
    /// [`MANAGEMENT_ENDPOINT_VAR`].
    pub async fn from_env() -> Self {
        let config = aws_config::defaults(BehaviorVersion::latest())
            .http_client(ratelimiter_dynamodb::https_client())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(POST_TIMEOUT)
                    .operation_timeout(POST_TIMEOUT)
                    .build(),
            )
            // A post that failed with a 5xx may have been delivered: sending
            // it again can show the client a message twice, and each retry
            // holds the invocation longer. One attempt, like the store's.
            .retry_config(RetryConfig::disabled())
            .load()
            .await;
        let endpoint_override = std::env::var(MANAGEMENT_ENDPOINT_VAR)
            .ok()
            .filter(|s| !s.is_empty());
        Self::new((&config).into(), endpoint_override)
    }

    /// A sender for a local stand-in of API Gateway at `endpoint` (such as
    /// `ratelimit serve`), which checks no credentials.
    pub fn local(endpoint: impl Into<String>) -> Self {
        use aws_sdk_apigatewaymanagement::config::{Credentials, Region};
        let config = aws_sdk_apigatewaymanagement::Config::builder()
            .behavior_version_latest()
            .http_client(ratelimiter_dynamodb::https_client())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("local", "local", None, None, "local"))
            .retry_config(aws_sdk_apigatewaymanagement::config::retry::RetryConfig::disabled())
            .build();
        Self::new(config, Some(endpoint.into()))
    }

    /// A sender with `config`, posting to `endpoint_override` when given.
    ///
    /// `config` needs an HTTP client, such as
    /// [`ratelimiter_dynamodb::https_client`]: the SDK's default one is not
    /// built in.
    pub fn new(
        config: aws_sdk_apigatewaymanagement::Config,
        endpoint_override: Option<String>,
    ) -> Self {
        Self {
            config,
            endpoint_override,
            clients: Mutex::new(HashMap::new()),
        }
    }

    fn client(&self, endpoint: &str) -> Client {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        clients
            .entry(endpoint.to_owned())
            .or_insert_with(|| {
                let config = self.config.to_builder().endpoint_url(endpoint).build();
                Client::from_conf(config)
            })
            .clone()
    }
}

impl ConnectionSender for ManagementApi {
    fn endpoint(&self, event: &ApiGatewayWebsocketProxyRequest) -> Result<String, BadEvent> {
        match &self.endpoint_override {
            Some(endpoint) => Ok(endpoint.clone()),
            None => management_endpoint(event),
        }
    }

    async fn post(
        &self,
        endpoint: &str,
        connection_id: &str,
        data: Vec<u8>,
    ) -> Result<(), SendError> {
        let result = self
            .client(endpoint)
            .post_to_connection()
            .connection_id(connection_id)
            .data(Blob::new(data))
            .send()
            .await;
        result
            .map(drop)
            .map_err(|e| send_error(e, |e| e.is_gone_exception()))
    }

    async fn delete(&self, endpoint: &str, connection_id: &str) -> Result<(), SendError> {
        let result = self
            .client(endpoint)
            .delete_connection()
            .connection_id(connection_id)
            .send()
            .await;
        result
            .map(drop)
            .map_err(|e| send_error(e, |e| e.is_gone_exception()))
    }

    async fn gone(&self, endpoint: &str, connection_id: &str) -> Result<bool, SendError> {
        let result = self
            .client(endpoint)
            .get_connection()
            .connection_id(connection_id)
            .send()
            .await;
        match result.map_err(|e| send_error(e, |e| e.is_gone_exception())) {
            Ok(_) => Ok(false),
            Err(SendError::Gone) => Ok(true),
            Err(failed) => Err(failed),
        }
    }
}

/// A Management API call's error as a [`SendError`]: the connection gone
/// (410, `is_gone` of the operation's error) or anything else, in words.
fn send_error<E, R>(error: SdkError<E, R>, is_gone: impl Fn(&E) -> bool) -> SendError
where
    E: std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    match &error {
        SdkError::ServiceError(e) if is_gone(e.err()) => SendError::Gone,
        _ => SendError::Failed(
            aws_sdk_apigatewaymanagement::error::DisplayErrorContext(error).to_string(),
        ),
    }
}
