//! Clients that ride out faults the way real ones do, for fault-tolerance tests:
//!
//! - [`ResumingSse`]: a Server-Sent Events client that reconnects by itself, like a browser's
//!   `EventSource`: when the stream ends or breaks, or the server cannot be reached or answers
//!   anything but 200, it waits a little and reconnects with `Last-Event-ID` = the last id it saw.
//! - [`post_until_acked`]: a writer that resends *the same* event (same id) until the server
//!   acknowledges it with 201 or 200, riding out 503 answers and connection errors.
//!
//! Both ask a [`UrlFn`] where to connect on every attempt, so a test can move them to a restarted
//! server on a new port.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// Where a client should connect right now.
pub type UrlFn = Arc<dyn Fn() -> String + Send + Sync>;

/// A [`UrlFn`] that always answers `url`.
pub fn fixed(url: String) -> UrlFn {
    Arc::new(move || url.clone())
}

/// A URL the test can change while clients use it (a server restarted on a new port).
#[derive(Clone, Debug)]
pub struct MovableUrl(Arc<Mutex<String>>);

impl MovableUrl {
    pub fn new(url: String) -> Self {
        MovableUrl(Arc::new(Mutex::new(url)))
    }

    pub fn set(&self, url: String) {
        *self.0.lock().unwrap() = url;
    }

    pub fn get(&self) -> String {
        self.0.lock().unwrap().clone()
    }

    /// A [`UrlFn`] answering the current URL with `suffix` appended.
    pub fn with(&self, suffix: &str) -> UrlFn {
        let this = self.clone();
        let suffix = suffix.to_string();
        Arc::new(move || format!("{}{suffix}", this.get()))
    }
}

/// One event as the SSE client received it: the frame's `id:` and its `data:` parsed as JSON.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub frame_id: String,
    pub envelope: Value,
}

/// What happened to the SSE client's connections.
#[derive(Debug, Default)]
pub struct SseStats {
    /// Streams opened (200 answers).
    pub connects: AtomicU64,
    /// Of those, opened with a `Last-Event-ID`.
    pub resumes: AtomicU64,
    /// Answers other than 200 (e.g. 503 while a server prepares its database).
    pub refused: AtomicU64,
    /// Requests that got no answer (connection refused, reset, timeout).
    pub failed: AtomicU64,
    /// Open streams that ended or broke.
    pub ended: AtomicU64,
}

impl SseStats {
    pub fn summary(&self) -> String {
        format!(
            "connects {} (resumed {}), refused {}, failed {}, ended {}",
            self.connects.load(Ordering::Relaxed),
            self.resumes.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            self.ended.load(Ordering::Relaxed)
        )
    }
}

/// An SSE client that keeps itself connected in a background task and records every event frame.
pub struct ResumingSse {
    received: Arc<Mutex<Vec<Delivered>>>,
    pub stats: Arc<SseStats>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// How long an open stream may stay silent before the client gives up on it and reconnects (the
/// server sends a keep-alive comment every 15 s).
const STALL: Duration = Duration::from_secs(40);

impl ResumingSse {
    /// Starts following `url` (e.g. `…/api/events?from=start`), reconnecting after `retry_delay`.
    pub fn start(url: UrlFn, retry_delay: Duration) -> ResumingSse {
        let received = Arc::new(Mutex::new(Vec::new()));
        let stats = Arc::new(SseStats::default());
        let stop = CancellationToken::new();
        let task = tokio::spawn(follow(url, retry_delay, received.clone(), stats.clone(), stop.clone()));
        ResumingSse { received, stats, stop, task }
    }

    /// Events received so far.
    pub fn len(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    /// Waits until at least `n` events have arrived; panics after `timeout`.
    pub async fn wait_for(&self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.len() < n {
            assert!(!self.task.is_finished(), "the SSE client task ended (it panicked: see above)");
            assert!(
                Instant::now() < deadline,
                "only {} of {n} events arrived within {timeout:?} ({})",
                self.len(),
                self.stats.summary()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until some connection is open (the subscription exists on the server).
    pub async fn wait_connected(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.stats.connects.load(Ordering::Relaxed) == 0 {
            assert!(Instant::now() < deadline, "never connected ({})", self.stats.summary());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the client and returns everything it received, in arrival order.
    pub async fn finish(self) -> Vec<Delivered> {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task).await.expect("the SSE client stops").unwrap();
        std::mem::take(&mut *self.received.lock().unwrap())
    }
}

async fn follow(
    url: UrlFn,
    retry_delay: Duration,
    received: Arc<Mutex<Vec<Delivered>>>,
    stats: Arc<SseStats>,
    stop: CancellationToken,
) {
    let http = reqwest::Client::builder().connect_timeout(Duration::from_secs(2)).build().unwrap();
    let mut last_id: Option<String> = None;
    while !stop.is_cancelled() {
        let mut request = http.get(url()).header("accept", "text/event-stream");
        if let Some(id) = &last_id {
            request = request.header("last-event-id", id.as_str());
        }
        let response = tokio::select! {
            r = tokio::time::timeout(Duration::from_secs(10), request.send()) => r,
            _ = stop.cancelled() => return,
        };
        match response {
            Ok(Ok(response)) if response.status() == 200 => {
                stats.connects.fetch_add(1, Ordering::Relaxed);
                if last_id.is_some() {
                    stats.resumes.fetch_add(1, Ordering::Relaxed);
                }
                let mut body = response.bytes_stream();
                let mut buffer: Vec<u8> = Vec::new();
                loop {
                    while let Some(end) = find_frame_end(&buffer) {
                        let raw: Vec<u8> = buffer.drain(..end).collect();
                        let (id, event, data) = parse_frame(&raw);
                        // Like a browser: any frame's id is the one to resume after, including the
                        // opening `subscribed` frame's (the start position).
                        if event.as_deref() == Some("subscribed") {
                            last_id = id.or(last_id);
                            continue;
                        }
                        assert_eq!(event, None, "FlightDeck's event frames have no event: line");
                        if let Some(data) = data {
                            let envelope: Value = serde_json::from_str(&data)
                                .unwrap_or_else(|e| panic!("an SSE frame's data is not JSON ({e}): {data}"));
                            let frame_id = id.unwrap_or_else(|| panic!("an event frame without an id: {data}"));
                            last_id = Some(frame_id.clone());
                            received.lock().unwrap().push(Delivered { frame_id, envelope });
                        }
                    }
                    let chunk = tokio::select! {
                        c = tokio::time::timeout(STALL, body.next()) => c,
                        _ = stop.cancelled() => return,
                    };
                    match chunk {
                        Ok(Some(Ok(bytes))) => buffer.extend_from_slice(&bytes),
                        // End of stream, a broken connection, or a silent one: reconnect.
                        Ok(Some(Err(_))) | Ok(None) | Err(_) => {
                            stats.ended.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                    }
                }
            }
            Ok(Ok(_)) => {
                stats.refused.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(_)) | Err(_) => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(retry_delay) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// The length of the first complete frame in `buffer` (blank-line terminated), if any.
fn find_frame_end(buffer: &[u8]) -> Option<usize> {
    buffer.windows(2).position(|w| w == b"\n\n").map(|at| at + 2)
}

/// A frame's `id:`, `event:` and `data:` (lines joined with `\n`); all None for comments (the
/// retry hint, keep-alive comments). Malformed UTF-8 is a test failure.
fn parse_frame(raw: &[u8]) -> (Option<String>, Option<String>, Option<String>) {
    let text = std::str::from_utf8(raw).expect("SSE frames are UTF-8");
    let mut id = None;
    let mut event = None;
    let mut data: Option<String> = None;
    for line in text.lines() {
        if line.is_empty() || line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => id = Some(value.to_string()),
            "data" => match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => data = Some(value.to_string()),
            },
            "event" => event = Some(value.to_string()),
            _ => {}
        }
    }
    (id, event, data)
}

/// What writers went through.
#[derive(Debug, Default)]
pub struct WriteStats {
    /// POSTs sent, including retries.
    pub attempts: AtomicU64,
    /// Events acknowledged (201 or 200).
    pub acked: AtomicU64,
    /// Of those, acknowledged with 200 (a retry found the event already stored).
    pub already_stored: AtomicU64,
    /// Failed attempts by kind (`503`, `500`, `connection error`, …).
    pub failures: Mutex<BTreeMap<String, u64>>,
}

impl WriteStats {
    fn failed(&self, kind: String) {
        *self.failures.lock().unwrap().entry(kind).or_default() += 1;
    }

    pub fn summary(&self) -> String {
        format!(
            "{} acked ({} as already stored) in {} attempts; failures {:?}",
            self.acked.load(Ordering::Relaxed),
            self.already_stored.load(Ordering::Relaxed),
            self.attempts.load(Ordering::Relaxed),
            self.failures.lock().unwrap()
        )
    }
}

/// An acknowledged event: its id, the position the server reported, and the status (201/200).
#[derive(Debug, Clone)]
pub struct Acked {
    pub id: String,
    pub position: String,
    pub status: u16,
}

/// POSTs one event object, or an array of events for one stream (each carrying its own `"id"`), to
/// `{base()}/api/events` until the server acknowledges it with 201 or 200, resending the same body
/// after 503 answers and connection errors (every 50 ms). Any other status is a test failure, and
/// so is not being acknowledged by `deadline`. Returns one acknowledgement per event, in order.
pub async fn post_until_acked(
    http: &reqwest::Client,
    base: &UrlFn,
    body: &Value,
    stats: &WriteStats,
    deadline: Instant,
) -> Vec<Acked> {
    let events = match body {
        Value::Array(items) => items.iter().collect::<Vec<_>>(),
        single => vec![single],
    };
    let ids: Vec<String> =
        events.iter().map(|e| e["id"].as_str().expect("each event carries its id").to_string()).collect();
    loop {
        assert!(Instant::now() < deadline, "events {ids:?} were never acknowledged; writers: {}", stats.summary());
        stats.attempts.fetch_add(1, Ordering::Relaxed);
        let sent = http.post(format!("{}/api/events", base())).json(body).send().await;
        match sent {
            Ok(response) if response.status() == 201 || response.status() == 200 => {
                let status = response.status().as_u16();
                // The answer can still break on the way (the server stopping): resend.
                let Ok(answer) = response.json::<Value>().await else {
                    stats.failed("broken answer".into());
                    continue;
                };
                let stored = answer["events"].as_array().unwrap_or_else(|| panic!("no events in {answer}"));
                assert_eq!(stored.len(), ids.len(), "{answer}");
                let acked: Vec<Acked> = stored
                    .iter()
                    .zip(&ids)
                    .map(|(e, id)| {
                        assert_eq!(e["id"].as_str(), Some(id.as_str()), "{answer}");
                        Acked { id: id.clone(), position: e["position"].as_str().unwrap().to_string(), status }
                    })
                    .collect();
                stats.acked.fetch_add(acked.len() as u64, Ordering::Relaxed);
                if status == 200 {
                    stats.already_stored.fetch_add(acked.len() as u64, Ordering::Relaxed);
                }
                return acked;
            }
            // An outage must read as "try again" (503 with Retry-After), never as a server bug (500).
            Ok(response) if response.status() == 503 => {
                assert!(response.headers().contains_key("retry-after"), "503 without Retry-After");
                stats.failed(response.status().as_u16().to_string());
            }
            Ok(response) => {
                let status = response.status();
                let answer = response.text().await.unwrap_or_default();
                panic!("events {ids:?}: unexpected {status}: {answer}");
            }
            Err(_) => stats.failed("connection error".into()),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
