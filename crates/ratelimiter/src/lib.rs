//! Token-bucket rate limiting for serverless WebSocket APIs.
//!
//! The crate is layered so that each part can be tested alone:
//! - [`gcra`]: the pure decision core (GCRA on one number per key);
//! - [`clock`]: where time comes from, with a fake clock for tests;
//! - [`key`]: operations, identifiers and collision-free keys;
//! - [`config`]: the seed's four limits and their environment overrides;
//! - [`store`]: the atomic contract a backing store fulfils, and [`memory`],
//!   an in-memory implementation;
//! - [`policy`]: failure modes and the circuit breaker for an unavailable store;
//! - [`service`]: the seed's `RateLimitService` API;
//! - [`response`]: the seed's 429 and 500 API Gateway responses;
//! - [`telemetry`]: the metrics every decision records.
//!
//! ```
//! use ratelimiter::{Limits, RateLimitService};
//! use ratelimiter::response::rate_limit_error_response;
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let service = RateLimitService::in_memory(Limits::from_env()?);
//! let response = match service.check_connection_attempt_limit("203.0.113.7").await {
//!     Ok(_) => None,
//!     Err(e) => e.retry_after().map(rate_limit_error_response),
//! };
//! assert!(response.is_none());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

pub mod clock;
pub mod config;
pub mod gcra;
pub mod key;
pub mod memory;
pub mod policy;
pub mod response;
pub mod service;
pub mod store;
pub mod telemetry;

pub use clock::{Clock, FakeClock, SystemClock};
pub use config::{ConfigError, Limits};
pub use gcra::{Decision, Quota, Status};
pub use key::{Identifier, IdentifierKind, Key, Operation};
pub use memory::MemoryStore;
pub use policy::{CircuitBreaker, FailureMode, FailurePolicy, ShadowMode};
pub use service::{RateLimitError, RateLimitService, Verdict};
pub use store::{Store, StoreError, StoreErrorKind};
