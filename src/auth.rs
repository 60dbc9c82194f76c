//! JWT on /ws: the keys (read once at start), verifying a token's signature and claims, and
//! the topic permissions its claims grant, interned so that connections holding the same
//! pattern sets share one allocation.
//!
//! Claims read (besides `exp`, `nbf`, `iss`, `aud`): `sub`, the subject; `subscribe` and
//! `publish`, arrays of topic patterns in `client_publish`'s language (an exact name, or a
//! prefix ending in `*`). A claim that is absent grants nothing.

use std::collections::hash_map::RandomState;
use std::collections::HashSet;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::broadcast;
use crate::config::auth::Auth;
use crate::config::ConfigError;

/// Seconds of clock difference tolerated between the token's issuer and this server.
pub const LEEWAY_SECS: u64 = 30;

/// Distinct permission sets kept for sharing; past this, new sets are not interned.
const INTERNED_MAX: usize = 4096;

/// The topics a token lets its connection subscribe and publish to.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Permissions {
    pub subscribe: Box<[String]>,
    pub publish: Box<[String]>,
}

impl Permissions {
    pub fn may_subscribe(&self, topic: &str) -> bool {
        broadcast::topic_allowed(topic, &self.subscribe)
    }

    pub fn may_publish(&self, topic: &str) -> bool {
        broadcast::topic_allowed(topic, &self.publish)
    }
}

/// A verified token's claims.
#[derive(Debug)]
pub struct Claims {
    /// A keyed 32-bit hash of `sub` (absent or not): enough to tell that a refresh names
    /// the same subject as the token it replaces (the connection's owner holds both, so a
    /// collision grants nothing it could not get with a new connection).
    pub subject: u32,
    pub expires: u64,
    pub permissions: Arc<Permissions>,
}

/// Why a token was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthError {
    Missing,
    Malformed,
    Algorithm,
    Signature,
    NoExpiry,
    Expired,
    NotYetValid,
    Issuer,
    Audience,
}

impl AuthError {
    /// The one-line reason sent in the 401 body.
    pub const fn reason(self) -> &'static str {
        match self {
            Self::Missing => "missing token",
            Self::Malformed => "malformed token",
            Self::Algorithm => "token algorithm not accepted",
            Self::Signature => "bad token signature",
            Self::NoExpiry => "token has no exp",
            Self::Expired => "token expired",
            Self::NotYetValid => "token not yet valid",
            Self::Issuer => "wrong token issuer",
            Self::Audience => "wrong token audience",
        }
    }
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for AuthError {}

/// The claims wsgate reads; others are ignored.
#[derive(serde::Deserialize)]
struct RawClaims {
    sub: Option<String>,
    exp: Option<u64>,
    nbf: Option<u64>,
    #[serde(default)]
    subscribe: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
}

/// The configured keys and claim checks, shared by every reactor.
pub struct Verifier {
    /// Each key with the algorithms it verifies.
    keys: Vec<(&'static [Algorithm], DecodingKey)>,
    issuer: Option<String>,
    audience: Option<String>,
    interned: Mutex<HashSet<Arc<Permissions>>>,
    /// Keys the subject hash in `Claims`.
    subjects: RandomState,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("keys", &self.keys.len())
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

const HMAC: &[Algorithm] = &[Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];

impl Verifier {
    /// Reads the configured keys; `None` when there are none. A missing, unreadable or
    /// invalid key file is a configuration error naming the file and why.
    pub fn from_config(auth: &Auth) -> Result<Option<Self>, ConfigError> {
        let mut keys = Vec::new();
        if let Some(path) = &auth.jwt_secret_file {
            let bad = |reason: String| ConfigError::invalid("jwt_secret_file", reason);
            let text = std::fs::read(path).map_err(|e| bad(format!("{path}: {e}")))?;
            let secret = text.trim_ascii_end();
            if secret.is_empty() {
                return Err(bad(format!("{path}: the secret is empty")));
            }
            keys.push((HMAC, DecodingKey::from_secret(secret)));
        }
        for path in &auth.jwt_public_keys {
            let bad = |reason: String| ConfigError::invalid("jwt_public_keys", reason);
            let pem = std::fs::read(path).map_err(|e| bad(format!("{path}: {e}")))?;
            keys.push(
                public_key(&pem).ok_or_else(|| {
                    bad(format!("{path}: not a PEM RSA, EC or Ed25519 public key"))
                })?,
            );
        }
        Ok((!keys.is_empty()).then(|| Self {
            keys,
            issuer: auth.jwt_issuer.clone(),
            audience: auth.jwt_audience.clone(),
            interned: Mutex::new(HashSet::new()),
            subjects: RandomState::new(),
        }))
    }

    /// Checks `token`'s signature with a configured key of its algorithm, then `exp` and
    /// `nbf` against `now` (seconds since the Unix epoch), and `iss`/`aud` when configured.
    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        let mut validation = Validation::new(header.alg);
        // exp and nbf are checked below, against `now` rather than the clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        let mut required = vec!["exp"];
        validation.validate_aud = self.audience.is_some();
        if let Some(aud) = &self.audience {
            validation.set_audience(&[aud]);
            required.push("aud");
        }
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        let mut result = Err(AuthError::Algorithm);
        for (_, key) in self
            .keys
            .iter()
            .filter(|(algs, _)| algs.contains(&header.alg))
        {
            result = jsonwebtoken::decode::<RawClaims>(token, key, &validation)
                .map(|data| data.claims)
                .map_err(|e| match e.kind() {
                    ErrorKind::InvalidSignature => AuthError::Signature,
                    ErrorKind::InvalidIssuer => AuthError::Issuer,
                    ErrorKind::InvalidAudience => AuthError::Audience,
                    ErrorKind::MissingRequiredClaim(c) if c == "exp" => AuthError::NoExpiry,
                    ErrorKind::MissingRequiredClaim(c) if c == "iss" => AuthError::Issuer,
                    ErrorKind::MissingRequiredClaim(c) if c == "aud" => AuthError::Audience,
                    _ => AuthError::Malformed,
                });
            if result.is_ok() {
                break;
            }
        }
        let claims = result?;
        let expires = claims.exp.ok_or(AuthError::NoExpiry)?;
        if expires.saturating_add(LEEWAY_SECS) <= now {
            return Err(AuthError::Expired);
        }
        if claims
            .nbf
            .is_some_and(|nbf| nbf > now.saturating_add(LEEWAY_SECS))
        {
            return Err(AuthError::NotYetValid);
        }
        Ok(Claims {
            subject: self.subjects.hash_one(claims.sub) as u32,
            expires,
            permissions: self.intern(Permissions {
                subscribe: claims.subscribe.into(),
                publish: claims.publish.into(),
            }),
        })
    }

    /// The shared copy of `permissions`.
    fn intern(&self, permissions: Permissions) -> Arc<Permissions> {
        let Ok(mut interned) = self.interned.lock() else {
            return Arc::new(permissions);
        };
        if let Some(shared) = interned.get(&permissions) {
            return Arc::clone(shared);
        }
        let shared = Arc::new(permissions);
        if interned.len() < INTERNED_MAX {
            interned.insert(Arc::clone(&shared));
        }
        shared
    }
}

/// A PEM public key with the algorithm its type implies.
fn public_key(pem: &[u8]) -> Option<(&'static [Algorithm], DecodingKey)> {
    if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        return Some((&[Algorithm::RS256], key));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(pem) {
        return Some((&[Algorithm::ES256], key));
    }
    DecodingKey::from_ed_pem(pem)
        .ok()
        .map(|key| (&[Algorithm::EdDSA][..], key))
}

/// Seconds since the Unix epoch, for `Verifier::verify`.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{EncodingKey, Header};

    use super::*;

    const SECRET: &[u8] = b"unit-test secret";

    fn verifier() -> Verifier {
        Verifier {
            keys: vec![(HMAC, DecodingKey::from_secret(SECRET))],
            issuer: None,
            audience: None,
            interned: Mutex::new(HashSet::new()),
            subjects: RandomState::new(),
        }
    }

    fn token(claims: serde_json::Value) -> String {
        let key = EncodingKey::from_secret(SECRET);
        jsonwebtoken::encode(&Header::default(), &claims, &key).unwrap()
    }

    #[test]
    fn exp_and_nbf_are_checked_against_now_with_the_leeway() {
        let v = verifier();
        let t = token(serde_json::json!({"exp": 1000, "nbf": 500}));
        assert!(v.verify(&t, 1000 + LEEWAY_SECS - 1).is_ok());
        assert_eq!(
            v.verify(&t, 1000 + LEEWAY_SECS).unwrap_err(),
            AuthError::Expired
        );
        assert!(v.verify(&t, 500 - LEEWAY_SECS).is_ok());
        assert_eq!(
            v.verify(&t, 500 - LEEWAY_SECS - 1).unwrap_err(),
            AuthError::NotYetValid
        );
        let t = token(serde_json::json!({"exp": "soon"}));
        assert_eq!(v.verify(&t, 0).unwrap_err(), AuthError::Malformed);
    }

    #[test]
    fn subjects_compare_by_hash() {
        let v = verifier();
        let subject = |sub: serde_json::Value| {
            let mut claims = serde_json::json!({"exp": 10});
            if !sub.is_null() {
                claims["sub"] = sub;
            }
            v.verify(&token(claims), 0).unwrap().subject
        };
        assert_eq!(subject("alice".into()), subject("alice".into()));
        assert_ne!(subject("alice".into()), subject("bob".into()));
        assert_ne!(subject("alice".into()), subject(serde_json::Value::Null));
        assert_eq!(
            subject(serde_json::Value::Null),
            subject(serde_json::Value::Null)
        );
    }

    /// Connections with the same pattern sets share one allocation; each holds a pointer.
    #[test]
    fn permissions_are_interned() {
        let v = verifier();
        let claims = |publish: &str| serde_json::json!({"exp": 10, "subscribe": ["a.*", "b"], "publish": [publish]});
        let a = v.verify(&token(claims("a.*")), 0).unwrap().permissions;
        let b = v.verify(&token(claims("a.*")), 0).unwrap().permissions;
        let c = v.verify(&token(claims("b")), 0).unwrap().permissions;
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c));
        assert!(a.may_subscribe("a.x") && a.may_subscribe("b") && !a.may_subscribe("c"));
        assert!(a.may_publish("a.x") && !a.may_publish("b") && c.may_publish("b"));
        assert_eq!(std::mem::size_of::<Option<Arc<Permissions>>>(), 8);
        // Shared: 16 bytes of counts, these 32, 24 per pattern and its text.
        assert_eq!(std::mem::size_of::<Permissions>(), 32);
    }
}
