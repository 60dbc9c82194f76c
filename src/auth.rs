//! JWT on /ws and HTTP publish: the keys (an HMAC secret file, PEM public keys, a JWKS
//! file; read at start and again by [`Verifier::reload`]), verifying a token's signature and
//! claims, and the topic permissions its claims grant, interned so that connections holding
//! the same pattern sets share one allocation.
//!
//! Claims read (besides `exp`, `nbf`, `iss`, `aud`): `sub`, the subject; `subscribe` and
//! `publish`, arrays of topic patterns in `client_publish`'s language (an exact name, or a
//! prefix ending in `*`). A claim that is absent grants nothing.

use std::collections::hash_map::RandomState;
use std::collections::HashSet;
use std::hash::BuildHasher;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm, PublicKeyUse};
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
    Critical,
}

impl AuthError {
    /// The one-line reason sent in the 401 body.
    pub const fn reason(self) -> &'static str {
        match self {
            Self::Missing => "missing token",
            Self::Malformed => "malformed token",
            Self::Algorithm => "token algorithm not accepted",
            Self::Signature => "bad token signature",
            Self::NoExpiry => "token has no exp, or one that is not a date",
            Self::Expired => "token expired",
            Self::NotYetValid => "token not yet valid",
            Self::Issuer => "wrong token issuer",
            Self::Audience => "wrong token audience",
            Self::Critical => "token header has critical extensions (crit) not understood",
        }
    }
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for AuthError {}

/// The token's header (its first segment, decoded) as a JSON object, for the parameters
/// jsonwebtoken's `Header` cannot show: `crit`, which it drops, and an `alg` it does not
/// know, which it refuses as if the token were malformed.
fn raw_header(token: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    use base64::Engine;
    let segment = token.split('.').next().unwrap_or_default();
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(segment)
        .ok()?;
    serde_json::from_slice(&json).ok()
}

/// Why jsonwebtoken could not read a token's header: an `alg` none of our keys can have
/// (`none`, RFC 7518 §3.6's unsecured JWS, or a name it does not know) is the algorithm's
/// fault, not the token's form.
fn header_error(token: &str) -> AuthError {
    let alg = raw_header(token).and_then(|h| h.get("alg")?.as_str().map(str::to_owned));
    match alg {
        Some(alg) if alg.parse::<Algorithm>().is_err() => AuthError::Algorithm,
        _ => AuthError::Malformed,
    }
}

/// The claims wsgate reads; others are ignored.
#[derive(serde::Deserialize)]
struct RawClaims {
    sub: Option<String>,
    /// NumericDates (RFC 7519 §2): seconds, a fraction allowed.
    exp: Option<f64>,
    nbf: Option<f64>,
    #[serde(default)]
    subscribe: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
}

/// One verification key: the algorithms it verifies and, from a JWKS, its `kid`.
struct Key {
    algorithms: &'static [Algorithm],
    key: DecodingKey,
    id: Option<String>,
}

/// Where the keys come from (the `auth` settings), kept for [`Verifier::reload`].
#[derive(Debug, Default)]
struct KeyFiles {
    secret: Option<String>,
    public: Vec<String>,
    jwks: Option<String>,
}

/// The configured keys and claim checks, shared by every reactor.
pub struct Verifier {
    files: KeyFiles,
    /// Replaced whole by a reload; a verify holds the lock only to clone the `Arc`.
    keys: RwLock<Arc<[Key]>>,
    issuer: Option<String>,
    audience: Option<String>,
    interned: Mutex<HashSet<Arc<Permissions>>>,
    /// Keys the subject hash in `Claims`.
    subjects: RandomState,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("files", &self.files)
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
        let files = KeyFiles {
            secret: auth.jwt_secret_file.clone(),
            public: auth.jwt_public_keys.clone(),
            jwks: auth.jwt_jwks_file.clone(),
        };
        let keys = load(&files)?;
        Ok((!keys.is_empty()).then(|| Self {
            files,
            keys: RwLock::new(keys.into()),
            issuer: auth.jwt_issuer.clone(),
            audience: auth.jwt_audience.clone(),
            interned: Mutex::new(HashSet::new()),
            subjects: RandomState::new(),
        }))
    }

    /// Reads the key files again and, if they all still hold valid keys, verifies with
    /// those from now on (tokens already accepted stay accepted). On an error the keys in
    /// use are kept. Returns how many keys are loaded. Called on SIGHUP (and by the reload
    /// plumbing when a file in [`Verifier::files`] changes).
    pub fn reload(&self) -> Result<usize, ConfigError> {
        // Not empty: a Verifier has key files, and each one yields a key or an error.
        let keys = load(&self.files)?;
        let n = keys.len();
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = keys.into();
        Ok(n)
    }

    /// The key files a reload reads.
    pub fn files(&self) -> Vec<PathBuf> {
        let files = &self.files;
        let all = files.secret.iter().chain(&files.public).chain(&files.jwks);
        all.map(PathBuf::from).collect()
    }

    /// Checks `token`'s signature with a configured key of its algorithm, then `exp` and
    /// `nbf` against `now` (seconds since the Unix epoch), and `iss`/`aud` when configured.
    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| header_error(token))?;
        if raw_header(token).is_some_and(|header| header.contains_key("crit")) {
            // RFC 7515 §4.1.11: a recipient that does not understand every extension
            // `crit` lists must refuse the token; we understand none (jsonwebtoken's
            // header drops the parameter, so it is looked for here).
            return Err(AuthError::Critical);
        }
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
        let keys = Arc::clone(&self.keys.read().unwrap_or_else(|e| e.into_inner()));
        // A token naming a `kid` meets only the key of that id (and keys without one).
        let candidates = keys.iter().filter(|k| {
            k.algorithms.contains(&header.alg)
                && (header.kid.is_none() || k.id.is_none() || k.id == header.kid)
        });
        for Key { key, .. } in candidates {
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
        // Whole seconds (saturating; a negative date is 0): exp a fraction early, nbf a
        // fraction late, both within the leeway.
        let expires = claims.exp.ok_or(AuthError::NoExpiry)? as u64;
        if expires.saturating_add(LEEWAY_SECS) <= now {
            return Err(AuthError::Expired);
        }
        if claims
            .nbf
            .is_some_and(|nbf| nbf as u64 > now.saturating_add(LEEWAY_SECS))
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

/// Reads every configured key file.
fn load(files: &KeyFiles) -> Result<Vec<Key>, ConfigError> {
    let mut keys = Vec::new();
    if let Some(path) = &files.secret {
        let bad = |reason: String| ConfigError::invalid("jwt_secret_file", reason);
        let text = std::fs::read(path).map_err(|e| bad(format!("{path}: {e}")))?;
        let secret = text.trim_ascii_end();
        if secret.is_empty() {
            return Err(bad(format!("{path}: the secret is empty")));
        }
        keys.push(Key {
            algorithms: HMAC,
            key: DecodingKey::from_secret(secret),
            id: None,
        });
    }
    for path in &files.public {
        let bad = |reason: String| ConfigError::invalid("jwt_public_keys", reason);
        let pem = std::fs::read(path).map_err(|e| bad(format!("{path}: {e}")))?;
        let (algorithms, key) = public_key(&pem)
            .ok_or_else(|| bad(format!("{path}: not a PEM RSA, EC or Ed25519 public key")))?;
        keys.push(Key {
            algorithms,
            key,
            id: None,
        });
    }
    if let Some(path) = &files.jwks {
        let bad = |reason: String| ConfigError::invalid("jwt_jwks_file", reason);
        let text = std::fs::read(path).map_err(|e| bad(format!("{path}: {e}")))?;
        let set: JwkSet = serde_json::from_slice(&text).map_err(|e| bad(format!("{path}: {e}")))?;
        let before = keys.len();
        for jwk in &set.keys {
            // Encryption keys and algorithms we do not verify are skipped.
            if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
                continue;
            }
            let Some(algorithms) = jwk_algorithms(&jwk.algorithm, jwk.common.key_algorithm) else {
                continue;
            };
            let key = DecodingKey::from_jwk(jwk).map_err(|e| bad(format!("{path}: {e}")))?;
            keys.push(Key {
                algorithms,
                key,
                id: jwk.common.key_id.clone(),
            });
        }
        if keys.len() == before {
            return Err(bad(format!(
                "{path}: no RSA, P-256, Ed25519 or HMAC signing key"
            )));
        }
    }
    Ok(keys)
}

/// The algorithms a JWK verifies: its `alg` when given (and one we take), else what its
/// type implies, as for PEM keys.
fn jwk_algorithms(
    params: &AlgorithmParameters,
    alg: Option<KeyAlgorithm>,
) -> Option<&'static [Algorithm]> {
    let implied: &'static [Algorithm] = match params {
        AlgorithmParameters::RSA(_) => &[Algorithm::RS256],
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
            &[Algorithm::ES256]
        }
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            &[Algorithm::EdDSA]
        }
        AlgorithmParameters::OctetKey(_) => HMAC,
        _ => return None,
    };
    match alg {
        None => Some(implied),
        Some(alg) => {
            let alg = alg.to_string().parse::<Algorithm>().ok()?;
            let i = implied.iter().position(|a| *a == alg)?;
            Some(&implied[i..=i])
        }
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
        let key = Key {
            algorithms: HMAC,
            key: DecodingKey::from_secret(SECRET),
            id: None,
        };
        Verifier {
            files: KeyFiles::default(),
            keys: RwLock::new(vec![key].into()),
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
        // NumericDates may have a fraction (RFC 7519 §2).
        let t = token(serde_json::json!({"exp": 1000.5, "nbf": 500.25}));
        let claims = v.verify(&t, 1000 + LEEWAY_SECS - 1).unwrap();
        assert_eq!(claims.expires, 1000);
        assert_eq!(
            v.verify(&t, 1000 + LEEWAY_SECS).unwrap_err(),
            AuthError::Expired
        );
        assert_eq!(
            v.verify(&t, 500 - LEEWAY_SECS - 1).unwrap_err(),
            AuthError::NotYetValid
        );
    }

    /// RFC 7515 §4.1.11: a `crit` extension the recipient does not understand (wsgate
    /// understands none) makes the token invalid, however well signed.
    #[test]
    fn a_header_with_crit_is_refused() {
        use base64::Engine;
        let v = verifier();
        let claims = serde_json::json!({"exp": 1000});
        assert!(v.verify(&token(claims.clone()), 0).is_ok());
        let header = br#"{"alg":"HS256","typ":"JWT","crit":["exp"],"exp":1}"#;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let input = format!(
            "{}.{}",
            b64.encode(header),
            b64.encode(serde_json::to_vec(&claims).unwrap())
        );
        let key = EncodingKey::from_secret(SECRET);
        let signature = jsonwebtoken::crypto::sign(input.as_bytes(), &key, Algorithm::HS256);
        let t = format!("{input}.{}", signature.unwrap());
        assert_eq!(v.verify(&t, 0).unwrap_err(), AuthError::Critical);
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

    fn b64(bytes: &[u8]) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    fn write(dir: &std::path::Path, name: &str, text: &str) -> String {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    }

    fn sign_with(alg: Algorithm, kid: Option<&str>, key: &EncodingKey) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, &serde_json::json!({"exp": 10}), key).unwrap()
    }

    /// A JWKS as identity providers publish it: keys picked by `kid`, encryption and
    /// unsupported keys skipped, `alg` narrowing what a key verifies.
    #[test]
    fn jwks_keys_are_picked_by_kid() {
        let dir = std::env::temp_dir().join(format!("wsgate-jwks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let es = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let point = es.public_key_raw(); // 0x04 || x || y
        let jwks = serde_json::json!({"keys": [
            {"kty": "EC", "crv": "P-256", "kid": "ec", "use": "sig",
             "x": b64(&point[1..33]), "y": b64(&point[33..])},
            {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "alg": "EdDSA", "x": b64(ed.public_key_raw())},
            {"kty": "oct", "kid": "hs", "alg": "HS384", "k": b64(SECRET)},
            {"kty": "oct", "kid": "enc", "use": "enc", "k": b64(b"an encryption key")},
            {"kty": "EC", "crv": "P-521", "kid": "p521", "x": "AA", "y": "AA"},
        ]});
        let path = write(&dir, "jwks.json", &jwks.to_string());
        let auth = Auth {
            jwt_jwks_file: Some(path.clone()),
            ..Auth::default()
        };
        let v = Verifier::from_config(&auth).unwrap().expect("keys");
        assert_eq!(v.files(), [PathBuf::from(&path)]);
        let es_key = EncodingKey::from_ec_pem(es.serialize_pem().as_bytes()).unwrap();
        let ed_key = EncodingKey::from_ed_pem(ed.serialize_pem().as_bytes()).unwrap();
        let hs_key = EncodingKey::from_secret(SECRET);
        assert!(v
            .verify(&sign_with(Algorithm::ES256, Some("ec"), &es_key), 0)
            .is_ok());
        assert!(v
            .verify(&sign_with(Algorithm::ES256, None, &es_key), 0)
            .is_ok());
        assert!(v
            .verify(&sign_with(Algorithm::EdDSA, Some("ed"), &ed_key), 0)
            .is_ok());
        assert!(v
            .verify(&sign_with(Algorithm::HS384, Some("hs"), &hs_key), 0)
            .is_ok());
        let refused = |alg, kid, key| v.verify(&sign_with(alg, kid, key), 0).unwrap_err();
        assert_eq!(
            refused(Algorithm::ES256, Some("ed"), &es_key),
            AuthError::Algorithm
        );
        assert_eq!(
            refused(Algorithm::ES256, Some("nope"), &es_key),
            AuthError::Algorithm
        );
        assert_eq!(
            refused(Algorithm::HS256, Some("hs"), &hs_key),
            AuthError::Algorithm,
            "alg: HS384 only"
        );
        let enc = EncodingKey::from_secret(b"an encryption key");
        assert_eq!(
            refused(Algorithm::HS256, Some("enc"), &enc),
            AuthError::Algorithm
        );
        // Bad files are configuration errors naming the file.
        for bad in [
            "{",
            r#"{"keys": []}"#,
            r#"{"keys": [{"kty": "oct", "use": "enc", "k": "AA"}]}"#,
        ] {
            let path = write(&dir, "bad.json", bad);
            let auth = Auth {
                jwt_jwks_file: Some(path.clone()),
                ..Auth::default()
            };
            let err = Verifier::from_config(&auth).unwrap_err().to_string();
            assert!(
                err.contains("jwt_jwks_file") && err.contains(&path),
                "{err}"
            );
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A reload takes the files' new keys; a bad file keeps the keys in use.
    #[test]
    fn reload_rotates_keys_and_keeps_them_on_error() {
        let dir = std::env::temp_dir().join(format!("wsgate-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = write(&dir, "secret", "first secret\n");
        let auth = Auth {
            jwt_secret_file: Some(path.clone()),
            ..Auth::default()
        };
        let v = Verifier::from_config(&auth).unwrap().expect("keys");
        let first = EncodingKey::from_secret(b"first secret");
        let first = sign_with(Algorithm::HS256, None, &first);
        let second = EncodingKey::from_secret(b"second secret");
        let second = sign_with(Algorithm::HS256, None, &second);
        assert!(v.verify(&first, 0).is_ok());
        assert_eq!(v.verify(&second, 0).unwrap_err(), AuthError::Signature);
        write(&dir, "secret", "second secret");
        assert_eq!(v.reload().unwrap(), 1);
        assert_eq!(v.verify(&first, 0).unwrap_err(), AuthError::Signature);
        assert!(v.verify(&second, 0).is_ok());
        write(&dir, "secret", "\n");
        let err = v.reload().unwrap_err().to_string();
        assert!(err.contains("the secret is empty"), "{err}");
        std::fs::remove_file(&path).unwrap();
        assert!(v.reload().is_err());
        assert!(v.verify(&second, 0).is_ok(), "the keys in use stay");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
