//! What a client may be told about its quotas: the IETF `RateLimit-Policy`
//! and `RateLimit` fields (draft-ietf-httpapi-ratelimit-headers, revisions
//! 10 and 11), `Retry-After`, and the same numbers as JSON for a WebSocket
//! error body.
//!
//! A [`QuotaReport`] is built from a [`Verdict`], allowed or denied, by
//! [`crate::RateLimitService::report`]: a denial keeps its verdict, so a
//! handler reports on it with nothing else at hand.
//!
//! ```
//! use ratelimiter::{Builder, PolicyId};
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let limiter = Builder::new().in_memory();
//! let verdict = limiter.decide((PolicyId::HEARTBEAT, "conn-1")).await?;
//! let report = limiter.report(&verdict)?;
//! assert_eq!(report.policy_field(), r#""heartbeat";q=2;w=60"#);
//! assert_eq!(report.state_field(), r#""heartbeat";r=1;t=30"#);
//! assert_eq!(report.retry_after(), None);
//! # Ok::<(), ratelimiter::RateLimitError>(())
//! # }).unwrap();
//! ```
//!
//! Each limit of a policy is one *quota policy* of the fields. A policy of
//! one limit is named as the policy (`"heartbeat"`); each limit of a policy
//! of several is named `<policy>@<period in seconds>` (`"send_message@10"`,
//! `"send_message@60"`), as its bucket is.
//!
//! `t` is what revision 10 made it: the seconds until more quota is
//! available on that limit. For a limit that refused the request, that is
//! when the request would be allowed (`Retry-After` is never earlier than
//! any `t`); for one that allowed it, when its next token comes back; for a
//! full bucket, 0. Seconds are rounded up, so a client that waits `t` is
//! never early.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::clock::Clock;
use crate::gcra::{Decision, ceil_secs};
use crate::policy::{Policy, Unit};
use crate::service::RateLimitService;
use crate::store::Store;
use crate::verdict::{RateLimitError, Verdict};

/// The name of the field that states the quotas: `RateLimit-Policy`.
pub const POLICY_FIELD: &str = "RateLimit-Policy";

/// The name of the field that states what is left of them: `RateLimit`.
pub const STATE_FIELD: &str = "RateLimit";

/// One limit's numbers, as the fields and a WebSocket error body state them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitReport {
    /// The quota policy's name: the policy's, or `<policy>@<period>`.
    pub name: String,
    /// The quota: tokens per window (the field's `q`).
    pub quota: u32,
    /// The window in whole seconds (`w`).
    pub window: u64,
    /// What a token stands for (`qu`); `requests` unless the policy counts bytes.
    #[serde(default, skip_serializing_if = "is_requests", with = "unit_name")]
    pub unit: Unit,
    /// Whole tokens left (`r`).
    pub remaining: u32,
    /// Seconds until more quota is available (`t`).
    pub reset: u64,
}

fn is_requests(unit: &Unit) -> bool {
    *unit == Unit::Requests
}

/// `unit` in JSON as its configuration name (`"bytes"`).
mod unit_name {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::policy::Unit;

    pub(super) fn serialize<S: Serializer>(unit: &Unit, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(unit.as_str())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Unit, D::Error> {
        let name = String::deserialize(d)?;
        if name == Unit::Connections.as_str() {
            return Ok(Unit::Connections);
        }
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// What a client may be told about a decision: each limit's quota and
/// state, and when to retry a denied request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuotaReport {
    /// The policy that decided.
    pub policy: String,
    /// Each limit, in the order of the policy's (or tier's) limits.
    pub limits: Vec<LimitReport>,
    retry_after: Option<u64>,
}

impl QuotaReport {
    /// The report on `verdict`, which `policy` decided.
    pub(crate) fn new(policy: &Policy, verdict: &Verdict) -> Self {
        let decisions = verdict.limits();
        let name = |decision: &Decision| {
            if decisions.len() == 1 {
                policy.name().to_owned()
            } else {
                format!("{}@{}", policy.name(), decision.window.as_secs())
            }
        };
        let limits = decisions
            .iter()
            .map(|decision| LimitReport {
                name: name(decision),
                quota: decision.limit,
                window: ceil_secs(decision.window),
                unit: policy.unit(),
                remaining: decision.remaining,
                reset: until_more(decision),
            })
            .collect();
        Self {
            policy: policy.name().to_owned(),
            limits,
            retry_after: (!verdict.allowed()).then(|| verdict.retry_after_secs()),
        }
    }

    /// Whole seconds to wait before retrying, for a denial (the
    /// `Retry-After` field and the seed's `retryAfter`); `None` when the
    /// request was allowed.
    pub fn retry_after(&self) -> Option<u64> {
        self.retry_after
    }

    /// The `RateLimit-Policy` field's value: `"name";q=20;w=60`, one item
    /// per limit, with `qu="content-bytes"` for a policy that counts bytes,
    /// and `"name";q=2;qu="concurrent-requests"` for a cap.
    pub fn policy_field(&self) -> String {
        let mut field = String::new();
        for (i, limit) in self.limits.iter().enumerate() {
            if i > 0 {
                field.push_str(", ");
            }
            push_sf_string(&mut field, &limit.name);
            let _ = write!(field, ";q={}", limit.quota);
            match limit.unit {
                Unit::Requests => {
                    let _ = write!(field, ";w={}", limit.window);
                }
                Unit::Bytes => {
                    let _ = write!(field, ";w={};qu=\"content-bytes\"", limit.window);
                }
                // A cap has no window: a seat is held until given back.
                Unit::Connections => field.push_str(";qu=\"concurrent-requests\""),
            }
        }
        field
    }

    /// The `RateLimit` field's value: `"name";r=0;t=3`, one item per limit.
    pub fn state_field(&self) -> String {
        let mut field = String::new();
        for (i, limit) in self.limits.iter().enumerate() {
            if i > 0 {
                field.push_str(", ");
            }
            push_sf_string(&mut field, &limit.name);
            let _ = write!(field, ";r={};t={}", limit.remaining, limit.reset);
        }
        field
    }

    /// Every field to send, as (name, value): `RateLimit-Policy`,
    /// `RateLimit`, and `Retry-After` for a denial.
    pub fn fields(&self) -> Vec<(&'static str, String)> {
        let mut fields = vec![
            (POLICY_FIELD, self.policy_field()),
            (STATE_FIELD, self.state_field()),
        ];
        if let Some(secs) = self.retry_after {
            fields.push(("Retry-After", secs.to_string()));
        }
        fields
    }
}

impl<S: Store, C: Clock> RateLimitService<S, C> {
    /// What a client may be told about `verdict`, allowed or denied: the
    /// `RateLimit-Policy`, `RateLimit` and `Retry-After` fields, and the
    /// numbers of a WebSocket error body. Fails only for a verdict whose
    /// policy this service does not have.
    pub fn report(&self, verdict: &Verdict) -> Result<QuotaReport, RateLimitError> {
        Ok(QuotaReport::new(self.policy(verdict.policy)?, verdict))
    }
}

/// Seconds, rounded up, until `decision`'s limit has more quota: when a
/// request it refused would pass, else when its next token returns, 0 for
/// a full bucket.
fn until_more(decision: &Decision) -> u64 {
    // A limit that had room in a request another limit refused reports
    // no wait of its own: its next token is what comes next.
    if !decision.retry_after.is_zero() {
        return ceil_secs(decision.retry_after);
    }
    let missing = decision.limit.saturating_sub(decision.remaining);
    if missing == 0 {
        return 0;
    }
    // The bucket is full again after `reset_after`; each missing token but
    // the next one takes an emission interval of that.
    let emission = decision.window / decision.limit;
    let later = emission.saturating_mul(missing - 1);
    ceil_secs(decision.reset_after.saturating_sub(later))
}

/// `text` as an RFC 9651 sf-string: quoted, with `"` and `\` escaped and
/// anything outside printable ASCII dropped (policy names never have any).
fn push_sf_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => {}
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::key::Kind;
    use crate::policy::{LimitSpec, PolicyId};

    fn decision(allowed: bool, limit: u32, window: u64, remaining: u32, secs: f64) -> Decision {
        let after = Duration::from_secs_f64(secs);
        Decision {
            allowed,
            limit,
            window: Duration::from_secs(window),
            remaining,
            retry_after: if allowed { Duration::ZERO } else { after },
            reset_after: after,
        }
    }

    fn spec(s: &str) -> LimitSpec {
        s.parse().unwrap()
    }

    #[test]
    fn one_limit_is_named_as_its_policy() {
        let policy = Policy::new("connection_attempt", Kind::IP, &[spec("20/min")]).unwrap();
        // Denied: every token taken, the next back in 2.1 s.
        let verdict = Verdict::single(
            PolicyId::CONNECTION_ATTEMPT,
            decision(false, 20, 60, 0, 2.1),
        );
        let report = QuotaReport::new(&policy, &verdict);
        assert_eq!(report.policy_field(), r#""connection_attempt";q=20;w=60"#);
        assert_eq!(report.state_field(), r#""connection_attempt";r=0;t=3"#);
        assert_eq!(report.retry_after(), Some(3));
        assert_eq!(
            report.fields(),
            vec![
                (
                    "RateLimit-Policy",
                    r#""connection_attempt";q=20;w=60"#.to_owned()
                ),
                ("RateLimit", r#""connection_attempt";r=0;t=3"#.to_owned()),
                ("Retry-After", "3".to_owned()),
            ]
        );
    }

    #[test]
    fn several_limits_are_listed_each_with_its_period_and_unit() {
        let policy = Policy::new("bytes", Kind::CONNECTION, &[spec("10/s"), spec("600/min")])
            .unwrap()
            .with_unit(Unit::Bytes);
        let verdict = Verdict::from_decisions(
            PolicyId::HEARTBEAT,
            vec![
                decision(true, 10, 1, 6, 0.4),
                decision(true, 600, 60, 596, 0.4),
            ],
        );
        let report = QuotaReport::new(&policy, &verdict);
        assert_eq!(
            report.policy_field(),
            r#""bytes@1";q=10;w=1;qu="content-bytes", "bytes@60";q=600;w=60;qu="content-bytes""#
        );
        // 4 tokens missing of 10/s, full in 0.4 s: the next in 0.1 s, so 1.
        // 4 missing of 600/min (one per 0.1 s), full in 0.4 s: also 0.1 s.
        assert_eq!(
            report.state_field(),
            r#""bytes@1";r=6;t=1, "bytes@60";r=596;t=1"#
        );
        assert_eq!(report.retry_after(), None);
        assert_eq!(report.fields().len(), 2, "no Retry-After when allowed");
    }

    #[test]
    fn t_is_when_the_next_token_returns_not_when_the_bucket_is_full() {
        // 2/min, both taken: full in 60 s, the next token in 30 s.
        assert_eq!(until_more(&decision(true, 2, 60, 0, 60.0)), 30);
        // One left: full in 30 s, which is also when the next one returns.
        assert_eq!(until_more(&decision(true, 2, 60, 1, 30.0)), 30);
        // A full bucket has no more to come.
        assert_eq!(until_more(&decision(true, 2, 60, 2, 0.0)), 0);
        // Denied: when the request would pass, rounded up.
        assert_eq!(until_more(&decision(false, 2, 60, 0, 29.2)), 30);
        // A limit with room, in a request another limit denied: when its
        // next token returns.
        let mut roomy = decision(true, 3, 60, 1, 40.0);
        roomy.allowed = false;
        assert_eq!(until_more(&roomy), 20);
    }

    #[test]
    fn sf_strings_are_quoted_and_escaped() {
        let mut out = String::new();
        push_sf_string(&mut out, "a\"b\\c\u{7}é");
        assert_eq!(out, r#""a\"b\\c""#);
    }

    #[test]
    fn a_report_round_trips_as_json_with_the_unit_only_for_bytes() {
        let limit = LimitReport {
            name: "messages".into(),
            quota: 5,
            window: 1,
            unit: Unit::Requests,
            remaining: 0,
            reset: 1,
        };
        let json = serde_json::to_value(&limit).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"name": "messages", "quota": 5, "window": 1, "remaining": 0, "reset": 1})
        );
        let bytes = LimitReport {
            unit: Unit::Bytes,
            ..limit
        };
        let json = serde_json::to_value(&bytes).unwrap();
        assert_eq!(json["unit"], "bytes");
        assert_eq!(serde_json::from_value::<LimitReport>(json).unwrap(), bytes);
    }
}
