//! Token-bucket rate limiting for serverless WebSocket APIs.
//!
//! The crate is layered so that each part can be tested alone:
//! - [`gcra`]: the pure decision core (GCRA on one number per bucket);
//! - [`clock`]: where time comes from, with a fake clock for tests;
//! - [`key`]: kinds of identifiers, buckets and collision-free keys;
//! - [`lease`]: caps on open connections, a lease per holder;
//! - [`policy`]: policies (a kind and limits, with tiers) and their registry;
//! - [`config`]: the policies from a TOML file and the environment;
//! - [`store`]: the atomic contract a backing store fulfils, and [`memory`],
//!   an in-memory implementation;
//! - [`verdict`]: what a decision takes and gives: requests, verdicts,
//!   denials and errors;
//! - [`service`]: the `RateLimitService` and its decision pipeline, with
//!   the deny cache and hints (`cache`) and the failure handling
//!   ([`failure`]: circuit breaker, hot keys, failure modes) beside the store;
//! - [`pair`]: `$connect`'s two decisions in one round trip;
//! - [`state`]: a key's status and reset, consuming nothing;
//! - [`seed`]: the seed's API, a facade over the service;
//! - [`builder`]: the one way to build a service;
//! - [`response`]: the seed's error bodies, as plain data;
//! - [`telemetry`]: the metrics every decision records.
//!
//! "The seed" is the Python integration guide this project started from:
//! its four limits (session creations, listener joins, connection attempts,
//! heartbeats), their `RATE_LIMIT_*` variables, its service API and its
//! error bodies are the built-in behaviour.
//!
//! ```
//! use ratelimiter::{Builder, PolicyId};
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let limiter = Builder::from_env()?.in_memory();
//! let verdict = limiter.decide((PolicyId::CONNECTION_ATTEMPT, "203.0.113.7")).await?;
//! assert!(verdict.allowed());
//! assert_eq!(verdict.decision.remaining, 19);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

mod all;
pub mod batch;
pub mod builder;
mod cache;
mod capped;
pub mod clock;
pub mod config;
pub mod failure;
pub mod gcra;
pub mod headers;
mod hot;
pub mod key;
pub mod lease;
pub mod memory;
mod pair;
pub mod policy;
pub mod response;
mod seed;
pub mod service;
mod state;
pub mod store;
pub mod telemetry;
pub mod verdict;
mod verdicts;

pub use builder::Builder;
pub use clock::{Clock, FakeClock, SystemClock};
pub use config::{Config, ConfigError};
pub use failure::CircuitBreaker;
pub use gcra::{Decision, Quota, Status};
pub use headers::QuotaReport;
pub use key::{Key, Kind, Slot};
pub use memory::MemoryStore;
pub use policy::{FailureMode, LimitSpec, Policies, Policy, PolicyId, Unit};
pub use service::RateLimitService;
pub use store::{Store, StoreError, StoreErrorKind};
pub use verdict::{Degradation, Denied, RateLimitError, Request, Verdict};
