//! One way to build a limiter: configuration from the environment (and the
//! file it names), then a store.
//!
//! ```
//! # fn main() -> Result<(), ratelimiter::ConfigError> {
//! let limiter = ratelimiter::Builder::from_env()?.in_memory();
//! assert!(limiter.policy_id("heartbeat").is_some());
//! # Ok(())
//! # }
//! ```
//!
//! With DynamoDB, `Builder::from_env()?.build(DynamoDbStore::from_env().await?)`
//! (crate `ratelimiter-dynamodb`); the configuration is read first, so a
//! mistake in it stops a Lambda function before any AWS client is made.
//!
//! The builder is the only public way to make a [`RateLimitService`]: what a
//! service needs besides its store (the registry's metric handles, the deny
//! cache, the breaker) is set up here once, and nowhere else.

use crate::cache::{DEFAULT_CACHED_BUCKETS, DenyCache};
use crate::clock::{Clock, SystemClock};
use crate::config::{Config, ConfigError};
use crate::failure::CircuitBreaker;
use crate::memory::MemoryStore;
use crate::policy::{FailureMode, Policy};
use crate::service::RateLimitService;
use crate::store::Store;

/// Builds a [`RateLimitService`]: configuration, clock, breaker and deny
/// cache, then a store.
#[derive(Debug)]
pub struct Builder<C = SystemClock> {
    config: Config,
    clock: C,
    breaker: CircuitBreaker,
    cached_buckets: usize,
}

impl Default for Builder {
    fn default() -> Self {
        Self::new()
    }
}

impl Builder {
    /// The seed's four policies with their defaults, nothing read from the
    /// environment.
    pub fn new() -> Self {
        Self::from_config(Config::default())
    }

    /// The configuration of this process: the file named by
    /// `RATE_LIMIT_CONFIG`, if set, and the `RATE_LIMIT_*` variables (see
    /// [`crate::config`] for what wins over what). Any mistake is an error
    /// naming the variable, or the file and line.
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self::from_config(Config::from_env()?))
    }

    /// A builder with `config`.
    pub fn from_config(config: Config) -> Self {
        Self {
            config,
            clock: SystemClock,
            breaker: CircuitBreaker::default(),
            cached_buckets: DEFAULT_CACHED_BUCKETS,
        }
    }
}

impl<C: Clock> Builder<C> {
    /// The configuration so far.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The same builder, taking time from `clock` (a `FakeClock` in tests).
    pub fn clock<C2: Clock>(self, clock: C2) -> Builder<C2> {
        Builder {
            config: self.config,
            clock,
            breaker: self.breaker,
            cached_buckets: self.cached_buckets,
        }
    }

    /// The same builder, with `breaker` guarding the store.
    #[must_use]
    pub fn breaker(mut self, breaker: CircuitBreaker) -> Self {
        self.breaker = breaker;
        self
    }

    /// The same builder, with every policy in failure mode `mode`.
    #[must_use]
    pub fn failure_mode(mut self, mode: FailureMode) -> Self {
        for policy in self.config.policies.iter_mut() {
            policy.set_failure_mode(mode);
        }
        self
    }

    /// The same builder, with `policy` added (or replacing the one of the
    /// same name).
    #[must_use]
    pub fn policy(mut self, policy: Policy) -> Self {
        self.config.policies.insert(policy);
        self
    }

    /// The same builder, with a deny cache of about `buckets` buckets in
    /// front of a shared store (10 000 by default; 0 for none). Each costs
    /// about 40 bytes; a flood from one client costs one store call per
    /// blocking period while its bucket is remembered.
    #[must_use]
    pub fn deny_cache(mut self, buckets: usize) -> Self {
        self.cached_buckets = buckets;
        self
    }

    /// A service on this process's memory: nothing shared with other
    /// processes, and so no deny cache (the memory store answers as fast).
    pub fn in_memory(self) -> RateLimitService<MemoryStore, C> {
        RateLimitService::new(
            MemoryStore::new(),
            self.config,
            self.clock,
            self.breaker,
            None,
        )
    }

    /// A service on a store shared with other processes (DynamoDB, the
    /// embedded store), behind this process's deny cache and hints.
    pub fn build<S: Store>(self, store: S) -> RateLimitService<S, C> {
        let cache = (self.cached_buckets > 0).then(|| DenyCache::new(self.cached_buckets));
        RateLimitService::new(store, self.config, self.clock, self.breaker, cache)
    }
}
