//! Which events are published for real-time delivery at all (filtering at source), and on which
//! named channel each event type travels (multi-channel), as configured for the server.
//!
//! Channels are logical: every event still travels through the one pump and the one NOTIFY
//! channel; a subscriber that names channels receives only event types mapped to them. Unpublished
//! types are never broadcast (no fan-out cost) and never replayed to subscribers; they stay
//! readable by id and by stream.

use std::collections::{HashMap, HashSet};

/// The channel of every event type not mapped elsewhere.
pub const DEFAULT_CHANNEL: &str = "default";

/// The routing configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routing {
    channels: HashMap<String, String>,
    published: Option<HashSet<String>>,
}

/// A routing option that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoutingError {
    /// Not `Type=channel`.
    #[error("channel mapping {0:?} is not of the form EventType=channel")]
    Mapping(String),
}

impl Routing {
    /// Every type published, all on [`DEFAULT_CHANNEL`].
    pub fn new() -> Self {
        Routing::default()
    }

    /// Maps event types to channels from `Type=channel` entries.
    pub fn with_channels<'a>(mut self, entries: impl IntoIterator<Item = &'a str>) -> Result<Self, RoutingError> {
        for entry in entries {
            let (ty, channel) = entry.split_once('=').ok_or_else(|| RoutingError::Mapping(entry.to_string()))?;
            let (ty, channel) = (ty.trim(), channel.trim());
            if ty.is_empty() || channel.is_empty() {
                return Err(RoutingError::Mapping(entry.to_string()));
            }
            self.channels.insert(ty.to_string(), channel.to_string());
        }
        Ok(self)
    }

    /// Publishes only these event types (all, if never called).
    pub fn publish_only<'a>(mut self, types: impl IntoIterator<Item = &'a str>) -> Self {
        self.published = Some(types.into_iter().map(str::to_string).collect());
        self
    }

    /// Whether events of this type are delivered in real time at all.
    pub fn is_published(&self, event_type: &str) -> bool {
        self.published.as_ref().is_none_or(|p| p.contains(event_type))
    }

    /// The channel this event type travels on.
    pub fn channel_of(&self, event_type: &str) -> &str {
        self.channels.get(event_type).map_or(DEFAULT_CHANNEL, String::as_str)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn routes_as_configured() {
        let r = Routing::new().with_channels(["PageViewed=traffic", " FormSubmitted = forms "]).unwrap();
        assert_eq!(r.channel_of("PageViewed"), "traffic");
        assert_eq!(r.channel_of("FormSubmitted"), "forms");
        assert_eq!(r.channel_of("Other"), DEFAULT_CHANNEL);
        assert!(r.is_published("Anything"));
        let r = r.publish_only(["PageViewed"]);
        assert!(r.is_published("PageViewed") && !r.is_published("FormSubmitted"));
        for bad in ["PageViewed", "=x", "T="] {
            assert!(Routing::new().with_channels([bad]).is_err(), "{bad}");
        }
    }
}
