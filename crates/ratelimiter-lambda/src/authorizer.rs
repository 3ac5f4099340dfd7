//! A default `REQUEST` authorizer for the `$connect` route: anonymous
//! clients come in as listeners, and a client with a valid JWT comes in as
//! a speaker, with its verified user id (the token's `sub`) in the
//! authorizer context as `userId`, where the `$connect` handler counts its
//! sessions, and its tier if the token has one.
//!
//! The tier has one name, the tier field of the limiter's configuration
//! (`RATE_LIMIT_TIER_FIELD`, else the `tier_field` of the file
//! `RATE_LIMIT_CONFIG` names, else `tier`): the claim it is read from in the
//! token and the context field it is written to, where the handlers read it.
//!
//! - No token (no `token` query parameter, no `Authorization: Bearer`
//!   header): allowed, with no user id. Browsers cannot set headers on a
//!   WebSocket, hence the query parameter.
//! - A token signed (RS256) by a key of the JWKS, not expired, not before
//!   its time, and with the configured issuer and audience, if any:
//!   allowed, with `userId` = `sub`.
//! - Any other token: denied (API Gateway answers 403). A bad token never
//!   falls back to an anonymous listener.
//!
//! The JWKS is read once per container, at start-up, from
//! `RATE_LIMIT_JWKS_URL`; keys a provider adds later reach new containers.
//! The configuration is read then too, and a wrong one stops the container,
//! as it stops the handlers.

use std::collections::HashMap;
use std::time::Duration;

use aws_lambda_events::apigw::{
    ApiGatewayCustomAuthorizerPolicy, ApiGatewayCustomAuthorizerRequestTypeRequest,
    ApiGatewayCustomAuthorizerResponse,
};
use aws_lambda_events::iam::{IamPolicyEffect, IamPolicyStatement};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ratelimiter::config::{Config, ConfigError};
use ring::signature::{RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::event::USER_ID_FIELD;

/// The variable naming the JWKS URL.
pub const JWKS_URL_VAR: &str = "RATE_LIMIT_JWKS_URL";
/// The variable naming the issuer tokens must have (`iss`), if any.
pub const ISSUER_VAR: &str = "RATE_LIMIT_JWT_ISSUER";
/// The variable naming the audience tokens must have (`aud`), if any.
pub const AUDIENCE_VAR: &str = "RATE_LIMIT_JWT_AUDIENCE";

/// How long fetching the JWKS may take at start-up.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a token was refused (for the log; the client only learns 403).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not three base64url parts of JSON.
    #[error("malformed token")]
    Malformed,
    /// Not RS256.
    #[error("unsupported algorithm")]
    Algorithm,
    /// No key of the JWKS has the token's `kid`.
    #[error("unknown key")]
    UnknownKey,
    /// The signature does not verify.
    #[error("bad signature")]
    Signature,
    /// `exp` has passed, or there is none.
    #[error("expired")]
    Expired,
    /// `nbf` is still to come.
    #[error("not yet valid")]
    NotYetValid,
    /// `iss` or `aud` is not the configured one.
    #[error("wrong issuer or audience")]
    WrongParty,
    /// No `sub`.
    #[error("no subject")]
    NoSubject,
}

/// The public keys tokens are verified against.
#[derive(Clone, Debug, Default)]
pub struct Jwks {
    keys: HashMap<String, RsaPublicKeyComponents<Vec<u8>>>,
}

#[derive(Deserialize)]
struct JwksDocument {
    keys: Vec<Jwk>,
}

#[derive(Deserialize)]
struct Jwk {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    n: Option<String>,
    e: Option<String>,
}

impl Jwks {
    /// The RSA signing keys of a JWKS document (others are skipped).
    pub fn parse(json: &str) -> Result<Self, String> {
        let document: JwksDocument =
            serde_json::from_str(json).map_err(|e| format!("not a JWKS document: {e}"))?;
        let mut keys = HashMap::new();
        for key in document.keys {
            if key.kty != "RSA" || key.alg.as_deref().is_some_and(|alg| alg != "RS256") {
                continue;
            }
            let (Some(n), Some(e)) = (key.n, key.e) else {
                continue;
            };
            let decode = |part: &str| URL_SAFE_NO_PAD.decode(part.trim_end_matches('='));
            let (Ok(n), Ok(e)) = (decode(&n), decode(&e)) else {
                return Err("a key's n or e is not base64url".to_owned());
            };
            keys.insert(key.kid.unwrap_or_default(), RsaPublicKeyComponents { n, e });
        }
        if keys.is_empty() {
            return Err("the JWKS has no RS256 key".to_owned());
        }
        Ok(Self { keys })
    }
}

/// Who a valid token says the client is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The verified user id (`sub`).
    pub user_id: String,
    /// The tier claim, if the token has one.
    pub tier: Option<String>,
}

/// Checks tokens against a JWKS and the expected issuer and audience.
#[derive(Clone, Debug)]
pub struct Verifier {
    jwks: Jwks,
    issuer: Option<String>,
    audience: Option<String>,
    /// The tier's name: the claim it is read from, and the context field
    /// the [`Authorizer`] writes it to (one setting, so that a token's tier
    /// reaches the handlers under the name they read).
    tier_field: String,
}

impl Verifier {
    /// A verifier for tokens signed by `jwks`, from `issuer` for `audience`
    /// when given, reading the tier from the claim `tier_field` (the
    /// configuration's tier field, which is also where an [`Authorizer`]
    /// on this verifier puts it in the context).
    pub fn new(
        jwks: Jwks,
        issuer: Option<String>,
        audience: Option<String>,
        tier_field: String,
    ) -> Self {
        Self {
            jwks,
            issuer,
            audience,
            tier_field,
        }
    }

    /// The identity in `token`, if it is valid at `now_secs`.
    pub fn verify(&self, token: &str, now_secs: u64) -> Result<Identity, TokenError> {
        let mut parts = token.split('.');
        let (Some(header_part), Some(payload_part), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let json = |part: &str| -> Result<Value, TokenError> {
            let bytes = URL_SAFE_NO_PAD
                .decode(part)
                .map_err(|_| TokenError::Malformed)?;
            serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed)
        };
        let header = json(header_part)?;
        if header["alg"] != "RS256" {
            return Err(TokenError::Algorithm);
        }
        let kid = header["kid"].as_str().unwrap_or_default();
        let key = self.jwks.keys.get(kid).ok_or(TokenError::UnknownKey)?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| TokenError::Malformed)?;
        // What was signed: the header and payload as sent, with their dot.
        let signed = &token[..header_part.len() + 1 + payload_part.len()];
        key.verify(&RSA_PKCS1_2048_8192_SHA256, signed.as_bytes(), &signature)
            .map_err(|_| TokenError::Signature)?;
        let claims = json(payload_part)?;
        match claims["exp"].as_u64() {
            Some(exp) if exp > now_secs => {}
            _ => return Err(TokenError::Expired),
        }
        if claims["nbf"].as_u64().is_some_and(|nbf| nbf > now_secs) {
            return Err(TokenError::NotYetValid);
        }
        if let Some(issuer) = &self.issuer
            && claims["iss"].as_str() != Some(issuer)
        {
            return Err(TokenError::WrongParty);
        }
        if let Some(audience) = &self.audience {
            let matches = match &claims["aud"] {
                Value::String(aud) => aud == audience,
                Value::Array(auds) => auds.iter().any(|aud| aud == audience),
                _ => false,
            };
            if !matches {
                return Err(TokenError::WrongParty);
            }
        }
        let user_id = claims["sub"]
            .as_str()
            .filter(|sub| !sub.is_empty())
            .ok_or(TokenError::NoSubject)?;
        Ok(Identity {
            user_id: user_id.to_owned(),
            tier: claims[&self.tier_field].as_str().map(str::to_owned),
        })
    }
}

/// The `$connect` authorizer: create one per container and share it.
#[derive(Clone, Debug)]
pub struct Authorizer {
    verifier: Verifier,
}

impl Authorizer {
    /// An authorizer that verifies tokens with `verifier` and puts a
    /// token's tier in the context under the verifier's tier field (where
    /// the handlers read it).
    pub fn new(verifier: Verifier) -> Self {
        Self { verifier }
    }

    /// The configuration of this container: the JWKS at
    /// [`JWKS_URL_VAR`] (fetched now), [`ISSUER_VAR`], [`AUDIENCE_VAR`],
    /// and the tier field of [`Config::from_env`].
    pub async fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok()).await
    }

    /// The configuration the variables of `lookup` give, as
    /// [`Authorizer::from_env`] reads it from the environment (the seam
    /// tests use, as [`Config::from_lookup`] is the core's).
    pub async fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        // The template sets the issuer and audience to "" when not given.
        let var = |name: &str| lookup(name).filter(|v| !v.is_empty());
        let url = var(JWKS_URL_VAR).ok_or_else(|| ConfigError::Invalid {
            var: JWKS_URL_VAR.to_owned(),
            value: String::new(),
            expected: "the URL of the identity provider's JWKS (https://...)",
        })?;
        // The tier field as the handlers resolve it (`limiter.tier_field()`
        // comes from the same `Config`): the variable, else the file's
        // `tier_field`, else the default. Reading the variable alone would
        // write `tier` while the handlers read a file's `plan`, and tiers
        // would silently never apply. The variables are passed unfiltered,
        // so that the authorizer accepts and refuses what the handlers do;
        // the key secret is optional there, so the authorizer needs none.
        let tier_field = Config::from_lookup(&lookup)?.tier_field;
        Self::from_jwks_url(&url, var(ISSUER_VAR), var(AUDIENCE_VAR), tier_field).await
    }

    /// An authorizer on the JWKS at `url` (fetched now), for tokens from
    /// `issuer` for `audience` when given, with the tier in `tier_field`.
    pub async fn from_jwks_url(
        url: &str,
        issuer: Option<String>,
        audience: Option<String>,
        tier_field: String,
    ) -> Result<Self, ConfigError> {
        let unreadable = |message| ConfigError::Unreadable {
            path: url.to_owned(),
            message,
        };
        let jwks = Jwks::parse(&fetch(url).await.map_err(unreadable)?).map_err(unreadable)?;
        Ok(Self::new(Verifier::new(jwks, issuer, audience, tier_field)))
    }

    /// Decides one `$connect` at `now_secs`.
    pub fn authorize(
        &self,
        request: &ApiGatewayCustomAuthorizerRequestTypeRequest,
        now_secs: u64,
    ) -> ApiGatewayCustomAuthorizerResponse {
        let resource = request.method_arn.clone().unwrap_or_else(|| "*".to_owned());
        let Some(token) = token(request) else {
            return response("anonymous", IamPolicyEffect::Allow, resource, json!({}));
        };
        match self.verifier.verify(&token, now_secs) {
            Ok(identity) => {
                let mut context = json!({ USER_ID_FIELD: identity.user_id });
                if let Some(tier) = identity.tier {
                    context[&self.verifier.tier_field] = json!(tier);
                }
                response(&identity.user_id, IamPolicyEffect::Allow, resource, context)
            }
            Err(error) => {
                tracing::info!(%error, "refused a token");
                response("refused", IamPolicyEffect::Deny, resource, json!({}))
            }
        }
    }
}

/// The token a client sent: the `token` query parameter, or the bearer
/// token of the `Authorization` header.
fn token(request: &ApiGatewayCustomAuthorizerRequestTypeRequest) -> Option<String> {
    if let Some(token) = request.query_string_parameters.first("token")
        && !token.is_empty()
    {
        return Some(token.to_owned());
    }
    let header = request.headers.get("authorization")?.to_str().ok()?;
    let token = header.strip_prefix("Bearer ")?.trim();
    (!token.is_empty()).then(|| token.to_owned())
}

fn response(
    principal: &str,
    effect: IamPolicyEffect,
    resource: String,
    context: Value,
) -> ApiGatewayCustomAuthorizerResponse {
    let mut statement = IamPolicyStatement::default();
    statement.action = vec!["execute-api:Invoke".to_owned()];
    statement.effect = effect;
    statement.resource = vec![resource];
    let mut policy = ApiGatewayCustomAuthorizerPolicy::default();
    policy.version = Some("2012-10-17".to_owned());
    policy.statement = vec![statement];
    let mut response = ApiGatewayCustomAuthorizerResponse::default();
    response.principal_id = Some(principal.to_owned());
    response.policy_document = policy;
    response.context = context;
    response
}

/// GETs `url` (HTTPS with the system's roots, or plain HTTP for a local
/// endpoint), within [`FETCH_TIMEOUT`].
async fn fetch(url: &str) -> Result<String, String> {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let uri: hyper::Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .map_err(|e| format!("no TLS roots: {e}"))?
        .https_or_http()
        .enable_http1()
        .build();
    let client: Client<_, Empty<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build(https);
    let get = async {
        let response = client
            .get(uri)
            .await
            .map_err(|e| format!("cannot fetch: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("answered {}", response.status()));
        }
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("cannot read: {e}"))?
            .to_bytes();
        String::from_utf8(body.to_vec()).map_err(|_| "not UTF-8".to_owned())
    };
    tokio::time::timeout(FETCH_TIMEOUT, get)
        .await
        .map_err(|_| format!("no answer within {} s", FETCH_TIMEOUT.as_secs()))?
}
