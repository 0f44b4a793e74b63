//! The process's one LISTEN connection: it reconnects by itself, and its session carries a name
//! ([`LISTENER_NAME`]) by which other processes' notifiers know someone listens (`notifier.rs`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use tokio_postgres::{AsyncMessage, Client, NoTls};

use crate::store::Position;

use super::{CHANNEL, Shared};

/// The `application_name` of every FlightDeck listener session. A notifier announces its process's
/// appends only while a session of that name, other than its own process's, is connected to the
/// database (`notifier.rs`); another application that wants the wake-ups can LISTEN under it.
pub const LISTENER_NAME: &str = "flightdeck listener";

/// How often the listener proves its connection alive, and how long the proof may take.
const PROBE_EVERY: Duration = Duration::from_secs(2);
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Aborts the connection-driving task when the session ends, however it ends.
pub(super) struct Driver(pub(super) tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>);

impl Drop for Driver {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Opens a connection whose notifications go to `notes`; returns the client and the task driving
/// the connection (its end means the connection is gone).
pub(super) async fn connect(
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
    let mut config = config.clone();
    config.application_name(LISTENER_NAME);
    let (client, mut driver) = connect(&config, Some(tx)).await.map_err(|e| e.to_string())?;
    let pid: i32 = client.query_one("SELECT pg_backend_pid()", &[]).await.map_err(|e| e.to_string())?.get(0);
    client.batch_execute(&format!("LISTEN {CHANNEL}")).await.map_err(|e| e.to_string())?;
    // Dropped (back to 0) however this session ends.
    let _pid = ListenerPid::set(shared, pid);
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

/// This process's listener backend, published in [`Shared`] for the notifier while the session
/// lasts.
struct ListenerPid<'a>(&'a Shared);

impl<'a> ListenerPid<'a> {
    fn set(shared: &'a Shared, pid: i32) -> Self {
        shared.listener_pid.store(pid, Ordering::Release);
        ListenerPid(shared)
    }
}

impl Drop for ListenerPid<'_> {
    fn drop(&mut self) {
        self.0.listener_pid.store(0, Ordering::Release);
    }
}
