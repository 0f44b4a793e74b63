//! The store's errors, and how database errors become them.

use uuid::Uuid;

use super::{ExpectedVersion, PositionError, ValidationError};

/// Why a store operation failed. Callers match on the variant to decide what a person sees: a
/// conflict or invalid input is the caller's to fix, unavailability is worth retrying.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The input breaks a rule; nothing was written.
    #[error("invalid append: {0}")]
    Invalid(#[from] ValidationError),
    /// A malformed position.
    #[error(transparent)]
    Position(#[from] PositionError),
    /// The stream was not at the expected version; nothing was written.
    #[error("stream {stream:?} is at version {actual}, but the append expected {expected}")]
    Conflict {
        /// The stream appended to.
        stream: String,
        /// What the append required.
        expected: ExpectedVersion,
        /// The stream's actual version (0: no events).
        actual: u64,
    },
    /// The stream belongs to another site than the append names: a stream's site is fixed by its
    /// first event. Nothing was written.
    #[error(
        "stream {:?} belongs to site {existing:?}, not {requested:?}: a stream's events all belong to one site; \
         append to a stream of site {requested:?} instead",
        clip(.stream)
    )]
    SiteMismatch {
        /// The stream appended to.
        stream: String,
        /// The site its events belong to.
        existing: String,
        /// The site the append named.
        requested: String,
    },
    /// An event id reused for different content (or for a different append).
    #[error("event id {0} is already stored with different content or as part of another append")]
    IdReused(Uuid),
    /// A concurrent append got in the way inside the caller's own transaction; roll back and retry.
    /// The store's own appends retry this by themselves.
    #[error("a concurrent append to the same stream interfered; roll back and retry the transaction")]
    Retry,
    /// The database could not be reached or the connection broke.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// The schema is from a newer FlightDeck.
    #[error(
        "the database schema is at version {found}, newer than this FlightDeck knows ({known}); upgrade FlightDeck"
    )]
    SchemaTooNew {
        /// Highest migration applied in the database.
        found: i32,
        /// Highest migration this build ships.
        known: i32,
    },
    /// Any other database error (a bug or an operational problem, not the caller's input).
    #[error("database error: {}", describe(.0))]
    Database(tokio_postgres::Error),
}

impl StoreError {
    /// Classifies a database error raised by an append of `stream` with `expected`.
    pub(crate) fn from_append(err: tokio_postgres::Error, site: &str, stream: &str, expected: ExpectedVersion) -> Self {
        let Some(db) = err.as_db_error() else { return StoreError::from(err) };
        let code = db.code().code();
        match code {
            "FDS01" => StoreError::SiteMismatch {
                stream: stream.to_string(),
                existing: db.detail().unwrap_or("another site").to_string(),
                requested: site.to_string(),
            },
            "FDV01" => StoreError::Conflict {
                stream: stream.to_string(),
                expected,
                actual: db.detail().and_then(|d| d.parse().ok()).unwrap_or(0),
            },
            "FDI01" => match db.detail().and_then(|d| d.parse().ok()) {
                Some(id) => StoreError::IdReused(id),
                None => StoreError::Database(err),
            },
            // Serialization failure, deadlock, or a unique violation from a race the advisory
            // lock could not prevent (same id appended to two streams at once).
            "40001" | "40P01" | "23505" => StoreError::Retry,
            "23514" => StoreError::Invalid(ValidationError::Unstorable(db.message().to_string())),
            "22P05" | "22023" | "22P02" => StoreError::Invalid(ValidationError::Unstorable(db.message().to_string())),
            _ => StoreError::from(err),
        }
    }
}

/// At most 80 characters of a stream id (up to 255 bytes, from the client), for messages.
fn clip(text: &str) -> String {
    text.chars().take(80).collect()
}

/// tokio-postgres says only "db error" for a server error; the server's message and SQLSTATE are
/// what a person needs.
fn describe(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => err.to_string(),
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(err: tokio_postgres::Error) -> Self {
        let io = std::error::Error::source(&err).is_some_and(|s| s.is::<std::io::Error>());
        // Server-side conditions that pass: connection exceptions (08), insufficient resources
        // such as too many connections (53), operator intervention such as a shutdown or a
        // server still starting (57).
        let transient = err.as_db_error().is_some_and(|db| {
            let code = db.code().code();
            code.starts_with("08") || code.starts_with("53") || code.starts_with("57")
        });
        if err.is_closed() || io || transient || err.to_string().contains("connect") {
            StoreError::Unavailable(describe(&err))
        } else {
            StoreError::Database(err)
        }
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(err: deadpool_postgres::PoolError) -> Self {
        match err {
            deadpool_postgres::PoolError::Backend(e) => StoreError::from(e),
            other => StoreError::Unavailable(other.to_string()),
        }
    }
}
