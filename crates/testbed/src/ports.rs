//! Free loopback ports.
//!
//! A port chosen here is released before the process it is for binds it, and in that window
//! another process must not take it. Ports found by binding port 0 lose that race now and then:
//! the kernel hands the same range out to every `bind(0)` and every outgoing connection (a
//! simulator of a test running in parallel, a client's local port), and a just-released port is
//! as likely as any. So ports come from a sequence *below* the kernel's ephemeral range, which
//! neither draws from: each process walks it from its own starting point (from its pid) and
//! never hands a port out twice, so tests running in parallel in one process never share one
//! either. A port in use is skipped (bound to check). Where the ephemeral range leaves no room
//! below it, ports come from `bind(0)` as before.
//!
//! Ports that must differ are still chosen while all of them are held ([`reserve`]), and a port
//! is released only just before the process that binds it starts.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// The lowest port of the sequence; the highest is just below the ephemeral range.
const LOWEST: u32 = 10_000;
/// The least room below the ephemeral range worth a sequence.
const MIN_SPAN: u32 = 2_000;

/// How many ports this process has handed out (the offset into its sequence).
static HANDED_OUT: AtomicU32 = AtomicU32::new(0);

/// The first port of the kernel's ephemeral range, 32768 when it cannot be read.
fn ephemeral_low() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// This process's sequence, worked out once: its span above [`LOWEST`] and where in it the
/// process starts; `None` where the ephemeral range leaves no room for one.
fn sequence() -> Option<(u32, u32)> {
    static SEQUENCE: OnceLock<Option<(u32, u32)>> = OnceLock::new();
    *SEQUENCE.get_or_init(|| {
        let top = ephemeral_low().min(u32::from(u16::MAX) + 1);
        let span = top.checked_sub(LOWEST).filter(|s| *s >= MIN_SPAN)?;
        Some((span, std::process::id().wrapping_mul(7_919) % span))
    })
}

/// One loopback listener on a port of this process's sequence, or on port 0 where there is
/// no room for one.
fn bind_next() -> std::io::Result<TcpListener> {
    let Some((span, start)) = sequence() else {
        return TcpListener::bind((Ipv4Addr::LOCALHOST, 0));
    };
    let mut last = None;
    for _ in 0..span {
        let i = HANDED_OUT.fetch_add(1, Ordering::Relaxed);
        let port = LOWEST + start.wrapping_add(i) % span;
        let Ok(port) = u16::try_from(port) else {
            continue;
        };
        match TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
            Ok(l) => return Ok(l),
            // In use (by anything: the sequence is ours, the ports are not): the next one.
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free port below the ephemeral range")))
}

/// `n` bound loopback listeners, each on its own port: keep them while choosing other ports,
/// drop each just before its address is used.
pub fn reserve(n: usize) -> std::io::Result<Vec<TcpListener>> {
    (0..n).map(|_| bind_next()).collect()
}

/// `n` distinct free loopback addresses (released: see the module's note).
pub fn free_addrs(n: usize) -> std::io::Result<Vec<SocketAddr>> {
    reserve(n)?.iter().map(TcpListener::local_addr).collect()
}

/// One free loopback address as `IP:PORT`; panics when none can be bound (for tests).
pub fn free_addr() -> String {
    match free_addrs(1) {
        Ok(a) => a[0].to_string(),
        Err(e) => panic!("cannot bind a loopback port: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_and_below_the_ephemeral_range() {
        let held = reserve(50).expect("reserve");
        let mut ports: Vec<u16> = held
            .iter()
            .map(|l| l.local_addr().expect("addr").port())
            .collect();
        let low = ephemeral_low();
        if low >= LOWEST + MIN_SPAN {
            assert!(ports
                .iter()
                .all(|p| u32::from(*p) < low && u32::from(*p) >= LOWEST));
        }
        drop(held);
        // Released and asked again: never the same ports within a process.
        ports.extend(free_addrs(50).expect("again").iter().map(|a| a.port()));
        let n = ports.len();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), n, "a port handed out twice");
    }
}
