//! Opening the store a command line asks for.

use ratelimiter_dynamodb::{
    ClientOptions, DynamoDbConfig, DynamoDbStore, client, validate_table_name,
};
use ratelimiter_embedded::OpenError;

use crate::CliError;
use crate::args::{GlobalOptions, StoreKind};

/// The database file in the embedded store's folder.
pub use ratelimiter_embedded::FILE as EMBEDDED_FILE;

/// The store a command line names, opened: chosen once, then every
/// command runs generically on it.
#[derive(Debug)]
pub enum Opened {
    /// This process's memory.
    Memory,
    /// A DynamoDB table, real or embedded.
    Table(DynamoDbStore),
}

/// Opens the store `options` names. The embedded store's table is created
/// when missing; a real table is left as it is (see `create-table`).
pub async fn open_store(options: &GlobalOptions) -> Result<Opened, CliError> {
    let config = DynamoDbConfig::from_env()?;
    let table = match &options.table {
        Some(table) => validate_table_name("--table", table)?,
        None => config.table,
    };
    match options.store {
        StoreKind::Memory => Ok(Opened::Memory),
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
            Ok(Opened::Table(store))
        }
        StoreKind::Embedded => {
            if options.endpoint_url.is_some() || options.region.is_some() {
                return Err(CliError::Usage(
                    "--endpoint-url and --region apply to --store dynamodb, not to the embedded store"
                        .to_owned(),
                ));
            }
            match ratelimiter_embedded::open(&options.data_dir, &table).await {
                Ok(store) => Ok(Opened::Table(store)),
                Err(OpenError::DataDir { path, reason }) => Err(CliError::Usage(format!(
                    "--data-dir {}: {reason}",
                    path.display()
                ))),
                Err(OpenError::Store(reason)) => Err(CliError::Store(reason)),
            }
        }
    }
}
