//! Section `cluster`: several wsgate nodes sharing topics through NATS: the servers, the
//! subject prefix, credentials, TLS to NATS, the node's name, and how a disconnected bridge
//! shows. Off unless `cluster_urls` names a server (no bridge thread then).

use std::time::Duration;

use super::setting::{positive, section, within, Finish};
use super::ConfigError;
use crate::cluster::subject;

section! {
    /// Several nodes sharing topics through NATS (off without `cluster_urls`).
    pub struct Cluster (prefix "cluster_") {
        /// NATS servers to connect to (comma-separated `nats://host:port` or
        /// `tls://host:port`; several for a NATS cluster, tried in turn); none: this node
        /// runs alone.
        #[arg(value_name = "LIST", env = "WSGATE_CLUSTER_URLS")]
        urls: Vec<String> = "";
        /// Subject prefix: topic `t` travels on subject `<prefix>.t` (see docs/cluster.md
        /// for the escaping); nodes sharing topics need the same prefix.
        #[arg(value_name = "SUBJECT")]
        subject_prefix: String = "wsgate", check subject::check_prefix;
        /// This node's name, shown to NATS (connection name); none: `wsgate-<host>-<pid>`.
        name: Option<String> = "";
        /// Token for NATS (`authorization { token }`).
        #[arg(env = "WSGATE_CLUSTER_TOKEN")]
        token: Option<String> = "";
        /// User name for NATS (with `cluster_password`).
        user: Option<String> = "";
        /// Password for NATS (with `cluster_user`).
        #[arg(env = "WSGATE_CLUSTER_PASSWORD")]
        password: Option<String> = "";
        /// NATS credentials file (JWT and NKey seed, as `nsc` writes it).
        #[arg(value_name = "FILE")]
        creds_file: Option<String> = "";
        /// Require TLS to NATS (also implied by a `tls://` URL).
        tls: bool = "false";
        /// PEM file of the CAs that sign the NATS servers' certificates; none: the system's.
        #[arg(value_name = "FILE")]
        tls_ca_file: Option<String> = "";
        /// PEM client certificate for NATS (with `cluster_tls_key_file`).
        #[arg(value_name = "FILE")]
        tls_cert_file: Option<String> = "";
        /// PEM private key of `cluster_tls_cert_file`.
        #[arg(value_name = "FILE")]
        tls_key_file: Option<String> = "";
        /// How long a subscribe's `ok` waits for NATS to confirm the node's interest before
        /// it is sent anyway (counted); while NATS is disconnected it is sent at once.
        #[arg(value_name = "DURATION")]
        confirm_timeout: Duration = "2s", check positive;
        /// Whether a disconnected bridge makes `/healthz` answer 503.
        required: bool = "false";
        /// Publishes queued for NATS before further ones are dropped (counted).
        outbox_capacity: usize = "65536", check within(16, 1 << 24);
    }
}

impl Cluster {
    /// Whether this node talks to NATS at all.
    pub fn enabled(&self) -> bool {
        !self.urls.is_empty()
    }
}

impl Finish for Cluster {
    fn finish(self) -> Result<Self, ConfigError> {
        for url in &self.urls {
            let bad =
                |reason: String| ConfigError::invalid("cluster_urls", format!("`{url}`: {reason}"));
            let addr = url
                .parse::<async_nats::ServerAddr>()
                .map_err(|e| bad(e.to_string()))?;
            if addr.host().is_empty() {
                return Err(bad("no host".into()));
            }
        }
        let secrets = [
            self.token.is_some(),
            self.user.is_some() || self.password.is_some(),
            self.creds_file.is_some(),
        ];
        if secrets.iter().filter(|&&given| given).count() > 1 {
            return Err(ConfigError::invalid(
                "cluster_token",
                "give one of a token, a user and password, or a creds file",
            ));
        }
        if self.user.is_some() != self.password.is_some() {
            return Err(ConfigError::invalid(
                "cluster_user",
                "cluster_user and cluster_password go together",
            ));
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return Err(ConfigError::invalid(
                "cluster_tls_cert_file",
                "cluster_tls_cert_file and cluster_tls_key_file go together",
            ));
        }
        // Read now, so that a missing or unreadable file stops the start with its setting
        // named (a missing creds file left the node running alone, "disconnected",
        // losing every cross-node message).
        let files = [
            ("cluster_creds_file", &self.creds_file),
            ("cluster_tls_ca_file", &self.tls_ca_file),
            ("cluster_tls_cert_file", &self.tls_cert_file),
            ("cluster_tls_key_file", &self.tls_key_file),
        ];
        // Only where they will be used: a shared config may name them with clustering off.
        for (setting, file) in files.into_iter().filter(|_| self.enabled()) {
            if let Some(path) = file {
                match std::fs::read(path) {
                    Ok(bytes) if !bytes.is_empty() => {}
                    Ok(_) => return Err(ConfigError::invalid(setting, format!("{path}: empty"))),
                    Err(e) => return Err(ConfigError::invalid(setting, format!("{path}: {e}"))),
                }
            }
        }
        if let Some(name) = &self.name {
            if name.contains(char::is_control) {
                return Err(ConfigError::invalid(
                    "cluster_name",
                    "must not hold control characters",
                ));
            }
        }
        Ok(self)
    }
}
