//! `understudy exchange-sim`: a simulated exchange market-data feed.
//!
//! Instruments `SYM1` … `SYMN` each carry a bid, an ask, their sizes and a per-instrument
//! exchange sequence number. `rate` is the total number of updates per second, spread over the
//! instruments with a Zipf skew (weight 1/i), so `SYM1`, `SYM2`, … are the few hot instruments
//! that real markets have. It is also the load generator of the benchmarks.
//!
//! Every connected price server gets the full feed, in the protocol of [`crate::protocol`]:
//! `Hello`, one `Snapshot` per instrument, `SnapshotComplete`, then `Update`s and a `Heartbeat`
//! every 100 ms. A server that falls too far behind is resynchronised with a new snapshot rather
//! than slowing the exchange down.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio::time::{interval, Instant, MissedTickBehavior};

use crate::protocol::{Message, Price, ProtocolError, Role};
use crate::Error;

/// How often the generator runs; updates due in between are sent as one batch.
const TICK: Duration = Duration::from_millis(1);
/// Liveness signal to the price servers, so they notice a silent feed.
const HEARTBEAT: Duration = Duration::from_millis(100);
/// Batches buffered per connection before it is considered lagging and resynchronised.
const BACKLOG_BATCHES: usize = 4096;

/// Runs the simulated exchange on `listen` until the process ends.
pub async fn run_exchange_sim(listen: SocketAddr, symbols: u32, rate: u32) -> Result<(), Error> {
    ExchangeSim::bind(listen, symbols, rate).await?.run().await
}

/// A bound, not yet running, exchange simulator (tests bind to port 0 and read the address).
pub struct ExchangeSim {
    listener: TcpListener,
    shared: Arc<Shared>,
    rate: u32,
}

struct Shared {
    /// The book and the broadcast sender under one lock, so a new connection's snapshot and
    /// its position in the update stream are taken atomically: nothing is missed or reordered.
    market: Mutex<Market>,
}

struct Market {
    instruments: Vec<Instrument>,
    tx: broadcast::Sender<Bytes>,
}

struct Instrument {
    symbol: Arc<str>,
    /// Mid price in hundredths (ticks of 0.01), kept integral so prices print cleanly.
    mid_ticks: i64,
    /// Spread in ticks.
    spread: i64,
    bid_size: u32,
    ask_size: u32,
    seq: u64,
    /// When the current price was published (Unix nanoseconds).
    time_ns: u64,
}

impl Instrument {
    fn price(&self) -> Price {
        let bid = self.mid_ticks - self.spread / 2;
        Price {
            symbol: self.symbol.clone(),
            bid: bid as f64 / 100.0,
            ask: (bid + self.spread) as f64 / 100.0,
            bid_size: self.bid_size,
            ask_size: self.ask_size,
            exch_seq: self.seq,
            exch_time_ns: self.time_ns,
        }
    }
}

impl ExchangeSim {
    /// Binds the listening socket and builds the initial book.
    pub async fn bind(listen: SocketAddr, symbols: u32, rate: u32) -> Result<Self, Error> {
        if symbols == 0 {
            return Err(Error::Config("--symbols must be at least 1".into()));
        }
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| Error::io(format!("binding exchange-sim to {listen}"), e))?;
        let mut rng = Rng::seeded();
        let now = unix_ns();
        let instruments = (1..=symbols)
            .map(|i| Instrument {
                symbol: Arc::from(format!("SYM{i}").as_str()),
                mid_ticks: 10_000 + i64::from(i % 97) * 150,
                spread: 1 + (rng.next() % 3) as i64,
                bid_size: 1 + (rng.next() % 500) as u32,
                ask_size: 1 + (rng.next() % 500) as u32,
                seq: 1,
                time_ns: now,
            })
            .collect();
        let (tx, _) = broadcast::channel(BACKLOG_BATCHES);
        Ok(ExchangeSim {
            listener,
            shared: Arc::new(Shared {
                market: Mutex::new(Market { instruments, tx }),
            }),
            rate,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> Result<SocketAddr, Error> {
        self.listener
            .local_addr()
            .map_err(|e| Error::io("reading exchange-sim address", e))
    }

    /// Generates updates and serves price servers until the process ends.
    pub async fn run(self) -> Result<(), Error> {
        tracing::info!(addr = ?self.listener.local_addr().ok(), rate = self.rate, "exchange-sim listening");
        // Dropping the guard (run cancelled) stops the generator with the listener.
        let _generator = crate::AbortOnDrop(tokio::spawn(generate(self.shared.clone(), self.rate)));
        // Feed tasks live in a JoinSet so that cancelling `run` also closes every connection.
        let mut feeds = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((sock, peer)) => {
                        let _ = sock.set_nodelay(true);
                        let shared = self.shared.clone();
                        feeds.spawn(async move {
                            match feed(sock, shared).await {
                                Ok(()) => tracing::info!(%peer, "feed subscriber left"),
                                Err(e) => tracing::info!(%peer, error = %e, "feed subscriber dropped"),
                            }
                        });
                    }
                    // Accept errors (e.g. too many open files) are transient: report and go on.
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                },
                Some(_) = feeds.join_next() => {}
            }
        }
    }
}

fn lock(shared: &Shared) -> MutexGuard<'_, Market> {
    // A panic elsewhere cannot leave the book inconsistent in a way that matters to a
    // simulator, so a poisoned lock is simply taken over.
    shared.market.lock().unwrap_or_else(|e| e.into_inner())
}

/// Encodes the whole book (Hello, snapshots, SnapshotComplete) and subscribes to what follows.
fn snapshot(shared: &Shared) -> Result<(Bytes, broadcast::Receiver<Bytes>), ProtocolError> {
    let market = lock(shared);
    let mut out = BytesMut::with_capacity(64 * (market.instruments.len() + 2));
    Message::Hello {
        role: Role::Primary,
        epoch: 0,
        server: "exchange-sim".into(),
        token: None,
    }
    .encode(&mut out)?;
    for inst in &market.instruments {
        Message::Snapshot {
            epoch: 0,
            price: inst.price(),
        }
        .encode(&mut out)?;
    }
    Message::SnapshotComplete {
        epoch: 0,
        count: market.instruments.len() as u32,
    }
    .encode(&mut out)?;
    Ok((out.freeze(), market.tx.subscribe()))
}

async fn feed(mut sock: TcpStream, shared: Arc<Shared>) -> Result<(), Error> {
    let (first, mut rx) = snapshot(&shared)?;
    sock.write_all(&first)
        .await
        .map_err(|e| Error::io("writing feed snapshot", e))?;
    loop {
        match rx.recv().await {
            Ok(batch) => sock
                .write_all(&batch)
                .await
                .map_err(|e| Error::io("writing feed", e))?,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                // The reader is too slow for the feed: rather than queue without bound, skip
                // ahead and send a fresh snapshot, which supersedes everything skipped.
                tracing::warn!(
                    skipped_batches = n,
                    "feed subscriber lagging; resynchronising"
                );
                let (snap, new_rx) = snapshot(&shared)?;
                rx = new_rx;
                sock.write_all(&snap)
                    .await
                    .map_err(|e| Error::io("writing feed snapshot", e))?;
            }
            Err(broadcast::error::RecvError::Closed) => return Ok(()),
        }
    }
}

async fn generate(shared: Arc<Shared>, rate: u32) {
    let n = lock(&shared).instruments.len();
    // Zipf(1) weights: instrument i gets 1/i of the flow, normalised by the cumulative sum.
    let mut cumulative = Vec::with_capacity(n);
    let mut total = 0.0;
    for i in 1..=n {
        total += 1.0 / i as f64;
        cumulative.push(total);
    }
    let mut rng = Rng::seeded();
    let start = Instant::now();
    let mut emitted: u64 = 0;
    let mut tick = interval(TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut hb = interval(HEARTBEAT);
    hb.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let heartbeat = Message::Heartbeat {
        role: Role::Primary,
        epoch: 0,
    }
    .to_frame();
    let mut out = BytesMut::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let due = (start.elapsed().as_secs_f64() * f64::from(rate)) as u64;
                // After a stall, do not burst the whole backlog: a real feed moves on.
                let count = due.saturating_sub(emitted).min(u64::from(rate / 10).max(1000));
                emitted = due;
                if count == 0 {
                    continue;
                }
                let mut market = lock(&shared);
                // One timestamp per batch: the batch is published as one write right after.
                let now = unix_ns();
                for _ in 0..count {
                    let x = rng.unit() * total;
                    let i = cumulative.partition_point(|&c| c < x).min(n - 1);
                    let inst = &mut market.instruments[i];
                    step(inst, &mut rng);
                    inst.time_ns = now;
                    let msg = Message::Update { epoch: 0, price: inst.price() };
                    if let Err(e) = msg.encode(&mut out) {
                        tracing::error!(error = %e, "cannot encode update");
                    }
                }
                // No receivers is normal (no price server yet): the error is only that.
                let _ = market.tx.send(out.split().freeze());
            }
            _ = hb.tick() => {
                if let Ok(frame) = &heartbeat {
                    let _ = lock(&shared).tx.send(frame.clone());
                }
            }
        }
    }
}

/// One market event: the mid moves by at most one tick, sizes change, the sequence advances.
fn step(inst: &mut Instrument, rng: &mut Rng) {
    let r = rng.next();
    inst.mid_ticks = (inst.mid_ticks + (r % 3) as i64 - 1).max(100);
    if (r >> 8) & 15 == 0 {
        inst.spread = 1 + ((r >> 12) % 3) as i64;
    }
    inst.bid_size = 1 + ((r >> 16) % 500) as u32;
    inst.ask_size = 1 + ((r >> 32) % 500) as u32;
    inst.seq += 1;
}

/// Wall clock in nanoseconds since the Unix epoch: what exchanges stamp their messages with.
pub fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// xorshift64*: a small, fast generator; market noise needs no cryptographic quality.
struct Rng(u64);

impl Rng {
    fn seeded() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9_7f4a_7c15);
        Rng(nanos | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::read_frame;

    #[tokio::test]
    async fn feed_sends_book_then_skewed_updates() {
        let sim = ExchangeSim::bind("127.0.0.1:0".parse().expect("addr"), 20, 5000)
            .await
            .expect("bind");
        let addr = sim.local_addr().expect("addr");
        let task = tokio::spawn(sim.run());
        let mut sock = TcpStream::connect(addr).await.expect("connect");
        let mut buf = BytesMut::new();
        let mut snapshots = 0;
        let mut complete = false;
        let mut counts = vec![0u32; 21];
        let mut last_seq = [0u64; 21];
        let deadline = Instant::now() + Duration::from_millis(600);
        while Instant::now() < deadline {
            let Ok(Ok(Some(frame))) =
                tokio::time::timeout(Duration::from_millis(200), read_frame(&mut sock, &mut buf))
                    .await
            else {
                break;
            };
            match Message::decode(&frame).expect("valid frame") {
                Message::Snapshot { .. } => snapshots += 1,
                Message::SnapshotComplete { count, .. } => {
                    assert_eq!(count, 20);
                    complete = true;
                }
                Message::Update { price, .. } => {
                    assert!(complete, "updates only after the book");
                    assert!(price.bid < price.ask);
                    let i: usize = price.symbol[3..].parse().expect("SYMn");
                    assert!(
                        price.exch_seq > last_seq[i],
                        "sequence increases per instrument"
                    );
                    last_seq[i] = price.exch_seq;
                    counts[i] += 1;
                }
                _ => {}
            }
        }
        task.abort();
        assert_eq!(snapshots, 20);
        let total: u32 = counts.iter().sum();
        assert!(total > 1000, "about 5000/s for 0.6 s, got {total}");
        assert!(counts[1] > 3 * counts[20], "SYM1 is hot: {counts:?}");
    }
}
