//! Tokens over HTTP: where a request's token comes from, what it allows, and the dashboard's
//! one-time login link.
//!
//! A token is taken from, in order: `Authorization: Bearer <jwt>`; the `flightdeck_session`
//! cookie (the dashboard, and `EventSource`, which cannot set headers); the `access_token` query
//! parameter (WebSocket and `EventSource` from other origins). FlightDeck logs no request URIs, so
//! the query form never reaches a log. A cookie is a read-only session and is accepted only for
//! same-origin requests (an `Origin` header naming another origin is refused), so another site
//! cannot ride on it. Handlers take a [`Subscriber`] or [`Publisher`] and check every event
//! against [`Access::scope`].

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::auth::{Action, Auth, AuthError, Claims, SESSION_TTL, Scope};
use crate::bus::Filter;

use super::{ApiError, AppState};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "flightdeck_session";

/// Where a request's token came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// Authentication is off: no token needed.
    Open,
    /// `Authorization: Bearer`.
    Header,
    /// The session cookie.
    Cookie,
    /// `?access_token=`.
    Query,
}

/// What a request may do, established from its token.
#[derive(Debug, Clone)]
pub struct Access {
    scope: Arc<Scope>,
    /// The token's expiry (seconds since the epoch); `None` with authentication off.
    expires: Option<i64>,
    via: Via,
    /// What identifies the token for the per-token stream limit; `None` with authentication off.
    key: Option<Arc<str>>,
}

impl Access {
    /// Everything, forever (authentication off).
    pub fn open() -> Self {
        Access { scope: Arc::new(Scope::everything()), expires: None, via: Via::Open, key: None }
    }

    fn from_claims(claims: &Claims, via: Via) -> Self {
        // `jti` when the token has one (FlightDeck's do); otherwise subject and issue time, which
        // tell apart the tokens one issuer hands out.
        let key = match &claims.jti {
            Some(jti) => format!("jti:{jti}"),
            None => format!("sub:{}:iat:{}", claims.sub.as_deref().unwrap_or(""), claims.iat),
        };
        Access { scope: Arc::new(claims.scope()), expires: Some(claims.exp), via, key: Some(key.into()) }
    }

    /// The token's identity for the per-token stream limit (`None`: authentication off).
    pub fn token_key(&self) -> Option<&Arc<str>> {
        self.key.as_ref()
    }

    /// The events this request may see or write.
    pub fn scope(&self) -> &Arc<Scope> {
        &self.scope
    }

    /// Where the token came from.
    pub fn via(&self) -> Via {
        self.via
    }

    /// When the token expires, as a Tokio instant: a stream opened with it must end then.
    pub fn deadline(&self) -> Option<tokio::time::Instant> {
        let exp_ms = self.expires?.saturating_mul(1000);
        // Milliseconds, so a stream does not end up to a second before its token expires.
        let left = exp_ms.saturating_sub(chrono::Utc::now().timestamp_millis()).max(0);
        Some(tokio::time::Instant::now() + std::time::Duration::from_millis(u64::try_from(left).unwrap_or(0)))
    }

    /// Establishes what the request in `parts` may do for `action`.
    pub fn check(parts: &Parts, auth: &Auth, action: Action) -> Result<Access, ApiError> {
        if auth.is_disabled() {
            return Ok(Access::open());
        }
        let (token, via) = token(parts).ok_or_else(|| unauthorized(AuthError::Missing))?;
        let claims = auth.verify(&token).map_err(unauthorized)?;
        if via == Via::Cookie {
            same_origin(&parts.headers)?;
            if action != Action::Subscribe {
                return Err(forbidden(
                    "the dashboard's session cookie only reads: send a publish token as `Authorization: Bearer`",
                ));
            }
        }
        if !claims.allows(action) {
            return Err(forbidden(format!(
                "the token does not allow {}: make one with `flightdeck token create --{}`",
                action.as_str(),
                action.as_str()
            )));
        }
        Ok(Access::from_claims(&claims, via))
    }
}

/// `filter` limited to what `access` may see; a 403 when it asks only for sites the token does
/// not cover (a stream that could never carry anything is refused rather than left silent).
pub(crate) fn scoped(filter: Filter, access: &Access) -> Result<Filter, ApiError> {
    let filter = filter.within(access.scope());
    match filter.outside_scope() {
        Some(why) => Err(forbidden(why)),
        None => Ok(filter),
    }
}

/// Resolves at the token's expiry, or never (authentication off). Streams select on it next to
/// their other wake-ups: one timer per stream, no clock read per event.
pub(crate) async fn expiry(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// What a client is told when its token expires mid-stream.
pub(crate) const TOKEN_EXPIRED_MESSAGE: &str = "the token has expired: reconnect with a fresh token";

/// The last frame of an SSE stream whose token expired (a named event, so `onmessage` never sees
/// it; the JavaScript client listens for `token-expired`).
pub(crate) fn token_expired_sse() -> String {
    format!("event: token-expired\ndata: {{\"code\":\"token_expired\",\"message\":\"{TOKEN_EXPIRED_MESSAGE}\"}}\n\n")
}

/// A request allowed to read (subscribe, read events and streams, stats).
#[derive(Debug, Clone)]
pub struct Subscriber(pub Access);

/// A request allowed to write events.
#[derive(Debug, Clone)]
pub struct Publisher(pub Access);

impl FromRequestParts<AppState> for Subscriber {
    type Rejection = ApiError;

    /// Also leaves the [`Access`] in the request's extensions, where the stream limit
    /// (`limits::StreamPermit`, extracted after it) finds the token to count the stream against.
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let access = Access::check(parts, &state.auth, Action::Subscribe)?;
        parts.extensions.insert(access.clone());
        Ok(Subscriber(access))
    }
}

impl FromRequestParts<AppState> for Publisher {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        Access::check(parts, &state.auth, Action::Publish).map(Publisher)
    }
}

/// The request's token and where it came from.
fn token(parts: &Parts) -> Option<(String, Via)> {
    if let Some(value) = parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let (scheme, token) = value.trim().split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| (token.trim().to_string(), Via::Header));
    }
    if let Some(token) = cookie(&parts.headers, SESSION_COOKIE) {
        return Some((token, Via::Cookie));
    }
    let query = parts.uri.query()?;
    serde_urlencoded::from_str::<Vec<(String, String)>>(query)
        .ok()?
        .into_iter()
        .find(|(key, _)| key == "access_token")
        .map(|(_, token)| (token, Via::Query))
}

/// The value of cookie `name`, from any `Cookie` header.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim_matches('"').to_string())
}

/// Refuses a cookie-authenticated request sent by a page on another origin.
fn same_origin(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return Ok(());
    };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    let origin_host = origin.split_once("://").map_or("", |(_, rest)| rest);
    if origin_host.eq_ignore_ascii_case(host) {
        Ok(())
    } else {
        Err(forbidden("the session cookie is not accepted from another origin: send a token instead"))
    }
}

fn unauthorized(err: AuthError) -> ApiError {
    let code = match err {
        AuthError::Missing => "token_required",
        AuthError::Expired => "token_expired",
        _ => "invalid_token",
    };
    ApiError { status: StatusCode::UNAUTHORIZED, code, message: err.to_string() }
}

/// A 403: the token is good but does not cover this.
pub(crate) fn forbidden(message: impl Into<String>) -> ApiError {
    ApiError { status: StatusCode::FORBIDDEN, code: "forbidden", message: message.into() }
}

#[derive(Debug, Deserialize)]
pub(super) struct LoginQuery {
    token: Option<String>,
}

/// `GET /login?token=…`: redeems a one-time login link and sets the dashboard's session cookie.
pub(super) async fn login(
    State(state): State<AppState>,
    query: Result<Query<LoginQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let Ok(Query(LoginQuery { token: Some(token) })) = query else {
        return ApiError::bad_request(
            "token_required",
            "open the login link `flightdeck serve` printed, with its token",
        )
        .into_response();
    };
    if state.auth.is_disabled() {
        return see_other("/", None);
    }
    let session = state.auth.redeem_login(&token).and_then(|claims| state.auth.session_for(&claims));
    match session {
        Ok(session) => {
            let secure = headers.get("x-forwarded-proto").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
            let cookie = format!(
                "{SESSION_COOKIE}={session}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
                SESSION_TTL.as_secs(),
                if secure { "; Secure" } else { "" }
            );
            tracing::info!("dashboard login link redeemed");
            see_other("/", HeaderValue::from_str(&cookie).ok())
        }
        Err(err) => unauthorized(err).into_response(),
    }
}

fn see_other(location: &'static str, cookie: Option<HeaderValue>) -> Response {
    let mut response = (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response();
    if let Some(cookie) = cookie {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use axum::http::Request;

    use super::*;

    fn parts(build: impl FnOnce(axum::http::request::Builder) -> axum::http::request::Builder) -> Parts {
        build(Request::builder().uri("/api/events?x=1&access_token=q")).body(()).unwrap().into_parts().0
    }

    #[test]
    fn the_header_wins_then_the_cookie_then_the_query() {
        let p = parts(|b| b.header("authorization", "Bearer h").header("cookie", "a=b; flightdeck_session=c"));
        assert_eq!(token(&p), Some(("h".into(), Via::Header)));
        let p = parts(|b| b.header("cookie", "a=b; flightdeck_session=c"));
        assert_eq!(token(&p), Some(("c".into(), Via::Cookie)));
        assert_eq!(token(&parts(|b| b)), Some(("q".into(), Via::Query)));
        let p = parts(|b| b.header("authorization", "Basic abc"));
        assert_eq!(token(&p), None, "a non-bearer Authorization is no token");
    }

    #[test]
    fn a_cookie_from_another_origin_is_refused() {
        let p = parts(|b| b.header("host", "127.0.0.1:8080").header("origin", "http://127.0.0.1:8080"));
        assert!(same_origin(&p.headers).is_ok());
        let p = parts(|b| b.header("host", "127.0.0.1:8080").header("origin", "https://evil.example"));
        assert!(same_origin(&p.headers).is_err());
        assert!(same_origin(&parts(|b| b.header("host", "x")).headers).is_ok(), "no Origin: not a cross-site fetch");
    }
}
