//! `flightdeck tail`: follows the global log in a terminal, one line per event, until Ctrl-C or
//! SIGTERM.
//!
//! It runs its own [`Bus`] on the database (the same library path the server uses): new events
//! arrive through LISTEN/NOTIFY wake-ups from other processes, or the bus's safety poll. A tail
//! that falls behind resubscribes from the last position it examined, out of the store, so a slow
//! terminal loses nothing; a store error during a replay is retried from the last printed event.

use std::io::{BufWriter, Write};
use std::time::Duration;

use chrono::SecondsFormat;
use futures::{FutureExt as _, StreamExt as _};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bus::{Bus, BusError, BusOptions, FieldMatch, Filter, Start};
use crate::store::{Position, RecordedEvent, validate_site};

use super::CliError;
use super::args::{DatabaseArgs, TailArgs};
use super::database::Database;

/// Connections in the pool: the pump's reads and a replay's reads.
const POOL: usize = 4;
/// Longest data shown on a human-readable line, in characters; `--json` prints everything.
const MAX_DATA_CHARS: usize = 1000;

pub(super) async fn tail(db_args: &DatabaseArgs, args: &TailArgs) -> Result<(), CliError> {
    let (filter, start) = parse(args)?;
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    tasks.spawn(super::serve::on_signal(shutdown.clone()));
    let db = match Database::open(db_args, POOL).await {
        Ok(db) => db,
        Err(err) => {
            stop(&shutdown, &tasks).await;
            return Err(err);
        }
    };
    let result = follow(&db, args.json, filter, start, &shutdown, &tasks).await;
    // The bus's tasks end before the database (maybe an embedded cluster) stops.
    stop(&shutdown, &tasks).await;
    let closed = db.close().await;
    result.and(closed)
}

/// Ends the signal watcher and the bus's tasks, and waits for them.
async fn stop(shutdown: &CancellationToken, tasks: &TaskTracker) {
    shutdown.cancel();
    tasks.close();
    tasks.wait().await;
}

/// The filter and starting point the flags describe.
fn parse(args: &TailArgs) -> Result<(Filter, Start), CliError> {
    let fields = args
        .where_
        .iter()
        .map(|expr| FieldMatch::parse(expr).map_err(|e| CliError::Usage(format!("--where: {e}"))))
        .collect::<Result<_, _>>()?;
    let sites = args
        .site
        .iter()
        .map(|site| site.trim())
        .filter(|site| !site.is_empty())
        .map(|site| validate_site(site).map(|()| site.to_string()).map_err(|e| CliError::Usage(format!("--site: {e}"))))
        .collect::<Result<_, _>>()?;
    let filter = Filter {
        types: args.types.iter().map(|t| t.trim()).filter(|t| !t.is_empty()).map(String::from).collect(),
        stream: args.stream.clone(),
        stream_prefix: args.stream_prefix.clone(),
        fields,
        channels: Vec::new(),
        sites,
        scope: None,
    };
    let start = match args.from.as_str() {
        "now" => Start::Now,
        "start" => Start::Beginning,
        text => Start::After(
            text.parse::<Position>()
                .map_err(|e| CliError::Usage(format!("--from must be now, start or a position: {e}")))?,
        ),
    };
    Ok((filter, start))
}

/// Prepares the database, starts the bus and prints matching events until `shutdown`.
async fn follow(
    db: &Database,
    json: bool,
    filter: Filter,
    start: Start,
    shutdown: &CancellationToken,
    tasks: &TaskTracker,
) -> Result<(), CliError> {
    let setup = async {
        db.store.migrate().await?;
        Bus::start(db.store.clone(), db.config.clone(), BusOptions::default(), shutdown.clone(), tasks).await
    };
    let bus = tokio::select! {
        bus = setup => bus?,
        _ = shutdown.cancelled() => return Ok(()),
    };
    let subscription = bus.subscribe(filter.clone(), start);
    eprintln!(
        "following {}; Ctrl-C to stop",
        match start {
            Start::Now => "new events".to_string(),
            Start::Beginning => "the log from its start".to_string(),
            Start::After(position) => format!("the log after {position}"),
        }
    );
    match print_events(&bus, subscription, filter, start, json, shutdown).await {
        // A closed pipe (`flightdeck tail | head`) is a normal way to stop.
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// The printing loop: resubscribes after lag (from the last examined position) and after store
/// errors (from the last printed one), flushes whenever it would wait for the next event.
async fn print_events(
    bus: &Bus,
    mut subscription: crate::bus::Subscription,
    filter: Filter,
    mut resume: Start,
    json: bool,
    shutdown: &CancellationToken,
) -> std::io::Result<()> {
    let mut out = BufWriter::new(std::io::stdout());
    let mut retry = Duration::from_millis(250);
    loop {
        let item = match subscription.next().now_or_never() {
            Some(item) => item,
            None => {
                out.flush()?;
                tokio::select! {
                    item = subscription.next() => item,
                    _ = shutdown.cancelled() => break,
                }
            }
        };
        if shutdown.is_cancelled() {
            break;
        }
        match item {
            Some(Ok(event)) => {
                write_event(&mut out, &event, json)?;
                resume = Start::After(event.position);
                retry = Duration::from_millis(250);
            }
            Some(Err(BusError::Lagged { last })) => {
                tracing::debug!(%last, "tail fell behind; resuming from the store");
                resume = Start::After(last);
                subscription = bus.subscribe(filter.clone(), resume);
            }
            Some(Err(err @ BusError::Store(_))) => {
                tracing::warn!(error = %err, retry_in = ?retry, "cannot read the log; retrying");
                out.flush()?;
                tokio::select! {
                    _ = tokio::time::sleep(retry) => {}
                    _ = shutdown.cancelled() => break,
                }
                retry = (retry * 2).min(Duration::from_secs(5));
                subscription = bus.subscribe(filter.clone(), resume);
            }
            Some(Err(BusError::Closed)) | None => break,
        }
    }
    out.flush()
}

/// One event: its envelope as a JSON line, or `position  timestamp  site  stream@version  type  data`.
fn write_event(out: &mut impl Write, event: &RecordedEvent, json: bool) -> std::io::Result<()> {
    if json {
        serde_json::to_writer(&mut *out, event).map_err(std::io::Error::other)?;
        return writeln!(out);
    }
    let data = serde_json::to_string(&event.data).map_err(std::io::Error::other)?;
    writeln!(
        out,
        "{}  {}  {}  {}@{}  {}  {}",
        event.position,
        event.timestamp.to_rfc3339_opts(SecondsFormat::Millis, true),
        event.site,
        event.stream,
        event.version,
        event.event_type,
        shorten(&data),
    )
}

/// `text` cut to [`MAX_DATA_CHARS`] characters, saying how much was left out.
fn shorten(text: &str) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(MAX_DATA_CHARS) {
        None => text.into(),
        Some((cut, _)) => format!("{}… (+{} bytes)", &text[..cut], text.len() - cut).into(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    fn args(from: &str, where_: &[&str]) -> TailArgs {
        TailArgs {
            types: vec!["A".into(), " ".into(), "B".into()],
            where_: where_.iter().map(|s| s.to_string()).collect(),
            site: vec!["shop".into(), " ".into()],
            stream: None,
            stream_prefix: Some("s-".into()),
            from: from.into(),
            json: false,
        }
    }

    #[test]
    fn flags_become_a_filter_and_a_start() {
        let (filter, start) = parse(&args("start", &["data.k:1"])).unwrap();
        assert_eq!(filter.types, vec!["A", "B"]);
        assert_eq!(filter.sites, vec!["shop"]);
        assert_eq!(filter.stream_prefix.as_deref(), Some("s-"));
        assert_eq!(filter.fields, vec![FieldMatch::parse("data.k:1").unwrap()]);
        assert_eq!(start, Start::Beginning);
        assert_eq!(parse(&args("now", &[])).unwrap().1, Start::Now);
        let position = "00000000000003e80000000000000007";
        assert_eq!(parse(&args(position, &[])).unwrap().1, Start::After(position.parse().unwrap()));
        for (from, where_, words) in [("yesterday", vec![], "--from must be"), ("now", vec!["k:1"], "--where")] {
            let err = parse(&args(from, &where_)).unwrap_err().to_string();
            assert!(err.contains(words), "{err}");
        }
        let mut bad_site = args("now", &[]);
        bad_site.site = vec!["no such site!".into()];
        let err = parse(&bad_site).unwrap_err().to_string();
        assert!(err.starts_with("--site: ") && err.contains("no such site!"), "{err}");
    }

    #[test]
    fn human_lines_are_compact_and_bounded() {
        let mut event = RecordedEvent {
            id: uuid::Uuid::now_v7(),
            position: Position { xid: 1000, seq: 7 },
            stream: "s-1".into(),
            site: "default".into(),
            version: 3,
            event_type: "A".into(),
            data: json!({"k": 1, "t": "x"}),
            metadata: json!({}),
            timestamp: chrono::DateTime::from_timestamp_millis(1_700_000_000_123).unwrap(),
        };
        let mut out = Vec::new();
        write_event(&mut out, &event, false).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "00000000000003e80000000000000007  2023-11-14T22:13:20.123Z  default  s-1@3  A  {\"k\":1,\"t\":\"x\"}\n"
        );
        event.data = json!("é".repeat(2000));
        let mut out = Vec::new();
        write_event(&mut out, &event, false).unwrap();
        let line = String::from_utf8(out).unwrap();
        assert!(line.trim_end().ends_with("… (+2003 bytes)"), "{line}");
        let mut out = Vec::new();
        write_event(&mut out, &event, true).unwrap();
        let back: RecordedEvent = serde_json::from_slice(&out).unwrap();
        assert_eq!(back, event);
    }
}
