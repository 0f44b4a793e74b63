//! HTTP ingestion in front of the floor: each frame's event arrives as a POST first.
//!
//! Issue 3's latency target is about events that applications POST, so a server meeting it does
//! at least this per event: read a request, parse its JSON, append it, answer, and write the event
//! to every subscriber. Two ways, both timed commit→client by the floor's reader:
//!
//! * [`serve`] (`bench floor --database … --minimal-http`): the writer runs a minimal HTTP server
//!   (axum, as FlightDeck) whose handler parses the body, INSERTs one row (`floor_db.rs`), hands
//!   the frame to the connections and answers `201`; the reader POSTs from its own process, as
//!   `bench delivery`'s publisher does. Nothing of FlightDeck is involved: what any server built
//!   on these libraries needs, on this machine.
//! * [`ingest`] (`--ingest-url`): the writer POSTs each event to a FlightDeck server and writes
//!   the frame when the `201` arrives, with the xid of the event's position: FlightDeck's
//!   ingestion, then a fan-out that costs nothing beyond the floor's.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use tokio::net::TcpListener;
use tokio::sync::{Notify, broadcast};
use tokio::task::JoinSet;

use super::client::{ClientBenchError, Connection, Target, wall_micros};
use super::event_frame::xid_of_position;
use super::floor::frame;
use super::floor_db::Backends;

/// Keep-alive connections the events are POSTed from (as `bench delivery`'s publisher).
const PUBLISHERS: usize = 32;

/// POSTs `total` events to `url`'s `/api/events` at `rate` per second, one per request, from
/// [`PUBLISHERS`] connections; `acked(seq, sent_micros, status, body)` checks each answer.
pub async fn publish<F>(url: &str, rate: u32, total: u64, acked: F) -> Result<(), ClientBenchError>
where
    F: Fn(u64, i64, u16, &[u8]) -> Result<(), ClientBenchError> + Clone + Send + 'static,
{
    let target = Arc::new(Target::resolve(url).await?);
    let next = Arc::new(AtomicU64::new(0));
    let start = tokio::time::Instant::now() + Duration::from_millis(20);
    let period_nanos = 1_000_000_000 / u64::from(rate.max(1));
    let mut tasks = JoinSet::new();
    for i in 0..PUBLISHERS {
        let mut conn = Connection::open(&target).await?;
        let (target, next, acked) = (target.clone(), next.clone(), acked.clone());
        tasks.spawn(async move {
            let path = target.path("/api/events");
            loop {
                let seq = next.fetch_add(1, Ordering::Relaxed);
                if seq >= total {
                    return Ok::<_, ClientBenchError>(());
                }
                tokio::time::sleep_until(start + Duration::from_nanos(seq.saturating_mul(period_nanos))).await;
                let sent = wall_micros();
                let body = format!(r#"{{"stream":"floor-{i}","type":"BenchFloor","data":{{"seq":{seq},"t":{sent}}}}}"#);
                let (status, answer) = conn.post_json(&path, body.as_bytes()).await?;
                acked(seq, sent, status, &answer)?;
                if conn.closing() {
                    conn = Connection::open(&target).await?;
                }
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.map_err(|e| ClientBenchError::Failed(format!("a publisher stopped: {e}")))??;
    }
    Ok(())
}

/// The error for an answer that is not the expected `201`.
fn refused(status: u16, answer: &[u8]) -> ClientBenchError {
    let body = String::from_utf8_lossy(&answer[..answer.len().min(300)]).into_owned();
    ClientBenchError::Status { what: "POST /api/events".into(), status, body }
}

/// `--ingest-url`: POSTs each event to FlightDeck at `url`, and writes its frame on the `201`.
pub async fn ingest(
    url: &str,
    frames: broadcast::Sender<Arc<Vec<u8>>>,
    rate: u32,
    total: u64,
    frame_bytes: usize,
) -> Result<(), ClientBenchError> {
    publish(url, rate, total, move |seq, sent, status, answer| {
        let key = b"\"position\":\"";
        let xid = memchr::memmem::find(answer, key)
            .and_then(|at| answer.get(at + key.len()..at + key.len() + 32))
            .and_then(xid_of_position);
        let (201, Some(xid)) = (status, xid) else { return Err(refused(status, answer)) };
        // No receiver left only if every connection failed; the reader reports what is missing.
        let _ = frames.send(Arc::new(frame(seq, sent, xid, frame_bytes)));
        Ok(())
    })
    .await
}

/// The minimal server's state.
struct Minimal {
    backends: Arc<Backends>,
    frames: broadcast::Sender<Arc<Vec<u8>>>,
    frame_bytes: usize,
    handled: AtomicU64,
    total: u64,
    done: Notify,
}

/// `--minimal-http`: serves `POST /api/events` on `listener` until `total` events are appended
/// and their frames handed out.
pub async fn serve(
    listener: TcpListener,
    backends: Arc<Backends>,
    frames: broadcast::Sender<Arc<Vec<u8>>>,
    total: u64,
    frame_bytes: usize,
) -> Result<(), ClientBenchError> {
    let state =
        Arc::new(Minimal { backends, frames, frame_bytes, handled: AtomicU64::new(0), total, done: Notify::new() });
    let app = Router::new().route("/api/events", post(append)).with_state(state.clone());
    let finished = state.clone();
    axum::serve(listener, app).with_graceful_shutdown(async move { finished.done.notified().await }).await?;
    Ok(())
}

/// One event: parse, INSERT, frame out, `201`.
async fn append(State(state): State<Arc<Minimal>>, body: Bytes) -> (StatusCode, String) {
    let Ok(event) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return (StatusCode::BAD_REQUEST, r#"{"error":"malformed JSON"}"#.into());
    };
    let (Some(seq), Some(sent)) = (event["data"]["seq"].as_u64(), event["data"]["t"].as_i64()) else {
        return (StatusCode::BAD_REQUEST, r#"{"error":"data.seq and data.t are needed"}"#.into());
    };
    match state.backends.insert(seq, sent).await {
        Ok(xid) => {
            let _ = state.frames.send(Arc::new(frame(seq, sent, xid, state.frame_bytes)));
            if state.handled.fetch_add(1, Ordering::Relaxed) + 1 >= state.total {
                state.done.notify_one();
            }
            (StatusCode::CREATED, format!(r#"{{"xid":{xid}}}"#))
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, serde_json::json!({ "error": e.to_string() }).to_string()),
    }
}

/// Checks the minimal server's answer to one event.
pub fn minimal_acked(_seq: u64, _sent: i64, status: u16, answer: &[u8]) -> Result<(), ClientBenchError> {
    if status == 201 { Ok(()) } else { Err(refused(status, answer)) }
}
