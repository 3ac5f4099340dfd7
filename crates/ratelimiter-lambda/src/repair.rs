//! Repairing a full cap: seats whose `$disconnect` never came.
//!
//! API Gateway sends `$disconnect` on a best-effort basis, so a cap can be
//! full of seats whose connections are gone; their leases end by
//! themselves (`ratelimiter::lease::LEASE_LIFETIME`), but a user would be
//! refused until then. So before `$connect` refuses on a full cap, it asks
//! API Gateway about the cap's holders (`GetConnection`, oldest first, at
//! most [`MAX_CHECKED`]), releases the seats of those that are gone (410),
//! and, if any was, asks for the seat once more.
//!
//! It costs nothing while a cap has room. A refused connection costs one
//! read of the seats, up to [`MAX_CHECKED`] `GetConnection` calls, and one
//! release per gone holder: only when the cap is full, and the rate checks
//! before the cap (counted even when it refuses) bound how often. A holder
//! found open is not asked about again for [`RECHECK_AFTER_MS`] by the same
//! container ([`Verified`]), so a client retrying against a cap full of
//! open connections costs the read alone.

use std::collections::HashMap;
use std::sync::Mutex;

use aws_lambda_events::apigw::ApiGatewayWebsocketProxyRequest;
use ratelimiter::{Clock, RateLimitService, Request, Store};

use crate::management::{ConnectionSender, SendError};

/// The most holders one repair asks about.
pub const MAX_CHECKED: usize = 10;

/// How long a holder found open is not asked about again, in milliseconds.
pub const RECHECK_AFTER_MS: u64 = 60_000;

/// The holders this container found open lately.
pub type Verified = Recent;

/// The most entries a [`Recent`] keeps.
const MAX_RECENT: usize = 10_000;

/// Names this container remembers until a time (milliseconds by the
/// limiter's clock): the holders of a full cap found open, the clients
/// told of a soft rejection. Bounded: when full, the entries past their
/// time go, and if none did, all of them (forgetting costs only a call
/// or an invocation more).
#[derive(Debug, Default)]
pub struct Recent(Mutex<HashMap<String, u64>>);

impl Recent {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `name` is remembered at `now_ms`.
    pub(crate) fn recent(&self, name: &str, now_ms: u64) -> bool {
        self.lock().get(name).is_some_and(|&until| now_ms < until)
    }

    /// Remembers `name` until `until_ms`.
    pub(crate) fn remember(&self, name: &str, now_ms: u64, until_ms: u64) {
        let mut names = self.lock();
        if names.len() >= MAX_RECENT {
            names.retain(|_, until| now_ms < *until);
            if names.len() >= MAX_RECENT {
                names.clear();
            }
        }
        names.insert(name.to_owned(), until_ms);
    }
}

/// Releases the seats of `caps`' holders that API Gateway says are gone
/// (the connection of `event` aside, and those `verified` lately); how
/// many it released.
pub async fn free_gone_seats<S: Store, C: Clock, N: ConnectionSender>(
    limiter: &RateLimitService<S, C>,
    sender: &N,
    verified: &Verified,
    event: &ApiGatewayWebsocketProxyRequest,
    caps: &[Request<'_>],
) -> u32 {
    let endpoint = match sender.endpoint(event) {
        Ok(endpoint) => endpoint,
        Err(bad) => {
            tracing::warn!(%bad, "cannot ask API Gateway about a full cap's holders");
            return 0;
        }
    };
    let own = event.request_context.connection_id.as_deref();
    let mut released = 0;
    for cap in caps {
        let policy = limiter.policies()[cap.policy].name();
        let mut seats = match limiter.seats(*cap).await {
            Ok(seats) => seats,
            Err(error) => {
                tracing::warn!(policy, %error, "cannot read a full cap's seats");
                continue;
            }
        };
        // The oldest are the likeliest to have lost their `$disconnect`.
        seats.sort_by_key(|seat| seat.since_ms);
        let now_ms = limiter.now_ms();
        for seat in seats
            .iter()
            .filter(|seat| Some(seat.id.as_str()) != own && !verified.recent(&seat.id, now_ms))
            .take(MAX_CHECKED)
        {
            match sender.gone(&endpoint, &seat.id).await {
                Ok(true) => match limiter.release(cap.holder(seat.holder())).await {
                    Ok(()) => released += 1,
                    Err(error) => tracing::warn!(policy, %error, "cannot release a gone seat"),
                },
                Ok(false) => {
                    verified.remember(&seat.id, now_ms, now_ms.saturating_add(RECHECK_AFTER_MS))
                }
                Err(SendError::Gone) => {}
                Err(SendError::Failed(error)) => {
                    tracing::warn!(policy, %error, "GetConnection failed; the seat stays");
                }
            }
        }
        if released > 0 {
            tracing::info!(policy, released, "released the seats of gone connections");
        }
    }
    released
}
