//! `flightdeck projections rebuild`: recomputes the stats tables from the log, against the same
//! database `serve` uses (embedded or `DATABASE_URL`), and prints what it did as one JSON line.

use std::io::{IsTerminal as _, Write as _};
use std::time::{Duration, Instant};

use super::CliError;
use super::args::DatabaseArgs;
use super::commands::with_database;

pub(super) async fn rebuild(args: &DatabaseArgs) -> Result<(), CliError> {
    let summary = with_database(args, 2, true, async |db| {
        let terminal = std::io::stderr().is_terminal();
        let mut last = Instant::now();
        let progress = |read: u64, position| {
            if last.elapsed() >= Duration::from_secs(1) {
                last = Instant::now();
                let end = if terminal { "\r" } else { "\n" };
                eprint!("rebuilding: {read} events read, at {position}{end}");
            }
        };
        Ok(crate::projections::rebuild(&db.store, progress).await?)
    })
    .await?;
    eprintln!(
        "rebuilt the stats from {} events in {:.1} s ({} counted by this command, any others by a running server)",
        summary.events_read, summary.seconds, summary.events_counted
    );
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer(&mut stdout, &summary).map_err(std::io::Error::other)?;
    writeln!(stdout)?;
    Ok(())
}
