//! `flightdeck demo` (a client of a running server) and the in-process generator of
//! `serve --demo`: both run [`crate::demo::run`], which posts through `/api/track`.

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::demo::{DemoError, DemoOptions, Progress};
use crate::http::AppState;

use super::CliError;
use super::args::{DatabaseArgs, DemoArgs};
use super::commands::with_database;

pub(super) async fn demo(db_args: &DatabaseArgs, args: &DemoArgs) -> Result<(), CliError> {
    let duration = match args.seconds {
        None => None,
        Some(s) if s.is_finite() && s > 0.0 && s <= 31.0 * 86400.0 => Some(Duration::from_secs_f64(s)),
        Some(_) => return Err(CliError::Usage("--seconds must be a positive number of seconds".into())),
    };
    let options = DemoOptions { url: args.url.clone(), rate: args.rate, sites: args.sites, duration };
    options.check()?;
    if !args.no_register {
        // The server first: opening the database of a data directory no server runs would start
        // (even create) a PostgreSQL cluster for nothing.
        crate::demo::reachable(&options.url).await?;
        with_database(db_args, 1, true, async |db| Ok(crate::demo::register(&db.store, options.sites).await?))
            .await
            .map_err(|err| match err {
                CliError::Demo(err) => CliError::Demo(err),
                other => CliError::Demo(DemoError::Register(other.to_string())),
            })?;
    }
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    tasks.spawn(super::serve::on_signal(shutdown.clone()));
    eprintln!(
        "demo: {} site(s), {} events/s to {}{}",
        args.sites,
        args.rate,
        args.url,
        if duration.is_some() { "" } else { "; Ctrl-C to stop" }
    );
    let terminal = std::io::stderr().is_terminal();
    let result = crate::demo::run(&options, shutdown.clone(), |p, done| {
        let end = if done {
            "\n"
        } else if terminal {
            "\r"
        } else {
            "\n"
        };
        eprint!("{}{end}", line(p));
    })
    .await;
    shutdown.cancel();
    tasks.close();
    tasks.wait().await;
    result?;
    Ok(())
}

/// The progress line: `demo: 12.0 s, 600 events sent (50.1/s), 83 sessions, 0 errors`.
fn line(p: &Progress) -> String {
    let mut line = format!(
        "demo: {:.1} s, {} events sent ({:.1}/s), {} sessions, {} errors",
        p.elapsed.as_secs_f64(),
        p.events,
        p.rate,
        p.sessions,
        p.errors
    );
    if let Some(err) = &p.last_error {
        line.push_str(&format!(" (last: {})", err.chars().take(120).collect::<String>()));
    }
    // Pad so a shorter line overwrites a longer one in a terminal.
    format!("{line:<100}")
}

/// `serve --demo=RATE`: waits until the server is ready, then generates traffic against its own
/// address until shutdown, logging progress every 10 s.
pub(super) fn spawn_in_process(
    state: AppState,
    addr: SocketAddr,
    rate: u32,
    shutdown: CancellationToken,
    tasks: &TaskTracker,
) {
    let ip = if addr.ip().is_unspecified() { std::net::Ipv4Addr::LOCALHOST.into() } else { addr.ip() };
    let url = format!("http://{}", SocketAddr::new(ip, addr.port()));
    tasks.spawn(async move {
        while !state.is_ready() {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = shutdown.cancelled() => return,
            }
        }
        let options = DemoOptions { url, rate, sites: 3, duration: None };
        if let Err(err) = crate::demo::register(&state.store, options.sites).await {
            tracing::warn!(error = %err, "demo traffic not started");
            return;
        }
        // Registered through this process's own store: no need to wait for the next check.
        state.sites().invalidate();
        tracing::info!(rate, url = %options.url, "demo traffic: generating synthetic visitors on 3 sites");
        let mut logged = std::time::Instant::now();
        let result = crate::demo::run(&options, shutdown, |p, done| {
            if done || logged.elapsed() >= Duration::from_secs(10) {
                logged = std::time::Instant::now();
                tracing::info!(events = p.events, sessions = p.sessions, errors = p.errors, "demo traffic");
            }
        })
        .await;
        if let Err(err) = result {
            tracing::warn!(error = %err, "demo traffic stopped");
        }
    });
}
