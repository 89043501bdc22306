//! The client library a trading application uses, and `understudy price-client` on top of it.
//!
//! [`PriceClient`] is given every server of the group, preferred first, and connects to all of
//! them: the standbys then mirror its subscriptions (document 001), and when one is promoted it
//! pushes prices to this already-open connection, so a failover costs no reconnect. The client
//! tracks its own subscriptions and sends them to every server it (re)connects to; on a
//! failover it sends them again to the new primary. It follows the server that claims primary
//! with the highest epoch and drops everything carrying a lower epoch, so a stale former
//! primary can never overwrite a newer price.
//!
//! A failover is detected by whichever comes first: loss of the connection, heartbeats missed
//! for [`ClientOptions::heartbeat_timeout`], or another server announcing a higher epoch.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep, sleep_until, timeout, Instant};
use understudy_tls::{Stream, TlsClient};

use crate::protocol::{read_frame, split_frame, Message, Price, Role, MAX_SYMBOL_LEN};
use crate::{AbortOnDrop, Error};

/// Symbols per Subscribe frame: keeps frames far below the size limit for any list length.
const SYMBOLS_PER_FRAME: usize = 4096;

/// Tuning of a [`PriceClient`].
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// A server silent for this long is considered dead (servers heartbeat every 50 ms).
    pub heartbeat_timeout: Duration,
    /// Time allowed for one TCP connect.
    pub connect_timeout: Duration,
    /// First delay before reconnecting to a server that is down.
    pub reconnect_min: Duration,
    /// Longest delay between reconnection attempts.
    pub reconnect_max: Duration,
    /// Bursts of events (everything one read from a server produced) buffered for the
    /// application before the client stops reading; the servers then conflate for us.
    pub event_buffer: usize,
    /// The servers' token (see `ServerConfig::token`), presented in a `Hello` on every
    /// connection before the subscriptions.
    pub token: Option<String>,
    /// TLS towards the servers (their CA, and the name to check their certificates against);
    /// plain TCP when `None`. The handshake counts in `connect_timeout`.
    pub tls: Option<TlsClient>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            heartbeat_timeout: Duration::from_millis(300),
            connect_timeout: Duration::from_millis(500),
            reconnect_min: Duration::from_millis(20),
            reconnect_max: Duration::from_millis(500),
            event_buffer: 1024,
            token: None,
            tls: None,
        }
    }
}

/// One price as delivered to the application.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Quote {
    /// Instrument.
    pub symbol: String,
    /// Best bid.
    pub bid: f64,
    /// Best ask.
    pub ask: f64,
    /// Quantity at the best bid.
    pub bid_size: u32,
    /// Quantity at the best ask.
    pub ask_size: u32,
    /// Exchange sequence number of this instrument.
    pub exch_seq: u64,
    /// When the exchange published it (Unix nanoseconds, the exchange's clock).
    pub exch_time_ns: u64,
    /// Epoch of the primary that sent it.
    pub epoch: u64,
    /// True for a snapshot (first price after subscribing or after a failover).
    pub snapshot: bool,
    /// The server that sent it.
    pub server: SocketAddr,
}

/// What the client tells the application.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    /// A price from the current primary.
    Quote(Quote),
    /// A (new) primary was found: prices now come from `server` at `epoch`.
    Failover {
        /// The new primary.
        server: SocketAddr,
        /// Its epoch.
        epoch: u64,
        /// The former primary and its epoch, if there was one.
        previous: Option<(SocketAddr, u64)>,
    },
    /// The primary went away (connection lost, heartbeats missed or demoted); prices pause
    /// until another server claims a higher epoch.
    PrimaryLost {
        /// The lost primary.
        server: SocketAddr,
        /// Its epoch.
        epoch: u64,
        /// Why it is considered lost.
        reason: String,
    },
    /// A server refused a subscription (e.g. unknown instrument) or a request.
    Rejected {
        /// The server that refused.
        server: SocketAddr,
        /// The instrument concerned, empty if none.
        symbol: String,
        /// The server's explanation.
        message: String,
    },
    /// A connection to a server was established.
    ServerConnected {
        /// The server.
        server: SocketAddr,
    },
    /// A connection to a server was lost; the client reconnects by itself.
    ServerLost {
        /// The server.
        server: SocketAddr,
        /// What happened.
        reason: String,
    },
}

/// A failover-aware price client. Dropping it closes every connection.
pub struct PriceClient {
    subs: watch::Sender<Arc<BTreeSet<String>>>,
    primary: watch::Receiver<Option<(SocketAddr, u64)>>,
    events: mpsc::Receiver<Vec<ClientEvent>>,
    /// The rest of the burst last received, delivered one by one.
    pending: VecDeque<ClientEvent>,
    _tasks: Vec<AbortOnDrop<()>>,
}

/// What connection tasks tell the arbiter.
enum Input {
    Connected(usize),
    /// Every frame one read brought, in order: one channel message per burst, not per price.
    Frames(usize, Vec<Message>),
    Disconnected(usize, String),
}

impl PriceClient {
    /// Starts connecting to every server of the group (preferred first) and returns at once.
    /// Must be called inside a Tokio runtime.
    pub fn connect(servers: Vec<SocketAddr>, opts: ClientOptions) -> Result<Self, Error> {
        if servers.is_empty() {
            return Err(Error::Config(
                "a price client needs at least one server".into(),
            ));
        }
        let (subs_tx, subs_rx) = watch::channel(Arc::new(BTreeSet::new()));
        let (primary_tx, primary_rx) = watch::channel(None);
        let (events_tx, events_rx) = mpsc::channel(opts.event_buffer.max(1));
        // Bounded so that a slow application slows our reading, not our memory.
        let (input_tx, input_rx) = mpsc::channel(1024);
        let mut tasks = Vec::with_capacity(servers.len() + 1);
        let mut resyncs = Vec::with_capacity(servers.len());
        for (idx, &addr) in servers.iter().enumerate() {
            let (resync_tx, resync_rx) = mpsc::unbounded_channel();
            resyncs.push(resync_tx);
            tasks.push(AbortOnDrop(tokio::spawn(connection(
                idx,
                addr,
                opts.clone(),
                subs_rx.clone(),
                resync_rx,
                input_tx.clone(),
            ))));
        }
        drop(input_tx);
        let arbiter = Arbiter {
            servers,
            claims: Vec::new(),
            highest: None,
            primary: None,
            followed: None,
            resyncs,
            events: events_tx,
            primary_tx,
        };
        tasks.push(AbortOnDrop(tokio::spawn(arbiter.run(input_rx))));
        Ok(PriceClient {
            subs: subs_tx,
            primary: primary_rx,
            events: events_rx,
            pending: VecDeque::new(),
            _tasks: tasks,
        })
    }

    /// Adds instruments to the subscriptions; every server is told, now and after reconnects.
    pub fn subscribe<S: AsRef<str>>(&self, symbols: &[S]) {
        self.subs.send_modify(|set| {
            let set = Arc::make_mut(set);
            for s in symbols {
                set.insert(s.as_ref().to_string());
            }
        });
    }

    /// Removes instruments from the subscriptions.
    pub fn unsubscribe<S: AsRef<str>>(&self, symbols: &[S]) {
        self.subs.send_modify(|set| {
            let set = Arc::make_mut(set);
            for s in symbols {
                set.remove(s.as_ref());
            }
        });
    }

    /// The instruments currently subscribed.
    pub fn subscriptions(&self) -> Vec<String> {
        self.subs.borrow().iter().cloned().collect()
    }

    /// The current primary and its epoch, if one is known.
    pub fn primary(&self) -> Option<(SocketAddr, u64)> {
        *self.primary.borrow()
    }

    /// The next event; `None` only if the client's tasks have stopped.
    pub async fn next_event(&mut self) -> Option<ClientEvent> {
        loop {
            if let Some(ev) = self.pending.pop_front() {
                return Some(ev);
            }
            self.pending = self.events.recv().await?.into();
        }
    }

    /// The next event if one is ready now (lets a consumer batch its output).
    pub fn try_next_event(&mut self) -> Option<ClientEvent> {
        loop {
            if let Some(ev) = self.pending.pop_front() {
                return Some(ev);
            }
            self.pending = self.events.try_recv().ok()?.into();
        }
    }
}

/// Decides which server is primary and which messages reach the application. A single task
/// sees every connection's messages in arrival order, so "nothing older after something newer"
/// holds across connections without locks.
struct Arbiter {
    servers: Vec<SocketAddr>,
    /// Last (role, epoch) announced on each live connection.
    claims: Vec<Option<(Role, u64)>>,
    /// Highest epoch any primary has claimed: everything older is dropped.
    highest: Option<u64>,
    primary: Option<usize>,
    /// The primary followed last, kept when it is lost: a failover names it as the previous one.
    followed: Option<usize>,
    resyncs: Vec<mpsc::UnboundedSender<()>>,
    events: mpsc::Sender<Vec<ClientEvent>>,
    primary_tx: watch::Sender<Option<(SocketAddr, u64)>>,
}

impl Arbiter {
    async fn run(mut self, mut input: mpsc::Receiver<Input>) {
        self.claims = vec![None; self.servers.len()];
        while let Some(inp) = input.recv().await {
            let out = self.handle(inp);
            if !out.is_empty() && self.events.send(out).await.is_err() {
                return; // the application dropped the client
            }
        }
    }

    fn handle(&mut self, inp: Input) -> Vec<ClientEvent> {
        let mut out = Vec::new();
        match inp {
            Input::Connected(idx) => out.push(ClientEvent::ServerConnected {
                server: self.servers[idx],
            }),
            Input::Disconnected(idx, reason) => {
                self.claims[idx] = None;
                if self.primary == Some(idx) {
                    self.lose_primary(idx, reason.clone(), &mut out);
                }
                out.push(ClientEvent::ServerLost {
                    server: self.servers[idx],
                    reason,
                });
            }
            Input::Frames(idx, msgs) => {
                out.reserve(msgs.len());
                for msg in msgs {
                    self.frame(idx, msg, &mut out);
                }
            }
        }
        out
    }

    fn frame(&mut self, idx: usize, msg: Message, out: &mut Vec<ClientEvent>) {
        let server = self.servers[idx];
        match msg {
            Message::Hello { role, epoch, .. }
            | Message::RoleChange { role, epoch }
            | Message::Heartbeat { role, epoch } => {
                // Per connection, a role claim never goes back to an older epoch.
                if self.claims[idx].is_some_and(|(_, e)| epoch < e) {
                    return;
                }
                self.claims[idx] = Some((role, epoch));
                match role {
                    Role::Primary => self.claim(idx, epoch, out),
                    Role::Standby => {
                        if self.primary == Some(idx) {
                            self.lose_primary(idx, "demoted to standby".into(), out);
                        }
                    }
                }
            }
            Message::Snapshot { epoch, price } => self.price(idx, epoch, price, true, out),
            Message::Update { epoch, price } => self.price(idx, epoch, price, false, out),
            Message::Error {
                epoch,
                symbol,
                message,
                ..
            } => {
                // Every server of the group refuses an unknown instrument; report the
                // primary's answer (or any, while there is none), and never a stale one.
                let current = self.primary.is_none_or(|p| p == idx);
                if current && self.highest.is_none_or(|h| epoch >= h) {
                    out.push(ClientEvent::Rejected {
                        server,
                        symbol,
                        message,
                    });
                }
            }
            Message::Subscribe { .. }
            | Message::Unsubscribe { .. }
            | Message::SnapshotComplete { .. } => {}
        }
    }

    fn price(
        &mut self,
        idx: usize,
        epoch: u64,
        price: Price,
        snapshot: bool,
        out: &mut Vec<ClientEvent>,
    ) {
        // Only primaries publish, so a price is also a claim to be primary.
        self.claim(idx, epoch, out);
        if self.primary == Some(idx) && self.highest == Some(epoch) {
            out.push(ClientEvent::Quote(Quote {
                symbol: price.symbol.to_string(),
                bid: price.bid,
                ask: price.ask,
                bid_size: price.bid_size,
                ask_size: price.ask_size,
                exch_seq: price.exch_seq,
                exch_time_ns: price.exch_time_ns,
                epoch,
                snapshot,
                server: self.servers[idx],
            }));
        }
    }

    /// Server `idx` says it is primary at `epoch`: follow it if that is the newest claim.
    fn claim(&mut self, idx: usize, epoch: u64, out: &mut Vec<ClientEvent>) {
        let newer = match self.highest {
            None => true,
            Some(h) => epoch > h || (epoch == h && self.primary.is_none()),
        };
        if !newer || self.primary == Some(idx) && self.highest == Some(epoch) {
            return;
        }
        let failover = self.highest.is_some();
        // The primary is usually lost (connection gone, heartbeats missed) before another
        // claims: the one followed last is the previous one all the same.
        let previous = self
            .followed
            .map(|p| (self.servers[p], self.highest.unwrap_or(0)));
        self.primary = Some(idx);
        self.followed = Some(idx);
        self.highest = Some(epoch);
        let server = self.servers[idx];
        let _ = self.primary_tx.send(Some((server, epoch)));
        // After a failover the new primary normally already has our subscriptions (it
        // mirrored them as a standby) and pushes snapshots by itself; sending them again costs
        // little and covers a server that missed some. The first primary just got them.
        if failover {
            let _ = self.resyncs[idx].send(());
        }
        out.push(ClientEvent::Failover {
            server,
            epoch,
            previous,
        });
    }

    fn lose_primary(&mut self, idx: usize, reason: String, out: &mut Vec<ClientEvent>) {
        self.primary = None;
        let _ = self.primary_tx.send(None);
        out.push(ClientEvent::PrimaryLost {
            server: self.servers[idx],
            epoch: self.highest.unwrap_or(0),
            reason,
        });
    }
}

/// Keeps one server connected: (re)subscribes on every connect, forwards its messages, and
/// declares it lost after `heartbeat_timeout` of silence.
async fn connection(
    idx: usize,
    addr: SocketAddr,
    opts: ClientOptions,
    mut subs: watch::Receiver<Arc<BTreeSet<String>>>,
    mut resync: mpsc::UnboundedReceiver<()>,
    input: mpsc::Sender<Input>,
) {
    let mut backoff = opts.reconnect_min;
    loop {
        let sock = match timeout(opts.connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(_)) | Err(_) => {
                sleep(backoff).await;
                backoff = (backoff * 2).min(opts.reconnect_max);
                continue;
            }
        };
        let _ = sock.set_nodelay(true);
        let sock = match &opts.tls {
            None => Stream::Plain(sock),
            Some(tls) => match tls.connect(sock, addr.ip(), opts.connect_timeout).await {
                Ok(s) => s,
                Err(e) => {
                    // A wrong CA or name is a configuration problem someone must see.
                    tracing::warn!(%addr, error = %e, "TLS handshake with the price server failed");
                    sleep(backoff).await;
                    backoff = (backoff * 2).min(opts.reconnect_max);
                    continue;
                }
            },
        };
        backoff = opts.reconnect_min;
        if input.send(Input::Connected(idx)).await.is_err() {
            return;
        }
        let io = (&mut subs, &mut resync, &input);
        let reason = match sock {
            // A TCP stream splits without a lock between its halves; TLS needs one.
            Stream::Plain(s) => {
                let (rd, wr) = s.into_split();
                session(idx, rd, wr, &opts, io).await
            }
            tls => {
                let (rd, wr) = tokio::io::split(tls);
                session(idx, rd, wr, &opts, io).await
            }
        };
        let reason = match reason {
            Ok(reason) => reason,
            Err(Stop) => return,
        };
        tracing::debug!(%addr, reason, "price server connection lost");
        if input.send(Input::Disconnected(idx, reason)).await.is_err() {
            return;
        }
        sleep(opts.reconnect_min).await;
    }
}

/// The client is being dropped: the connection task ends.
struct Stop;

/// What a session reads besides the server: the subscriptions, resubscription requests, and
/// where its input goes.
type SessionIo<'a> = (
    &'a mut watch::Receiver<Arc<BTreeSet<String>>>,
    &'a mut mpsc::UnboundedReceiver<()>,
    &'a mpsc::Sender<Input>,
);

async fn session<R, W>(
    idx: usize,
    mut rd: R,
    mut wr: W,
    opts: &ClientOptions,
    (subs, resync, input): SessionIo<'_>,
) -> Result<String, Stop>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(64 * 1024);
    // A fresh connection knows nothing of us: send every subscription.
    let mut sent: Arc<BTreeSet<String>> = subs.borrow_and_update().clone();
    let mut req_id = 0u32;
    if let Some(token) = &opts.token {
        let hello = Message::Hello {
            role: Role::Standby,
            epoch: 0,
            server: "price-client".into(),
            token: Some(token.clone()),
        };
        let sent = match hello.to_frame() {
            // Sent with the subscriptions below (one flush).
            Ok(frame) => wr.write_all(&frame).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = sent {
            return Ok(format!("sending the token failed: {e}"));
        }
    }
    if let Err(e) = send_symbols(&mut wr, &mut req_id, true, sent.iter()).await {
        return Ok(format!("subscribe failed: {e}"));
    }
    // Drain resync requests that predate this connection: we just sent everything.
    while resync.try_recv().is_ok() {}
    let mut deadline = Instant::now() + opts.heartbeat_timeout;
    loop {
        tokio::select! {
            frame = read_frame(&mut rd, &mut buf) => {
                let frame = match frame {
                    Ok(Some(f)) => f,
                    Ok(None) => return Ok("connection closed by server".into()),
                    Err(e) => return Ok(e.to_string()),
                };
                // Decode everything this read brought and hand it over in one message.
                let mut msgs = Vec::new();
                let mut next = Some(frame);
                while let Some(frame) = next.take() {
                    match Message::decode(&frame) {
                        Ok(msg) => msgs.push(msg),
                        Err(e) => tracing::warn!(error = %e, "undecodable frame from price server"),
                    }
                    next = match split_frame(&mut buf) {
                        Ok(f) => f,
                        Err(e) => return Ok(format!("framing lost: {e}")),
                    };
                }
                if !msgs.is_empty() && input.send(Input::Frames(idx, msgs)).await.is_err() {
                    return Err(Stop);
                }
                // Measured after forwarding: time we spent blocked on a slow application is
                // not the server's silence.
                deadline = Instant::now() + opts.heartbeat_timeout;
            }
            () = sleep_until(deadline) => {
                return Ok(format!("no heartbeat for {:?}", opts.heartbeat_timeout));
            }
            changed = subs.changed() => {
                if changed.is_err() {
                    return Err(Stop);
                }
                let now = subs.borrow_and_update().clone();
                let added = now.difference(&sent).cloned().collect::<Vec<_>>();
                let removed = sent.difference(&now).cloned().collect::<Vec<_>>();
                sent = now;
                if let Err(e) = send_symbols(&mut wr, &mut req_id, true, added.iter()).await {
                    return Ok(format!("subscribe failed: {e}"));
                }
                if let Err(e) = send_symbols(&mut wr, &mut req_id, false, removed.iter()).await {
                    return Ok(format!("unsubscribe failed: {e}"));
                }
            }
            Some(()) = resync.recv() => {
                if let Err(e) = send_symbols(&mut wr, &mut req_id, true, sent.iter()).await {
                    return Ok(format!("resubscribe failed: {e}"));
                }
            }
        }
    }
}

async fn send_symbols<'a, W: AsyncWrite + Unpin>(
    wr: &mut W,
    req_id: &mut u32,
    subscribe: bool,
    symbols: impl Iterator<Item = &'a String>,
) -> Result<(), Error> {
    let all: Vec<String> = symbols.cloned().collect();
    let mut out = BytesMut::new();
    for chunk in all.chunks(SYMBOLS_PER_FRAME) {
        *req_id = req_id.wrapping_add(1);
        let symbols = chunk.to_vec();
        let m = if subscribe {
            Message::Subscribe {
                req_id: *req_id,
                symbols,
            }
        } else {
            Message::Unsubscribe {
                req_id: *req_id,
                symbols,
            }
        };
        m.encode(&mut out)?;
    }
    if !out.is_empty() {
        wr.write_all(&out)
            .await
            .map_err(|e| Error::io("sending subscriptions", e))?;
    }
    // Also sends what an earlier write left in the TLS buffer (the Hello).
    wr.flush()
        .await
        .map_err(|e| Error::io("sending subscriptions", e))
}

/// Parses `--servers ADDR,ADDR[,…]` (order kept: preferred first). Host names are resolved.
pub fn parse_servers(list: &str) -> Result<Vec<SocketAddr>, Error> {
    use std::net::ToSocketAddrs;
    let mut out = Vec::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let addr = item
            .to_socket_addrs()
            .map_err(|e| Error::Config(format!("server address {item:?}: {e}")))?
            .next()
            .ok_or_else(|| Error::Config(format!("server address {item:?} resolves to nothing")))?;
        out.push(addr);
    }
    if out.is_empty() {
        return Err(Error::Config("--servers needs at least one address".into()));
    }
    Ok(out)
}

/// Parses `--subscribe SYM1,SYM2,…` (blank entries ignored, duplicates kept once, order kept).
pub fn parse_symbols(list: &str) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty() && seen.insert(s.to_string()))
        .map(str::to_string)
        .collect()
}

/// Runs `understudy price-client`: subscribes to `symbols` on the group `servers` (preferred
/// first) and prints one JSON object per update (`json`) or a live quote board, until the
/// process ends or stdout is closed.
pub async fn run_price_client(
    servers: Vec<SocketAddr>,
    symbols: Vec<String>,
    json: bool,
    token: Option<String>,
    tls: Option<TlsClient>,
) -> Result<(), Error> {
    if symbols.is_empty() {
        return Err(Error::Config(
            "--subscribe needs at least one symbol".into(),
        ));
    }
    if let Some(bad) = symbols
        .iter()
        .find(|s| s.is_empty() || s.len() > MAX_SYMBOL_LEN)
    {
        return Err(Error::Config(format!(
            "invalid symbol {bad:?} (1..={MAX_SYMBOL_LEN} bytes)"
        )));
    }
    let opts = ClientOptions {
        token,
        tls,
        ..ClientOptions::default()
    };
    let mut client = PriceClient::connect(servers, opts)?;
    client.subscribe(&symbols);
    if json {
        print_json(&mut client).await
    } else if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        print_board(&mut client, &symbols).await
    } else {
        print_lines(&mut client).await
    }
}

async fn print_json(client: &mut PriceClient) -> Result<(), Error> {
    let mut stdout = BufWriter::new(tokio::io::stdout());
    let io = |e| Error::io("writing to stdout", e);
    while let Some(ev) = client.next_event().await {
        let mut next = Some(ev);
        // Write everything already received, then flush once: low latency without a
        // syscall per line under load.
        while let Some(ev) = next.take() {
            match ev {
                ClientEvent::Quote(q) => {
                    let mut line =
                        serde_json::to_vec(&q).map_err(|e| Error::Config(e.to_string()))?;
                    line.push(b'\n');
                    stdout.write_all(&line).await.map_err(io)?;
                }
                other => log_event(&other),
            }
            next = client.try_next_event();
        }
        stdout.flush().await.map_err(io)?;
    }
    Ok(())
}

fn log_event(ev: &ClientEvent) {
    match ev {
        ClientEvent::Quote(_) => {}
        ClientEvent::Failover {
            server,
            epoch,
            previous,
        } => match previous {
            Some((prev, prev_epoch)) => tracing::info!(
                %server,
                epoch,
                previous = %prev,
                previous_epoch = prev_epoch,
                "failover: following the new primary {server} (epoch {epoch}), after {prev} (epoch {prev_epoch})"
            ),
            None => {
                tracing::info!(%server, epoch, "following the primary {server} (epoch {epoch})")
            }
        },
        ClientEvent::PrimaryLost {
            server,
            epoch,
            reason,
        } => {
            tracing::warn!(%server, epoch, reason, "primary lost")
        }
        ClientEvent::Rejected {
            server,
            symbol,
            message,
        } => {
            tracing::warn!(%server, symbol, message, "request refused")
        }
        ClientEvent::ServerConnected { server } => tracing::info!(%server, "connected"),
        ClientEvent::ServerLost { server, reason } => {
            tracing::info!(%server, reason, "connection lost")
        }
    }
}

/// What the board and the plain output say about an event other than a price (None: nothing).
/// Counts a failover in `failovers`.
fn event_line(ev: &ClientEvent, failovers: &mut u32) -> Option<String> {
    Some(match ev {
        ClientEvent::Quote(_) => return None,
        ClientEvent::Failover {
            server,
            epoch,
            previous: Some((prev, prev_epoch)),
        } => {
            *failovers += 1;
            format!("failover: primary is now {server} (epoch {epoch}), was {prev} (epoch {prev_epoch})")
        }
        ClientEvent::Failover {
            server,
            epoch,
            previous: None,
        } => format!("primary is {server} (epoch {epoch})"),
        ClientEvent::PrimaryLost { server, reason, .. } => {
            format!("primary {server} lost: {reason}")
        }
        ClientEvent::Rejected {
            symbol, message, ..
        } => format!("refused {symbol}: {message}"),
        ClientEvent::ServerConnected { server } => format!("connected to {server}"),
        ClientEvent::ServerLost { server, reason } => format!("lost {server}: {reason}"),
    })
}

/// Output that is not a terminal (a pipe, a file): a board redrawn in place would print every
/// screen after the last, its event lines again each time. Each event once, and a line of
/// totals every second instead.
async fn print_lines(client: &mut PriceClient) -> Result<(), Error> {
    const EVERY: Duration = Duration::from_secs(1);
    let mut stdout = BufWriter::new(tokio::io::stdout());
    let io = |e| Error::io("writing to stdout", e);
    let mut failovers = 0u32;
    let mut quotes = 0u64;
    let mut next = Instant::now() + EVERY;
    loop {
        tokio::select! {
            ev = client.next_event() => {
                let Some(ev) = ev else { return Ok(()) };
                if matches!(ev, ClientEvent::Quote(_)) {
                    quotes += 1;
                } else if let Some(l) = event_line(&ev, &mut failovers) {
                    stdout.write_all(format!("{l}\n").as_bytes()).await.map_err(io)?;
                    stdout.flush().await.map_err(io)?;
                }
            }
            () = sleep_until(next) => {
                next = Instant::now() + EVERY;
                let primary = match client.primary() {
                    Some((s, e)) => format!("primary {s} epoch {e}"),
                    None => "no primary".to_string(),
                };
                let l = format!("{primary}: {quotes} prices in the last second, {failovers} failovers\n");
                quotes = 0;
                stdout.write_all(l.as_bytes()).await.map_err(io)?;
                stdout.flush().await.map_err(io)?;
            }
        }
    }
}

/// The quote board: redrawn a few times a second, so a trader can read it.
async fn print_board(client: &mut PriceClient, symbols: &[String]) -> Result<(), Error> {
    const REDRAW: Duration = Duration::from_millis(250);
    let mut stdout = BufWriter::new(tokio::io::stdout());
    let io = |e| Error::io("writing to stdout", e);
    let mut quotes: HashMap<String, (Quote, Instant)> = HashMap::new();
    let mut log: VecDeque<String> = VecDeque::new();
    let mut failovers = 0u32;
    let mut next_draw = Instant::now();
    loop {
        tokio::select! {
            ev = client.next_event() => {
                let Some(ev) = ev else { return Ok(()) };
                let now = Instant::now();
                let line = event_line(&ev, &mut failovers);
                if let ClientEvent::Quote(q) = ev {
                    quotes.insert(q.symbol.clone(), (q, now));
                }
                if let Some(l) = line {
                    log.push_back(l);
                    if log.len() > 5 {
                        log.pop_front();
                    }
                }
            }
            () = sleep_until(next_draw) => {
                next_draw = Instant::now() + REDRAW;
                let primary = match client.primary() {
                    Some((s, e)) => format!("primary {s}  epoch {e}"),
                    None => "NO PRIMARY (waiting for failover)".to_string(),
                };
                let mut screen = String::with_capacity(128 * (symbols.len() + 10));
                screen.push_str("\x1b[H\x1b[2J");
                screen.push_str(&format!("understudy price-client  |  {primary}  |  failovers {failovers}\n\n"));
                screen.push_str(&format!(
                    "{:<12} {:>12} {:>12} {:>8} {:>8} {:>10} {:>6} {:>8}\n",
                    "SYMBOL", "BID", "ASK", "BIDSZ", "ASKSZ", "SEQ", "EPOCH", "AGE"
                ));
                for s in symbols {
                    match quotes.get(s) {
                        Some((q, at)) => screen.push_str(&format!(
                            "{:<12} {:>12.2} {:>12.2} {:>8} {:>8} {:>10} {:>6} {:>7}ms\n",
                            q.symbol, q.bid, q.ask, q.bid_size, q.ask_size, q.exch_seq, q.epoch,
                            at.elapsed().as_millis()
                        )),
                        None => screen.push_str(&format!("{s:<12} {:>12}\n", "-")),
                    }
                }
                screen.push('\n');
                for l in &log {
                    screen.push_str(l);
                    screen.push('\n');
                }
                stdout.write_all(screen.as_bytes()).await.map_err(io)?;
                stdout.flush().await.map_err(io)?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_command_line_lists() {
        let s = parse_servers("127.0.0.1:7001, 127.0.0.1:7002").expect("parse");
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].port(), 7001);
        assert!(parse_servers("").is_err());
        assert!(parse_servers("not an address").is_err());
        assert_eq!(parse_symbols("SYM1,,SYM2, SYM1"), vec!["SYM1", "SYM2"]);
    }
}
