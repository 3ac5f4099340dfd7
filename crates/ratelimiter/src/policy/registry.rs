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
