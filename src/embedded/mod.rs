//! The embedded PostgreSQL: FlightDeck's zero-config database.
//!
//! Without `DATABASE_URL`, FlightDeck runs its own cluster from the machine's server binaries
//! ([`binaries`]), in its data directory, listening on a private unix socket only. The same launcher
//! gives the test suite its throwaway clusters, so tests exercise the code users run.
//!
//! The postmaster is started through a tiny `sh` supervisor holding a *lifeline* pipe from this
//! process: when the pipe closes — a clean stop, a panic, even `SIGKILL` of FlightDeck — the
//! supervisor asks PostgreSQL for a fast shutdown. So no orphaned server outlives its owner, and an
//! ephemeral cluster removes its own directory once PostgreSQL has stopped.

mod binaries;
mod cluster;
mod owner;

pub use binaries::{Binaries, find as find_binaries};
pub use cluster::{EmbeddedOptions, EmbeddedPostgres, RELOCATED_ROOT};

use std::path::PathBuf;

/// Why the embedded PostgreSQL could not be started or stopped. Messages are written for the
/// person at the terminal: each names what to do next.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    /// No `initdb` + `postgres` pair anywhere FlightDeck looks.
    #[error(
        "no PostgreSQL server binaries found (looked in PATH, `pg_config --bindir` and \
         /usr/lib/postgresql/*/bin); install them (Debian/Ubuntu: `apt-get install postgresql`) \
         or set DATABASE_URL to use an existing server"
    )]
    NoBinaries,
    /// The existing cluster was created by a major version that is not installed.
    #[error(
        "the cluster in the data directory was created by PostgreSQL {cluster}, but only \
         {found:?} is installed; install PostgreSQL {cluster}'s server binaries, or point \
         FLIGHTDECK_DATA_DIR at another directory"
    )]
    VersionMismatch {
        /// Major version recorded in `PG_VERSION`.
        cluster: u32,
        /// Major versions found on the machine.
        found: Vec<u32>,
    },
    /// Running as root needs the `postgres` system user, because PostgreSQL refuses root.
    #[error(
        "PostgreSQL refuses to run as root and there is no `postgres` system user to run it as; \
         create one (`useradd --system postgres`), run FlightDeck as a normal user, or set DATABASE_URL"
    )]
    NoPostgresUser,
    /// The unprivileged `postgres` user cannot reach the data directory.
    #[error(
        "PostgreSQL runs as the `postgres` user, which cannot enter {blocked} (on the way to the \
         data directory {data_dir}); choose another FLIGHTDECK_DATA_DIR (e.g. under /var/lib) or \
         allow it with `chmod o+x {blocked}`"
    )]
    Unreachable {
        /// The data directory FlightDeck was asked to use.
        data_dir: PathBuf,
        /// The ancestor directory the `postgres` user may not traverse.
        blocked: PathBuf,
    },
    /// A step (initdb, starting the server) failed; `log` holds the tail of its output.
    #[error("{step} failed: {detail}\n{log}")]
    Failed {
        /// What FlightDeck was doing.
        step: &'static str,
        /// Short cause.
        detail: String,
        /// Last lines of PostgreSQL's own output, which usually say why.
        log: String,
    },
    /// File-system trouble in the data directory.
    #[error("{action} {path}: {source}")]
    Io {
        /// What FlightDeck was doing with the path.
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl EmbeddedError {
    fn io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| EmbeddedError::Io { action, path, source }
    }
}
