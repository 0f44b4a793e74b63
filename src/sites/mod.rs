//! The sites registry (issue 6): every tracker event belongs to a site (a tenant), and a site's
//! events are accepted only from the web origins registered for it.
//!
//! - [`origin`]: parsing and normalizing origins, and matching a request's `Origin` header.
//! - [`registry`]: `flightdeck.sites` (migration 0005): [`add`], [`list`], [`remove`], what
//!   `flightdeck site add|list|remove` runs.
//! - [`directory`]: [`SiteDirectory`], the server's in-memory copy that `POST /api/track` consults
//!   on every request without a database round trip.
//!
//! The `Origin` check keeps other websites' pages from sending events as a site (a browser always
//! sends `Origin` on a POST and a page cannot forge it). It is not authentication: a program outside
//! a browser can send any `Origin`. It bounds what a hostile web page can do, together with the
//! tracker's own rules (only its event types, only its session streams) and the per-site rate.

pub mod directory;
pub mod origin;
pub mod registry;

pub use directory::{Admission, DirectoryStats, SiteDirectory};
pub use origin::{Origin, OriginError};
pub use registry::{AddMode, Added, Site, add, list, remove};

use crate::store::StoreError;

/// Why a registry operation failed. Messages name what to change.
#[derive(Debug, thiserror::Error)]
pub enum SitesError {
    /// The site id breaks the tracker's rule for site ids.
    #[error(
        "site id {0:?} must be 1 to {max} characters of A-Z, a-z, 0-9, _ and - (the data-site of the tracker's script tag)",
        max = crate::tracker::MAX_TOKEN
    )]
    InvalidId(String),
    /// An origin that cannot be used.
    #[error(transparent)]
    InvalidOrigin(#[from] OriginError),
    /// A site without any allowed origin would accept nothing.
    #[error("site {0:?} needs at least one allowed origin, e.g. https://example.com (or * for any origin)")]
    NoOrigins(String),
    /// No site has this id.
    #[error("no site {0:?} is registered (`flightdeck site list` shows the registered sites)")]
    UnknownSite(String),
    /// The database refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<tokio_postgres::Error> for SitesError {
    fn from(err: tokio_postgres::Error) -> Self {
        SitesError::Store(err.into())
    }
}

impl From<deadpool_postgres::PoolError> for SitesError {
    fn from(err: deadpool_postgres::PoolError) -> Self {
        SitesError::Store(err.into())
    }
}

/// Checks a site id against the tracker's rule (the same as the table's CHECK constraint).
pub fn check_id(id: &str) -> Result<(), SitesError> {
    if crate::tracker::is_token(id) { Ok(()) } else { Err(SitesError::InvalidId(id.chars().take(80).collect())) }
}
