//! Helpers shared by the integration tests: real TCP on 127.0.0.1, port 0.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, Instant};

use understudy_pricefeed::exchange_sim::ExchangeSim;
use understudy_pricefeed::protocol::{read_frame, Message, Role};
use understudy_pricefeed::server::{PriceServer, ServerConfig, ServerHandle};

/// Aborts the task when dropped, so a failing test leaves nothing running.
pub struct Task(pub JoinHandle<()>);

impl Task {
    /// Aborts the task and waits until its future has been dropped, so that its listener is
    /// closed when this returns (its connections are being aborted). Dropping a `Task` only
    /// asks for the abort, which a worker thread carries out later. A panic of the task is
    /// passed on here rather than showing up later as a timeout.
    pub async fn stop(mut self) {
        self.0.abort();
        if let Err(e) = (&mut self.0).await {
            if e.is_panic() {
                std::panic::resume_unwind(e.into_panic());
            }
        }
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().expect("addr")
}

pub async fn exchange(symbols: u32, rate: u32) -> (SocketAddr, Task) {
    let sim = ExchangeSim::bind(any_port(), symbols, rate)
        .await
        .expect("bind exchange");
    let addr = sim.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let _ = sim.run().await;
    });
    (addr, Task(task))
}

pub async fn server(
    upstream: SocketAddr,
    role: Role,
    epoch: u64,
) -> (SocketAddr, ServerHandle, Task) {
    let mut cfg = ServerConfig::new(upstream, any_port());
    cfg.role = role;
    cfg.epoch = epoch;
    let srv = PriceServer::bind(cfg).await.expect("bind server");
    let addr = srv.local_addr().expect("addr");
    let handle = srv.handle();
    let task = tokio::spawn(async move {
        let _ = srv.run().await;
    });
    (addr, handle, Task(task))
}

/// Waits for a server to have its book loaded from the exchange.
pub async fn wait_book(h: &ServerHandle, instruments: usize) {
    wait_until(Duration::from_secs(5), || {
        h.status().instruments == instruments
    })
    .await;
}

/// How long a test waits for something that takes milliseconds: a liveness bound, generous so
/// that a loaded machine does not fail a test (speed is measured by the benchmarks).
pub const ANSWER: Duration = Duration::from_secs(10);

pub async fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "condition not met within {limit:?}"
        );
        sleep(Duration::from_millis(5)).await;
    }
}

/// A hand-driven protocol client, for checking exactly what a server sends.
pub struct Raw {
    pub sock: TcpStream,
    buf: BytesMut,
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Self {
        let sock = TcpStream::connect(addr).await.expect("connect");
        sock.set_nodelay(true).expect("nodelay");
        Raw {
            sock,
            buf: BytesMut::new(),
        }
    }

    pub fn from_stream(sock: TcpStream) -> Self {
        Raw {
            sock,
            buf: BytesMut::new(),
        }
    }

    pub async fn send(&mut self, m: &Message) {
        let frame = m.to_frame().expect("encode");
        self.sock.write_all(&frame).await.expect("send");
    }

    pub async fn subscribe(&mut self, symbols: &[&str]) {
        self.send(&Message::Subscribe {
            req_id: 1,
            symbols: symbols.iter().map(|s| s.to_string()).collect(),
        })
        .await;
    }

    /// The next message, or None on timeout or end of stream.
    pub async fn next(&mut self, within: Duration) -> Option<Message> {
        match timeout(within, read_frame(&mut self.sock, &mut self.buf)).await {
            Ok(Ok(Some(f))) => Some(Message::decode(&f).expect("server sent a valid frame")),
            _ => None,
        }
    }

    /// Collects messages until `done` holds for all collected so far; panics with them when it
    /// does not within [`ANSWER`] or the stream ends.
    pub async fn collect_until(
        &mut self,
        what: &str,
        done: impl Fn(&[Message]) -> bool,
    ) -> Vec<Message> {
        let deadline = Instant::now() + ANSWER;
        let mut out = Vec::new();
        while !done(&out) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Some(m) => out.push(m),
                None => panic!("{what}: not within {ANSWER:?} (or the stream ended): {out:?}"),
            }
        }
        out
    }

    /// Collects everything received during `d` (an observation window, not a wait).
    pub async fn collect(&mut self, d: Duration) -> Vec<Message> {
        let deadline = Instant::now() + d;
        let mut out = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.next(left).await {
                Some(m) => out.push(m),
                None => break,
            }
        }
        out
    }
}
