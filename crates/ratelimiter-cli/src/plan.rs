//! `ratelimit plan`: what the limiter will cost, before it is deployed.
//!
//! From a description of the traffic (open connections, how long they
//! last, the share of speakers, heartbeats and messages per connection on
//! each route) and the policies in force, it works out the DynamoDB
//! writes and reads per second, their capacity units, the monthly bill on
//! on-demand and on provisioned capacity, and which keys would be hot.
//!
//! Calls per decision are the measured ones of each case (the constants
//! below, each with the BENCHMARKS.md section it comes from), not one per
//! request: that is the difference between this and a spreadsheet.

use std::fmt::Write as _;
use std::time::Duration;

use ratelimiter::policy::Batching;
use ratelimiter::{Kind, LimitSpec, Policies, PolicyId};

/// Calls per decision for a key whose requests come far below its limit's
/// rate, or on a new key: one conditional `UpdateItem` (BENCHMARKS.md,
/// "DynamoDB store": idle, mid-window, busy and two-limit keys, 1.00).
pub const CALLS_IDLE: f64 = 1.00;
/// Calls per decision for a key whose requests come at about its limit's
/// rate, as heartbeats do: its bucket's state is about "now", so the
/// first write shape is sometimes wrong, and a wrong one costs a second
/// write (BENCHMARKS.md, "Keys at their own rate": 40 keys at their rate
/// with ±15% jitter, 4 containers, 1.10 to 1.13 over two versions of the
/// shape guess; the higher mean is kept).
pub const CALLS_AT_RATE: f64 = 1.12;
/// The same, for a policy with a tolerance (there, 0.3 of the emission
/// interval: 1.02 in each run).
pub const CALLS_AT_RATE_TOLERANT: f64 = 1.02;
/// From this share of a limit's rate on, a key counts as at its rate.
pub const AT_RATE_SHARE: f64 = 0.8;
/// Writes one DynamoDB item takes per second before it is throttled.
pub const ITEM_WRITES_PER_SEC: f64 = 1000.0;
/// A month, as AWS bills it.
pub const HOURS_PER_MONTH: f64 = 730.0;
/// On-demand, us-east-1, since 2024-11-01: dollars per million write and
/// read request units.
pub const ON_DEMAND_WRITE: f64 = 0.625;
/// See [`ON_DEMAND_WRITE`].
pub const ON_DEMAND_READ: f64 = 0.125;
/// Provisioned, us-east-1: dollars per write and read capacity unit-hour.
pub const PROVISIONED_WCU_HOUR: f64 = 0.00065;
/// See [`PROVISIONED_WCU_HOUR`].
pub const PROVISIONED_RCU_HOUR: f64 = 0.00013;
/// Provisioned capacity is bought above the load: auto scaling's default
/// target utilisation.
pub const TARGET_UTILISATION: f64 = 0.7;
/// When the prices above were published.
pub const PRICES_OF: &str = "us-east-1, on-demand prices of 2024-11-01";

/// An item's size, estimated: its key and expiry, each limit's state, and
/// each seat of a cap (`"<ms>|<connection id>"`). A write is billed one
/// unit per KB of the item.
const ITEM_BASE_BYTES: u64 = 80;
const LIMIT_BYTES: u64 = 24;
const SEAT_BYTES: u64 = 36;

/// The traffic a plan is for.
#[derive(Clone, Debug)]
pub struct Traffic {
    /// Connections open at once.
    pub connections: u64,
    /// How long a connection lasts, on average (API Gateway ends one at 2 h).
    pub lifetime: Duration,
    /// The share of connections that are speakers (a `userId` from the
    /// authorizer), from 0 to 1.
    pub speakers: f64,
    /// Heartbeats per connection, if clients send them.
    pub heartbeat: Option<LimitSpec>,
    /// Messages per connection on each route of the configuration.
    pub routes: Vec<(String, LimitSpec)>,
}

/// One source of decisions: what it costs.
#[derive(Clone, Debug, PartialEq)]
pub struct Line {
    /// `$connect, listener`, `heartbeat`, `route sendMessage`, ...
    pub source: String,
    /// Decisions per second.
    pub decisions: f64,
    /// DynamoDB calls per decision: one per item, at the measured rate.
    pub calls: f64,
    /// Write capacity units per decision: each call's item, one per KB.
    pub capacity: f64,
    /// Why those calls: the items and their case.
    pub why: String,
}

impl Line {
    /// Writes per second.
    pub fn writes(&self) -> f64 {
        self.decisions * self.calls
    }

    /// Write capacity units per second.
    pub fn wcu(&self) -> f64 {
        self.decisions * self.capacity
    }
}

/// A key that would take more writes than one item can.
#[derive(Clone, Debug, PartialEq)]
pub struct Hot {
    /// The policy.
    pub policy: String,
    /// What one key of it may write per second, at most.
    pub writes: f64,
    /// How the policy serves such a key (`batch`).
    pub batch: Batching,
}

/// What the traffic costs under the policies.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The traffic, as given.
    pub traffic: Traffic,
    /// One line per source of decisions.
    pub lines: Vec<Line>,
    /// The keys that would be hot.
    pub hot: Vec<Hot>,
}

/// Why a plan cannot be made.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// A route the configuration does not limit.
    #[error("the configuration limits no route {0:?} (its routes: {1})")]
    UnknownRoute(String, String),
    /// A share outside 0 to 1.
    #[error("--speakers must be a share from 0 to 1, got {0}")]
    Share(String),
}

impl Plan {
    /// The plan of `traffic` under `policies`.
    pub fn new(policies: &Policies, traffic: Traffic) -> Result<Self, PlanError> {
        if !(0.0..=1.0).contains(&traffic.speakers) {
            return Err(PlanError::Share(traffic.speakers.to_string()));
        }
        // With soft rejection, every message probes its connection's mark,
        // in the connection's item.
        let probe = policies.id(SOFT_MARK);
        let connects = traffic.connections as f64 / traffic.lifetime.as_secs_f64().max(1.0);
        let connect = policies.connect();
        let mut lines = Vec::new();
        for (role, share, checks) in [
            ("listener", 1.0 - traffic.speakers, connect.listener()),
            ("speaker", traffic.speakers, connect.speaker()),
        ] {
            if share > 0.0 {
                let ids: Vec<PolicyId> = connect.every().iter().chain(checks).copied().collect();
                lines.push(line(
                    policies,
                    format!("$connect, {role}"),
                    connects * share,
                    &ids,
                    None,
                    None,
                ));
            }
        }
        let capped: Vec<PolicyId> = connect_ids(policies)
            .into_iter()
            .filter(|&id| policies[id].cap().is_some())
            .collect();
        if !capped.is_empty() {
            lines.push(line(
                policies,
                "$disconnect (seats given back)".to_owned(),
                connects,
                &capped,
                None,
                None,
            ));
        }
        if let Some(rate) = traffic.heartbeat {
            lines.push(line(
                policies,
                "heartbeat".to_owned(),
                traffic.connections as f64 * per_sec(rate),
                &[PolicyId::HEARTBEAT],
                probe,
                Some(per_sec(rate)),
            ));
        }
        for (action, rate) in &traffic.routes {
            let Some(route) = policies.route(action) else {
                let known: Vec<&str> = policies.routes().map(|(a, _)| a).collect();
                return Err(PlanError::UnknownRoute(
                    action.clone(),
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    },
                ));
            };
            lines.push(line(
                policies,
                format!("route {action}"),
                traffic.connections as f64 * per_sec(*rate),
                route,
                probe,
                Some(per_sec(*rate)),
            ));
        }
        let hot = policies
            .iter()
            .filter(|(_, p)| p.cap().is_none() && !p.limits().is_empty())
            .filter_map(|(_, p)| {
                // The most one key may be allowed per second, sustained: the
                // tightest limit's rate, in the loosest tier.
                let tightest = |limits: &[ratelimiter::policy::Limit]| {
                    limits
                        .iter()
                        .map(|l| per_sec(l.spec()))
                        .fold(f64::INFINITY, f64::min)
                };
                let writes = std::iter::once(p.limits())
                    .chain(p.tiers().map(|(_, limits)| limits))
                    .map(tightest)
                    .fold(0.0, f64::max);
                (writes > ITEM_WRITES_PER_SEC).then(|| Hot {
                    policy: p.name().to_owned(),
                    writes,
                    batch: p.batching(),
                })
            })
            .collect();
        Ok(Self {
            traffic,
            lines,
            hot,
        })
    }

    /// Writes per second, all sources.
    pub fn writes(&self) -> f64 {
        self.lines.iter().map(Line::writes).sum()
    }

    /// Write capacity units per second, all sources.
    pub fn wcu(&self) -> f64 {
        self.lines.iter().map(Line::wcu).sum()
    }

    /// Reads per second: none. A decision's `UpdateItem` returns what it
    /// needs; only `ratelimit status` and the repair of a full cap read.
    pub fn reads(&self) -> f64 {
        0.0
    }

    /// Dollars a month on on-demand capacity.
    pub fn on_demand(&self) -> f64 {
        let seconds = HOURS_PER_MONTH * 3600.0;
        (self.wcu() * ON_DEMAND_WRITE + self.reads() * ON_DEMAND_READ) * seconds / 1e6
    }

    /// Write capacity units to provision, at the target utilisation.
    pub fn provisioned_wcu(&self) -> f64 {
        (self.wcu() / TARGET_UTILISATION).ceil()
    }

    /// Dollars a month on provisioned capacity.
    pub fn provisioned(&self) -> f64 {
        let rcu = (self.reads() / TARGET_UTILISATION).ceil();
        (self.provisioned_wcu() * PROVISIONED_WCU_HOUR + rcu * PROVISIONED_RCU_HOUR)
            * HOURS_PER_MONTH
    }

    /// The plan as the command prints it.
    pub fn render(&self) -> String {
        let t = &self.traffic;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "traffic: {} connections open, each for {} s on average ({:.1} connects/s), {:.0}% speakers",
            t.connections,
            t.lifetime.as_secs(),
            t.connections as f64 / t.lifetime.as_secs_f64().max(1.0),
            t.speakers * 100.0
        );
        let _ = writeln!(
            out,
            "\n{:<32} {:>12} {:>8} {:>12} {:>12}  why",
            "source", "decisions/s", "calls", "writes/s", "WCU/s"
        );
        for l in &self.lines {
            let _ = writeln!(
                out,
                "{:<32} {:>12.1} {:>8.2} {:>12.1} {:>12.1}  {}",
                l.source,
                l.decisions,
                l.calls,
                l.writes(),
                l.wcu(),
                l.why
            );
        }
        let _ = writeln!(
            out,
            "{:<32} {:>12} {:>8} {:>12.1} {:>12.1}",
            "total",
            "",
            "",
            self.writes(),
            self.wcu()
        );
        let _ = writeln!(
            out,
            "reads/s: {:.1} (decisions read nothing: their UpdateItem returns what they need)",
            self.reads()
        );
        let _ = writeln!(
            out,
            "\ncost per month ({HOURS_PER_MONTH} h), {PRICES_OF}:\n  on-demand:   ${:>12.2}  ({:.1} WRU/s at ${ON_DEMAND_WRITE} per million)\n  provisioned: ${:>12.2}  ({} WCU, {:.0}% utilised, at ${PROVISIONED_WCU_HOUR} per WCU-hour)",
            self.on_demand(),
            self.wcu(),
            self.provisioned(),
            self.provisioned_wcu(),
            TARGET_UTILISATION * 100.0
        );
        if self.hot.is_empty() {
            let _ = writeln!(
                out,
                "\nhot keys: none (no policy lets one key write more than {ITEM_WRITES_PER_SEC:.0}/s, what one item takes)"
            );
        } else {
            let _ = writeln!(
                out,
                "\nhot keys (one item takes about {ITEM_WRITES_PER_SEC:.0} writes/s; beyond, the table throttles the key: a batching policy then serves it from batches, a few writes per batch, exactly; with batch = \"off\" each container decides it alone, admitting up to its limit each):"
            );
            for h in &self.hot {
                let how = match h.batch {
                    Batching::Off => "batch = off: set batch = \"auto\" or a size".to_owned(),
                    batch => format!("batch = {batch}"),
                };
                let _ = writeln!(
                    out,
                    "  {}: one key may write {:.0}/s ({how})",
                    h.policy, h.writes
                );
            }
        }
        let _ = write!(
            out,
            "\nAssumed: each key of a route's or $connect's policy sees one connection's traffic; \
             a flood of refused requests costs about one call per container and key per retry-after \
             (the deny cache answers the rest), not counted here."
        );
        out
    }
}

/// Soft rejection's mark (`ratelimiter_lambda::soft::MARK_POLICY`).
const SOFT_MARK: &str = ratelimiter_lambda::soft::MARK_POLICY;

fn per_sec(spec: LimitSpec) -> f64 {
    f64::from(spec.count) / spec.period.as_secs_f64()
}

/// Every policy `$connect` checks, for either role.
fn connect_ids(policies: &Policies) -> Vec<PolicyId> {
    let connect = policies.connect();
    let mut ids: Vec<PolicyId> = connect
        .every()
        .iter()
        .chain(connect.speaker())
        .chain(connect.listener())
        .copied()
        .collect();
    ids.sort_by_key(|id| id.index());
    ids.dedup();
    ids
}

/// One item a decision writes.
struct Item<'p> {
    kind: &'p Kind,
    /// A policy on it is at its rate.
    at_rate: bool,
    /// One of those has no tolerance.
    exact_at_rate: bool,
    /// Its size, at most.
    bytes: u64,
}

impl Item<'_> {
    /// Calls per decision on it, as measured for its case.
    fn calls(&self) -> f64 {
        match (self.at_rate, self.exact_at_rate) {
            (_, true) => CALLS_AT_RATE,
            (true, false) => CALLS_AT_RATE_TOLERANT,
            (false, false) => CALLS_IDLE,
        }
    }
}

/// The line of `decisions` per second deciding `ids`, and probing `probe`
/// (which takes nothing): one call per item (per kind of key), each at the
/// at-rate figure when `per_key` (requests per second on one key) comes
/// near a limit of that item (the tolerant one when every such policy has
/// a tolerance), at the idle one otherwise. An item is billed by its size,
/// at most: a cap's seats all taken.
fn line(
    policies: &Policies,
    source: String,
    decisions: f64,
    ids: &[PolicyId],
    probe: Option<PolicyId>,
    per_key: Option<f64>,
) -> Line {
    let mut items: Vec<Item<'_>> = Vec::new();
    let all = ids
        .iter()
        .map(|&id| (id, false))
        .chain(probe.map(|id| (id, true)));
    for (id, probed) in all {
        let policy = &policies[id];
        let at_rate = !probed
            && per_key.is_some_and(|rate| {
                policy
                    .limits()
                    .iter()
                    .any(|l| rate >= AT_RATE_SHARE * per_sec(l.spec()))
            });
        let exact_at_rate = at_rate && policy.tolerance().is_zero();
        let bytes = policy.limits().len() as u64 * LIMIT_BYTES
            + policy
                .cap()
                .map_or(0, |c| u64::from(c.concurrent()) * SEAT_BYTES);
        match items.iter_mut().find(|item| item.kind == policy.kind()) {
            Some(item) => {
                item.at_rate |= at_rate;
                item.exact_at_rate |= exact_at_rate;
                item.bytes += bytes;
            }
            None => items.push(Item {
                kind: policy.kind(),
                at_rate,
                exact_at_rate,
                bytes: ITEM_BASE_BYTES + bytes,
            }),
        }
    }
    let calls = items.iter().map(Item::calls).sum();
    let capacity = items
        .iter()
        .map(|item| item.calls() * item.bytes.div_ceil(1024) as f64)
        .sum();
    let why = items
        .iter()
        .map(|item| {
            let mut text = format!("{} item", item.kind.as_str());
            if item.exact_at_rate {
                text.push_str(" at its rate");
            } else if item.at_rate {
                text.push_str(" at its rate, with a tolerance");
            }
            if item.bytes > 1024 {
                let _ = write!(text, " of up to {} KB", item.bytes.div_ceil(1024));
            }
            text
        })
        .collect::<Vec<_>>()
        .join(" + ");
    Line {
        source,
        decisions,
        calls,
        capacity,
        why,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratelimiter::Config;

    fn policies(file: &str) -> Policies {
        Config::from_file_text("limits.toml", file, |_| None)
            .expect("a valid file")
            .policies
    }

    fn traffic(connections: u64) -> Traffic {
        Traffic {
            connections,
            lifetime: Duration::from_secs(7200),
            speakers: 0.0,
            heartbeat: Some("2/min".parse().unwrap()),
            routes: Vec::new(),
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 0.01
    }

    /// The worked example of docs/operations.md, by hand: the seed's four
    /// limits, 100 000 connections of 2 h heartbeating twice a minute.
    /// - $connect: 100 000 / 7 200 s = 13.89 listeners/s, 1 call each
    ///   (attempt and join in the address's item): 13.89 writes/s.
    /// - heartbeat: 100 000 × 2 / 60 s = 3 333.33/s, at the limit's rate:
    ///   1.12 calls each, 3 733.33 writes/s.
    /// - 3 747.22 writes/s of one unit each (items under 1 KB).
    /// - On-demand: 3 747.22 × 730 × 3 600 s × $0.625 / 10⁶ = $6 154.81.
    /// - Provisioned: ⌈3 747.22 / 0.7⌉ = 5 354 WCU × $0.00065 × 730 h
    ///   = $2 540.47.
    /// - With `tolerance` on the heartbeat: 1.02 calls, 3 400 writes/s,
    ///   3 413.89 in all, $5 607.31 on-demand.
    #[test]
    fn the_seeds_limits_for_100_000_connections_match_the_hand_worked_case() {
        let plan = Plan::new(&Policies::builtin(), traffic(100_000)).unwrap();
        let lines: Vec<_> = plan
            .lines
            .iter()
            .map(|l| (l.source.as_str(), l.calls))
            .collect();
        assert_eq!(lines, [("$connect, listener", 1.0), ("heartbeat", 1.12)]);
        assert!(close(plan.lines[0].writes(), 13.89), "{plan:?}");
        assert!(close(plan.lines[1].decisions, 3333.33), "{plan:?}");
        assert!(close(plan.lines[1].writes(), 3733.33), "{plan:?}");
        assert!(close(plan.writes(), 3747.22), "{}", plan.writes());
        assert!(close(plan.wcu(), plan.writes()));
        assert_eq!(plan.reads(), 0.0);
        assert!(close(plan.on_demand(), 6154.81), "{}", plan.on_demand());
        assert_eq!(plan.provisioned_wcu(), 5354.0);
        assert!(close(plan.provisioned(), 2540.47), "{}", plan.provisioned());
        assert!(plan.hot.is_empty());
        let text = plan.render();
        assert!(text.contains("$     6154.81"), "{text}");
        assert!(text.contains("5354 WCU"), "{text}");
        assert!(text.contains("hot keys: none"), "{text}");
        // A tolerance on the heartbeat.
        let tolerant = policies("[policy.heartbeat]\ntolerance = \"9s\"\n");
        let plan = Plan::new(&tolerant, traffic(100_000)).unwrap();
        assert_eq!(plan.lines[1].calls, 1.02);
        assert!(close(plan.writes(), 3413.89), "{}", plan.writes());
        assert!(close(plan.on_demand(), 5607.31), "{}", plan.on_demand());
        assert!(plan.lines[1].why.contains("with a tolerance"), "{plan:?}");
    }

    #[test]
    fn heartbeats_below_the_limits_rate_cost_one_call_and_speakers_two() {
        let mut t = traffic(100_000);
        t.heartbeat = Some("1/min".parse().unwrap());
        t.speakers = 0.25;
        let plan = Plan::new(&Policies::builtin(), t).unwrap();
        let rows: Vec<_> = plan
            .lines
            .iter()
            .map(|l| (l.source.as_str(), l.calls, l.why.as_str()))
            .collect();
        assert_eq!(
            rows,
            [
                ("$connect, listener", 1.0, "ip item"),
                ("$connect, speaker", 2.0, "ip item + user item"),
                ("heartbeat", 1.0, "connection item"),
            ]
        );
        // 13.89 connects/s: 10.42 listeners (1 call), 3.47 speakers (2).
        assert!(close(plan.lines[1].writes(), 6.94), "{plan:?}");
        assert!(close(plan.writes(), 10.42 + 6.94 + 1666.67), "{plan:?}");
    }

    #[test]
    fn routes_caps_probes_and_hot_keys() {
        let file = "[policy.chat]\nkey = \"connection\"\nlimits = [\"10/min\"]\n\
                    [policy.tenant]\nkey = \"tenant\"\nlimits = [\"5000/s\", \"1000000/h\"]\n\
                    [policy.open]\nkey = \"ip\"\nconcurrent = 200\n\
                    [route.sendMessage]\npolicies = [\"chat\"]\n\
                    [connect]\npolicies = [\"open\"]\n";
        let mut policies = policies(file);
        // Soft rejection's mark: a probe in the connection's item, which
        // takes nothing and so is never at its rate.
        ratelimiter_lambda::soft::ConnectReject::from_lookup(|_| Some("soft".to_owned()))
            .unwrap()
            .apply(&mut policies)
            .unwrap();
        let mut t = traffic(7200);
        t.heartbeat = Some("1/min".parse().unwrap());
        t.routes = vec![("sendMessage".to_owned(), "10/min".parse().unwrap())];
        let plan = Plan::new(&policies, t).unwrap();
        let rows: Vec<_> = plan
            .lines
            .iter()
            .map(|l| (l.source.as_str(), l.calls, l.capacity))
            .collect();
        // A full cap of 200 seats: 80 + 24 × 2 + 200 × 36 bytes = 8 KB.
        assert_eq!(
            rows,
            [
                ("$connect, listener", 1.0, 8.0),
                ("$disconnect (seats given back)", 1.0, 8.0),
                ("heartbeat", 1.0, 1.0),
                ("route sendMessage", 1.12, 1.12),
            ]
        );
        assert!(plan.lines[0].why.contains("up to 8 KB"), "{plan:?}");
        // 5000/s but 1 000 000/h: one key may keep up 277.8/s, not hot. A
        // tier of 2000/s alone would be.
        assert!(plan.hot.is_empty(), "{:?}", plan.hot);
        let hot = policies_hot(
            "[policy.api]\nkey = \"tenant\"\nlimits = [\"100/s\"]\n[policy.api.tier.big]\nlimits = [\"2000/s\"]\n",
        );
        assert_eq!(
            hot,
            [Hot {
                policy: "api".to_owned(),
                writes: 2000.0,
                batch: Batching::Auto,
            }]
        );
    }

    fn policies_hot(file: &str) -> Vec<Hot> {
        Plan::new(&policies(file), traffic(1)).unwrap().hot
    }

    #[test]
    fn bad_traffic_is_refused_with_the_reason() {
        let mut t = traffic(10);
        t.routes = vec![("nope".to_owned(), "1/s".parse().unwrap())];
        assert_eq!(
            Plan::new(&Policies::builtin(), t).unwrap_err().to_string(),
            "the configuration limits no route \"nope\" (its routes: none)"
        );
        let mut t = traffic(10);
        t.speakers = 1.5;
        assert_eq!(
            Plan::new(&Policies::builtin(), t).unwrap_err().to_string(),
            "--speakers must be a share from 0 to 1, got 1.5"
        );
    }
}
