//! `ratelimit serve`: a local stand-in for an API Gateway WebSocket API that
//! runs the real Lambda handlers in process.
//!
//! - A WebSocket upgrade on `/{stage}` (or `/`, stage `local`) becomes a
//!   `$connect` event, as API Gateway would send it: the source IP is the TCP
//!   peer's address, and, standing in for an authorizer, the `userId` and
//!   `tier` query parameters go into the authorizer context, which every
//!   later event of the connection carries, as API Gateway's does.
//!   **Development only**: any client can claim any user id or tier here.
//! - A refused `$connect` is answered with the handler's status, headers and
//!   body instead of the upgrade; with `RATE_LIMIT_CONNECT_REJECT=soft`, it
//!   is accepted, and a task posts the seed's 429 body to it through the
//!   Management API (again while it is not open yet, as the Lambda
//!   follow-up does), then closes it with 1008 and a reason.
//! - Messages are routed on `$request.body.action`: `heartbeat` goes to the
//!   heartbeat handler; an action the configuration limits (`[route.*]`),
//!   or any other when it limits `$default`, goes to the message handler as
//!   the `$default` route, as the template deploys it. An allowed message
//!   there has no backend and gets no reply, as API Gateway gives with no
//!   integration response. Other messages get API Gateway's "Forbidden",
//!   as with no `$default` route. A binary message is passed base64
//!   encoded, so a byte quota counts it.
//! - `POST /{stage}/@connections/{connectionId}` is the Management API: the
//!   handlers' unchanged `PostToConnection` calls reach the client; an
//!   unknown connection gets 410. `GET` answers 200 for an open connection
//!   (`GetConnection`, which a full cap's repair asks), `DELETE` closes it.
//! - Frames over 32 KB and messages over 128 KB close the connection with
//!   code 1009, as API Gateway does.
//! - A connection that goes away, however it goes (a close frame, a
//!   dropped TCP connection, a `DeleteConnection`, the server shutting down
//!   on Ctrl-C or SIGTERM), is a `$disconnect` event to the disconnect
//!   handler, which gives back the connection's seats under the caps
//!   (`concurrent = N`). On shutdown the server closes every connection and
//!   waits for their `$disconnect`s (up to five seconds) before it exits.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lambda_events::apigw::ApiGatewayProxyResponse;
use aws_lambda_events::encodings::Body as EventBody;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use lambda_runtime::{Context, LambdaEvent};
use ratelimiter::policy::DEFAULT_ROUTE;
use ratelimiter::{RateLimitService, Store};
use ratelimiter_lambda::connect::{AcceptAll, ConnectHandler};
use ratelimiter_lambda::disconnect::DisconnectHandler;
use ratelimiter_lambda::event;
use ratelimiter_lambda::heartbeat::HeartbeatHandler;
use ratelimiter_lambda::management::ManagementApi;
use ratelimiter_lambda::message::MessageHandler;
use ratelimiter_lambda::soft::{self, Delivery, FollowUp, Scheduled, SoftReject};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::CliError;

/// The stage of a connection made on `/`.
pub const DEFAULT_STAGE: &str = "local";

/// API Gateway's limit on one WebSocket frame: 32 KB.
pub const MAX_FRAME_BYTES: usize = 32 * 1024;

/// API Gateway's limit on one WebSocket message: 128 KB.
pub const MAX_MESSAGE_BYTES: usize = 128 * 1024;

/// What a connection's socket is told to do.
enum Outgoing {
    Text(String),
    /// Close, with this code and reason if any.
    Close(Option<CloseFrame>),
}

/// The open connections, by id: how posts and closes reach their sockets.
#[derive(Default)]
struct Connections(Mutex<HashMap<String, mpsc::UnboundedSender<Outgoing>>>);

impl Connections {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, mpsc::UnboundedSender<Outgoing>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands `message` to connection `id`'s socket; false if it is not open.
    fn send(&self, id: &str, message: Outgoing) -> bool {
        self.lock()
            .get(id)
            .is_some_and(|sender| sender.send(message).is_ok())
    }
}

/// Soft rejection's follow-up in the local gateway: a task that posts the
/// reason through the Management API (this server's own, through the
/// SDK), again while the connection is not open yet, as the Lambda
/// follow-up does; then closes the socket with 1008 and a reason, which
/// API Gateway's `DeleteConnection` cannot give.
struct LocalFollowUp {
    management: Arc<ManagementApi>,
    connections: Arc<Connections>,
}

impl FollowUp for LocalFollowUp {
    fn schedule(&self, job: SoftReject) -> Scheduled<'_> {
        let (management, connections) = (self.management.clone(), self.connections.clone());
        tokio::spawn(async move {
            if job.deliver(&*management).await == Delivery::NeverOpen {
                return;
            }
            let close = CloseFrame {
                code: soft::CLOSE_CODE,
                reason: job.close_reason().into(),
            };
            connections.send(&job.connection_id, Outgoing::Close(Some(close)));
        });
        Box::pin(async { Ok(()) })
    }
}

/// The kinds of event the gateway sends to handlers.
#[derive(Clone, Copy)]
enum EventKind<'a> {
    /// `$connect`, with the upgrade request's headers and query.
    Connect {
        headers: &'a HeaderMap,
        query: &'a HashMap<String, String>,
    },
    /// A message routed to `route`; `binary` when `body` is base64.
    Message {
        route: &'a str,
        body: &'a str,
        binary: bool,
    },
    /// `$disconnect`.
    Disconnect,
}

/// What API Gateway knows about a connection.
#[derive(Clone, Debug)]
struct Connection {
    id: String,
    stage: String,
    source_ip: String,
    connected_at: u64,
    /// The authorizer's context, which API Gateway passes with every event
    /// of the connection: here from `?userId=` and `?tier=`.
    authorizer: Value,
}

struct Gateway<S> {
    connect: ConnectHandler<S, ratelimiter::SystemClock, AcceptAll, ManagementApi>,
    disconnect: DisconnectHandler<S>,
    heartbeat: HeartbeatHandler<S, ManagementApi>,
    message: MessageHandler<S, ManagementApi>,
    domain: String,
    connections: Arc<Connections>,
    ids: AtomicU64,
    random: std::collections::hash_map::RandomState,
    /// Connections whose `$disconnect` has not run yet.
    live: AtomicUsize,
}

/// How long a shutdown waits for the `$disconnect`s of the connections it
/// closed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Serves the gateway on `listen` until the process is stopped.
pub async fn serve<S: Store + 'static>(
    limiter: RateLimitService<S>,
    listen: SocketAddr,
) -> Result<(), CliError> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| CliError::Usage(format!("--listen {listen}: {e}")))?;
    let address = listener
        .local_addr()
        .map_err(|e| CliError::Store(e.to_string()))?;
    let limiter = Arc::new(limiter);
    // The handlers post to this very server, unchanged, through the SDK.
    let management = Arc::new(ManagementApi::local(format!(
        "http://{address}/{DEFAULT_STAGE}"
    )));
    let connections = Arc::new(Connections::default());
    let mut connect = ConnectHandler::new(limiter.clone()).with_sender(management.clone());
    if soft::mark_of(limiter.policies()).is_some() {
        let follow_up = LocalFollowUp {
            management: management.clone(),
            connections: connections.clone(),
        };
        connect = connect.with_soft_rejection(Arc::new(follow_up))?;
        tracing::info!(
            "soft rejection: a refused connection is accepted, told why, then closed (1008)"
        );
    }
    let gateway = Arc::new(Gateway {
        connect,
        disconnect: DisconnectHandler::new(limiter.clone()),
        heartbeat: HeartbeatHandler::new(limiter.clone(), management.clone()),
        message: MessageHandler::new(limiter, management),
        domain: address.to_string(),
        connections,
        ids: AtomicU64::new(0),
        random: Default::default(),
        live: AtomicUsize::new(0),
    });
    let app = Router::new()
        .route("/", get(upgrade_default::<S>))
        .route("/{stage}", get(upgrade::<S>))
        .route(
            "/{stage}/@connections/{id}",
            post(post_to_connection::<S>)
                .get(get_connection::<S>)
                .delete(delete_connection::<S>),
        )
        .with_state(gateway.clone());
    // The first line on stdout says where to connect; tests read it.
    println!("ws://{address}/{DEFAULT_STAGE}");
    tracing::info!(
        "local API Gateway WebSocket API on ws://{address}/{DEFAULT_STAGE} (Management API: http://{address}/{DEFAULT_STAGE}/@connections/ID); \
         ?userId= stands in for an authorizer: development only"
    );
    let closing = gateway.clone();
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        shutdown_signal().await;
        tracing::info!("shutting down: closing every connection");
        let senders: Vec<_> = closing.connections.lock().values().cloned().collect();
        for sender in senders {
            let _ = sender.send(Outgoing::Close(None));
        }
    })
    .await
    .map_err(|e| CliError::Store(format!("the gateway stopped: {e}")))?;
    // Upgraded connections outlive the server's: wait for their
    // `$disconnect`s, so that no seat stays taken in the store.
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while gateway.live.load(Ordering::Acquire) > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            left = gateway.live.load(Ordering::Acquire),
            "stopped before every $disconnect ran: their seats end with their leases"
        );
    }
    Ok(())
}

/// Ctrl-C, or SIGTERM where there is one.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(error) => {
                    tracing::warn!(%error, "cannot watch SIGTERM; Ctrl-C still stops the server");
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn upgrade_default<S: Store + 'static>(
    state: State<Arc<Gateway<S>>>,
    peer: ConnectInfo<SocketAddr>,
    query: Query<HashMap<String, String>>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    upgrade(
        state,
        Path(DEFAULT_STAGE.to_owned()),
        peer,
        query,
        headers,
        ws,
    )
    .await
}

async fn upgrade<S: Store + 'static>(
    State(gateway): State<Arc<Gateway<S>>>,
    Path(stage): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    let user = query.get("userId").filter(|u| !u.is_empty()).cloned();
    let mut authorizer = serde_json::Map::new();
    if let Some(user) = &user {
        authorizer.insert("principalId".into(), json!(user));
        authorizer.insert(ratelimiter_lambda::event::USER_ID_FIELD.into(), json!(user));
    }
    if let Some(tier) = query.get("tier").filter(|t| !t.is_empty()) {
        let field = gateway.connect.limiter().tier_field().to_owned();
        authorizer.insert(field, json!(tier));
    }
    let connection = Connection {
        id: gateway.new_connection_id(),
        stage,
        source_ip: peer.ip().to_string(),
        connected_at: gateway.now_ms(),
        authorizer: Value::Object(authorizer),
    };
    let payload = gateway.event(
        &connection,
        EventKind::Connect {
            headers: &headers,
            query: &query,
        },
    );
    let response = match gateway
        .connect
        .handle(LambdaEvent::new(payload, Context::default()))
        .await
    {
        Ok(response) => response,
        Err(error) => {
            tracing::error!(%error, "the $connect handler failed");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    };
    let role = if user.is_some() {
        "speaker"
    } else {
        "listener"
    };
    if response.status_code != 200 {
        tracing::info!(
            "refused  {} from {} ({role}): {} {}",
            connection.id,
            connection.source_ip,
            response.status_code,
            body_text(&response)
        );
        return proxy_response(response);
    }
    tracing::info!(
        "connected {} from {} ({role})",
        connection.id,
        connection.source_ip
    );
    ws.max_frame_size(MAX_FRAME_BYTES)
        .max_message_size(MAX_MESSAGE_BYTES)
        .on_upgrade(move |socket| gateway.run(socket, connection))
}

impl<S: Store + 'static> Gateway<S> {
    /// Now, by the limiter's clock, in milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64 {
        self.connect.limiter().now_ms()
    }

    fn new_connection_id(&self) -> String {
        // API Gateway's ids are opaque, unique strings; so are these.
        let n = self.ids.fetch_add(1, Ordering::Relaxed);
        format!("{:016x}=", self.random.hash_one(n))
    }

    /// An event as API Gateway would send it for `connection`.
    fn event(&self, connection: &Connection, kind: EventKind<'_>) -> Value {
        let (route, event_type) = match kind {
            EventKind::Connect { .. } => ("$connect", "CONNECT"),
            EventKind::Message { route, .. } => (route, "MESSAGE"),
            EventKind::Disconnect => ("$disconnect", "DISCONNECT"),
        };
        let now = self.now_ms();
        let mut event = json!({
            "requestContext": {
                "routeKey": route,
                "eventType": event_type,
                "messageDirection": "IN",
                "stage": connection.stage,
                "connectedAt": connection.connected_at,
                "requestTimeEpoch": now,
                "identity": {"sourceIp": connection.source_ip},
                "requestId": format!("{:x}", self.random.hash_one(now)),
                "domainName": self.domain,
                "connectionId": connection.id,
                "apiId": "local",
                "authorizer": connection.authorizer,
                "messageId": if route.starts_with('$') { Value::Null } else { json!(format!("{now:x}")) },
            },
            "isBase64Encoded": false,
        });
        match kind {
            EventKind::Connect { headers, query, .. } => {
                let headers: serde_json::Map<String, Value> = headers
                    .iter()
                    .filter_map(|(name, value)| {
                        Some((name.to_string(), json!(value.to_str().ok()?)))
                    })
                    .collect();
                event["headers"] = Value::Object(headers);
                if !query.is_empty() {
                    event["queryStringParameters"] = json!(query);
                }
            }
            EventKind::Message { body, binary, .. } => {
                event["body"] = json!(body);
                event["isBase64Encoded"] = json!(binary);
            }
            EventKind::Disconnect => {}
        }
        event
    }

    /// Relays a connection's messages until it closes.
    async fn run(self: Arc<Self>, mut socket: WebSocket, connection: Connection) {
        let (sender, mut outgoing) = mpsc::unbounded_channel();
        self.live.fetch_add(1, Ordering::AcqRel);
        self.connections
            .lock()
            .insert(connection.id.clone(), sender);
        loop {
            tokio::select! {
                incoming = socket.recv() => match incoming {
                    Some(Ok(Message::Text(text))) => self.route(&connection, text.as_str(), false).await,
                    Some(Ok(Message::Binary(data))) => {
                        let body = base64::engine::general_purpose::STANDARD.encode(&data);
                        self.route(&connection, &body, true).await;
                    }
                    Some(Err(error)) if error.to_string().contains("Space limit exceeded") => {
                        // What API Gateway does with a frame over 32 KB or a
                        // message over 128 KB: close with 1009.
                        tracing::info!("closing {}: {error} (1009)", connection.id);
                        let close = axum::extract::ws::CloseFrame {
                            code: axum::extract::ws::close_code::SIZE,
                            reason: "Message too big".into(),
                        };
                        let _ = socket.send(Message::Close(Some(close))).await;
                        break;
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => {}
                },
                message = outgoing.recv() => match message {
                    Some(Outgoing::Text(text)) => {
                        if socket.send(Message::Text(text.into())).await.is_err() {
                            break;
                        }
                    }
                    Some(Outgoing::Close(frame)) => {
                        let _ = socket.send(Message::Close(frame)).await;
                        break;
                    }
                    None => {
                        let _ = socket.send(Message::Close(None)).await;
                        break;
                    }
                },
            }
        }
        self.connections.lock().remove(&connection.id);
        let payload = self.event(&connection, EventKind::Disconnect);
        match event::parse(payload) {
            Ok(request) => {
                self.disconnect.handle_event(&request).await;
            }
            Err(bad) => tracing::error!(%bad, "the gateway built a bad event"),
        }
        self.live.fetch_sub(1, Ordering::AcqRel);
        tracing::info!("disconnected {} ($disconnect)", connection.id);
    }

    /// Routes one message on `$request.body.action`.
    async fn route(&self, connection: &Connection, body: &str, binary: bool) {
        let action = (!binary)
            .then(|| serde_json::from_str::<Value>(body).ok())
            .flatten()
            .and_then(|v| v.get("action")?.as_str().map(str::to_owned));
        let policies = self.message.limiter().policies();
        let route = match action.as_deref() {
            Some("heartbeat") => "heartbeat",
            Some(action) if policies.route(action).is_some() => DEFAULT_ROUTE,
            _ if policies.route(DEFAULT_ROUTE).is_some() => DEFAULT_ROUTE,
            other => {
                tracing::info!(
                    "message  {} with no route (action {other:?})",
                    connection.id
                );
                // What API Gateway answers when no route matches and there is no $default.
                let answer = json!({"message": "Forbidden", "connectionId": connection.id, "requestId": format!("{:x}", self.now_ms())});
                self.connections
                    .send(&connection.id, Outgoing::Text(answer.to_string()));
                return;
            }
        };
        let payload = self.event(
            connection,
            EventKind::Message {
                route,
                body,
                binary,
            },
        );
        let request = match event::parse(payload) {
            Ok(request) => request,
            Err(bad) => {
                tracing::error!(%bad, "the gateway built a bad event");
                return;
            }
        };
        let status = if route == "heartbeat" {
            self.heartbeat.handle_event(&request).await.status_code
        } else {
            match self.message.handle_event(&request).await {
                Ok(response) => response.status_code,
                Err(error) => {
                    tracing::error!(%error, "the message handler failed");
                    500
                }
            }
        };
        tracing::info!(
            "{} {} -> {status}",
            action.as_deref().unwrap_or(route),
            connection.id
        );
    }
}

/// `PostToConnection`.
async fn post_to_connection<S: Store + 'static>(
    State(gateway): State<Arc<Gateway<S>>>,
    Path((_stage, id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let text = String::from_utf8_lossy(&body).into_owned();
    if gateway.connections.send(&id, Outgoing::Text(text)) {
        StatusCode::OK.into_response()
    } else {
        gone()
    }
}

/// `GetConnection`: 200 while the connection is open, else 410.
async fn get_connection<S: Store + 'static>(
    State(gateway): State<Arc<Gateway<S>>>,
    Path((_stage, id)): Path<(String, String)>,
) -> Response {
    if gateway.connections.lock().contains_key(&id) {
        axum::Json(json!({"identity": {}})).into_response()
    } else {
        gone()
    }
}

/// `DeleteConnection`.
async fn delete_connection<S: Store + 'static>(
    State(gateway): State<Arc<Gateway<S>>>,
    Path((_stage, id)): Path<(String, String)>,
) -> Response {
    if gateway.connections.send(&id, Outgoing::Close(None)) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        gone()
    }
}

fn gone() -> Response {
    (
        StatusCode::GONE,
        [("x-amzn-errortype", "GoneException")],
        r#"{"message":null}"#,
    )
        .into_response()
}

fn body_text(response: &ApiGatewayProxyResponse) -> &str {
    match &response.body {
        Some(EventBody::Text(text)) => text,
        _ => "",
    }
}

/// A handler's proxy response as an HTTP response.
fn proxy_response(response: ApiGatewayProxyResponse) -> Response {
    let status = u16::try_from(response.status_code)
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = match response.body {
        Some(EventBody::Text(text)) => Body::from(text),
        Some(EventBody::Binary(bytes)) => Body::from(bytes),
        _ => Body::empty(),
    };
    let mut http = Response::new(body);
    *http.status_mut() = status;
    for (name, value) in &response.headers {
        http.headers_mut().insert(name.clone(), value.clone());
    }
    http
}
