//! `GET /api/stats` and its live form, `GET /api/stats/stream` (Server-Sent Events).
//!
//! Both read the projection tables (`projections::stats`), never the raw log, so a dashboard costs
//! a few index scans however many events there are. The stream pushes the same JSON whenever the
//! projector has committed new events, at most every 500 ms, plus a refresh every 15 s (the
//! window slides and sessions stop being active even when nothing happens). It ends when the
//! server shuts down (the projector's watch closes); the browser reconnects by itself. A live
//! stream counts against its client's stream limit (`limits.rs`) while it lives.
//!
//! Both need a subscribe token. Stats are per site: `site` must be one the token covers (403);
//! without `site`, a token for one site gets that site's stats, a token for several must name one
//! (400 `site_required`: the projection sums all sites or one, not a chosen few), and only a token
//! for every site (`*`) gets the sum over all. A token limited to event types or stream prefixes
//! is refused (403): the counters mix every type and stream (sessions, pages) and cannot be split.
//! The `sites` list only names sites the token covers. The live stream ends at the token's expiry
//! with a last `token-expired` event.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, Sse};
use axum::routing::get;
use chrono::{DateTime, TimeDelta, Utc};
use futures::Stream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::projections::{ProjectionError, Stats, StatsQuery};
use crate::store::{Position, Store};
use crate::tracker::is_token;

use super::auth::{self, Access, Subscriber, forbidden};
use super::limits::StreamPermit;
use super::{ApiError, AppState};

/// Shortest pause between two pushes of the live stream.
const THROTTLE: Duration = Duration::from_millis(500);
/// A push at least this often even without new events.
const REFRESH: Duration = Duration::from_secs(15);
/// Longest range one query may cover.
const MAX_RANGE_DAYS: i64 = 31;
/// Default and largest `top`.
const TOP: (u32, u32) = (10, 1000);

/// The stats routes, to be merged into FlightDeck's router.
pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/api/stats", get(stats)).route("/api/stats/stream", get(stream))
}

impl From<ProjectionError> for ApiError {
    fn from(err: ProjectionError) -> Self {
        match err {
            ProjectionError::Store(err) => err.into(),
            other => {
                tracing::error!(error = %other, "projection error");
                ApiError { status: StatusCode::INTERNAL_SERVER_ERROR, code: "internal", message: other.to_string() }
            }
        }
    }
}

/// `GET /api/stats?site=&from=&to=&top=`.
async fn stats(
    State(state): State<AppState>,
    Subscriber(access): Subscriber,
    RawQuery(query): RawQuery,
) -> Result<Json<Stats>, ApiError> {
    let mut query = parse(query.as_deref().unwrap_or(""), false, Utc::now())?.query;
    within_scope(&mut query, &access)?;
    let stats = crate::projections::stats(&state.store, &query).await?;
    Ok(Json(visible(stats, &access)))
}

/// Limits `query` to what `access` may see (see the module docs), or refuses it.
fn within_scope(query: &mut StatsQuery, access: &Access) -> Result<(), ApiError> {
    let scope = access.scope();
    if scope.types.is_some() || scope.streams.is_some() {
        return Err(forbidden(
            "stats count every event type and stream together: a token limited to event types or stream \
             prefixes cannot read them; use a token for whole sites",
        ));
    }
    match (&query.site, scope.sites.as_deref()) {
        (_, None) => Ok(()),
        (Some(site), Some(_)) if scope.permits_site(site) => Ok(()),
        (Some(site), Some(_)) => Err(forbidden(format!("the token does not cover site {site:?}"))),
        (None, Some(_)) => {
            let only = scope.only_site().ok_or_else(|| {
                ApiError::bad_request(
                    "site_required",
                    "the token covers several sites: ask for one with `site=` (stats sum one site or all of them)",
                )
            })?;
            query.site = Some(only.to_string());
            Ok(())
        }
    }
}

/// `stats` with the site list narrowed to the sites the token covers.
fn visible(mut stats: Stats, access: &Access) -> Stats {
    stats.sites.retain(|site| access.scope().permits_site(site));
    stats
}

/// What a query string asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Parsed {
    query: StatsQuery,
    /// For the stream: the sliding window's length.
    window: TimeDelta,
}

/// Parses `site`, `from`, `to`, `top` (and for the stream, `minutes` instead of `from`/`to`).
fn parse(raw: &str, live: bool, now: DateTime<Utc>) -> Result<Parsed, ApiError> {
    let bad = |message: String| ApiError::bad_request("invalid_query", message);
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(raw).map_err(|e| bad(format!("cannot read the query string: {e}")))?;
    let (mut site, mut from, mut to, mut top, mut minutes) = (None, None, None, TOP.0, 60i64);
    let time = |name: &str, value: &str| {
        DateTime::parse_from_rfc3339(value)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| bad(format!("{name} {value:?} is not an RFC 3339 time such as 2025-01-31T12:00:00Z")))
    };
    for (key, value) in pairs {
        match (key.as_str(), live) {
            // The token (`auth.rs` reads it).
            ("access_token", _) => {}
            ("site", _) if value.is_empty() => site = None,
            ("site", _) if is_token(&value) => site = Some(value),
            ("site", _) => return Err(bad(format!("site {value:?} is not a site id (1 to 64 of A-Z a-z 0-9 _ -)"))),
            ("from", false) => from = Some(time("from", &value)?),
            ("to", false) => to = Some(time("to", &value)?),
            ("top", _) => {
                top = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=TOP.1).contains(n))
                    .ok_or_else(|| bad(format!("top must be a whole number from 1 to {}, not {value:?}", TOP.1)))?
            }
            ("minutes" | "window", true) => {
                minutes = window_minutes(&value).filter(|n| (1..=MAX_RANGE_DAYS * 24 * 60).contains(n)).ok_or_else(|| {
                    bad(format!(
                        "{key} must be a number of minutes from 1 to {}, or a duration such as 30m, 2h or 7d, not {value:?}",
                        MAX_RANGE_DAYS * 1440
                    ))
                })?
            }
            (other, false) => return Err(bad(format!("unknown parameter {other:?} (known: site, from, to, top)"))),
            (other, true) => {
                return Err(bad(format!("unknown parameter {other:?} (known: site, window or minutes, top)")));
            }
        }
    }
    let window = TimeDelta::minutes(minutes);
    let to = to.unwrap_or(now);
    let from = from.unwrap_or(to - TimeDelta::hours(1));
    if from >= to {
        return Err(bad(format!("from ({}) must be before to ({})", from.to_rfc3339(), to.to_rfc3339())));
    }
    if to - from > TimeDelta::days(MAX_RANGE_DAYS) {
        return Err(bad(format!("the range from..to may cover at most {MAX_RANGE_DAYS} days")));
    }
    Ok(Parsed { query: StatsQuery { site, from, to, top }, window })
}

/// A sliding window's length in minutes: `90` (minutes), `90m`, `2h` or `7d`.
fn window_minutes(value: &str) -> Option<i64> {
    let (number, unit) = match value.strip_suffix(['m', 'h', 'd']) {
        Some(number) => (number, &value[number.len()..]),
        None => (value, "m"),
    };
    let n: i64 = number.parse().ok()?;
    n.checked_mul(match unit {
        "h" => 60,
        "d" => 1440,
        _ => 1,
    })
}

/// `GET /api/stats/stream?site=&window=&top=`: the stats of the last `window` (default 60 minutes),
/// pushed as `data:` frames.
async fn stream(
    State(state): State<AppState>,
    Subscriber(access): Subscriber,
    permit: StreamPermit,
    RawQuery(query): RawQuery,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let mut parsed = parse(query.as_deref().unwrap_or(""), true, Utc::now())?;
    within_scope(&mut parsed.query, &access)?;
    let changes = state.projections()?.watch();
    let expires = access.deadline();
    let live = Live {
        store: state.store.clone(),
        parsed,
        changes,
        last_push: None,
        pushed: None,
        access,
        expired: false,
        _permit: permit,
    };
    let events = futures::stream::unfold(live, move |mut live| async move {
        if live.expired {
            return None;
        }
        let event = tokio::select! {
            biased;
            () = auth::expiry(expires) => {
                live.expired = true;
                Event::default()
                    .event("token-expired")
                    .json_data(serde_json::json!({"code": "token_expired", "message": auth::TOKEN_EXPIRED_MESSAGE}))
                    .ok()?
            }
            event = live.next() => event?,
        };
        Some((Ok(event), live))
    });
    // A comment now and then keeps proxies from timing the stream out between pushes.
    Ok(Sse::new(events).keep_alive(axum::response::sse::KeepAlive::new().interval(Duration::from_secs(10))))
}

struct Live {
    store: Store,
    parsed: Parsed,
    changes: watch::Receiver<Position>,
    last_push: Option<Instant>,
    /// What was pushed last, so an unchanged refresh is not sent twice.
    pushed: Option<Stats>,
    /// The token's scope, for the site list.
    access: Access,
    /// The `token-expired` event has been sent: end.
    expired: bool,
    /// Held while the stream lives.
    _permit: StreamPermit,
}

impl Live {
    /// The next frame: at once the first time, then after the projector's next commit (at most
    /// every [`THROTTLE`]) or [`REFRESH`]. `None` ends the stream (shutdown, or a database error:
    /// the client reconnects).
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(last) = self.last_push {
                tokio::time::sleep_until(last + THROTTLE).await;
                let refresh = tokio::time::sleep_until(last + REFRESH);
                tokio::select! {
                    changed = self.changes.changed() => changed.ok()?,
                    _ = refresh => {}
                }
            }
            self.changes.borrow_and_update();
            self.last_push = Some(Instant::now());
            let now = Utc::now();
            let query = StatsQuery { from: now - self.parsed.window, to: now, ..self.parsed.query.clone() };
            let stats = match crate::projections::stats(&self.store, &query).await {
                Ok(stats) => stats,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot read stats for a live stream; closing it");
                    return None;
                }
            };
            let stats = visible(stats, &self.access);
            if self.pushed.as_ref() == Some(&stats) {
                continue;
            }
            let event = Event::default().json_data(&stats).ok()?;
            self.pushed = Some(stats);
            return Some(event);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn query_strings() {
        let now: DateTime<Utc> = "2025-01-31T12:00:00Z".parse().unwrap();
        let ok = parse("site=shop&from=2025-01-31T10:00:00%2B01:00&to=2025-01-31T11:30:00Z&top=5", false, now).unwrap();
        assert_eq!(ok.query.site.as_deref(), Some("shop"));
        assert_eq!(ok.query.from, "2025-01-31T09:00:00Z".parse::<DateTime<Utc>>().unwrap());
        assert_eq!(ok.query.top, 5);
        let default = parse("", false, now).unwrap().query;
        assert_eq!((default.site, default.to - default.from, default.to), (None, TimeDelta::hours(1), now));
        for (query, minutes) in
            [("minutes=5", 5), ("window=90", 90), ("window=60m", 60), ("window=2h", 120), ("window=7d", 10080)]
        {
            assert_eq!(parse(query, true, now).unwrap().window, TimeDelta::minutes(minutes), "{query}");
        }
        let bad = [
            ("from=yesterday", false, "from \"yesterday\" is not an RFC 3339 time"),
            ("to=2025-01-31T09:00:00Z&from=2025-01-31T10:00:00Z", false, "must be before to"),
            ("from=2024-01-01T00:00:00Z", false, "at most 31 days"),
            ("site=a%20b", false, "site \"a b\" is not a site id"),
            ("top=0", false, "top must be"),
            ("colour=red", false, "unknown parameter \"colour\""),
            ("from=2025-01-31T10:00:00Z", true, "unknown parameter \"from\""),
            ("minutes=0", true, "minutes must be"),
            ("window=2w", true, "window must be"),
            ("window=32d", true, "window must be"),
        ];
        for (query, live, words) in bad {
            let err = parse(query, live, now).unwrap_err();
            assert_eq!(err.status, StatusCode::BAD_REQUEST);
            assert!(err.message.contains(words), "{query}: {}", err.message);
        }
    }
}
