//! [`SiteDirectory`]: the server's copy of the sites registry, consulted by `POST /api/track` and
//! its CORS preflight on every request without a database round trip.
//!
//! The directory holds the *whole* registry in memory (sites are few: one per website, each a few
//! origins), so a site it does not know is a definite miss answered from memory: a flood of
//! requests for made-up sites costs no database work (the snapshot is the negative cache, bounded
//! by the table, not by what clients send).
//!
//! Freshness: a request finding the copy older than the refresh interval (1 s by default) first
//! reads `flightdeck.sites_generation`, a counter a trigger bumps on every change of the table (one
//! row, one index lookup), and reloads the table only when it moved. So a site added or removed by
//! `flightdeck site …` while the server runs takes effect within about a second, and the database
//! sees at most one tiny read per interval however many requests arrive, misses included. The check
//! is single-flight: concurrent requests wait for the one that checks. If the database cannot be
//! read, the last copy is kept (and retried after the interval); before any copy exists, requests
//! get a 503. [`SiteDirectory::invalidate`] makes the next request check at once (for an
//! application that changes sites through [`crate::sites::add`] in the same process).
//!
//! No background task: an idle server does not poll, and an embedding application gets the
//! directory with its [`crate::http::AppState`] without running anything.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::store::{Store, StoreError};

use super::Origin;
use super::registry::parse_stored;

/// Whether a tracker request may be accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The site is registered and the origin is one of its own.
    Allowed,
    /// No such site is registered.
    UnknownSite,
    /// The site is registered, but not for this origin.
    OriginNotAllowed,
}

/// The directory's counters (for `/metrics` and tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirectoryStats {
    /// Reads of the generation counter (at most one per refresh interval).
    pub checks: u64,
    /// Full reads of the sites table (only when the generation moved).
    pub loads: u64,
    /// Checks or loads that failed.
    pub errors: u64,
    /// Sites in the current copy.
    pub sites: u64,
    /// Requests refused because their site is not registered.
    pub unknown_site: u64,
    /// Requests refused because their origin is not one of the site's.
    pub origin_not_allowed: u64,
}

/// The server's cached copy of the sites registry. Cheap to clone; clones share the copy.
#[derive(Clone)]
pub struct SiteDirectory {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    refresh: Duration,
    snapshot: RwLock<Arc<Snapshot>>,
    /// When the generation was last read (successfully or not).
    checked: Mutex<Option<Instant>>,
    /// Set by `invalidate`: check on the next request whatever the interval.
    stale: AtomicBool,
    /// Held by the one request that checks; the others wait on it.
    refreshing: tokio::sync::Mutex<()>,
    checks: AtomicU64,
    loads: AtomicU64,
    errors: AtomicU64,
    unknown_site: AtomicU64,
    origin_not_allowed: AtomicU64,
}

#[derive(Debug, Default)]
struct Snapshot {
    /// False until the table was read once.
    loaded: bool,
    generation: i64,
    sites: HashMap<String, Vec<Origin>>,
    /// Every exact origin of any site, for the CORS preflight (which has no site).
    origins: HashSet<String>,
    /// Whether some site allows any origin.
    any: bool,
}

impl std::fmt::Debug for SiteDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SiteDirectory")
            .field("refresh", &self.inner.refresh)
            .field("sites", &self.snapshot().sites.len())
            .finish_non_exhaustive()
    }
}

impl SiteDirectory {
    /// How old the copy may get before a request checks for changes.
    pub const REFRESH: Duration = Duration::from_secs(1);

    /// A directory over `store`'s registry, refreshed every [`SiteDirectory::REFRESH`]. Reads
    /// nothing until the first request.
    pub fn new(store: Store) -> Self {
        SiteDirectory::with_refresh(store, SiteDirectory::REFRESH)
    }

    /// A directory that checks for changes at most every `refresh`.
    pub fn with_refresh(store: Store, refresh: Duration) -> Self {
        SiteDirectory {
            inner: Arc::new(Inner {
                store,
                refresh,
                snapshot: RwLock::new(Arc::new(Snapshot::default())),
                checked: Mutex::new(None),
                stale: AtomicBool::new(false),
                refreshing: tokio::sync::Mutex::new(()),
                checks: AtomicU64::new(0),
                loads: AtomicU64::new(0),
                errors: AtomicU64::new(0),
                unknown_site: AtomicU64::new(0),
                origin_not_allowed: AtomicU64::new(0),
            }),
        }
    }

    /// Whether a tracker request for `site` with the `Origin` header `origin` may be accepted.
    pub async fn admit(&self, site: &str, origin: &str) -> Result<Admission, StoreError> {
        let snapshot = self.current().await?;
        let admission = match snapshot.sites.get(site) {
            None => Admission::UnknownSite,
            Some(origins) if origins.iter().any(|o| o.allows(origin)) => Admission::Allowed,
            Some(_) => Admission::OriginNotAllowed,
        };
        match admission {
            Admission::UnknownSite => self.inner.unknown_site.fetch_add(1, Ordering::Relaxed),
            Admission::OriginNotAllowed => self.inner.origin_not_allowed.fetch_add(1, Ordering::Relaxed),
            Admission::Allowed => 0,
        };
        Ok(admission)
    }

    /// Whether some registered site accepts requests from `origin` (for CORS, where the site is
    /// not known: the preflight has no body).
    pub async fn allows_origin(&self, origin: &str) -> Result<bool, StoreError> {
        let snapshot = self.current().await?;
        Ok(snapshot.any || Origin::parse(origin).is_ok_and(|o| snapshot.origins.contains(o.as_str())))
    }

    /// Makes the next request check the registry, whatever the interval.
    pub fn invalidate(&self) {
        self.inner.stale.store(true, Ordering::Release);
    }

    /// The counters.
    pub fn stats(&self) -> DirectoryStats {
        let inner = &self.inner;
        DirectoryStats {
            checks: inner.checks.load(Ordering::Relaxed),
            loads: inner.loads.load(Ordering::Relaxed),
            errors: inner.errors.load(Ordering::Relaxed),
            sites: self.snapshot().sites.len() as u64,
            unknown_site: inner.unknown_site.load(Ordering::Relaxed),
            origin_not_allowed: inner.origin_not_allowed.load(Ordering::Relaxed),
        }
    }

    /// Appends the directory's series to a Prometheus exposition.
    pub(crate) fn render_metrics(&self, out: &mut String) {
        let s = self.stats();
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        metric("flightdeck_sites", "gauge", "Registered sites in the server's copy of the registry.", &[("", s.sites)]);
        metric(
            "flightdeck_site_directory_reads_total",
            "counter",
            "Database reads by the site directory: generation checks (at most one per second) and full loads.",
            &[("{kind=\"check\"}", s.checks), ("{kind=\"load\"}", s.loads), ("{kind=\"error\"}", s.errors)],
        );
        metric(
            "flightdeck_tracker_refused_total",
            "counter",
            "Tracker requests refused by the sites registry, by reason.",
            &[("{reason=\"unknown_site\"}", s.unknown_site), ("{reason=\"origin_not_allowed\"}", s.origin_not_allowed)],
        );
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        match self.inner.snapshot.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Whether the copy must be checked before it is used.
    fn due(&self) -> bool {
        if self.inner.stale.load(Ordering::Acquire) {
            return true;
        }
        let checked = match self.inner.checked.lock() {
            Ok(guard) => *guard,
            Err(poisoned) => *poisoned.into_inner(),
        };
        checked.is_none_or(|at| at.elapsed() >= self.inner.refresh)
    }

    /// The copy, checked first if it is due.
    async fn current(&self) -> Result<Arc<Snapshot>, StoreError> {
        let mut failure = None;
        if self.due() {
            let _only_one = self.inner.refreshing.lock().await;
            // Whoever held the lock before may have just checked.
            if self.due() {
                self.inner.stale.store(false, Ordering::Release);
                let result = self.refresh().await;
                let now = Instant::now();
                match self.inner.checked.lock() {
                    Ok(mut guard) => *guard = Some(now),
                    Err(poisoned) => *poisoned.into_inner() = Some(now),
                }
                if let Err(err) = result {
                    self.inner.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %err, "cannot read the sites registry; keeping the last copy");
                    failure = Some(err);
                }
            }
        }
        let snapshot = self.snapshot();
        if snapshot.loaded {
            return Ok(snapshot);
        }
        Err(match failure {
            Some(err @ StoreError::Unavailable(_)) => err,
            Some(err) => StoreError::Unavailable(format!("the sites registry cannot be read: {err}")),
            None => StoreError::Unavailable("the sites registry has not been read yet".into()),
        })
    }

    /// Reads the generation and, if it moved, the whole table.
    async fn refresh(&self) -> Result<(), StoreError> {
        let client = self.inner.store.pool().get().await?;
        self.inner.checks.fetch_add(1, Ordering::Relaxed);
        let generation: i64 =
            client.query_one("SELECT generation FROM flightdeck.sites_generation", &[]).await?.try_get(0)?;
        let current = self.snapshot();
        if current.loaded && current.generation == generation {
            return Ok(());
        }
        // Read after the generation: a change in between only causes one more load next time.
        self.inner.loads.fetch_add(1, Ordering::Relaxed);
        let rows = client.query("SELECT id, origins FROM flightdeck.sites", &[]).await?;
        let mut next = Snapshot { loaded: true, generation, ..Snapshot::default() };
        for row in rows {
            let id: String = row.try_get(0)?;
            let origins = parse_stored(row.try_get(1)?);
            for origin in &origins {
                match origin {
                    Origin::Any => next.any = true,
                    Origin::Exact(text) => {
                        next.origins.insert(text.clone());
                    }
                }
            }
            next.sites.insert(id, origins);
        }
        let next = Arc::new(next);
        match self.inner.snapshot.write() {
            Ok(mut guard) => *guard = next,
            Err(poisoned) => *poisoned.into_inner() = next,
        }
        Ok(())
    }
}
