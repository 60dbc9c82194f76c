//! Section `tls`: wss:// on a listener of its own beside the plain one, its certificates
//! (several, chosen by SNI) and the lowest TLS version. The certificates are read here, at
//! start: a missing, unreadable or mismatched file is a settings error naming it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use super::setting::{enum_value, section, within, Finish, Value};
use super::ConfigError;
use crate::transport::tls::{Acceptor, CertFiles, MinVersion};

/// The lowest TLS version accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TlsVersion {
    #[value(name = "1.2")]
    Tls12,
    #[value(name = "1.3")]
    Tls13,
}

enum_value!(TlsVersion);

section! {
    /// wss://: the TLS listener, its certificates, the lowest version.
    pub struct Tls (prefix "tls_") {
        /// Address of the TLS listener (wss://, https://), beside the plain one; none: no
        /// TLS. Both may run: e.g. TLS for clients, plain on a private address for
        /// /metrics and backend publish.
        #[arg(value_name = "ADDR:PORT")]
        listen: Option<String> = "";
        /// Certificates as CERT_PEM:KEY_PEM pairs, comma-separated: a PEM chain (leaf
        /// first) and its PEM key each. With several, the SNI name picks; the first is the
        /// default. Reloaded on SIGHUP and when the files change.
        #[arg(value_name = "LIST")]
        certs: Vec<String> = "";
        /// Lowest TLS version accepted: 1.2 or 1.3.
        min_version: TlsVersion = "1.2";
        /// TLS handshakes a reactor advances per loop turn at most; the rest wait a turn,
        /// so that a flood of handshakes does not starve established connections.
        #[arg(hide = true)]
        handshakes_per_turn: usize = "32", check within(1, 4096);
    }
    derived {
        /// Where the TLS listener binds, when there is one.
        addr: Option<SocketAddr>,
        /// The loaded certificates and rustls settings; none without a TLS listener.
        acceptor: Option<Arc<Acceptor>>,
    }
}

impl Finish for Tls {
    fn finish(mut self) -> Result<Self, ConfigError> {
        let Some(listen) = &self.listen else {
            if !self.certs.is_empty() {
                return Err(ConfigError::invalid(
                    "tls_listen",
                    "tls_certs needs tls_listen",
                ));
            }
            return Ok(self);
        };
        self.addr = Some(
            <SocketAddr as Value>::parse(listen)
                .map_err(|reason| ConfigError::invalid("tls_listen", reason))?,
        );
        if self.certs.is_empty() {
            return Err(ConfigError::invalid(
                "tls_certs",
                "tls_listen needs at least one CERT_PEM:KEY_PEM pair",
            ));
        }
        let files = self
            .certs
            .iter()
            .map(|pair| match pair.rsplit_once(':') {
                Some((cert, key)) if !cert.is_empty() && !key.is_empty() => Ok(CertFiles {
                    cert: PathBuf::from(cert),
                    key: PathBuf::from(key),
                }),
                _ => Err(ConfigError::invalid(
                    "tls_certs",
                    format!("`{pair}` is not CERT_PEM:KEY_PEM"),
                )),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let min = match self.min_version {
            TlsVersion::Tls12 => MinVersion::Tls12,
            TlsVersion::Tls13 => MinVersion::Tls13,
        };
        let acceptor = Acceptor::new(files, min)
            .map_err(|reason| ConfigError::invalid("tls_certs", reason))?;
        self.acceptor = Some(Arc::new(acceptor));
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use crate::config::RawConfig;

    #[test]
    fn certificates_are_a_toml_array_of_pairs_and_are_read_at_start() {
        let text = "tls_listen = \"127.0.0.1:0\"\ntls_certs = [\"/nonexistent/a.pem:/nonexistent/a.key\"]\n";
        let err = RawConfig::parse_toml(text).unwrap().validate().unwrap_err();
        let err = err.to_string();
        assert!(
            err.contains("`tls_certs`") && err.contains("/nonexistent/a.pem"),
            "{err}"
        );
        let text = "tls-listen = \"nowhere\"\ntls-certs = [\"a:b\"]\n";
        let err = RawConfig::parse_toml(text).unwrap().validate().unwrap_err();
        assert!(err.to_string().contains("`tls_listen`"), "{err}");
        let text = "tls_min_version = \"1.1\"\n";
        assert!(RawConfig::parse_toml(text).is_err());
        let config = RawConfig::parse_toml("tls_min_version = \"1.3\"\n").unwrap();
        assert!(
            config.validate().unwrap().tls.acceptor.is_none(),
            "no listener, no TLS"
        );
    }
}
