//! The seed's API, as a thin facade over [`RateLimitService::decide`] and
//! [`RateLimitService::status`]: one check per built-in policy, whose denial
//! is an error ([`RateLimitError::Exceeded`], carrying the whole verdict),
//! and the seed's status query.
//!
//! ```
//! use ratelimiter::{Builder, RateLimitError};
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let limiter = Builder::new().in_memory();
//! limiter.check_heartbeat_limit("conn-1").await?;
//! limiter.check_heartbeat_limit("conn-1").await?;
//! match limiter.check_heartbeat_limit("conn-1").await {
//!     Err(RateLimitError::Exceeded(denied)) => assert_eq!(denied.retry_after_secs(), 30),
//!     other => panic!("expected a denial, got {other:?}"),
//! }
//! # Ok::<(), RateLimitError>(())
//! # }).unwrap();
//! ```

use crate::clock::Clock;
use crate::gcra::Status;
use crate::key::Kind;
use crate::policy::PolicyId;
use crate::service::RateLimitService;
use crate::store::Store;
use crate::verdict::{RateLimitError, Request, Verdict};

impl<S: Store, C: Clock> RateLimitService<S, C> {
    /// Counts a connection attempt from `ip` (default 20 per minute).
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let limiter = ratelimiter::Builder::new().in_memory();
    /// let verdict = limiter.check_connection_attempt_limit("203.0.113.7").await?;
    /// assert_eq!(verdict.decision.remaining, 19);
    /// # Ok::<(), ratelimiter::RateLimitError>(())
    /// # }).unwrap();
    /// ```
    pub async fn check_connection_attempt_limit(
        &self,
        ip: &str,
    ) -> Result<Verdict, RateLimitError> {
        self.check((PolicyId::CONNECTION_ATTEMPT, ip)).await
    }

    /// Counts a session created by `user_id` (default 50 per hour).
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let limiter = ratelimiter::Builder::new().in_memory();
    /// let verdict = limiter.check_session_creation_limit("user-123").await?;
    /// assert_eq!(verdict.decision.remaining, 49);
    /// # Ok::<(), ratelimiter::RateLimitError>(())
    /// # }).unwrap();
    /// ```
    pub async fn check_session_creation_limit(
        &self,
        user_id: &str,
    ) -> Result<Verdict, RateLimitError> {
        self.check((PolicyId::SESSION_CREATE, user_id)).await
    }

    /// Counts a listener joining from `ip` (default 10 per minute).
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let limiter = ratelimiter::Builder::new().in_memory();
    /// let verdict = limiter.check_listener_join_limit("203.0.113.7").await?;
    /// assert_eq!(verdict.decision.remaining, 9);
    /// # Ok::<(), ratelimiter::RateLimitError>(())
    /// # }).unwrap();
    /// ```
    pub async fn check_listener_join_limit(&self, ip: &str) -> Result<Verdict, RateLimitError> {
        self.check((PolicyId::LISTENER_JOIN, ip)).await
    }

    /// Counts a heartbeat on `connection_id` (default 2 per minute); the
    /// third within a minute is `Err(RateLimitError::Exceeded(denied))`.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let limiter = ratelimiter::Builder::new().in_memory();
    /// limiter.check_heartbeat_limit("conn-1").await?;
    /// limiter.check_heartbeat_limit("conn-1").await?;
    /// let denied = limiter.check_heartbeat_limit("conn-1").await.unwrap_err();
    /// assert_eq!(denied.denied().unwrap().retry_after_secs(), 30);
    /// # Ok::<(), ratelimiter::RateLimitError>(())
    /// # }).unwrap();
    /// ```
    pub async fn check_heartbeat_limit(
        &self,
        connection_id: &str,
    ) -> Result<Verdict, RateLimitError> {
        self.check((PolicyId::HEARTBEAT, connection_id)).await
    }

    /// The seed's status of one key, consuming nothing: for a policy with
    /// several limits, the one whose bucket is fullest.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let limiter = ratelimiter::Builder::new().in_memory();
    /// use ratelimiter::{Kind, PolicyId};
    ///
    /// limiter.check_session_creation_limit("user-123").await?;
    /// let status = limiter
    ///     .get_rate_limit_status(PolicyId::SESSION_CREATE, &Kind::USER, "user-123")
    ///     .await?;
    /// assert_eq!((status.count, status.limit, status.window_duration), (1, 50, 3600));
    /// # Ok::<(), ratelimiter::RateLimitError>(())
    /// # }).unwrap();
    /// ```
    pub async fn get_rate_limit_status(
        &self,
        operation: PolicyId,
        identifier_type: &Kind,
        identifier_value: &str,
    ) -> Result<Status, RateLimitError> {
        let request = Request::from((operation, identifier_value)).kind(Some(identifier_type));
        let statuses = self.status(request).await?;
        Ok(Status::fullest(&statuses).expect("a policy has at least one limit"))
    }

    /// One token of `request`, a denial as an error.
    async fn check(&self, request: (PolicyId, &str)) -> Result<Verdict, RateLimitError> {
        Ok(self.decide(request).await?.into_result()?)
    }
}
