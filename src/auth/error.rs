//! Why a token or a key is refused. The messages go to clients (over HTTP) and to operators (the
//! CLI), so they say what to do, and never anything about the server's keys.

/// A refused token, or an unusable key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token in the request.
    #[error(
        "this needs a token: send `Authorization: Bearer <token>`, the `flightdeck_session` cookie, or \
         `?access_token=<token>` (make one with `flightdeck token create`)"
    )]
    Missing,
    /// Not a JWT at all, or `alg: none`.
    #[error("the token is not a signed JWT")]
    Malformed,
    /// Signed with an algorithm the server has no key for.
    #[error("the token is signed with an algorithm this server does not accept")]
    Algorithm,
    /// The signature does not match any trusted key.
    #[error("the token's signature does not match this server's keys")]
    Signature,
    /// Past its `exp`.
    #[error("the token has expired: get a fresh one")]
    Expired,
    /// Before its `nbf`.
    #[error("the token is not valid yet")]
    NotYetValid,
    /// The payload is not FlightDeck's claims (no `exp`, no `actions`/`sites`…).
    #[error("the token's claims are not FlightDeck's: it needs exp, actions and sites")]
    Claims,
    /// A single-use token seen before.
    #[error("this link has already been used: make a new one with `flightdeck token create --login`")]
    Used,
    /// A key that cannot be read.
    #[error("unusable key: {0}")]
    BadKey(String),
    /// The secret file cannot be read or written.
    #[error("the token secret at {path}: {message}")]
    SecretFile {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
}
