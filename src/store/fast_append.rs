//! The server's own append path: one prepared INSERT, no lock, no function call.
//!
//! Used only on an autocommit connection (`Store::append`), where the statement is its own
//! transaction. It reads the stream's last version and inserts after it in one statement:
//! - The expected-version check is a WHERE clause: a mismatch inserts nothing.
//! - A concurrent append to the same stream, or a reused id, fails on a unique index, and the
//!   whole statement (so the whole batch) is rolled back.
//! - Stream order equals log order without a check: this transaction's xid is assigned at its
//!   insert, after it read the last version, which was committed by a transaction with a smaller
//!   xid.
//! - The stream's site is checked in the same WHERE clause against the last event's (which every
//!   event of the stream shares): another site inserts nothing. A brand-new stream taken by two
//!   sites at once fails on the (stream, version) unique index. No extra round trip either way.
//!
//! Anything but a clean insert of the whole batch falls back to the locked, checked
//! `flightdeck.append_batch` (see `append.rs`), which tells a conflict from an idempotent retry.
//! Measured in docs/benchmarks.md; the plpgsql path costs roughly twice the server CPU per append.

use std::task::Poll;

use deadpool_postgres::Object;
use futures::future::maybe_done;
use tokio_postgres::Statement;
use tokio_postgres::types::{Json, Type};
use uuid::Uuid;

use super::event::validate_append;
use super::group::READ_BEHIND;
use super::versions::Versions;
use super::{AppendOutcome, AppendedEvent, ExpectedVersion, NewEvent, Position, RecordedEvent, StoreError, append_in};

/// Builds the statement for one event and for a batch. The last version (if any) is joined so that
/// a new stream still yields a row. `$7` is the site, inserted and compared with the last event's.
/// `$check` is extra SQL for the WHERE clause.
macro_rules! statements {
    ($check:literal) => {
        (
            concat!(
                "INSERT INTO flightdeck.events AS e (id, stream_id, version, type, data, metadata, site) \
                 SELECT $1, $2, coalesce(last.version, 0) + 1, $4, $5, $6, $7 FROM (SELECT) AS one \
                 LEFT JOIN LATERAL (SELECT l.version, l.xid, l.site FROM flightdeck.events l \
                                    WHERE l.stream_id = $2 ORDER BY l.version DESC LIMIT 1) last ON true \
                 WHERE ($3::int8 IS NULL OR $3 = coalesce(last.version, 0)) \
                   AND (last.site IS NULL OR last.site = $7::text) ",
                $check,
                " RETURNING e.id, e.version, e.xid::text, e.seq"
            ),
            concat!(
                "INSERT INTO flightdeck.events AS e (id, stream_id, version, type, data, metadata, site) \
                 SELECT x.id, $2, coalesce(last.version, 0) + x.ord, x.type, x.data, x.metadata, $7 \
                 FROM unnest($1::uuid[], $4::text[], $5::jsonb[], $6::jsonb[]) WITH ORDINALITY \
                      AS x(id, type, data, metadata, ord) \
                 LEFT JOIN LATERAL (SELECT l.version, l.xid, l.site FROM flightdeck.events l \
                                    WHERE l.stream_id = $2 ORDER BY l.version DESC LIMIT 1) last ON true \
                 WHERE ($3::int8 IS NULL OR $3 = coalesce(last.version, 0)) \
                   AND (last.site IS NULL OR last.site = $7::text) ",
                $check,
                " ORDER BY x.ord RETURNING e.id, e.version, e.xid::text, e.seq"
            ),
        )
    };
}

/// In autocommit, no xid check is needed (see the module docs).
const AUTOCOMMIT: (&str, &str) = statements!("");

/// Inside a longer transaction (group commit), the xid was taken before this statement, so a
/// younger transaction may have committed the stream's last version since: refuse (no row) then,
/// keeping version order equal to log order.
pub(crate) const IN_TRANSACTION: (&str, &str) =
    statements!("AND (last.xid IS NULL OR last.xid <= pg_current_xact_id())");

/// One event to a stream whose last version (and site) this process knows (see `versions.rs`).
const NEXT_SQL: &str = "INSERT INTO flightdeck.events AS e (id, stream_id, version, type, data, metadata, site) \
     VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING e.xid::text, e.seq";

/// Parameter types of the one-event statements (`$1`..`$7`).
const ONE_TYPES: [Type; 7] = [Type::UUID, Type::TEXT, Type::INT8, Type::TEXT, Type::JSONB, Type::JSONB, Type::TEXT];
/// Parameter types of the several-events statement.
const MANY_TYPES: [Type; 7] =
    [Type::UUID_ARRAY, Type::TEXT, Type::INT8, Type::TEXT_ARRAY, Type::JSONB_ARRAY, Type::JSONB_ARRAY, Type::TEXT];

/// Prepares (or finds in the connection's cache) both statements of `sql`, so that a later
/// [`try_insert`] with them sends its request as soon as it is first polled.
pub(crate) async fn prepare(client: &Object, (one_sql, many_sql): (&str, &str)) -> Result<(), tokio_postgres::Error> {
    client.prepare_typed_cached(one_sql, &ONE_TYPES).await?;
    client.prepare_typed_cached(many_sql, &MANY_TYPES).await?;
    client.prepare_typed_cached(NEXT_SQL, &ONE_TYPES).await?;
    Ok(())
}

/// [`prepare`], and the global-log read's statement, returned.
pub(crate) async fn prepare_with_read(client: &Object, sql: (&str, &str)) -> Result<Statement, tokio_postgres::Error> {
    prepare(client, sql).await?;
    super::read::all_statement(client).await
}

/// Appends in a transaction of its own on `client` (which must not be inside a transaction).
pub(crate) async fn append(
    client: &Object,
    versions: &Versions,
    site: &str,
    stream: &str,
    expected: ExpectedVersion,
    events: &[NewEvent],
) -> Result<AppendOutcome, StoreError> {
    validate_append(site, stream, events)?;
    let known = versions.get(site, stream);
    let first = try_insert(client, known, AUTOCOMMIT, site, stream, expected, events).await;
    settle(client, versions, site, stream, expected, events, first).await
}

/// Like [`append`], with the global log read after `after` right behind the insert, in the same
/// round trip (see `group.rs`, `CommitHooks::read_from`): the read runs once the insert has
/// committed, so it includes it unless an older transaction is still open. `done` gets the
/// append's outcome as soon as it is known, without waiting for the read; the page is returned
/// (`None` if the read failed).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn append_then_read(
    client: &Object,
    versions: &Versions,
    site: &str,
    stream: &str,
    expected: ExpectedVersion,
    events: &[NewEvent],
    after: Position,
    done: impl FnOnce(Result<AppendOutcome, StoreError>),
) -> Option<Vec<RecordedEvent>> {
    if let Err(err) = validate_append(site, stream, events) {
        done(Err(err.into()));
        return None;
    }
    let known = versions.get(site, stream);
    // Prepared beforehand (cached per connection), so that both requests go out at the first poll.
    let read = match prepare_with_read(client, AUTOCOMMIT).await {
        Ok(read) => read,
        Err(err) => {
            done(Err(StoreError::from_append(err, site, stream, expected)));
            return None;
        }
    };
    let mut insert = std::pin::pin!(maybe_done(try_insert(client, known, AUTOCOMMIT, site, stream, expected, events)));
    let mut page = std::pin::pin!(maybe_done(super::read::all_with(client, &read, after, READ_BEHIND)));
    // One poll each, in order: both requests go out, the insert's first (tokio-postgres sends a
    // request when its future is first polled, and PostgreSQL answers in the order received).
    std::future::poll_fn(|cx| {
        let _ = insert.as_mut().poll(cx);
        let _ = page.as_mut().poll(cx);
        Poll::Ready(())
    })
    .await;
    let answer = async {
        insert.as_mut().await;
        match insert.as_mut().take_output() {
            Some(first) => done(settle(client, versions, site, stream, expected, events, first).await),
            None => done(Err(StoreError::Unavailable("the append was not answered".into()))),
        }
    };
    futures::join!(answer, page.as_mut());
    page.as_mut().take_output().and_then(Result::ok)
}

/// The outcome of a first insert attempt: a clean insert, or the checked path's answer.
async fn settle(
    client: &Object,
    versions: &Versions,
    site: &str,
    stream: &str,
    expected: ExpectedVersion,
    events: &[NewEvent],
    first: Result<Option<AppendOutcome>, tokio_postgres::Error>,
) -> Result<AppendOutcome, StoreError> {
    let out = match first {
        Ok(Some(out)) => Ok(out),
        // Mismatched version or site, or a unique violation: let the checked path say which, or
        // recognize an idempotent retry.
        Ok(None) => {
            versions.forget(stream);
            append_in(&***client, site, stream, expected, events).await
        }
        Err(err) if err.code().is_some_and(|c| c.code() == "23505") => {
            versions.forget(stream);
            append_in(&***client, site, stream, expected, events).await
        }
        Err(err) => Err(StoreError::from_append(err, site, stream, expected)),
    }?;
    if !out.already_stored
        && let Some(last) = out.events.last()
    {
        versions.record(site, stream, last.version);
    }
    Ok(out)
}

/// Inserts the whole batch, or returns `None` if the expected version, the stream's site (or, in a
/// transaction, the xid order) did not match. Ids must be set. `known` must be a version
/// remembered for this stream *and this site*.
pub(crate) async fn try_insert(
    client: &Object,
    known: Option<u64>,
    (one_sql, many_sql): (&str, &str),
    site: &str,
    stream: &str,
    expected: ExpectedVersion,
    events: &[NewEvent],
) -> Result<Option<AppendOutcome>, tokio_postgres::Error> {
    let ids: Vec<Uuid> = events.iter().map(|e| e.id.unwrap_or_else(Uuid::now_v7)).collect();
    let expected_sql = expected.to_sql();
    let mut appended = Vec::with_capacity(events.len());
    let next = known.filter(|&v| v > 0 && expected.to_sql().is_none_or(|e| e == v as i64));
    if let ([event], Some(last)) = (events, next) {
        let statement = client.prepare_typed_cached(NEXT_SQL, &ONE_TYPES).await?;
        let version = last as i64 + 1;
        let row = client
            .query_one(
                &statement,
                &[&ids[0], &stream, &version, &event.event_type, &event.data, &Json(&event.metadata), &site],
            )
            .await?;
        appended.push(appended_event(ids[0], site, stream, version, &row.try_get::<_, String>(0)?, row.try_get(1)?));
    } else if let [event] = events {
        let statement = client.prepare_typed_cached(one_sql, &ONE_TYPES).await?;
        let metadata = Json(&event.metadata);
        let row = client
            .query_opt(&statement, &[&ids[0], &stream, &expected_sql, &event.event_type, &event.data, &metadata, &site])
            .await?;
        let Some(row) = row else { return Ok(None) };
        let (version, xid) = (row.try_get(1)?, row.try_get::<_, String>(2)?);
        appended.push(appended_event(ids[0], site, stream, version, &xid, row.try_get(3)?));
    } else {
        let statement = client.prepare_typed_cached(many_sql, &MANY_TYPES).await?;
        let kinds: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
        let data: Vec<&serde_json::Value> = events.iter().map(|e| &e.data).collect();
        let metadata: Vec<Json<&serde_json::Map<String, serde_json::Value>>> =
            events.iter().map(|e| Json(&e.metadata)).collect();
        let rows = client.query(&statement, &[&ids, &stream, &expected_sql, &kinds, &data, &metadata, &site]).await?;
        if rows.len() != events.len() {
            return Ok(None);
        }
        for row in rows {
            let xid: String = row.try_get(2)?;
            appended.push(appended_event(row.try_get(0)?, site, stream, row.try_get(1)?, &xid, row.try_get(3)?));
        }
    }
    if appended.iter().any(|e| e.position == Position::START) {
        return Ok(None);
    }
    Ok(Some(AppendOutcome { events: appended, already_stored: false }))
}

fn appended_event(id: Uuid, site: &str, stream: &str, version: i64, xid: &str, seq: i64) -> AppendedEvent {
    // An unparsable xid cannot come from PostgreSQL; START makes the caller take the checked path.
    let position = Position::from_db(xid, seq).unwrap_or(Position::START);
    AppendedEvent { id, position, stream: stream.to_string(), site: site.to_string(), version: version.max(0) as u64 }
}
