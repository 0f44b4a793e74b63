//! Reading the stats: what `GET /api/stats` and its live stream return.
//!
//! Everything comes from one read-only repeatable-read snapshot, so the numbers and the
//! checkpoint they include (`position`) belong together. Time ranges are whole minutes (the
//! buckets): `from` is rounded down and `to` up, and the answer says which range it used.

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;
use tokio_postgres::IsolationLevel;

use crate::store::{Position, Store};

use super::tally::minute;
use super::{ProjectionError, STATS, parse_position};

/// What to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsQuery {
    /// One site, or all of them.
    pub site: Option<String>,
    /// Start of the range (inclusive; rounded down to the minute).
    pub from: DateTime<Utc>,
    /// End of the range (exclusive; rounded up to the minute).
    pub to: DateTime<Utc>,
    /// How many pages, elements and forms to list (the most frequent first).
    pub top: u32,
}

impl StatsQuery {
    /// The range actually reported: whole minutes covering `from..to`.
    pub fn range(&self) -> (DateTime<Utc>, DateTime<Utc>) {
        let from = minute(self.from);
        let down = minute(self.to);
        let to = if down == self.to { down } else { down + TimeDelta::minutes(1) };
        (from, to)
    }
}

/// Events per type in the range.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Page views.
    #[serde(rename = "PageViewed")]
    pub page_viewed: i64,
    /// Element interactions.
    #[serde(rename = "ElementInteraction")]
    pub element_interaction: i64,
    /// Form submissions.
    #[serde(rename = "FormSubmitted")]
    pub form_submitted: i64,
}

/// Page views of one page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PageCount {
    /// The page path.
    pub path: String,
    /// Views in the range.
    pub count: i64,
}

/// Interactions with one element.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ElementCount {
    /// The element's name.
    pub element: String,
    /// Interactions in the range.
    pub count: i64,
}

/// Submissions of one form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FormCount {
    /// The form's name.
    pub form: String,
    /// Submissions in the range.
    pub count: i64,
}

/// One minute of the series (minutes without events are left out).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Minute {
    /// The minute's start.
    pub minute: DateTime<Utc>,
    /// Page views in it.
    pub page_views: i64,
    /// Interactions in it.
    pub interactions: i64,
    /// Form submissions in it.
    pub form_submissions: i64,
}

/// The stats for one query.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    /// The site reported, or null for all sites.
    pub site: Option<String>,
    /// Start of the reported range (a whole minute).
    pub from: DateTime<Utc>,
    /// End of the reported range (exclusive; a whole minute).
    pub to: DateTime<Utc>,
    /// The projection's checkpoint: the numbers include every event up to this log position.
    pub position: Position,
    /// Events per type in the range.
    pub totals: Totals,
    /// Distinct sessions with at least one event in the range.
    pub unique_sessions: i64,
    /// Sessions with an event in the last 5 minutes (now, whatever the range).
    pub active_sessions: i64,
    /// The most viewed pages.
    pub page_views: Vec<PageCount>,
    /// Events per minute.
    pub per_minute: Vec<Minute>,
    /// The most used elements.
    pub interactions: Vec<ElementCount>,
    /// The most submitted forms.
    pub form_submissions: Vec<FormCount>,
    /// Every site that has sent events (for a site picker).
    pub sites: Vec<String>,
}

/// How recent a session's last event must be for it to count as active.
pub const ACTIVE_WINDOW_SQL: &str = "5 minutes";

/// Reads the stats for `query`.
pub async fn stats(store: &Store, query: &StatsQuery) -> Result<Stats, ProjectionError> {
    let (from, to) = query.range();
    let site = query.site.as_deref();
    let top = i64::from(query.top);
    let mut client = store.pool().get().await?;
    let tx = client.build_transaction().isolation_level(IsolationLevel::RepeatableRead).read_only(true).start().await?;
    let row = tx.query_one("SELECT position FROM flightdeck.projection_checkpoints WHERE name = $1", &[&STATS]).await?;
    let position = parse_position(row.try_get(0)?)?;
    // `$1::text IS NULL OR site = $1`: one statement for one site or all.
    let per_minute: Vec<Minute> = tx
        .query(
            "SELECT minute, sum(page_views)::int8, sum(interactions)::int8, sum(form_submissions)::int8 \
             FROM flightdeck.stats_minutes WHERE ($1::text IS NULL OR site = $1) AND minute >= $2 AND minute < $3 \
             GROUP BY minute ORDER BY minute",
            &[&site, &from, &to],
        )
        .await?
        .iter()
        .map(|r| {
            Ok(Minute {
                minute: r.try_get(0)?,
                page_views: r.try_get(1)?,
                interactions: r.try_get(2)?,
                form_submissions: r.try_get(3)?,
            })
        })
        .collect::<Result<_, tokio_postgres::Error>>()?;
    let totals = per_minute.iter().fold(Totals::default(), |t, m| Totals {
        page_viewed: t.page_viewed + m.page_views,
        element_interaction: t.element_interaction + m.interactions,
        form_submitted: t.form_submitted + m.form_submissions,
    });
    let top_sql = |table: &str, key: &str, count: &str| {
        format!(
            "SELECT {key}, sum({count})::int8 AS n FROM flightdeck.{table} \
             WHERE ($1::text IS NULL OR site = $1) AND minute >= $2 AND minute < $3 \
             GROUP BY {key} ORDER BY n DESC, {key} LIMIT $4"
        )
    };
    let mut tops = Vec::with_capacity(3);
    for (table, key, count) in [
        ("stats_pages", "path", "views"),
        ("stats_elements", "element", "interactions"),
        ("stats_forms", "form", "submissions"),
    ] {
        let rows = tx.query(&top_sql(table, key, count), &[&site, &from, &to, &top]).await?;
        let pairs: Vec<(String, i64)> =
            rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect::<Result<_, tokio_postgres::Error>>()?;
        tops.push(pairs);
    }
    let unique_sessions: i64 = tx
        .query_one(
            "SELECT count(*) FROM (SELECT DISTINCT site, session FROM flightdeck.stats_session_minutes \
             WHERE ($1::text IS NULL OR site = $1) AND minute >= $2 AND minute < $3) s",
            &[&site, &from, &to],
        )
        .await?
        .try_get(0)?;
    let active_sessions: i64 = tx
        .query_one(
            &format!(
                "SELECT count(*) FROM flightdeck.stats_sessions \
                 WHERE ($1::text IS NULL OR site = $1) AND last_seen > now() - interval '{ACTIVE_WINDOW_SQL}'"
            ),
            &[&site],
        )
        .await?
        .try_get(0)?;
    let sites = tx
        .query("SELECT site FROM flightdeck.stats_sites ORDER BY site", &[])
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?;
    tx.commit().await?;
    let mut tops = tops.into_iter();
    let mut next = || tops.next().unwrap_or_default();
    let page_views = next().into_iter().map(|(path, count)| PageCount { path, count }).collect();
    let interactions = next().into_iter().map(|(element, count)| ElementCount { element, count }).collect();
    let form_submissions = next().into_iter().map(|(form, count)| FormCount { form, count }).collect();
    Ok(Stats {
        site: query.site.clone(),
        from,
        to,
        position,
        totals,
        unique_sessions,
        active_sessions,
        page_views,
        per_minute,
        interactions,
        form_submissions,
        sites,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_whole_minutes() {
        let t = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        let q = |from, to| StatsQuery { site: None, from: t(from), to: t(to), top: 10 };
        assert_eq!(
            q("2025-01-01T10:00:30Z", "2025-01-01T10:05:01Z").range(),
            (t("2025-01-01T10:00:00Z"), t("2025-01-01T10:06:00Z"))
        );
        assert_eq!(
            q("2025-01-01T10:00:00Z", "2025-01-01T10:05:00Z").range(),
            (t("2025-01-01T10:00:00Z"), t("2025-01-01T10:05:00Z"))
        );
    }
}
