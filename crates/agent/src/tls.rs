//! TLS for the admin API (`node.admin_tls_cert`, `node.admin_tls_key`, and optionally
//! `node.admin_client_ca` to require client certificates), with the shared `understudy-tls`.
//!
//! One port serves both: a connection whose first byte starts a TLS handshake gets TLS; any
//! other is plain HTTP, accepted only from this host (the peer's address is the listener's own
//! address, which the kernel never accepts from outside: a packet from another machine with a
//! local source address is dropped as martian). So the node's service, which talks to its
//! agent with the plain HTTP of `understudy-sdk`, works unchanged, while every other machine
//! must speak TLS — and present a certificate signed by `node.admin_client_ca` when it is set.

use std::path::Path;
use std::time::Duration;

use tokio::net::TcpStream;
use understudy_tls::{Pem, TlsServer};

pub use understudy_tls::{Refused, Stream as AdminStream, TlsError as TlsConfigError};

/// The admin API's TLS settings, loaded and checked at start.
#[derive(Debug, Clone)]
pub struct AdminTls(TlsServer);

impl AdminTls {
    /// Loads the certificate chain, its key and the optional client CA, and checks that they
    /// make a usable server configuration (the key matches the certificate).
    pub fn load(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<Self, TlsConfigError> {
        TlsServer::load(
            Pem::new("node.admin_tls_cert", cert),
            Pem::new("node.admin_tls_key", key),
            client_ca.map(|c| Pem::new("node.admin_client_ca", c)),
        )
        .map(AdminTls)
    }

    /// `node.admin_client_ca`, when client certificates are required.
    pub fn client_ca(&self) -> Option<&Path> {
        self.0.client_ca.as_deref()
    }
}

/// Decides what `stream` speaks and completes the TLS handshake, all within `timeout`: plain
/// HTTP only from this host.
pub async fn accept(
    tls: Option<&AdminTls>,
    stream: TcpStream,
    timeout: Duration,
) -> Result<AdminStream, Refused> {
    let Some(tls) = tls else {
        return Ok(AdminStream::Plain(stream));
    };
    let local =
        matches!((stream.peer_addr(), stream.local_addr()), (Ok(p), Ok(l)) if p.ip() == l.ip());
    tls.0.accept(stream, timeout, local).await
}
