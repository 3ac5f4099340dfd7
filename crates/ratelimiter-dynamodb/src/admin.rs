//! Table administration: creating the table, and the one-time migration of
//! items written in the layout of one item per operation.
//!
//! Before policies, each of the seed's operations had an item of its own,
//! `<operation>#<kind>#<identifier>` with the TAT in `tat`. Now one item per
//! kind and identifier holds every policy's buckets, so those items are no
//! longer read: nothing misreads them, but the buckets they hold start full
//! again. Their TATs are at most an hour ahead, so after an hour they no
//! longer matter and TTL deletes them. To carry the state over instead, run
//! [`migrate_legacy_items`] (`ratelimit --store dynamodb migrate`) once,
//! right after deploying.

use std::time::Duration;

use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType, TableStatus, TimeToLiveSpecification,
};
use ratelimiter::key::{Key, KeySecret, Kind};
use ratelimiter::policy::BUILTINS;
use ratelimiter::store::{StoreError, StoreErrorKind};

use crate::{
    DynamoDbStore, PARTITION_KEY, TTL_ATTRIBUTE, done_unless_changed, number, number_of,
    store_error, ttl_secs,
};

/// The TAT attribute of the layout of one item per operation.
pub const LEGACY_TAT_ATTRIBUTE: &str = "tat";

impl DynamoDbStore {
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

    /// Whether the table exists.
    pub async fn table_exists(&self) -> bool {
        self.client
            .describe_table()
            .table_name(&self.table)
            .send()
            .await
            .is_ok()
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

/// What [`migrate_legacy_items`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Migration {
    /// Items of the old layout carried over and deleted.
    pub migrated: u64,
    /// Items of the old layout whose bucket was already full: deleted only.
    pub expired: u64,
    /// Items with the old layout's TAT attribute that were left as they
    /// are (old items carry a TTL, which deletes them in time): those whose
    /// key is not `<operation>#<kind>#<id>` or `<operation>#<kind>!<digest>`
    /// for one of the seed's operations; and, of those whose bucket was not
    /// yet full, the ones whose kind is not a valid name or whose
    /// identifier the old key held as a digest (identifiers over 256
    /// bytes), whether or not a key secret is given.
    pub skipped: u64,
}

/// Carries every item of the one-item-per-operation layout into the
/// current layout, then deletes it. Safe to run while functions serve
/// traffic, and to run again: a bucket only ever takes a TAT larger than
/// the one it has. With `secret`, identifiers are carried over as their
/// keyed digests, as the functions will look them up.
pub async fn migrate_legacy_items(
    store: &DynamoDbStore,
    now_secs: u64,
    secret: Option<&KeySecret>,
) -> Result<Migration, StoreError> {
    let mut migration = Migration::default();
    let mut start = None;
    loop {
        let page = store
            .client
            .scan()
            .table_name(&store.table)
            .filter_expression("attribute_exists(#tat)")
            .expression_attribute_names("#tat", LEGACY_TAT_ATTRIBUTE)
            .set_exclusive_start_key(start.take())
            .send()
            .await
            .map_err(|e| store_error("Scan", e))?;
        for item in page.items() {
            let Some(AttributeValue::S(pk)) = item.get(PARTITION_KEY) else {
                continue;
            };
            let Some(tat) = number_of(item, LEGACY_TAT_ATTRIBUTE)? else {
                continue;
            };
            match legacy_target(pk) {
                None => migration.skipped += 1,
                Some(_) if tat <= now_secs.saturating_mul(1_000_000_000) => {
                    store.delete(pk).await?;
                    migration.expired += 1;
                }
                Some((slot, kind, id)) => {
                    let (Id::Plain(id), Ok(kind)) = (id, Kind::new(kind)) else {
                        migration.skipped += 1;
                        continue;
                    };
                    // A plain old id is at most 256 bytes (longer ones were
                    // stored as digests), so without a secret this is the key
                    // the functions build for it.
                    let key = Key::with_secret(&kind, id, secret);
                    store.raise(&key.to_string(), &slot, tat).await?;
                    store.delete(pk).await?;
                    migration.migrated += 1;
                }
            }
        }
        match page.last_evaluated_key() {
            Some(last) => start = Some(last.clone()),
            None => return Ok(migration),
        }
    }
}

/// How an old key held its identifier.
enum Id<'a> {
    Plain(&'a str),
    Digest,
}

/// The slot, kind and identifier an old-layout key maps to.
fn legacy_target(pk: &str) -> Option<(String, &str, Id<'_>)> {
    let (operation, rest) = pk.split_once('#')?;
    let builtin = BUILTINS.iter().find(|b| b.name == operation)?;
    // The operation's one bucket is its built-in policy's one limit, named
    // by the core's rule. Building the policy is cheap next to the calls
    // each item costs.
    let slot = builtin.policy().limits()[0].slot().name().to_owned();
    if let Some((kind, id)) = rest.split_once('#')
        && !kind.contains('!')
    {
        return Some((slot, kind, Id::Plain(id)));
    }
    let (kind, _) = rest.split_once('!')?;
    Some((slot, kind, Id::Digest))
}

impl DynamoDbStore {
    /// Sets a bucket to `tat` unless it is already later, and makes the
    /// item's TTL at least `tat`'s.
    async fn raise(&self, pk: &str, slot: &str, tat: u64) -> Result<(), StoreError> {
        self.raise_attribute(pk, slot, tat).await?;
        self.raise_attribute(pk, TTL_ATTRIBUTE, ttl_secs(tat)).await
    }

    /// Sets the number attribute `name` to `value` unless it is already larger.
    async fn raise_attribute(&self, pk: &str, name: &str, value: u64) -> Result<(), StoreError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(PARTITION_KEY, AttributeValue::S(pk.to_owned()))
            .update_expression("SET #a = :v")
            .condition_expression("attribute_not_exists(#a) OR #a < :v")
            .expression_attribute_names("#a", name)
            .expression_attribute_values(":v", number(value))
            .send()
            .await;
        // A failed condition: already at least `value`.
        done_unless_changed(result)
    }

    async fn delete(&self, pk: &str) -> Result<(), StoreError> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .key(PARTITION_KEY, AttributeValue::S(pk.to_owned()))
            .send()
            .await
            .map_err(|e| store_error("DeleteItem", e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_keys_map_to_their_slots() {
        let Some((slot, kind, Id::Plain(id))) = legacy_target("heartbeat#connection#L0S#x=") else {
            panic!("a plain old key maps")
        };
        assert_eq!(
            (slot.as_str(), kind, id),
            ("heartbeat@60", "connection", "L0S#x=")
        );
        let Some((slot, kind, Id::Digest)) = legacy_target("session_create#user!00ff") else {
            panic!("a digest old key maps")
        };
        assert_eq!((slot.as_str(), kind), ("session_create@3600", "user"));
        assert!(legacy_target("ip#203.0.113.7").is_none());
        assert!(legacy_target("nonsense").is_none());
    }
}
