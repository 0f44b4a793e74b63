//! Web origins as a site registers them and as browsers send them in `Origin`.
//!
//! A registered origin is compared with the request's `Origin` header as text, so both are brought
//! to one form first: `scheme://host[:port]` with the scheme `http` or `https`, the host in lower
//! case, the port left out when it is the scheme's default (80, 443) and no path. That is how
//! browsers serialize an origin, so what a person types (`HTTPS://Example.com:443/`) matches what
//! the browser sends (`https://example.com`). `*` stands for any origin and is only ever taken when
//! written out on its own: it is a deliberate choice to let every website send as a site.

use std::fmt;

/// Longest origin accepted, in bytes: a full DNS name plus scheme and port.
const MAX_ORIGIN: usize = 300;

/// An allowed origin: one exact origin, or any.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Origin {
    /// `*`: requests from every origin are accepted (and any `Origin` value, even `null`).
    Any,
    /// One origin in its normalized form, e.g. `https://shop.example.com`.
    Exact(String),
}

/// Why a text is not an origin. The message shows the offending text and the expected form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{text:?} is not an origin: {reason} (expected scheme://host[:port], e.g. https://example.com or http://localhost:3000, or * for any origin)"
)]
pub struct OriginError {
    /// The text, clipped.
    pub text: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl Origin {
    /// Parses and normalizes an origin (surrounding whitespace is ignored).
    pub fn parse(text: &str) -> Result<Origin, OriginError> {
        let text = text.trim();
        let fail = |reason| Err(OriginError { text: text.chars().take(80).collect(), reason });
        if text == "*" {
            return Ok(Origin::Any);
        }
        if text.len() > MAX_ORIGIN {
            return fail("it is too long");
        }
        if !text.is_ascii() {
            return fail("write an international domain name in its ASCII (xn--) form");
        }
        let Some((scheme, rest)) = text.split_once("://") else {
            return fail("the scheme is missing");
        };
        let scheme = scheme.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "https" => 443,
            "http" => 80,
            _ => return fail("the scheme must be http or https"),
        };
        // A lone trailing slash is what copying a URL from the address bar gives: tolerated.
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#']) {
            return fail("an origin has no path, query or fragment");
        }
        if authority.contains('@') {
            return fail("an origin has no user name or password");
        }
        if authority.contains('*') {
            return fail("wildcards inside a host name are not supported; list each origin, or use * alone");
        }
        let (host, port) = if let Some(inner) = authority.strip_prefix('[') {
            let Some((address, after)) = inner.split_once(']') else {
                return fail("an IPv6 address needs its closing ]");
            };
            if address.is_empty() || !address.bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.') {
                return fail("the IPv6 address is not valid");
            }
            let port = match after {
                "" => None,
                _ => match after.strip_prefix(':') {
                    Some(port) => Some(port),
                    None => return fail("only :port may follow an IPv6 address"),
                },
            };
            (format!("[{}]", address.to_ascii_lowercase()), port)
        } else {
            let (host, port) = match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            };
            if host.is_empty() {
                return fail("the host is missing");
            }
            let valid = host.len() <= 253
                && host.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                });
            if !valid {
                return fail("the host name is not valid");
            }
            (host.to_ascii_lowercase(), port)
        };
        let port = match port {
            None => None,
            Some(digits) => match digits.parse::<u16>() {
                Ok(port) if port > 0 && digits.bytes().all(|b| b.is_ascii_digit()) => Some(port),
                _ => return fail("the port must be a number from 1 to 65535"),
            },
        };
        Ok(Origin::Exact(match port {
            Some(port) if port != default_port => format!("{scheme}://{host}:{port}"),
            _ => format!("{scheme}://{host}"),
        }))
    }

    /// Whether a request whose `Origin` header is `header` comes from this origin. `header` is
    /// normalized the same way; one that is not an origin (`null`, from sandboxed frames and
    /// `file:` pages) matches only [`Origin::Any`].
    pub fn allows(&self, header: &str) -> bool {
        match self {
            Origin::Any => true,
            Origin::Exact(origin) => Origin::parse(header).is_ok_and(|h| h == Origin::Exact(origin.clone())),
        }
    }

    /// The normalized text, as stored in `flightdeck.sites.origins`.
    pub fn as_str(&self) -> &str {
        match self {
            Origin::Any => "*",
            Origin::Exact(origin) => origin,
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Origin {
    type Err = OriginError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Origin::parse(text)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn norm(text: &str) -> String {
        Origin::parse(text).unwrap().to_string()
    }

    #[test]
    fn origins_are_normalized_as_browsers_serialize_them() {
        assert_eq!(norm("https://example.com"), "https://example.com");
        assert_eq!(norm("  HTTPS://Shop.Example.COM:443/ "), "https://shop.example.com");
        assert_eq!(norm("http://example.com:80"), "http://example.com");
        assert_eq!(norm("http://localhost:3000"), "http://localhost:3000");
        assert_eq!(norm("https://example.com:8443"), "https://example.com:8443");
        assert_eq!(norm("http://127.0.0.1:41234"), "http://127.0.0.1:41234");
        assert_eq!(norm("http://[::1]:8080"), "http://[::1]:8080");
        assert_eq!(norm("https://[2001:DB8::1]:443"), "https://[2001:db8::1]");
        assert_eq!(norm("https://xn--bcher-kva.example"), "https://xn--bcher-kva.example");
        assert_eq!(Origin::parse("*").unwrap(), Origin::Any);
    }

    #[test]
    fn what_is_not_an_origin_says_why() {
        for (text, words) in [
            ("example.com", "the scheme is missing"),
            ("ftp://example.com", "http or https"),
            ("https://example.com/shop", "no path"),
            ("https://example.com?x=1", "no path, query"),
            ("https://user@example.com", "no user name"),
            ("https://*.example.com", "wildcards"),
            ("https://", "the host is missing"),
            ("https://exa mple.com", "host name is not valid"),
            ("https://example..com", "host name is not valid"),
            ("https://example.com:0", "port"),
            ("https://example.com:99999", "port"),
            ("https://example.com:+80", "port"),
            ("https://bücher.example", "xn--"),
            ("https://[::1", "closing ]"),
            ("null", "the scheme is missing"),
        ] {
            let err = Origin::parse(text).unwrap_err().to_string();
            assert!(err.contains(words), "{text}: {err}");
            assert!(err.contains("e.g. https://example.com"), "{text}: {err}");
        }
    }

    #[test]
    fn matching_a_request_header() {
        let shop = Origin::parse("https://shop.example").unwrap();
        assert!(shop.allows("https://shop.example"));
        assert!(shop.allows("https://shop.example:443"));
        assert!(!shop.allows("http://shop.example"));
        assert!(!shop.allows("https://shop.example.evil.test"));
        assert!(!shop.allows("null"));
        assert!(Origin::Any.allows("null"));
        assert!(Origin::Any.allows("https://anything.test"));
    }
}
