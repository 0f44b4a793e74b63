//! What a token says: who may do what, to which sites, event types and streams, until when.
//!
//! Tokens are JWTs whose payload is [`Claims`]. The scope is a whitelist: a token lists the sites it
//! is for (or `*` for every site), and may narrow further to event types and stream-name prefixes.
//! Everything a request reads or writes is checked against the [`Scope`] in memory, per event, so a
//! replay, a batch or a stream read can never carry an event the token does not cover.

use serde::{Deserialize, Serialize};

use crate::store::RecordedEvent;

/// What a token allows. A token carries one or more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Read: streams (SSE, WebSocket), event and stream reads, stats, the dashboard.
    Subscribe,
    /// Write: `POST /api/events`.
    Publish,
    /// Exchange this (short-lived, single-use) token for a dashboard session cookie at `/login`.
    Login,
}

impl Action {
    /// The name used in tokens and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Subscribe => "subscribe",
            Action::Publish => "publish",
            Action::Login => "login",
        }
    }
}

/// The JWT payload FlightDeck issues and accepts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Who the token was issued to (free text, shown in logs; never used for decisions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// Issued at, seconds since the Unix epoch.
    #[serde(default)]
    pub iat: i64,
    /// Expiry, seconds since the Unix epoch. Required: FlightDeck accepts no token that never
    /// expires.
    pub exp: i64,
    /// A unique id; single-use tokens (login) are remembered by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// What the token allows.
    pub actions: Vec<Action>,
    /// Sites the token covers; `"*"` means every site.
    pub sites: Vec<String>,
    /// If present, only these event types.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub types: Option<Vec<String>>,
    /// If present, only streams whose name starts with one of these prefixes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub streams: Option<Vec<String>>,
}

impl Claims {
    /// The part of the claims that limits what is read or written.
    pub fn scope(&self) -> Scope {
        Scope {
            sites: if self.sites.iter().any(|s| s == "*") { None } else { Some(self.sites.clone()) },
            types: self.types.clone(),
            streams: self.streams.clone(),
        }
    }

    /// Whether the token allows `action`.
    pub fn allows(&self, action: Action) -> bool {
        self.actions.contains(&action)
    }
}

/// The events a caller may see or write. `None` in a field means "no restriction there".
///
/// [`Scope::everything`] is what a server with authentication switched off grants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    /// Only these sites.
    pub sites: Option<Vec<String>>,
    /// Only these event types.
    pub types: Option<Vec<String>>,
    /// Only streams starting with one of these prefixes.
    pub streams: Option<Vec<String>>,
}

impl Scope {
    /// No restriction at all.
    pub fn everything() -> Self {
        Scope::default()
    }

    /// Whether nothing is restricted (lets hot paths skip the per-event check).
    pub fn is_everything(&self) -> bool {
        self.sites.is_none() && self.types.is_none() && self.streams.is_none()
    }

    /// Whether the stored `event` is inside the scope: its site, type and stream. The one check
    /// every read path (live delivery, replay, batches, reads by id and by stream) goes through,
    /// so no path can forget a part of the scope.
    pub fn permits(&self, event: &RecordedEvent) -> bool {
        self.permits_parts(&event.site, &event.event_type, &event.stream)
    }

    /// The sites among `wanted` this scope covers: what a subscription that names sites is left
    /// with (empty means it asked only for sites it may not see).
    pub fn covered_sites<'a>(&self, wanted: &'a [String]) -> Vec<&'a String> {
        wanted.iter().filter(|site| self.permits_site(site)).collect()
    }

    /// [`Scope::permits`] on the parts of an event (for writes, before it exists).
    pub fn permits_parts(&self, site: &str, event_type: &str, stream: &str) -> bool {
        self.permits_site(site) && self.permits_type(event_type) && self.permits_stream(stream)
    }

    /// Whether the site is covered.
    pub fn permits_site(&self, site: &str) -> bool {
        self.sites.as_ref().is_none_or(|sites| sites.iter().any(|s| s == site))
    }

    /// Whether the event type is covered.
    pub fn permits_type(&self, event_type: &str) -> bool {
        self.types.as_ref().is_none_or(|types| types.iter().any(|t| t == event_type))
    }

    /// Whether the stream is covered (by one of the prefixes).
    pub fn permits_stream(&self, stream: &str) -> bool {
        self.streams.as_ref().is_none_or(|prefixes| prefixes.iter().any(|p| stream.starts_with(p.as_str())))
    }

    /// The one site a write goes to when the request names none: the token's only site, if it
    /// has exactly one.
    pub fn only_site(&self) -> Option<&str> {
        match self.sites.as_deref() {
            Some([site]) => Some(site),
            _ => None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn claims(sites: &[&str]) -> Claims {
        Claims {
            sub: None,
            iat: 0,
            exp: 1,
            jti: None,
            actions: vec![Action::Subscribe],
            sites: sites.iter().map(|s| s.to_string()).collect(),
            types: None,
            streams: None,
        }
    }

    #[test]
    fn a_star_covers_every_site_and_a_list_only_its_own() {
        assert!(claims(&["*"]).scope().permits_site("anything"));
        let shop = claims(&["shop"]).scope();
        assert!(shop.permits_site("shop"));
        assert!(!shop.permits_site("blog"));
        assert!(!shop.permits_site("shop2"));
        assert!(!claims(&[]).scope().permits_site("shop"), "no sites means none, not all");
        assert_eq!(shop.only_site(), Some("shop"));
        assert_eq!(claims(&["a", "b"]).scope().only_site(), None);
    }

    #[test]
    fn types_and_stream_prefixes_narrow_further() {
        let mut c = claims(&["shop"]);
        c.types = Some(vec!["PageViewed".into()]);
        c.streams = Some(vec!["visit-shop:".into()]);
        let scope = c.scope();
        assert!(scope.permits_parts("shop", "PageViewed", "visit-shop:s1"));
        assert!(!scope.permits_parts("shop", "FormSubmitted", "visit-shop:s1"));
        assert!(!scope.permits_parts("shop", "PageViewed", "orders-1"));
        assert!(!scope.permits_parts("blog", "PageViewed", "visit-shop:s1"));
        assert!(Scope::everything().is_everything() && !scope.is_everything());
    }

    #[test]
    fn claims_round_trip_as_json_with_lowercase_actions() {
        let mut c = claims(&["shop"]);
        c.actions = vec![Action::Subscribe, Action::Publish];
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["actions"], serde_json::json!(["subscribe", "publish"]));
        assert!(json.get("types").is_none());
        assert_eq!(serde_json::from_value::<Claims>(json).unwrap(), c);
    }
}
