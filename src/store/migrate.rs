//! Versioned, idempotent schema migrations in the `flightdeck` schema.
//!
//! Each migration runs once, in order, in one transaction with its bookkeeping row. Concurrent
//! migrators (two servers starting together) are serialized by an advisory lock, so the second
//! finds the work done.

use tokio_postgres::Client;

use super::StoreError;

/// The schema's migrations: (version, name, SQL). Append only; never edit a shipped one.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "event_store", include_str!("../../migrations/0001_event_store.sql")),
    (2, "notify_sql_appends", include_str!("../../migrations/0002_notify_sql_appends.sql")),
    (3, "projections", include_str!("../../migrations/0003_projections.sql")),
    (4, "event_site", include_str!("../../migrations/0004_event_site.sql")),
    (5, "sites", include_str!("../../migrations/0005_sites.sql")),
    (6, "domain_rules", include_str!("../../migrations/0006_domain_rules.sql")),
];

/// Advisory lock key (class, object) held while migrating. The class differs from the stream locks'.
const LOCK: (i32, i32) = (1_178_879_026, 0);

/// Brings the schema up to date; returns how many migrations were applied now.
pub async fn migrate(client: &mut Client) -> Result<usize, StoreError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1, $2)", &[&LOCK.0, &LOCK.1]).await?;
    // "schema already exists, skipping" notices are noise on every start.
    tx.batch_execute("SET LOCAL client_min_messages = warning").await?;
    tx.batch_execute(
        "CREATE SCHEMA IF NOT EXISTS flightdeck;
         CREATE TABLE IF NOT EXISTS flightdeck.schema_migrations (
             version    integer PRIMARY KEY,
             name       text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         );",
    )
    .await?;
    let applied: Vec<i32> =
        tx.query("SELECT version FROM flightdeck.schema_migrations", &[]).await?.iter().map(|r| r.get(0)).collect();
    let known = MIGRATIONS.last().map_or(0, |m| m.0);
    if let Some(&found) = applied.iter().max()
        && found > known
    {
        return Err(StoreError::SchemaTooNew { found, known });
    }
    let mut count = 0;
    for (version, name, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        tx.batch_execute(sql).await?;
        tx.execute("INSERT INTO flightdeck.schema_migrations (version, name) VALUES ($1, $2)", &[version, name])
            .await?;
        tracing::info!(version, name, "applied migration");
        count += 1;
    }
    tx.commit().await?;
    Ok(count)
}
