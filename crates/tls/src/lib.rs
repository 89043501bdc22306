//! TLS for every connection understudy accepts or makes — the agent's admin API, FIX sessions
//! (the gateway's acceptor, every initiator) and the price feed — with rustls and its `ring`
//! provider.
//!
//! * [`TlsServer`]: a certificate chain and its key, and optionally a CA whose certificates
//!   clients must present; [`TlsServer::accept`] peeks at the first byte so a plain-text
//!   client is named as such instead of failing with a handshake error.
//! * [`TlsClient`]: the CA that signed the server's certificate, the name to check it against
//!   (by default the address connected to) and an optional client certificate.
//! * [`Stream`]: a connection that is plain or TLS, used the same way by the callers.
//!
//! Everything is loaded and checked when a configuration is read (files readable, PEM, the key
//! fits the certificate), so a warm standby finds a bad file when it starts, not at failover.
//! Errors name the configuration key that holds the path ([`Pem::key`]).
#![forbid(unsafe_code)]

use std::io::BufReader;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// A PEM file named in a configuration: the key it was given under (for errors) and its path.
#[derive(Debug, Clone, Copy)]
pub struct Pem<'a> {
    /// The configuration key or flag, e.g. `gateway.tls_cert` or `--tls-ca`.
    pub key: &'a str,
    /// The file.
    pub path: &'a Path,
}

impl<'a> Pem<'a> {
    /// `path`, given as `key`.
    pub fn new(key: &'a str, path: &'a Path) -> Self {
        Pem { key, path }
    }

    /// `path` given as `key`, if a path is given.
    pub fn opt(key: &'a str, path: Option<&'a Path>) -> Option<Self> {
        path.map(|path| Pem { key, path })
    }
}

/// Why TLS settings cannot be used: the configuration key to blame and what is wrong.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct TlsError {
    /// The configuration key or flag.
    pub key: String,
    /// What is wrong, naming the file.
    pub reason: String,
}

fn err(f: Pem<'_>, reason: impl std::fmt::Display) -> TlsError {
    TlsError {
        key: f.key.to_owned(),
        reason: format!("{}: {reason}", f.path.display()),
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates in `f` (a chain, or CA certificates), at least one.
pub fn read_certs(f: Pem<'_>) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file = std::fs::File::open(f.path).map_err(|e| err(f, format!("cannot read it: {e}")))?;
    let certs = rustls_pemfile::certs(&mut BufReader::new(file))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(f, format!("not PEM: {e}")))?;
    if certs.is_empty() {
        return Err(err(f, "holds no PEM certificate"));
    }
    Ok(certs)
}

/// The private key in `f` (PKCS#8, PKCS#1 or SEC1; other PEM items in the file are skipped, so
/// a certificate and its key may share one file).
pub fn read_key(f: Pem<'_>) -> Result<PrivateKeyDer<'static>, TlsError> {
    let file = std::fs::File::open(f.path).map_err(|e| err(f, format!("cannot read it: {e}")))?;
    rustls_pemfile::private_key(&mut BufReader::new(file))
        .map_err(|e| err(f, format!("not PEM: {e}")))?
        .ok_or_else(|| err(f, "holds no PEM private key"))
}

fn roots(ca: Pem<'_>) -> Result<Arc<rustls::RootCertStore>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in read_certs(ca)? {
        roots
            .add(c)
            .map_err(|e| err(ca, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(Arc::new(roots))
}

/// The server side: our certificate, and the CA whose client certificates are required, if any.
#[derive(Clone)]
pub struct TlsServer {
    /// The certificate chain's file.
    pub cert: PathBuf,
    /// The CA of required client certificates' file, if client certificates are required.
    pub client_ca: Option<PathBuf>,
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for TlsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsServer")
            .field("cert", &self.cert)
            .field("client_ca", &self.client_ca)
            .finish_non_exhaustive()
    }
}

/// Why an accepted connection was closed before it carried anything.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// Its first byte does not start a TLS handshake: a plain-text client on a TLS port.
    #[error("not TLS: a plain-text client on a port that speaks TLS (first byte {0:#04x})")]
    NotTls(u8),
    /// The peer closed the connection without sending anything (a port probe, such as a TCP
    /// health check): nothing to refuse, and nothing worth a warning.
    #[error("closed before sending anything")]
    Closed,
    /// The handshake did not complete within the time given.
    #[error("no TLS handshake within {0:?}")]
    Slow(Duration),
    /// The handshake failed (no or a bad client certificate, no shared protocol version, …).
    #[error("TLS handshake failed: {0}")]
    Handshake(std::io::Error),
}

/// The first byte of every TLS ClientHello: a record of type handshake.
const TLS_HANDSHAKE: u8 = 0x16;

impl TlsServer {
    /// Loads the chain in `cert`, its `key` and the optional `client_ca`, and checks that they
    /// make a usable server (the key fits the certificate).
    pub fn load(cert: Pem<'_>, key: Pem<'_>, client_ca: Option<Pem<'_>>) -> Result<Self, TlsError> {
        let chain = read_certs(cert)?;
        let private = read_key(key)?;
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| err(cert, e))?;
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    roots(ca)?,
                    provider(),
                )
                .build()
                .map_err(|e| err(ca, e))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let config = builder
            .with_single_cert(chain, private)
            .map_err(|e| err(key, format!("does not fit {}: {e}", cert.path.display())))?;
        Ok(TlsServer {
            cert: cert.path.to_path_buf(),
            client_ca: client_ca.map(|c| c.path.to_path_buf()),
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// The server of a configuration section whose keys are all optional: `cert` and `key`
    /// both or neither, `client_ca` only with them. `None` when none is given (plain).
    pub fn load_optional(
        cert: Option<Pem<'_>>,
        key: Option<Pem<'_>>,
        client_ca: Option<Pem<'_>>,
    ) -> Result<Option<Self>, TlsError> {
        let missing = |key: &str, reason: String| TlsError {
            key: key.to_owned(),
            reason,
        };
        match (cert, key) {
            (Some(c), Some(k)) => Self::load(c, k, client_ca).map(Some),
            (Some(c), None) => Err(missing(
                &c.key.replace("cert", "key"),
                format!("missing: {} needs its key", c.key),
            )),
            (None, Some(k)) => Err(missing(
                &k.key.replace("key", "cert"),
                format!("missing: {} needs its certificate", k.key),
            )),
            (None, None) => match client_ca {
                Some(ca) => Err(missing(
                    ca.key,
                    "needs a certificate and its key (client certificates are part of TLS)".into(),
                )),
                None => Ok(None),
            },
        }
    }

    /// Completes the handshake on `stream` within `timeout`. A connection whose first byte does
    /// not start a handshake is returned as it is when `allow_plain`, refused otherwise.
    pub async fn accept(
        &self,
        stream: TcpStream,
        timeout: Duration,
        allow_plain: bool,
    ) -> Result<Stream, Refused> {
        let started = tokio::time::Instant::now();
        let mut first = [0u8; 1];
        match tokio::time::timeout(timeout, stream.peek(&mut first)).await {
            Err(_) => return Err(Refused::Slow(timeout)),
            Ok(Err(e)) => return Err(Refused::Handshake(e)),
            Ok(Ok(0)) => return Err(Refused::Closed),
            Ok(Ok(_)) => {}
        }
        if first[0] != TLS_HANDSHAKE {
            return if allow_plain {
                Ok(Stream::Plain(stream))
            } else {
                Err(Refused::NotTls(first[0]))
            };
        }
        let left = timeout.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, self.acceptor.accept(stream)).await {
            Err(_) => Err(Refused::Slow(timeout)),
            Ok(Err(e)) => Err(Refused::Handshake(e)),
            Ok(Ok(s)) => Ok(Stream::Tls(Box::new(s.into()))),
        }
    }
}

/// The client side: whom we trust, the name we expect, and what we present.
#[derive(Clone)]
pub struct TlsClient {
    /// The CA file.
    pub ca: PathBuf,
    server_name: Option<ServerName<'static>>,
    connector: TlsConnector,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient")
            .field("ca", &self.ca)
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl TlsClient {
    /// Trusts the certificates signed by `ca`; checks the server's certificate against
    /// `server_name` (a DNS name or an IP address; `None`: the IP address connected to) and
    /// presents the certificate `cert` with its `key` (which may be the same file) when given.
    pub fn load(
        ca: Pem<'_>,
        server_name: Option<(&str, &str)>,
        client: Option<(Pem<'_>, Pem<'_>)>,
    ) -> Result<Self, TlsError> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| err(ca, e))?
            .with_root_certificates(roots(ca)?);
        let config = match client {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => builder
                .with_client_auth_cert(read_certs(cert)?, read_key(key)?)
                .map_err(|e| err(key, format!("does not fit {}: {e}", cert.path.display())))?,
        };
        let server_name = server_name
            .map(|(key, name)| {
                ServerName::try_from(name.to_owned()).map_err(|_| TlsError {
                    key: key.to_owned(),
                    reason: format!("{name:?} is neither a DNS name nor an IP address"),
                })
            })
            .transpose()?;
        Ok(TlsClient {
            ca: ca.path.to_path_buf(),
            server_name,
            connector: TlsConnector::from(Arc::new(config)),
        })
    }

    /// The client of a configuration section whose keys are all optional: the server name and
    /// the client certificate only with a CA; the client key defaults to the certificate's
    /// file (one PEM file with both). `None` when no CA is given (plain).
    pub fn load_optional(
        ca: Option<Pem<'_>>,
        server_name: Option<(&str, &str)>,
        cert: Option<Pem<'_>>,
        key: Option<Pem<'_>>,
    ) -> Result<Option<Self>, TlsError> {
        let Some(ca) = ca else {
            let stray = server_name
                .map(|(k, _)| k)
                .or(cert.map(|c| c.key))
                .or(key.map(|k| k.key));
            return match stray {
                Some(k) => Err(TlsError {
                    key: k.to_owned(),
                    reason: "needs a CA certificate file to check the server against (TLS)".into(),
                }),
                None => Ok(None),
            };
        };
        let client = match (cert, key) {
            (Some(c), k) => Some((c, k.unwrap_or(Pem::new(c.key, c.path)))),
            (None, Some(k)) => {
                return Err(TlsError {
                    key: k.key.to_owned(),
                    reason: "a client key needs its certificate".into(),
                })
            }
            (None, None) => None,
        };
        Self::load(ca, server_name, client).map(Some)
    }

    /// The handshake on `stream`, connected to `ip`, within `timeout`.
    pub async fn connect(
        &self,
        stream: TcpStream,
        ip: IpAddr,
        timeout: Duration,
    ) -> std::io::Result<Stream> {
        let name = self
            .server_name
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(ip.into()));
        match tokio::time::timeout(timeout, self.connector.connect(name, stream)).await {
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no TLS handshake within {timeout:?}"),
            )),
            Ok(r) => Ok(Stream::Tls(Box::new(r?.into()))),
        }
    }
}

/// A connection, plain or TLS.
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP, either side.
    Tls(Box<tokio_rustls::TlsStream<TcpStream>>),
}

impl Stream {
    /// The TCP socket under it.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.get_ref().0,
        }
    }

    /// True over TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> &Path {
        Path::new(s)
    }

    #[test]
    fn incomplete_settings_name_the_key_to_fix() {
        let none = TlsServer::load_optional(None, None, None).expect("plain");
        assert!(none.is_none());
        let e = TlsServer::load_optional(Some(Pem::new("x.tls_cert", p("c.pem"))), None, None)
            .expect_err("no key");
        assert_eq!(e.key, "x.tls_key");
        let e = TlsServer::load_optional(None, Some(Pem::new("x.tls_key", p("k.pem"))), None)
            .expect_err("no cert");
        assert_eq!(e.key, "x.tls_cert");
        let e = TlsServer::load_optional(None, None, Some(Pem::new("x.tls_client_ca", p("a"))))
            .expect_err("a client CA alone");
        assert_eq!(e.key, "x.tls_client_ca");

        assert!(TlsClient::load_optional(None, None, None, None)
            .expect("plain")
            .is_none());
        let e = TlsClient::load_optional(None, Some(("x.tls_server_name", "h")), None, None)
            .expect_err("a name without a CA");
        assert_eq!(e.key, "x.tls_server_name");
        let e = TlsClient::load_optional(
            Some(Pem::new("x.tls_ca", p("/nonexistent/ca.pem"))),
            None,
            None,
            Some(Pem::new("x.tls_key", p("k.pem"))),
        )
        .expect_err("a key without its certificate");
        assert_eq!(e.key, "x.tls_key");
        let e = TlsClient::load_optional(
            Some(Pem::new("x.tls_ca", p("/nonexistent/ca.pem"))),
            None,
            None,
            None,
        )
        .expect_err("an unreadable CA");
        assert_eq!(e.key, "x.tls_ca");
        assert!(e.reason.contains("cannot read"), "{}", e.reason);
    }

    #[test]
    fn a_file_without_pem_is_refused() {
        let dir = std::env::temp_dir().join(format!("understudy-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let f = dir.join("not.pem");
        std::fs::write(&f, "not a certificate\n").expect("write");
        let e = read_certs(Pem::new("k", &f)).expect_err("no certificate");
        assert!(e.reason.contains("no PEM certificate"), "{}", e.reason);
        let e = read_key(Pem::new("k", &f)).expect_err("no key");
        assert!(e.reason.contains("no PEM private key"), "{}", e.reason);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
