//! `flightdeck serve`: the long-running server and its orderly shutdown.
//!
//! Order of shutdown on SIGINT/SIGTERM: stop accepting and finish in-flight requests, end
//! background tasks, then stop the embedded PostgreSQL last.

use std::net::SocketAddr;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Auth;
use crate::bus::{AppendMode, Bus, BusOptions, Routing};
use crate::http::{AddrRange, AppState, LimitsConfig, Rate, WsConfig, router};
use crate::projections::Projections;
use crate::store::StoreError;

use super::CliError;
use super::args::{DatabaseArgs, LimitArgs, ServeArgs};
use super::database::Database;

pub(super) async fn serve(db_args: &DatabaseArgs, args: &ServeArgs) -> Result<(), CliError> {
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    tasks.spawn(on_signal(shutdown.clone()));

    let db = Database::open(db_args, args.db_pool).await?;
    let result = run(&db, db_args, args, &shutdown, &tasks).await;
    shutdown.cancel();
    tasks.close();
    tasks.wait().await;
    db.close().await?;
    tracing::info!("stopped");
    result
}

async fn run(
    db: &Database,
    db_args: &DatabaseArgs,
    args: &ServeArgs,
    shutdown: &CancellationToken,
    tasks: &TaskTracker,
) -> Result<(), CliError> {
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .map_err(|source| CliError::Listen { addr: args.addr, source })?;
    let addr = listener.local_addr()?;
    let mut routing = Routing::new()
        .with_channels(args.channels.iter().map(String::as_str))
        .map_err(|e| CliError::Usage(e.to_string()))?;
    if !args.publish.is_empty() {
        routing = routing.publish_only(args.publish.iter().map(String::as_str));
        let unpublished: Vec<&str> =
            crate::tracker::TrackType::ALL.iter().map(|t| t.as_str()).filter(|t| !routing.is_published(t)).collect();
        if !unpublished.is_empty() {
            tracing::warn!(?unpublished, "the stats projector sees only published types: these will not be counted");
        }
    }
    let append_mode = if args.append_mode == "seed" { AppendMode::Seed } else { AppendMode::Grouped };
    let options = BusOptions { routing, deliver: !args.no_delivery, append_mode, ..BusOptions::default() };
    if args.no_delivery || append_mode == AppendMode::Seed {
        tracing::warn!(delivery = !args.no_delivery, ?append_mode, "benchmark configuration");
    }
    let (limits, ws) = limits(&args.limits)?;
    let auth = if args.insecure_no_auth {
        tracing::warn!(
            "AUTHENTICATION IS OFF (--insecure-no-auth): anyone who can reach {addr} reads and writes every event"
        );
        eprintln!(
            "\n  WARNING: authentication is off (--insecure-no-auth).\n  Anyone who can reach http://{addr} can read and write every event.\n"
        );
        Auth::disabled()
    } else {
        args.auth.auth(db_args)?
    };
    let login = auth.login_token();
    let state = AppState::new(db.store.clone()).max_body(args.max_body).ws_config(ws).limits(limits).auth(auth);
    tasks.spawn(prepare_database(state.clone(), db.config.clone(), options, shutdown.clone(), tasks.clone()));
    if let Some(rate) = args.demo {
        super::demo::spawn_in_process(state.clone(), addr, rate, shutdown.clone(), tasks);
    }
    // Logged and printed: scripts and tests wait for this line.
    tracing::info!(%addr, "FlightDeck listening on http://{addr}");
    if let Some(login) = login {
        // Like a notebook server: the one link that opens the dashboard, usable once, for an hour.
        tracing::info!("dashboard (one-time login link, valid 1 h): http://{addr}/login?token={login}");
        tracing::info!(
            "more links: `flightdeck token create --login --site '*'`; API tokens: `flightdeck token create --site <site> --subscribe`"
        );
    }
    // TCP_NODELAY: small SSE frames must leave at once, not wait on Nagle and delayed ACKs (up to
    // ~40 ms stalls measured without it).
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(%err, "cannot set TCP_NODELAY");
        }
    });
    // The peer address feeds the per-address limits.
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app).with_graceful_shutdown(shutdown.clone().cancelled_owned()).await?;
    Ok(())
}

/// The limits and WebSocket settings the flags ask for.
fn limits(args: &LimitArgs) -> Result<(LimitsConfig, WsConfig), CliError> {
    let mut exempt = Vec::new();
    for range in &args.limit_exempt {
        match range.trim() {
            "" | "none" => {}
            range => {
                exempt.push(range.parse::<AddrRange>().map_err(|e| CliError::Usage(format!("--limit-exempt: {e}")))?)
            }
        }
    }
    let limits = LimitsConfig {
        ingest_per_address: Rate::new(args.ingest_rate, args.ingest_burst),
        track_per_site: Rate::new(args.site_rate, args.site_burst),
        streams_per_address: Some(args.max_streams).filter(|n| *n > 0),
        streams_per_token: Some(args.max_streams_per_token).filter(|n| *n > 0),
        max_filters: args.max_filters,
        max_track_body: args.max_track_body,
        exempt,
        trust_forwarded_for: args.trust_forwarded_for,
        max_keys: args.limit_max_keys,
    };
    let ws = WsConfig {
        max_subscriptions: args.ws_max_subscriptions,
        max_request: args.ws_max_request,
        max_message: args.ws_max_message,
        ..WsConfig::default()
    };
    Ok((limits, ws))
}

/// Connects, migrates and starts the bus, retrying with capped exponential backoff and jitter while the database
/// is unreachable: a database that starts after FlightDeck is not a reason to die.
async fn prepare_database(
    state: AppState,
    config: tokio_postgres::Config,
    options: BusOptions,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let mut delay = Duration::from_millis(100);
    loop {
        let prepared = match state.store.migrate().await {
            Ok(applied) => Bus::start(state.store.clone(), config.clone(), options.clone(), shutdown.clone(), &tasks)
                .await
                .map(|bus| (applied, bus)),
            Err(err) => Err(err),
        };
        match prepared {
            Ok((applied, bus)) => {
                tracing::info!(applied, "database ready; delivering events");
                state.set_projections(Projections::start(bus.clone(), shutdown.clone(), &tasks));
                state.set_bus(bus);
                return;
            }
            Err(err @ (StoreError::Unavailable(_) | StoreError::Retry)) => {
                let jitter = Duration::from_millis(rand::random::<u64>() % (delay.as_millis() as u64 / 2 + 1));
                tracing::warn!(error = %err, retry_in = ?(delay + jitter), "database unreachable; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay + jitter) => {}
                    _ = shutdown.cancelled() => return,
                }
                delay = (delay * 2).min(Duration::from_secs(30));
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot prepare the database; stopping");
                shutdown.cancel();
                return;
            }
        }
    }
}

/// Cancels `shutdown` on SIGINT (Ctrl-C) or SIGTERM. Shared by the long-running commands.
pub(super) async fn on_signal(shutdown: CancellationToken) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(err) => {
            tracing::error!(%err, "cannot listen for SIGTERM");
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received; shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM received; shutting down"),
        _ = shutdown.cancelled() => {}
    }
    shutdown.cancel();
}
