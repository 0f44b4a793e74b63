//! Limits: what one client (or one site) may ask of the server, so that none can starve the others
//! or grow the server's memory without bound.
//!
//! | limit | key | when exceeded |
//! | --- | --- | --- |
//! | ingestion requests per second (`POST /api/events`, `POST /api/track`) | client address | 429 `rate_limited` + `Retry-After`, before the body is read |
//! | tracker events per second | site id | 429 `rate_limited` + `Retry-After` |
//! | concurrent streams (SSE, WebSocket, stats stream) | client address | 429 `too_many_streams` + `Retry-After`, before the stream starts or the upgrade |
//! | concurrent streams (SSE, WebSocket, stats stream) | token (`jti`, else `sub` + `iat`) | 429 `too_many_streams` + `Retry-After`, likewise |
//! | entries per filter list (`types`, `channels`, `where`) | subscription | 400 `too_many_filters` (SSE), `error` op `too_many_filters` (WebSocket) |
//! | subscriptions per WebSocket, request and message sizes | socket | `ws::WsConfig`: `error` ops, close 1009 |
//! | request bodies | request | 413 `too_large` (`AppState::max_body`, [`LimitsConfig::max_track_body`]) |
//!
//! Every refusal is counted in `/metrics` as `flightdeck_limited_total{limit="…"}`.
//!
//! **Keys.** A limit is a [`rate::KeyedRate`] or a [`streams::StreamCounter`], both generic over
//! their key, so a limit keyed by something new (an API token, once tokens exist) is one more
//! field of [`Limiter`] over that key type and one more check in [`IngestPermit`] /
//! [`StreamPermit`] (whose slots are released on drop). The client address comes from the
//! connection (`ConnectInfo<SocketAddr>`, see `addr.rs`); an application that serves the router
//! without `into_make_service_with_connect_info` has no address, and the per-address limits then
//! do not apply (the others still do).
//!
//! **Memory.** Rate state is one small entry per key active within the last `burst / rate`
//! seconds, swept and capped at [`LimitsConfig::max_keys`] per limit; stream counts exist only
//! while their streams are open. Filters, subscriptions and frames are bounded per stream.

mod addr;
mod rate;
mod streams;

pub use addr::{AddrRange, AddrRangeError};

use std::fmt::Write as _;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Json;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::bus::Filter;

use super::AppState;
use rate::{KeyedRate, Wait};
use streams::{Slot, StreamCounter};

/// What a client told to wait for a stream slot is told to wait (streams free up as others close).
const STREAM_RETRY_AFTER: Duration = Duration::from_secs(5);

/// A sustained rate with a burst: `burst` at once, then `per_second` on average.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Sustained units per second.
    pub per_second: NonZeroU32,
    /// Units allowed at once (the bucket's size).
    pub burst: NonZeroU32,
}

impl Rate {
    /// `per_second` with bursts of `burst` (at least 1); `None` when `per_second` is 0: no limit.
    pub fn new(per_second: u32, burst: u32) -> Option<Rate> {
        let per_second = NonZeroU32::new(per_second)?;
        Some(Rate { per_second, burst: NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN) })
    }
}

/// The limits of one server (see the module docs). `Default` is what `flightdeck serve` uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitsConfig {
    /// Ingestion requests (`POST /api/events`, `POST /api/track`) per client address; `None`: off.
    pub ingest_per_address: Option<Rate>,
    /// Tracker events per site (`POST /api/track`); `None`: off. The burst is raised to at least
    /// one full batch ([`crate::tracker::MAX_EVENTS`]).
    pub track_per_site: Option<Rate>,
    /// Open streams per client address: SSE (`/api/events`), WebSocket (`/ws/events`, one per
    /// socket whatever its subscriptions) and `/api/stats/stream` alike; `None`: off.
    pub streams_per_address: Option<u32>,
    /// Open streams per token, from any address (loopback included: a leaked token is not
    /// exempt wherever it is used from); `None`: off. Needs authentication on.
    pub streams_per_token: Option<u32>,
    /// Most entries in each filter list of a subscription: `types`, `channels`, `where`.
    pub max_filters: usize,
    /// Largest `POST /api/track` body, in bytes.
    pub max_track_body: usize,
    /// Client addresses no per-address limit applies to (default: loopback).
    pub exempt: Vec<AddrRange>,
    /// Take the client address from the last `X-Forwarded-For` entry (only behind a proxy that
    /// sets it; otherwise clients could choose their own address).
    pub trust_forwarded_for: bool,
    /// Most keys each rate limit remembers (see `rate.rs`).
    pub max_keys: usize,
}

impl LimitsConfig {
    /// Default ingestion requests per second per client address.
    pub const INGEST_RATE: u32 = 1000;
    /// Default ingestion burst per client address.
    pub const INGEST_BURST: u32 = 2000;
    /// Default tracker events per second per site.
    pub const SITE_RATE: u32 = 1000;
    /// Default tracker event burst per site.
    pub const SITE_BURST: u32 = 5000;
    /// Default open streams per client address.
    pub const STREAMS: u32 = 128;
    /// Default open streams per token.
    pub const STREAMS_PER_TOKEN: u32 = 100;
    /// Default most entries per filter list.
    pub const FILTERS: usize = 32;
    /// Default most keys per rate limit.
    pub const MAX_KEYS: usize = 100_000;
    /// Default exempt addresses: loopback.
    pub const EXEMPT: &str = "127.0.0.0/8,::1/128";

    /// No limit at all but the sizes (for embedding applications that limit elsewhere).
    pub fn unlimited() -> Self {
        LimitsConfig {
            ingest_per_address: None,
            track_per_site: None,
            streams_per_address: None,
            streams_per_token: None,
            max_filters: usize::MAX,
            ..LimitsConfig::default()
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            ingest_per_address: Rate::new(Self::INGEST_RATE, Self::INGEST_BURST),
            track_per_site: Rate::new(Self::SITE_RATE, Self::SITE_BURST),
            streams_per_address: Some(Self::STREAMS),
            streams_per_token: Some(Self::STREAMS_PER_TOKEN),
            max_filters: Self::FILTERS,
            max_track_body: super::MAX_TRACK_BODY,
            exempt: Self::EXEMPT.split(',').filter_map(|r| r.parse().ok()).collect(),
            trust_forwarded_for: false,
            max_keys: Self::MAX_KEYS,
        }
    }
}

/// The limits a refusal can name, as labelled in `flightdeck_limited_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limit {
    /// Ingestion requests per client address.
    IngestPerAddress,
    /// Tracker events per site.
    TrackPerSite,
    /// Open streams per client address.
    StreamsPerAddress,
    /// Open streams per token.
    StreamsPerToken,
    /// Subscriptions per WebSocket.
    WsSubscriptions,
    /// Entries per filter list.
    Filters,
    /// Request bodies (413).
    BodySize,
    /// WebSocket requests over `max_request` (`frame_too_large`).
    WsRequestSize,
    /// WebSocket messages over `max_message` (close 1009).
    WsMessageSize,
}

impl Limit {
    const ALL: [Limit; 9] = [
        Limit::IngestPerAddress,
        Limit::TrackPerSite,
        Limit::StreamsPerAddress,
        Limit::StreamsPerToken,
        Limit::WsSubscriptions,
        Limit::Filters,
        Limit::BodySize,
        Limit::WsRequestSize,
        Limit::WsMessageSize,
    ];

    fn label(self) -> &'static str {
        match self {
            Limit::IngestPerAddress => "ingest_per_address",
            Limit::TrackPerSite => "track_per_site",
            Limit::StreamsPerAddress => "streams_per_address",
            Limit::StreamsPerToken => "streams_per_token",
            Limit::WsSubscriptions => "ws_subscriptions",
            Limit::Filters => "filters",
            Limit::BodySize => "body_size",
            Limit::WsRequestSize => "ws_request_size",
            Limit::WsMessageSize => "ws_message_size",
        }
    }
}

/// The running limits of one [`AppState`]: the keyed state and the refusal counters.
pub(crate) struct Limiter {
    config: LimitsConfig,
    ingest_per_address: Option<KeyedRate<IpAddr>>,
    track_per_site: Option<KeyedRate<String>>,
    streams_per_address: Option<Arc<StreamCounter<IpAddr>>>,
    streams_per_token: Option<Arc<StreamCounter<Arc<str>>>>,
    refused: [AtomicU64; Limit::ALL.len()],
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Limiter {
    pub(crate) fn new(config: LimitsConfig) -> Self {
        let min_site_burst = NonZeroU32::new(crate::tracker::MAX_EVENTS as u32).unwrap_or(NonZeroU32::MIN);
        let site = config.track_per_site.map(|r| Rate { burst: r.burst.max(min_site_burst), ..r });
        Limiter {
            ingest_per_address: config.ingest_per_address.map(|r| KeyedRate::new(r, config.max_keys)),
            track_per_site: site.map(|r| KeyedRate::new(r, config.max_keys)),
            streams_per_address: config.streams_per_address.map(|n| Arc::new(StreamCounter::new(n))),
            streams_per_token: config.streams_per_token.map(|n| Arc::new(StreamCounter::new(n))),
            refused: Default::default(),
            config,
        }
    }

    /// The configuration.
    pub(crate) fn config(&self) -> &LimitsConfig {
        &self.config
    }

    /// Counts one refusal by `limit`.
    pub(crate) fn count(&self, limit: Limit) {
        self.refused[limit as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn client(&self, parts: &Parts) -> Option<IpAddr> {
        addr::client_key(parts, self.config.trust_forwarded_for, &self.config.exempt)
    }

    /// One ingestion request from `client`.
    fn admit_ingest(&self, client: Option<IpAddr>) -> Result<(), Limited> {
        let (Some(limit), Some(ip)) = (&self.ingest_per_address, client) else { return Ok(()) };
        limit.check(&ip, 1).map_err(|wait| {
            self.count(Limit::IngestPerAddress);
            let rate = limit.rate();
            Limited::rate(
                wait,
                format!(
                    "too many ingestion requests from {ip}: at most {} per second (bursts of {}) per client address; \
                     retry later, or batch events into fewer requests (the operator sets this with --ingest-rate and \
                     --ingest-burst)",
                    rate.per_second, rate.burst
                ),
            )
        })
    }

    /// `events` tracker events for `site`.
    pub(crate) fn admit_site(&self, site: &str, events: usize) -> Result<(), Limited> {
        let Some(limit) = &self.track_per_site else { return Ok(()) };
        let n = u32::try_from(events).unwrap_or(u32::MAX);
        limit.check(&site.to_string(), n).map_err(|wait| {
            self.count(Limit::TrackPerSite);
            let rate = limit.rate();
            Limited::rate(
                wait,
                format!(
                    "site {site:?} sends more than {} events per second (bursts of {}); retry later (the operator \
                     sets this with --site-rate and --site-burst)",
                    rate.per_second, rate.burst
                ),
            )
        })
    }

    /// A slot for one more stream of `client` with the token `token`: one of the address's and
    /// one of the token's (if the second is refused, dropping the first releases it).
    fn open_stream(&self, client: Option<IpAddr>, token: Option<&Arc<str>>) -> Result<StreamPermit, Limited> {
        let address = self.address_slot(client)?;
        let token = self.token_slot(token)?;
        Ok(StreamPermit { _address: address, _token: token })
    }

    fn token_slot(&self, token: Option<&Arc<str>>) -> Result<Option<Slot<Arc<str>>>, Limited> {
        let (Some(counter), Some(token)) = (&self.streams_per_token, token) else { return Ok(None) };
        counter.acquire(token.clone()).map(Some).map_err(|open| {
            self.count(Limit::StreamsPerToken);
            Limited {
                code: "too_many_streams",
                retry_after: STREAM_RETRY_AFTER,
                message: format!(
                    "this token already has {open} open streams (Server-Sent Events, WebSockets and stats streams \
                     count alike), the most allowed per token ({}); close one, carry several subscriptions on one \
                     WebSocket, or give each client its own token (the operator sets this with \
                     --max-streams-per-token)",
                    counter.max()
                ),
            }
        })
    }

    fn address_slot(&self, client: Option<IpAddr>) -> Result<Option<Slot<IpAddr>>, Limited> {
        let (Some(counter), Some(ip)) = (&self.streams_per_address, client) else {
            return Ok(None);
        };
        match counter.acquire(ip) {
            Ok(slot) => Ok(Some(slot)),
            Err(open) => {
                self.count(Limit::StreamsPerAddress);
                Err(Limited {
                    code: "too_many_streams",
                    retry_after: STREAM_RETRY_AFTER,
                    message: format!(
                        "{ip} already has {open} open streams (Server-Sent Events, WebSockets and stats streams \
                         count alike), the most allowed per client address ({}); close one, or carry several \
                         subscriptions on one WebSocket (the operator sets this with --max-streams)",
                        counter.max()
                    ),
                })
            }
        }
    }

    /// Checks the sizes of a subscription's filter lists; the message says which is too long.
    pub(crate) fn check_filter(&self, filter: &Filter) -> Result<(), String> {
        let max = self.config.max_filters;
        for (name, len) in [
            ("types", filter.types.len()),
            ("sites", filter.sites.len()),
            ("channels", filter.channels.len()),
            ("where", filter.fields.len()),
        ] {
            if len > max {
                self.count(Limit::Filters);
                return Err(format!(
                    "{name} has {len} entries; a subscription may have at most {max} per filter list (the operator sets \
                     this with --max-filters)"
                ));
            }
        }
        Ok(())
    }

    /// Appends this limiter's series to the `/metrics` text.
    pub(crate) fn render_metrics(&self, out: &mut String) {
        let _ =
            writeln!(out, "# HELP flightdeck_limited_total Requests, streams and frames refused by a limit, by limit.");
        let _ = writeln!(out, "# TYPE flightdeck_limited_total counter");
        for limit in Limit::ALL {
            let refused = self.refused[limit as usize].load(Ordering::Relaxed);
            let _ = writeln!(out, "flightdeck_limited_total{{limit=\"{}\"}} {refused}", limit.label());
        }
        let keys = [
            ("ingest_per_address", self.ingest_per_address.as_ref().map_or(0, KeyedRate::len)),
            ("track_per_site", self.track_per_site.as_ref().map_or(0, KeyedRate::len)),
            ("streams_per_address", self.streams_per_address.as_ref().map_or(0, |c| c.keys())),
            ("streams_per_token", self.streams_per_token.as_ref().map_or(0, |c| c.keys())),
        ];
        let _ = writeln!(out, "# HELP flightdeck_limiter_keys Keys a limit holds state for now (bounded).");
        let _ = writeln!(out, "# TYPE flightdeck_limiter_keys gauge");
        for (label, n) in keys {
            let _ = writeln!(out, "flightdeck_limiter_keys{{limit=\"{label}\"}} {n}");
        }
        let resets = [
            ("ingest_per_address", self.ingest_per_address.as_ref().map_or(0, KeyedRate::resets)),
            ("track_per_site", self.track_per_site.as_ref().map_or(0, KeyedRate::resets)),
        ];
        let _ = writeln!(
            out,
            "# HELP flightdeck_limiter_resets_total Times a rate limit forgot every key because more were active than \
             it may remember."
        );
        let _ = writeln!(out, "# TYPE flightdeck_limiter_resets_total counter");
        for (label, n) in resets {
            let _ = writeln!(out, "flightdeck_limiter_resets_total{{limit=\"{label}\"}} {n}");
        }
        let streams = self.streams_per_address.as_ref().map_or(0, |c| c.total());
        let _ = writeln!(out, "# HELP flightdeck_limited_streams Open streams counted against the per-address limit.");
        let _ = writeln!(out, "# TYPE flightdeck_limited_streams gauge");
        let _ = writeln!(out, "flightdeck_limited_streams {streams}");
    }
}

/// A refusal by a limit that will pass later: 429 with `Retry-After` and the usual JSON error.
#[derive(Debug, Clone)]
pub(crate) struct Limited {
    code: &'static str,
    retry_after: Duration,
    message: String,
}

impl Limited {
    fn rate(wait: Wait, message: String) -> Self {
        let retry_after = match wait {
            Wait::For(wait) => wait,
            // Unreachable with the configured bursts; a client may still retry a smaller request.
            Wait::Never => Duration::from_secs(1),
        };
        Limited { code: "rate_limited", retry_after, message }
    }

    /// Whole seconds to wait, at least 1 (`Retry-After` has no fractions; 0 invites a hot loop).
    fn retry_after_secs(&self) -> u64 {
        (self.retry_after.as_secs() + u64::from(self.retry_after.subsec_nanos() > 0)).max(1)
    }
}

impl IntoResponse for Limited {
    fn into_response(self) -> Response {
        let seconds = self.retry_after_secs();
        let message = format!("{} (Retry-After: {seconds} s)", self.message);
        let mut response =
            (StatusCode::TOO_MANY_REQUESTS, Json(json!({"error": {"code": self.code, "message": message}})))
                .into_response();
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        response
    }
}

/// Extractor for ingestion routes: the request's client is within its rate (checked before the
/// body is read).
pub(crate) struct IngestPermit;

impl FromRequestParts<AppState> for IngestPermit {
    type Rejection = Limited;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let limits = &state.limits;
        limits.admit_ingest(limits.client(parts)).map(|()| IngestPermit)
    }
}

/// Extractor for streaming routes: a slot counted against the client's streams, and one against
/// its token's, for as long as this value (moved into the stream) lives. The token is the
/// [`crate::http::auth::Access`] the `Subscriber` extractor left in the request's extensions, so
/// handlers take `Subscriber` before `StreamPermit` (which also makes a 401 come before a 429).
pub(crate) struct StreamPermit {
    _address: Option<Slot<IpAddr>>,
    _token: Option<Slot<Arc<str>>>,
}

impl FromRequestParts<AppState> for StreamPermit {
    type Rejection = Limited;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let limits = &state.limits;
        let token = parts.extensions.get::<crate::http::auth::Access>().and_then(|a| a.token_key().cloned());
        limits.open_stream(limits.client(parts), token.as_ref())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_whole_seconds_rounded_up() {
        let limited = |ms| Limited { code: "x", retry_after: Duration::from_millis(ms), message: String::new() };
        assert_eq!(limited(0).retry_after_secs(), 1);
        assert_eq!(limited(1).retry_after_secs(), 1);
        assert_eq!(limited(1000).retry_after_secs(), 1);
        assert_eq!(limited(1001).retry_after_secs(), 2);
        let response = limited(2500).into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "3");
    }

    #[test]
    fn defaults() {
        let config = LimitsConfig::default();
        assert_eq!(config.exempt.len(), 2);
        assert!(config.exempt.iter().any(|r| r.contains("127.0.0.1".parse().unwrap())));
        assert!(config.exempt.iter().any(|r| r.contains("::1".parse().unwrap())));
        let limiter = Limiter::new(LimitsConfig { track_per_site: Rate::new(1, 1), ..config });
        assert_eq!(limiter.admit_site("s", 100).map_err(|l| l.code), Ok(()), "the burst holds one full batch");
        assert!(limiter.admit_site("s", 1).is_err());
        let mut text = String::new();
        limiter.render_metrics(&mut text);
        assert!(text.contains("flightdeck_limited_total{limit=\"track_per_site\"} 1\n"), "{text}");
        assert!(text.contains("flightdeck_limiter_keys{limit=\"track_per_site\"} 1\n"), "{text}");
    }
}
