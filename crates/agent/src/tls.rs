//! TLS for the admin API (`node.admin_tls_cert`, `node.admin_tls_key`, and optionally
//! `node.admin_client_ca` to require client certificates), with rustls.
//!
//! One port serves both: a connection whose first byte starts a TLS handshake gets TLS; any
//! other is plain HTTP, accepted only from this host (the peer's address is the listener's own
//! address, which the kernel never accepts from outside: a packet from another machine with a
//! local source address is dropped as martian). So the node's service, which talks to its
//! agent with the plain HTTP of `understudy-sdk`, works unchanged, while every other machine
//! must speak TLS — and present a certificate signed by `node.admin_client_ca` when it is set.

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// The admin API's TLS settings, loaded and checked at start.
#[derive(Clone)]
pub struct AdminTls {
    /// `node.admin_tls_cert`.
    pub cert: PathBuf,
    /// `node.admin_client_ca`, when client certificates are required.
    pub client_ca: Option<PathBuf>,
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for AdminTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminTls")
            .field("cert", &self.cert)
            .field("client_ca", &self.client_ca)
            .finish_non_exhaustive()
    }
}

/// Why the TLS settings cannot be used; `key` is the configuration key to blame.
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub struct TlsConfigError {
    /// The configuration key.
    pub key: &'static str,
    /// What is wrong.
    pub reason: String,
}

fn err(key: &'static str, reason: impl Into<String>) -> TlsConfigError {
    TlsConfigError {
        key,
        reason: reason.into(),
    }
}

fn read_certs(
    path: &Path,
    key: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let f = std::fs::File::open(path)
        .map_err(|e| err(key, format!("cannot read {}: {e}", path.display())))?;
    let certs = rustls_pemfile::certs(&mut BufReader::new(f))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(key, format!("{} is not PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(err(
            key,
            format!("{} holds no PEM certificate", path.display()),
        ));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsConfigError> {
    const KEY: &str = "node.admin_tls_key";
    let f = std::fs::File::open(path)
        .map_err(|e| err(KEY, format!("cannot read {}: {e}", path.display())))?;
    rustls_pemfile::private_key(&mut BufReader::new(f))
        .map_err(|e| err(KEY, format!("{} is not PEM: {e}", path.display())))?
        .ok_or_else(|| err(KEY, format!("{} holds no PEM private key", path.display())))
}

impl AdminTls {
    /// Loads the certificate chain, its key and the optional client CA, and checks that they
    /// make a usable server configuration (the key matches the certificate).
    pub fn load(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<Self, TlsConfigError> {
        let chain = read_certs(cert, "node.admin_tls_cert")?;
        let private = read_key(key)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| err("node.admin_tls_cert", e.to_string()))?;
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in read_certs(ca, "node.admin_client_ca")? {
                    roots.add(c).map_err(|e| {
                        err("node.admin_client_ca", format!("{}: {e}", ca.display()))
                    })?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .map_err(|e| err("node.admin_client_ca", format!("{}: {e}", ca.display())))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let config = builder.with_single_cert(chain, private).map_err(|e| {
            err(
                "node.admin_tls_key",
                format!("{} does not fit {}: {e}", key.display(), cert.display()),
            )
        })?;
        Ok(AdminTls {
            cert: cert.to_path_buf(),
            client_ca: client_ca.map(Path::to_path_buf),
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }
}

/// A connection of the admin API: TLS, or plain from this host.
pub enum AdminStream {
    /// Plain HTTP (no TLS configured, or a connection from this host).
    Plain(TcpStream),
    /// TLS.
    Tls(Box<TlsStream<TcpStream>>),
}

/// Why a connection was closed before any request was read.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// Plain HTTP from another machine.
    #[error("plain HTTP from another host; this admin API speaks TLS")]
    PlainFromAfar,
    /// Nothing arrived within the header timeout.
    #[error("no TLS handshake or request within the header timeout")]
    Slow,
    /// The handshake failed (no or a bad client certificate, no shared protocol, not TLS).
    #[error("TLS handshake failed: {0}")]
    Handshake(std::io::Error),
}

/// Decides what `stream` speaks and completes the TLS handshake, all within `timeout`.
pub async fn accept(
    tls: Option<&AdminTls>,
    stream: TcpStream,
    timeout: Duration,
) -> Result<AdminStream, Refused> {
    let Some(tls) = tls else {
        return Ok(AdminStream::Plain(stream));
    };
    let started = tokio::time::Instant::now();
    let mut first = [0u8; 1];
    match tokio::time::timeout(timeout, stream.peek(&mut first)).await {
        Err(_) => return Err(Refused::Slow),
        Ok(Err(e)) => return Err(Refused::Handshake(e)),
        Ok(Ok(_)) => {}
    }
    // 0x16: a TLS record of type handshake, the first byte of every ClientHello.
    if first[0] != 0x16 {
        let local =
            matches!((stream.peer_addr(), stream.local_addr()), (Ok(p), Ok(l)) if p.ip() == l.ip());
        return if local {
            Ok(AdminStream::Plain(stream))
        } else {
            Err(Refused::PlainFromAfar)
        };
    }
    let left = timeout.saturating_sub(started.elapsed());
    match tokio::time::timeout(left, tls.acceptor.accept(stream)).await {
        Err(_) => Err(Refused::Slow),
        Ok(Err(e)) => Err(Refused::Handshake(e)),
        Ok(Ok(s)) => Ok(AdminStream::Tls(Box::new(s))),
    }
}

impl AsyncRead for AdminStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            AdminStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            AdminStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for AdminStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            AdminStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            AdminStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            AdminStream::Plain(s) => Pin::new(s).poll_flush(cx),
            AdminStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            AdminStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            AdminStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
