//! Reading what the handlers need from an API Gateway WebSocket event.

use aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use ratelimiter::lease::Holder;
use ratelimiter::{Kind, Policies, PolicyId};
use serde_json::Value;

use crate::response::error_response;

/// The identifier used when an event carries no source IP, as the seed says.
pub const UNKNOWN_IP: &str = "unknown";

/// The code of a malformed event's response.
pub const BAD_REQUEST: &str = "BAD_REQUEST";

/// The authorizer-context field holding a speaker's verified user id: the
/// default authorizer writes it, and the `$connect` handler reads it to
/// count the user's sessions. One name for both ends, as an authorizer of
/// your own must use it too (docs/deploy.md).
pub const USER_ID_FIELD: &str = "userId";

/// An event the handlers cannot use, and why.
///
/// The reason may quote what the event held (a deserializer names the value
/// it could not use), so it is cut to [`MAX_REASON_CHARS`]: a hostile field
/// of 100 KB is never echoed whole, in the response or in the log.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed WebSocket event: {0}")]
pub struct BadEvent(String);

/// The most characters of a [`BadEvent`]'s reason kept.
pub const MAX_REASON_CHARS: usize = 240;

impl BadEvent {
    /// An event rejected for `reason`, cut to [`MAX_REASON_CHARS`].
    pub fn new(reason: impl Into<String>) -> Self {
        let reason = reason.into();
        match reason.char_indices().nth(MAX_REASON_CHARS) {
            None => Self(reason),
            Some((cut, _)) => Self(format!("{}... (cut)", &reason[..cut])),
        }
    }

    /// The 400 response in the seed's error format, at `timestamp_ms`.
    pub fn response(&self, timestamp_ms: u64) -> ApiGatewayProxyResponse {
        error_response(400, BAD_REQUEST, &self.0, timestamp_ms)
    }

    /// Logs that `route`'s handler rejected the event, and returns the 400.
    pub fn reject(&self, route: &str, timestamp_ms: u64) -> ApiGatewayProxyResponse {
        tracing::warn!(error = %self, "rejected a malformed {route} event");
        self.response(timestamp_ms)
    }
}

/// Deserializes a raw Lambda payload as a WebSocket event, or says what is wrong.
pub fn parse(payload: Value) -> Result<ApiGatewayWebsocketProxyRequest, BadEvent> {
    if !payload.is_object() {
        return Err(BadEvent::new("the event is not a JSON object"));
    }
    if payload.get("requestContext").is_none_or(Value::is_null) {
        return Err(BadEvent::new("the event has no requestContext"));
    }
    serde_json::from_value(payload).map_err(|e| {
        BadEvent::new(format!(
            "the event does not fit an API Gateway WebSocket event: {e}"
        ))
    })
}

/// The client's IP address: `requestContext.identity.sourceIp` only, never a
/// client-controlled header such as `X-Forwarded-For`; `unknown` when absent.
pub fn source_ip(event: &ApiGatewayWebsocketProxyRequest) -> &str {
    event
        .request_context
        .identity
        .source_ip
        .as_deref()
        .filter(|ip| !ip.is_empty())
        .unwrap_or(UNKNOWN_IP)
}

/// The user id the authorizer put in its context ([`USER_ID_FIELD`]), if any.
pub fn user_id(event: &ApiGatewayWebsocketProxyRequest) -> Option<String> {
    authorizer_field(event, USER_ID_FIELD)
}

/// A field the authorizer put in its context (`userId`, a tier), if any.
///
/// API Gateway passes the authorizer's context flat, with strings, numbers
/// and booleans as they were; a number is used in its decimal form.
pub fn authorizer_field(event: &ApiGatewayWebsocketProxyRequest, name: &str) -> Option<String> {
    match event.request_context.authorizer.fields.get(name)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Who a policy counting `kind` counts for this event, if the event says:
/// the connection id (`connection`), the source address (`ip`), the
/// authorizer's `userId` (`user`), or the authorizer-context field named as
/// the kind (`tenant`, ...).
pub fn identifier(event: &ApiGatewayWebsocketProxyRequest, kind: &Kind) -> Option<String> {
    if *kind == Kind::CONNECTION {
        connection_id(event).ok().map(str::to_owned)
    } else if *kind == Kind::IP {
        Some(source_ip(event).to_owned())
    } else if *kind == Kind::USER {
        user_id(event)
    } else {
        authorizer_field(event, kind.as_str())
    }
}

/// Each of `ids` with who it counts for this event ([`identifier`]),
/// leaving out those the event does not say (a `user` policy for a
/// caller without a `userId`).
pub fn subjects(
    event: &ApiGatewayWebsocketProxyRequest,
    policies: &Policies,
    ids: &[PolicyId],
) -> Vec<(PolicyId, String)> {
    ids.iter()
        .filter_map(|&id| Some((id, identifier(event, policies[id].kind())?)))
        .collect()
}

/// Who holds a seat under a cap for this event: its connection and when
/// API Gateway accepted it (`requestContext.connectedAt`, the same in the
/// `$connect` and `$disconnect` events of a connection); `None` when the
/// event lacks either.
pub fn holder(event: &ApiGatewayWebsocketProxyRequest) -> Option<Holder<'_>> {
    let since_ms = u64::try_from(event.request_context.connected_at)
        .ok()
        .filter(|&ms| ms > 0)?;
    Some(Holder::new(connection_id(event).ok()?, since_ms))
}

/// The connection id, which every WebSocket event must carry.
pub fn connection_id(event: &ApiGatewayWebsocketProxyRequest) -> Result<&str, BadEvent> {
    event
        .request_context
        .connection_id
        .as_deref()
        .filter(|id| !id.is_empty())
        .ok_or_else(|| BadEvent::new("the event has no requestContext.connectionId"))
}

/// The message body as JSON (`{"action": "heartbeat"}` and whatever else it holds).
pub fn body_json(event: &ApiGatewayWebsocketProxyRequest) -> Result<Value, BadEvent> {
    let body = event
        .body
        .as_deref()
        .ok_or_else(|| BadEvent::new("the message has no body"))?;
    serde_json::from_str(body)
        .map_err(|e| BadEvent::new(format!("the message body is not JSON: {e}")))
}

/// The Management API endpoint of the event's API: `https://{domainName}/{stage}`.
pub fn management_endpoint(event: &ApiGatewayWebsocketProxyRequest) -> Result<String, BadEvent> {
    let context = &event.request_context;
    match (context.domain_name.as_deref(), context.stage.as_deref()) {
        (Some(domain), Some(stage)) if !domain.is_empty() && !stage.is_empty() => {
            Ok(format!("https://{domain}/{stage}"))
        }
        _ => Err(BadEvent::new(
            "the event has no requestContext.domainName and stage to answer through",
        )),
    }
}
