//! Which events a subscriber wants: event types, sites, a stream (exact or prefix), and equality
//! tests on fields of the event's data. Applied in memory to live events and to replays alike, so both
//! deliver exactly the same set.

use std::sync::Arc;

use serde_json::Value;

use crate::auth::Scope;
use crate::store::RecordedEvent;

/// A subscription's filter. The empty filter matches everything; conditions are AND-ed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    /// Event types to deliver (any of them); empty means all types.
    pub types: Vec<String>,
    /// Sites whose events to deliver (any of them); empty means every site. What the client asks
    /// for; what it may see is [`Filter::scope`].
    pub sites: Vec<String>,
    /// Only this stream.
    pub stream: Option<String>,
    /// Only streams starting with this prefix.
    pub stream_prefix: Option<String>,
    /// Field equalities, e.g. path `["pageId"]` (from `data.pageId`) equal to `"home"`.
    pub fields: Vec<FieldMatch>,
    /// Named channels (see [`super::Routing`]); empty means all.
    pub channels: Vec<String>,
    /// What the subscriber's token covers (`None`: everything). Set by the server from the
    /// caller's token ([`Filter::within`]), never from what the client asks for; checked with the
    /// rest of the filter on every live and replayed event, so no path delivers past it.
    pub scope: Option<Arc<Scope>>,
}

/// One equality test on the event's data.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldMatch {
    /// Path inside `data`, one key per level.
    pub path: Vec<String>,
    /// The value the field must equal.
    pub value: Value,
}

/// A filter expression that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// Not `data.<path>:<value>` (or `=`).
    #[error("filter {0:?} is not of the form data.<field>:<value>, e.g. data.pageId:home")]
    Malformed(String),
    /// A field path that is not `data.<field>` (nested: `data.<field>.<field>`).
    #[error("field {0:?} is not of the form data.<field>, e.g. data.pageId or data.user.plan")]
    BadPath(String),
}

impl FieldMatch {
    /// Parses `data.pageId:home` (or `data.pageId=home`). The value is taken as JSON when it
    /// parses as a JSON scalar (`42`, `true`, `"quoted"`), else as a plain string.
    pub fn parse(expr: &str) -> Result<Self, FilterError> {
        let bad = || FilterError::Malformed(expr.chars().take(200).collect());
        let split = expr.find([':', '=']).ok_or_else(bad)?;
        let (path, value) = (&expr[..split], &expr[split + 1..]);
        let path = data_path(path).ok_or_else(bad)?;
        let value = match serde_json::from_str::<Value>(value) {
            Ok(v @ (Value::Number(_) | Value::Bool(_) | Value::String(_) | Value::Null)) => v,
            _ => Value::String(value.to_string()),
        };
        Ok(FieldMatch { path, value })
    }

    /// A test that the field at `path` (`data.pageId`, `data.user.plan`) equals the JSON `value`
    /// exactly (the WebSocket form, `"where":{"data.pageId":"home"}`: `3` and `"3"` differ).
    pub fn new(path: &str, value: Value) -> Result<Self, FilterError> {
        let path = data_path(path).ok_or_else(|| FilterError::BadPath(path.chars().take(200).collect()))?;
        Ok(FieldMatch { path, value })
    }

    fn matches(&self, data: &Value) -> bool {
        let mut at = data;
        for key in &self.path {
            match at.get(key) {
                Some(next) => at = next,
                None => return false,
            }
        }
        at == &self.value
    }
}

/// `data.a.b` as `["a", "b"]`; `None` without the `data.` prefix or with an empty key.
fn data_path(path: &str) -> Option<Vec<String>> {
    let path: Vec<String> = path.strip_prefix("data.")?.split('.').map(str::to_string).collect();
    (!path.iter().any(String::is_empty)).then_some(path)
}

impl Filter {
    /// This filter limited to `scope` (a no-op for a scope that covers everything, so open
    /// servers pay nothing per event).
    pub fn within(mut self, scope: &Arc<Scope>) -> Self {
        self.scope = (!scope.is_everything()).then(|| scope.clone());
        self
    }

    /// Why the filter can never match inside its scope, if it asks *only* for sites the scope does
    /// not cover: the caller is told (403) rather than given a stream that stays silent.
    pub fn outside_scope(&self) -> Option<String> {
        let scope = self.scope.as_ref()?;
        if self.sites.is_empty() || !scope.covered_sites(&self.sites).is_empty() {
            return None;
        }
        Some(format!("the token does not cover the site(s) {}", self.sites.join(", ")))
    }

    /// Whether `event` passes every condition.
    pub fn matches(&self, event: &RecordedEvent) -> bool {
        self.scope.as_ref().is_none_or(|scope| scope.permits(event))
            && (self.types.is_empty() || self.types.contains(&event.event_type))
            && (self.sites.is_empty() || self.sites.contains(&event.site))
            && self.stream.as_ref().is_none_or(|s| *s == event.stream)
            && self.stream_prefix.as_ref().is_none_or(|p| event.stream.starts_with(p.as_str()))
            && self.fields.iter().all(|f| f.matches(&event.data))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(ty: &str, stream: &str, data: Value) -> RecordedEvent {
        RecordedEvent {
            id: uuid::Uuid::now_v7(),
            position: crate::store::Position::START,
            stream: stream.into(),
            site: "shop".into(),
            version: 1,
            event_type: ty.into(),
            data,
            metadata: json!({}),
            timestamp: chrono::Utc::now(),
        }
    }

    #[test]
    fn filters_match_as_documented() {
        let home = event("PageViewed", "session-1", json!({"pageId": "home", "n": 3, "user": {"plan": "pro"}}));
        let f = |types: &[&str], stream: Option<&str>, prefix: Option<&str>, fields: &[&str]| Filter {
            types: types.iter().map(|s| s.to_string()).collect(),
            stream: stream.map(str::to_string),
            stream_prefix: prefix.map(str::to_string),
            fields: fields.iter().map(|e| FieldMatch::parse(e).unwrap()).collect(),
            channels: Vec::new(),
            sites: Vec::new(),
            scope: None,
        };
        let cases = [
            (f(&[], None, None, &[]), true),
            (f(&["PageViewed", "X"], None, None, &[]), true),
            (f(&["X"], None, None, &[]), false),
            (f(&[], Some("session-1"), None, &[]), true),
            (f(&[], Some("session"), None, &[]), false),
            (f(&[], None, Some("session-"), &[]), true),
            (f(&[], None, Some("order-"), &[]), false),
            (f(&[], None, None, &["data.pageId:home"]), true),
            (f(&[], None, None, &["data.pageId=home", "data.n:3"]), true),
            (f(&[], None, None, &["data.pageId:home", "data.n:4"]), false),
            (f(&[], None, None, &["data.user.plan:pro"]), true),
            (f(&[], None, None, &["data.missing:x"]), false),
            (f(&[], None, None, &["data.n:\"3\""]), false),
        ];
        for (i, (filter, want)) in cases.iter().enumerate() {
            assert_eq!(filter.matches(&home), *want, "case {i}: {filter:?}");
        }
        let sites =
            |sites: &[&str]| Filter { sites: sites.iter().map(|s| s.to_string()).collect(), ..Filter::default() };
        assert!(sites(&["blog", "shop"]).matches(&home));
        assert!(!sites(&["blog"]).matches(&home));
        let narrowed = Filter { types: vec!["Other".into()], ..sites(&["shop"]) };
        assert!(!narrowed.matches(&home), "conditions are AND-ed");
    }

    #[test]
    fn the_scope_narrows_every_filter_and_a_filter_cannot_widen_it() {
        let home = event("PageViewed", "session-1", json!({}));
        let scope = |sites: Option<&[&str]>, types: Option<&[&str]>, streams: Option<&[&str]>| {
            let list = |l: Option<&[&str]>| l.map(|l| l.iter().map(|s| s.to_string()).collect());
            Arc::new(Scope { sites: list(sites), types: list(types), streams: list(streams) })
        };
        let open = Filter::default();
        assert!(open.clone().within(&scope(Some(&["shop"]), None, None)).matches(&home));
        assert!(!open.clone().within(&scope(Some(&["blog"]), None, None)).matches(&home));
        assert!(!open.clone().within(&scope(None, Some(&["Other"]), None)).matches(&home));
        assert!(!open.clone().within(&scope(None, None, Some(&["orders-"]))).matches(&home));
        assert!(open.clone().within(&scope(None, None, Some(&["session-"]))).matches(&home));
        assert_eq!(open.clone().within(&Arc::new(Scope::everything())).scope, None, "no per-event cost when open");
        // Asking for a site outside the scope neither widens it nor stays silent.
        let asks = Filter { sites: vec!["shop".into(), "blog".into()], ..Filter::default() };
        let blog_only = asks.clone().within(&scope(Some(&["blog"]), None, None));
        assert!(!blog_only.matches(&home) && blog_only.outside_scope().is_none());
        let other = Filter { sites: vec!["shop".into()], ..Filter::default() }.within(&scope(Some(&["x"]), None, None));
        assert!(other.outside_scope().unwrap().contains("shop"));
    }

    #[test]
    fn malformed_field_filters_are_refused() {
        for bad in ["pageId:home", "data.:x", "data.pageId", "", "data..a:1"] {
            assert!(FieldMatch::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(FieldMatch::parse("data.a:b:c").unwrap().value, json!("b:c"));
    }

    #[test]
    fn field_matches_from_a_path_and_a_json_value() {
        let home = event("PageViewed", "s", json!({"pageId": "home", "n": 3, "user": {"plan": "pro"}, "tags": ["a"]}));
        let matches = |path: &str, value: Value| {
            let filter = Filter { fields: vec![FieldMatch::new(path, value).unwrap()], ..Filter::default() };
            filter.matches(&home)
        };
        assert!(matches("data.pageId", json!("home")));
        assert!(matches("data.n", json!(3)));
        assert!(!matches("data.n", json!("3")), "JSON values compare exactly: 3 is not \"3\"");
        assert!(matches("data.user.plan", json!("pro")));
        assert!(matches("data.user", json!({"plan": "pro"})));
        assert!(matches("data.tags", json!(["a"])));
        assert!(!matches("data.missing", json!(null)));
        assert_eq!(FieldMatch::new("data.user.plan", json!(1)).unwrap().path, vec!["user", "plan"]);
        for bad in ["pageId", "data.", "data..a", "data.a.", ""] {
            assert_eq!(FieldMatch::new(bad, json!(1)), Err(FilterError::BadPath(bad.into())), "{bad}");
        }
    }
}
