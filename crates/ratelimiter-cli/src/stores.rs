//! Opening the store a command line asks for.

use ratelimiter::gcra::Nanos;
use ratelimiter::store::{Applied, Op, Outcome};
use ratelimiter::{Cached, Key, MemoryStore, Slot, Store, StoreError};
use ratelimiter_dynamodb::{
    ClientOptions, DynamoDbConfig, DynamoDbStore, client, validate_table_name,
};
use ratelimiter_embedded::OpenError;

use crate::CliError;
use crate::args::{GlobalOptions, StoreKind};

/// The database file in the embedded store's folder.
pub use ratelimiter_embedded::FILE as EMBEDDED_FILE;

/// Any of the stores the command line can use.
#[derive(Debug)]
pub enum AnyStore {
    /// This process's memory.
    Memory(MemoryStore),
    /// A DynamoDB table, real or embedded, behind this process's deny cache.
    DynamoDb(Cached<DynamoDbStore>),
}

impl Store for AnyStore {
    async fn apply(
        &self,
        key: &Key<'_>,
        ops: &[Op<'_>],
        retention: Nanos,
        tats: &mut [Nanos],
    ) -> Applied {
        match self {
            AnyStore::Memory(store) => store.apply(key, ops, retention, tats).await,
            AnyStore::DynamoDb(store) => store.apply(key, ops, retention, tats).await,
        }
    }

    async fn refund(&self, key: &Key<'_>, ops: &[Op<'_>]) -> Result<(), StoreError> {
        match self {
            AnyStore::Memory(store) => store.refund(key, ops).await,
            AnyStore::DynamoDb(store) => store.refund(key, ops).await,
        }
    }

    async fn load(
        &self,
        key: &Key<'_>,
        slots: &[&Slot],
        tats: &mut [Nanos],
    ) -> Result<(), StoreError> {
        match self {
            AnyStore::Memory(store) => store.load(key, slots, tats).await,
            AnyStore::DynamoDb(store) => store.load(key, slots, tats).await,
        }
    }

    async fn remove(&self, key: &Key<'_>, slots: &[&Slot]) -> Result<(), StoreError> {
        match self {
            AnyStore::Memory(store) => store.remove(key, slots).await,
            AnyStore::DynamoDb(store) => store.remove(key, slots).await,
        }
    }

    fn prepare(&self, key: &Key<'_>, ops: &mut [Op<'_>], tats: &mut [Nanos]) -> Option<Outcome> {
        match self {
            AnyStore::Memory(store) => store.prepare(key, ops, tats),
            AnyStore::DynamoDb(store) => store.prepare(key, ops, tats),
        }
    }
}

/// Opens the store `options` names. The embedded store's table is created
/// when missing; a real table is left as it is (see `create-table`).
pub async fn open_store(options: &GlobalOptions) -> Result<AnyStore, CliError> {
    let config = DynamoDbConfig::from_env()?;
    let table = match &options.table {
        Some(table) => validate_table_name("--table", table)?,
        None => config.table,
    };
    match options.store {
        StoreKind::Memory => Ok(AnyStore::Memory(MemoryStore::new())),
        StoreKind::DynamoDb => {
            let options = ClientOptions {
                timeout: config.timeout,
                endpoint_url: options.endpoint_url.clone(),
                region: options.region.clone(),
                static_credentials: false,
            };
            // Built here rather than by `DynamoDbStore::with_config`, which
            // takes no endpoint or region: so the connect timeout that
            // function sets is set here too. Every run of the command is a
            // new process, so its first call always sets up a connection.
            let store = DynamoDbStore::new(client(&options).await, table)
                .with_connect_timeout(config.connect_timeout);
            Ok(AnyStore::DynamoDb(Cached::new(store)))
        }
        StoreKind::Embedded => {
            if options.endpoint_url.is_some() || options.region.is_some() {
                return Err(CliError::Usage(
                    "--endpoint-url and --region apply to --store dynamodb, not to the embedded store"
                        .to_owned(),
                ));
            }
            match ratelimiter_embedded::open(&options.data_dir, &table).await {
                Ok(store) => Ok(AnyStore::DynamoDb(Cached::new(store))),
                Err(OpenError::DataDir { path, reason }) => Err(CliError::Usage(format!(
                    "--data-dir {}: {reason}",
                    path.display()
                ))),
                Err(OpenError::Store(reason)) => Err(CliError::Store(reason)),
            }
        }
    }
}
