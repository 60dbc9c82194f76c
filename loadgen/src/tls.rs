//! wss://: a client socket that is plain TCP or TLS (rustls) behind the same `Read`,
//! `Write` and mio `Source`, so the engine drives both alike.
//!
//! Edge-triggered polling needs one rule kept: a read shorter than the caller's buffer means
//! the socket is drained. So a TLS read pulls records until the socket would block (or the
//! buffer is full) before it returns. Writes are taken whole into rustls; what the socket
//! does not take at once goes out at the next event (`flush_tls`).

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use mio::event::Source;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore};

/// How to reach a wss:// server.
#[derive(Clone, Debug)]
pub struct TlsClient {
    pub config: Arc<ClientConfig>,
    pub name: ServerName<'static>,
}

impl TlsClient {
    /// Trusts the CA certificates in `ca` (PEM), or with `insecure` any certificate.
    pub fn new(host: &str, ca: Option<&Path>, insecure: bool) -> Result<Self> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("TLS versions")?;
        let mut config = if insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth()
        } else {
            let mut roots = RootCertStore::empty();
            let ca = ca.context("wss:// needs --ca FILE (or --insecure)")?;
            let certs = CertificateDer::pem_file_iter(ca)
                .and_then(|c| c.collect::<Result<Vec<_>, _>>())
                .with_context(|| format!("reading {}", ca.display()))?;
            for cert in certs {
                roots.add(cert).context("a CA certificate")?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        // Each connection is a new client: connect mode measures full handshakes.
        config.resumption = rustls::client::Resumption::disabled();
        let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_string()).context("server name")?;
        Ok(Self {
            config: Arc::new(config),
            name,
        })
    }
}

/// A client socket: plain or TLS.
pub enum Sock {
    Plain(TcpStream),
    Tls(Box<TlsSock>),
}

pub struct TlsSock {
    sock: TcpStream,
    tls: ClientConnection,
    eof: bool,
}

impl Sock {
    pub fn new(sock: TcpStream, tls: Option<&TlsClient>) -> io::Result<Self> {
        Ok(match tls {
            None => Self::Plain(sock),
            Some(c) => Self::Tls(Box::new(TlsSock {
                sock,
                tls: ClientConnection::new(c.config.clone(), c.name.clone())
                    .map_err(io::Error::other)?,
                eof: false,
            })),
        })
    }

    fn tcp(&self) -> &TcpStream {
        match self {
            Self::Plain(s) => s,
            Self::Tls(t) => &t.sock,
        }
    }

    pub fn take_error(&self) -> io::Result<Option<io::Error>> {
        self.tcp().take_error()
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.tcp().peer_addr()
    }

    /// Sends what rustls holds (handshake records, ciphertext the socket did not take).
    pub fn flush_tls(&mut self) -> io::Result<()> {
        match self {
            Self::Plain(_) => Ok(()),
            Self::Tls(t) => t.send_pending(),
        }
    }
}

impl TlsSock {
    fn send_pending(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut self.sock) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl Read for Sock {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let t = match self {
            Self::Plain(s) => return s.read(buf),
            Self::Tls(t) => t,
        };
        let mut n = 0;
        loop {
            match t.tls.reader().read(&mut buf[n..]) {
                // Closed (close_notify): EOF, after what was read first.
                Ok(0) if n < buf.len() => return Ok(n),
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // A FIN without close_notify: the engine sees it as the server closing.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(n),
                Err(e) => return Err(e),
            }
            if n == buf.len() || t.eof {
                return Ok(n);
            }
            match t.tls.read_tls(&mut t.sock) {
                Ok(0) => t.eof = true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return if n > 0 { Ok(n) } else { Err(e) };
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            t.tls.process_new_packets().map_err(io::Error::other)?;
            t.send_pending()?;
        }
    }
}

impl Write for Sock {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Plain(s) => s.write(buf),
            Self::Tls(t) => {
                let n = t.tls.writer().write(buf)?;
                t.send_pending()?;
                Ok(n)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_tls()
    }
}

impl Source for Sock {
    fn register(&mut self, r: &Registry, token: Token, interests: Interest) -> io::Result<()> {
        match self {
            Self::Plain(s) => s.register(r, token, interests),
            Self::Tls(t) => t.sock.register(r, token, interests),
        }
    }

    fn reregister(&mut self, r: &Registry, token: Token, interests: Interest) -> io::Result<()> {
        match self {
            Self::Plain(s) => s.reregister(r, token, interests),
            Self::Tls(t) => t.sock.reregister(r, token, interests),
        }
    }

    fn deregister(&mut self, r: &Registry) -> io::Result<()> {
        match self {
            Self::Plain(s) => s.deregister(r),
            Self::Tls(t) => t.sock.deregister(r),
        }
    }
}

/// `--insecure`: accepts any certificate (signatures are still checked, so the handshake
/// costs the same as a verified one, less the chain walk).
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algs)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
