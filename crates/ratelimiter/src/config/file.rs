//! The configuration file as written: its TOML shape, and errors that point
//! at its lines.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, FAILURE_MODES};
use crate::key::{Kind, shorten};
use crate::policy::{Batching, FailureMode, LimitSpec, Policies, Policy, PolicyId, Unit};

/// The file as written. The fields are read by the precedence rules in
/// `config` (the file against the environment).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileSpec {
    pub(super) failure_mode: Option<FailureMode>,
    pub(super) shadow: Option<bool>,
    pub(super) tier_field: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) policy: BTreeMap<Spanned<String>, Spanned<PolicySpec>>,
    #[serde(default)]
    pub(super) route: BTreeMap<Spanned<String>, Spanned<RouteSpec>>,
    pub(super) connect: Option<Spanned<ConnectSpec>>,
}

/// `[connect]`: policies `$connect` checks besides the seed's.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ConnectSpec {
    #[serde(default)]
    pub(super) policies: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) speaker: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) listener: Vec<Spanned<String>>,
}

/// `[route.ACTION]`: the policies of the messages on one route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RouteSpec {
    pub(super) policies: Spanned<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PolicySpec {
    pub(super) key: Option<Spanned<String>>,
    pub(super) limits: Option<Spanned<Vec<LimitSpec>>>,
    pub(super) failure_mode: Option<FailureMode>,
    pub(super) shadow: Option<bool>,
    pub(super) unit: Option<Spanned<String>>,
    /// A cap on open connections instead of limits.
    pub(super) concurrent: Option<Spanned<i64>>,
    /// How far before now a bucket's state is still charged from itself
    /// (`"300ms"`, `"2s"`).
    pub(super) tolerance: Option<Spanned<String>>,
    /// How hot keys are served: `"auto"`, `"off"`, or a batch size.
    pub(super) batch: Option<Spanned<toml::Value>>,
    #[serde(default)]
    pub(super) tier: BTreeMap<Spanned<String>, Spanned<TierSpec>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TierSpec {
    pub(super) limits: Spanned<Vec<LimitSpec>>,
}

impl<'de> Deserialize<'de> for LimitSpec {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Read as written in the file; toml points at the line of a bad value.
impl<'de> Deserialize<'de> for FailureMode {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(|()| {
            serde::de::Error::custom(format!(
                "failure_mode must be one of {FAILURE_MODES}, got {:?}",
                shorten(&text)
            ))
        })
    }
}

/// `batch = "auto" | "off" | N`, as written.
fn batching(value: &toml::Value) -> Result<Batching, String> {
    const EXPECTED: &str = "batch must be \"auto\", \"off\" or a whole number of tokens from 1";
    match value {
        toml::Value::String(word) if word == "auto" => Ok(Batching::Auto),
        toml::Value::String(word) if word == "off" => Ok(Batching::Off),
        toml::Value::String(word) => Err(format!("{EXPECTED}, got {:?}", shorten(word))),
        toml::Value::Integer(n) => u32::try_from(*n)
            .ok()
            .and_then(std::num::NonZeroU32::new)
            .map(Batching::Fixed)
            .ok_or_else(|| format!("{EXPECTED}, got {n}")),
        other => Err(format!("{EXPECTED}, got a {}", other.type_str())),
    }
}

/// A parsed file and what is needed to point at its lines.
pub(super) struct FileSource<'a> {
    path: &'a str,
    text: &'a str,
    pub(super) spec: FileSpec,
}

impl<'a> FileSource<'a> {
    pub(super) fn parse(path: &'a str, text: &'a str) -> Result<Self, ConfigError> {
        let spec: FileSpec = toml::from_str(text).map_err(|e| ConfigError::File {
            path: path.to_owned(),
            line: e.span().map_or(1, |span| line_of(text, span.start)),
            message: e.message().trim().to_owned(),
        })?;
        Ok(Self { path, text, spec })
    }

    pub(super) fn error(
        &self,
        span: std::ops::Range<usize>,
        message: impl std::fmt::Display,
    ) -> ConfigError {
        ConfigError::File {
            path: self.path.to_owned(),
            line: line_of(self.text, span.start),
            message: message.to_string(),
        }
    }

    /// The policy `name` as the file sets it: a new one, or a built-in with
    /// the file's changes.
    pub(super) fn policy(
        &self,
        name: &Spanned<String>,
        spec: &Spanned<PolicySpec>,
        policies: &Policies,
    ) -> Result<Policy, ConfigError> {
        let at = |span: std::ops::Range<usize>, message: String| {
            self.error(
                span,
                format!("policy {:?}: {message}", shorten(name.get_ref())),
            )
        };
        let builtin = policies.id(name.get_ref()).map(|id| &policies[id]);
        let fields = spec.get_ref();
        let kind = match (&fields.key, builtin) {
            (Some(key), _) => {
                Kind::new(key.get_ref()).map_err(|e| at(key.span(), format!("key: {e}")))?
            }
            (None, Some(builtin)) => builtin.kind().clone(),
            (None, None) => {
                return Err(at(
                    spec.span(),
                    "missing `key` (user, ip, connection or a name of your own)".to_owned(),
                ));
            }
        };
        if let Some(concurrent) = &fields.concurrent {
            return self.cap(name, fields, concurrent, kind, builtin.is_some(), &at);
        }
        let limits = match (&fields.limits, builtin) {
            (Some(limits), _) => limits.get_ref().clone(),
            (None, Some(builtin)) => builtin.limits().iter().map(|l| l.spec()).collect(),
            (None, None) => {
                return Err(at(
                    spec.span(),
                    "missing `limits` (such as limits = [\"100/min\"]) or `concurrent` (a cap on open connections)"
                        .to_owned(),
                ));
            }
        };
        let limits_span = fields.limits.as_ref().map_or(spec.span(), Spanned::span);
        let mut policy = Policy::new(name.get_ref(), kind, &limits).map_err(|e| {
            let span = match e {
                crate::policy::PolicyError::Name(_) => name.span(),
                _ => limits_span.clone(),
            };
            at(span, e.to_string())
        })?;
        let unit = match (&fields.unit, builtin) {
            (Some(unit), _) => unit
                .get_ref()
                .parse::<Unit>()
                .map_err(|e| at(unit.span(), format!("unit: {e}")))?,
            (None, Some(builtin)) => builtin.unit(),
            (None, None) => Unit::Requests,
        };
        policy = policy.with_unit(unit);
        for (tier, tier_spec) in &fields.tier {
            policy = policy
                .with_tier(tier.get_ref(), tier_spec.get_ref().limits.get_ref())
                .map_err(|e| {
                    let span = match e {
                        crate::policy::PolicyError::Tier(_) => tier.span(),
                        _ => tier_spec.get_ref().limits.span(),
                    };
                    at(span, format!("tier {:?}: {e}", shorten(tier.get_ref())))
                })?;
        }
        if let Some(tolerance) = &fields.tolerance {
            let duration = super::parse_duration(tolerance.get_ref())
                .map_err(|e| at(tolerance.span(), format!("tolerance: {e}")))?;
            policy = policy
                .with_tolerance(duration)
                .map_err(|e| at(tolerance.span(), e.to_string()))?;
        }
        if let Some(batch) = &fields.batch {
            let batching = batching(batch.get_ref()).map_err(|e| at(batch.span(), e))?;
            policy = policy
                .with_batching(batching)
                .map_err(|e| at(batch.span(), e.to_string()))?;
        }
        Ok(policy)
    }
}

impl FileSource<'_> {
    /// The cap `name` (`concurrent = N`): no limits, unit or tiers.
    fn cap(
        &self,
        name: &Spanned<String>,
        fields: &PolicySpec,
        concurrent: &Spanned<i64>,
        kind: Kind,
        builtin: bool,
        at: &dyn Fn(std::ops::Range<usize>, String) -> ConfigError,
    ) -> Result<Policy, ConfigError> {
        if builtin {
            return Err(at(
                concurrent.span(),
                "the seed's policies limit rates; give a cap a name of its own".to_owned(),
            ));
        }
        let other = [
            ("limits", fields.limits.as_ref().map(Spanned::span)),
            ("unit", fields.unit.as_ref().map(Spanned::span)),
            ("tiers", fields.tier.keys().next().map(Spanned::span)),
            ("tolerance", fields.tolerance.as_ref().map(Spanned::span)),
            ("batch", fields.batch.as_ref().map(Spanned::span)),
        ];
        if let Some((what, Some(span))) = other.into_iter().find(|(_, span)| span.is_some()) {
            return Err(at(
                span,
                format!("a cap (concurrent = N) counts open connections: it takes no {what}"),
            ));
        }
        let n = u32::try_from(*concurrent.get_ref())
            .ok()
            .and_then(std::num::NonZeroU32::new)
            .ok_or_else(|| {
                at(
                    concurrent.span(),
                    format!(
                        "concurrent must be a whole number from 1 to {}, got {}",
                        u32::MAX,
                        concurrent.get_ref()
                    ),
                )
            })?;
        Policy::concurrent(name.get_ref(), kind, n).map_err(|e| {
            let span = match e {
                crate::policy::PolicyError::Name(_) => name.span(),
                _ => concurrent.span(),
            };
            at(span, e.to_string())
        })
    }

    /// Adds the file's `[connect]` checks to `policies`, which hold the
    /// file's policies already.
    pub(super) fn connect(&self, policies: &mut Policies) -> Result<(), ConfigError> {
        let Some(spec) = &self.spec.connect else {
            return Ok(());
        };
        let at = |span: std::ops::Range<usize>, message: String| {
            self.error(span, format!("[connect]: {message}"))
        };
        let ids = |names: &[Spanned<String>]| -> Result<Vec<PolicyId>, ConfigError> {
            names
                .iter()
                .map(|name| {
                    policies
                        .find(name.get_ref())
                        .map_err(|e| at(name.span(), e.to_string()))
                })
                .collect()
        };
        let fields = spec.get_ref();
        let (every, speaker, listener) = (
            ids(&fields.policies)?,
            ids(&fields.speaker)?,
            ids(&fields.listener)?,
        );
        policies
            .add_connect_checks(&every, &speaker, &listener)
            .map_err(|e| at(spec.span(), e.to_string()))
    }

    /// Sets every `[route.*]` of the file on `policies`, which hold the
    /// file's policies already.
    pub(super) fn routes(&self, policies: &mut Policies) -> Result<(), ConfigError> {
        for (action, spec) in &self.spec.route {
            let at = |span: std::ops::Range<usize>, message: String| {
                self.error(
                    span,
                    format!("route {:?}: {message}", shorten(action.get_ref())),
                )
            };
            let mut ids: Vec<PolicyId> = Vec::new();
            for name in spec.get_ref().policies.get_ref() {
                let id = policies
                    .find(name.get_ref())
                    .map_err(|e| at(name.span(), e.to_string()))?;
                if ids.contains(&id) {
                    return Err(at(
                        name.span(),
                        format!("policy {:?} is listed twice", shorten(name.get_ref())),
                    ));
                }
                ids.push(id);
            }
            policies.set_route(action.get_ref(), &ids).map_err(|e| {
                let span = match e {
                    crate::policy::RouteError::Count(_) => spec.get_ref().policies.span(),
                    _ => action.span(),
                };
                at(span, e.to_string())
            })?;
        }
        Ok(())
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}
