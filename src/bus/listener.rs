//! The process's one LISTEN connection, and the notifier that tells other processes about this
//! process's appends. Both reconnect by themselves.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use tokio_postgres::{AsyncMessage, Client, NoTls, Statement};

use crate::store::Position;

use super::{CHANNEL, Shared};

/// How often the listener proves its connection alive, and how long the proof may take.
const PROBE_EVERY: Duration = Duration::from_secs(2);
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Aborts the connection-driving task when the session ends, however it ends.
struct Driver(tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>);

impl Drop for Driver {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Opens a connection whose notifications go to `notes`; returns the client and the task driving
/// the connection (its end means the connection is gone).
async fn connect(
    config: &tokio_postgres::Config,
    notes: Option<tokio::sync::mpsc::UnboundedSender<String>>,
) -> Result<(Client, Driver), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(NoTls).await?;
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            if let (AsyncMessage::Notification(n), Some(notes)) = (message?, &notes) {
                let _ = notes.send(n.payload().to_string());
            }
        }
        Ok(())
    });
    Ok((client, Driver(driver)))
}

/// Keeps a LISTEN connection up: reconnects with capped exponential backoff and jitter, and after
/// every (re)connection wakes the pump so it catches up from its last position before live
/// notifications matter again.
pub(super) async fn listen(shared: Arc<Shared>, config: tokio_postgres::Config) {
    let mut backoff = Duration::from_millis(50);
    let mut connected_before = false;
    while !shared.shutdown.is_cancelled() {
        let result = session(&shared, &config, &mut backoff, &mut connected_before).await;
        shared.stats.listener_connected.store(0, Ordering::Relaxed);
        match result {
            Ok(()) => return,
            Err(err) => {
                let jitter = Duration::from_millis(rand::random::<u64>() % (backoff.as_millis() as u64 / 2 + 1));
                tracing::warn!(error = %err, retry_in = ?(backoff + jitter), "listener connection lost; reconnecting");
                tokio::select! {
                    _ = tokio::time::sleep(backoff + jitter) => {}
                    _ = shared.shutdown.cancelled() => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

async fn session(
    shared: &Shared,
    config: &tokio_postgres::Config,
    backoff: &mut Duration,
    connected_before: &mut bool,
) -> Result<(), String> {
    let (tx, mut notes) = tokio::sync::mpsc::unbounded_channel();
    let (client, mut driver) = connect(config, Some(tx)).await.map_err(|e| e.to_string())?;
    client.batch_execute(&format!("LISTEN {CHANNEL}")).await.map_err(|e| e.to_string())?;
    if *connected_before {
        shared.stats.reconnects.fetch_add(1, Ordering::Relaxed);
        tracing::info!("listener reconnected; catching up from the log");
    }
    *connected_before = true;
    *backoff = Duration::from_millis(50);
    shared.stats.listener_connected.store(1, Ordering::Relaxed);
    // Anything appended while we were not listening is read now.
    shared.catch_up();
    let mut probe = tokio::time::interval(PROBE_EVERY);
    loop {
        tokio::select! {
            end = &mut driver.0 => {
                return Err(match end {
                    Ok(Ok(())) => "the server closed the connection".to_string(),
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => e.to_string(),
                });
            }
            Some(payload) = notes.recv() => {
                shared.stats.notifications.fetch_add(1, Ordering::Relaxed);
                match payload.parse::<Position>() {
                    // Already delivered (typically this process's own wake-up coming back): a
                    // read now would find nothing.
                    Ok(position) if position <= *shared.delivered.borrow() => {}
                    Ok(position) => shared.hint(position),
                    Err(_) => shared.catch_up(),
                }
            }
            _ = probe.tick() => {
                match tokio::time::timeout(PROBE_TIMEOUT, client.simple_query("SELECT 1")).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(e.to_string()),
                    Err(_) => return Err("the connection stopped answering".to_string()),
                }
            }
            _ = shared.shutdown.cancelled() => return Ok(()),
        }
    }
}

/// Announces this process's appends to other processes: one autocommit `pg_notify` carrying the
/// newest position, at most once per `notify_interval`, however many appends happened. The appends
/// themselves never take NOTIFY's commit-time lock.
pub(super) async fn notify(shared: Arc<Shared>, config: tokio_postgres::Config) {
    let mut local = shared.local.subscribe();
    let mut conn: Option<(Client, Driver, Statement)> = None;
    loop {
        tokio::select! {
            changed = local.changed() => if changed.is_err() { return },
            _ = shared.shutdown.cancelled() => return,
        }
        let position = *local.borrow_and_update();
        if conn.as_ref().is_none_or(|(_, d, _)| d.0.is_finished()) {
            conn = notifier(&config).await.ok();
        }
        if let Some((client, _, statement)) = &conn {
            let sent = client.execute(statement, &[&CHANNEL, &position.to_string()]).await;
            if let Err(err) = sent {
                tracing::debug!(error = %err, "could not send a wake-up; other processes will poll");
                conn = None;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(shared.options.notify_interval) => {}
            _ = shared.shutdown.cancelled() => return,
        }
    }
}

/// The notifier's connection, with its statement prepared once.
///
/// Its transactions commit asynchronously (`synchronous_commit = off`): a wake-up is a hint, not
/// data, so it need not wait for its commit record to reach the disk. Waiting would cost a WAL
/// flush per wake-up, and for that whole flush the wake-up's transaction (a notifying transaction
/// takes an xid) would hold back the visibility horizon, which keeps the pump from reading events
/// committed meanwhile (`store/read.rs`).
async fn notifier(config: &tokio_postgres::Config) -> Result<(Client, Driver, Statement), tokio_postgres::Error> {
    let (client, driver) = connect(config, None).await?;
    client.batch_execute("SET synchronous_commit = off").await?;
    let statement = client.prepare("SELECT pg_notify($1, $2)").await?;
    Ok((client, driver, statement))
}
