//! Checking and issuing tokens: which keys a server trusts, and signing new tokens.
//!
//! A server trusts any number of keys: HMAC secrets (HS256; `flightdeck serve` generates one on
//! first start) and PEM public keys (RS256 for RSA, ES256 for P-256), so tokens can be minted by
//! FlightDeck itself or by another service that holds a private key. The algorithm a token names
//! must be one of the trusted keys' own: a token can never choose its algorithm (`alg: none`, or
//! HS256 signed with a public key as the secret, are refused).

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};

use super::claims::{Action, Claims};
use super::error::AuthError;

/// One trusted verification key.
#[derive(Clone)]
struct TrustedKey {
    algorithm: Algorithm,
    key: DecodingKey,
}

/// The keys a server accepts tokens from.
#[derive(Clone, Default)]
pub struct Verifier {
    keys: Vec<TrustedKey>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let algorithms: Vec<_> = self.keys.iter().map(|k| k.algorithm).collect();
        f.debug_struct("Verifier").field("algorithms", &algorithms).finish()
    }
}

impl Verifier {
    /// Trusts nothing: every token is refused until keys are added.
    pub fn new() -> Self {
        Verifier::default()
    }

    /// Trusts tokens signed with HS256 and `secret`.
    pub fn with_secret(mut self, secret: &[u8]) -> Self {
        self.keys.push(TrustedKey { algorithm: Algorithm::HS256, key: DecodingKey::from_secret(secret) });
        self
    }

    /// Trusts tokens signed by the private half of a PEM public key: RS256 for an RSA key, ES256
    /// for an EC P-256 key.
    pub fn with_public_key_pem(mut self, pem: &[u8]) -> Result<Self, AuthError> {
        let key = if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
            TrustedKey { algorithm: Algorithm::RS256, key }
        } else if let Ok(key) = DecodingKey::from_ec_pem(pem) {
            TrustedKey { algorithm: Algorithm::ES256, key }
        } else {
            return Err(AuthError::BadKey("not a PEM RSA or EC (P-256) public key".into()));
        };
        self.keys.push(key);
        Ok(self)
    }

    /// Whether any key is trusted.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Checks `token`'s signature with a trusted key of the algorithm it names, and its expiry.
    /// Says why a token is refused, without saying anything about the keys.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        let candidates: Vec<&TrustedKey> = self.keys.iter().filter(|k| k.algorithm == header.alg).collect();
        if candidates.is_empty() {
            return Err(AuthError::Algorithm);
        }
        let mut outcome = Err(AuthError::Signature);
        for trusted in candidates {
            let mut validation = Validation::new(trusted.algorithm);
            validation.leeway = 0;
            validation.set_required_spec_claims(&["exp"]);
            match jsonwebtoken::decode::<Claims>(token, &trusted.key, &validation) {
                // `exp` is the first second at which the token is no longer accepted (RFC 7519,
                // 4.1.4); the library's check, in whole seconds, would still accept it during that
                // second.
                Ok(data) if data.claims.exp <= chrono::Utc::now().timestamp() => return Err(AuthError::Expired),
                Ok(data) => return Ok(data.claims),
                Err(err) => {
                    use jsonwebtoken::errors::ErrorKind;
                    let mapped = match err.kind() {
                        ErrorKind::ExpiredSignature => AuthError::Expired,
                        ErrorKind::InvalidSignature => AuthError::Signature,
                        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                        ErrorKind::Json(_) | ErrorKind::MissingRequiredClaim(_) => AuthError::Claims,
                        _ => AuthError::Malformed,
                    };
                    // A signature check that passed but failed on claims is the real answer.
                    if !matches!(mapped, AuthError::Signature) {
                        return Err(mapped);
                    }
                    outcome = Err(mapped);
                }
            }
        }
        outcome
    }
}

/// A key that signs new tokens (`flightdeck token create`, the dashboard's login link and
/// session cookie).
#[derive(Clone)]
pub struct Signer {
    algorithm: Algorithm,
    key: EncodingKey,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("algorithm", &self.algorithm).finish()
    }
}

impl Signer {
    /// Signs with HS256 and `secret`.
    pub fn hs256(secret: &[u8]) -> Self {
        Signer { algorithm: Algorithm::HS256, key: EncodingKey::from_secret(secret) }
    }

    /// Signs with a PEM private key: RS256 for RSA, ES256 for EC P-256.
    pub fn from_private_key_pem(pem: &[u8]) -> Result<Self, AuthError> {
        if let Ok(key) = EncodingKey::from_rsa_pem(pem) {
            Ok(Signer { algorithm: Algorithm::RS256, key })
        } else if let Ok(key) = EncodingKey::from_ec_pem(pem) {
            Ok(Signer { algorithm: Algorithm::ES256, key })
        } else {
            Err(AuthError::BadKey("not a PEM RSA or EC (P-256, PKCS#8) private key".into()))
        }
    }

    /// The algorithm this signer uses (`HS256`, `RS256` or `ES256`).
    pub fn algorithm(&self) -> &'static str {
        match self.algorithm {
            Algorithm::RS256 => "RS256",
            Algorithm::ES256 => "ES256",
            _ => "HS256",
        }
    }

    /// Signs `claims` into a compact JWT.
    pub fn sign(&self, claims: &Claims) -> Result<String, AuthError> {
        jsonwebtoken::encode(&Header::new(self.algorithm), claims, &self.key)
            .map_err(|e| AuthError::BadKey(format!("cannot sign: {e}")))
    }
}

/// What to put in a new token (see [`TokenRequest::claims`]).
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// Sites (`*` for all).
    pub sites: Vec<String>,
    /// Allowed actions.
    pub actions: Vec<Action>,
    /// Only these event types, if any.
    pub types: Option<Vec<String>>,
    /// Only streams with these prefixes, if any.
    pub streams: Option<Vec<String>>,
    /// Lifetime.
    pub ttl: std::time::Duration,
    /// Who it is for.
    pub subject: Option<String>,
}

impl TokenRequest {
    /// The claims, issued now, with a fresh random `jti`.
    pub fn claims(&self) -> Claims {
        let now = chrono::Utc::now().timestamp();
        let ttl = i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX / 2);
        Claims {
            sub: self.subject.clone(),
            iat: now,
            exp: now.saturating_add(ttl.max(1)),
            jti: Some(format!("{:032x}", rand::random::<u128>())),
            actions: self.actions.clone(),
            sites: self.sites.clone(),
            types: self.types.clone(),
            streams: self.streams.clone(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn request() -> TokenRequest {
        TokenRequest {
            sites: vec!["shop".into()],
            actions: vec![Action::Subscribe],
            types: None,
            streams: None,
            ttl: Duration::from_secs(60),
            subject: Some("test".into()),
        }
    }

    #[test]
    fn a_token_signed_with_the_secret_verifies_and_keeps_its_claims() {
        let signer = Signer::hs256(b"0123456789abcdef0123456789abcdef");
        let claims = request().claims();
        let token = signer.sign(&claims).unwrap();
        let verifier = Verifier::new().with_secret(b"0123456789abcdef0123456789abcdef");
        assert_eq!(verifier.verify(&token).unwrap(), claims);
    }

    #[test]
    fn wrong_key_expired_none_and_garbage_are_refused() {
        let verifier = Verifier::new().with_secret(b"the right secret, long enough...");
        let wrong = Signer::hs256(b"another secret, just as long....").sign(&request().claims()).unwrap();
        assert_eq!(verifier.verify(&wrong), Err(AuthError::Signature));

        let mut old = request().claims();
        old.exp = chrono::Utc::now().timestamp() - 5;
        let expired = Signer::hs256(b"the right secret, long enough...").sign(&old).unwrap();
        assert_eq!(verifier.verify(&expired), Err(AuthError::Expired));
        // Not accepted at its expiry second either.
        old.exp = chrono::Utc::now().timestamp();
        let at_expiry = Signer::hs256(b"the right secret, long enough...").sign(&old).unwrap();
        assert_eq!(verifier.verify(&at_expiry), Err(AuthError::Expired));

        // alg "none": header {"alg":"none","typ":"JWT"}, the claims, and no signature.
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let none = format!(
            "{}.{}.",
            b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
            b64.encode(serde_json::to_vec(&request().claims()).unwrap())
        );
        assert!(matches!(verifier.verify(&none), Err(AuthError::Malformed | AuthError::Algorithm)));
        assert_eq!(verifier.verify("not.a.token"), Err(AuthError::Malformed));
        assert_eq!(verifier.verify(""), Err(AuthError::Malformed));
        assert_eq!(Verifier::new().verify(&wrong), Err(AuthError::Algorithm), "no keys: nothing passes");
    }

    #[test]
    fn an_hs256_token_is_not_accepted_by_a_public_key_server() {
        // The classic confusion: HS256 signed with the public key's bytes as the secret.
        let public = include_bytes!("../../tests/fixtures/auth/rsa-public.pem");
        let verifier = Verifier::new().with_public_key_pem(public).unwrap();
        let forged = Signer::hs256(public).sign(&request().claims()).unwrap();
        assert_eq!(verifier.verify(&forged), Err(AuthError::Algorithm));
    }

    #[test]
    fn rs256_and_es256_keys_sign_and_verify() {
        for (private, public) in [
            (
                &include_bytes!("../../tests/fixtures/auth/rsa-private.pem")[..],
                &include_bytes!("../../tests/fixtures/auth/rsa-public.pem")[..],
            ),
            (
                &include_bytes!("../../tests/fixtures/auth/ec-private.pem")[..],
                &include_bytes!("../../tests/fixtures/auth/ec-public.pem")[..],
            ),
        ] {
            let signer = Signer::from_private_key_pem(private).unwrap();
            let claims = request().claims();
            let token = signer.sign(&claims).unwrap();
            let verifier = Verifier::new().with_secret(b"an unrelated secret").with_public_key_pem(public).unwrap();
            assert_eq!(verifier.verify(&token).unwrap(), claims, "{}", signer.algorithm());
        }
    }
}
