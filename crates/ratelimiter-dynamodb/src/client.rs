//! DynamoDB clients whose calls are bounded in time and never retried.
//!
//! The SDK's defaults never time out on an endpoint that accepts a
//! connection and never answers, and retry failed calls: retrying a
//! consuming `UpdateItem` whose first attempt may have been applied would
//! count one request twice. So every client made here has connect, attempt
//! and operation timeouts, and one attempt per call; and all of them speak
//! HTTPS through [`https_client`].

use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::{Credentials, Region};

/// Where the client connects and how long its calls may take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientOptions {
    /// The bound on each call: connecting, one attempt, and the whole operation.
    pub timeout: Duration,
    /// An endpoint to use instead of the region's (`--endpoint-url`); the
    /// standard `AWS_ENDPOINT_URL_DYNAMODB` and `AWS_ENDPOINT_URL` also apply.
    pub endpoint_url: Option<String>,
    /// A region to use instead of the standard environment's.
    pub region: Option<String>,
    /// Fixed credentials, for local DynamoDB-compatible servers that do not
    /// check them; `None` uses the standard credential chain.
    pub static_credentials: bool,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            timeout: crate::DEFAULT_TIMEOUT,
            endpoint_url: None,
            region: None,
            static_credentials: false,
        }
    }
}

impl ClientOptions {
    /// Options for a DynamoDB-compatible server at `endpoint_url` that needs
    /// no real credentials (an emulator on this machine).
    pub fn local(endpoint_url: impl Into<String>, timeout: Duration) -> Self {
        Self {
            timeout,
            endpoint_url: Some(endpoint_url.into()),
            region: Some("us-east-1".to_owned()),
            static_credentials: true,
        }
    }
}

/// A DynamoDB client with the standard AWS environment (region, credentials,
/// endpoint variables), bounded by `options`.
pub async fn client(options: &ClientOptions) -> Client {
    client_with(options, https_client()).await
}

/// [`client`] speaking through `http_client` instead of [`https_client`]:
/// for a DynamoDB-compatible store reached some other way than the network,
/// such as `ratelimit`'s embedded store inside its own process. The
/// timeouts and the single attempt are the same.
pub async fn client_with(
    options: &ClientOptions,
    http_client: aws_sdk_dynamodb::config::SharedHttpClient,
) -> Client {
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(options.timeout)
        .operation_attempt_timeout(options.timeout)
        .operation_timeout(options.timeout)
        .build();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http_client)
        .timeout_config(timeouts)
        .retry_config(RetryConfig::standard().with_max_attempts(1));
    if let Some(region) = &options.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if options.static_credentials {
        loader = loader.credentials_provider(Credentials::new(
            "local",
            "local",
            None,
            None,
            "ratelimiter-local",
        ));
    }
    let sdk_config = loader.load().await;
    let mut config = aws_sdk_dynamodb::config::Builder::from(&sdk_config);
    if let Some(url) = &options.endpoint_url {
        config = config.endpoint_url(url);
    }
    Client::from_conf(config.build())
}

/// The HTTP client every SDK client here is built with: HTTPS through
/// rustls with ring and the system's root certificates, or plain HTTP for
/// local endpoints.
///
/// The SDK crates are built without their default HTTPS client (rustls with
/// aws-lc-rs), which makes each Lambda binary 0.7 MB larger. So an SDK
/// configuration built by hand must be given this client (`.http_client(
/// https_client())`), or its calls fail with "no HTTP client".
pub fn https_client() -> aws_sdk_dynamodb::config::SharedHttpClient {
    use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
    aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https()
}
