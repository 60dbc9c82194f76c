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
        /// Origins a browser may connect from (comma-separated, e.g. `https://app.example`);
        /// none listed allows any. A client that sends no Origin is not a browser and is not
        /// checked.
        #[arg(value_name = "LIST")]
        allowed_origins: Option<Vec<String>> = "", check origins;
        /// Bearer token required by POST /publish; none means no token is needed.
        #[arg(env = "WSGATE_PUBLISH_TOKEN", hide_env_values = true)]
        publish_token: Option<String> = "";
    }
}

impl Finish for Http {}

/// Check: every subprotocol is an HTTP token (RFC 9110 §5.6.2).
/// Each an origin as a browser sends it (RFC 6454 §6.2): `scheme://host[:port]`, nothing
/// after; one that is not could never match.
fn origins(list: &Option<Vec<String>>) -> Result<(), String> {
    let bad = |o: &String| {
        if o == "null" {
            // An opaque origin (a sandboxed frame, a file:// page): allowing it is the
            // operator's call.
            return false;
        }
        let Some((scheme, host)) = o.split_once("://") else {
            return true;
        };
        scheme.is_empty()
            || !scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
            || host.is_empty()
            || !host
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b"/?#".contains(&b))
    };
    match list.iter().flatten().find(|o| bad(o)) {
        Some(o) => Err(format!(
            "{o:?} is not an origin like https://app.example:8443"
        )),
        None => Ok(()),
    }
}

fn http_tokens(list: &[String]) -> Result<(), String> {
    match list.iter().find(|p| {
        !p.bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
    }) {
        Some(p) => Err(format!("{p:?} is not an HTTP token")),
        None => Ok(()),
    }
}
