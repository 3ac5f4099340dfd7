//! The DynamoDB store of the rate limiter: the seed's `RateLimits` table.
//!
//! One item per key: a string partition key [`PARTITION_KEY`], the key's TAT
//! in nanoseconds since the Unix epoch ([`TAT_ATTRIBUTE`]), and a TTL in
//! epoch seconds ([`TTL_ATTRIBUTE`]) after which the item is certainly idle,
//! so that DynamoDB deleting it changes no decision.
//!
//! # One round trip per decision
//!
//! Update expressions have `+` but no `max`, so the GCRA rule is applied as
//! one of two conditional `UpdateItem` shapes (see [`ratelimiter::gcra::Step`]):
//! - *idle*: `SET tat = :idle_target` if the item is missing or `tat <= :now`;
//! - *busy*: `SET tat = if_not_exists(tat, :now) + :increment` if the item is
//!   missing or `:now < tat <= :busy_ceiling`. It is relative, so concurrent
//!   writers on a hot key all succeed while capacity lasts.
//!
//! A failed condition returns the old item (`ALL_OLD`), which says either
//! "denied" (no further call) or "the other shape" (one more call). The first
//! shape comes from a per-process hint (the last TAT seen for the key) or,
//! for an unseen key, from the shape that was right most often lately for the
//! operation. The same hints serve as a deny cache: a request that the last
//! TAT seen already denies is denied without calling DynamoDB, since a TAT
//! never moves backwards (except through [`Store::remove`]).
//!
//! ```no_run
//! use ratelimiter::{Limits, RateLimitService};
//! use ratelimiter_dynamodb::{ClientOptions, DynamoDbConfig, DynamoDbStore, client};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // Once per Lambda container, at start-up.
//! let config = DynamoDbConfig::from_env()?;
//! let options = ClientOptions { timeout: config.timeout, ..ClientOptions::default() };
//! let store = DynamoDbStore::new(client(&options).await, config.table);
//! let service = RateLimitService::new(store, Limits::from_env()?);
//!
//! // Per request.
//! service.check_heartbeat_limit("L0SM9cOFvHcCIhw=").await?;
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, ReturnValue,
    ReturnValuesOnConditionCheckFailure, ScalarAttributeType, TableStatus, TimeToLiveSpecification,
};
use ratelimiter::config::{ConfigError, parse_positive};
use ratelimiter::gcra::{Nanos, Outcome, Step};
use ratelimiter::key::{Key, Operation};
use ratelimiter::memory::MemoryStore;
use ratelimiter::store::{Store, StoreError, StoreErrorKind};
use ratelimiter::telemetry;

mod client;

pub use client::{ClientOptions, client, https_client};

/// The table name when `RATE_LIMIT_TABLE_NAME` is not set.
pub const DEFAULT_TABLE: &str = "RateLimits";
/// The variable that names the table.
pub const TABLE_VAR: &str = "RATE_LIMIT_TABLE_NAME";
/// The variable that bounds each DynamoDB call, in milliseconds.
pub const TIMEOUT_VAR: &str = "RATE_LIMIT_TIMEOUT_MS";
/// The default bound on each DynamoDB call.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(100);

/// The partition key attribute (a string: the key's [`Key`] form).
pub const PARTITION_KEY: &str = "pk";
/// The TAT attribute (a number: nanoseconds since the Unix epoch).
pub const TAT_ATTRIBUTE: &str = "tat";
/// The TTL attribute (a number: seconds since the Unix epoch).
pub const TTL_ATTRIBUTE: &str = "ttl";

/// The most DynamoDB calls one decision may make: a shape, the other shape,
/// a consistent read when the server returned no old item, and one more
/// attempt if another writer raced in between.
pub const MAX_CALLS_PER_DECISION: u32 = 4;

/// The counter of DynamoDB requests made for decisions, per operation
/// (labelled like the service's metrics; see [`ratelimiter::telemetry`]).
/// A decision the deny cache answered adds nothing.
pub const CALLS_METRIC: &str = "DynamoDbCalls";

/// Gives the recorder in force the unit and meaning of [`CALLS_METRIC`].
pub fn describe_metrics() {
    metrics::describe_counter!(
        CALLS_METRIC,
        metrics::Unit::Count,
        "DynamoDB requests made for rate-limit decisions"
    );
}

/// How many keys the per-process hints remember.
const HINT_KEYS: usize = 10_000;

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// Where the table is and how long calls may take, from the environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DynamoDbConfig {
    /// The table's name.
    pub table: String,
    /// The bound on each call (connect, attempt and whole operation).
    pub timeout: Duration,
}

impl Default for DynamoDbConfig {
    fn default() -> Self {
        Self {
            table: DEFAULT_TABLE.to_owned(),
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

impl DynamoDbConfig {
    /// The configuration set by the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|var| std::env::var(var).ok())
    }

    /// The configuration set by `lookup` ([`TABLE_VAR`], [`TIMEOUT_VAR`]).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut config = Self::default();
        if let Some(table) = lookup(TABLE_VAR) {
            config.table = validate_table_name(TABLE_VAR, &table)?;
        }
        if let Some(ms) = lookup(TIMEOUT_VAR) {
            config.timeout = Duration::from_millis(parse_positive(TIMEOUT_VAR, &ms, 60_000)?);
        }
        Ok(config)
    }
}

/// Checks a table name against DynamoDB's rules (3 to 255 of `a-z A-Z 0-9 _ - .`).
pub fn validate_table_name(var: &str, name: &str) -> Result<String, ConfigError> {
    let valid = (3..=255).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
    if valid {
        Ok(name.to_owned())
    } else {
        Err(ConfigError::Invalid {
            var: var.to_owned(),
            value: name.to_owned(),
            expected: "a DynamoDB table name (3 to 255 characters of a-z, A-Z, 0-9, '_', '-', '.')",
        })
    }
}

/// The two conditional update shapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    Idle,
    Busy,
}

impl Shape {
    /// The shape that applies to a key whose TAT is `tat` at `now`.
    fn for_tat(tat: Nanos, now: Nanos) -> Self {
        if tat > now { Shape::Busy } else { Shape::Idle }
    }
}

/// How one decision went: its outcome and the DynamoDB calls it made.
#[derive(Debug)]
pub struct Applied {
    /// The outcome, or the error that prevented one.
    pub outcome: Result<Outcome, StoreError>,
    /// DynamoDB requests made for this decision (0 for a cached denial).
    pub calls: u32,
}

/// A [`Store`] on a DynamoDB table.
#[derive(Debug)]
pub struct DynamoDbStore {
    client: Client,
    table: String,
    /// The last TAT seen per key: the first shape to try, and the deny cache.
    hints: MemoryStore,
    /// Per operation: positive when the busy shape was right lately.
    shape_votes: [AtomicI32; 4],
    calls: AtomicU64,
    /// Per operation, [`CALLS_METRIC`] in the recorder in force at creation.
    call_counters: [metrics::Counter; 4],
}

/// How far the shape votes may lean either way, so that a change in traffic
/// turns them around after a few decisions.
const MAX_VOTE: i32 = 8;

/// The outcome of one `UpdateItem`.
enum UpdateResult {
    /// Written; the key's TAT is now this.
    Written(Nanos),
    /// The condition failed; the old TAT when the server returned it.
    Rejected(Option<Nanos>),
}

impl DynamoDbStore {
    /// A store on `table` through `client`.
    ///
    /// Build the client with [`client`] so that every call is bounded and no
    /// consuming call is retried. The store counts its calls in
    /// [`CALLS_METRIC`] of the metrics recorder installed at this point, if any.
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
            hints: MemoryStore::with_max_keys(HINT_KEYS),
            shape_votes: Default::default(),
            calls: AtomicU64::new(0),
            call_counters: Operation::ALL
                .map(|operation| telemetry::counter(CALLS_METRIC, operation)),
        }
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The client the store calls DynamoDB with.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// DynamoDB requests made since the store was created.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Applies `step` to `key` and reports how many calls it took.
    pub async fn apply_counted(&self, key: &Key<'_>, step: &Step) -> Applied {
        let mut calls = 0;
        let outcome = self.apply_inner(key, step, &mut calls).await;
        Applied { outcome, calls }
    }

    async fn apply_inner(
        &self,
        key: &Key<'_>,
        step: &Step,
        calls: &mut u32,
    ) -> Result<Outcome, StoreError> {
        let now = step.now();
        let known = self.hints.get_now(key);
        if let Some(tat) = known
            && let Outcome::Denied { .. } = step.outcome(tat)
        {
            // Denied on what this process saw last; the real TAT is no smaller.
            return Ok(Outcome::Denied { tat });
        }
        let mut shape = match known {
            Some(tat) => Shape::for_tat(tat, now),
            None => self.preferred_shape(key.operation()),
        };
        let pk = key.to_string();
        loop {
            *calls += 1;
            let old = match self.update(&pk, step, shape).await? {
                UpdateResult::Written(tat) => {
                    self.hints.record_now(key, tat, now);
                    if known.is_none() {
                        self.vote(key.operation(), shape);
                    }
                    return Ok(Outcome::Allowed { tat });
                }
                UpdateResult::Rejected(Some(tat)) => tat,
                UpdateResult::Rejected(None) => {
                    *calls += 1;
                    self.get(&pk).await?
                }
            };
            self.hints.record_now(key, old, now);
            let right = Shape::for_tat(old, now);
            if known.is_none() {
                self.vote(key.operation(), right);
            }
            match step.outcome(old) {
                Outcome::Denied { tat } => return Ok(Outcome::Denied { tat }),
                Outcome::Allowed { .. } if *calls >= MAX_CALLS_PER_DECISION - 1 => {
                    return Err(StoreError::new(
                        StoreErrorKind::Protocol,
                        format!(
                            "gave up after {calls} calls: the item kept changing between reads and writes"
                        ),
                    ));
                }
                Outcome::Allowed { .. } => shape = right,
            }
        }
    }

    fn preferred_shape(&self, operation: Operation) -> Shape {
        if self.shape_votes[operation as usize].load(Ordering::Relaxed) > 0 {
            Shape::Busy
        } else {
            Shape::Idle
        }
    }

    fn vote(&self, operation: Operation, right: Shape) {
        let delta = if right == Shape::Busy { 1 } else { -1 };
        let _ = self.shape_votes[operation as usize].fetch_update(
            Ordering::Relaxed,
            Ordering::Relaxed,
            |v| Some((v + delta).clamp(-MAX_VOTE, MAX_VOTE)),
        );
    }

    /// One conditional `UpdateItem` in `shape`.
    async fn update(
        &self,
        pk: &str,
        step: &Step,
        shape: Shape,
    ) -> Result<UpdateResult, StoreError> {
        let now = step.now();
        let request = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(PARTITION_KEY, AttributeValue::S(pk.to_owned()))
            .expression_attribute_names("#tat", TAT_ATTRIBUTE)
            .expression_attribute_names("#ttl", TTL_ATTRIBUTE)
            .expression_attribute_values(":now", number(now))
            .return_values(ReturnValue::UpdatedNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        let request = match shape {
            Shape::Idle => request
                .update_expression("SET #tat = :target, #ttl = :ttl")
                .condition_expression("attribute_not_exists(#tat) OR #tat <= :now")
                .expression_attribute_values(":target", number(step.idle_target()))
                .expression_attribute_values(":ttl", number(ttl_secs(step.idle_target()))),
            Shape::Busy => request
                .update_expression("SET #tat = if_not_exists(#tat, :now) + :increment, #ttl = :ttl")
                .condition_expression(
                    "attribute_not_exists(#tat) OR (#tat > :now AND #tat <= :ceiling)",
                )
                .expression_attribute_values(":increment", number(step.increment()))
                .expression_attribute_values(":ceiling", number(step.busy_ceiling()))
                // The new TAT is at most the ceiling plus the increment.
                .expression_attribute_values(
                    ":ttl",
                    number(ttl_secs(step.busy_ceiling() + step.increment())),
                ),
        };
        self.calls.fetch_add(1, Ordering::Relaxed);
        match request.send().await {
            Ok(output) => {
                let tat = output
                    .attributes()
                    .and_then(|item| tat_of(item).transpose())
                    .transpose()?
                    .ok_or_else(|| {
                        StoreError::new(
                            StoreErrorKind::Protocol,
                            "UpdateItem succeeded but returned no TAT",
                        )
                    })?;
                Ok(UpdateResult::Written(tat))
            }
            Err(SdkError::ServiceError(e))
                if matches!(e.err(), UpdateItemError::ConditionalCheckFailedException(_)) =>
            {
                let UpdateItemError::ConditionalCheckFailedException(failed) = e.err() else {
                    unreachable!("matched above")
                };
                let old = failed.item().map(tat_of).transpose()?.flatten();
                // A server that returned the item but no TAT would be saying the
                // item has none, which the conditions would have accepted.
                Ok(UpdateResult::Rejected(old))
            }
            Err(e) => Err(store_error("UpdateItem", e)),
        }
    }

    /// A consistent read of one key's TAT (0 when the item is missing).
    async fn get(&self, pk: &str) -> Result<Nanos, StoreError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(PARTITION_KEY, AttributeValue::S(pk.to_owned()))
            .consistent_read(true)
            .projection_expression("#tat")
            .expression_attribute_names("#tat", TAT_ATTRIBUTE)
            .send()
            .await
            .map_err(|e| store_error("GetItem", e))?;
        Ok(output
            .item()
            .map(tat_of)
            .transpose()?
            .flatten()
            .unwrap_or(0))
    }

    /// Creates the table (on-demand, TTL on [`TTL_ATTRIBUTE`]) and waits until
    /// it is active. Does nothing to a table that already exists.
    pub async fn create_table(&self) -> Result<(), StoreError> {
        let created = self
            .client
            .create_table()
            .table_name(&self.table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(PARTITION_KEY)
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .expect("name and type are set"),
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name(PARTITION_KEY)
                    .key_type(KeyType::Hash)
                    .build()
                    .expect("name and type are set"),
            )
            .send()
            .await;
        match created {
            Ok(_) => {}
            Err(SdkError::ServiceError(e)) if e.err().is_resource_in_use_exception() => {}
            Err(e) => return Err(store_error("CreateTable", e)),
        }
        self.wait_until_active().await?;
        let ttl = self
            .client
            .update_time_to_live()
            .table_name(&self.table)
            .time_to_live_specification(
                TimeToLiveSpecification::builder()
                    .enabled(true)
                    .attribute_name(TTL_ATTRIBUTE)
                    .build()
                    .expect("enabled and attribute are set"),
            )
            .send()
            .await;
        match ttl {
            Ok(_) => Ok(()),
            // Already enabled (AWS answers a repeated request with this error).
            Err(SdkError::ServiceError(e))
                if e.err()
                    .message()
                    .is_some_and(|m| m.contains("already enabled")) =>
            {
                Ok(())
            }
            Err(e) => Err(store_error("UpdateTimeToLive", e)),
        }
    }

    async fn wait_until_active(&self) -> Result<(), StoreError> {
        // Tables usually turn active within seconds; give up after two minutes.
        for _ in 0..240 {
            let table = self
                .client
                .describe_table()
                .table_name(&self.table)
                .send()
                .await
                .map_err(|e| store_error("DescribeTable", e))?;
            if table.table().and_then(|t| t.table_status()) == Some(&TableStatus::Active) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Err(StoreError::new(
            StoreErrorKind::Unavailable,
            format!(
                "table {} did not become active within two minutes",
                self.table
            ),
        ))
    }
}

impl Store for DynamoDbStore {
    async fn apply(&self, key: &Key<'_>, step: &Step) -> Result<Outcome, StoreError> {
        let applied = self.apply_counted(key, step).await;
        if applied.calls > 0 {
            self.call_counters[key.operation() as usize].increment(applied.calls.into());
        }
        applied.outcome
    }

    async fn load(&self, key: &Key<'_>) -> Result<Nanos, StoreError> {
        self.get(&key.to_string()).await
    }

    async fn remove(&self, key: &Key<'_>) -> Result<(), StoreError> {
        self.hints.remove_now(key);
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.client
            .delete_item()
            .table_name(&self.table)
            .key(PARTITION_KEY, AttributeValue::S(key.to_string()))
            .send()
            .await
            .map_err(|e| store_error("DeleteItem", e))?;
        Ok(())
    }
}

fn number(n: u64) -> AttributeValue {
    AttributeValue::N(n.to_string())
}

/// Epoch seconds at or after `tat`: when the item is certainly idle.
fn ttl_secs(tat: Nanos) -> u64 {
    tat.div_ceil(NANOS_PER_SEC)
}

/// The TAT in an item, if it has one.
fn tat_of(item: &HashMap<String, AttributeValue>) -> Result<Option<Nanos>, StoreError> {
    match item.get(TAT_ATTRIBUTE) {
        None => Ok(None),
        Some(AttributeValue::N(n)) => n.parse().map(Some).map_err(|_| {
            StoreError::new(
                StoreErrorKind::Protocol,
                format!("attribute {TAT_ATTRIBUTE} is not a whole number of nanoseconds: {n:?}"),
            )
        }),
        Some(other) => Err(StoreError::new(
            StoreErrorKind::Protocol,
            format!("attribute {TAT_ATTRIBUTE} is not a number: {other:?}"),
        )),
    }
}

/// Classifies an SDK failure for the failure policy and the logs.
fn store_error<E, R>(operation: &str, error: SdkError<E, R>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let kind = match &error {
        SdkError::TimeoutError(_) => StoreErrorKind::Timeout,
        SdkError::DispatchFailure(failure) if failure.is_timeout() => StoreErrorKind::Timeout,
        SdkError::DispatchFailure(_) => StoreErrorKind::Unavailable,
        SdkError::ServiceError(e) => match e.err().code() {
            Some(
                "ProvisionedThroughputExceededException"
                | "ThrottlingException"
                | "RequestLimitExceeded",
            ) => StoreErrorKind::Throttled,
            Some(
                "AccessDeniedException"
                | "UnrecognizedClientException"
                | "InvalidSignatureException"
                | "ExpiredTokenException"
                | "MissingAuthenticationTokenException",
            ) => StoreErrorKind::Unauthorized,
            _ => StoreErrorKind::Unavailable,
        },
        SdkError::ConstructionFailure(_) => StoreErrorKind::Unavailable,
        _ => StoreErrorKind::Protocol,
    };
    let detail = match &error {
        SdkError::ServiceError(e) => format!(
            "{}: {}",
            e.err().code().unwrap_or("service error"),
            e.err().message().unwrap_or("no message")
        ),
        other => format!("{}", aws_sdk_dynamodb::error::DisplayErrorContext(other)),
    };
    StoreError::new(kind, format!("{operation} failed: {detail}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_defaults_and_overrides() {
        assert_eq!(
            DynamoDbConfig::from_lookup(|_| None).unwrap(),
            DynamoDbConfig {
                table: "RateLimits".into(),
                timeout: Duration::from_millis(100)
            }
        );
        let config = DynamoDbConfig::from_lookup(|var| match var {
            "RATE_LIMIT_TABLE_NAME" => Some("prod-RateLimits.v2".into()),
            "RATE_LIMIT_TIMEOUT_MS" => Some("250".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(config.table, "prod-RateLimits.v2");
        assert_eq!(config.timeout, Duration::from_millis(250));
    }

    #[test]
    fn bad_configuration_names_the_variable() {
        for (var, value) in [
            ("RATE_LIMIT_TABLE_NAME", ""),
            ("RATE_LIMIT_TABLE_NAME", "ab"),
            ("RATE_LIMIT_TABLE_NAME", "rate limits"),
            ("RATE_LIMIT_TIMEOUT_MS", "0"),
            ("RATE_LIMIT_TIMEOUT_MS", "fast"),
            ("RATE_LIMIT_TIMEOUT_MS", "600000"),
        ] {
            let err = DynamoDbConfig::from_lookup(|v| (v == var).then(|| value.to_owned()))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(var) && err.contains(&format!("{value:?}")),
                "{err}"
            );
        }
    }

    #[test]
    fn ttls_round_up_to_whole_seconds() {
        assert_eq!(ttl_secs(1_000_000_000), 1);
        assert_eq!(ttl_secs(1_000_000_001), 2);
    }

    #[test]
    fn tats_must_be_whole_numbers() {
        let item = |v: AttributeValue| HashMap::from([(TAT_ATTRIBUTE.to_owned(), v)]);
        assert_eq!(
            tat_of(&item(AttributeValue::N("42".into()))).unwrap(),
            Some(42)
        );
        assert_eq!(tat_of(&HashMap::new()).unwrap(), None);
        assert!(tat_of(&item(AttributeValue::N("4.2".into()))).is_err());
        assert!(tat_of(&item(AttributeValue::S("42".into()))).is_err());
    }
}
