//! `GET /api/events`: the Server-Sent Events stream.
//!
//! One frame per event: `id: <position>` and `data: <envelope>`, with no `event:` line, so
//! `EventSource.onmessage` sees everything. A `retry:` hint goes first, which also flushes the
//! headers so the browser's `onopen` fires before any event. Browsers resend the last `id:` as
//! `Last-Event-ID` when they reconnect, and the stream resumes after it. A subscriber that falls
//! too far behind has its stream closed; its browser reconnects and resumes from the store.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt};

use crate::bus::{FieldMatch, Filter, Start};
use crate::store::Position;

use super::{ApiError, AppState};

/// The reconnection delay suggested to browsers.
const RETRY: Duration = Duration::from_millis(1000);
/// Comment lines that keep proxies and the browser from timing the stream out.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

pub(super) async fn stream(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let (filter, mut start) = parse_query(query.as_deref().unwrap_or(""))?;
    if let Some(last) = headers.get("last-event-id") {
        let text = last.to_str().unwrap_or_default().trim();
        if !text.is_empty() {
            start = Start::After(
                text.parse().map_err(|e| ApiError::bad_request("invalid_position", format!("Last-Event-ID: {e}")))?,
            );
        }
    }
    let bus = state.bus()?;
    let subscription = bus.subscribe(filter, start);
    let gauge = super::metrics::SubscriberGauge::sse(bus);
    let retry = futures::stream::once(async { Ok(Event::default().retry(RETRY).comment("flightdeck")) });
    let events = subscription
        .take_while(|item| {
            // Lagged or shutting down: end the stream; the client reconnects with Last-Event-ID.
            if let Err(err) = item {
                tracing::debug!(%err, "closing an SSE stream");
            }
            futures::future::ready(item.is_ok())
        })
        .filter_map(|item| {
            let frame = item.ok().and_then(|event| {
                let data = serde_json::to_string(&*event).ok()?;
                Some(Ok(Event::default().id(event.position.to_string()).data(data)))
            });
            futures::future::ready(frame)
        });
    Ok(Sse::new(gauge.track(retry.chain(events))).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

/// Parses `types=A,B&channels=x,y&stream=..&streamPrefix=..&where=data.k:v&where=..&from=now|start|<position>`.
pub(crate) fn parse_query(query: &str) -> Result<(Filter, Start), ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query)
        .map_err(|e| ApiError::bad_request("invalid_query", format!("cannot read the query string: {e}")))?;
    let mut filter = Filter::default();
    let mut start = Start::Now;
    for (key, value) in pairs {
        match key.as_str() {
            "types" => filter.types.extend(value.split(',').map(str::trim).filter(|t| !t.is_empty()).map(String::from)),
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
            other => {
                return Err(ApiError::bad_request(
                    "invalid_query",
                    format!("unknown parameter {other:?} (known: types, channels, stream, streamPrefix, where, from)"),
                ));
            }
        }
    }
    Ok((filter, start))
}
