//! A key's state, read or forgotten without consuming anything: the status
//! of every limit of a request's policy, and its reset; for a cap, its
//! seats (held out of N), given back all at once or one by one.

use crate::capped::{cap_of, holder_of};
use crate::clock::Clock;
use crate::gcra::Status;
use crate::lease::{Lease, Seat};
use crate::policy::Limit;
use crate::service::RateLimitService;
use crate::store::{Spent, Store};
use crate::verdict::{RateLimitError, Request};

impl<S: Store, C: Clock> RateLimitService<S, C> {
    /// The status of every limit of the request's policy (or tier) for its
    /// identifier, in the order of the limits, consuming nothing. The
    /// request's cost does not matter. For a cap, one status: its live
    /// seats (`count`) out of `limit`, with no window.
    ///
    /// ```
    /// use ratelimiter::{Builder, PolicyId};
    ///
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let limiter = Builder::new().in_memory();
    /// limiter.decide((PolicyId::HEARTBEAT, "conn-1")).await?;
    /// let status = limiter.status((PolicyId::HEARTBEAT, "conn-1")).await?;
    /// assert_eq!((status[0].count, status[0].limit, status[0].window_duration), (1, 2, 60));
    /// # Ok::<(), ratelimiter::RateLimitError>(())
    /// # }).unwrap();
    /// ```
    pub async fn status<'r>(
        &self,
        request: impl Into<Request<'r>>,
    ) -> Result<Vec<Status>, RateLimitError> {
        let request = request.into();
        let (policy, limits) = self.resolve(&request)?;
        if let Some(cap) = policy.cap() {
            let held = self.seats(request).await?.len();
            return Ok(vec![Status {
                count: u32::try_from(held).unwrap_or(u32::MAX),
                limit: cap.concurrent(),
                reset_in_seconds: 0,
                window_duration: 0,
            }]);
        }
        let key = self.key(&request, policy);
        let slots: Vec<_> = limits.iter().map(Limit::slot).collect();
        let mut tats = vec![0; slots.len()];
        self.store.load(&key, &slots, &mut tats).await?;
        let now = self.clock.now();
        Ok(limits
            .iter()
            .zip(tats)
            .map(|(limit, tat)| limit.quota().status(tat, now))
            .collect())
    }

    /// Forgets the identifier's usage of the request's policy (every limit
    /// and every tier), so that its buckets are full again. Other policies
    /// sharing the item keep theirs; the request's tier and cost do not
    /// matter. For a cap, every seat is given back (the connections stay
    /// open, uncounted, until they go).
    ///
    /// ```
    /// use ratelimiter::{Builder, PolicyId};
    ///
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let limiter = Builder::new().in_memory();
    /// for _ in 0..3 {
    ///     limiter.decide((PolicyId::HEARTBEAT, "conn-1")).await?;
    /// }
    /// limiter.reset((PolicyId::HEARTBEAT, "conn-1")).await?;
    /// assert!(limiter.decide((PolicyId::HEARTBEAT, "conn-1")).await?.allowed());
    /// # Ok::<(), ratelimiter::RateLimitError>(())
    /// # }).unwrap();
    /// ```
    pub async fn reset<'r>(&self, request: impl Into<Request<'r>>) -> Result<(), RateLimitError> {
        let request = request.into();
        let policy = self.policy(request.policy)?;
        let key = self.key(&request, policy);
        if let Some(cap) = policy.cap() {
            // Every seat given back at once: the lease set goes.
            return Ok(self.store.remove(&key, &[cap.slot()]).await?);
        }
        let mut slots: Vec<_> = policy.limits().iter().map(Limit::slot).collect();
        for (_, limits) in policy.tiers() {
            for limit in limits {
                if !slots.contains(&limit.slot()) {
                    slots.push(limit.slot());
                }
            }
        }
        if let Some(cache) = &self.cache {
            cache.forget(&key, &slots);
        }
        if let Some(batches) = &self.batches {
            // Tokens taken before the reset are not spent after it.
            batches.forget(&key, &slots);
        }
        Ok(self.store.remove(&key, &slots).await?)
    }
}

impl<S: Store, C: Clock> RateLimitService<S, C> {
    /// Gives back the seat the request's holder took under its cap, as
    /// `$disconnect` does: one store call. Releasing a seat that is not
    /// held (given back already, or never taken) does nothing.
    ///
    /// ```
    /// use ratelimiter::{Builder, Config, Request};
    /// use ratelimiter::lease::Holder;
    ///
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let config = Config::from_file_text("limits.toml", r#"
    ///     [policy.open_per_ip]
    ///     key = "ip"
    ///     concurrent = 1
    /// "#, |_| None)?;
    /// let limiter = Builder::from_config(config).in_memory();
    /// let cap = limiter.policy_id("open_per_ip").unwrap();
    /// let now_ms = limiter.now_ms();
    /// let connect = |id| Request::from((cap, "203.0.113.7")).holder(Holder::new(id, now_ms));
    ///
    /// assert!(limiter.decide(connect("conn-1")).await?.allowed());
    /// assert!(!limiter.decide(connect("conn-2")).await?.allowed());
    /// limiter.release(connect("conn-1")).await?;
    /// assert!(limiter.decide(connect("conn-2")).await?.allowed());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    pub async fn release<'r>(&self, request: impl Into<Request<'r>>) -> Result<(), RateLimitError> {
        let request = request.into();
        let spent = self.release_spent(request).await?;
        // A write like a decision's: counted, with what it cost.
        self.metrics
            .spent(request.policy, spent.calls, spent.capacity);
        Ok(())
    }

    /// [`RateLimitService::release`], counting nothing: the call and its
    /// capacity, for the caller to account.
    pub(crate) async fn release_spent(
        &self,
        request: Request<'_>,
    ) -> Result<Spent, RateLimitError> {
        let policy = self.policy(request.policy)?;
        let cap = cap_of(policy)?;
        let holder = holder_of(policy, &request)?;
        let key = self.key(&request, policy);
        let capacity = self
            .store
            .release(&key, &Lease::to_release(cap.slot(), holder))
            .await?;
        Ok(Spent { calls: 1, capacity })
    }
}

impl<S: Store, C: Clock> RateLimitService<S, C> {
    /// The live seats of the request's cap for its identifier (its holder
    /// does not matter): one consistent read. What a full cap's repair
    /// asks about, to release the seats of connections that are gone.
    pub async fn seats<'r>(
        &self,
        request: impl Into<Request<'r>>,
    ) -> Result<Vec<Seat>, RateLimitError> {
        let request = request.into();
        let policy = self.policy(request.policy)?;
        let cap = cap_of(policy)?;
        let key = self.key(&request, policy);
        let now = self.clock.now();
        let members = self.store.leases(&key, cap.slot()).await?;
        Ok(members
            .iter()
            .filter(|m| Lease::live_at(m, now))
            .filter_map(|m| Seat::from_member(m))
            .collect())
    }
}
