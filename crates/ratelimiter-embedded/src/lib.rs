//! The embedded store: the DynamoDB store on a SQLite file, in this process,
//! with no AWS account and no socket.
//!
//! dynoxide keeps DynamoDB's API (conditional updates, `ALL_OLD` on a failed
//! condition, TTL) on a SQLite file, atomically across processes sharing it.
//! The `DynamoDbStore` and its SDK client are the production ones; only the
//! SDK's HTTP client differs ([`transport::InProcess`]), so what runs here is
//! what runs against a real table.
//!
//! ```no_run
//! # async fn run() -> Result<(), ratelimiter_embedded::OpenError> {
//! let store = ratelimiter_embedded::open(".ratelimit".as_ref(), "RateLimits").await?;
//! let service = ratelimiter::Builder::new().build(store);
//! let verdict = service.check_listener_join_limit("203.0.113.7").await;
//! # Ok(()) }
//! ```

// The SDK's nested futures are deeper than the default limit allows.
#![recursion_limit = "256"]

pub mod transport;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_sdk_dynamodb::config::StalledStreamProtectionConfig;
use aws_smithy_runtime_api::client::http::SharedHttpClient;
use ratelimiter_dynamodb::{ClientOptions, DynamoDbStore, TABLE_VAR, client_with};

pub use transport::InProcess;

/// The database file in the embedded store's folder.
pub const FILE: &str = "ratelimit.db";

/// How long a call may take, mostly waiting for SQLite's lock when many
/// processes share a data dir. A timeout there would fail open and could over-admit,
/// so it is far longer than a network call's.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// Why the embedded store did not open.
#[derive(Debug)]
pub enum OpenError {
    /// The data dir is unusable (cannot be created, not UTF-8): the
    /// caller's argument is wrong.
    DataDir {
        /// The folder asked for.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The store itself failed: the file, its thread, or the table.
    Store(String),
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::DataDir { path, reason } => write!(f, "{}: {reason}", path.display()),
            OpenError::Store(reason) => f.write_str(reason),
        }
    }
}

impl std::error::Error for OpenError {}

/// Opens the embedded store on `data_dir` (created if missing) with its
/// table `table` (created if missing), ready for decisions.
///
/// A call that finds the file locked by another process waits for it, up
/// to [`TIMEOUT`] (see [`transport`]). Put the deny cache in front with
/// `ratelimiter::Builder::build`.
pub async fn open(data_dir: &Path, table: &str) -> Result<DynamoDbStore, OpenError> {
    let file = private_file(data_dir)?;
    let path = file.to_str().ok_or_else(|| OpenError::DataDir {
        path: data_dir.to_owned(),
        reason: "the path is not UTF-8".to_owned(),
    })?;
    let database = dynoxide::Database::new(path)
        .map_err(|e| OpenError::Store(format!("cannot open the embedded store {path}: {e}")))?;
    let http_client = InProcess::start(database)
        .map_err(|e| OpenError::Store(format!("cannot start the embedded store's thread: {e}")))?;
    let client = client_with(
        &ClientOptions::local(transport::ENDPOINT, TIMEOUT),
        SharedHttpClient::new(http_client),
    )
    .await;
    // The SDK takes an answer that has not begun within 5 s for a stalled
    // stream; here it is a call waiting for another process's lock, bounded
    // by `TIMEOUT` like every call.
    let config = client
        .config()
        .to_builder()
        .stalled_stream_protection(StalledStreamProtectionConfig::disabled())
        .build();
    let store = DynamoDbStore::new(aws_sdk_dynamodb::Client::from_conf(config), table);
    ensure_table(&store).await?;
    Ok(store)
}

/// The database file in `data_dir`, both created for their owner only when
/// they are new: the file holds every identifier the limiter has seen (raw,
/// unless a key secret is set). An existing folder or file keeps its
/// permissions, with a warning when other users may read the file: SQLite
/// gives its journal files the database file's permissions.
fn private_file(data_dir: &Path) -> Result<PathBuf, OpenError> {
    let file = data_dir.join(FILE);
    let mut folder = std::fs::DirBuilder::new();
    folder.recursive(true);
    let mut open = std::fs::OpenOptions::new();
    open.write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        folder.mode(0o700);
        open.mode(0o600);
    }
    folder.create(data_dir).map_err(|e| OpenError::DataDir {
        path: data_dir.to_owned(),
        reason: format!("cannot create the folder: {e}"),
    })?;
    let file_error =
        |e: std::io::Error| OpenError::Store(format!("cannot create {}: {e}", file.display()));
    // An empty file is a new SQLite database.
    let created = open.open(&file).map_err(file_error)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = created.metadata().map_err(file_error)?.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(
                file = %file.display(),
                mode = format_args!("{:o}", mode & 0o777),
                "other users may read the embedded store's file, and the identifiers in it: chmod 600 it"
            );
        }
    }
    drop(created);
    Ok(file)
}

/// Creates the table unless it exists. Several processes may race to create
/// it on a new data dir; whoever loses finds it there.
async fn ensure_table(store: &DynamoDbStore) -> Result<(), OpenError> {
    if store.table_exists().await {
        return Ok(());
    }
    match store.create_table().await {
        Err(error) if !store.table_exists().await => Err(OpenError::Store(format!(
            "cannot create table {} in the embedded store: {error} ({TABLE_VAR} or --table names it)",
            store.table()
        ))),
        _ => Ok(()),
    }
}
