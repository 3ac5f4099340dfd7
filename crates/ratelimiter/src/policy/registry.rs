//! The registry of policies: the seed's four built in, and the one index
//! ([`PolicyId`]) by which the service keeps everything per policy.

use std::collections::HashMap;
use std::time::Duration;

use super::{LimitSpec, Policy, PolicyId, PolicyName};
use crate::key::{Kind, shorten};

/// The seed's four policies, in [`PolicyId`] order: name, kind, count per
/// period, and the variable that overrides the count.
pub const BUILTINS: [Builtin; 4] = [
    Builtin {
        name: "session_create",
        kind: Kind::USER,
        count: 50,
        period: Duration::from_secs(3600),
        env_var: "RATE_LIMIT_SESSIONS_PER_HOUR",
    },
    Builtin {
        name: "listener_join",
        kind: Kind::IP,
        count: 10,
        period: Duration::from_secs(60),
        env_var: "RATE_LIMIT_LISTENER_JOINS_PER_MIN",
    },
    Builtin {
        name: "connection_attempt",
        kind: Kind::IP,
        count: 20,
        period: Duration::from_secs(60),
        env_var: "RATE_LIMIT_CONNECTION_ATTEMPTS_PER_MIN",
    },
    Builtin {
        name: "heartbeat",
        kind: Kind::CONNECTION,
        count: 2,
        period: Duration::from_secs(60),
        env_var: "RATE_LIMIT_HEARTBEATS_PER_MIN",
    },
];

/// One of the seed's policies, as it is when nothing configures it.
#[derive(Clone, Debug)]
pub struct Builtin {
    /// The policy's name.
    pub name: &'static str,
    /// What it counts per.
    pub kind: Kind,
    /// The seed's default count.
    pub count: u32,
    /// The period of that count.
    pub period: Duration,
    /// The variable that sets the count.
    pub env_var: &'static str,
}

impl Builtin {
    /// The seed's default limit.
    pub fn spec(&self) -> LimitSpec {
        LimitSpec {
            count: self.count,
            period: self.period,
        }
    }

    /// The policy with the seed's default limit.
    pub fn policy(&self) -> Policy {
        Policy::new(self.name, self.kind.clone(), &[self.spec()]).expect("built-ins are valid")
    }
}

/// The registry of policies. Ids are positions: the seed's four first, then
/// the others in the order they were added.
///
/// ```
/// use ratelimiter::key::Kind;
/// use ratelimiter::policy::{Policies, Policy, PolicyId};
///
/// let mut policies = Policies::builtin();
/// let id = policies.insert(Policy::new("api_calls", Kind::new("tenant")?, &["100/min".parse()?])?);
/// assert_eq!(policies.id("api_calls"), Some(id));
/// assert_eq!(policies.id("heartbeat"), Some(PolicyId::HEARTBEAT));
/// assert_eq!(policies.id("session-create"), Some(PolicyId::SESSION_CREATE));
/// assert_eq!(policies[id].limits()[0].quota().limit(), 100);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct Policies {
    list: Vec<Policy>,
    by_name: HashMap<PolicyName, PolicyId>,
    /// Each limited route's action and its policies, in the order set.
    routes: Vec<(Box<str>, Box<[PolicyId]>)>,
    /// What `$connect` checks.
    connect: ConnectChecks,
}

/// What `$connect` checks, per role: the seed's checks first, then those a
/// configuration adds (`[connect]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectChecks {
    every: Vec<PolicyId>,
    speaker: Vec<PolicyId>,
    listener: Vec<PolicyId>,
}

impl Default for ConnectChecks {
    /// The seed's: the connection attempt per IP for everyone, then the
    /// session creation per user for a speaker, the listener join per IP
    /// for anyone else.
    fn default() -> Self {
        Self {
            every: vec![PolicyId::CONNECTION_ATTEMPT],
            speaker: vec![PolicyId::SESSION_CREATE],
            listener: vec![PolicyId::LISTENER_JOIN],
        }
    }
}

impl ConnectChecks {
    /// Checked at every `$connect`, first.
    pub fn every(&self) -> &[PolicyId] {
        &self.every
    }

    /// Checked then for a caller with a `userId` (a speaker).
    pub fn speaker(&self) -> &[PolicyId] {
        &self.speaker
    }

    /// Checked then for a caller without one (a listener).
    pub fn listener(&self) -> &[PolicyId] {
        &self.listener
    }

    /// Whether they are the seed's, which `$connect` decides in one round
    /// trip.
    pub fn is_seed(&self) -> bool {
        *self == Self::default()
    }
}

impl Default for Policies {
    fn default() -> Self {
        Self::builtin()
    }
}

impl Policies {
    /// The seed's four policies with their default limits.
    pub fn builtin() -> Self {
        let mut policies = Self {
            list: Vec::new(),
            by_name: HashMap::new(),
            routes: Vec::new(),
            connect: ConnectChecks::default(),
        };
        for builtin in &BUILTINS {
            policies.insert(builtin.policy());
        }
        policies
    }

    /// Adds `policy`, or replaces the policy of the same name (keeping its
    /// id); returns its id.
    pub fn insert(&mut self, policy: Policy) -> PolicyId {
        if let Some(&id) = self.by_name.get(policy.name()) {
            self.list[id.index()] = policy;
            return id;
        }
        let id = PolicyId(u16::try_from(self.list.len()).expect("fewer than 65536 policies"));
        self.by_name.insert(policy.name.clone(), id);
        self.list.push(policy);
        id
    }

    /// The id of the policy called `name`; `-` may stand for `_`
    /// (`session-create`).
    pub fn id(&self, name: &str) -> Option<PolicyId> {
        match self.by_name.get(name) {
            Some(id) => Some(*id),
            None if name.contains('-') => self.by_name.get(&*name.replace('-', "_")).copied(),
            None => None,
        }
    }

    /// The policy called `name`, or an error listing the policies there are.
    pub fn find(&self, name: &str) -> Result<PolicyId, UnknownPolicy> {
        self.id(name).ok_or_else(|| UnknownPolicy {
            name: shorten(name),
            known: self.list.iter().map(|p| p.name().to_owned()).collect(),
        })
    }

    /// The policy with `id`, if there is one.
    pub fn get(&self, id: PolicyId) -> Option<&Policy> {
        self.list.get(id.index())
    }

    /// Every policy, to change in place. Crate-private: replacing a policy
    /// through it would leave the index of names behind; callers only set
    /// modes.
    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = &mut Policy> {
        self.list.iter_mut()
    }

    /// Every policy with its id, in id order.
    pub fn iter(&self) -> impl Iterator<Item = (PolicyId, &Policy)> {
        self.list
            .iter()
            .enumerate()
            .map(|(i, p)| (PolicyId(i as u16), p))
    }

    /// How many policies there are.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Always false: the built-ins are always there.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The longest time any bucket of an item of `kind` takes to refill,
    /// over every policy on that kind: an item not written for this long
    /// holds only full buckets, so a store may forget it.
    pub fn retention(&self, kind: &Kind) -> Duration {
        self.list
            .iter()
            .filter(|p| p.kind() == kind)
            .map(Policy::capacity)
            .max()
            .unwrap_or_default()
    }
}

/// The route a message without a matching action takes: API Gateway's
/// `$default`.
pub const DEFAULT_ROUTE: &str = "$default";

/// The most policies one route may have.
pub const MAX_ROUTE_POLICIES: usize = 8;

/// Routes with a behaviour of their own, which `[route.*]` cannot limit.
const RESERVED_ROUTES: [(&str, &str); 3] = [
    ("$connect", "limit $connect with [connect] instead"),
    (
        "$disconnect",
        "$disconnect is never limited: it gives back what $connect took",
    ),
    (
        "heartbeat",
        "the heartbeat route is limited by the heartbeat policy",
    ),
];

/// Why a route could not be set.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The action is not a route key API Gateway can select.
    #[error(
        "{0:?} is not a route: use $default or an action of 1 to 128 ASCII letters, digits and _-.:"
    )]
    Name(String),
    /// The route has a behaviour of its own.
    #[error("route {route:?} cannot be limited here: {why}")]
    Reserved {
        /// The route.
        route: String,
        /// What to do instead.
        why: &'static str,
    },
    /// No policies, or too many.
    #[error("a route needs 1 to {MAX_ROUTE_POLICIES} policies, got {0}")]
    Count(usize),
    /// A policy twice.
    #[error("policy {0:?} is listed twice")]
    Duplicate(String),
    /// An id this registry does not have.
    #[error("no policy with id {0:?}")]
    Unknown(PolicyId),
    /// A cap on a route: it counts open connections, not messages.
    #[error(
        "policy {0:?} is a cap (concurrent = N): it counts open connections, so it belongs in [connect], not on a route"
    )]
    CapOnRoute(String),
}

impl Policies {
    /// Limits the route `action` (a message's `action`, or
    /// [`DEFAULT_ROUTE`]) by `policies`, replacing what it had: a message on
    /// it is allowed only if every one of them allows it.
    ///
    /// ```
    /// use ratelimiter::policy::{Policies, Policy};
    /// use ratelimiter::Kind;
    ///
    /// let mut policies = Policies::builtin();
    /// let messages = policies.insert(Policy::new("messages", Kind::CONNECTION, &["5/s".parse()?])?);
    /// policies.set_route("sendMessage", &[messages])?;
    /// assert_eq!(policies.route("sendMessage"), Some(&[messages][..]));
    /// assert_eq!(policies.route("$default"), None);
    /// assert!(policies.set_route("heartbeat", &[messages]).is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_route(&mut self, action: &str, policies: &[PolicyId]) -> Result<(), RouteError> {
        check_route(action)?;
        if policies.is_empty() || policies.len() > MAX_ROUTE_POLICIES {
            return Err(RouteError::Count(policies.len()));
        }
        for (i, &id) in policies.iter().enumerate() {
            let policy = self.get(id).ok_or(RouteError::Unknown(id))?;
            if policies[..i].contains(&id) {
                return Err(RouteError::Duplicate(policy.name().to_owned()));
            }
            if policy.cap().is_some() {
                return Err(RouteError::CapOnRoute(policy.name().to_owned()));
            }
        }
        self.routes.retain(|(name, _)| &**name != action);
        self.routes.push((action.into(), policies.into()));
        Ok(())
    }

    /// The policies of the route `action`, if it is limited.
    pub fn route(&self, action: &str) -> Option<&[PolicyId]> {
        self.routes
            .iter()
            .find(|(name, _)| &**name == action)
            .map(|(_, ids)| &**ids)
    }

    /// Adds `every`, `speaker` and `listener` to what `$connect` checks
    /// (after the seed's checks, which stay: change them through their
    /// policies). Each list may hold up to [`MAX_ROUTE_POLICIES`], with the
    /// seed's, each policy once.
    ///
    /// ```
    /// use ratelimiter::policy::{Policies, Policy, PolicyId};
    /// use ratelimiter::Kind;
    ///
    /// let mut policies = Policies::builtin();
    /// let hourly = policies.insert(Policy::new("connects_per_hour", Kind::IP, &["100/h".parse()?])?);
    /// policies.add_connect_checks(&[hourly], &[], &[])?;
    /// assert_eq!(policies.connect().every(), &[PolicyId::CONNECTION_ATTEMPT, hourly]);
    /// assert_eq!(policies.connect().listener(), &[PolicyId::LISTENER_JOIN]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn add_connect_checks(
        &mut self,
        every: &[PolicyId],
        speaker: &[PolicyId],
        listener: &[PolicyId],
    ) -> Result<(), RouteError> {
        let mut checks = self.connect.clone();
        for (list, extra) in [
            (&mut checks.every, every),
            (&mut checks.speaker, speaker),
            (&mut checks.listener, listener),
        ] {
            for &id in extra {
                let policy = self.get(id).ok_or(RouteError::Unknown(id))?;
                if list.contains(&id) {
                    return Err(RouteError::Duplicate(policy.name().to_owned()));
                }
                list.push(id);
            }
            if list.len() > MAX_ROUTE_POLICIES {
                return Err(RouteError::Count(list.len()));
            }
        }
        self.connect = checks;
        Ok(())
    }

    /// What `$connect` checks.
    pub fn connect(&self) -> &ConnectChecks {
        &self.connect
    }

    /// Every limited route with its policies, in the order they were set.
    pub fn routes(&self) -> impl Iterator<Item = (&str, &[PolicyId])> {
        self.routes.iter().map(|(name, ids)| (&**name, &**ids))
    }
}

/// Whether `action` is a route `[route.*]` may limit.
fn check_route(action: &str) -> Result<(), RouteError> {
    if let Some((_, why)) = RESERVED_ROUTES.iter().find(|(name, _)| *name == action) {
        return Err(RouteError::Reserved {
            route: action.to_owned(),
            why,
        });
    }
    let valid = action == DEFAULT_ROUTE
        || ((1..=128).contains(&action.len())
            && action
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.:".contains(&b)));
    if valid {
        Ok(())
    } else {
        Err(RouteError::Name(shorten(action)))
    }
}

impl std::ops::Index<PolicyId> for Policies {
    type Output = Policy;

    fn index(&self, id: PolicyId) -> &Policy {
        &self.list[id.index()]
    }
}

/// A policy name that the registry does not have.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown policy {name:?}: expected one of {}", known.join(", "))]
pub struct UnknownPolicy {
    /// The name asked for (shortened).
    pub name: String,
    /// The policies there are.
    pub known: Vec<String>,
}
