//! Who may read and write what: signed tokens (JWT) and the scopes they carry.
//!
//! FlightDeck is secure by default. `flightdeck serve` generates an HMAC secret on first start
//! (`secret.rs`) and accepts only tokens signed with it or with configured RS256/ES256 public keys
//! (`keys.rs`); each token lists the sites, and optionally the event types and stream prefixes, it
//! covers (`claims.rs`). Switching authentication off takes an explicit flag. The HTTP side (where
//! a token is taken from, the dashboard's login link and cookie, per-route checks) is
//! `src/http/auth.rs`; this module knows nothing about HTTP.

mod claims;
mod error;
mod keys;
pub mod secret;

pub use claims::{Action, Claims, Scope};
pub use error::AuthError;
pub use keys::{Signer, TokenRequest, Verifier};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long the dashboard's session cookie (minted at `/login`) lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// How long a login link printed at start (or by `flightdeck token create --login`) stays usable.
pub const LOGIN_TTL: Duration = Duration::from_secs(3600);

/// Most single-use tokens remembered at once (each is forgotten when it expires anyway).
const MAX_REMEMBERED: usize = 10_000;

/// A server's authentication policy. Cheap to clone; clones share the memory of used login links.
///
/// The default trusts no key, so every request that needs a token is refused: an application that
/// embeds FlightDeck's routes must choose [`Auth::tokens`] or, knowingly, [`Auth::disabled`].
#[derive(Debug, Clone, Default)]
pub struct Auth {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    disabled: bool,
    verifier: Verifier,
    signer: Option<Signer>,
    /// Single-use tokens already redeemed: jti → expiry (seconds since the epoch).
    used: Mutex<HashMap<String, i64>>,
}

impl Auth {
    /// No authentication: every request may read and write everything. For development and for
    /// applications that put FlightDeck behind their own access control.
    pub fn disabled() -> Self {
        Auth { inner: Arc::new(Inner { disabled: true, ..Inner::default() }) }
    }

    /// Accept tokens that `verifier` accepts. With a `signer`, the server can also mint the
    /// dashboard's session cookie when a login link is redeemed.
    pub fn tokens(verifier: Verifier, signer: Option<Signer>) -> Self {
        Auth { inner: Arc::new(Inner { disabled: false, verifier, signer, used: Mutex::default() }) }
    }

    /// Whether authentication is switched off.
    pub fn is_disabled(&self) -> bool {
        self.inner.disabled
    }

    /// The signer the server mints tokens with, if it has one.
    pub fn signer(&self) -> Option<&Signer> {
        self.inner.signer.as_ref()
    }

    /// Checks a token: signature and expiry.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        self.inner.verifier.verify(token)
    }

    /// Redeems a login link's token: valid, made for logging in, and never redeemed before. Returns
    /// its claims; the caller then mints a session with [`Auth::session_for`].
    pub fn redeem_login(&self, token: &str) -> Result<Claims, AuthError> {
        let claims = self.verify(token)?;
        if !claims.allows(Action::Login) {
            return Err(AuthError::Claims);
        }
        let jti = claims.jti.clone().ok_or(AuthError::Claims)?;
        let now = chrono::Utc::now().timestamp();
        let mut used = self.inner.used.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        used.retain(|_, exp| *exp >= now);
        if used.contains_key(&jti) {
            return Err(AuthError::Used);
        }
        if used.len() >= MAX_REMEMBERED {
            // Refusing is safer than forgetting a redeemed link early.
            return Err(AuthError::BadKey("too many login links in use; try again later".into()));
        }
        used.insert(jti, claims.exp);
        Ok(claims)
    }

    /// A session token (read-only, for the dashboard) covering what `login` covered, lasting
    /// [`SESSION_TTL`]. Needs a signer.
    pub fn session_for(&self, login: &Claims) -> Result<String, AuthError> {
        let signer = self.signer().ok_or_else(|| AuthError::BadKey("this server has no signing key".into()))?;
        let request = TokenRequest {
            sites: login.sites.clone(),
            actions: vec![Action::Subscribe],
            types: login.types.clone(),
            streams: login.streams.clone(),
            ttl: SESSION_TTL,
            subject: login.sub.clone().or_else(|| Some("dashboard".into())),
        };
        signer.sign(&request.claims())
    }

    /// A login link's token for every site, lasting [`LOGIN_TTL`]: what `serve` prints at start.
    pub fn login_token(&self) -> Option<String> {
        let request = TokenRequest {
            sites: vec!["*".into()],
            actions: vec![Action::Login],
            types: None,
            streams: None,
            ttl: LOGIN_TTL,
            subject: Some("dashboard".into()),
        };
        self.signer()?.sign(&request.claims()).ok()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn auth() -> Auth {
        Auth::tokens(Verifier::new().with_secret(SECRET), Some(Signer::hs256(SECRET)))
    }

    #[test]
    fn a_login_link_works_once_and_yields_a_read_only_session() {
        let auth = auth();
        let link = auth.login_token().unwrap();
        let login = auth.redeem_login(&link).unwrap();
        assert_eq!(auth.redeem_login(&link), Err(AuthError::Used));
        let session = auth.verify(&auth.session_for(&login).unwrap()).unwrap();
        assert_eq!(session.actions, vec![Action::Subscribe]);
        assert_eq!(session.sites, vec!["*".to_string()]);
        assert!(session.exp > chrono::Utc::now().timestamp() + 3600);
        // A session (or any non-login token) is not a login link.
        let again = auth.session_for(&login).unwrap();
        assert_eq!(auth.redeem_login(&again), Err(AuthError::Claims));
    }

    #[test]
    fn the_default_refuses_everything_and_disabled_says_so() {
        let token = Signer::hs256(SECRET).sign(&auth().verify(&auth().login_token().unwrap()).unwrap()).unwrap();
        assert!(Auth::default().verify(&token).is_err());
        assert!(!Auth::default().is_disabled());
        assert!(Auth::disabled().is_disabled());
    }
}
