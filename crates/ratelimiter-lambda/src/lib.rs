//! Lambda handlers for an API Gateway WebSocket API, with the seed's rate
//! limits, and a tower layer that adds rate limiting to any `lambda_runtime`
//! service.
//!
//! - [`authorizer::Authorizer`]: a default `$connect` authorizer (anonymous
//!   listeners, JWT-verified speakers);
//! - [`connect::ConnectHandler`]: `$connect`, with a pluggable [`connect::ConnectHook`];
//! - [`disconnect::DisconnectHandler`]: `$disconnect`, which gives back the
//!   seats of the caps `$connect` took;
//! - [`heartbeat::HeartbeatHandler`]: the `heartbeat` route;
//! - [`message::MessageHandler`]: every other route (`[route.*]`), with a
//!   pluggable [`message::MessageHook`], such as [`forward::Forward`] (to
//!   another Lambda function);
//! - [`layer::RateLimitLayer`]: any policy around any handler;
//! - [`response`]: the seed's responses as API Gateway proxy responses;
//! - [`emf`]: CloudWatch metrics, flushed after each invocation;
//! - [`management`]: `PostToConnection` and `GetConnection` through the
//!   Management API;
//! - [`repair`]: a full cap's seats whose connections are gone, released;
//! - [`soft`]: soft rejection (`RATE_LIMIT_CONNECT_REJECT=soft`), a refused
//!   `$connect` a browser can read;
//! - [`runtime`]: start-up (logging, configuration, clients) for the binaries.
//!
//! Handlers are plain async functions of a `LambdaEvent`, so they are tested
//! by calling them; the `connect` and `heartbeat` binaries are thin mains.

pub mod authorizer;
pub mod connect;
pub mod disconnect;
pub mod emf;
pub mod event;
pub mod forward;
pub mod heartbeat;
pub mod layer;
pub mod management;
pub mod message;
pub mod repair;
pub mod response;
pub mod runtime;
pub mod soft;

pub use response::ok_response;

/// The README's Rust examples, compiled (and run, but for `no_run` ones) as
/// doctests, so that what a newcomer pastes builds.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
