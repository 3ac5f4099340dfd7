//! Limits as configuration writes them: `N/PERIOD`.

use std::fmt;
use std::time::Duration;

use super::MIN_PERIOD;
use crate::gcra::MAX_PERIOD;
use crate::key::shorten;

/// A limit as configuration writes it: `N/PERIOD`, where PERIOD is `s`,
/// `min`, `h` or `d`, optionally with a count (`10s`, `15min`).
///
/// ```
/// use std::time::Duration;
/// use ratelimiter::policy::LimitSpec;
///
/// let spec: LimitSpec = "3/10s".parse().unwrap();
/// assert_eq!((spec.count, spec.period), (3, Duration::from_secs(10)));
/// assert_eq!("100/60s".parse::<LimitSpec>().unwrap().to_string(), "100/min");
/// assert!("5/fortnight".parse::<LimitSpec>().unwrap_err().to_string().contains("unknown unit"));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LimitSpec {
    /// Requests per period, which is also the burst.
    pub count: u32,
    /// The period.
    pub period: Duration,
}

/// Why a limit could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// Not of the form `N/PERIOD`.
    #[error("{0:?} is not a limit: write N/PERIOD, such as 100/min or 3/10s")]
    Shape(String),
    /// The count is zero or not a whole number.
    #[error("{0:?}: the count must be a whole number from 1 to 4294967295")]
    Count(String),
    /// The period's unit is not one of `s`, `min`, `h`, `d`.
    #[error("{0:?}: unknown unit {1:?}; use s, min, h or d, optionally with a count (10s, 15min)")]
    Unit(String, String),
    /// The period is outside 1 s to 1 day.
    #[error("{0:?}: the period must be from 1s to 1d")]
    Period(String),
}

const UNITS: [(&str, u64); 4] = [("d", 86_400), ("h", 3_600), ("min", 60), ("s", 1)];

impl std::str::FromStr for LimitSpec {
    type Err = LimitError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let quoted = shorten(text);
        let (count, period) = text
            .trim()
            .split_once('/')
            .ok_or_else(|| LimitError::Shape(quoted.clone()))?;
        let count = count
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| LimitError::Count(quoted.clone()))?;
        let period = period.trim();
        let digits = period.bytes().take_while(u8::is_ascii_digit).count();
        let (multiple, unit) = period.split_at(digits);
        let seconds = UNITS
            .iter()
            .find(|(name, _)| *name == unit)
            .map(|(_, seconds)| *seconds)
            .ok_or_else(|| LimitError::Unit(quoted.clone(), shorten(unit)))?;
        let multiple = if multiple.is_empty() {
            1
        } else {
            multiple
                .parse::<u64>()
                .map_err(|_| LimitError::Period(quoted.clone()))?
        };
        let period = Duration::from_secs(multiple.saturating_mul(seconds));
        if !(MIN_PERIOD..=MAX_PERIOD).contains(&period) {
            return Err(LimitError::Period(quoted));
        }
        Ok(Self { count, period })
    }
}

impl fmt::Display for LimitSpec {
    /// The shortest form: the largest unit that divides the period.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.period.as_secs();
        let (name, unit) = UNITS
            .iter()
            .find(|(_, unit)| secs.is_multiple_of(*unit))
            .expect("seconds divide every period");
        match secs / unit {
            1 => write!(f, "{}/{name}", self.count),
            n => write!(f, "{}/{n}{name}", self.count),
        }
    }
}
