//! The one-shot commands: `migrate`, `append`, `read`, `bench`.

use std::io::{Read as _, Write as _};

use serde_json::Value;
use uuid::Uuid;

use crate::store::{ExpectedVersion, NewEvent, Position, metadata_object};

use super::CliError;
use super::args::{AppendArgs, BenchAppendArgs, DatabaseArgs, ReadArgs};
use super::database::Database;

/// Opens the database, runs `body`, and closes the database whatever `body` returned.
pub(super) async fn with_database<T>(
    args: &DatabaseArgs,
    pool: usize,
    migrate: bool,
    body: impl AsyncFnOnce(&Database) -> Result<T, CliError>,
) -> Result<T, CliError> {
    let db = Database::open(args, pool).await?;
    let result = async {
        if migrate {
            db.store.migrate().await?;
        }
        body(&db).await
    }
    .await;
    db.close().await?;
    result
}

pub(super) async fn migrate(args: &DatabaseArgs) -> Result<(), CliError> {
    let applied = with_database(args, 1, false, async |db| Ok(db.store.migrate().await?)).await?;
    eprintln!("schema up to date ({applied} migration(s) applied now)");
    Ok(())
}

pub(super) async fn append(args: &DatabaseArgs, append: &AppendArgs) -> Result<(), CliError> {
    let data_text = if append.data == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text)?;
        text
    } else {
        append.data.clone()
    };
    let data: Value =
        serde_json::from_str(&data_text).map_err(|e| CliError::Usage(format!("DATA is not valid JSON: {e}")))?;
    let mut event = NewEvent::new(append.event_type.clone(), data);
    if let Some(text) = &append.metadata {
        let metadata: Value =
            serde_json::from_str(text).map_err(|e| CliError::Usage(format!("--metadata is not valid JSON: {e}")))?;
        event.metadata = metadata_object(metadata).map_err(|e| CliError::Usage(format!("--metadata: {e}")))?;
    }
    if let Some(id) = &append.id {
        let id = Uuid::parse_str(id).map_err(|e| CliError::Usage(format!("--id is not a UUID: {e}")))?;
        event = event.with_id(id);
    }
    let expected: ExpectedVersion =
        append.expected_version.parse().map_err(|e| CliError::Usage(format!("--expected-version: {e}")))?;
    let out = with_database(args, 1, true, async |db| {
        Ok(db.store.append(&append.site, &append.stream, expected, &[event]).await?)
    })
    .await?;
    let mut stdout = std::io::stdout().lock();
    for event in &out.events {
        serde_json::to_writer(&mut stdout, event).map_err(std::io::Error::other)?;
        writeln!(stdout)?;
    }
    if out.already_stored {
        eprintln!("already stored by an earlier append with the same id; nothing new written");
    }
    Ok(())
}

pub(super) async fn read(args: &DatabaseArgs, read: &ReadArgs) -> Result<(), CliError> {
    const PAGE: u64 = 1000;
    let after = match read.after.as_str() {
        "start" => Position::START,
        text => text.parse().map_err(|e| CliError::Usage(format!("--after: {e}")))?,
    };
    with_database(args, 1, true, async |db| {
        let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
        let mut remaining = read.limit.unwrap_or(u64::MAX);
        let mut from_version = read.from_version;
        let mut after = after;
        while remaining > 0 {
            let page = u32::try_from(remaining.min(PAGE)).unwrap_or(1000);
            let events = match &read.stream {
                Some(stream) => db.store.read_stream(stream, from_version, page).await?,
                None => db.store.read_all(after, page).await?,
            };
            for event in &events {
                serde_json::to_writer(&mut stdout, event).map_err(std::io::Error::other)?;
                writeln!(stdout)?;
            }
            let Some(last) = events.last() else { break };
            from_version = last.version + 1;
            after = last.position;
            remaining -= events.len() as u64;
            if (events.len() as u64) < u64::from(page) {
                break;
            }
        }
        stdout.flush()?;
        Ok(())
    })
    .await
}

pub(super) async fn bench_append(args: &DatabaseArgs, bench: &BenchAppendArgs) -> Result<(), CliError> {
    with_database(args, 1, false, async |db| Ok(crate::bench::append::run(db.config.clone(), bench).await?)).await
}
