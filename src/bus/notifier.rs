//! The notifier: tells other FlightDeck processes on the same database about this process's
//! appends, with one autocommit `pg_notify` carrying the newest position, at most once per
//! `notify_interval` however many appends happened. The appends themselves never take NOTIFY's
//! commit-time lock.
//!
//! A wake-up is only sent while someone else listens: a session named [`LISTENER_NAME`] other than
//! this process's own listener, as `pg_stat_activity` shows (its `application_name` and `pid` are
//! visible to every role). A lone process would otherwise pay, per wake-up, a transaction, its
//! commit record, and waking its own listener's backend and its own bus thread to hear a position it
//! already delivered. Whom to tell is looked up at most once per [`AUDIENCE_TTL`]. A wake-up held
//! back is re-checked when that answer expires, and sent then if a listener has appeared, so a
//! process that starts listening is told of an earlier append within about a second even if
//! nothing else is appended. A listener that connects after an append finds it anyway: every
//! listener session starts by reading the log from its last position (`listener.rs`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;
use tokio_postgres::{Client, Statement};

use super::listener::{Driver, LISTENER_NAME, connect};
use super::{CHANNEL, Shared};

/// How long the answer to "does anyone else listen?" is trusted.
const AUDIENCE_TTL: Duration = Duration::from_secs(1);

/// Listener sessions of other processes on this database (`$2` is this process's own, 0 if none).
const AUDIENCE_SQL: &str = "SELECT EXISTS (SELECT 1 FROM pg_stat_activity \
     WHERE datname = current_database() AND application_name = $1 AND pid <> $2)";

/// The notifier's session, with its statements prepared once.
struct Session {
    client: Client,
    driver: Driver,
    notify: Statement,
    audience: Statement,
}

/// The last answer to "does anyone else listen?".
#[derive(Default)]
struct Audience {
    others: bool,
    /// `None` until first asked, or after the session that asked failed.
    until: Option<Instant>,
}

/// Runs until shutdown; reconnects when its session fails (the safety poll of other processes
/// covers wake-ups lost meanwhile).
pub(super) async fn notify(shared: Arc<Shared>, config: tokio_postgres::Config) {
    let mut local = shared.local.subscribe();
    let mut session: Option<Session> = None;
    let mut audience = Audience::default();
    // A position not announced on an answer older than its append: asked again when that answer
    // expires, since a listener that connected in between was not counted and does not read the
    // log for it (one that connects later does).
    let mut held = false;
    loop {
        let recheck = audience.until.unwrap_or_else(Instant::now);
        tokio::select! {
            changed = local.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep_until(recheck), if held => {}
            _ = shared.shutdown.cancelled() => return,
        }
        let position = *local.borrow_and_update();
        if session.as_ref().is_none_or(|s| s.driver.0.is_finished()) {
            session = open(&config).await.ok();
            audience = Audience::default();
        }
        held = false;
        if let Some(s) = &session {
            match announce(s, &shared, &mut audience, &position.to_string()).await {
                Ok(outcome) => held = outcome == Outcome::HeldOnOldAnswer,
                Err(err) => {
                    tracing::debug!(error = %err, "could not send a wake-up; other processes will poll");
                    session = None;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(shared.options.notify_interval) => {}
            _ = shared.shutdown.cancelled() => return,
        }
    }
}

/// What [`announce`] did.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Sent,
    /// Nobody else listens, as asked after the position was appended.
    NobodyListens,
    /// Nobody else listened when last asked, before the position was appended.
    HeldOnOldAnswer,
}

/// Sends `position` (already appended) if another process listens, asking first when the last
/// answer expired.
async fn announce(
    session: &Session,
    shared: &Shared,
    audience: &mut Audience,
    position: &str,
) -> Result<Outcome, tokio_postgres::Error> {
    let mut fresh = false;
    if audience.until.is_none_or(|until| until <= Instant::now()) {
        let own = shared.listener_pid.load(Ordering::Acquire);
        let row = session.client.query_one(&session.audience, &[&LISTENER_NAME, &own]).await?;
        *audience = Audience { others: row.get(0), until: Some(Instant::now() + AUDIENCE_TTL) };
        fresh = true;
    }
    if !audience.others {
        return Ok(if fresh { Outcome::NobodyListens } else { Outcome::HeldOnOldAnswer });
    }
    session.client.execute(&session.notify, &[&CHANNEL, &position]).await?;
    Ok(Outcome::Sent)
}

/// Opens the notifier's session.
///
/// Its transactions commit asynchronously (`synchronous_commit = off`): a wake-up is a hint, not
/// data, so it need not wait for its commit record to reach the disk. Waiting would cost a WAL
/// flush per wake-up, and for that whole flush the wake-up's transaction (a notifying transaction
/// takes an xid) would hold back the visibility horizon, which keeps the pump from reading events
/// committed meanwhile (`store/read.rs`).
async fn open(config: &tokio_postgres::Config) -> Result<Session, tokio_postgres::Error> {
    let (client, driver) = connect(config, None).await?;
    client.batch_execute("SET synchronous_commit = off").await?;
    let notify = client.prepare("SELECT pg_notify($1, $2)").await?;
    let audience = client.prepare(AUDIENCE_SQL).await?;
    Ok(Session { client, driver, notify, audience })
}
