//! Opening the store a command line asks for.

use std::path::Path;
use std::time::Duration;

use ratelimiter::gcra::Nanos;
use ratelimiter::store::{Applied, Op, Outcome};
use ratelimiter::{Cached, Key, MemoryStore, Slot, Store, StoreError};
use ratelimiter_dynamodb::{
    ClientOptions, DynamoDbConfig, DynamoDbStore, TABLE_VAR, client, validate_table_name,
};

use crate::CliError;
use crate::args::{GlobalOptions, StoreKind};

/// The embedded store waits for SQLite's lock when many processes share a
/// data dir; a timeout there would fail open and could over-admit, so it is
/// far longer than a network call's.
const EMBEDDED_TIMEOUT: Duration = Duration::from_secs(30);

/// The database file in the embedded store's folder.
pub const EMBEDDED_FILE: &str = "ratelimit.db";

/// Any of the stores the command line can use.
#[derive(Debug)]
pub enum AnyStore {
    /// This process's memory.
    Memory(MemoryStore),
    /// A DynamoDB table, real or embedded, behind this process's deny cache.
    DynamoDb(Cached<Patient<DynamoDbStore>>),
}

/// A store whose calls may find the embedded store's SQLite file locked by
/// another process: such a call wrote nothing, and is made again until
/// `patience` has passed (the embedded store's own lock wait is shorter).
#[derive(Debug)]
pub struct Patient<S> {
    inner: S,
    patience: Duration,
}

impl<S> Patient<S> {
    /// `inner`, retrying calls that found the file locked for `patience`
    /// (zero: never).
    pub fn new(inner: S, patience: Duration) -> Self {
        Self { inner, patience }
    }

    /// The store behind.
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

/// Whether `error` says the embedded store's file was locked: the request
/// was not carried out, so making it again counts nothing twice.
fn locked(error: &StoreError) -> bool {
    error.to_string().contains("database is locked")
}

impl<S: Store> Store for Patient<S> {
    async fn apply(
        &self,
        key: &Key<'_>,
        ops: &[Op<'_>],
        retention: Nanos,
        tats: &mut [Nanos],
    ) -> Applied {
        if self.patience.is_zero() {
            return self.inner.apply(key, ops, retention, tats).await;
        }
        let mut calls = 0;
        let mut last = None;
        let attempts = async {
            loop {
                let applied = self.inner.apply(key, ops, retention, tats).await;
                calls += applied.calls;
                match applied.outcome {
                    Err(error) if locked(&error) => {
                        last = Some(error);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    outcome => return outcome,
                }
            }
        };
        let outcome = match tokio::time::timeout(self.patience, attempts).await {
            Ok(outcome) => outcome,
            Err(_) => Err(last.unwrap_or_else(|| {
                StoreError::new(
                    ratelimiter::StoreErrorKind::Timeout,
                    "the embedded store's file stayed locked",
                )
            })),
        };
        Applied { outcome, calls }
    }

    async fn refund(&self, key: &Key<'_>, ops: &[Op<'_>]) -> Result<(), StoreError> {
        self.inner.refund(key, ops).await
    }

    async fn load(
        &self,
        key: &Key<'_>,
        slots: &[&Slot],
        tats: &mut [Nanos],
    ) -> Result<(), StoreError> {
        self.inner.load(key, slots, tats).await
    }

    async fn remove(&self, key: &Key<'_>, slots: &[&Slot]) -> Result<(), StoreError> {
        self.inner.remove(key, slots).await
    }
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
            // A real table is never locked: no patience.
            Ok(AnyStore::DynamoDb(Cached::new(Patient::new(
                DynamoDbStore::new(client(&options).await, table),
                Duration::ZERO,
            ))))
        }
        StoreKind::Embedded => {
            if options.endpoint_url.is_some() || options.region.is_some() {
                return Err(CliError::Usage(
                    "--endpoint-url and --region apply to --store dynamodb, not to the embedded store"
                        .to_owned(),
                ));
            }
            open_embedded(&options.data_dir, &table)
                .await
                .map(|store| AnyStore::DynamoDb(Cached::new(Patient::new(store, EMBEDDED_TIMEOUT))))
        }
    }
}

/// Serves a DynamoDB-compatible API from a SQLite file in `data_dir`, in this
/// process, and returns the DynamoDB store on it.
async fn open_embedded(data_dir: &Path, table: &str) -> Result<DynamoDbStore, CliError> {
    std::fs::create_dir_all(data_dir).map_err(|e| {
        CliError::Usage(format!(
            "--data-dir {}: cannot create the folder: {e}",
            data_dir.display()
        ))
    })?;
    let file = data_dir.join(EMBEDDED_FILE);
    let path = file.to_str().ok_or_else(|| {
        CliError::Usage(format!(
            "--data-dir {}: the path is not UTF-8",
            data_dir.display()
        ))
    })?;
    let database = dynoxide::Database::new(path)
        .map_err(|e| CliError::Store(format!("cannot open the embedded store {path}: {e}")))?;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| {
        CliError::Store(format!(
            "cannot listen on loopback for the embedded store: {e}"
        ))
    })?;
    let endpoint = format!(
        "http://{}",
        listener
            .local_addr()
            .map_err(|e| CliError::Store(e.to_string()))?
    );
    serve_embedded(listener, database)?;
    let store = DynamoDbStore::new(
        client(&ClientOptions::local(endpoint, EMBEDDED_TIMEOUT)).await,
        table,
    );
    ensure_table(&store).await?;
    Ok(store)
}

/// Serves `database` on `listener` from a thread of its own: its SQLite
/// calls block the thread that makes them (up to its lock timeout when
/// another process holds the file), and must not block the connections and
/// decisions of the caller's runtime, which only await the answers.
fn serve_embedded(
    listener: std::net::TcpListener,
    database: dynoxide::Database,
) -> Result<(), CliError> {
    let store_error =
        |e: std::io::Error| CliError::Store(format!("cannot start the embedded store: {e}"));
    listener.set_nonblocking(true).map_err(store_error)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(store_error)?;
    std::thread::Builder::new()
        .name("embedded-store".to_owned())
        .spawn(move || {
            runtime.block_on(async move {
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => dynoxide::server::serve_on(listener, database).await,
                    Err(error) => tracing::error!(%error, "the embedded store cannot listen"),
                }
            })
        })
        .map_err(store_error)?;
    Ok(())
}

/// Creates the table unless it exists. Several processes may race to create
/// it on a new data dir; whoever loses finds it there.
async fn ensure_table(store: &DynamoDbStore) -> Result<(), CliError> {
    if store.table_exists().await {
        return Ok(());
    }
    match store.create_table().await {
        Err(error) if !store.table_exists().await => Err(CliError::Store(format!(
            "cannot create table {} in the embedded store: {error} ({TABLE_VAR} or --table names it)",
            store.table()
        ))),
        _ => Ok(()),
    }
}
