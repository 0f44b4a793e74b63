//! Reading: streams, single events, the global log and its head.
//!
//! Global-log reads only return rows whose transaction is older than every transaction still
//! running (`xid < pg_snapshot_xmin(pg_current_snapshot())`): those rows are final, and every row
//! committed later has a larger xid, so it sorts after everything already read.

use deadpool_postgres::Object;
use tokio_postgres::GenericClient;
use tokio_postgres::types::Type;
use tokio_postgres::{Row, Statement};
use uuid::Uuid;

use super::{Position, RecordedEvent, StoreError};

// The text form of xid is aliased so that `ORDER BY e.xid` sorts by the xid8 value, never by its text.
const COLUMNS: &str =
    "e.id, e.stream_id, e.version, e.type, e.data, e.metadata, e.created_at, e.xid::text AS xid_text, e.seq, e.site";

/// The visibility horizon: rows below it are final.
const HORIZON: &str = "e.xid < pg_snapshot_xmin(pg_current_snapshot())";

pub(crate) async fn stream<C: GenericClient>(
    client: &C,
    stream: &str,
    from_version: u64,
    limit: u32,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM flightdeck.events e WHERE e.stream_id = $1 AND e.version >= $2 ORDER BY e.version LIMIT $3"
    );
    let from = i64::try_from(from_version).unwrap_or(i64::MAX);
    let rows = client
        .query_typed(&sql, &[(&stream, Type::TEXT), (&from, Type::INT8), (&i64::from(limit), Type::INT8)])
        .await?;
    rows.iter().map(to_event).collect()
}

pub(crate) async fn event<C: GenericClient>(client: &C, id: Uuid) -> Result<Option<RecordedEvent>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM flightdeck.events e WHERE e.id = $1");
    let row = client.query_typed_opt(&sql, &[(&id, Type::UUID)]).await?;
    row.as_ref().map(to_event).transpose()
}

/// The global-log read: every final row after a position, in log order.
static ALL_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT {COLUMNS} FROM flightdeck.events e \
         WHERE (e.xid, e.seq) > ($1::text::xid8, $2) AND {HORIZON} \
         ORDER BY e.xid, e.seq LIMIT $3"
    )
});

/// The global-log read's statement on `client`, prepared once per pooled connection: the pump, the
/// reads behind each group commit and every replay run it, so parsing and planning it each time
/// would be waste.
pub(crate) async fn all_statement(client: &Object) -> Result<Statement, tokio_postgres::Error> {
    client.prepare_typed_cached(&ALL_SQL, &[Type::TEXT, Type::INT8, Type::INT8]).await
}

/// Reads the global log after `after`.
pub(crate) async fn all(client: &Object, after: Position, limit: u32) -> Result<Vec<RecordedEvent>, StoreError> {
    let statement = all_statement(client).await?;
    all_with(client, &statement, after, limit).await
}

/// Reads the global log after `after` with the statement of [`all_statement`]. The request is sent
/// when the future is first polled, so it can be pipelined behind other requests.
pub(crate) async fn all_with(
    client: &Object,
    statement: &Statement,
    after: Position,
    limit: u32,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let xid = after.xid_text();
    let rows = client.query(statement, &[&xid, &after.seq_i64(), &i64::from(limit)]).await?;
    rows.iter().map(to_event).collect()
}

pub(crate) async fn head<C: GenericClient>(client: &C) -> Result<Position, StoreError> {
    let sql = format!(
        "SELECT e.xid::text AS xid_text, e.seq FROM flightdeck.events e WHERE {HORIZON} \
         ORDER BY e.xid DESC, e.seq DESC LIMIT 1"
    );
    match client.query_typed_opt(&sql, &[]).await? {
        None => Ok(Position::START),
        Some(row) => Ok(Position::from_db(&row.try_get::<_, String>(0)?, row.try_get(1)?)?),
    }
}

fn to_event(row: &Row) -> Result<RecordedEvent, StoreError> {
    let xid: String = row.try_get(7)?;
    let version: i64 = row.try_get(2)?;
    Ok(RecordedEvent {
        id: row.try_get(0)?,
        stream: row.try_get(1)?,
        site: row.try_get(9)?,
        version: version.max(0) as u64,
        event_type: row.try_get(3)?,
        data: row.try_get(4)?,
        metadata: row.try_get(5)?,
        timestamp: row.try_get(6)?,
        position: Position::from_db(&xid, row.try_get(8)?)?,
    })
}
