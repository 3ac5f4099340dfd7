//! The DynamoDB store of the rate limiter: the `RateLimits` table.
//!
//! One item per key (a kind and an identifier, [`PARTITION_KEY`]): every
//! policy counting the same identifier shares it, and each of their limits
//! is one number attribute of it, named after its slot (`heartbeat@60`,
//! `send_message@10`): its TAT in nanoseconds since the Unix epoch. A TTL in
//! epoch seconds ([`TTL_ATTRIBUTE`]) is set on every write past the point
//! where every bucket of the item is full again, so that DynamoDB deleting
//! it changes no decision.
//!
//! # One round trip per decision
//!
//! Update expressions have `+` but no `max`, so the GCRA rule is applied to
//! each bucket in one of two conditional shapes (see [`ratelimiter::gcra::Step`]):
//! - *idle*: `SET b = :idle_target` if `b` is missing or `b <= :floor`;
//! - *busy*: `SET b = if_not_exists(b, :now) + :increment` if `b` is
//!   missing or `:floor < b <= :busy_ceiling`. It is relative, so concurrent
//!   writers on a hot key all succeed while capacity lasts.
//!
//! `:floor` is the step's [`busy_floor`](ratelimiter::gcra::Step::busy_floor):
//! `now`, less the policy's tolerance if it has one.
//!
//! All buckets of a request go in one `UpdateItem`, whose condition is the
//! conjunction of theirs: they are checked and written together. A failed
//! condition returns the old item (`ALL_OLD`), which says either "denied"
//! (no further call) or which shapes are right (one more call). The first
//! shapes come from the hints of the service's deny cache (a service built
//! with [`ratelimiter::Builder::build`]).
//!
//! Table administration (creation, the one-time migration from the
//! one-item-per-operation layout) is in [`admin`].
//!
//! ```no_run
//! use ratelimiter::{Builder, PolicyId};
//! use ratelimiter_dynamodb::DynamoDbStore;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // Once per Lambda container, at start-up.
//! let limiter = Builder::from_env()?.build(DynamoDbStore::from_env().await?);
//!
//! // Per request.
//! let verdict = limiter.decide((PolicyId::HEARTBEAT, "L0SM9cOFvHcCIhw=")).await?;
//! if !verdict.allowed() {
//!     println!("retry in {} s", verdict.retry_after_secs());
//! }
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::Builder as ConfigOverride;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{
    AttributeValue, ConsumedCapacity, ReturnConsumedCapacity, ReturnValue,
    ReturnValuesOnConditionCheckFailure,
};
use ratelimiter::config::{ConfigError, parse_positive};
use ratelimiter::gcra::{Nanos, Outcome};
use ratelimiter::key::{Key, Slot};
use ratelimiter::lease::{Lease, Seats};
use ratelimiter::store::{Applied, Capacity, Op, Store, StoreError, StoreErrorKind};

pub mod admin;
mod client;

pub use client::{ClientOptions, client, client_with, https_client};

/// The table name when `RATE_LIMIT_TABLE_NAME` is not set.
pub const DEFAULT_TABLE: &str = "RateLimits";
/// The variable that names the table.
pub const TABLE_VAR: &str = "RATE_LIMIT_TABLE_NAME";
/// The variable that bounds each DynamoDB call, in milliseconds.
pub const TIMEOUT_VAR: &str = "RATE_LIMIT_TIMEOUT_MS";
/// The default bound on each DynamoDB call.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(100);
/// The variable that bounds the first call of a container, which sets up
/// its connection (TCP and TLS), in milliseconds.
pub const CONNECT_TIMEOUT_VAR: &str = "RATE_LIMIT_CONNECT_TIMEOUT_MS";
/// The default bound on that first call.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The partition key attribute (a string: the key's [`Key`] form).
pub const PARTITION_KEY: &str = "pk";
/// The TTL attribute (a number: seconds since the Unix epoch).
pub const TTL_ATTRIBUTE: &str = "ttl";

/// The most DynamoDB calls one decision may make: a shape, the other shape,
/// a consistent read when the server returned no old item, and one more
/// attempt if another writer raced in between.
pub const MAX_CALLS_PER_DECISION: u32 = 4;

/// The counter of DynamoDB requests made for decisions, per policy
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

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// Where the table is and how long calls may take, from the environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DynamoDbConfig {
    /// The table's name.
    pub table: String,
    /// The bound on each call (connect, attempt and whole operation).
    pub timeout: Duration,
    /// What a new container's first call may add to set up its connection
    /// (see [`DynamoDbStore::with_connect_timeout`]).
    pub connect_timeout: Duration,
}

impl Default for DynamoDbConfig {
    fn default() -> Self {
        Self {
            table: DEFAULT_TABLE.to_owned(),
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
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
        if let Some(ms) = lookup(CONNECT_TIMEOUT_VAR) {
            config.connect_timeout =
                Duration::from_millis(parse_positive(CONNECT_TIMEOUT_VAR, &ms, 60_000)?);
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
            value: name.chars().take(80).collect(),
            expected: "a DynamoDB table name (3 to 255 characters of a-z, A-Z, 0-9, '_', '-', '.')",
        })
    }
}

/// The two conditional update shapes of one bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    Idle,
    Busy,
}

impl Shape {
    /// The shape a decision's first call tries for `op`'s bucket: it has
    /// only the hints to go by.
    fn hinted(op: &Op<'_>) -> Self {
        if op.likely_busy() {
            Shape::Busy
        } else {
            Shape::Idle
        }
    }

    /// The shape that applies to `op`'s bucket when its TAT is `tat`.
    fn for_tat(op: &Op<'_>, tat: Nanos) -> Self {
        if tat > op.step.busy_floor() {
            Shape::Busy
        } else {
            Shape::Idle
        }
    }
}

/// A [`Store`] on a DynamoDB table. It only persists: the service built on
/// it ([`ratelimiter::Builder::build`]) keeps the deny cache and the hints
/// that pick the first shape.
#[derive(Debug)]
pub struct DynamoDbStore {
    client: Client,
    table: String,
    calls: AtomicU64,
    /// The client's timeouts stretched by the connect timeout, for every
    /// call until one has answered; `None` without a connect timeout. Built
    /// once (see [`DynamoDbStore::with_connect_timeout`]), not per call.
    /// Boxed: hundreds of bytes that most stores never use.
    first_call: Option<Box<ConfigOverride>>,
    /// Whether a call has answered (so a connection is in the pool).
    connected: std::sync::atomic::AtomicBool,
}

/// Sends the fluent request `$request` of `$store` (an `UpdateItem` or a
/// `GetItem`): while no call of the store has answered, with the first-call
/// timeouts, so that whichever call a new container makes first (a
/// decision, a refund, a status read, a reset) may set up its connection;
/// then notes whether it was answered. Evaluates to the SDK's result.
///
/// A macro because the SDK's fluent builders share no trait that could
/// name `customize().config_override(..).send()` generically.
macro_rules! send {
    ($store:expr, $request:expr) => {{
        let store: &DynamoDbStore = $store;
        let request = $request;
        store.calls.fetch_add(1, Ordering::Relaxed);
        let sent = match store.first_call_override() {
            Some(config) => request.customize().config_override(config).send().await,
            None => request.send().await,
        };
        store.note_answer(&sent);
        sent
    }};
}

/// What a decision's calls cost so far.
#[derive(Default)]
struct Spent {
    calls: u32,
    capacity: Capacity,
}

/// The outcome of one `UpdateItem`.
enum UpdateResult {
    /// Written; `tats` holds the new TATs, and the lease's set is `members`.
    Written { members: Vec<String> },
    /// The condition failed; `tats` holds the old TATs, and `members` the
    /// lease's set, when the server returned the old item.
    Rejected {
        returned: bool,
        members: Vec<String>,
    },
}

impl DynamoDbStore {
    /// A store on `table` through `client`.
    ///
    /// Build the client with [`client`] so that every call is bounded and no
    /// consuming call is retried.
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
            calls: AtomicU64::new(0),
            first_call: None,
            connected: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// A store on the table the environment names ([`TABLE_VAR`]), with
    /// calls bounded by [`TIMEOUT_VAR`], through the standard AWS
    /// environment (region, credentials, `AWS_ENDPOINT_URL_DYNAMODB`).
    pub async fn from_env() -> Result<Self, ConfigError> {
        Ok(Self::with_config(&DynamoDbConfig::from_env()?).await)
    }

    /// A store on `config`'s table through the standard AWS environment,
    /// with calls bounded by `config`'s timeout.
    pub async fn with_config(config: &DynamoDbConfig) -> Self {
        let options = ClientOptions {
            timeout: config.timeout,
            ..ClientOptions::default()
        };
        Self::new(client(&options).await, config.table.clone())
            .with_connect_timeout(config.connect_timeout)
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The same store, giving the first call that has to set up a
    /// connection (TCP and TLS) `connect_timeout` more, whichever it is (a
    /// decision, a status read, a refund or a reset): a new container's
    /// first decision then does not fail open on a healthy table because of
    /// its handshake, nor does its first read or reset fail. Every call has
    /// the extra time until one has answered; after that, every call has
    /// the client's own timeout.
    #[must_use]
    pub fn with_connect_timeout(mut self, connect_timeout: Duration) -> Self {
        self.first_call = if connect_timeout.is_zero() {
            None
        } else {
            // The client's configuration never changes, so the stretched
            // timeouts can be worked out here once.
            let client_timeout = self
                .client
                .config()
                .timeout_config()
                .and_then(|t| t.operation_attempt_timeout())
                .unwrap_or(DEFAULT_TIMEOUT);
            let timeout = client_timeout + connect_timeout;
            let timeouts = aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(connect_timeout)
                .operation_attempt_timeout(timeout)
                .operation_timeout(timeout)
                .build();
            Some(Box::new(ConfigOverride::default().timeout_config(timeouts)))
        };
        self
    }

    /// The first-call timeouts while no call has answered yet, else `None`
    /// (the client's own timeouts).
    fn first_call_override(&self) -> Option<ConfigOverride> {
        if self.connected.load(Ordering::Relaxed) {
            return None;
        }
        // A clone, as the SDK takes the override by value: only until the
        // first answer, never on a warm container's calls.
        self.first_call.as_deref().cloned()
    }

    /// Notes that a call was answered, whatever the answer: a connection is
    /// then set up, and later calls have the client's own timeouts. A
    /// timeout or a failure to dispatch is no answer.
    fn note_answer<T, E, R>(&self, sent: &Result<T, SdkError<E, R>>) {
        if !matches!(
            sent,
            Err(SdkError::TimeoutError(_) | SdkError::DispatchFailure(_))
        ) {
            self.connected.store(true, Ordering::Relaxed);
        }
    }

    /// The client the store calls DynamoDB with.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// DynamoDB requests made since the store was created.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    async fn apply_inner(
        &self,
        key: &Key<'_>,
        ops: &[Op<'_>],
        lease: Option<&Lease<'_>>,
        retention: Nanos,
        tats: &mut [Nanos],
        spent: &mut Spent,
    ) -> Result<(Outcome, Seats), StoreError> {
        let now = match (ops.first(), lease) {
            (Some(op), _) => op.step.now(),
            (None, Some(lease)) => lease.now,
            (None, None) => 0,
        };
        let pk = key.to_string();
        // Every bucket of the item is full again by then, whatever wrote
        // it, and the lease over.
        let keep_until = ops
            .iter()
            .map(|op| op.step.busy_ceiling() + op.step.increment())
            .chain(lease.map(Lease::expires))
            .fold(now.saturating_add(retention), Nanos::max);
        let mut first_call = true;
        // The lease to add: none once its holder is found to hold it
        // already, whose seats are then kept here.
        let mut taking = lease;
        let mut held: Option<Seats> = None;
        loop {
            if let (Some(seats), true) = (held, ops.is_empty()) {
                // Nothing to write: the holder has its seat.
                return Ok((Outcome::Allowed, seats));
            }
            spent.calls += 1;
            let result = self
                .update(
                    &pk,
                    ops,
                    taking,
                    now,
                    first_call,
                    keep_until,
                    tats,
                    &mut spent.capacity,
                )
                .await?;
            first_call = false;
            let members = match result {
                UpdateResult::Written { members } => {
                    let seats = match (taking, held) {
                        (Some(lease), _) => Seats {
                            // The condition said it was not held before.
                            fresh: true,
                            ..lease.seats(members.iter().map(String::as_str))
                        },
                        (None, Some(seats)) => seats,
                        (None, None) => Seats::default(),
                    };
                    return Ok((Outcome::Allowed, seats));
                }
                UpdateResult::Rejected {
                    returned: true,
                    members,
                } => members,
                UpdateResult::Rejected {
                    returned: false, ..
                } => {
                    spent.calls += 1;
                    let slots: Vec<&Slot> = ops.iter().map(|op| op.slot).collect();
                    self.get(
                        &pk,
                        &slots,
                        tats,
                        lease.map(|l| l.slot),
                        &mut spent.capacity,
                    )
                    .await?
                }
            };
            let seats = match (lease, held) {
                (_, Some(seats)) => seats,
                (Some(lease), None) => lease.seats(members.iter().map(String::as_str)),
                (None, None) => Seats::default(),
            };
            let denied = ops
                .iter()
                .zip(tats.iter())
                .any(|(op, &tat)| op.step.apply(tat).0 == Outcome::Denied);
            if denied || lease.is_some_and(|lease| !lease.fits(seats)) {
                return Ok((Outcome::Denied, seats));
            }
            if taking.is_some() && seats.mine {
                // Asked again by its holder: the seat is there already;
                // the steps alone are written (a rare path: one more call).
                taking = None;
                held = Some(seats);
            }
            if spent.calls >= MAX_CALLS_PER_DECISION - 1 {
                return Err(StoreError::new(
                    StoreErrorKind::Contended,
                    format!(
                        "gave up after {} calls: the item kept changing between reads and writes",
                        spent.calls
                    ),
                ));
            }
            if let Some(lease) = taking {
                // The set is full of leases that ended: forget those (the
                // write's condition counts every member), then try again.
                let ended: Vec<String> = members
                    .into_iter()
                    .filter(|m| !Lease::live_at(m, lease.now))
                    .collect();
                if !ended.is_empty() {
                    spent.calls += 1;
                    spent.capacity += self.forget(&pk, lease.slot, ended).await?;
                }
            }
            // `tats` now holds what the next call's shapes follow from.
        }
    }

    /// Removes `members` from the lease set `slot` of the item `pk`, if
    /// the item is there.
    async fn forget(
        &self,
        pk: &str,
        slot: &Slot,
        members: Vec<String>,
    ) -> Result<Capacity, StoreError> {
        let request = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(PARTITION_KEY, AttributeValue::S(pk.to_owned()))
            .expression_attribute_names("#pk", PARTITION_KEY)
            .expression_attribute_names("#l", slot.name())
            .expression_attribute_values(":m", AttributeValue::Ss(members))
            .update_expression("DELETE #l :m")
            // Never create an empty item for a key that has none.
            .condition_expression("attribute_exists(#pk)")
            .return_consumed_capacity(ReturnConsumedCapacity::Total);
        // A failed condition: the item is gone, and its leases with it.
        written_unless_changed(send!(self, request))
    }

    /// One conditional `UpdateItem` on every bucket of `ops` at `now` (the
    /// first op's), each in its shape: from the hints on the decision's
    /// first call, from `tats` on a later one. Writes the new TATs (or the
    /// old ones, if returned) to `tats`.
    #[allow(clippy::too_many_arguments)]
    async fn update(
        &self,
        pk: &str,
        ops: &[Op<'_>],
        lease: Option<&Lease<'_>>,
        now: Nanos,
        first_call: bool,
        keep_until: Nanos,
        tats: &mut [Nanos],
        capacity: &mut Capacity,
    ) -> Result<UpdateResult, StoreError> {
        let mut set = String::from("SET ");
        let mut condition = String::new();
        let mut request = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(PARTITION_KEY, AttributeValue::S(pk.to_owned()))
            .set_expression_attribute_names(bucket_names(ops.iter().map(|op| op.slot)))
            .expression_attribute_names("#ttl", TTL_ATTRIBUTE)
            .expression_attribute_values(":ttl", number(ttl_secs(keep_until)))
            .return_values(ReturnValue::UpdatedNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .return_consumed_capacity(ReturnConsumedCapacity::Total);
        // DynamoDB refuses a value no expression uses: `:now` only goes
        // with a busy shape.
        let mut uses_now = false;
        for (i, op) in ops.iter().enumerate() {
            if i > 0 {
                condition.push_str(" AND ");
            }
            // A later call follows a rejected one, which left the bucket's
            // TAT in `tats` (from the returned old item or the consistent
            // read after it; 0 when missing): that TAT picks the shape.
            let shape = if first_call {
                Shape::hinted(op)
            } else {
                Shape::for_tat(op, tats[i])
            };
            request =
                request.expression_attribute_values(format!(":f{i}"), number(op.step.busy_floor()));
            match shape {
                Shape::Idle => {
                    let _ = write!(set, "#b{i} = :t{i}, ");
                    let _ = write!(condition, "(attribute_not_exists(#b{i}) OR #b{i} <= :f{i})");
                    request = request.expression_attribute_values(
                        format!(":t{i}"),
                        number(op.step.idle_target()),
                    );
                }
                Shape::Busy => {
                    uses_now = true;
                    let _ = write!(set, "#b{i} = if_not_exists(#b{i}, :now) + :i{i}, ");
                    let _ = write!(
                        condition,
                        "(attribute_not_exists(#b{i}) OR (#b{i} > :f{i} AND #b{i} <= :c{i}))"
                    );
                    request = request
                        .expression_attribute_values(format!(":i{i}"), number(op.step.increment()))
                        .expression_attribute_values(
                            format!(":c{i}"),
                            number(op.step.busy_ceiling()),
                        );
                }
            }
        }
        if uses_now {
            request = request.expression_attribute_values(":now", number(now));
        }
        set.push_str("#ttl = :ttl");
        if let Some(lease) = lease {
            // The seat: taken if the set has room for one more and does
            // not hold this lease already (the same connection asking
            // again, which the caller then learns from the old item).
            if !condition.is_empty() {
                condition.push_str(" AND ");
            }
            condition
                .push_str("NOT contains(#l, :m) AND (attribute_not_exists(#l) OR size(#l) < :cap)");
            set.push_str(" ADD #l :lm");
            let member = lease.member();
            request = request
                .expression_attribute_names("#l", lease.slot.name())
                .expression_attribute_values(":cap", number(u64::from(lease.concurrent)))
                .expression_attribute_values(":m", AttributeValue::S(member.clone()))
                .expression_attribute_values(":lm", AttributeValue::Ss(vec![member]));
        }
        let request = request
            .update_expression(set)
            .condition_expression(condition);
        let lease_slot = lease.map(|lease| lease.slot);
        match send!(self, request) {
            Ok(output) => {
                capacity.write += units(output.consumed_capacity(), 1);
                let item = output.attributes().ok_or_else(|| {
                    StoreError::new(
                        StoreErrorKind::Protocol,
                        "UpdateItem succeeded but returned no attributes",
                    )
                })?;
                for (op, tat) in ops.iter().zip(tats.iter_mut()) {
                    *tat = tat_of(item, op.slot)?.ok_or_else(|| {
                        StoreError::new(
                            StoreErrorKind::Protocol,
                            format!("UpdateItem succeeded but returned no {}", op.slot.name()),
                        )
                    })?;
                }
                Ok(UpdateResult::Written {
                    members: members_of(item, lease_slot)?,
                })
            }
            Err(SdkError::ServiceError(e))
                if matches!(e.err(), UpdateItemError::ConditionalCheckFailedException(_)) =>
            {
                let UpdateItemError::ConditionalCheckFailedException(failed) = e.err() else {
                    unreachable!("matched above")
                };
                // Billed, but not reported: the item's size says how much.
                capacity.write += failed.item().map_or(1, write_units_of);
                match failed.item() {
                    // A missing bucket in a returned item has TAT 0: the
                    // conditions accept it, so another one failed.
                    Some(item) => {
                        for (op, tat) in ops.iter().zip(tats.iter_mut()) {
                            *tat = tat_of(item, op.slot)?.unwrap_or(0);
                        }
                        Ok(UpdateResult::Rejected {
                            returned: true,
                            members: members_of(item, lease_slot)?,
                        })
                    }
                    None => Ok(UpdateResult::Rejected {
                        returned: false,
                        members: Vec::new(),
                    }),
                }
            }
            Err(e) => Err(store_error("UpdateItem", e)),
        }
    }

    /// A consistent read of some buckets' TATs (0 when missing), and of
    /// the members of the lease set `leases`, if asked.
    async fn get(
        &self,
        pk: &str,
        slots: &[&Slot],
        tats: &mut [Nanos],
        leases: Option<&Slot>,
        capacity: &mut Capacity,
    ) -> Result<Vec<String>, StoreError> {
        let mut request = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(PARTITION_KEY, AttributeValue::S(pk.to_owned()))
            .consistent_read(true)
            .return_consumed_capacity(ReturnConsumedCapacity::Total);
        if !slots.is_empty() || leases.is_some() {
            let mut projection = bucket_list(slots.len());
            if let Some(leases) = leases {
                if !projection.is_empty() {
                    projection.push_str(", ");
                }
                projection.push_str("#l");
                request = request.expression_attribute_names("#l", leases.name());
            }
            request = request.projection_expression(projection);
            for (name, slot) in bucket_names(slots.iter().copied()).unwrap_or_default() {
                request = request.expression_attribute_names(name, slot);
            }
        }
        let output = send!(self, request).map_err(|e| store_error("GetItem", e))?;
        capacity.read += units(output.consumed_capacity(), 1);
        for (slot, tat) in slots.iter().zip(tats.iter_mut()) {
            *tat = match output.item() {
                Some(item) => tat_of(item, slot)?.unwrap_or(0),
                None => 0,
            };
        }
        match output.item() {
            Some(item) => members_of(item, leases),
            None => Ok(Vec::new()),
        }
    }
}

impl Store for DynamoDbStore {
    const CALLS_METRIC: Option<&'static str> = Some(CALLS_METRIC);

    async fn apply(
        &self,
        key: &Key<'_>,
        ops: &[Op<'_>],
        lease: Option<&Lease<'_>>,
        retention: Nanos,
        tats: &mut [Nanos],
    ) -> Applied {
        let mut spent = Spent::default();
        let (outcome, seats) = match self
            .apply_inner(key, ops, lease, retention, tats, &mut spent)
            .await
        {
            Ok((outcome, seats)) => (Ok(outcome), seats),
            Err(error) => (Err(error), Seats::default()),
        };
        Applied {
            outcome,
            calls: spent.calls,
            capacity: spent.capacity,
            seats,
        }
    }

    async fn leases(&self, key: &Key<'_>, slot: &Slot) -> Result<Vec<String>, StoreError> {
        self.get(
            &key.to_string(),
            &[],
            &mut [],
            Some(slot),
            &mut Capacity::default(),
        )
        .await
    }

    async fn release(&self, key: &Key<'_>, lease: &Lease<'_>) -> Result<Capacity, StoreError> {
        self.forget(&key.to_string(), lease.slot, vec![lease.member()])
            .await
    }

    async fn refund(&self, key: &Key<'_>, ops: &[Op<'_>]) -> Result<Capacity, StoreError> {
        let mut request = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(PARTITION_KEY, AttributeValue::S(key.to_string()))
            .set_expression_attribute_names(bucket_names(ops.iter().map(|op| op.slot)));
        let mut set = String::from("SET ");
        let mut condition = String::new();
        for (i, op) in ops.iter().enumerate() {
            if i > 0 {
                set.push_str(", ");
                condition.push_str(" AND ");
            }
            let _ = write!(set, "#b{i} = #b{i} - :i{i}");
            // Only where the bucket still holds what the step took.
            let _ = write!(condition, "#b{i} >= :t{i}");
            request = request
                .expression_attribute_values(format!(":i{i}"), number(op.step.increment()))
                .expression_attribute_values(format!(":t{i}"), number(op.step.refund_floor()));
        }
        let request = request
            .update_expression(set)
            .condition_expression(condition)
            .return_consumed_capacity(ReturnConsumedCapacity::Total);
        // A failed condition: reset or refilled since, nothing to give back.
        written_unless_changed(send!(self, request))
    }

    async fn load(
        &self,
        key: &Key<'_>,
        slots: &[&Slot],
        tats: &mut [Nanos],
    ) -> Result<(), StoreError> {
        self.get(
            &key.to_string(),
            slots,
            tats,
            None,
            &mut Capacity::default(),
        )
        .await?;
        Ok(())
    }

    async fn remove(&self, key: &Key<'_>, slots: &[&Slot]) -> Result<(), StoreError> {
        let request = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(PARTITION_KEY, AttributeValue::S(key.to_string()))
            .set_expression_attribute_names(bucket_names(slots.iter().copied()))
            .expression_attribute_names("#pk", PARTITION_KEY)
            .update_expression(format!("REMOVE {}", bucket_list(slots.len())))
            // Never create an empty item for a key that has none.
            .condition_expression("attribute_exists(#pk)");
        // A failed condition: the key has no item, so nothing to forget.
        done_unless_changed(send!(self, request))
    }
}

/// The expression attribute names of a request's buckets: `#b0`, `#b1`,
/// ... for `slots` in order, each standing for its slot's name (which may
/// hold characters, like `@`, that expressions cannot). `None` for no
/// slots, so that a request without buckets sends no empty map (which
/// DynamoDB refuses); names added after it then make the whole map.
fn bucket_names<'a>(slots: impl Iterator<Item = &'a Slot>) -> Option<HashMap<String, String>> {
    let names: HashMap<String, String> = slots
        .enumerate()
        .map(|(i, slot)| (format!("#b{i}"), slot.name().to_owned()))
        .collect();
    (!names.is_empty()).then_some(names)
}

/// `#b0, #b1, ...`: the names of [`bucket_names`] for `n` buckets, as a
/// projection or `REMOVE` list.
fn bucket_list(n: usize) -> String {
    let mut list = String::new();
    for i in 0..n {
        if i > 0 {
            list.push_str(", ");
        }
        let _ = write!(list, "#b{i}");
    }
    list
}

/// The result of a conditional `UpdateItem` whose failed condition means
/// there is nothing to do (the item changed or is missing, so the update
/// no longer applies): `Ok` for that as for a success.
pub(crate) fn done_unless_changed<T, R>(
    sent: Result<T, SdkError<UpdateItemError, R>>,
) -> Result<(), StoreError>
where
    R: std::fmt::Debug + Send + Sync + 'static,
{
    match sent {
        Ok(_) => Ok(()),
        Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => Ok(()),
        Err(e) => Err(store_error("UpdateItem", e)),
    }
}

/// [`done_unless_changed`] for a write that asked for its consumed
/// capacity: what it consumed (a failed condition is billed one unit, at
/// least, and reported none).
fn written_unless_changed<R>(
    sent: Result<
        aws_sdk_dynamodb::operation::update_item::UpdateItemOutput,
        SdkError<UpdateItemError, R>,
    >,
) -> Result<Capacity, StoreError>
where
    R: std::fmt::Debug + Send + Sync + 'static,
{
    match sent {
        Ok(output) => Ok(Capacity {
            write: units(output.consumed_capacity(), 1),
            read: 0,
        }),
        Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => {
            Ok(Capacity { write: 1, read: 0 })
        }
        Err(e) => Err(store_error("UpdateItem", e)),
    }
}

/// Whole capacity units of a `reported` consumption, or `otherwise` when
/// the server reported none.
fn units(reported: Option<&ConsumedCapacity>, otherwise: u32) -> u32 {
    reported
        .and_then(ConsumedCapacity::capacity_units)
        .map_or(otherwise, |units| {
            units.ceil().clamp(0.0, f64::from(u32::MAX)) as u32
        })
}

/// The write units a write of `item` is billed: one per KB of its size, at
/// least one. The size counts each attribute's name and value as DynamoDB
/// does, numbers approximately (about one byte per two digits).
fn write_units_of(item: &HashMap<String, AttributeValue>) -> u32 {
    let size: usize = item
        .iter()
        .map(|(name, value)| {
            name.len()
                + match value {
                    AttributeValue::S(text) => text.len(),
                    AttributeValue::N(digits) => digits.len().div_ceil(2) + 1,
                    AttributeValue::Ss(members) => members.iter().map(String::len).sum(),
                    _ => 1,
                }
        })
        .sum();
    u32::try_from(size.div_ceil(1024).max(1)).unwrap_or(u32::MAX)
}

fn number(n: u64) -> AttributeValue {
    AttributeValue::N(n.to_string())
}

/// Epoch seconds at or after `tat`: when the item is certainly idle.
fn ttl_secs(tat: Nanos) -> u64 {
    tat.div_ceil(NANOS_PER_SEC)
}

/// The members of the lease set `slot` in an item (none without a slot).
fn members_of(
    item: &HashMap<String, AttributeValue>,
    slot: Option<&Slot>,
) -> Result<Vec<String>, StoreError> {
    match slot.and_then(|slot| item.get(slot.name())) {
        None => Ok(Vec::new()),
        Some(AttributeValue::Ss(members)) => Ok(members.clone()),
        Some(other) => Err(StoreError::new(
            StoreErrorKind::Protocol,
            format!("a lease set is not a string set: {other:?}"),
        )),
    }
}

/// The TAT of `slot` in an item, if it has one.
fn tat_of(
    item: &HashMap<String, AttributeValue>,
    slot: &Slot,
) -> Result<Option<Nanos>, StoreError> {
    number_of(item, slot.name())
}

/// A whole-number attribute of an item, if it has one.
pub(crate) fn number_of(
    item: &HashMap<String, AttributeValue>,
    name: &str,
) -> Result<Option<Nanos>, StoreError> {
    match item.get(name) {
        None => Ok(None),
        Some(AttributeValue::N(n)) => n.parse().map(Some).map_err(|_| {
            StoreError::new(
                StoreErrorKind::Protocol,
                format!("attribute {name} is not a whole number of nanoseconds: {n:?}"),
            )
        }),
        Some(other) => Err(StoreError::new(
            StoreErrorKind::Protocol,
            format!("attribute {name} is not a number: {other:?}"),
        )),
    }
}

/// Classifies an SDK failure for the failure policy and the logs.
pub(crate) fn store_error<E, R>(operation: &str, error: SdkError<E, R>) -> StoreError
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
                timeout: Duration::from_millis(100),
                connect_timeout: Duration::from_secs(1),
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
            ("RATE_LIMIT_CONNECT_TIMEOUT_MS", "0"),
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
        let slot = Slot::new("heartbeat@60");
        let item = |v: AttributeValue| HashMap::from([("heartbeat@60".to_owned(), v)]);
        assert_eq!(
            tat_of(&item(AttributeValue::N("42".into())), &slot).unwrap(),
            Some(42)
        );
        assert_eq!(tat_of(&HashMap::new(), &slot).unwrap(), None);
        assert!(tat_of(&item(AttributeValue::N("4.2".into())), &slot).is_err());
        assert!(tat_of(&item(AttributeValue::S("42".into())), &slot).is_err());
    }
}
