//! The registry in `flightdeck.sites`: add, list, remove (what `flightdeck site …` runs).
//!
//! `add` never silently narrows a site: on an existing site it adds the given origins to the ones
//! it has ([`AddMode::Merge`], the default, so running the same `site add` twice is harmless and
//! the demo and test harnesses can register their sites on every start); only
//! [`AddMode::Replace`] (`--replace`) drops origins. Removing a site keeps its events (the log is
//! append-only); its tracker requests are refused from then on.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::store::Store;

use super::{Origin, SitesError, check_id};

/// A registered site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Site {
    /// The site id (`data-site` on the tracker's script tag).
    pub id: String,
    /// The origins its tracker requests may come from.
    pub origins: Vec<Origin>,
    /// When it was registered.
    pub created_at: DateTime<Utc>,
    /// When its origins last changed.
    pub updated_at: DateTime<Utc>,
}

impl Serialize for Origin {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// What `add` does to a site that exists already.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AddMode {
    /// Keep its origins and add the new ones (idempotent).
    #[default]
    Merge,
    /// Set exactly the given origins.
    Replace,
}

/// What `add` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Added {
    /// Whether the site is new.
    pub created: bool,
    /// Its origins before (empty for a new site).
    pub before: Vec<Origin>,
    /// Its origins now.
    pub after: Vec<Origin>,
}

impl Added {
    /// Whether anything changed.
    pub fn changed(&self) -> bool {
        self.created || self.before != self.after
    }
}

/// Registers `id` with `origins`, or changes an existing site's origins as `mode` says.
pub async fn add(store: &Store, id: &str, origins: &[Origin], mode: AddMode) -> Result<Added, SitesError> {
    check_id(id)?;
    if origins.is_empty() {
        return Err(SitesError::NoOrigins(id.to_string()));
    }
    let mut wanted: Vec<Origin> = Vec::with_capacity(origins.len());
    for origin in origins {
        if !wanted.contains(origin) {
            wanted.push(origin.clone());
        }
    }
    let mut client = store.pool().get().await?;
    let tx = client.transaction().await?;
    let texts: Vec<&str> = wanted.iter().map(Origin::as_str).collect();
    let inserted = tx
        .execute(
            "INSERT INTO flightdeck.sites (id, origins) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
            &[&id, &texts],
        )
        .await?;
    let added = if inserted == 1 {
        Added { created: true, before: Vec::new(), after: wanted }
    } else {
        // It exists (the insert conflicted); the row lock keeps a concurrent `add` from losing ours.
        let row = tx.query_one("SELECT origins FROM flightdeck.sites WHERE id = $1 FOR UPDATE", &[&id]).await?;
        let before = parse_stored(row.try_get(0)?);
        let after = match mode {
            AddMode::Replace => wanted,
            AddMode::Merge => {
                let mut after = before.clone();
                after.extend(wanted.into_iter().filter(|o| !before.contains(o)));
                after
            }
        };
        if after != before {
            let texts: Vec<&str> = after.iter().map(Origin::as_str).collect();
            tx.execute("UPDATE flightdeck.sites SET origins = $2, updated_at = now() WHERE id = $1", &[&id, &texts])
                .await?;
        }
        Added { created: false, before, after }
    };
    tx.commit().await?;
    Ok(added)
}

/// Every registered site, by id.
pub async fn list(store: &Store) -> Result<Vec<Site>, SitesError> {
    let client = store.pool().get().await?;
    let rows =
        client.query("SELECT id, origins, created_at, updated_at FROM flightdeck.sites ORDER BY id", &[]).await?;
    rows.iter()
        .map(|row| {
            Ok(Site {
                id: row.try_get(0)?,
                origins: parse_stored(row.try_get(1)?),
                created_at: row.try_get(2)?,
                updated_at: row.try_get(3)?,
            })
        })
        .collect()
}

/// Unregisters `id`; returns the origins it had. An unknown id is an error, so a typo is noticed.
pub async fn remove(store: &Store, id: &str) -> Result<Vec<Origin>, SitesError> {
    check_id(id)?;
    let client = store.pool().get().await?;
    let row = client.query_opt("DELETE FROM flightdeck.sites WHERE id = $1 RETURNING origins", &[&id]).await?;
    match row {
        Some(row) => Ok(parse_stored(row.try_get(0)?)),
        None => Err(SitesError::UnknownSite(id.to_string())),
    }
}

/// Origins as stored. They were normalized when written; one that does not parse (edited by hand
/// in the table) is kept as written, so `site list` shows it, but it matches no request.
pub(super) fn parse_stored(texts: Vec<String>) -> Vec<Origin> {
    texts.into_iter().map(|text| Origin::parse(&text).unwrap_or(Origin::Exact(text))).collect()
}
