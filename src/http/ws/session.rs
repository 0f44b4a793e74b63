//! One WebSocket connection, from upgrade to close, in one task.
//!
//! Two halves run in that task, so nothing outlives the connection and there is nothing to join:
//!
//! - the **session** reads the client's frames, answers them, keeps the table of subscriptions,
//!   pings, and decides when to close. It never waits on the socket: it queues what it has to say
//!   in the bounded *answer queue* with `try_send`, so a client that stops reading cannot stall
//!   it, and an overflow is detected at once.
//! - the **writer** owns what goes out: it writes queued answers first, then pulls events from the
//!   subscriptions (merged into one stream). Pulling means events wait in each subscription's
//!   bounded bus queue, not in a copy here: a replay goes at the client's pace, and a client that
//!   falls behind the live log makes its subscription report `Lagged`, which closes the socket with
//!   1013. Within a subscription, frames are written in its order; `subscribed` is written before
//!   its first event, and after `unsubscribed` none of its events is written.
//!
//! The session ends the connection on shutdown (1001), on a lag or an answer-queue overflow
//! (1013), on an oversized message (1009), when the peer closes or the socket breaks, and when a
//! ping goes unanswered. Closing drops every subscription and the gauges that count them.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use bytes::Bytes;
use futures::stream::{AbortHandle, Abortable, BoxStream, SelectAll, SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};

use crate::auth::Scope;
use crate::bus::{Batching, Bus, BusError, Delivered, Start};
use crate::http::auth::{self, Access};
use crate::http::limits::{Limit, Limiter, StreamPermit};
use crate::http::metrics::SubscriberGauge;
use crate::store::Position;

use super::WsConfig;
use super::frames::{self, Target};
use super::protocol::{self, Code, ProtocolError, Request, StartAt, Subscribe};

/// Most events pulled from one subscription at once when it is not batched.
const MAX_WRITE: usize = 256;

/// Close codes (see the module docs of `ws`).
const GOING_AWAY: u16 = 1001;
const PROTOCOL_ERROR: u16 = 1002;
const INVALID_DATA: u16 = 1007;
const TOO_BIG: u16 = 1009;
const TRY_AGAIN_LATER: u16 = 1013;
/// The socket's token expired (an application code: 4000-4999; "401" as in HTTP). The JavaScript
/// client relies on exactly this code and the reason `token expired`.
const TOKEN_EXPIRED: u16 = 4401;

/// A subscription's chunks, tagged with where they go.
type Tagged = BoxStream<'static, (Arc<Target>, Result<Vec<Arc<Delivered>>, BusError>)>;

/// What the session hands the writer, in order.
enum Outbound {
    /// A frame to write (answer, error, ping).
    Frame(Message),
    /// Write the `subscribed` answer, then start pulling the subscription's events.
    Subscribe { answer: Message, events: Abortable<Tagged> },
}

/// How a connection ends.
#[derive(Debug, PartialEq)]
enum End {
    /// Send a close frame with this code and reason, then wait for the peer's.
    Close(u16, String),
    /// The peer sent a close frame: flush the automatic reply.
    PeerClosed,
    /// The socket is gone or broken: nothing more can be sent.
    Gone,
    /// The peer answered no ping: drop it.
    Dead,
}

impl End {
    fn shutdown() -> Self {
        End::Close(GOING_AWAY, "server shutting down".into())
    }

    fn slow(why: &str) -> Self {
        End::Close(
            TRY_AGAIN_LATER,
            reason(&format!("{why}; reconnect and resume each subscription from its last position")),
        )
    }
}

/// A close reason within the protocol's 123 bytes.
fn reason(text: &str) -> String {
    let mut end = text.len().min(123);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// A subscription as the session knows it.
struct Entry {
    /// Stops its events at once, even while the writer is busy.
    stop: AbortHandle,
    _gauge: SubscriberGauge,
}

/// Runs one connection until it ends.
pub(super) async fn run(
    socket: WebSocket,
    bus: Bus,
    config: WsConfig,
    limits: Arc<Limiter>,
    access: Access,
    permit: StreamPermit,
) {
    let _held = (SubscriberGauge::ws(&bus), permit);
    let (mut sink, mut stream) = socket.split();
    let (queue, answers) = mpsc::channel(config.outbound_queue.max(1));
    let mut writer = Writer { answers, events: SelectAll::new() };
    let close_timeout = config.close_timeout;
    let mut session = Session {
        bus,
        config,
        limits,
        queue,
        subscriptions: HashMap::new(),
        pong_deadline: None,
        scope: access.scope().clone(),
        expires: access.deadline(),
    };
    let end = session.serve(&mut writer, &mut sink, &mut stream).await;
    tracing::debug!(?end, "WebSocket connection ending");
    drop(session);
    drop(writer);
    let _ = tokio::time::timeout(close_timeout, finish(end, &mut sink, &mut stream)).await;
}

/// The closing handshake: our close frame (or the reply to the peer's), then read until the peer's
/// reply ends the stream, so the close frame is not lost to a connection reset.
async fn finish(end: End, sink: &mut SplitSink<WebSocket, Message>, stream: &mut SplitStream<WebSocket>) {
    match end {
        End::Close(code, reason) => {
            let frame = CloseFrame { code, reason: Utf8Bytes::from(reason) };
            if sink.send(Message::Close(Some(frame))).await.is_err() {
                return;
            }
        }
        End::PeerClosed => {
            if sink.flush().await.is_err() {
                return;
            }
        }
        End::Gone | End::Dead => return,
    }
    while let Some(Ok(_)) = stream.next().await {}
}

struct Session {
    bus: Bus,
    config: WsConfig,
    /// Filter limits, and the counters of refusals.
    limits: Arc<Limiter>,
    /// The answer queue (bounded): the writer takes from it before any event.
    queue: mpsc::Sender<Outbound>,
    subscriptions: HashMap<String, Entry>,
    /// Set when a ping is sent; cleared by any frame from the peer.
    pong_deadline: Option<Instant>,
    /// What the socket's token covers: every subscription is limited to it.
    scope: Arc<Scope>,
    /// The token's expiry: the socket closes with 4401 then.
    expires: Option<Instant>,
}

impl Session {
    async fn serve(
        &mut self,
        writer: &mut Writer,
        sink: &mut SplitSink<WebSocket, Message>,
        stream: &mut SplitStream<WebSocket>,
    ) -> End {
        let write = writer.run(sink);
        tokio::pin!(write);
        let closed = self.bus.closed();
        tokio::pin!(closed);
        let interval = self.config.ping_interval;
        let mut ping = tokio::time::interval_at(Instant::now() + interval, interval);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let deadline = self.pong_deadline;
            tokio::select! {
                biased;
                () = &mut closed => return End::shutdown(),
                end = &mut write => return end,
                frame = stream.next() => {
                    self.pong_deadline = None;
                    if let Some(end) = self.on_frame(frame) {
                        return end;
                    }
                }
                _ = ping.tick() => {
                    self.pong_deadline.get_or_insert(Instant::now() + self.config.pong_timeout);
                    if let Err(end) = self.send(Message::Ping(Bytes::new())) {
                        return end;
                    }
                }
                () = sleep_until(deadline) => return End::Dead,
                () = auth::expiry(self.expires) => return End::Close(TOKEN_EXPIRED, "token expired".into()),
            }
        }
    }

    /// Handles one incoming frame; `Some` ends the connection.
    fn on_frame(&mut self, frame: Option<Result<Message, axum::Error>>) -> Option<End> {
        let message = match frame {
            None => return Some(End::Gone),
            Some(Ok(message)) => message,
            Some(Err(err)) => return Some(self.on_error(err)),
        };
        let answer = match message {
            Message::Text(text) if text.len() > self.config.max_request => Err(ProtocolError::new(
                Code::FrameTooLarge,
                None,
                format!("the frame is {} bytes; requests may be at most {} bytes", text.len(), self.config.max_request),
            )),
            Message::Text(text) => protocol::parse(&text).and_then(|request| self.on_request(request)),
            Message::Binary(_) => Err(ProtocolError::new(
                Code::BinaryFrame,
                None,
                "binary frames are not part of the protocol: send JSON text frames",
            )),
            // The WebSocket layer answers pings itself; any frame proves the peer alive.
            Message::Ping(_) | Message::Pong(_) => return None,
            Message::Close(_) => return Some(End::PeerClosed),
        };
        let result = match answer {
            Ok(Some(outbound)) => self.queue_outbound(outbound),
            Ok(None) => Ok(()),
            Err(err) => {
                let limit = match err.code {
                    Code::FrameTooLarge => Some(Limit::WsRequestSize),
                    Code::TooManySubscriptions => Some(Limit::WsSubscriptions),
                    // `Limiter::check_filter` counts its own refusals.
                    _ => None,
                };
                if let Some(limit) = limit {
                    self.limits.count(limit);
                }
                self.send(frames::error(&err))
            }
        };
        result.err()
    }

    /// An error from the WebSocket layer. The incoming half is done for, but the peer may still
    /// read: an oversized message gets 1009, invalid UTF-8 1007, a protocol violation 1002;
    /// anything else (a reset, an I/O error) means the socket is unusable.
    fn on_error(&self, err: axum::Error) -> End {
        let err = match err.into_inner().downcast::<tungstenite::Error>() {
            Ok(err) => *err,
            Err(err) => {
                tracing::debug!(%err, "WebSocket read failed");
                return End::Gone;
            }
        };
        tracing::debug!(%err, "WebSocket read failed");
        match err {
            tungstenite::Error::Capacity(_) => {
                self.limits.count(Limit::WsMessageSize);
                End::Close(
                    TOO_BIG,
                    reason(&format!("message too big: at most {} bytes ({err})", self.config.max_message)),
                )
            }
            tungstenite::Error::Utf8(_) => End::Close(INVALID_DATA, "a text frame is not valid UTF-8".into()),
            tungstenite::Error::Protocol(ref violation) => {
                End::Close(PROTOCOL_ERROR, reason(&format!("protocol error: {violation}")))
            }
            _ => End::Gone,
        }
    }

    /// Carries out a request; the answer to queue, if any.
    fn on_request(&mut self, request: Request) -> Result<Option<Outbound>, ProtocolError> {
        match request {
            Request::Ping { id } => Ok(Some(Outbound::Frame(frames::pong(id.as_deref())))),
            Request::Unsubscribe { id } => match self.subscriptions.remove(&id) {
                Some(entry) => {
                    entry.stop.abort();
                    Ok(Some(Outbound::Frame(frames::unsubscribed(&id))))
                }
                None => Err(ProtocolError::new(
                    Code::UnknownId,
                    Some(&id),
                    format!("no subscription {id:?} on this connection"),
                )),
            },
            Request::Subscribe(subscribe) => self.subscribe(subscribe).map(Some),
        }
    }

    fn subscribe(&mut self, request: Subscribe) -> Result<Outbound, ProtocolError> {
        let Subscribe { id, filter, from, batch } = request;
        let filter = filter.within(&self.scope);
        if let Some(why) = filter.outside_scope() {
            return Err(ProtocolError::new(Code::Forbidden, Some(&id), why));
        }
        if self.subscriptions.contains_key(&id) {
            return Err(ProtocolError::new(
                Code::DuplicateId,
                Some(&id),
                format!(
                    "subscription {id:?} already exists on this connection; unsubscribe it first or pick another id"
                ),
            ));
        }
        self.limits
            .check_filter(&filter)
            .map_err(|message| ProtocolError::new(Code::TooManyFilters, Some(&id), message))?;
        if self.subscriptions.len() >= self.config.max_subscriptions {
            return Err(ProtocolError::new(
                Code::TooManySubscriptions,
                Some(&id),
                format!(
                    "this connection already has {} subscriptions, the most allowed; unsubscribe one or open another connection",
                    self.subscriptions.len()
                ),
            ));
        }
        // For "now", the position reported is the last one delivered before subscribing: every
        // later event is either delivered on this subscription or replayed by a resume from it, so
        // a client that loses the connection before any event arrives loses nothing either.
        let (start, position) = match from {
            StartAt::Now => (Start::Now, self.bus.delivered()),
            StartAt::Start => (Start::Beginning, Position::START),
            StartAt::After(position) => (Start::After(position), position),
        };
        let target = Target::new(&id, batch.is_some());
        let tag = target.clone();
        let events: Tagged = self
            .bus
            .subscribe(filter, start)
            .chunks(batch.unwrap_or(Batching::ready(MAX_WRITE)))
            .map(move |chunk| (tag.clone(), chunk))
            .boxed();
        let (stop, registration) = AbortHandle::new_pair();
        let entry = Entry { stop, _gauge: SubscriberGauge::ws_subscription(&self.bus) };
        self.subscriptions.insert(id, entry);
        Ok(Outbound::Subscribe {
            answer: frames::subscribed(&target.id, position),
            events: Abortable::new(events, registration),
        })
    }

    fn send(&self, message: Message) -> Result<(), End> {
        self.queue_outbound(Outbound::Frame(message))
    }

    /// Queues for the writer without waiting: a full queue means the client stopped reading.
    fn queue_outbound(&self, outbound: Outbound) -> Result<(), End> {
        self.queue.try_send(outbound).map_err(|err| match err {
            mpsc::error::TrySendError::Full(_) => End::slow("too many answers waiting: the client is not reading"),
            mpsc::error::TrySendError::Closed(_) => End::Gone,
        })
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

struct Writer {
    answers: mpsc::Receiver<Outbound>,
    events: SelectAll<Abortable<Tagged>>,
}

impl Writer {
    /// Writes answers, then events, until the connection must end.
    async fn run(&mut self, sink: &mut SplitSink<WebSocket, Message>) -> End {
        loop {
            tokio::select! {
                biased;
                outbound = self.answers.recv() => {
                    let written = match outbound {
                        None => return End::Gone,
                        Some(Outbound::Frame(frame)) => sink.send(frame).await,
                        Some(Outbound::Subscribe { answer, events }) => {
                            let written = sink.send(answer).await;
                            self.events.push(events);
                            written
                        }
                    };
                    if written.is_err() {
                        return End::Gone;
                    }
                }
                Some((target, chunk)) = self.events.next(), if !self.events.is_empty() => {
                    let events = match chunk {
                        Ok(events) => events,
                        Err(BusError::Lagged { .. }) => {
                            let id: String = target.id.chars().take(40).collect();
                            return End::slow(&format!("subscription {id:?} lagged behind the log"));
                        }
                        Err(BusError::Closed) => return End::shutdown(),
                        Err(err @ BusError::Store(_)) => {
                            tracing::warn!(%err, "a WebSocket subscription cannot replay");
                            return End::slow("the event store cannot be read right now");
                        }
                    };
                    for frame in target.render(&events) {
                        if sink.feed(frame).await.is_err() {
                            return End::Gone;
                        }
                    }
                    if sink.flush().await.is_err() {
                        return End::Gone;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reasons_fit_the_protocol_limit() {
        let long = End::slow(&format!("subscription {:?} lagged behind the log", "é".repeat(60)));
        let End::Close(code, text) = long else { panic!("{long:?}") };
        assert_eq!(code, TRY_AGAIN_LATER);
        assert!(text.len() <= 123 && text.starts_with("subscription"), "{text}");
        assert_eq!(reason("short"), "short");
    }
}
