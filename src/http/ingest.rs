//! `POST /api/events`: one event object, or an array of events appended atomically to one stream
//! of one site. Requests per client address are limited (`limits.rs`) before the body is read.
//!
//! Writing needs a publish token (`Authorization: Bearer`; the dashboard's cookie only reads).
//! The events' site (the request's `site`, else the token's only site), types and stream must all
//! be inside the token's scope, or nothing is stored and the 403 names what is not covered.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::store::{DEFAULT_SITE, ExpectedVersion, NewEvent, metadata_object, validate_site};

use super::auth::{Access, Publisher, forbidden};
use super::limits::{IngestPermit, Limit};
use super::{ApiError, AppState};

pub(super) async fn ingest(
    State(state): State<AppState>,
    Publisher(access): Publisher,
    _permit: IngestPermit,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let json_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json_type {
        return Err(ApiError {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            code: "unsupported_media_type",
            message: "send events as JSON with `Content-Type: application/json`".into(),
        });
    }
    let body = body.map_err(|rejection| match rejection {
        BytesRejection::FailedToBufferBody(_) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            state.limits.count(Limit::BodySize);
            ApiError {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                code: "too_large",
                message: format!("the request body is larger than the limit of {} bytes", state_limit(&state)),
            }
        }
        other => ApiError::bad_request("bad_body", other.body_text()),
    })?;
    let request = parse_body(&body)?;
    let site = authorize(&request, &access)?;
    let IngestRequest { stream, expected, events, .. } = request;
    let bus = state.bus()?;
    let out = bus.append(&site, &stream, expected, &events).await?;
    let status = if out.already_stored { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, Json(json!({ "events": out.events }))))
}

/// The site the events go to, once the token is known to cover it and every event's type and
/// the stream.
fn authorize(request: &IngestRequest, access: &Access) -> Result<String, ApiError> {
    let scope = access.scope();
    let site = match (request.site_named, scope.sites.as_deref()) {
        (true, _) | (false, None) => request.site.clone(),
        (false, Some(_)) => scope.only_site().map(str::to_string).ok_or_else(|| {
            ApiError::bad_request(
                "site_required",
                "the token covers several sites: name the site on each event (\"site\": \"…\")",
            )
        })?,
    };
    if !scope.permits_site(&site) {
        return Err(forbidden(format!("the token does not cover site {site:?}")));
    }
    if !scope.permits_stream(&request.stream) {
        return Err(forbidden(format!("the token does not cover stream {:?}", clip(&request.stream))));
    }
    if let Some(event) = request.events.iter().find(|e| !scope.permits_type(&e.event_type)) {
        return Err(forbidden(format!("the token does not cover event type {:?}", clip(&event.event_type))));
    }
    Ok(site)
}

fn state_limit(state: &AppState) -> usize {
    state.max_body
}

/// A parsed `POST /api/events` body: one append.
#[derive(Debug)]
pub struct IngestRequest {
    /// The site every event names (`default` when none does).
    pub site: String,
    /// Whether the request named the site (if not, a token for one site decides it).
    pub site_named: bool,
    /// The stream every event names.
    pub stream: String,
    /// The version the stream must be at, from the first event.
    pub expected: ExpectedVersion,
    /// The events, in order.
    pub events: Vec<NewEvent>,
}

/// Parses a request body: one event object or a non-empty array of them, all to one stream.
pub(crate) fn parse_body(body: &[u8]) -> Result<IngestRequest, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("malformed_json", format!("the body is not valid JSON: {e}")))?;
    let items = match value {
        Value::Array(items) if items.is_empty() => {
            return Err(ApiError::bad_request("invalid_event", "the array is empty: send at least one event"));
        }
        Value::Array(items) => items,
        object @ Value::Object(_) => vec![object],
        _ => return Err(ApiError::bad_request("invalid_event", "send an event object or an array of event objects")),
    };
    parse_events(items)
}

/// At most 80 characters of client input, for error messages (a client must not be able to make
/// an answer as large as its request).
fn clip(text: &str) -> String {
    text.chars().take(80).collect()
}

/// Turns the request's event objects into one append, naming the field and index of any problem.
fn parse_events(items: Vec<Value>) -> Result<IngestRequest, ApiError> {
    let many = items.len() > 1;
    let mut stream: Option<String> = None;
    let mut site: Option<String> = None;
    let mut site_named = false;
    let mut expected: Option<ExpectedVersion> = None;
    let mut events = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let at = if many { format!("events[{i}].") } else { String::new() };
        let bad = |msg: String| ApiError::bad_request("invalid_event", msg);
        let Value::Object(mut object) = item else {
            return Err(bad(format!("{}: each event must be a JSON object", at.trim_end_matches('.'))));
        };
        let this_stream = take_string(&mut object, "stream", &at)?;
        let this_site = match object.remove("site") {
            None | Some(Value::Null) => DEFAULT_SITE.to_string(),
            Some(Value::String(s)) => {
                validate_site(&s).map_err(|e| ApiError::bad_request("invalid_site", format!("{at}site: {e}")))?;
                site_named = true;
                s
            }
            Some(_) => {
                return Err(ApiError::bad_request(
                    "invalid_site",
                    format!("{at}site must be a string of 1 to 64 of A-Z, a-z, 0-9, _ and -"),
                ));
            }
        };
        let event_type = take_string(&mut object, "type", &at)?;
        let data = object.remove("data").ok_or_else(|| bad(format!("{at}data is missing (any JSON value)")))?;
        let metadata = match object.remove("metadata") {
            None => Map::new(),
            Some(m) => metadata_object(m).map_err(|e| bad(format!("{at}{e}")))?,
        };
        let id = match object.remove("id") {
            None | Some(Value::Null) => Some(Uuid::now_v7()),
            Some(Value::String(s)) => {
                Some(Uuid::parse_str(&s).map_err(|_| bad(format!("{at}id {:?} is not a UUID", clip(&s))))?)
            }
            Some(_) => return Err(bad(format!("{at}id must be a UUID string"))),
        };
        let this_expected = match object.remove("expectedVersion") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => match n.as_u64() {
                Some(0) => Some(ExpectedVersion::NoStream),
                Some(n) => Some(ExpectedVersion::Exact(n)),
                None => {
                    return Err(bad(format!("{at}expectedVersion must be a version number, \"any\" or \"no-stream\"")));
                }
            },
            Some(Value::String(s)) => Some(s.parse().map_err(|e| bad(format!("{at}expectedVersion: {e}")))?),
            Some(_) => {
                return Err(bad(format!("{at}expectedVersion must be a version number, \"any\" or \"no-stream\"")));
            }
        };
        if let Some(unknown) = object.keys().next() {
            return Err(bad(format!(
                "{at}{} is not an event field (fields: stream, site, type, data, metadata, id, expectedVersion)",
                clip(unknown)
            )));
        }
        match &stream {
            None => stream = Some(this_stream),
            Some(s) if *s != this_stream => {
                return Err(bad(format!(
                    "{at}stream: all events of one request must go to the same stream ({:?})",
                    clip(s)
                )));
            }
            Some(_) => {}
        }
        match &site {
            None => site = Some(this_site),
            Some(s) if *s != this_site => {
                return Err(ApiError::bad_request(
                    "invalid_site",
                    format!("{at}site: all events of one request must name the same site ({s:?})"),
                ));
            }
            Some(_) => {}
        }
        if let Some(e) = this_expected {
            if expected.is_some_and(|prev| prev != e) || (i > 0 && expected.is_none()) {
                return Err(bad(format!("{at}expectedVersion: give it once, on the first event")));
            }
            expected = Some(e);
        }
        events.push(NewEvent { id, event_type, data, metadata });
    }
    Ok(IngestRequest {
        site: site.unwrap_or_else(|| DEFAULT_SITE.to_string()),
        site_named,
        stream: stream.unwrap_or_default(),
        expected: expected.unwrap_or_default(),
        events,
    })
}

fn take_string(object: &mut Map<String, Value>, field: &str, at: &str) -> Result<String, ApiError> {
    match object.remove(field) {
        Some(Value::String(s)) => Ok(s),
        None => Err(ApiError::bad_request("invalid_event", format!("{at}{field} is missing"))),
        Some(_) => Err(ApiError::bad_request("invalid_event", format!("{at}{field} must be a string"))),
    }
}
