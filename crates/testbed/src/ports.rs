//! Free loopback ports.
//!
//! A port is found by binding port 0. The kernel readily hands a just-released port out again,
//! so ports that must differ are chosen while all of them are held ([`reserve`]), and a port is
//! released only just before the process that binds it starts.

use std::net::{SocketAddr, TcpListener};

/// `n` bound loopback listeners, each on its own port: keep them while choosing other ports,
/// drop each just before its address is used.
pub fn reserve(n: usize) -> std::io::Result<Vec<TcpListener>> {
    (0..n).map(|_| TcpListener::bind("127.0.0.1:0")).collect()
}

/// `n` distinct free loopback addresses (released: see the module's note).
pub fn free_addrs(n: usize) -> std::io::Result<Vec<SocketAddr>> {
    reserve(n)?.iter().map(TcpListener::local_addr).collect()
}

/// One free loopback address as `IP:PORT`; panics when none can be bound (for tests).
pub fn free_addr() -> String {
    match free_addrs(1) {
        Ok(a) => a[0].to_string(),
        Err(e) => panic!("cannot bind 127.0.0.1:0: {e}"),
    }
}
