//! The quota of each operation: the seed's defaults and their environment overrides.

use std::num::NonZeroU32;
use std::time::Duration;

use crate::gcra::Quota;
use crate::key::Operation;

/// How one operation's limit is configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitSetting {
    /// The operation.
    pub operation: Operation,
    /// The environment variable that overrides the limit.
    pub env_var: &'static str,
    /// The seed's default limit.
    pub default_limit: u32,
    /// The period the limit applies to.
    pub period: Duration,
}

/// The seed's four limits, in [`Operation::ALL`] order.
pub const SETTINGS: [LimitSetting; 4] = [
    LimitSetting {
        operation: Operation::SessionCreate,
        env_var: "RATE_LIMIT_SESSIONS_PER_HOUR",
        default_limit: 50,
        period: Duration::from_secs(3600),
    },
    LimitSetting {
        operation: Operation::ListenerJoin,
        env_var: "RATE_LIMIT_LISTENER_JOINS_PER_MIN",
        default_limit: 10,
        period: Duration::from_secs(60),
    },
    LimitSetting {
        operation: Operation::ConnectionAttempt,
        env_var: "RATE_LIMIT_CONNECTION_ATTEMPTS_PER_MIN",
        default_limit: 20,
        period: Duration::from_secs(60),
    },
    LimitSetting {
        operation: Operation::Heartbeat,
        env_var: "RATE_LIMIT_HEARTBEATS_PER_MIN",
        default_limit: 2,
        period: Duration::from_secs(60),
    },
];

impl LimitSetting {
    /// The setting of `operation`.
    pub fn of(operation: Operation) -> &'static LimitSetting {
        SETTINGS
            .iter()
            .find(|s| s.operation == operation)
            .expect("every operation has a setting")
    }
}

/// A configuration value that cannot be used. Never replaced by a default.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A variable that must hold a positive integer holds something else.
    #[error("{var} must be a positive integer (1 to {max}), got {value:?}")]
    NotAPositiveInteger {
        /// The variable's name.
        var: String,
        /// Its value, as found.
        value: String,
        /// The largest accepted value.
        max: u64,
    },
    /// A variable that must be one of a few words holds another.
    #[error("{var} must be one of {expected}, got {value:?}")]
    NotOneOf {
        /// The variable's name.
        var: String,
        /// Its value, as found.
        value: String,
        /// The accepted values, for the message.
        expected: &'static str,
    },
    /// A variable that must name something (a table, a namespace) holds
    /// something that cannot be that.
    #[error("{var} must be {expected}, got {value:?}")]
    Invalid {
        /// The variable's name.
        var: String,
        /// Its value, as found.
        value: String,
        /// What the value must be, for the message.
        expected: &'static str,
    },
}

/// Parses a positive integer setting, naming `var` and the value on failure.
///
/// Surrounding white space is ignored; anything else that is not a whole
/// number from 1 to `max` is an error.
pub fn parse_positive(var: &str, value: &str, max: u64) -> Result<u64, ConfigError> {
    value
        .trim()
        .parse::<u64>()
        .ok()
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| ConfigError::NotAPositiveInteger {
            var: var.to_owned(),
            value: value.to_owned(),
            max,
        })
}

/// The quota of each operation.
///
/// ```
/// use ratelimiter::config::Limits;
/// use ratelimiter::key::Operation;
///
/// let limits = Limits::from_lookup(|var| {
///     (var == "RATE_LIMIT_HEARTBEATS_PER_MIN").then(|| "5".to_string())
/// })
/// .unwrap();
/// assert_eq!(limits.quota(Operation::Heartbeat).limit(), 5);
/// assert_eq!(limits.quota(Operation::SessionCreate).limit(), 50);
///
/// let err = Limits::from_lookup(|_| Some("0".to_string())).unwrap_err();
/// assert!(err.to_string().contains("RATE_LIMIT_SESSIONS_PER_HOUR"));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    quotas: [Quota; 4],
}

impl Default for Limits {
    /// The seed's defaults.
    fn default() -> Self {
        Self {
            quotas: SETTINGS.map(|s| {
                Quota::new(NonZeroU32::new(s.default_limit).unwrap(), s.period)
                    .expect("default periods are valid")
            }),
        }
    }
}

impl Limits {
    /// The defaults, overridden by the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|var| std::env::var(var).ok())
    }

    /// The defaults, overridden by whatever `lookup` returns for each variable.
    ///
    /// A variable that is set must hold a positive integer; an empty value is
    /// an error too, not a way to ask for the default.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut limits = Self::default();
        for setting in &SETTINGS {
            if let Some(value) = lookup(setting.env_var) {
                let limit = parse_positive(setting.env_var, &value, u64::from(u32::MAX))?;
                let limit = NonZeroU32::new(limit as u32).expect("parse_positive excludes 0");
                limits = limits.with(
                    setting.operation,
                    Quota::new(limit, setting.period).expect("setting periods are valid"),
                );
            }
        }
        Ok(limits)
    }

    /// The same limits, with `operation` limited by `quota`.
    #[must_use]
    pub fn with(mut self, operation: Operation, quota: Quota) -> Self {
        self.quotas[Self::slot(operation)] = quota;
        self
    }

    /// The quota of `operation`.
    #[inline]
    pub fn quota(&self, operation: Operation) -> &Quota {
        &self.quotas[Self::slot(operation)]
    }

    fn slot(operation: Operation) -> usize {
        // `Operation::ALL` lists the variants in declaration order.
        operation as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_var(var: &'static str, value: &'static str) -> Result<Limits, ConfigError> {
        Limits::from_lookup(move |name| (name == var).then(|| value.to_owned()))
    }

    #[test]
    fn defaults_are_the_seeds() {
        let limits = Limits::from_lookup(|_| None).unwrap();
        let expect = [
            (Operation::SessionCreate, 50, 3600),
            (Operation::ListenerJoin, 10, 60),
            (Operation::ConnectionAttempt, 20, 60),
            (Operation::Heartbeat, 2, 60),
        ];
        for (op, limit, secs) in expect {
            assert_eq!(limits.quota(op).limit(), limit, "{op}");
            assert_eq!(limits.quota(op).period(), Duration::from_secs(secs), "{op}");
        }
    }

    #[test]
    fn each_variable_overrides_its_operation_only() {
        for setting in SETTINGS {
            let limits =
                Limits::from_lookup(|name| (name == setting.env_var).then(|| "7".to_owned()))
                    .unwrap();
            for op in Operation::ALL {
                let expected = if op == setting.operation {
                    7
                } else {
                    LimitSetting::of(op).default_limit
                };
                assert_eq!(limits.quota(op).limit(), expected, "{}", setting.env_var);
                assert_eq!(limits.quota(op).period(), LimitSetting::of(op).period);
            }
        }
    }

    #[test]
    fn bad_values_name_the_variable_and_the_value() {
        for setting in SETTINGS {
            for bad in ["0", "-1", "abc", "", " ", "1.5", "99999999999", "5 per min"] {
                let err =
                    Limits::from_lookup(|name| (name == setting.env_var).then(|| bad.to_owned()))
                        .unwrap_err();
                let message = err.to_string();
                assert!(message.contains(setting.env_var), "{message}");
                assert!(message.contains(&format!("{bad:?}")), "{message}");
                assert!(message.contains("positive integer"), "{message}");
            }
        }
    }

    #[test]
    fn surrounding_white_space_is_tolerated() {
        let limits = with_var("RATE_LIMIT_LISTENER_JOINS_PER_MIN", " 12\n").unwrap();
        assert_eq!(limits.quota(Operation::ListenerJoin).limit(), 12);
    }
}
