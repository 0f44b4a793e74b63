//! `GET /ws/events`: the WebSocket transport.
//!
//! SSE gives one subscription per connection; a dashboard with a dozen panels would need a dozen
//! connections, each replaying on its own. Here one socket carries any number of subscriptions,
//! each with its own filter, start position and batching, added and removed while the socket stays
//! open. The protocol is JSON text frames (requests in `protocol.rs`, what the server sends in
//! `frames.rs`); the connection's life, its queues and its close codes are in `session.rs`. The
//! bus's guarantees carry over unchanged: per subscription, replay then live with no gap or
//! duplicate, and a client that is closed on for being slow (or at shutdown) resumes each
//! subscription from the last position it saw.
//!
//! Close codes the server sends:
//!
//! | code | when | the client should |
//! | --- | --- | --- |
//! | 1001 going away | the server shuts down | reconnect (to another server) and resume |
//! | 1002 protocol error, 1007 invalid data | the client broke RFC 6455 (e.g. unmasked frames) or sent a text frame that is not UTF-8 | fix the client |
//! | 1009 message too big | a message over [`WsConfig::max_message`] | not send it again |
//! | 4401 token expired | the token the socket was opened with expired | reconnect with a fresh token and resume |
//! | 1013 try again later | the client fell behind: a subscription lagged the bus, or the queue of answers overflowed; or the event store could not be read | reconnect and resume each subscription from its last position |
//!
//! Limits (`limits.rs`): a socket counts as one stream of its client's stream limit (a 429
//! `too_many_streams` answers the upgrade request when over it); subscriptions per socket, entries
//! per filter list and request sizes are refused with `error` ops (`too_many_subscriptions`,
//! `too_many_filters`, `frame_too_large`) and the connection stays open.
//!
//! 1013 rather than 1008 (policy violation) for a slow client: nothing the client sent broke a
//! rule, the condition is temporary, and 1013 tells a client library to retry. A peer that answers
//! no ping within [`WsConfig::pong_timeout`] is dropped without a close frame (it would not read
//! one).

mod frames;
mod protocol;
mod session;

use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::response::Response;

use super::auth::Subscriber;
use super::limits::StreamPermit;
use super::{ApiError, AppState};

/// Limits and timers of the WebSocket transport.
#[derive(Debug, Clone)]
pub struct WsConfig {
    /// Subscriptions one socket may hold at once.
    pub max_subscriptions: usize,
    /// Largest request (text frame) the protocol reads; a larger one is answered with a
    /// `frame_too_large` error and the connection stays open.
    pub max_request: usize,
    /// Largest message the WebSocket layer accepts at all; a larger one closes the connection
    /// with 1009.
    pub max_message: usize,
    /// Answers, errors and pings that may wait for a client that does not read; one more closes
    /// the connection with 1013. (Events wait in each subscription's bus queue instead.)
    pub outbound_queue: usize,
    /// How often the server pings.
    pub ping_interval: Duration,
    /// How long after a ping the peer has to send anything (a pong, any frame) before it is
    /// dropped as dead.
    pub pong_timeout: Duration,
    /// How long the closing handshake may take before the connection is dropped.
    pub close_timeout: Duration,
}

impl Default for WsConfig {
    fn default() -> Self {
        WsConfig {
            max_subscriptions: 100,
            max_request: 64 * 1024,
            max_message: 1024 * 1024,
            outbound_queue: 1024,
            ping_interval: Duration::from_secs(20),
            pong_timeout: Duration::from_secs(20),
            close_timeout: Duration::from_secs(5),
        }
    }
}

/// Upgrades to a WebSocket and runs the connection (`session::run`) until the client leaves, it
/// is closed on, or the bus shuts down. Answers 503 before the bus runs, like every other route,
/// a JSON 400/405/426 when the request is not a WebSocket handshake, and 429 when the client has
/// as many streams open as it may. The handshake needs a subscribe token (401/403 before the
/// upgrade); every subscription on the socket is limited to its scope, and the socket closes
/// with 4401 when it expires.
pub(super) async fn events(
    State(state): State<AppState>,
    Subscriber(access): Subscriber,
    permit: StreamPermit,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let bus = state.bus()?.clone();
    let upgrade = upgrade.map_err(|rejection| ApiError {
        status: rejection.status(),
        code: "websocket_required",
        message: format!("/ws/events is a WebSocket endpoint: {}", rejection.body_text()),
    })?;
    let config = state.ws.clone();
    let limits = state.limits.clone();
    // Frames may be larger than the message limit, so that a message over it is read whole and
    // refused with 1009 while the stream is still in step, rather than cut off mid-frame.
    let response = upgrade
        .max_message_size(config.max_message)
        .max_frame_size(config.max_message.saturating_mul(4))
        .on_failed_upgrade(|err| tracing::debug!(%err, "WebSocket upgrade failed"))
        .on_upgrade(move |socket| session::run(socket, bus, config, limits, access, permit));
    Ok(response)
}

/// Decodes one client text frame exactly as a session does, without a socket: the filter of a
/// `subscribe` (`None` for the other ops), or the `error` frame's code and message. For the fuzz
/// targets (`crate::http::fuzzing`).
pub(super) fn decode_frame(text: &str) -> Result<Option<crate::bus::Filter>, (&'static str, String)> {
    match protocol::parse(text) {
        Ok(protocol::Request::Subscribe(subscribe)) => Ok(Some(subscribe.filter)),
        Ok(_) => Ok(None),
        Err(err) => Err((err.code.as_str(), err.message)),
    }
}
