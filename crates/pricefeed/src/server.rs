//! `understudy price-server`: a hot-standby price server (document 001).
//!
//! Every server of a group, primary or standby, keeps a live upstream connection (its book is
//! always current) and accepts clients and their subscriptions (standbys mirror them). Only the
//! primary publishes. Promotion ([`ServerHandle::promote`]) is therefore instant for clients
//! that are already connected: the server announces `RoleChange(primary, epoch)` and pushes a
//! snapshot of every subscribed instrument to every subscriber, without waiting for anyone.
//!
//! Each client has its own writer task fed through an [`Outbox`]: control messages in order,
//! and prices in a per-instrument latest-value map. A client that reads slowly only makes its
//! own map absorb newer prices (conflation, counted in [`ServerStatus::conflated_updates`]);
//! the upstream reader and other clients never wait for it, and its memory is bounded by the
//! number of instruments it subscribed to.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::{interval, sleep, timeout, MissedTickBehavior};
use understudy_tls::TlsServer;

use crate::protocol::{
    self, read_frame, read_frame_within, split_frame, ErrorCode, Message, Price, ReadError, Role,
};
use crate::{AbortOnDrop, Error};

/// Default interval of heartbeats to clients: several fit in a client's detection timeout.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_millis(50);
/// Control messages (errors, role changes) queued for one client before it is disconnected:
/// a client that floods requests without reading the replies must not grow our memory.
const MAX_CONTROL_QUEUE: usize = 4096;
/// Prices queued for one client, in order, before it counts as behind and its prices are
/// conflated (on top of what its socket buffer already holds).
const MAX_QUEUED_PRICES: usize = 1024;
/// Kernel send buffer of each client connection (`SO_SNDBUF`, set on the listener, which every
/// accepted connection inherits). Left to itself the kernel grows it up to
/// `net.ipv4.tcp_wmem`'s maximum, megabytes: a client that stops reading would still take every
/// price for seconds (costing the server as much as a client that keeps up, on a busy machine
/// more than it has) and read seconds-old prices when it resumes. Bounded, such a client is
/// behind within a fraction of a second and gets the latest prices, conflated.
const CLIENT_SEND_BUFFER: u32 = 256 * 1024;
/// Subscriptions one client may hold while the instrument list is not yet known.
const MAX_SUBSCRIPTIONS_PER_CLIENT: usize = 100_000;

/// What a price server lets its clients hold, with the defaults of [`ServerLimits::default`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// Clients connected at once (1024); more are refused at accept.
    pub max_clients: usize,
    /// Clients connected at once from one IP address (256: a benchmark's or a gateway host's
    /// hundred clients fit; a flood from one address does not take all 1024).
    pub max_clients_per_ip: usize,
    /// Time a client has to finish a frame it began (5 s); then it is disconnected.
    pub frame_timeout: Duration,
    /// Subscriptions of all clients together while the instrument list is not yet known
    /// (200 000): until then unknown symbols cannot be refused, so they are capped.
    pub max_unlisted_subscriptions: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_clients: 1024,
            max_clients_per_ip: 256,
            frame_timeout: Duration::from_secs(5),
            max_unlisted_subscriptions: 200_000,
        }
    }
}
/// The exchange heartbeats every 100 ms; silence this long means the feed is dead.
const UPSTREAM_SILENCE: Duration = Duration::from_secs(1);
/// Reconnection backoff towards the upstream.
const UPSTREAM_BACKOFF_MIN: Duration = Duration::from_millis(50);
const UPSTREAM_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How often the status line is logged.
const STATUS_LOG_EVERY: Duration = Duration::from_secs(5);

/// Settings of a price server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address of the exchange feed.
    pub upstream: SocketAddr,
    /// Address to accept clients on (port 0 picks one).
    pub listen: SocketAddr,
    /// Role at start.
    pub role: Role,
    /// Epoch at start.
    pub epoch: u64,
    /// Name announced in `Hello`; `None` announces the bound address.
    pub name: Option<String>,
    /// Interval of heartbeats to clients.
    pub heartbeat: Duration,
    /// A secret every client must present in a `Hello` before anything else; without it the
    /// client gets `Error(Unauthorized)` and is disconnected. `None`: clients need none.
    pub token: Option<String>,
    /// TLS for clients (`--tls-cert`, `--tls-key`): each must complete a handshake within
    /// [`ServerLimits::frame_timeout`]; a plain-text client is refused with a log line.
    pub tls: Option<TlsServer>,
    /// Bounds on what clients may hold.
    pub limits: ServerLimits,
}

impl ServerConfig {
    /// A stand-alone primary at epoch 0 with default timings.
    pub fn new(upstream: SocketAddr, listen: SocketAddr) -> Self {
        ServerConfig {
            upstream,
            listen,
            role: Role::Primary,
            epoch: 0,
            name: None,
            heartbeat: DEFAULT_HEARTBEAT,
            token: None,
            tls: None,
            limits: ServerLimits::default(),
        }
    }
}

/// A snapshot of a server's state, for status lines, tests and metrics.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ServerStatus {
    /// Current role.
    pub role: Role,
    /// Current epoch.
    pub epoch: u64,
    /// Whether the exchange feed is connected now.
    pub upstream_connected: bool,
    /// Instruments in the book.
    pub instruments: usize,
    /// Distinct instruments with at least one subscriber (mirrored while standby).
    pub subscriptions: usize,
    /// Client subscriptions in total (one client × one instrument each).
    pub client_subscriptions: usize,
    /// Connected clients.
    pub clients: usize,
    /// Prices replaced before a slow client could be sent them (latest price wins).
    pub conflated_updates: u64,
    /// Prices waiting in client outboxes right now (bounded by their subscriptions).
    pub pending_updates: usize,
    /// Connections refused at accept: too many clients, in all or from one address.
    pub connections_refused: u64,
    /// Clients disconnected for not finishing a frame in time, or refused for lack of a token.
    pub clients_dropped: u64,
    /// Subscriptions refused because the cap before the instrument list was reached.
    pub subscriptions_refused: u64,
}

/// Runs a price server as an understudy service until a stop signal (SIGTERM or SIGINT).
///
/// Sets up the agent contract itself ([`understudy_sdk::init`]); a binary should rather call
/// `init` first in `main` and use [`run_price_server_with`], so that no thread exists before the
/// signals are blocked.
pub async fn run_price_server(upstream: SocketAddr, listen: SocketAddr) -> Result<(), Error> {
    let service = understudy_sdk::init().map_err(|e| Error::Config(e.to_string()))?;
    run_price_server_with(upstream, listen, None, None, None, service).await
}

/// Runs a price server under the agent contract of `service` until a stop signal: its role and
/// epoch at start (`active` publishes as the primary), the activation signal promotes a standby
/// with the epoch its agent reports. A standby that cannot learn that epoch does not promote
/// itself: it returns [`Error::Agent`], and the process should exit so that its agent fails over.
///
/// With `http`, the server also answers `GET /health` and `GET /status` there (see
/// [`serve_status_http`]), for the agent's `[health] http` check and for people. With `token`,
/// clients must present it (see [`ServerConfig::token`]); with `tls`, speak TLS (see
/// [`ServerConfig::tls`]).
pub async fn run_price_server_with(
    upstream: SocketAddr,
    listen: SocketAddr,
    http: Option<SocketAddr>,
    token: Option<String>,
    tls: Option<TlsServer>,
    mut service: understudy_sdk::Service,
) -> Result<(), Error> {
    let mut cfg = ServerConfig::new(upstream, listen);
    cfg.token = token;
    cfg.tls = tls;
    cfg.role = match service.role() {
        understudy_sdk::Role::Active => Role::Primary,
        understudy_sdk::Role::Standby => Role::Standby,
    };
    cfg.epoch = service.epoch();
    cfg.name = service.env().node.clone();
    let server = PriceServer::bind(cfg).await?;
    let handle = server.handle();
    let _http = match http {
        Some(addr) => {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|e| Error::io(format!("binding the status endpoint to {addr}"), e))?;
            Some(AbortOnDrop(tokio::spawn(serve_status_http(
                l,
                handle.clone(),
            ))))
        }
        None => None,
    };
    if service.role() == understudy_sdk::Role::Active {
        if let Err(e) = service.acknowledge_async().await {
            tracing::warn!("cannot acknowledge the activation: {e}");
        }
    }
    let mut shutdown = service.shutdown();
    let promoter = async move {
        loop {
            match service.next().await {
                Some(understudy_sdk::Notice::Activate) => {
                    let epoch = service.activate_async().await?;
                    if !handle.promote(epoch) {
                        tracing::error!(
                            epoch,
                            current = handle.status().epoch,
                            "refused promotion to a lower epoch"
                        );
                    }
                }
                // The shutdown arm below ends the server.
                Some(understudy_sdk::Notice::Stop) => {}
                None => std::future::pending::<()>().await,
            }
        }
    };
    tokio::select! {
        r = server.run() => r,
        r = promoter => r,
        _ = shutdown.requested() => {
            tracing::info!("stop requested");
            Ok(())
        }
    }
}

/// Longest request head the status endpoint reads.
const MAX_HTTP_REQUEST: usize = 8 * 1024;

/// A minimal HTTP/1.0 status endpoint: `GET /health` and `GET /status` answer 200 with the
/// server's [`ServerStatus`] as JSON, anything else 404. It answers from the server's own
/// runtime and state lock, so a hung or stopped server fails the agent's health check (a
/// `[health] http` check then makes the agent fail over). The feed being down is reported in
/// the body but is not unhealthy: every server of the group shares the feed, so failing over
/// for it would only move the problem.
pub async fn serve_status_http(listener: TcpListener, handle: ServerHandle) {
    loop {
        let (mut sock, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "status endpoint: accept failed");
                sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let mut req = Vec::with_capacity(512);
            let mut chunk = [0u8; 1024];
            // Read the request head; a peer that never finishes it is dropped after a second.
            let head = timeout(Duration::from_secs(1), async {
                while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < MAX_HTTP_REQUEST {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&chunk[..n]),
                    }
                }
            })
            .await;
            if head.is_err() {
                return;
            }
            let line = String::from_utf8_lossy(&req);
            let mut parts = line.split_whitespace();
            let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let (code, body) = match (method, path) {
                ("GET", "/health" | "/status") => (
                    "200 OK",
                    serde_json::to_string(&handle.status()).unwrap_or_else(|_| "{}".into()),
                ),
                _ => (
                    "404 Not Found",
                    r#"{"error":"GET /health or /status"}"#.to_string(),
                ),
            };
            let resp = format!(
                "HTTP/1.0 {code}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
            let _ = sock.shutdown().await;
        });
    }
}

/// A bound price server; [`PriceServer::run`] serves it.
pub struct PriceServer {
    listener: TcpListener,
    shared: Arc<Shared>,
}

/// A cheap, cloneable handle to control and observe a running server.
#[derive(Clone)]
pub struct ServerHandle {
    shared: Arc<Shared>,
}

struct Shared {
    name: String,
    token: Option<String>,
    tls: Option<TlsServer>,
    limits: ServerLimits,
    /// Connected clients per source address (admission at accept).
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    refused: AtomicU64,
    dropped: AtomicU64,
    subs_refused: AtomicU64,
    upstream: SocketAddr,
    heartbeat: Duration,
    state: Mutex<State>,
    upstream_connected: AtomicBool,
    conflated: AtomicU64,
    next_client: AtomicU64,
}

/// Everything that must change together. Lock order: `State`, then a client's `Outbox`.
struct State {
    role: Role,
    epoch: u64,
    book: HashMap<Arc<str>, Price>,
    /// The upstream has sent its full instrument list once: unknown symbols can be refused.
    book_loaded: bool,
    /// Instrument → subscribed clients, for fan-out.
    subscribers: HashMap<Arc<str>, HashSet<u64>>,
    /// Client subscriptions in total (the sum of the `subscribers` sets).
    client_subs: usize,
    clients: HashMap<u64, Arc<ClientSlot>>,
}

struct ClientSlot {
    peer: SocketAddr,
    /// Instruments this client subscribed to (guarded by the `State` lock).
    subs: Mutex<HashSet<Arc<str>>>,
    outbox: Mutex<Outbox>,
    wake: Notify,
}

/// What is waiting to be written to one client.
///
/// A client that keeps up gets every price, in order, through `queue`. Once `queue` holds
/// [`MAX_QUEUED_PRICES`] (the client's socket buffer is full and more keeps coming), the client
/// is behind: the queue is folded into `order`/`prices`, one latest price per instrument, and
/// stays there until the writer has taken it all. So memory is bounded by the queue limit plus
/// the client's subscriptions, and a slow client gets the latest prices, not old ones.
#[derive(Default)]
struct Outbox {
    control: VecDeque<Message>,
    heartbeat: Option<(Role, u64)>,
    /// Every price in order, while the client keeps up.
    queue: VecDeque<(Arc<str>, PendingPrice)>,
    /// True from the moment the queue overflowed until the writer takes the conflated prices.
    behind: bool,
    /// Instruments with a pending price, in the order they became pending (client behind).
    order: VecDeque<Arc<str>>,
    /// Latest pending price per instrument: at most one entry per subscribed instrument.
    prices: HashMap<Arc<str>, PendingPrice>,
    /// Close the connection once what is queued has been written.
    close: bool,
}

struct PendingPrice {
    snapshot: bool,
    /// `Update { epoch, price }` encoded once by [`protocol::price_frame`] and shared by every
    /// client it goes to; sent as a `Snapshot` when `snapshot` is set.
    frame: Bytes,
}

impl Outbox {
    /// Queues a price frame; returns the number of prices it replaced before they were sent
    /// (conflation: only once the client is behind).
    fn push_price(&mut self, snapshot: bool, symbol: &Arc<str>, frame: &Bytes) -> u64 {
        if !self.behind {
            if self.queue.len() < MAX_QUEUED_PRICES {
                self.queue.push_back((
                    symbol.clone(),
                    PendingPrice {
                        snapshot,
                        frame: frame.clone(),
                    },
                ));
                return 0;
            }
            // Behind: from now on the latest price per instrument wins.
            self.behind = true;
            let mut replaced = 0;
            for (sym, p) in std::mem::take(&mut self.queue) {
                replaced += u64::from(self.conflate(p.snapshot, &sym, &p.frame));
            }
            return replaced + u64::from(self.conflate(snapshot, symbol, frame));
        }
        u64::from(self.conflate(snapshot, symbol, frame))
    }

    /// Keeps one pending price per instrument; true when it replaced one.
    fn conflate(&mut self, snapshot: bool, symbol: &Arc<str>, frame: &Bytes) -> bool {
        match self.prices.get_mut(symbol) {
            Some(p) => {
                // A pending snapshot stays a snapshot: the client has not had a first price yet.
                p.snapshot |= snapshot;
                p.frame = frame.clone();
                true
            }
            None => {
                self.order.push_back(symbol.clone());
                self.prices.insert(
                    symbol.clone(),
                    PendingPrice {
                        snapshot,
                        frame: frame.clone(),
                    },
                );
                false
            }
        }
    }

    /// Drops what is pending for `symbol` (unsubscribed).
    fn forget(&mut self, symbol: &str) {
        self.queue.retain(|(s, _)| &**s != symbol);
        if self.prices.remove(symbol).is_some() {
            self.order.retain(|s| &**s != symbol);
        }
    }

    /// Drops every pending price (demoted: a standby publishes nothing).
    fn clear_prices(&mut self) {
        self.queue.clear();
        self.prices.clear();
        self.order.clear();
        self.behind = false;
    }

    /// Prices waiting to be written.
    fn pending(&self) -> usize {
        self.queue.len() + self.prices.len()
    }

    fn push_control(&mut self, m: Message) {
        if self.control.len() >= MAX_CONTROL_QUEUE {
            self.close = true;
        } else {
            self.control.push_back(m);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves its data consistent before anything that could panic, so
    // a poisoned lock is taken over rather than taking the whole server down.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl PriceServer {
    /// Binds the client listener. Nothing runs until [`PriceServer::run`].
    pub async fn bind(cfg: ServerConfig) -> Result<Self, Error> {
        let bind = || {
            let socket = match cfg.listen {
                SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
                SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
            }?;
            socket.set_reuseaddr(true)?;
            socket.set_send_buffer_size(CLIENT_SEND_BUFFER)?;
            socket.bind(cfg.listen)?;
            socket.listen(1024)
        };
        let listener =
            bind().map_err(|e| Error::io(format!("binding price-server to {}", cfg.listen), e))?;
        let name = match (cfg.name, listener.local_addr()) {
            (Some(n), _) => n,
            (None, Ok(a)) => a.to_string(),
            (None, Err(_)) => cfg.listen.to_string(),
        };
        Ok(PriceServer {
            listener,
            shared: Arc::new(Shared {
                name,
                token: cfg.token,
                tls: cfg.tls,
                limits: cfg.limits,
                per_ip: Mutex::new(HashMap::new()),
                refused: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
                subs_refused: AtomicU64::new(0),
                upstream: cfg.upstream,
                heartbeat: cfg.heartbeat,
                state: Mutex::new(State {
                    role: cfg.role,
                    epoch: cfg.epoch,
                    book: HashMap::new(),
                    book_loaded: false,
                    subscribers: HashMap::new(),
                    client_subs: 0,
                    clients: HashMap::new(),
                }),
                upstream_connected: AtomicBool::new(false),
                conflated: AtomicU64::new(0),
                next_client: AtomicU64::new(1),
            }),
        })
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> Result<SocketAddr, Error> {
        self.listener
            .local_addr()
            .map_err(|e| Error::io("reading price-server address", e))
    }

    /// A handle for promotion, demotion and status.
    pub fn handle(&self) -> ServerHandle {
        ServerHandle {
            shared: self.shared.clone(),
        }
    }

    /// Serves until cancelled: upstream connection, heartbeats, status lines and clients.
    pub async fn run(self) -> Result<(), Error> {
        let shared = self.shared;
        let s = shared.status();
        tracing::info!(addr = ?self.listener.local_addr().ok(), role = %s.role, epoch = s.epoch,
            upstream = %shared.upstream, "price-server listening");
        let _upstream = AbortOnDrop(tokio::spawn(upstream_loop(shared.clone())));
        let _ticker = AbortOnDrop(tokio::spawn(ticker(shared.clone())));
        // Connection tasks live in a JoinSet so that cancelling `run` closes every client.
        let mut conns = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((sock, peer)) => match Admission::new(&shared, peer.ip()) {
                        Ok(admitted) => {
                            conns.spawn(serve_client(shared.clone(), sock, peer, admitted));
                        }
                        Err(why) => {
                            shared.refused.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(%peer, why, "client refused");
                            // One best-effort write, never a task per refusal: a flood of
                            // connections must cost nothing but the accept.
                            let e = Message::Error {
                                epoch: shared.status_epoch(),
                                req_id: 0,
                                code: ErrorCode::Other(ERROR_TOO_MANY_CLIENTS),
                                symbol: String::new(),
                                message: why.to_string(),
                            };
                            if let Ok(frame) = e.to_frame() {
                                let _ = sock.try_write(&frame);
                            }
                        }
                    },
                    Err(e) => {
                        // Transient (e.g. out of file descriptors): keep serving existing clients.
                        tracing::warn!(error = %e, "accept failed");
                        sleep(Duration::from_millis(10)).await;
                    }
                },
                Some(_) = conns.join_next() => {}
            }
        }
    }
}

impl ServerHandle {
    /// Makes this server the primary at `epoch` and publishes at once to every subscriber: a
    /// `RoleChange`, then a snapshot of each subscribed instrument. Returns false (and changes
    /// nothing) if `epoch` is lower than the current one, which would break fencing.
    pub fn promote(&self, epoch: u64) -> bool {
        self.shared.set_role(Role::Primary, epoch)
    }

    /// Makes this server a standby again (it stops publishing at once), keeping its epoch.
    pub fn demote(&self) {
        let epoch = lock(&self.shared.state).epoch;
        self.shared.set_role(Role::Standby, epoch);
    }

    /// The current status.
    pub fn status(&self) -> ServerStatus {
        self.shared.status()
    }
}

/// Error code sent to a connection refused at accept (too many clients).
pub const ERROR_TOO_MANY_CLIENTS: u16 = 5;

/// A client's place in the connection limits, given back when it disconnects.
struct Admission {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl Admission {
    fn new(shared: &Arc<Shared>, ip: IpAddr) -> Result<Self, &'static str> {
        let mut per_ip = lock(&shared.per_ip);
        let total: usize = per_ip.values().sum();
        if total >= shared.limits.max_clients {
            return Err("too many clients connected to this price server");
        }
        let n = per_ip.entry(ip).or_insert(0);
        if *n >= shared.limits.max_clients_per_ip {
            return Err("too many clients connected from this address");
        }
        *n += 1;
        Ok(Admission {
            shared: shared.clone(),
            ip,
        })
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut per_ip = lock(&self.shared.per_ip);
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

impl Shared {
    fn status_epoch(&self) -> u64 {
        lock(&self.state).epoch
    }

    fn set_role(&self, role: Role, epoch: u64) -> bool {
        let mut st = lock(&self.state);
        if epoch < st.epoch {
            return false;
        }
        if st.role == role && st.epoch == epoch {
            return true;
        }
        st.role = role;
        st.epoch = epoch;
        let mut snapshots = 0usize;
        // Each instrument's snapshot is encoded once, whatever the number of subscribers.
        let mut frames: HashMap<Arc<str>, Bytes> = HashMap::new();
        for client in st.clients.values() {
            let subs = lock(&client.subs);
            let mut out = lock(&client.outbox);
            // The role change supersedes any heartbeat still carrying the old role.
            out.heartbeat = None;
            out.push_control(Message::RoleChange { role, epoch });
            match role {
                Role::Primary => {
                    for sym in subs.iter() {
                        let Some(p) = st.book.get(sym) else { continue };
                        let frame = match frames.get(sym) {
                            Some(f) => f.clone(),
                            None => match encode_price(epoch, p) {
                                Some(f) => {
                                    frames.insert(sym.clone(), f.clone());
                                    f
                                }
                                None => continue,
                            },
                        };
                        let replaced = out.push_price(true, sym, &frame);
                        self.conflated.fetch_add(replaced, Ordering::Relaxed);
                        snapshots += 1;
                    }
                }
                Role::Standby => {
                    out.clear_prices();
                }
            }
            drop(out);
            client.wake.notify_one();
        }
        tracing::info!(%role, epoch, clients = st.clients.len(), snapshots, "role changed");
        true
    }

    fn status(&self) -> ServerStatus {
        let st = lock(&self.state);
        let pending_updates = st.clients.values().map(|c| lock(&c.outbox).pending()).sum();
        ServerStatus {
            role: st.role,
            epoch: st.epoch,
            upstream_connected: self.upstream_connected.load(Ordering::Relaxed),
            instruments: st.book.len(),
            subscriptions: st.subscribers.values().filter(|s| !s.is_empty()).count(),
            client_subscriptions: st.subscribers.values().map(HashSet::len).sum(),
            clients: st.clients.len(),
            conflated_updates: self.conflated.load(Ordering::Relaxed),
            pending_updates,
            connections_refused: self.refused.load(Ordering::Relaxed),
            clients_dropped: self.dropped.load(Ordering::Relaxed),
            subscriptions_refused: self.subs_refused.load(Ordering::Relaxed),
        }
    }

    /// Applies a burst of upstream prices (everything one read brought) and, if primary, fans
    /// them out. One lock for the burst, and each client is woken once after it, so its writer
    /// sends the whole burst in one write instead of one write per price.
    fn apply_batch(&self, batch: &mut Vec<(Price, bool)>) {
        if batch.is_empty() {
            return;
        }
        let mut woken: HashSet<u64> = HashSet::new();
        let mut st = lock(&self.state);
        for (price, snapshot) in batch.drain(..) {
            let key = match st.book.get_key_value(&price.symbol) {
                Some((k, old)) => {
                    // An update older than what we hold is a replay; a snapshot always resets
                    // (the exchange may have restarted its sequences).
                    if !snapshot && price.exch_seq <= old.exch_seq {
                        continue;
                    }
                    k.clone()
                }
                None => price.symbol.clone(),
            };
            // Share one allocation of the symbol between book, index and outboxes.
            let price = Price {
                symbol: key.clone(),
                ..price
            };
            if st.role == Role::Primary {
                if let Some(ids) = st.subscribers.get(&key).filter(|ids| !ids.is_empty()) {
                    if let Some(frame) = encode_price(st.epoch, &price) {
                        for id in ids {
                            if let Some(c) = st.clients.get(id) {
                                let replaced = lock(&c.outbox).push_price(false, &key, &frame);
                                self.conflated.fetch_add(replaced, Ordering::Relaxed);
                                woken.insert(*id);
                            }
                        }
                    }
                }
            }
            st.book.insert(key, price);
        }
        for id in woken {
            if let Some(c) = st.clients.get(&id) {
                c.wake.notify_one();
            }
        }
    }

    /// The upstream sent its whole instrument list: refuse subscriptions made before it that
    /// name unknown instruments.
    fn book_complete(&self) {
        let mut st = lock(&self.state);
        if st.book_loaded {
            return;
        }
        st.book_loaded = true;
        let unknown: Vec<Arc<str>> = st
            .subscribers
            .keys()
            .filter(|s| !st.book.contains_key(*s))
            .cloned()
            .collect();
        for sym in unknown {
            let ids = st.subscribers.remove(&sym).unwrap_or_default();
            for id in ids {
                if let Some(c) = st.clients.get(&id) {
                    lock(&c.subs).remove(&sym);
                    lock(&c.outbox).push_control(unknown_instrument(st.epoch, 0, &sym));
                    c.wake.notify_one();
                }
            }
        }
    }

    fn subscribe(&self, id: u64, req_id: u32, symbols: Vec<String>) {
        let mut st = lock(&self.state);
        let Some(client) = st.clients.get(&id).cloned() else {
            return;
        };
        let mut subs = lock(&client.subs);
        let mut out = lock(&client.outbox);
        for sym in symbols {
            let key: Arc<str> = match st.book.get_key_value(sym.as_str()) {
                Some((k, _)) => k.clone(),
                None if !st.book_loaded && subs.contains(sym.as_str()) => Arc::from(sym.as_str()),
                None if !st.book_loaded
                    && subs.len() < MAX_SUBSCRIPTIONS_PER_CLIENT
                    && st.client_subs < self.limits.max_unlisted_subscriptions =>
                {
                    Arc::from(sym.as_str())
                }
                None if !st.book_loaded => {
                    // Until the instrument list is known nothing can be refused as unknown:
                    // the cap keeps a flood of made-up symbols from growing our memory.
                    self.subs_refused.fetch_add(1, Ordering::Relaxed);
                    out.push_control(Message::Error {
                        epoch: st.epoch,
                        req_id,
                        code: ErrorCode::Other(ERROR_TOO_MANY_SUBSCRIPTIONS),
                        symbol: sym.clone(),
                        message: "too many subscriptions before the instrument list is known; try again later".into(),
                    });
                    continue;
                }
                None => {
                    out.push_control(unknown_instrument(st.epoch, req_id, &sym));
                    continue;
                }
            };
            if subs.insert(key.clone()) {
                st.client_subs = st.client_subs.saturating_add(1);
            }
            st.subscribers.entry(key.clone()).or_default().insert(id);
            // A (re)subscription always gets the current price at once, even if already held:
            // a client resending its subscriptions after a failover wants a fresh snapshot.
            if st.role == Role::Primary {
                if let Some(frame) = st.book.get(&key).and_then(|p| encode_price(st.epoch, p)) {
                    let replaced = out.push_price(true, &key, &frame);
                    self.conflated.fetch_add(replaced, Ordering::Relaxed);
                }
            }
        }
        drop(out);
        drop(subs);
        client.wake.notify_one();
    }

    fn unsubscribe(&self, id: u64, symbols: Vec<String>) {
        let mut st = lock(&self.state);
        let Some(client) = st.clients.get(&id).cloned() else {
            return;
        };
        let mut subs = lock(&client.subs);
        let mut out = lock(&client.outbox);
        for sym in symbols {
            if subs.remove(sym.as_str()) {
                st.client_subs = st.client_subs.saturating_sub(1);
                if let Some(set) = st.subscribers.get_mut(sym.as_str()) {
                    set.remove(&id);
                    if set.is_empty() {
                        st.subscribers.remove(sym.as_str());
                    }
                }
                // Keeps what is pending bounded by the subscriptions, however often a client
                // subscribes and unsubscribes without reading.
                out.forget(&sym);
            }
        }
    }

    fn register(&self, peer: SocketAddr) -> (u64, Arc<ClientSlot>) {
        let id = self.next_client.fetch_add(1, Ordering::Relaxed);
        let mut st = lock(&self.state);
        let mut outbox = Outbox::default();
        // Under the state lock, so no role change can slip between this Hello and the next one.
        outbox.control.push_back(Message::Hello {
            role: st.role,
            epoch: st.epoch,
            server: self.name.clone(),
            token: None,
        });
        let slot = Arc::new(ClientSlot {
            peer,
            subs: Mutex::new(HashSet::new()),
            outbox: Mutex::new(outbox),
            wake: Notify::new(),
        });
        st.clients.insert(id, slot.clone());
        (id, slot)
    }

    fn unregister(&self, id: u64) {
        let mut st = lock(&self.state);
        if let Some(c) = st.clients.remove(&id) {
            let subs = std::mem::take(&mut *lock(&c.subs));
            st.client_subs = st.client_subs.saturating_sub(subs.len());
            for sym in subs {
                if let Some(set) = st.subscribers.get_mut(&sym) {
                    set.remove(&id);
                    if set.is_empty() {
                        st.subscribers.remove(&sym);
                    }
                }
            }
        }
    }

    fn reply_error(&self, slot: &ClientSlot, code: ErrorCode, req_id: u32, message: String) {
        let epoch = lock(&self.state).epoch;
        lock(&slot.outbox).push_control(Message::Error {
            epoch,
            req_id,
            code,
            symbol: String::new(),
            message,
        });
        slot.wake.notify_one();
    }
}

/// The shared frame of a price; `None` (logged) if it cannot be encoded, which a price taken
/// from a decoded feed never triggers.
fn encode_price(epoch: u64, price: &Price) -> Option<Bytes> {
    match protocol::price_frame(epoch, price) {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::error!(symbol = %price.symbol, error = %e, "cannot encode price");
            None
        }
    }
}

/// Error code of a subscription refused by [`ServerLimits::max_unlisted_subscriptions`].
pub const ERROR_TOO_MANY_SUBSCRIPTIONS: u16 = 6;

fn unknown_instrument(epoch: u64, req_id: u32, sym: &str) -> Message {
    Message::Error {
        epoch,
        req_id,
        code: ErrorCode::UnknownInstrument,
        symbol: sym.to_string(),
        message: format!("unknown instrument {sym:?}"),
    }
}

/// Heartbeats to every client, and the periodic status line.
async fn ticker(shared: Arc<Shared>) {
    let mut hb = interval(shared.heartbeat);
    hb.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut last_log = tokio::time::Instant::now();
    loop {
        hb.tick().await;
        {
            let st = lock(&shared.state);
            for c in st.clients.values() {
                lock(&c.outbox).heartbeat = Some((st.role, st.epoch));
                c.wake.notify_one();
            }
        }
        if last_log.elapsed() >= STATUS_LOG_EVERY {
            last_log = tokio::time::Instant::now();
            let s = shared.status();
            tracing::info!(
                role = %s.role,
                epoch = s.epoch,
                upstream = if s.upstream_connected { "connected" } else { "DISCONNECTED" },
                instruments = s.instruments,
                subscriptions = s.subscriptions,
                clients = s.clients,
                conflated = s.conflated_updates,
                "price-server status: {} epoch {}, upstream {}, {} subscriptions {}",
                s.role,
                s.epoch,
                if s.upstream_connected { "connected" } else { "disconnected" },
                s.subscriptions,
                if s.role == Role::Standby { "mirrored" } else { "published" },
            );
        }
    }
}

/// Keeps a connection to the exchange, reconnecting with backoff, and feeds the book.
async fn upstream_loop(shared: Arc<Shared>) {
    let mut backoff = UPSTREAM_BACKOFF_MIN;
    let mut failures = 0u32;
    loop {
        match timeout(Duration::from_secs(1), TcpStream::connect(shared.upstream)).await {
            Ok(Ok(sock)) => {
                let _ = sock.set_nodelay(true);
                shared.upstream_connected.store(true, Ordering::Relaxed);
                tracing::info!(upstream = %shared.upstream, "upstream connected");
                backoff = UPSTREAM_BACKOFF_MIN;
                failures = 0;
                let reason = read_upstream(&shared, sock).await;
                shared.upstream_connected.store(false, Ordering::Relaxed);
                tracing::warn!(upstream = %shared.upstream, reason, "upstream lost; reconnecting");
            }
            Ok(Err(e)) => {
                failures += 1;
                if failures.is_power_of_two() {
                    tracing::warn!(upstream = %shared.upstream, error = %e, "cannot connect to upstream");
                }
            }
            Err(_) => tracing::warn!(upstream = %shared.upstream, "upstream connect timed out"),
        }
        sleep(backoff).await;
        backoff = (backoff * 2).min(UPSTREAM_BACKOFF_MAX);
    }
}

async fn read_upstream(shared: &Shared, mut sock: TcpStream) -> String {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut batch: Vec<(Price, bool)> = Vec::with_capacity(256);
    loop {
        let first = match timeout(UPSTREAM_SILENCE, read_frame(&mut sock, &mut buf)).await {
            Err(_) => return format!("silent for {UPSTREAM_SILENCE:?}"),
            Ok(Err(e)) => return e.to_string(),
            Ok(Ok(None)) => return "closed by the exchange".into(),
            Ok(Ok(Some(f))) => f,
        };
        // Take every frame this read brought, so that the burst is fanned out as one.
        let mut next = Some(first);
        while let Some(frame) = next.take() {
            match Message::decode(&frame) {
                Ok(Message::Update { price, .. }) => batch.push((price, false)),
                Ok(Message::Snapshot { price, .. }) => batch.push((price, true)),
                Ok(Message::SnapshotComplete { .. }) => {
                    // The book must hold every listed instrument before unknown ones are refused.
                    shared.apply_batch(&mut batch);
                    shared.book_complete();
                }
                Ok(_) => {}
                // One bad frame from the feed is skipped; framing is intact.
                Err(e) => tracing::warn!(error = %e, "bad frame from upstream"),
            }
            next = match split_frame(&mut buf) {
                Ok(f) => f,
                Err(e) => {
                    shared.apply_batch(&mut batch);
                    return format!("framing lost: {e}");
                }
            };
        }
        shared.apply_batch(&mut batch);
    }
}

/// One client connection, after its TLS handshake when the server speaks TLS.
async fn serve_client(shared: Arc<Shared>, sock: TcpStream, peer: SocketAddr, admitted: Admission) {
    let _ = sock.set_nodelay(true);
    let Some(tls) = shared.tls.clone() else {
        // A TCP stream splits without a lock between its halves; TLS needs one.
        let (rd, wr) = sock.into_split();
        return serve_conn(shared, rd, wr, peer, admitted).await;
    };
    match tls.accept(sock, shared.limits.frame_timeout, false).await {
        Ok(stream) => {
            let (rd, wr) = tokio::io::split(stream);
            serve_conn(shared, rd, wr, peer, admitted).await
        }
        Err(understudy_tls::Refused::Closed) => {
            tracing::debug!(%peer, "connection closed before a TLS handshake");
        }
        Err(e) => {
            shared.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, "client refused: {e}");
        }
    }
}

/// A reader applying requests and a writer draining the outbox.
async fn serve_conn<R, W>(
    shared: Arc<Shared>,
    mut rd: R,
    wr: W,
    peer: SocketAddr,
    _admitted: Admission,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (id, slot) = shared.register(peer);
    tracing::debug!(%peer, id, "client connected");
    // Says why, then closes once the writer has flushed the reply.
    let close_with = |code: ErrorCode, why: String| {
        shared.reply_error(&slot, code, 0, why);
        lock(&slot.outbox).close = true;
        slot.wake.notify_one();
    };
    let reader = async {
        let mut buf = BytesMut::with_capacity(4096);
        let mut authenticated = shared.token.is_none();
        loop {
            let frame =
                match read_frame_within(&mut rd, &mut buf, shared.limits.frame_timeout).await {
                    Ok(Some(f)) => f,
                    Ok(None) => return "closed by client".to_string(),
                    Err(e @ ReadError::Stalled(_)) => {
                        shared.dropped.fetch_add(1, Ordering::Relaxed);
                        return e.to_string();
                    }
                    Err(ReadError::Framing(e)) => {
                        // The stream cannot be split into frames any more.
                        close_with(ErrorCode::MalformedFrame, e.to_string());
                        std::future::pending::<()>().await;
                        return String::new();
                    }
                    Err(e) => return e.to_string(),
                };
            let msg = Message::decode(&frame);
            if !authenticated {
                let presented = match &msg {
                    Ok(Message::Hello { token, .. }) => token.as_deref(),
                    _ => None,
                };
                let want = shared.token.as_deref().unwrap_or_default();
                if !presented.is_some_and(|t| same_secret(t.as_bytes(), want.as_bytes())) {
                    let why = match presented {
                        Some(_) => "wrong token in Hello",
                        None => "this price server needs a token: send Hello with it first",
                    };
                    tracing::warn!(%peer, why, "client refused");
                    shared.dropped.fetch_add(1, Ordering::Relaxed);
                    close_with(ErrorCode::Unauthorized, why.to_string());
                    std::future::pending::<()>().await;
                    return String::new();
                }
                authenticated = true;
                continue;
            }
            match msg {
                Ok(Message::Subscribe { req_id, symbols }) => shared.subscribe(id, req_id, symbols),
                Ok(Message::Unsubscribe { symbols, .. }) => shared.unsubscribe(id, symbols),
                // Clients may heartbeat too; the TCP connection already tells us they are gone.
                // A Hello only matters for its token (checked above when one is required).
                Ok(Message::Heartbeat { .. } | Message::Hello { .. }) => {}
                Ok(other) => shared.reply_error(
                    &slot,
                    ErrorCode::UnexpectedMessage,
                    0,
                    format!("a client may not send {}", message_name(&other)),
                ),
                Err(e) => shared.reply_error(&slot, ErrorCode::MalformedFrame, 0, e.to_string()),
            }
        }
    };
    let writer = write_client(&slot, wr);
    let reason = tokio::select! {
        r = reader => r,
        w = writer => w,
    };
    shared.unregister(id);
    tracing::debug!(peer = %slot.peer, id, reason, "client disconnected");
}

async fn write_client<W: AsyncWrite + Unpin>(slot: &ClientSlot, mut wr: W) -> String {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    // Swapped with the outbox's on every round, so neither side reallocates in steady state.
    let mut control: VecDeque<Message> = VecDeque::new();
    let mut queue: VecDeque<(Arc<str>, PendingPrice)> = VecDeque::new();
    let mut order: VecDeque<Arc<str>> = VecDeque::new();
    let mut prices: HashMap<Arc<str>, PendingPrice> = HashMap::new();
    loop {
        let (heartbeat, close) = {
            let mut out = lock(&slot.outbox);
            std::mem::swap(&mut control, &mut out.control);
            std::mem::swap(&mut queue, &mut out.queue);
            std::mem::swap(&mut order, &mut out.order);
            // Everything conflated is taken: the client may get every price again.
            out.behind = false;
            std::mem::swap(&mut prices, &mut out.prices);
            (out.heartbeat.take(), out.close)
        };
        let idle =
            control.is_empty() && heartbeat.is_none() && queue.is_empty() && order.is_empty();
        if let Some((role, epoch)) = heartbeat {
            encode_into(&mut buf, &Message::Heartbeat { role, epoch });
        }
        for m in control.drain(..) {
            encode_into(&mut buf, &m);
        }
        // While behind, `queue` is empty; otherwise `order` is: prices leave in arrival order.
        for (_, p) in queue.drain(..) {
            protocol::put_price_frame(&mut buf, &p.frame, p.snapshot);
        }
        for sym in order.drain(..) {
            if let Some(p) = prices.remove(&sym) {
                protocol::put_price_frame(&mut buf, &p.frame, p.snapshot);
            }
        }
        prices.clear();
        if !buf.is_empty() {
            // While this write blocks (slow client), new prices accumulate, conflated, in the
            // outbox; nobody else waits for us.
            // The flush matters over TLS only: it pushes out what rustls still buffers.
            if let Err(e) = wr.write_all(&buf).await {
                return format!("write failed: {e}");
            }
            if let Err(e) = wr.flush().await {
                return format!("write failed: {e}");
            }
            buf.clear();
        }
        if close {
            let _ = wr.shutdown().await;
            return "closed after protocol error".into();
        }
        if idle {
            slot.wake.notified().await;
        }
    }
}

/// Compares two secrets in time that depends on their lengths only, not on where they differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for (i, x) in a.iter().enumerate() {
        diff |= x ^ b.get(i).copied().unwrap_or(!x);
    }
    diff == 0
}

fn encode_into(buf: &mut BytesMut, m: &Message) {
    // Everything we send was built from validated input, so this cannot fail; if it ever did,
    // dropping the message is better than dropping the client.
    if let Err(e) = m.encode(buf) {
        tracing::error!(error = %e, "cannot encode message to client");
    }
}

fn message_name(m: &Message) -> &'static str {
    match m {
        Message::Hello { .. } => "Hello",
        Message::RoleChange { .. } => "RoleChange",
        Message::Heartbeat { .. } => "Heartbeat",
        Message::Subscribe { .. } => "Subscribe",
        Message::Unsubscribe { .. } => "Unsubscribe",
        Message::Snapshot { .. } => "Snapshot",
        Message::Update { .. } => "Update",
        Message::SnapshotComplete { .. } => "SnapshotComplete",
        Message::Error { .. } => "Error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(sym: &str, seq: u64) -> (Arc<str>, Bytes) {
        let symbol: Arc<str> = Arc::from(sym);
        let p = Price {
            symbol: symbol.clone(),
            bid: 1.0,
            ask: 2.0,
            bid_size: 1,
            ask_size: 1,
            exch_seq: seq,
            exch_time_ns: 0,
        };
        (symbol, protocol::price_frame(1, &p).expect("encode"))
    }

    #[test]
    fn a_client_that_keeps_up_gets_every_price_in_order() {
        let mut out = Outbox::default();
        for seq in 0..10 {
            let (s, f) = frame(if seq % 2 == 0 { "A" } else { "B" }, seq);
            assert_eq!(out.push_price(false, &s, &f), 0);
        }
        assert_eq!(out.queue.len(), 10);
        assert!(!out.behind);
        assert_eq!(out.pending(), 10);
    }

    #[test]
    fn a_client_that_falls_behind_gets_the_latest_price_per_instrument() {
        let mut out = Outbox::default();
        let mut replaced = 0;
        for seq in 0..(MAX_QUEUED_PRICES as u64 + 10) {
            let (s, f) = frame(&format!("S{}", seq % 3), seq);
            replaced += out.push_price(false, &s, &f);
        }
        assert!(out.behind);
        assert!(out.queue.is_empty());
        assert_eq!(out.pending(), 3, "one pending price per instrument");
        assert_eq!(replaced, MAX_QUEUED_PRICES as u64 + 10 - 3);
        // The latest price won.
        let last = out.prices.get("S0").expect("pending");
        let last_s0 = (0..MAX_QUEUED_PRICES as u64 + 10)
            .filter(|s| s % 3 == 0)
            .max();
        let m = Message::decode(&last.frame[4..]).expect("decode");
        assert!(matches!(m, Message::Update { price, .. } if Some(price.exch_seq) == last_s0));
        // Unsubscribing drops what is pending for the instrument.
        out.forget("S0");
        assert_eq!(out.pending(), 2);
        assert_eq!(out.order.len(), 2);
    }
}
