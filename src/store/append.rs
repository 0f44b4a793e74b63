//! Appending: one round trip to `flightdeck.append_batch`, in the caller's transaction or in its own.

use tokio_postgres::GenericClient;
use tokio_postgres::types::Type;
use uuid::Uuid;

use super::event::validate_append;
use super::{AppendOutcome, AppendedEvent, ExpectedVersion, NewEvent, Position, StoreError};

const APPEND_SQL: &str = "SELECT event_id, event_version, event_xid::text, event_seq, stored_before \
                          FROM flightdeck.append_batch($1, $2, $3, $4, $5, $6, $7)";

const APPEND_TYPES: &[Type] =
    &[Type::TEXT, Type::INT8, Type::UUID_ARRAY, Type::TEXT_ARRAY, Type::JSONB_ARRAY, Type::JSONB_ARRAY, Type::TEXT];

/// Appends `events` to `stream` of `site` through `client`, which may be a transaction of the
/// caller's: then the events commit or roll back with the caller's own writes. Ids are generated
/// (UUIDv7) here for events without one. A stream belongs to the site of its first event; another
/// site is refused with [`StoreError::SiteMismatch`]. Does not retry: a [`StoreError::Retry`]
/// means roll back and try again.
pub async fn append_in<C: GenericClient>(
    client: &C,
    site: &str,
    stream: &str,
    expected: ExpectedVersion,
    events: &[NewEvent],
) -> Result<AppendOutcome, StoreError> {
    validate_append(site, stream, events)?;
    let ids: Vec<Uuid> = events.iter().map(|e| e.id.unwrap_or_else(Uuid::now_v7)).collect();
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    let data: Vec<&serde_json::Value> = events.iter().map(|e| &e.data).collect();
    let metadata: Vec<serde_json::Value> =
        events.iter().map(|e| serde_json::Value::Object(e.metadata.clone())).collect();
    let expected_sql = expected.to_sql();
    let rows = client
        .query_typed(
            APPEND_SQL,
            &[
                (&stream, APPEND_TYPES[0].clone()),
                (&expected_sql, APPEND_TYPES[1].clone()),
                (&ids, APPEND_TYPES[2].clone()),
                (&types, APPEND_TYPES[3].clone()),
                (&data, APPEND_TYPES[4].clone()),
                (&metadata, APPEND_TYPES[5].clone()),
                (&site, APPEND_TYPES[6].clone()),
            ],
        )
        .await
        .map_err(|e| StoreError::from_append(e, site, stream, expected))?;
    let mut already_stored = false;
    let mut appended = Vec::with_capacity(rows.len());
    for row in rows {
        let xid: String = row.try_get(2)?;
        let version: i64 = row.try_get(1)?;
        already_stored |= row.try_get::<_, bool>(4)?;
        appended.push(AppendedEvent {
            id: row.try_get(0)?,
            position: Position::from_db(&xid, row.try_get(3)?)?,
            stream: stream.to_string(),
            site: site.to_string(),
            version: version.max(0) as u64,
        });
    }
    Ok(AppendOutcome { events: appended, already_stored })
}
