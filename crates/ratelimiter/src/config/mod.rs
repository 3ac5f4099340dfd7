//! Configuration: the policies, their failure and shadow modes, the key
//! secret and the tier field, from a TOML file and the environment.
//!
//! This module reads the environment and one file, once, at start-up; it is
//! the only part of the core that does any I/O, and nothing on the decision
//! path calls it.
//!
//! # Precedence
//!
//! - Limits: the built-in defaults, then the file, then the seed's variables
//!   (`RATE_LIMIT_SESSIONS_PER_HOUR`, ...), which set the count of the
//!   built-in policy's limit of their period (adding that limit when the
//!   file gave the policy other periods only).
//! - Failure and shadow modes, from weakest to strongest: the default
//!   (`open`, not shadowed), the file's top-level setting,
//!   `RATE_LIMIT_FAILURE_MODE` / `RATE_LIMIT_SHADOW_MODE`, the file's
//!   setting for the policy, and `RATE_LIMIT_FAILURE_MODE_<POLICY>` /
//!   `RATE_LIMIT_SHADOW_MODE_<POLICY>`. The more specific setting wins; at
//!   the same level, the environment wins over the file.
//!
//! ```
//! use ratelimiter::config::Config;
//!
//! let file = r#"
//! [policy.send_message]
//! key = "connection"
//! limits = ["3/10s", "100/min"]
//!
//! [policy.api_calls]
//! key = "tenant"
//! limits = ["100/min"]
//!
//! [policy.api_calls.tier.pro]
//! limits = ["1000/min"]
//! "#;
//! let config = Config::from_file_text("limits.toml", file, |_| None)?;
//! let id = config.policies.id("api_calls").unwrap();
//! assert_eq!(config.policies[id].tier("pro").unwrap()[0].quota().limit(), 1000);
//! # Ok::<(), ratelimiter::ConfigError>(())
//! ```

use std::path::Path;

use crate::key::{KeySecret, shorten};
use crate::policy::{BUILTINS, FailureMode, LimitSpec, Policies};

mod file;

use file::FileSource;
use toml::Spanned;

/// The variable naming the configuration file.
pub const CONFIG_VAR: &str = "RATE_LIMIT_CONFIG";
/// The variable holding the key secret (at least 32 bytes).
pub const KEY_SECRET_VAR: &str = "RATE_LIMIT_KEY_SECRET";
/// The variable naming the authorizer-context field that holds the tier.
pub const TIER_FIELD_VAR: &str = "RATE_LIMIT_TIER_FIELD";
/// The tier field when nothing sets it.
pub const DEFAULT_TIER_FIELD: &str = "tier";

/// The variable that sets the failure mode of every policy.
pub const FAILURE_MODE_VAR: &str = "RATE_LIMIT_FAILURE_MODE";

/// The variable that puts every policy in shadow mode (`true` or `false`).
pub const SHADOW_MODE_VAR: &str = "RATE_LIMIT_SHADOW_MODE";

/// `<base>_<POLICY>`, such as `RATE_LIMIT_SHADOW_MODE_SESSION_CREATE`: the
/// variable that sets `base` for one policy.
pub fn per_policy_var(base: &str, policy: &str) -> String {
    format!("{base}_{}", policy.to_ascii_uppercase())
}

/// Parses a shadow-mode value: exactly `true` or `false` (surrounding white
/// space aside).
fn parse_bool(value: &str) -> Option<bool> {
    match value.trim() {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
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
        /// Its value, as found (shortened).
        value: String,
        /// The largest accepted value.
        max: u64,
    },
    /// A variable that must be one of a few words holds another.
    #[error("{var} must be one of {expected}, got {value:?}")]
    NotOneOf {
        /// The variable's name.
        var: String,
        /// Its value, as found (shortened).
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
        /// Its value, as found (shortened).
        value: String,
        /// What the value must be, for the message.
        expected: &'static str,
    },
    /// The key secret is too short. The message never quotes it.
    #[error("{var} must be at least {min} bytes, got {len} bytes")]
    SecretTooShort {
        /// The variable's name.
        var: String,
        /// Its length in bytes.
        len: usize,
        /// The shortest length accepted.
        min: usize,
    },
    /// The configuration file cannot be read.
    #[error("{path}: {message}")]
    Unreadable {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// The configuration file holds something wrong.
    #[error("{path}:{line}: {message}")]
    File {
        /// The file.
        path: String,
        /// The line of the offending value (1 when unknown).
        line: usize,
        /// What is wrong.
        message: String,
    },
}

/// A duration as configuration writes it: a whole number of `ms`, `s`,
/// `min` or `h`, with no space (`"300ms"`, `"9s"`, `"2h"`). The message of
/// an error quotes the text, shortened.
///
/// ```
/// use std::time::Duration;
/// use ratelimiter::config::parse_duration;
///
/// assert_eq!(parse_duration("300ms"), Ok(Duration::from_millis(300)));
/// assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
/// assert!(parse_duration("1.5s").unwrap_err().contains("not a duration"));
/// ```
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    let per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "min" => 60_000,
        "h" => 3_600_000,
        _ => {
            return Err(format!(
                "{:?} is not a duration: write a whole number of ms, s, min or h, such as \"300ms\" or \"2s\"",
                shorten(text)
            ));
        }
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(per_unit))
        .map(std::time::Duration::from_millis)
        .ok_or_else(|| {
            format!(
                "{:?}: the number is not a whole number that fits",
                shorten(text)
            )
        })
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
            value: shorten(value),
            max,
        })
}

/// Everything the service needs to know before the first request.
#[derive(Clone, Debug)]
pub struct Config {
    /// The policies, with their modes resolved.
    pub policies: Policies,
    /// The secret that turns identifiers into keyed digests, if any.
    pub secret: Option<KeySecret>,
    /// The authorizer-context field that holds a caller's tier.
    pub tier_field: String,
}

impl Default for Config {
    /// The seed's four policies with their defaults; no secret.
    fn default() -> Self {
        Self {
            policies: Policies::builtin(),
            secret: None,
            tier_field: DEFAULT_TIER_FIELD.to_owned(),
        }
    }
}

impl Config {
    /// The configuration of this process: the file named by
    /// [`CONFIG_VAR`], if set, and the environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|var| std::env::var(var).ok())
    }

    /// The configuration `lookup` gives: the file named by [`CONFIG_VAR`],
    /// if set, and the variables.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        match lookup(CONFIG_VAR) {
            Some(path) if path.trim().is_empty() => Err(ConfigError::Invalid {
                var: CONFIG_VAR.to_owned(),
                value: path,
                expected: "the path of a TOML file",
            }),
            Some(path) => Self::from_file(Path::new(&path), lookup),
            None => Self::build(None, &lookup),
        }
    }

    /// The file at `path`, then the variables `lookup` gives. A missing or
    /// unreadable file is an error.
    pub fn from_file(
        path: &Path,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Unreadable {
            path: shown.clone(),
            message: format!("cannot read the configuration file: {e}"),
        })?;
        Self::from_file_text(&shown, &text, lookup)
    }

    /// The file's `text` (named `path` in messages), then the variables.
    pub fn from_file_text(
        path: &str,
        text: &str,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let file = FileSource::parse(path, text)?;
        Self::build(Some(&file), &lookup)
    }

    fn build(
        file: Option<&FileSource<'_>>,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut policies = Policies::builtin();
        if let Some(file) = file {
            for (name, spec) in &file.spec.policy {
                policies.insert(file.policy(name, spec, &policies)?);
            }
            file.routes(&mut policies)?;
            file.connect(&mut policies)?;
        }
        apply_seed_variables(&mut policies, lookup)?;

        let file_mode = file.and_then(|f| f.spec.failure_mode);
        let file_shadow = file.and_then(|f| f.spec.shadow);
        let env_mode = read_mode(lookup, FAILURE_MODE_VAR)?;
        let env_shadow = read_flag(lookup, SHADOW_MODE_VAR)?;
        for policy in policies.iter_mut() {
            let in_file = file
                .and_then(|f| f.spec.policy.get(policy.name()))
                .map(Spanned::get_ref);
            let mode = read_mode(lookup, &per_policy_var(FAILURE_MODE_VAR, policy.name()))?
                .or(in_file.and_then(|p| p.failure_mode))
                .or(env_mode)
                .or(file_mode)
                .unwrap_or_default();
            let shadow = read_flag(lookup, &per_policy_var(SHADOW_MODE_VAR, policy.name()))?
                .or(in_file.and_then(|p| p.shadow))
                .or(env_shadow)
                .or(file_shadow)
                .unwrap_or(false);
            policy.set_failure_mode(mode);
            policy.set_shadow(shadow);
        }

        let secret = match lookup(KEY_SECRET_VAR) {
            None => None,
            Some(secret) => Some(KeySecret::new(secret.as_bytes()).map_err(|e| {
                ConfigError::SecretTooShort {
                    var: KEY_SECRET_VAR.to_owned(),
                    len: e.0,
                    min: crate::key::MIN_SECRET_BYTES,
                }
            })?),
        };
        let tier_field = match lookup(TIER_FIELD_VAR) {
            Some(field) => check_tier_field(TIER_FIELD_VAR, &field)?,
            None => match file.and_then(|f| f.spec.tier_field.as_ref()) {
                Some(field) => check_tier_field("tier_field", field.get_ref())
                    .map_err(|e| file.expect("from the file").error(field.span(), e))?,
                None => DEFAULT_TIER_FIELD.to_owned(),
            },
        };
        Ok(Self {
            policies,
            secret,
            tier_field,
        })
    }
}

fn check_tier_field(var: &str, field: &str) -> Result<String, ConfigError> {
    if (1..=128).contains(&field.len()) {
        Ok(field.to_owned())
    } else {
        Err(ConfigError::Invalid {
            var: var.to_owned(),
            value: shorten(field),
            expected: "the name of an authorizer-context field (1 to 128 bytes)",
        })
    }
}

/// The seed's variables set the count of their built-in policy's limit.
fn apply_seed_variables(
    policies: &mut Policies,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    for (i, builtin) in BUILTINS.iter().enumerate() {
        let Some(value) = lookup(builtin.env_var) else {
            continue;
        };
        let count = parse_positive(builtin.env_var, &value, u64::from(u32::MAX))? as u32;
        let id = policies
            .id(builtin.name)
            .expect("built-ins are always there");
        debug_assert_eq!(id.index(), i);
        let policy = &policies[id];
        let mut specs: Vec<LimitSpec> = policy.limits().iter().map(|l| l.spec()).collect();
        match specs.iter_mut().find(|s| s.period == builtin.period) {
            Some(spec) => spec.count = count,
            None => specs.insert(
                0,
                LimitSpec {
                    count,
                    period: builtin.period,
                },
            ),
        }
        let updated = policy
            .clone()
            .with_limits(&specs)
            // The only way: a new period for a policy that has the most
            // limits already.
            .map_err(|_| ConfigError::Invalid {
                var: builtin.env_var.to_owned(),
                value: shorten(&value),
                expected: "a count for a policy that already has the most limits allowed",
            })?;
        policies.insert(updated);
    }
    Ok(())
}

/// The failure modes a variable or the file may name.
const FAILURE_MODES: &str = "open, closed, local";

fn read_mode(
    lookup: &dyn Fn(&str) -> Option<String>,
    var: &str,
) -> Result<Option<FailureMode>, ConfigError> {
    read_one_of(lookup, var, FAILURE_MODES, |value| value.parse().ok())
}

fn read_flag(
    lookup: &dyn Fn(&str) -> Option<String>,
    var: &str,
) -> Result<Option<bool>, ConfigError> {
    read_one_of(lookup, var, "true, false", parse_bool)
}

/// `var` read by `parse`, if set; a value it refuses is an error naming
/// the variable, the value (shortened) and the values `expected`. Every
/// variable with a fixed set of values is read through it, so that they all
/// refuse alike.
///
/// ```
/// use ratelimiter::config::read_one_of;
///
/// let lookup = |_: &str| Some("maybe".to_owned());
/// let err = read_one_of(&lookup, "FLAG", "yes or no", |v| (v == "yes").then_some(true)).unwrap_err();
/// assert_eq!(err.to_string(), r#"FLAG must be one of yes or no, got "maybe""#);
/// ```
pub fn read_one_of<T>(
    lookup: &dyn Fn(&str) -> Option<String>,
    var: &str,
    expected: &'static str,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<Option<T>, ConfigError> {
    lookup(var)
        .map(|value| {
            parse(&value).ok_or_else(|| ConfigError::NotOneOf {
                var: var.to_owned(),
                value: shorten(&value),
                expected,
            })
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::key::Kind;
    use crate::policy::PolicyId;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |var| {
            pairs
                .iter()
                .find(|(name, _)| *name == var)
                .map(|(_, value)| (*value).to_owned())
        }
    }

    #[test]
    fn modes_and_flags_parse_strictly() {
        assert_eq!("open".parse(), Ok(FailureMode::Open));
        assert_eq!(" local\n".parse(), Ok(FailureMode::Local));
        assert!("Open".parse::<FailureMode>().is_err());
        assert_eq!(parse_bool("true"), Some(true));
        for bad in ["yes", "1", "", "TRUE"] {
            assert_eq!(parse_bool(bad), None, "{bad}");
        }
        assert_eq!(
            per_policy_var(FAILURE_MODE_VAR, "send_message"),
            "RATE_LIMIT_FAILURE_MODE_SEND_MESSAGE"
        );
    }

    fn file_error(text: &str) -> String {
        Config::from_file_text("limits.toml", text, |_| None)
            .unwrap_err()
            .to_string()
    }

    fn limits(config: &Config, id: PolicyId) -> Vec<String> {
        config.policies[id]
            .limits()
            .iter()
            .map(|l| l.spec().to_string())
            .collect()
    }

    #[test]
    fn defaults_are_the_seeds() {
        let config = Config::from_lookup(|_| None).unwrap();
        let expect = [
            (PolicyId::SESSION_CREATE, "50/h", "user"),
            (PolicyId::LISTENER_JOIN, "10/min", "ip"),
            (PolicyId::CONNECTION_ATTEMPT, "20/min", "ip"),
            (PolicyId::HEARTBEAT, "2/min", "connection"),
        ];
        for (id, limit, kind) in expect {
            assert_eq!(limits(&config, id), [limit]);
            assert_eq!(config.policies[id].kind().as_str(), kind);
            assert_eq!(config.policies[id].failure_mode(), FailureMode::Open);
            assert!(!config.policies[id].shadow());
        }
        assert!(config.secret.is_none());
        assert_eq!(config.tier_field, "tier");
    }

    #[test]
    fn each_seed_variable_overrides_its_policy_only() {
        for (i, builtin) in BUILTINS.iter().enumerate() {
            let config =
                Config::from_lookup(|var| (var == builtin.env_var).then(|| "7".to_owned()))
                    .unwrap();
            for (j, other) in BUILTINS.iter().enumerate() {
                let id = config.policies.id(other.name).unwrap();
                let count = config.policies[id].limits()[0].quota().limit();
                assert_eq!(
                    count,
                    if i == j { 7 } else { other.count },
                    "{}",
                    builtin.env_var
                );
                assert_eq!(
                    config.policies[id].limits()[0].quota().period(),
                    other.period
                );
            }
        }
    }

    #[test]
    fn bad_seed_values_name_the_variable_and_the_value() {
        for builtin in &BUILTINS {
            for bad in ["0", "-1", "abc", "", " ", "1.5", "99999999999", "5 per min"] {
                let err =
                    Config::from_lookup(|var| (var == builtin.env_var).then(|| bad.to_owned()))
                        .unwrap_err()
                        .to_string();
                assert!(err.contains(builtin.env_var), "{err}");
                assert!(err.contains(&format!("{bad:?}")), "{err}");
                assert!(err.contains("positive integer"), "{err}");
            }
        }
        let config =
            Config::from_lookup(env(&[("RATE_LIMIT_LISTENER_JOINS_PER_MIN", " 12\n")])).unwrap();
        assert_eq!(limits(&config, PolicyId::LISTENER_JOIN), ["12/min"]);
    }

    const FILE: &str = r#"
failure_mode = "local"

[policy.send_message]
key = "connection"
limits = ["3/10s", "100/min"]
shadow = true

[policy.api_calls]
key = "tenant"
limits = ["100/min"]
failure_mode = "closed"

[policy.api_calls.tier.pro]
limits = ["1000/min"]

[policy.session_create]
limits = ["10/min", "100/h"]
"#;

    #[test]
    fn the_file_adds_policies_tiers_and_overrides_builtins() {
        let config = Config::from_file_text("limits.toml", FILE, |_| None).unwrap();
        let send = config.policies.id("send_message").unwrap();
        assert_eq!(limits(&config, send), ["3/10s", "100/min"]);
        assert_eq!(config.policies[send].kind(), &Kind::CONNECTION);
        assert!(config.policies[send].shadow());
        assert_eq!(config.policies[send].failure_mode(), FailureMode::Local);
        let api = config.policies.id("api_calls").unwrap();
        assert_eq!(config.policies[api].kind().as_str(), "tenant");
        assert_eq!(config.policies[api].failure_mode(), FailureMode::Closed);
        let pro = config.policies[api].tier("pro").unwrap();
        assert_eq!(pro[0].quota().limit(), 1000);
        assert_eq!(
            limits(&config, PolicyId::SESSION_CREATE),
            ["10/min", "100/h"]
        );
        assert_eq!(
            config.policies[PolicyId::SESSION_CREATE].kind(),
            &Kind::USER
        );
        assert_eq!(config.policies.len(), 6);
    }

    #[test]
    fn precedence_between_the_file_and_the_environment() {
        let config = Config::from_file_text(
            "limits.toml",
            FILE,
            env(&[
                ("RATE_LIMIT_SESSIONS_PER_HOUR", "7"),
                ("RATE_LIMIT_FAILURE_MODE", "open"),
                ("RATE_LIMIT_FAILURE_MODE_SEND_MESSAGE", "closed"),
                ("RATE_LIMIT_SHADOW_MODE", "true"),
                ("RATE_LIMIT_SHADOW_MODE_SEND_MESSAGE", "false"),
            ]),
        )
        .unwrap();
        // The seed's variable sets the count of the period it names.
        assert_eq!(limits(&config, PolicyId::SESSION_CREATE), ["10/min", "7/h"]);
        let send = config.policies.id("send_message").unwrap();
        let api = config.policies.id("api_calls").unwrap();
        // The per-policy variable beats everything.
        assert_eq!(config.policies[send].failure_mode(), FailureMode::Closed);
        assert!(!config.policies[send].shadow());
        // The file's per-policy setting beats the global variable...
        assert_eq!(config.policies[api].failure_mode(), FailureMode::Closed);
        // ...which beats the file's global setting.
        assert_eq!(
            config.policies[PolicyId::HEARTBEAT].failure_mode(),
            FailureMode::Open
        );
        assert!(config.policies[PolicyId::HEARTBEAT].shadow());

        // A seed variable for a period the file left out adds that limit.
        let config = Config::from_file_text(
            "f",
            "[policy.heartbeat]\nlimits = [\"1/s\"]\n",
            env(&[("RATE_LIMIT_HEARTBEATS_PER_MIN", "4")]),
        )
        .unwrap();
        assert_eq!(limits(&config, PolicyId::HEARTBEAT), ["4/min", "1/s"]);
    }

    #[test]
    fn a_tolerance_applies_to_every_limit_and_tier_of_its_policy() {
        let config = Config::from_file_text(
            "limits.toml",
            "[policy.heartbeat]\ntolerance = \"9s\"\n\
             [policy.api]\nkey = \"tenant\"\nlimits = [\"10/s\", \"1000/h\"]\ntolerance = \"50ms\"\n\
             [policy.api.tier.pro]\nlimits = [\"20/s\"]\n",
            env(&[]),
        )
        .unwrap();
        let heartbeat = &config.policies[PolicyId::HEARTBEAT];
        assert_eq!(heartbeat.tolerance(), Duration::from_secs(9));
        assert_eq!(
            heartbeat.limits()[0].quota().tolerance(),
            Duration::from_secs(9)
        );
        let api = &config.policies[config.policies.id("api").unwrap()];
        let tolerances: Vec<Duration> = api
            .limits()
            .iter()
            .chain(api.tier("pro").unwrap())
            .map(|l| l.quota().tolerance())
            .collect();
        assert_eq!(tolerances, [Duration::from_millis(50); 3]);
        // Others stay exact.
        let session = &config.policies[PolicyId::SESSION_CREATE];
        assert_eq!(session.tolerance(), Duration::ZERO);
    }

    #[test]
    fn bad_files_name_the_file_the_line_and_the_fault() {
        for (text, line, expect) in [
            (
                "[policy.a]\nkey = \"ip\"\nlimits = [\"5/fortnight\"]\n",
                3,
                "unknown unit",
            ),
            (
                "[policy.a]\nkey = \"ip\"\nlimits = [\"0/min\"]\n",
                3,
                "count must be",
            ),
            ("\n[policy.a]\nkey = \"ip\"\n", 2, "missing `limits`"),
            ("[policy.a]\nlimits = [\"1/s\"]\n", 1, "missing `key`"),
            (
                "[policy.a]\nkey = \"ip\"\nlimits = [\"1/s\"]\nlimit = 3\n",
                4,
                "unknown field `limit`",
            ),
            ("[policy.a]\nkey = \"ip\"\nlimits = [\"1/s\"\n", 3, ""),
            (
                "[policy.a]\nkey = \"i p\"\nlimits = [\"1/s\"]\n",
                2,
                "not a valid name",
            ),
            (
                "[policy.\"a-b\"]\nkey = \"ip\"\nlimits = [\"1/s\"]\n",
                1,
                "not a valid name",
            ),
            (
                "[policy.a]\nkey = \"ip\"\nlimits = [\"1/s\", \"2/1s\"]\n",
                3,
                "same period",
            ),
            (
                "[policy.a]\nkey = \"ip\"\nlimits = []\n",
                3,
                "at least one limit",
            ),
            (
                "failure_mode = \"sometimes\"\n",
                1,
                "failure_mode must be one of",
            ),
            (
                "[policy.a]\nkey = \"ip\"\nlimits = [\"1/s\"]\n[policy.a.tier.pro]\nlimits = [\"2/5d\"]\n",
                5,
                "from 1s to 1d",
            ),
            ("shadow = \"yes\"\n", 1, ""),
            (
                "[policy.a]\nkey = \"ip\"\nunit = \"tokens\"\nlimits = [\"1/s\"]\n",
                3,
                "unit: unknown unit \"tokens\"",
            ),
            (
                "[policy.a]\nkey = \"ip\"\nlimits = [\"2/min\", \"10/s\"]\ntolerance = \"200ms\"\n",
                4,
                "tolerance 200ms exceeds the emission interval of 10/s (100ms)",
            ),
            (
                "[policy.a]\nkey = \"ip\"\nlimits = [\"2/min\"]\ntolerance = \"1.5s\"\n",
                4,
                "tolerance: \"1.5s\" is not a duration: write a whole number of ms, s, min or h",
            ),
            (
                "[policy.a]\nkey = \"ip\"\nconcurrent = 2\ntolerance = \"1s\"\n",
                4,
                "it takes no tolerance",
            ),
            (
                "[route.send]\npolicies = [\"heartbeat\", \"nope\"]\n",
                2,
                "route \"send\": unknown policy \"nope\"",
            ),
            (
                "[route.send]\npolicies = [\"heartbeat\", \"heartbeat\"]\n",
                2,
                "listed twice",
            ),
            (
                "\n[route.send]\npolicies = []\n",
                3,
                "1 to 8 policies, got 0",
            ),
            (
                "[route.heartbeat]\npolicies = [\"heartbeat\"]\n",
                1,
                "limited by the heartbeat policy",
            ),
            (
                "[route.\"$connect\"]\npolicies = [\"heartbeat\"]\n",
                1,
                "[connect]",
            ),
            (
                "[route.\"a b\"]\npolicies = [\"heartbeat\"]\n",
                1,
                "is not a route",
            ),
            (
                "[route.send]\npolicy = [\"heartbeat\"]\n",
                2,
                "unknown field",
            ),
        ] {
            let err = file_error(text);
            assert!(
                err.starts_with(&format!("limits.toml:{line}: ")),
                "{text:?}: {err}"
            );
            assert!(err.contains(expect), "{text:?}: {err}");
        }
    }

    #[test]
    fn routes_name_their_policies_and_a_policy_may_count_bytes() {
        let config = Config::from_file_text(
            "limits.toml",
            "[policy.messages]\nkey = \"connection\"\nlimits = [\"5/s\"]\n\
             [policy.message_bytes]\nkey = \"connection\"\nunit = \"bytes\"\nlimits = [\"64000/min\"]\n\
             [route.sendMessage]\npolicies = [\"messages\", \"message_bytes\"]\n\
             [route.\"$default\"]\npolicies = [\"messages\"]\n",
            |_| None,
        )
        .unwrap();
        let policies = &config.policies;
        let (messages, bytes) = (
            policies.id("messages").unwrap(),
            policies.id("message_bytes").unwrap(),
        );
        assert_eq!(policies[bytes].unit(), crate::policy::Unit::Bytes);
        assert_eq!(policies[messages].unit(), crate::policy::Unit::Requests);
        assert_eq!(policies.route("sendMessage"), Some(&[messages, bytes][..]));
        assert_eq!(policies.route("$default"), Some(&[messages][..]));
        assert_eq!(policies.route("other"), None);
        assert!(
            policies.connect().is_seed(),
            "no [connect]: the seed's checks"
        );
    }

    #[test]
    fn connect_adds_checks_per_role_after_the_seeds() {
        let config = Config::from_file_text(
            "limits.toml",
            "[policy.connects_per_hour]\nkey = \"ip\"\nlimits = [\"100/h\"]\n\
             [policy.user_connects]\nkey = \"user\"\nlimits = [\"30/h\"]\n\
             [connect]\npolicies = [\"connects_per_hour\"]\nspeaker = [\"user_connects\"]\n",
            |_| None,
        )
        .unwrap();
        let policies = &config.policies;
        let (hourly, users) = (
            policies.id("connects_per_hour").unwrap(),
            policies.id("user_connects").unwrap(),
        );
        let connect = policies.connect();
        assert_eq!(connect.every(), [PolicyId::CONNECTION_ATTEMPT, hourly]);
        assert_eq!(connect.speaker(), [PolicyId::SESSION_CREATE, users]);
        assert_eq!(connect.listener(), [PolicyId::LISTENER_JOIN]);
        assert!(!connect.is_seed());
    }

    #[test]
    fn caps_count_open_connections_and_take_nothing_else() {
        let config = Config::from_file_text(
            "limits.toml",
            "[policy.open_per_ip]\nkey = \"ip\"\nconcurrent = 2\nfailure_mode = \"closed\"\n\
             [connect]\npolicies = [\"open_per_ip\"]\n",
            |_| None,
        )
        .unwrap();
        let id = config.policies.id("open_per_ip").unwrap();
        let cap = &config.policies[id];
        assert_eq!(cap.cap().map(|c| c.concurrent()), Some(2));
        assert_eq!(cap.unit(), crate::policy::Unit::Connections);
        assert_eq!(cap.failure_mode(), FailureMode::Closed);
        assert!(config.policies.connect().every().contains(&id));
        // An item holding leases outlives them.
        assert!(config.policies.retention(&Kind::IP) > crate::lease::LEASE_LIFETIME);
        for (text, line, expect) in [
            (
                "[policy.c]\nkey = \"ip\"\nconcurrent = 2\nlimits = [\"1/s\"]\n",
                4,
                "it takes no limits",
            ),
            (
                "[policy.c]\nkey = \"ip\"\nconcurrent = 2\nunit = \"bytes\"\n",
                4,
                "it takes no unit",
            ),
            (
                "[policy.c]\nkey = \"ip\"\nconcurrent = 2\n[policy.c.tier.pro]\nlimits = [\"1/s\"]\n",
                4,
                "it takes no tiers",
            ),
            ("[policy.c]\nkey = \"ip\"\nconcurrent = 0\n", 3, "from 1 to"),
            ("[policy.c]\nkey = \"ip\"\nconcurrent = -3\n", 3, "got -3"),
            (
                "[policy.c]\nkey = \"ip\"\nconcurrent = 1001\n",
                3,
                "at most 1000",
            ),
            ("[policy.heartbeat]\nconcurrent = 2\n", 2, "name of its own"),
            (
                "[policy.c]\nkey = \"ip\"\nunit = \"connections\"\nlimits = [\"1/s\"]\n",
                3,
                "write concurrent = N",
            ),
            (
                "[policy.c]\nkey = \"ip\"\nconcurrent = 2\n[route.send]\npolicies = [\"c\"]\n",
                4,
                "belongs in [connect]",
            ),
        ] {
            let error = Config::from_file_text("limits.toml", text, |_| None).unwrap_err();
            let message = error.to_string();
            assert!(message.contains(expect), "{text}: {message}");
            assert!(
                message.contains(&format!("limits.toml:{line}")),
                "{text}: {message}"
            );
        }
    }

    #[test]
    fn missing_files_and_short_secrets_are_errors() {
        let err = Config::from_lookup(env(&[("RATE_LIMIT_CONFIG", "/nonexistent/limits.toml")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("/nonexistent/limits.toml: cannot read"),
            "{err}"
        );
        assert!(Config::from_lookup(env(&[("RATE_LIMIT_CONFIG", "")])).is_err());
        let err = Config::from_lookup(env(&[("RATE_LIMIT_KEY_SECRET", "short-secret")]))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "RATE_LIMIT_KEY_SECRET must be at least 32 bytes, got 12 bytes"
        );
        let config = Config::from_lookup(env(&[(
            "RATE_LIMIT_KEY_SECRET",
            "0123456789abcdef0123456789abcdef",
        )]))
        .unwrap();
        assert!(config.secret.is_some());
    }

    #[test]
    fn modes_name_bad_values() {
        let err = Config::from_lookup(env(&[(
            "RATE_LIMIT_FAILURE_MODE_LISTENER_JOIN",
            "sometimes",
        )]))
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "RATE_LIMIT_FAILURE_MODE_LISTENER_JOIN must be one of open, closed, local, got \"sometimes\""
        );
        let err = Config::from_lookup(env(&[("RATE_LIMIT_SHADOW_MODE", "yes")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("RATE_LIMIT_SHADOW_MODE must be one of true, false"),
            "{err}"
        );
        let config = Config::from_lookup(env(&[
            ("RATE_LIMIT_FAILURE_MODE", "closed"),
            ("RATE_LIMIT_SHADOW_MODE_HEARTBEAT", "true"),
        ]))
        .unwrap();
        assert_eq!(
            config.policies[PolicyId::SESSION_CREATE].failure_mode(),
            FailureMode::Closed
        );
        assert!(config.policies[PolicyId::HEARTBEAT].shadow());
        assert!(!config.policies[PolicyId::LISTENER_JOIN].shadow());
        assert_eq!(
            config.policies[PolicyId::HEARTBEAT].limits()[0]
                .quota()
                .period(),
            Duration::from_secs(60)
        );
    }
}
