//! Applying a chunk: the counts and the checkpoint, in one transaction.
//!
//! This is where "exactly once" is decided. The transaction locks the projection's checkpoint row
//! (`FOR UPDATE`) and goes on only if it still holds `after`, the position the chunk was read
//! after; then it adds the chunk's counts and moves the checkpoint to `through`. So:
//! - a crash or error anywhere rolls back counts and checkpoint together;
//! - two appliers (two servers, or a server and `projections rebuild`) are serialized by the row
//!   lock, and the second finds the checkpoint moved and applies nothing ([`ProjectionError::Moved`]);
//! - a rebuild takes the same lock to truncate and reset (`rebuild.rs`), so it never interleaves
//!   with an apply.

use chrono::{DateTime, Utc};
use deadpool_postgres::Transaction;

use crate::store::Position;

use super::tally::Tally;
use super::{ProjectionError, parse_position};

/// Adds `tally` (the counted events of the log after `after`, through `through`) to the tables of
/// projection `name` and moves its checkpoint to `through`, if the checkpoint is still `after`.
pub(crate) async fn apply(
    client: &mut deadpool_postgres::Object,
    name: &str,
    after: Position,
    through: Position,
    tally: &Tally,
) -> Result<(), ProjectionError> {
    let tx = client.transaction().await?;
    let stored = lock_checkpoint(&tx, name).await?;
    if stored != after {
        return Err(ProjectionError::Moved { actual: stored });
    }
    if !tally.is_empty() {
        write(&tx, tally).await?;
    }
    let through_text = through.to_string();
    tx.execute(
        "UPDATE flightdeck.projection_checkpoints SET position = $2, updated_at = now() WHERE name = $1",
        &[&name, &through_text],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Locks the checkpoint row until the end of `tx` and returns it. Missing row: a projection that was
/// never started, at the start of the log.
pub(crate) async fn lock_checkpoint(tx: &Transaction<'_>, name: &str) -> Result<Position, ProjectionError> {
    tx.execute(
        "INSERT INTO flightdeck.projection_checkpoints (name, position) VALUES ($1, repeat('0', 32)) \
         ON CONFLICT (name) DO NOTHING",
        &[&name],
    )
    .await?;
    let row = tx
        .query_one("SELECT position FROM flightdeck.projection_checkpoints WHERE name = $1 FOR UPDATE", &[&name])
        .await?;
    parse_position(row.try_get(0)?)
}

/// `INSERT … ON CONFLICT DO UPDATE` adding a per-key count.
fn counter_sql(table: &str, key: &str, count: &str) -> String {
    format!(
        "INSERT INTO flightdeck.{table} AS t (site, minute, {key}, {count}) \
         SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::int8[]) \
         ON CONFLICT (site, minute, {key}) DO UPDATE SET {count} = t.{count} + excluded.{count}"
    )
}

const MINUTES_SQL: &str = "INSERT INTO flightdeck.stats_minutes AS t \
     (site, minute, page_views, interactions, form_submissions) \
     SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::int8[], $4::int8[], $5::int8[]) \
     ON CONFLICT (site, minute) DO UPDATE SET page_views = t.page_views + excluded.page_views, \
     interactions = t.interactions + excluded.interactions, \
     form_submissions = t.form_submissions + excluded.form_submissions";

const SESSION_MINUTES_SQL: &str = "INSERT INTO flightdeck.stats_session_minutes (site, minute, session) \
     SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::text[]) ON CONFLICT DO NOTHING";

const SESSIONS_SQL: &str = "INSERT INTO flightdeck.stats_sessions AS t (site, session, first_seen, last_seen, events) \
     SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[], $5::int8[]) \
     ON CONFLICT (site, session) DO UPDATE SET first_seen = least(t.first_seen, excluded.first_seen), \
     last_seen = greatest(t.last_seen, excluded.last_seen), events = t.events + excluded.events";

const SITES_SQL: &str = "INSERT INTO flightdeck.stats_sites AS t (site, first_seen, last_seen, events) \
     SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[], $4::int8[]) \
     ON CONFLICT (site) DO UPDATE SET first_seen = least(t.first_seen, excluded.first_seen), \
     last_seen = greatest(t.last_seen, excluded.last_seen), events = t.events + excluded.events";

type Keyed = std::collections::BTreeMap<(String, DateTime<Utc>, String), i64>;

/// Adds every table's share of `tally`: one statement per table, all rows as arrays.
async fn write(tx: &Transaction<'_>, tally: &Tally) -> Result<(), ProjectionError> {
    let (mut sites, mut minutes, mut counts): (Vec<&str>, Vec<DateTime<Utc>>, [Vec<i64>; 3]) = Default::default();
    for ((site, minute), by_type) in &tally.minutes {
        sites.push(site);
        minutes.push(*minute);
        for (column, n) in counts.iter_mut().zip(by_type) {
            column.push(*n);
        }
    }
    let statement = tx.prepare_cached(MINUTES_SQL).await?;
    tx.execute(&statement, &[&sites, &minutes, &counts[0], &counts[1], &counts[2]]).await?;

    for (map, table, key, count) in [
        (&tally.pages, "stats_pages", "path", "views"),
        (&tally.elements, "stats_elements", "element", "interactions"),
        (&tally.forms, "stats_forms", "form", "submissions"),
    ] {
        write_keyed(tx, map, &counter_sql(table, key, count)).await?;
    }

    let (mut sites, mut minutes, mut sessions): (Vec<&str>, Vec<DateTime<Utc>>, Vec<&str>) = Default::default();
    for (site, minute, session) in &tally.session_minutes {
        sites.push(site);
        minutes.push(*minute);
        sessions.push(session);
    }
    let statement = tx.prepare_cached(SESSION_MINUTES_SQL).await?;
    tx.execute(&statement, &[&sites, &minutes, &sessions]).await?;

    let (mut sites, mut sessions, mut firsts, mut lasts, mut events) =
        (Vec::<&str>::new(), Vec::<&str>::new(), Vec::new(), Vec::new(), Vec::<i64>::new());
    for ((site, session), span) in &tally.sessions {
        sites.push(site);
        sessions.push(session);
        firsts.push(span.first);
        lasts.push(span.last);
        events.push(span.events);
    }
    let statement = tx.prepare_cached(SESSIONS_SQL).await?;
    tx.execute(&statement, &[&sites, &sessions, &firsts, &lasts, &events]).await?;

    let (mut sites, mut firsts, mut lasts, mut events) =
        (Vec::<&str>::new(), Vec::new(), Vec::new(), Vec::<i64>::new());
    for (site, span) in &tally.sites {
        sites.push(site);
        firsts.push(span.first);
        lasts.push(span.last);
        events.push(span.events);
    }
    let statement = tx.prepare_cached(SITES_SQL).await?;
    tx.execute(&statement, &[&sites, &firsts, &lasts, &events]).await?;
    Ok(())
}

async fn write_keyed(tx: &Transaction<'_>, map: &Keyed, sql: &str) -> Result<(), ProjectionError> {
    if map.is_empty() {
        return Ok(());
    }
    let (mut sites, mut minutes, mut keys, mut counts) =
        (Vec::<&str>::new(), Vec::new(), Vec::<&str>::new(), Vec::new());
    for ((site, minute, key), n) in map {
        sites.push(site);
        minutes.push(*minute);
        keys.push(key);
        counts.push(*n);
    }
    let statement = tx.prepare_cached(sql).await?;
    tx.execute(&statement, &[&sites, &minutes, &keys, &counts]).await?;
    Ok(())
}
