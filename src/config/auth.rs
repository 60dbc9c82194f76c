//! Section `auth`: who may open /ws: JWT verification keys, issuer and audience, and
//! whether a token is required. The keys are read here at start (and again on SIGHUP, by
//! `auth::Verifier::reload`).

use std::sync::Arc;

use super::setting::{section, Finish};
use super::ConfigError;
use crate::auth::Verifier;

section! {
    /// JWT on /ws: keys, issuer, audience, and whether a token is required.
    pub struct Auth (prefix "") {
        /// Refuse /ws upgrades without a valid token (401); without it, a token that is
        /// given is still checked, and no token means no per-topic restriction.
        auth_required: bool = "false";
        /// File holding the HMAC secret for HS256/384/512 tokens (a trailing newline is
        /// ignored).
        #[arg(value_name = "FILE")]
        jwt_secret_file: Option<String> = "";
        /// PEM public key files (comma-separated) for RS256, ES256 (P-256) or EdDSA
        /// (Ed25519) tokens; the key type sets the algorithm.
        #[arg(value_name = "LIST")]
        jwt_public_keys: Vec<String> = "";
        /// JWKS file (RFC 7517, as an identity provider publishes it): its RSA (RS256),
        /// P-256 (ES256), Ed25519 (EdDSA) and `oct` (HS*) keys; a token's `kid` picks
        /// among them.
        #[arg(value_name = "FILE")]
        jwt_jwks_file: Option<String> = "";
        /// Required `iss` claim; none: not checked.
        jwt_issuer: Option<String> = "";
        /// Required `aud` claim (one of the token's audiences); none: not checked.
        jwt_audience: Option<String> = "";
    }
    derived {
        /// The keys, loaded; none when no key is configured.
        verifier: Option<Arc<Verifier>>,
    }
}

impl Finish for Auth {
    fn finish(mut self) -> Result<Self, ConfigError> {
        self.verifier = Verifier::from_config(&self)?.map(Arc::new);
        if self.auth_required && self.verifier.is_none() {
            return Err(ConfigError::invalid(
                "auth_required",
                "needs jwt_secret_file, jwt_public_keys or jwt_jwks_file",
            ));
        }
        Ok(self)
    }
}
