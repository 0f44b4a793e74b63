//! Opening the database a command works on: `DATABASE_URL` if set, else the embedded cluster.

use std::time::Duration;

use crate::embedded::{EmbeddedOptions, EmbeddedPostgres};
use crate::store::Store;

use super::CliError;
use super::args::DatabaseArgs;

/// The database a command uses, and the embedded cluster behind it if FlightDeck runs one.
#[derive(Debug)]
pub struct Database {
    /// The event store over a connection pool.
    pub store: Store,
    /// The connection settings (for benchmarks and extra connections).
    pub config: tokio_postgres::Config,
    embedded: Option<EmbeddedPostgres>,
}

impl Database {
    /// Starts the embedded cluster if no URL is configured, and makes a store over a pool of
    /// `pool_size` connections. Does not connect yet.
    pub async fn open(args: &DatabaseArgs, pool_size: usize) -> Result<Self, CliError> {
        let (mut config, embedded) = match &args.database_url {
            Some(url) => {
                let config: tokio_postgres::Config =
                    url.parse().map_err(|e: tokio_postgres::Error| CliError::DatabaseUrl(e.to_string()))?;
                (config, None)
            }
            None => {
                let mut options = EmbeddedOptions::persistent(&args.data_dir);
                options.bin_dir = args.pg_bin_dir.clone();
                let pg = tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&options))
                    .await
                    .map_err(|e| CliError::Usage(format!("the PostgreSQL launcher stopped: {e}")))??;
                (pg.config(), Some(pg))
            }
        };
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        config.application_name("flightdeck");
        let store = Store::new(config.clone(), pool_size)?;
        Ok(Database { store, config, embedded })
    }

    /// Stops the embedded cluster, if this process runs one. Call last, after everything that
    /// uses the database has finished.
    pub async fn close(self) -> Result<(), CliError> {
        drop(self.store);
        if let Some(pg) = self.embedded {
            tokio::task::spawn_blocking(move || pg.stop())
                .await
                .map_err(|e| CliError::Usage(format!("the PostgreSQL launcher stopped: {e}")))??;
        }
        Ok(())
    }
}
