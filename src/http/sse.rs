//! `GET /api/events`: the Server-Sent Events stream.
//!
//! One frame per event: `id: <position>` and `data: <envelope>`, with no `event:` line, so
//! `EventSource.onmessage` sees everything. A `retry:` hint goes first, which also flushes the
//! headers so the browser's `onopen` fires before any event. Browsers resend the last `id:` as
//! `Last-Event-ID` when they reconnect, and the stream resumes after it. A subscriber that falls
//! too far behind has its stream closed; its browser reconnects and resumes from the store.
//! Each stream holds a slot of its client's stream limit while it lives, and each filter list is
//! bounded (`limits.rs`): over either, the answer is a 429 or 400 before the stream starts.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use futures::StreamExt;

use crate::bus::{Batching, Chunks, Delivered, FieldMatch, Filter, Start};
use crate::store::{Position, validate_site};

use super::auth::{self, Subscriber};
use super::limits::StreamPermit;
use super::metrics::SubscriberGauge;
use super::{ApiError, AppState};

/// The reconnection delay suggested to browsers.
const RETRY: Duration = Duration::from_millis(1000);
/// Comment lines that keep proxies and the browser from timing the stream out.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Most events written to a socket at once when not batching.
const MAX_WRITE: usize = 256;

/// What the query string asks for.
#[derive(Debug)]
pub(crate) struct SseQuery {
    pub filter: Filter,
    pub start: Start,
    /// `batch=N,T`: up to N events per frame, waiting up to T ms.
    pub batch: Option<Batching>,
}

/// The token is checked first (a 401/403 before any limit), then the stream limits; the
/// subscription's filter is intersected with the token's scope, and the stream ends at the
/// token's expiry with a last `token-expired` frame.
pub(super) async fn stream(
    State(state): State<AppState>,
    Subscriber(access): Subscriber,
    permit: StreamPermit,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let SseQuery { filter, mut start, batch } = parse_query(query.as_deref().unwrap_or(""))?;
    state.limits.check_filter(&filter).map_err(|message| ApiError::bad_request("too_many_filters", message))?;
    let filter = auth::scoped(filter, &access)?;
    if let Some(last) = headers.get("last-event-id") {
        let text = last.to_str().unwrap_or_default().trim();
        if !text.is_empty() {
            start = Start::After(
                text.parse().map_err(|e| ApiError::bad_request("invalid_position", format!("Last-Event-ID: {e}")))?,
            );
        }
    }
    let bus = state.bus()?;
    // Where this stream starts, told to the client first so that a reconnect before any event
    // resumes there rather than at a later "now" (which would skip what happened in between).
    let from = match start {
        Start::Now => bus.delivered(),
        Start::Beginning => Position::START,
        Start::After(position) => position,
    };
    let gauge = SubscriberGauge::sse(bus);
    let chunks = bus.subscribe(filter, start).chunks(batch.unwrap_or(Batching::ready(MAX_WRITE)));
    let body = Body::from_stream(frames(chunks, batch.is_some(), from, access.deadline(), (gauge, permit)));
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Proxies such as nginx would otherwise buffer the stream.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// The response body: the `retry:` hint with a `subscribed` event carrying the start position,
/// then one write per chunk of events, and keep-alive comments in quiet times. Ends (so the client
/// reconnects with `Last-Event-ID`) when the subscription lags or the server shuts down, and after
/// a `token-expired` frame at the token's expiry (the client must reconnect with a fresh token);
/// dropping it (the client went away) unsubscribes.
///
/// Written by hand rather than with stream combinators so that an event costs no timer work: the
/// expiry and keep-alive timers are registered once and moved only when they fire (the
/// keep-alive then looks at when the last frame went out), where a `select!` per frame would
/// register and cancel both for every event of every subscriber.
struct Frames {
    hello: Option<Bytes>,
    chunks: Chunks,
    batched: bool,
    keep_alive: Pin<Box<tokio::time::Sleep>>,
    /// When the last frame was written: a keep-alive is due [`KEEP_ALIVE`] after it.
    last_write: tokio::time::Instant,
    /// The token's expiry: the stream ends there.
    expiry: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The `token-expired` frame has been sent, or the subscription ended: end.
    done: bool,
    /// Counted in the subscribers gauge and the client's stream limit for as long as the body lives.
    _gauge: (SubscriberGauge, StreamPermit),
}

fn frames(
    chunks: Chunks,
    batched: bool,
    from: Position,
    deadline: Option<tokio::time::Instant>,
    gauge: (SubscriberGauge, StreamPermit),
) -> Frames {
    let now = tokio::time::Instant::now();
    // A named event, so `onmessage` never sees it; its `id:` also makes a browser's own reconnect
    // resume from the start position.
    let hello = Bytes::from(format!(
        "retry: {}\nevent: subscribed\nid: {from}\ndata: {{\"position\":\"{from}\"}}\n\n",
        RETRY.as_millis()
    ));
    Frames {
        hello: Some(hello),
        chunks,
        batched,
        keep_alive: Box::pin(tokio::time::sleep_until(now + KEEP_ALIVE)),
        last_write: now,
        expiry: deadline.map(|d| Box::pin(tokio::time::sleep_until(d))),
        done: false,
        _gauge: gauge,
    }
}

impl futures::Stream for Frames {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Some(hello) = this.hello.take() {
            this.last_write = tokio::time::Instant::now();
            return Poll::Ready(Some(Ok(hello)));
        }
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(expiry) = &mut this.expiry
            && expiry.as_mut().poll(cx).is_ready()
        {
            this.done = true;
            return Poll::Ready(Some(Ok(Bytes::from(auth::token_expired_sse()))));
        }
        match this.chunks.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(events))) => {
                this.last_write = tokio::time::Instant::now();
                return Poll::Ready(Some(Ok(render(&events, this.batched))));
            }
            Poll::Ready(Some(Err(err))) => {
                // Lagged or shutting down: end the stream; the client resumes after its last id.
                tracing::debug!(%err, "closing an SSE stream");
                this.done = true;
                return Poll::Ready(None);
            }
            Poll::Ready(None) => {
                this.done = true;
                return Poll::Ready(None);
            }
            Poll::Pending => {}
        }
        while this.keep_alive.as_mut().poll(cx).is_ready() {
            let due = this.last_write + KEEP_ALIVE;
            let now = tokio::time::Instant::now();
            if due > now {
                // Something was written since the timer was set: wait until 15 s after that.
                this.keep_alive.as_mut().reset(due);
                continue;
            }
            this.last_write = now;
            this.keep_alive.as_mut().reset(now + KEEP_ALIVE);
            return Poll::Ready(Some(Ok(Bytes::from_static(b": keep-alive\n\n"))));
        }
        Poll::Pending
    }
}

/// Renders a chunk: one frame per event, or (batched) one frame holding a JSON array, whose `id:`
/// is its last event's position.
pub(crate) fn render(events: &[Arc<Delivered>], batched: bool) -> Bytes {
    if !batched {
        if let [event] = events {
            // The usual live case: the frame every stream shares, not a copy of it.
            return event.sse_frame().clone();
        }
        // Each event's own frame (rendered once for every stream), one after the other.
        let mut out = BytesMut::with_capacity(events.iter().map(|e| e.sse_frame().len()).sum());
        for event in events {
            out.put_slice(event.sse_frame());
        }
        return out.freeze();
    }
    let size: usize = events.iter().map(|e| e.json().len() + 1).sum();
    let mut out = BytesMut::with_capacity(size + 64);
    if let Some(last) = events.last() {
        out.put_slice(b"id: ");
        out.put_slice(last.position_text().as_bytes());
        out.put_u8(b'\n');
    }
    out.put_slice(b"data: [");
    for (i, event) in events.iter().enumerate() {
        if i > 0 {
            out.put_u8(b',');
        }
        out.put_slice(event.json());
    }
    out.put_slice(b"]\n\n");
    out.freeze()
}

/// Parses `types=A,B&site=a,b&channels=x,y&stream=..&streamPrefix=..&where=data.k:v&where=..&from=now|start|<position>&batch=N,T`.
pub(crate) fn parse_query(query: &str) -> Result<SseQuery, ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query)
        .map_err(|e| ApiError::bad_request("invalid_query", format!("cannot read the query string: {e}")))?;
    let mut filter = Filter::default();
    let mut start = Start::Now;
    let mut batch = None;
    for (key, value) in pairs {
        match key.as_str() {
            "types" => filter.types.extend(value.split(',').map(str::trim).filter(|t| !t.is_empty()).map(String::from)),
            "site" => {
                for site in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    validate_site(site).map_err(|e| ApiError::bad_request("invalid_site", format!("site: {e}")))?;
                    filter.sites.push(site.to_string());
                }
            }
            "channels" => {
                filter.channels.extend(value.split(',').map(str::trim).filter(|c| !c.is_empty()).map(String::from))
            }
            "stream" => filter.stream = Some(value),
            "streamPrefix" => filter.stream_prefix = Some(value),
            "where" => filter
                .fields
                .push(FieldMatch::parse(&value).map_err(|e| ApiError::bad_request("invalid_filter", e.to_string()))?),
            "from" => {
                start = match value.as_str() {
                    "now" | "" => Start::Now,
                    "start" => Start::Beginning,
                    position => Start::After(
                        position
                            .parse::<Position>()
                            .map_err(|e| ApiError::bad_request("invalid_position", format!("from: {e}")))?,
                    ),
                }
            }
            "batch" => batch = Some(parse_batch(&value)?),
            // The token (`auth.rs` reads it); never part of the filter.
            "access_token" => {}
            other => {
                return Err(ApiError::bad_request(
                    "invalid_query",
                    format!(
                        "unknown parameter {:?} (known: types, site, channels, stream, streamPrefix, where, from, batch)",
                        clip(other)
                    ),
                ));
            }
        }
    }
    Ok(SseQuery { filter, start, batch })
}

/// `N,T`: up to N events per frame, waiting up to T milliseconds (`N` alone: T = 0).
fn parse_batch(value: &str) -> Result<Batching, ApiError> {
    let invalid = |why: String| ApiError::bad_request("invalid_batch", format!("batch={:?}: {why}", clip(value)));
    let (events, delay) = value.split_once(',').unwrap_or((value, "0"));
    let events: usize =
        events.trim().parse().map_err(|_| invalid("expected N,T: events per frame, then milliseconds".into()))?;
    let delay: u64 = delay.trim().parse().map_err(|_| invalid("T must be a whole number of milliseconds".into()))?;
    Batching::new(events, Duration::from_millis(delay)).map_err(invalid)
}

/// At most 80 characters of client input, for error messages.
fn clip(text: &str) -> String {
    text.chars().take(80).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::RecordedEvent;

    fn delivered(i: u64) -> Arc<Delivered> {
        let event = RecordedEvent {
            id: uuid::Uuid::now_v7(),
            position: "0000000000000001000000000000000a".parse().unwrap(),
            stream: format!("s-{i}"),
            site: "default".into(),
            version: i,
            event_type: "T".into(),
            data: serde_json::json!({"i": i, "text": "two\nlines"}),
            metadata: serde_json::json!({}),
            timestamp: chrono::Utc::now(),
        };
        Arc::new(Delivered::new(event))
    }

    #[test]
    fn a_lone_event_is_sent_as_its_shared_frame_with_the_same_bytes_as_in_a_chunk() {
        let (a, b) = (delivered(1), delivered(2));
        let alone = render(std::slice::from_ref(&a), false);
        assert_eq!(alone.as_ptr(), a.sse_frame().as_ptr(), "the shared frame, not a copy");
        let expected = format!("id: {}\ndata: {}\n\n", a.position_text(), std::str::from_utf8(a.json()).unwrap());
        assert_eq!(alone, expected.as_bytes());
        // Several events at once are rendered together, each exactly as it is alone.
        let both = render(&[a.clone(), b.clone()], false);
        assert_eq!(both, [alone.as_ref(), render(std::slice::from_ref(&b), false).as_ref()].concat());
    }
}
