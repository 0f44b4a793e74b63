//! The three tracker event types and the fields each one must carry.
//!
//! Only what the projections and dashboards rely on is required; everything else a client sends
//! in `data` is kept as it is. `FormSubmitted` is the exception that refuses input: it carries
//! field *names* and counts, never what a visitor typed, so a value smuggled in is a 400, not
//! something stored.

use serde_json::{Map, Value};

use super::{TrackError, invalid};

/// Longest page path or referrer, in bytes.
pub const MAX_PATH: usize = 2048;
/// Longest element, form, field or action name, in bytes.
pub const MAX_NAME: usize = 128;
/// Longest page title, in bytes.
const MAX_TITLE: usize = 1024;
/// Most field names in one `FormSubmitted`.
const MAX_FIELDS: usize = 200;

/// A tracker event type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TrackType {
    /// A page was shown: on load and on each single-page-app navigation.
    PageViewed,
    /// A visitor clicked an element marked `data-fd-track`, or the page recorded a custom one.
    ElementInteraction,
    /// A form marked `data-fd-form` was submitted.
    FormSubmitted,
}

impl TrackType {
    /// All three, in the order the stats report them.
    pub const ALL: [TrackType; 3] = [TrackType::PageViewed, TrackType::ElementInteraction, TrackType::FormSubmitted];

    /// The event type name as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            TrackType::PageViewed => "PageViewed",
            TrackType::ElementInteraction => "ElementInteraction",
            TrackType::FormSubmitted => "FormSubmitted",
        }
    }

    /// The type named `name`, if it is a tracker type.
    pub fn parse(name: &str) -> Option<TrackType> {
        TrackType::ALL.into_iter().find(|t| t.as_str() == name)
    }

    /// The field that names what the event is about: `path`, `element` or `form`.
    pub fn key_field(self) -> &'static str {
        match self {
            TrackType::PageViewed => "path",
            TrackType::ElementInteraction => "element",
            TrackType::FormSubmitted => "form",
        }
    }
}

/// Checks `data` for `kind`; `at` prefixes field names in messages (`events[2].data`). May fill
/// in derived fields (`fieldCount`).
pub(super) fn check(kind: TrackType, data: &mut Map<String, Value>, at: &str) -> Result<(), TrackError> {
    match kind {
        TrackType::PageViewed => {
            path(data, "path", at, true)?;
            text(data, "title", at, MAX_TITLE, false)?;
            text(data, "referrer", at, MAX_PATH, false)?;
            viewport(data, at)?;
        }
        TrackType::ElementInteraction => {
            name(data, "element", at, true)?;
            path(data, "path", at, false)?;
            name(data, "action", at, false)?;
        }
        TrackType::FormSubmitted => {
            name(data, "form", at, true)?;
            path(data, "path", at, false)?;
            form_fields(data, at)?;
        }
    }
    Ok(())
}

/// A string field of at most `max` bytes without control characters; `null` counts as absent.
fn text<'a>(
    data: &'a Map<String, Value>,
    field: &str,
    at: &str,
    max: usize,
    required: bool,
) -> Result<Option<&'a str>, TrackError> {
    match data.get(field) {
        None | Some(Value::Null) if required => Err(invalid(format!("{at}.{field} is missing"))),
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.len() > max => {
            Err(invalid(format!("{at}.{field} is {} bytes long; the limit is {max}", s.len())))
        }
        Some(Value::String(s)) if s.chars().any(char::is_control) => {
            Err(invalid(format!("{at}.{field} contains a control character")))
        }
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(invalid(format!("{at}.{field} must be a string"))),
    }
}

/// A page path: starts with `/`.
fn path(data: &Map<String, Value>, field: &str, at: &str, required: bool) -> Result<(), TrackError> {
    if let Some(p) = text(data, field, at, MAX_PATH, required)?
        && !p.starts_with('/')
    {
        return Err(invalid(format!("{at}.{field} must start with / (a page path such as /pricing)")));
    }
    Ok(())
}

/// A non-empty name (element, form, action).
fn name(data: &Map<String, Value>, field: &str, at: &str, required: bool) -> Result<(), TrackError> {
    if let Some(n) = text(data, field, at, MAX_NAME, required)?
        && n.trim().is_empty()
    {
        return Err(invalid(format!("{at}.{field} is empty")));
    }
    Ok(())
}

/// Optional `viewport: {w, h}`, whole non-negative pixels.
fn viewport(data: &Map<String, Value>, at: &str) -> Result<(), TrackError> {
    match data.get("viewport") {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Object(v)) => {
            for side in ["w", "h"] {
                match v.get(side) {
                    Some(Value::Number(n)) if n.as_u64().is_some_and(|px| px <= 100_000) => {}
                    _ => {
                        return Err(invalid(format!(
                            "{at}.viewport.{side} must be a whole number of pixels (0 to 100000)"
                        )));
                    }
                }
            }
            Ok(())
        }
        Some(_) => Err(invalid(format!("{at}.viewport must be an object {{\"w\", \"h\"}}"))),
    }
}

/// `fields`: the names of the form's fields (strings only), and `fieldCount`, filled in from it
/// when absent. Refuses anything that looks like a value.
fn form_fields(data: &mut Map<String, Value>, at: &str) -> Result<(), TrackError> {
    for forbidden in ["values", "fieldValues"] {
        if data.contains_key(forbidden) {
            return Err(invalid(format!(
                "{at}.{forbidden} is not allowed: FormSubmitted carries field names and counts, never values"
            )));
        }
    }
    let count = match data.get("fields") {
        None | Some(Value::Null) => return Err(invalid(format!("{at}.fields is missing (an array of field names)"))),
        Some(Value::Array(fields)) => {
            if fields.len() > MAX_FIELDS {
                return Err(invalid(format!("{at}.fields has {} names; the limit is {MAX_FIELDS}", fields.len())));
            }
            for (i, field) in fields.iter().enumerate() {
                match field {
                    Value::String(s) if !s.is_empty() && s.len() <= MAX_NAME && !s.chars().any(char::is_control) => {}
                    Value::String(_) => {
                        return Err(invalid(format!(
                            "{at}.fields[{i}] must be a field name of 1 to {MAX_NAME} bytes without control characters"
                        )));
                    }
                    _ => {
                        return Err(invalid(format!(
                            "{at}.fields[{i}] must be a field name (a string): FormSubmitted carries field names, \
                             never values"
                        )));
                    }
                }
            }
            fields.len()
        }
        Some(_) => return Err(invalid(format!("{at}.fields must be an array of field names"))),
    };
    match data.get("fieldCount") {
        None | Some(Value::Null) => {
            data.insert("fieldCount".into(), Value::from(count));
        }
        Some(Value::Number(n)) if n.as_u64().is_some_and(|c| c <= 10_000) => {}
        Some(_) => return Err(invalid(format!("{at}.fieldCount must be a whole number (0 to 10000)"))),
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(kind: TrackType, data: Value) -> Result<Map<String, Value>, String> {
        let Value::Object(mut map) = data else { panic!("object") };
        check(kind, &mut map, "data").map(|()| map).map_err(|e| e.to_string())
    }

    #[test]
    fn required_and_optional_fields_per_type() {
        use TrackType::*;
        let ok = [
            (PageViewed, json!({"path": "/", "title": null, "referrer": "https://x.example/"})),
            (PageViewed, json!({"path": "/a?b", "viewport": {"w": 1280, "h": 720}, "anything": {"kept": true}})),
            (ElementInteraction, json!({"element": "signup", "action": "click", "path": "/pricing"})),
            (ElementInteraction, json!({"element": "video", "seconds": 12})),
            (FormSubmitted, json!({"form": "contact", "fields": ["email", "message"]})),
        ];
        for (kind, data) in ok {
            assert!(run(kind, data.clone()).is_ok(), "{kind:?} {data}: {:?}", run(kind, data.clone()));
        }
        let bad = [
            (PageViewed, json!({}), "data.path is missing"),
            (PageViewed, json!({"path": 3}), "data.path must be a string"),
            (PageViewed, json!({"path": "pricing"}), "must start with /"),
            (PageViewed, json!({"path": "/", "title": 1}), "data.title must be a string"),
            (PageViewed, json!({"path": "/", "viewport": {"w": -1, "h": 2}}), "data.viewport.w"),
            (PageViewed, json!({"path": "/", "viewport": [1, 2]}), "data.viewport must be an object"),
            (PageViewed, json!({"path": format!("/{}", "x".repeat(MAX_PATH))}), "the limit is 2048"),
            (PageViewed, json!({"path": "/a\nb"}), "control character"),
            (ElementInteraction, json!({"action": "click"}), "data.element is missing"),
            (ElementInteraction, json!({"element": "  "}), "data.element is empty"),
            (FormSubmitted, json!({"fields": []}), "data.form is missing"),
            (FormSubmitted, json!({"form": "f"}), "data.fields is missing"),
            (FormSubmitted, json!({"form": "f", "fields": "email"}), "data.fields must be an array"),
            (
                FormSubmitted,
                json!({"form": "f", "fields": [{"email": "a@b.c"}]}),
                "data.fields[0] must be a field name",
            ),
            (FormSubmitted, json!({"form": "f", "fields": ["email"], "values": {"email": "a@b.c"}}), "never values"),
            (FormSubmitted, json!({"form": "f", "fields": ["a"], "fieldCount": "1"}), "data.fieldCount"),
        ];
        for (kind, data, words) in bad {
            let err = run(kind, data.clone()).unwrap_err();
            assert!(err.contains(words), "{kind:?} {data}: {err}");
        }
    }

    #[test]
    fn field_count_is_filled_in() {
        let data = run(TrackType::FormSubmitted, json!({"form": "f", "fields": ["a", "b"]})).unwrap();
        assert_eq!(data["fieldCount"], 2);
        let data = run(TrackType::FormSubmitted, json!({"form": "f", "fields": ["a"], "fieldCount": 5})).unwrap();
        assert_eq!(data["fieldCount"], 5);
    }
}
