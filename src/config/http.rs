//! Section `http`: what the HTTP request phase serves and whom it lets upgrade or publish.

use super::setting::{section, Finish};

section! {
    /// The HTTP request phase: endpoints, upgrade policy, publish token.
    pub struct Http (prefix "") {
        /// Serve the /echo endpoint.
        echo: bool = "true";
        /// Subprotocols the server speaks, in preference order (comma-separated).
        #[arg(value_name = "LIST")]
        subprotocols: Vec<String> = "", check http_tokens;
        /// Origins allowed to connect (comma-separated, e.g. `https://app.example`); none
        /// listed allows any.
        #[arg(value_name = "LIST")]
        allowed_origins: Option<Vec<String>> = "";
        /// Bearer token required by POST /publish; none means no token is needed.
        #[arg(env = "WSGATE_PUBLISH_TOKEN", hide_env_values = true)]
        publish_token: Option<String> = "";
    }
}

impl Finish for Http {}

/// Check: every subprotocol is an HTTP token (RFC 9110 §5.6.2).
fn http_tokens(list: &[String]) -> Result<(), String> {
    match list.iter().find(|p| {
        !p.bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
    }) {
        Some(p) => Err(format!("{p:?} is not an HTTP token")),
        None => Ok(()),
    }
}
