//! The tokio transport: one event loop that owns every [`Session`] of a process and drives
//! them over TCP, as acceptor (one listening port, sessions told apart by their CompIDs) and
//! as initiator (a list of addresses tried in turn, so a counterparty configured with both
//! replicas of a group finds the active one).
//!
//! # Why one loop owns every session
//!
//! A FIX hub routes a message received on one session to another session. With all sessions
//! in one loop, the application's answer to a delivered message is stored (and queued for
//! writing) on the target session before the loop reads the next frame, with no channel in
//! between where a message could wait unstored. Socket reads and writes run in small tasks
//! per connection that only move bytes; all protocol state stays here.
//!
//! Store writes run on the loop itself. With [`SyncPolicy::Group`](crate::store::SyncPolicy)
//! stores a write only reaches the page cache and the process's
//! [`GroupCommit`] syncer makes it durable on its own thread; the loop then holds
//! what it would send (and the received sequence numbers a [`Deferred`](crate::store::Deferred)
//! store commits) until the syncer reports every record written before it durable, and
//! meanwhile reads and stores the next messages, which join the next batch; with nothing
//! left to read it runs the pass itself (see [`GroupCommit::sync_now`]). With the other
//! policies a write is as durable as its policy makes it when it returns, and bytes go out
//! at once.
//!
//! # Session schedules
//!
//! A session whose [`crate::schedule::SessionSchedule`] is closed does not connect
//! (initiator; the tick starts connecting when it opens) and refuses a Logon by closing the
//! connection (acceptor). A logged-on session is logged out at the end of its period, and
//! its store is reset into the next period when that starts (see [`Session::on_timer`]).
//!
//! # Limits
//!
//! A connection is anonymous until its first frame, a Logon, names a session; until then it
//! gets little: at most [`MAX_PRELOGON_CONNECTIONS`] such connections at once (more are
//! closed at accept), frames of at most [`PRELOGON_MAX_BODY`] bytes, and
//! [`DEFAULT_LOGON_TIMEOUT`] from the accept — not from the first complete frame — to log
//! on. Each connection's unsent bytes are bounded by [`MAX_WRITE_QUEUE_BYTES`]; a
//! counterparty that lets more pile up (e.g. asking for resends it does not read), or that
//! reads nothing for [`WRITE_STALL_TIMEOUT`] while we have bytes for it, is a slow consumer:
//! it gets a Logout saying so and is disconnected. [`Engine::counters`] counts both. What a
//! connection sends us waits for the loop up to [`MAX_READ_QUEUE_BYTES`]; beyond that its
//! reader stops reading and TCP flow control holds the counterparty back.
//!
//! # TLS
//!
//! An acceptor given [`Engine::with_tls`] accepts only TLS: each handshake runs in a task of
//! its own, on the process's one handshake thread rather than the loop's (see
//! `handshake_runtime`), at most [`MAX_PRELOGON_CONNECTIONS`] at once, each within the logon
//! timeout; a connection whose first byte is not a TLS handshake — a plain FIX client — is
//! closed with a log line saying so and counted as refused. An initiator slot with
//! [`SessionSlot::tls`] completes a handshake with each address it connects to (within
//! [`TLS_CONNECT_TIMEOUT`]); a failed one is logged and the next address is tried.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use understudy_tls::{Refused, Stream, TlsClient, TlsServer};

use crate::admin::{Health, Probe, SessionHealth};
use crate::codec::{parse, Deframer, MessageBuilder, DEFAULT_MAX_BODY_LENGTH};
use crate::session::{
    Action, Again, AppMessage, DisconnectReason, Role, SendError, Session, SessionEvent, State,
    RESEND_PIECE_BYTES,
};
use crate::store::{GroupCommit, SessionId, SessionStore, StoreError, StoreMark};
use crate::tags::{self, msg_type, BeginString, SessionRejectReason};

/// Most connections at once that have not yet named their session with a Logon.
pub const MAX_PRELOGON_CONNECTIONS: usize = 64;

/// Largest body accepted before a connection has logged on: a Logon is a few hundred bytes.
pub const PRELOGON_MAX_BODY: usize = 4096;

/// Time from accepting a connection to its first frame naming a session.
pub const DEFAULT_LOGON_TIMEOUT: Duration = Duration::from_secs(10);

/// Most bytes written to a connection and not yet taken by the kernel.
pub const MAX_WRITE_QUEUE_BYTES: usize = 8 << 20;

/// Most bytes read from a connection and not yet handled by the loop. Once less than the
/// least a read costs (1 KiB) is left, the connection's reader stops reading, so TCP flow
/// control holds the counterparty back while the loop is busy (a pass on a stalled disk, a
/// burst from many sessions) instead of the bytes piling up in memory.
pub const MAX_READ_QUEUE_BYTES: usize = 1 << 20;

/// Bytes one read of a connection takes at most.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// The read budget of a connection that has not named its session yet: one chunk. Anonymous
/// connections get little (see "Limits"); the rest is added when a Logon binds a session.
const PRELOGON_READ_BYTES: usize = READ_CHUNK_BYTES;

/// What one read costs of the budget at least: a read of a few bytes still costs an event,
/// an allocation and a queue node (over TLS a read returns one record, which a peer can make
/// one byte long), so tiny reads cannot queue a hundred times the budget.
const MIN_READ_CHARGE: usize = 1024;

const _: () = assert!(
    PRELOGON_READ_BYTES <= MAX_READ_QUEUE_BYTES
        && READ_CHUNK_BYTES <= PRELOGON_READ_BYTES
        && MIN_READ_CHARGE <= READ_CHUNK_BYTES
        && READ_CHUNK_BYTES <= u32::MAX as usize
);

/// Longest a single write may wait for the counterparty to read.
pub const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection's writer joins queued buffers into one write up to about this many bytes.
const WRITE_COALESCE_BYTES: usize = 64 * 1024;

/// How often a shutdown waiting for its last records to be durable looks whether a standby
/// has gone meanwhile.
const SHUTDOWN_POLL: Duration = Duration::from_millis(10);

/// Time an initiator gives the counterparty to complete a TLS handshake.
pub const TLS_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What the engine refused or dropped to protect itself, since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Connections closed at accept (too many anonymous connections) or before naming a
    /// session (logon timeout, unknown session, second connection for a session).
    pub connections_refused: u64,
    /// Connections dropped because the counterparty did not read what we sent.
    pub slow_consumers_dropped: u64,
    /// Times a connection's reader stopped reading because [`MAX_READ_QUEUE_BYTES`] (or
    /// [`PRELOGON_READ_BYTES`] before its Logon) were waiting for the loop: the loop was
    /// behind, and TCP held that counterparty back.
    pub reads_held_back: u64,
}

/// Errors that end [`Engine::run`].
#[derive(Debug, Error)]
pub enum EngineError {
    /// A newer epoch owns a session store: this replica is stale and must stop sending.
    #[error("session {session}: store fenced by a newer active: {text}")]
    Fenced {
        /// The session whose store refused.
        session: String,
        /// The store's error.
        text: String,
    },
    /// A session store failed (I/O, corruption): continuing could lose messages.
    #[error("session {session}: store failed: {text}")]
    Store {
        /// The session.
        session: String,
        /// Detail.
        text: String,
    },
    /// The listening socket failed.
    #[error("accepting connections failed: {0}")]
    Accept(std::io::Error),
    /// The loop's task panicked or was cancelled (see [`Engine::run_on_worker`]).
    #[error("the engine task ended abnormally: {0}")]
    Task(String),
}

/// One session handed to the engine.
pub struct SessionSlot<S: SessionStore> {
    /// A name for logs and for the application (e.g. the counterparty's CompID).
    pub name: String,
    /// The session, with its store already open.
    pub session: Session<S>,
    /// Initiator: the addresses to connect to, tried in turn. Ignored for acceptors.
    pub connect: Vec<SocketAddr>,
    /// Initiator: pause after every address of `connect` refused.
    pub reconnect_interval: Duration,
    /// Acceptor: the addresses the counterparty may log on from (anywhere when empty); a
    /// Logon from another is closed with nothing sent.
    pub allowed_peers: AllowedPeers,
    /// Initiator: TLS towards the counterparty (plain TCP when `None`).
    pub tls: Option<TlsClient>,
}

/// The source addresses an acceptor session may be logged on from: single addresses and CIDR
/// blocks (`10.1.0.0/16`, `::1`), IPv4 or IPv6. Empty allows every address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedPeers {
    nets: Vec<(IpAddr, u8)>,
}

impl AllowedPeers {
    /// Parses `items`; the error names the first one that is neither an address nor a block.
    pub fn parse<S: AsRef<str>>(items: &[S]) -> Result<Self, String> {
        let mut nets = Vec::with_capacity(items.len());
        for item in items {
            let item = item.as_ref().trim();
            let bad =
                || format!("{item:?} is not an IP address or a CIDR block such as 10.0.0.0/8");
            let (addr, len) = match item.split_once('/') {
                Some((a, l)) if !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()) => {
                    (a, Some(l.parse::<u8>().map_err(|_| bad())?))
                }
                Some(_) => return Err(bad()),
                None => (item, None),
            };
            let ip = addr.parse::<IpAddr>().map_err(|_| bad())?.to_canonical();
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let len = len.unwrap_or(max);
            if len > max {
                return Err(bad());
            }
            nets.push((ip, len));
        }
        Ok(AllowedPeers { nets })
    }

    /// True when `ip` may log on (an IPv4 address seen on an IPv6 socket counts as IPv4).
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets.is_empty()
            || self.nets.iter().any(|&(net, len)| match (net, ip) {
                (IpAddr::V4(n), IpAddr::V4(a)) => {
                    same_prefix(u128::from(u32::from(n)), u128::from(u32::from(a)), 32, len)
                }
                (IpAddr::V6(n), IpAddr::V6(a)) => {
                    same_prefix(u128::from(n), u128::from(a), 128, len)
                }
                _ => false,
            })
    }

    /// True when no restriction is configured.
    pub fn is_any(&self) -> bool {
        self.nets.is_empty()
    }
}

/// Whether the first `len` of the `bits` low bits of `a` and `b` agree.
fn same_prefix(a: u128, b: u128, bits: u32, len: u8) -> bool {
    let drop = bits.saturating_sub(u32::from(len));
    a.checked_shr(drop).unwrap_or(0) == b.checked_shr(drop).unwrap_or(0)
}

impl<S: SessionStore> SessionSlot<S> {
    /// A slot for `session` named `name`, with no addresses and a 1 s reconnect interval.
    pub fn new(name: &str, session: Session<S>) -> Self {
        SessionSlot {
            name: name.to_owned(),
            session,
            connect: Vec::new(),
            reconnect_interval: Duration::from_secs(1),
            allowed_peers: AllowedPeers::default(),
            tls: None,
        }
    }
}

/// Messages the application asks the engine to send, collected during a callback.
#[derive(Debug, Default)]
pub struct Outbox {
    items: Vec<OutItem>,
}

#[derive(Debug)]
enum OutItem {
    App {
        session: usize,
        msg_type: Vec<u8>,
        body: Vec<u8>,
        again: Again,
    },
    Reject {
        session: usize,
        ref_seq_num: u64,
        ref_msg_type: String,
        ref_tag: Option<u32>,
        reason: SessionRejectReason,
        text: String,
    },
}

impl Outbox {
    /// Sends an application message (body: pre-encoded fields without header or trailer)
    /// on session `session`; while that session is not logged on it is stored and resent
    /// when its counterparty asks for the gap after the next Logon.
    pub fn send(&mut self, session: usize, msg_type: &[u8], body: Vec<u8>) {
        self.forward(session, msg_type, body, Again::No);
    }

    /// Like [`send`](Self::send), marked as possibly sent before (see [`Again`]): forwarding
    /// a message that arrived as a possible duplicate.
    pub fn forward(&mut self, session: usize, msg_type: &[u8], body: Vec<u8>, again: Again) {
        self.items.push(OutItem::App {
            session,
            msg_type: msg_type.to_vec(),
            body,
            again,
        });
    }

    /// Rejects a received application message with a session-level Reject(3).
    pub fn reject(
        &mut self,
        session: usize,
        ref_seq_num: u64,
        ref_msg_type: &str,
        ref_tag: Option<u32>,
        reason: SessionRejectReason,
        text: &str,
    ) {
        self.items.push(OutItem::Reject {
            session,
            ref_seq_num,
            ref_msg_type: ref_msg_type.to_owned(),
            ref_tag,
            reason,
            text: text.to_owned(),
        });
    }
}

/// What the engine tells the application.
pub trait Application {
    /// An application message arrived in sequence on session `session`.
    fn on_message(&mut self, out: &mut Outbox, session: usize, msg: &AppMessage);
    /// Session `session` completed a Logon.
    fn on_logon(&mut self, _out: &mut Outbox, _session: usize, _info: &LogonInfo) {}
    /// Session `session` lost its connection.
    fn on_logout(&mut self, _session: usize, _reason: &DisconnectReason) {}
    /// A session event other than Logon (gap, resend served, reject, …).
    fn on_event(&mut self, _session: usize, _event: &SessionEvent) {}
    /// The application's part of a `GET /health` answer (the gateway's order map).
    fn order_map_health(&self) -> Option<crate::admin::OrderMapHealth> {
        None
    }
    /// The engine's timer tick (every 100 ms by default), with the time it read and where
    /// each session's store stands (by session index; see [`StoreMark`]): every message
    /// sent or stored before this tick lies before its session's mark.
    fn on_tick(&mut self, _now: SystemTime, _marks: &[Option<StoreMark>]) {}
}

/// What [`Application::on_logon`] is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogonInfo {
    /// The session.
    pub id: SessionId,
    /// Both sequences were reset to 1 (ResetSeqNumFlag).
    pub reset: bool,
    /// Our next MsgSeqNum after the Logon exchange.
    pub next_sender_seq: u64,
    /// The MsgSeqNum we expect next.
    pub next_target_seq: u64,
}

/// Creates a session for a Logon from a counterparty no slot is configured for (an acceptor
/// that accepts anyone, like the exchange simulator). `None` refuses the connection.
pub type SessionFactory<S> = Box<dyn FnMut(&SessionId) -> Option<SessionSlot<S>> + Send>;

/// A request from outside the loop (see [`EngineHandle`]).
#[derive(Debug)]
enum Command {
    Send {
        session: usize,
        msg_type: Vec<u8>,
        body: Vec<u8>,
    },
    Logout {
        session: usize,
    },
}

/// Sends application messages into a running engine from other tasks or threads.
#[derive(Debug, Clone)]
pub struct EngineHandle {
    tx: mpsc::UnboundedSender<Command>,
}

impl EngineHandle {
    /// Queues an application message for session `session` (see [`Outbox::send`]). Returns
    /// false when the engine has stopped.
    pub fn send(&self, session: usize, msg_type: &[u8], body: Vec<u8>) -> bool {
        self.tx
            .send(Command::Send {
                session,
                msg_type: msg_type.to_vec(),
                body,
            })
            .is_ok()
    }

    /// Starts the Logout handshake on session `session`.
    pub fn logout(&self, session: usize) -> bool {
        self.tx.send(Command::Logout { session }).is_ok()
    }
}

enum NetEvent {
    /// With when the TCP connection was accepted: the logon timeout counts from then, so a
    /// slow TLS handshake does not get a second timeout's worth of time to send its Logon.
    Accepted(Stream, SocketAddr, tokio::time::Instant),
    /// An accepted connection closed before it carried anything (a failed TLS handshake).
    Refused(SocketAddr, String),
    AcceptFailed(std::io::Error),
    Connected {
        slot: usize,
        stream: Stream,
        addr: SocketAddr,
        next_addr: usize,
    },
    /// Bytes read, with their share of the connection's read budget
    /// ([`MAX_READ_QUEUE_BYTES`]): handling the event gives it back.
    Data(u64, Vec<u8>, tokio::sync::OwnedSemaphorePermit),
    Closed(u64),
    /// A write did not complete within [`WRITE_STALL_TIMEOUT`] (one that failed is
    /// [`NetEvent::Closed`]).
    WriteStalled(u64),
    /// An initiator stopped trying to connect: its schedule closed.
    ConnectPaused(usize),
    /// The connection's writer got below [`RESEND_PIECE_BYTES`] unwritten while its
    /// session answers a resend: time for the next piece.
    Drained(u64),
}

struct Conn {
    writer: mpsc::UnboundedSender<Vec<u8>>,
    writer_task: tokio::task::JoinHandle<()>,
    /// Bytes handed to the writer task and not yet written: the write queue's bound.
    unwritten: Arc<AtomicUsize>,
    /// Set while the session answers a resend: the writer reports [`NetEvent::Drained`]
    /// (once) when little is left unwritten. Set before the piece is handed over, so the
    /// writer cannot finish it unnoticed.
    want_drain: Arc<AtomicBool>,
    reader: tokio::task::JoinHandle<()>,
    /// The reader's budget ([`MAX_READ_QUEUE_BYTES`]; [`PRELOGON_READ_BYTES`] until a Logon
    /// binds an accepted connection to a session).
    read_budget: Arc<tokio::sync::Semaphore>,
    slot: Option<usize>,
    deframer: Deframer,
    peer: SocketAddr,
    /// When the connection was accepted or established: the logon timeout counts from here.
    opened: SystemTime,
    opened_mono: tokio::time::Instant,
}

impl Drop for Conn {
    fn drop(&mut self) {
        // The writer task finishes the queued bytes, then drops its half; aborting the
        // reader drops the other half, which closes the socket.
        self.reader.abort();
    }
}

struct SlotState<S: SessionStore> {
    slot: SessionSlot<S>,
    conn: Option<u64>,
    connecting: bool,
    next_addr: usize,
    logged_on: bool,
    /// Initiator: not connecting because its schedule is closed; the tick starts it again.
    waiting_schedule: bool,
    /// Initiator: connections in a row that ended before their Logon was answered (see
    /// [`retry_delay`]).
    unanswered: u32,
}

impl<S: SessionStore> SlotState<S> {
    /// A slot not connected yet. Its store checks the fence once per turn of this loop,
    /// which verifies it after each (see [`Engine::verify_fences`]).
    fn new(mut slot: SessionSlot<S>) -> Self {
        slot.session.store_mut().defer_fence_checks();
        SlotState {
            slot,
            conn: None,
            connecting: false,
            next_addr: 0,
            logged_on: false,
            waiting_schedule: false,
            unanswered: 0,
        }
    }
}

/// The event loop. See the module documentation.
pub struct Engine<S: SessionStore> {
    slots: Vec<SlotState<S>>,
    listener: Option<TcpListener>,
    /// TLS on the listener: every accepted connection must complete a handshake.
    tls: Option<TlsServer>,
    factory: Option<SessionFactory<S>>,
    conns: HashMap<u64, Conn>,
    next_conn: u64,
    tick: Duration,
    net_tx: mpsc::UnboundedSender<NetEvent>,
    net_rx: mpsc::UnboundedReceiver<NetEvent>,
    cmd_tx: mpsc::UnboundedSender<Command>,
    cmd_rx: mpsc::UnboundedReceiver<Command>,
    /// Health probes of the admin endpoint and the epoch reported with them.
    probes: Option<(mpsc::UnboundedReceiver<Probe>, u64)>,
    prelogon_timeout: Duration,
    counters: Counters,
    /// Group commit: what each flush would have written, with the position that must be
    /// durable first, oldest first. Its bytes already count in their connection's
    /// `unwritten`, so a disk that stops syncing ends in the slow-consumer bound.
    held: VecDeque<(u64, Pending)>,
    /// Connections their session let go (a Logout, a protocol error, a slow consumer) whose
    /// last bytes (the Logout saying why) are still held for group commit: each closes
    /// once nothing of it is held. Nothing is read from them any more.
    ///
    /// Why not wait for those bytes on the spot: with `replication.mode = "sync"` and the
    /// standby gone, a pass waits up to `sync_timeout` for its acknowledgement, and the loop
    /// (every session, the tick, the health answers) would wait with it; the agent's health
    /// check then fails and stops the only gateway that can serve (review 10).
    closing: Vec<(u64, Conn)>,
    /// A durable position whose staged store records (received sequence numbers, which no
    /// send waits on) are still to be written: after the sends it released went out (see
    /// [`on_durable`](Self::on_durable)).
    staged_durable: Option<u64>,
    /// Group commit: the syncer's durable position, once this loop has held something.
    durable_rx: Option<watch::Receiver<u64>>,
    /// A session's store uses group commit: this loop's sends wait for the syncer.
    grouped: bool,
    /// The replication sender, reported in health answers.
    replication: Option<crate::replica::Sender>,
    /// [`Counters::reads_held_back`], counted by the connections' reader tasks.
    reads_held_back: Arc<AtomicU64>,
}

/// Write buffers of one flush, per connection, so a burst becomes one write.
type Pending = Vec<(u64, Vec<u8>)>;

/// What a connection's reader and writer tasks share with the loop (see [`Conn`]).
struct ConnIo {
    wrx: mpsc::UnboundedReceiver<Vec<u8>>,
    unwritten: Arc<AtomicUsize>,
    want_drain: Arc<AtomicBool>,
    read_budget: Arc<tokio::sync::Semaphore>,
}

impl<S: SessionStore> Engine<S> {
    /// An engine over `slots`, accepting on `listener` if given.
    pub fn new(slots: Vec<SessionSlot<S>>, listener: Option<TcpListener>) -> Self {
        let (net_tx, net_rx) = mpsc::unbounded_channel();
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        Engine {
            slots: slots.into_iter().map(SlotState::new).collect(),
            listener,
            tls: None,
            factory: None,
            conns: HashMap::new(),
            next_conn: 0,
            tick: Duration::from_millis(100),
            net_tx,
            net_rx,
            cmd_tx,
            cmd_rx,
            probes: None,
            prelogon_timeout: DEFAULT_LOGON_TIMEOUT,
            counters: Counters::default(),
            reads_held_back: Arc::new(AtomicU64::new(0)),
            held: VecDeque::new(),
            closing: Vec::new(),
            staged_durable: None,
            durable_rx: None,
            grouped: false,
            replication: None,
        }
        .grouped_if_needed()
    }

    /// Sets `grouped` when a slot's store uses group commit.
    fn grouped_if_needed(mut self) -> Self {
        self.grouped = self
            .slots
            .iter()
            .any(|s| s.slot.session.store().unsynced_position().is_some());
        self
    }

    /// The syncer this loop's sends wait for, if its stores use one.
    fn group(&self) -> Option<&'static GroupCommit> {
        if self.grouped {
            GroupCommit::started()
        } else {
            None
        }
    }

    /// Time an accepted connection has to send a Logon naming a session (default
    /// [`DEFAULT_LOGON_TIMEOUT`]).
    pub fn with_prelogon_timeout(mut self, timeout: Duration) -> Self {
        self.prelogon_timeout = timeout;
        self
    }

    /// Accepts only TLS on the listener (see the module documentation for the bounds).
    pub fn with_tls(mut self, tls: TlsServer) -> Self {
        self.tls = Some(tls);
        self
    }

    /// What was refused or dropped so far.
    pub fn counters(&self) -> Counters {
        Counters {
            reads_held_back: self.reads_held_back.load(Ordering::Relaxed),
            ..self.counters
        }
    }

    /// Answers the health probes of [`crate::admin::serve`] from this loop, reporting role
    /// `active` and `epoch`: a loop that stops turning stops answering.
    pub fn with_health_probes(
        mut self,
        probes: mpsc::UnboundedReceiver<Probe>,
        epoch: u64,
    ) -> Self {
        self.probes = Some((probes, epoch));
        self
    }

    /// Reports `sender`'s view of the replication stream in health answers.
    pub fn with_replication(mut self, sender: crate::replica::Sender) -> Self {
        self.replication = Some(sender);
        self
    }

    /// Accepts Logons from counterparties without a slot by asking `factory`.
    pub fn with_factory(mut self, factory: SessionFactory<S>) -> Self {
        self.factory = Some(factory);
        self
    }

    /// Timer resolution for heartbeats and timeouts (default 100 ms).
    pub fn with_tick(mut self, tick: Duration) -> Self {
        self.tick = tick.max(Duration::from_millis(1));
        self
    }

    /// A handle to send messages from outside the loop.
    pub fn handle(&self) -> EngineHandle {
        EngineHandle {
            tx: self.cmd_tx.clone(),
        }
    }

    /// Index of the slot named `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.slots.iter().position(|s| s.slot.name == name)
    }

    /// [`run`](Self::run) as a task of the current (multi-threaded) runtime, awaited here.
    ///
    /// Why: a loop run by `block_on` lives on the caller's thread, outside the runtime's
    /// workers, so every frame read by a connection task wakes that thread and every send
    /// wakes a worker for its writer task: two thread hand-offs per message, each a
    /// context switch that waits for a core on a loaded machine. As a task, the loop runs on
    /// the worker whose reader task woke it, and the writer task it wakes runs there next.
    pub async fn run_on_worker<A>(
        self,
        mut app: A,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), EngineError>
    where
        A: Application + Send + 'static,
        S: Send + 'static,
    {
        tokio::spawn(async move { self.run(&mut app, shutdown).await })
            .await
            .unwrap_or_else(|e| Err(EngineError::Task(e.to_string())))
    }

    /// Runs until `shutdown` completes (then logs every session out) or a store is fenced.
    pub async fn run<A: Application>(
        mut self,
        app: &mut A,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), EngineError> {
        if let Some(listener) = self.listener.take() {
            let tx = self.net_tx.clone();
            let tls = self.tls.clone();
            let timeout = self.prelogon_timeout;
            // TLS handshakes run on a thread of their own, at most as many at once as
            // connections may wait to log on, each within the logon timeout.
            if tls.is_some() {
                handshake_runtime();
            }
            let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_PRELOGON_CONNECTIONS));
            tokio::spawn(async move {
                loop {
                    match listener.accept().await {
                        Ok((s, peer)) => {
                            let at = tokio::time::Instant::now();
                            let Some(tls) = &tls else {
                                if tx
                                    .send(NetEvent::Accepted(Stream::Plain(s), peer, at))
                                    .is_err()
                                {
                                    return;
                                }
                                continue;
                            };
                            let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                                let why = "too many TLS handshakes at once".to_owned();
                                if tx.send(NetEvent::Refused(peer, why)).is_err() {
                                    return;
                                }
                                continue;
                            };
                            let (tls, tx) = (tls.clone(), tx.clone());
                            spawn_handshake(async move {
                                let ev = match tls.accept(s, timeout, false).await {
                                    Ok(stream) => NetEvent::Accepted(stream, peer, at),
                                    Err(Refused::Closed) => {
                                        tracing::debug!(%peer, "connection closed before a TLS handshake");
                                        return;
                                    }
                                    Err(Refused::NotTls(b'8')) => NetEvent::Refused(
                                        peer,
                                        "plain FIX (8=FIX…) on this TLS acceptor: the client must connect with TLS".into(),
                                    ),
                                    Err(e) => NetEvent::Refused(peer, e.to_string()),
                                };
                                drop(permit);
                                let _ = tx.send(ev);
                            });
                        }
                        Err(e) if is_transient_accept_error(&e) => {
                            tracing::warn!(error = %e, "accept failed; continuing");
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        Err(e) => {
                            let _ = tx.send(NetEvent::AcceptFailed(e));
                            return;
                        }
                    }
                }
            });
        }
        for i in 0..self.slots.len() {
            self.start_connect(i, Duration::ZERO);
        }
        let mut tick = tokio::time::interval(self.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        let (mut probes, epoch) = match self.probes.take() {
            Some((rx, e)) => (Some(rx), e),
            None => (None, 0),
        };
        loop {
            if let Some(pos) = self.staged_durable.take() {
                // The writer tasks, woken by the release, run first and put the sends on the
                // wire; the stores' staged records follow.
                tokio::task::yield_now().await;
                self.stores_durable(pos)?;
            }
            if self.holds() && self.net_rx.is_empty() && self.cmd_rx.is_empty() {
                // Connection tasks share this thread: one with bytes ready runs first, so a
                // burst in progress shows in the queue and the syncer thread takes the pass
                // while this loop reads on, instead of the loop syncing and reading in turn.
                tokio::task::yield_now().await;
            }
            self.sync_held(app)?;
            tokio::select! {
                Some(p) = next_probe(&mut probes) => {
                    let mut h = self.health(epoch);
                    h.order_map = app.order_map_health();
                    let _ = p.send(h);
                }
                ev = self.net_rx.recv() => {
                    // The engine holds a sender itself, so the channel never closes.
                    let Some(ev) = ev else { continue };
                    self.on_net(app, ev)?;
                }
                cmd = self.cmd_rx.recv() => {
                    let Some(cmd) = cmd else { continue };
                    self.on_command(app, cmd)?;
                }
                pos = next_durable(&mut self.durable_rx) => self.on_durable(app, pos, true)?,
                _ = tick.tick() => self.on_tick(app)?,
                () = &mut shutdown => break,
            }
        }
        self.shutdown(app).await;
        Ok(())
    }

    /// The loop's own view for `GET /health`.
    fn health(&mut self, epoch: u64) -> Health {
        let mut fenced = false;
        let sessions: Vec<SessionHealth> = self
            .slots
            .iter_mut()
            .map(|st| {
                let store = st.slot.session.store_mut();
                fenced |= matches!(store.check_fence(), Err(StoreError::Fenced { .. }));
                SessionHealth {
                    name: st.slot.name.clone(),
                    logged_on: st.logged_on,
                    next_sender_seq: store.next_sender_seq(),
                    next_target_seq: store.next_target_seq(),
                    store_bytes: store.replay_bytes(),
                }
            })
            .collect();
        let replication = self.replication.as_ref().map(|r| r.health());
        Health {
            role: "active",
            epoch: Some(epoch),
            sessions_logged_on: sessions.iter().filter(|s| s.logged_on).count(),
            sessions,
            fenced: fenced || replication.as_ref().is_some_and(|r| !r.ready),
            connections_refused: self.counters.connections_refused,
            slow_consumers_dropped: self.counters.slow_consumers_dropped,
            reads_held_back: self.reads_held_back.load(Ordering::Relaxed),
            replication,
            order_map: None,
            store_sync: self.group().map(|g| g.stats().into()),
        }
    }

    async fn shutdown<A: Application>(&mut self, app: &mut A) {
        let logged_out = !self.standby_gone() && {
            let now = SystemTime::now();
            for i in 0..self.slots.len() {
                self.slots[i]
                    .slot
                    .session
                    .logout(Some("gateway shutting down"), now);
                // Errors here mean the store is gone; there is nothing left to protect.
                let _ = self.flush(app, i);
            }
            self.release_all_unless_standby_gone().is_some()
        };
        if !logged_out {
            self.close_without_logout();
        }
        // Everything written is durable now (unless syncing failed, or a standby is gone):
        // the stores write all they staged up to it, not only up to the last position the
        // loop was told of.
        let durable = self.group().map(|g| g.durable());
        if let Some(pos) = durable.max(self.staged_durable.take()) {
            let _ = self.stores_durable(pos);
        }
        // Give the writer tasks a moment to put the last bytes (the Logouts) on the wire.
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.conns.clear();
        self.closing.clear();
    }

    /// With `replication.mode = "sync"`: a standby heard from within `sync_timeout` is not
    /// connected (stopped first in a planned stop of the group, or lost), so what is held
    /// waits for it until then, and the agent kills a service that has not stopped within its
    /// `stop_timeout`. Sent after that wait without the standby, the Logouts would leave the
    /// counterparty one message ahead of the standby's copy.
    fn standby_gone(&self) -> bool {
        self.replication
            .as_ref()
            .is_some_and(|r| r.waits_for_a_disconnected_standby())
    }

    /// A stop with the standby gone ([`Engine::standby_gone`]): nothing more leaves than what
    /// is durable already, and the connections close without Logout, as at a crash; what was
    /// held was never sent, so every copy agrees with the counterparties on sequence numbers,
    /// and the restart recovers what was in flight as after a crash (resent with
    /// PossDupFlag, or asked for again).
    fn close_without_logout(&mut self) {
        tracing::warn!(
            "shutting down with a standby gone (replication.mode = \"sync\"): sessions closed \
             without Logout, so that nothing leaves that no standby holds"
        );
        if let Some(pos) = self.group().map(|g| g.durable()) {
            let _ = self.release(pos);
        }
        self.held.clear();
    }

    fn on_command<A: Application>(&mut self, app: &mut A, cmd: Command) -> Result<(), EngineError> {
        match cmd {
            Command::Send {
                session,
                msg_type,
                body,
            } => {
                let mut out = Outbox::default();
                out.send(session, &msg_type, body);
                self.apply(app, out)
            }
            Command::Logout { session } => {
                if let Some(s) = self.slots.get_mut(session) {
                    s.slot.session.logout(None, SystemTime::now());
                    self.flush(app, session)?;
                }
                Ok(())
            }
        }
    }

    fn start_connect(&mut self, i: usize, delay: Duration) {
        let st = &mut self.slots[i];
        if st.slot.session.config().role != Role::Initiator
            || st.slot.connect.is_empty()
            || st.connecting
            || st.conn.is_some()
        {
            return;
        }
        if !st.slot.session.schedule_open(SystemTime::now()) {
            if !st.waiting_schedule {
                tracing::info!(session = %st.slot.name,
                    schedule = %st.slot.session.config().schedule,
                    "outside the session schedule: not connecting until it opens");
            }
            st.waiting_schedule = true;
            return;
        }
        st.waiting_schedule = false;
        st.connecting = true;
        let schedule = st.slot.session.config().schedule.clone();
        let addrs = st.slot.connect.clone();
        let tls = st.slot.tls.clone();
        let start = st.next_addr % addrs.len();
        let interval = st.slot.reconnect_interval;
        let tx = self.net_tx.clone();
        let name = st.slot.name.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let mut k = start;
            loop {
                if !schedule.is_open(chrono::DateTime::<chrono::Utc>::from(SystemTime::now())) {
                    let _ = tx.send(NetEvent::ConnectPaused(i));
                    return;
                }
                for _ in 0..addrs.len() {
                    let addr = addrs[k % addrs.len()];
                    k = (k + 1) % addrs.len();
                    let attempt =
                        tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr))
                            .await;
                    let attempt = match (attempt, &tls) {
                        (Ok(Ok(tcp)), Some(tls)) => {
                            match tls.connect(tcp, addr.ip(), TLS_CONNECT_TIMEOUT).await {
                                Ok(s) => Ok(Ok(s)),
                                Err(e) => {
                                    // Not a connect failure worth only a debug line: a wrong CA
                                    // or name is a configuration problem someone must see.
                                    tracing::warn!(session = %name, %addr, error = %e,
                                        "TLS handshake failed");
                                    continue;
                                }
                            }
                        }
                        (Ok(Ok(tcp)), None) => Ok(Ok(Stream::Plain(tcp))),
                        (Ok(Err(e)), _) => Ok(Err(e)),
                        (Err(e), _) => Err(e),
                    };
                    match attempt {
                        Ok(Ok(stream)) => {
                            // Retry this address first next time: it was the active one.
                            let next_addr = (k + addrs.len() - 1) % addrs.len();
                            let _ = tx.send(NetEvent::Connected {
                                slot: i,
                                stream,
                                addr,
                                next_addr,
                            });
                            return;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(session = %name, %addr, error = %e, "connect failed")
                        }
                        Err(_) => tracing::debug!(session = %name, %addr, "connect timed out"),
                    }
                }
                if tx.is_closed() {
                    return;
                }
                tokio::time::sleep(interval).await;
            }
        });
    }

    fn add_conn(
        &mut self,
        stream: Stream,
        peer: SocketAddr,
        slot: Option<usize>,
        opened_mono: tokio::time::Instant,
    ) -> u64 {
        let id = self.next_conn;
        self.next_conn += 1;
        // Orders are small and latency-bound: never wait for Nagle.
        let _ = stream.tcp().set_nodelay(true);
        let (wtx, wrx) = mpsc::unbounded_channel::<Vec<u8>>();
        let unwritten = Arc::new(AtomicUsize::new(0));
        let read_budget = Arc::new(tokio::sync::Semaphore::new(if slot.is_some() {
            MAX_READ_QUEUE_BYTES
        } else {
            PRELOGON_READ_BYTES
        }));
        let want_drain = Arc::new(AtomicBool::new(false));
        let io = ConnIo {
            wrx,
            unwritten: unwritten.clone(),
            want_drain: want_drain.clone(),
            read_budget: read_budget.clone(),
        };
        let (writer_task, reader) = match stream {
            // A TCP stream splits without a lock between its halves; TLS needs one.
            Stream::Plain(s) => {
                let (rd, wr) = s.into_split();
                self.spawn_io(id, rd, wr, io)
            }
            Stream::Tls(s) => {
                let (rd, wr) = tokio::io::split(*s);
                self.spawn_io(id, rd, wr, io)
            }
        };
        let max_body = if slot.is_some() {
            DEFAULT_MAX_BODY_LENGTH
        } else {
            PRELOGON_MAX_BODY
        };
        self.conns.insert(
            id,
            Conn {
                writer: wtx,
                writer_task,
                unwritten,
                want_drain,
                reader,
                read_budget,
                slot,
                deframer: Deframer::new(max_body),
                peer,
                opened: SystemTime::now(),
                opened_mono,
            },
        );
        id
    }

    /// The tasks that move connection `id`'s bytes: the writer drains `wrx` into `wr`, the
    /// reader hands what `rd` gives to the loop within the read budget.
    fn spawn_io<R, W>(
        &self,
        id: u64,
        rd: R,
        mut wr: W,
        io: ConnIo,
    ) -> (tokio::task::JoinHandle<()>, tokio::task::JoinHandle<()>)
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let ConnIo {
            mut wrx,
            unwritten: left,
            want_drain,
            read_budget: budget,
        } = io;
        let stalled = self.net_tx.clone();
        let writer_task = tokio::spawn(async move {
            while let Some(mut buf) = wrx.recv().await {
                // What the loop queued meanwhile (a released batch: one buffer per event)
                // goes out in the same write: one syscall, and fewer segments for the
                // counterparty to read, instead of one per buffer.
                while buf.len() < WRITE_COALESCE_BYTES {
                    match wrx.try_recv() {
                        Ok(more) => buf.extend_from_slice(&more),
                        Err(_) => break,
                    }
                }
                // The flush matters over TLS only: it pushes out what rustls still buffers.
                let write = async {
                    wr.write_all(&buf).await?;
                    wr.flush().await
                };
                let wrote = tokio::time::timeout(WRITE_STALL_TIMEOUT, write).await;
                left.fetch_sub(
                    buf.len().min(left.load(Ordering::Relaxed)),
                    Ordering::Relaxed,
                );
                match wrote {
                    Ok(Ok(())) => {
                        if left.load(Ordering::Acquire) < RESEND_PIECE_BYTES
                            && want_drain.swap(false, Ordering::AcqRel)
                        {
                            let _ = stalled.send(NetEvent::Drained(id));
                        }
                    }
                    // The counterparty is gone (reset, closed): not a slow consumer. Its
                    // reader may not have seen it yet, waiting for budget while the loop is
                    // behind.
                    Ok(Err(_)) => {
                        let _ = stalled.send(NetEvent::Closed(id));
                        return;
                    }
                    // Dropping the half closes our side; the loop drops the connection.
                    Err(_) => {
                        let _ = stalled.send(NetEvent::WriteStalled(id));
                        return;
                    }
                }
            }
            let _ = wr.shutdown().await;
        });
        let reader = tokio::spawn(read_for_loop(
            id,
            rd,
            budget,
            self.net_tx.clone(),
            self.reads_held_back.clone(),
        ));
        (writer_task, reader)
    }

    fn on_net<A: Application>(&mut self, app: &mut A, ev: NetEvent) -> Result<(), EngineError> {
        match ev {
            NetEvent::Accepted(stream, peer, at) => {
                let anonymous = self.conns.values().filter(|c| c.slot.is_none()).count();
                if anonymous >= MAX_PRELOGON_CONNECTIONS {
                    self.counters.connections_refused =
                        self.counters.connections_refused.saturating_add(1);
                    tracing::warn!(%peer, anonymous,
                        "connection refused: too many connections waiting to log on");
                    return Ok(());
                }
                tracing::debug!(%peer, "connection accepted");
                self.add_conn(stream, peer, None, at);
                Ok(())
            }
            NetEvent::Refused(peer, why) => {
                self.counters.connections_refused =
                    self.counters.connections_refused.saturating_add(1);
                tracing::warn!(%peer, "connection refused: {why}");
                Ok(())
            }
            NetEvent::AcceptFailed(e) => Err(EngineError::Accept(e)),
            NetEvent::Connected {
                slot,
                stream,
                addr,
                next_addr,
            } => {
                let st = &mut self.slots[slot];
                st.connecting = false;
                st.next_addr = next_addr;
                tracing::info!(session = %st.slot.name, %addr, "connected");
                let id = self.add_conn(stream, addr, Some(slot), tokio::time::Instant::now());
                self.slots[slot].conn = Some(id);
                self.slots[slot]
                    .slot
                    .session
                    .on_connected(SystemTime::now());
                self.flush(app, slot)
            }
            // The permit drops, and the budget refills, once the bytes are handled.
            NetEvent::Data(id, data, _permit) => self.on_data(app, id, &data),
            NetEvent::ConnectPaused(i) => {
                if let Some(st) = self.slots.get_mut(i) {
                    st.connecting = false;
                }
                self.start_connect(i, Duration::ZERO);
                Ok(())
            }
            NetEvent::Drained(id) => {
                let Some(i) = self.conns.get(&id).and_then(|c| c.slot) else {
                    return Ok(());
                };
                if self.slots[i].conn != Some(id) {
                    return Ok(());
                }
                self.slots[i]
                    .slot
                    .session
                    .continue_resend(SystemTime::now());
                self.flush(app, i)
            }
            NetEvent::WriteStalled(id) => {
                let Some(i) = self.conns.get(&id).and_then(|c| c.slot) else {
                    self.conns.remove(&id);
                    return Ok(());
                };
                let text = format!(
                    "slow consumer: a write waited more than {} for the counterparty to read",
                    humantime::format_duration(WRITE_STALL_TIMEOUT)
                );
                self.drop_slow_consumer(app, i, id, &text)
            }
            NetEvent::Closed(id) => {
                let Some(conn) = self.conns.remove(&id) else {
                    return Ok(());
                };
                if let Some(i) = conn.slot {
                    self.detach(app, i, id, &DisconnectReason::ConnectionClosed);
                }
                Ok(())
            }
        }
    }

    /// The connection `id` of slot `i` is gone.
    fn detach<A: Application>(
        &mut self,
        app: &mut A,
        i: usize,
        id: u64,
        reason: &DisconnectReason,
    ) {
        let st = &mut self.slots[i];
        if st.conn != Some(id) {
            return;
        }
        st.conn = None;
        if st.slot.session.state() != State::Disconnected {
            st.slot.session.on_disconnected(SystemTime::now());
        }
        tracing::info!(session = %st.slot.name, ?reason, "disconnected");
        let was_logged_on = std::mem::take(&mut st.logged_on);
        if was_logged_on {
            app.on_logout(i, reason);
        }
        if !was_logged_on {
            st.unanswered = st.unanswered.saturating_add(1);
            // The address that took the connection did not answer the Logon. A former active
            // stuck in the kernel (a stalled disk) still completes handshakes on its port
            // until it dies: the next address first, or a client would go back to it after
            // every logon timeout while the new active is up.
            let n = st.slot.connect.len();
            if n > 1 {
                st.next_addr = (st.next_addr + 1) % n;
            }
        }
        let delay = retry_delay(
            reason,
            was_logged_on,
            st.unanswered,
            st.slot.reconnect_interval,
        );
        self.start_connect(i, delay);
    }

    fn on_data<A: Application>(
        &mut self,
        app: &mut A,
        id: u64,
        data: &[u8],
    ) -> Result<(), EngineError> {
        let Some(conn) = self.conns.get_mut(&id) else {
            return Ok(());
        };
        conn.deframer.push(data);
        loop {
            let Some(conn) = self.conns.get_mut(&id) else {
                return Ok(());
            };
            let slot = match conn.slot {
                Some(s) => s,
                None => {
                    // Peek at the first frame to find the session (an acceptor's first
                    // message must be a Logon naming both CompIDs).
                    let bound = match conn.deframer.peek_frame() {
                        Ok(None) => return Ok(()),
                        Ok(Some(f)) => identify(f),
                        Err(e) => {
                            tracing::warn!(peer = %conn.peer, error = %e, "garbage before Logon");
                            continue;
                        }
                    };
                    let peer = conn.peer;
                    let found = bound.as_ref().and_then(|sid| self.find_or_create(sid));
                    if let (Some(i), Some(sid)) = (found, &bound) {
                        if !self.slots[i].slot.allowed_peers.allows(peer.ip()) {
                            // Closed with nothing sent: QuickFIX counts any Logout it
                            // receives, even one numbered 1 and stored nowhere, so a client
                            // refused once and allowed later would expect one message more
                            // from us than we send. The reason is in our log.
                            tracing::warn!(session = %self.slots[i].slot.name, %peer,
                                "Logon from an address the session does not allow refused: \
                                 session {} may not log on from {}",
                                sid.target_comp_id, peer.ip().to_canonical());
                            self.refuse(id);
                            return Ok(());
                        }
                    }
                    match found {
                        Some(i) if self.slots[i].conn.is_none() => {
                            // The logon timeout runs from the accept, not from this frame.
                            let mut opened = SystemTime::now();
                            if let Some(conn) = self.conns.get_mut(&id) {
                                conn.slot = Some(i);
                                conn.deframer.set_max_body(DEFAULT_MAX_BODY_LENGTH);
                                conn.read_budget
                                    .add_permits(MAX_READ_QUEUE_BYTES - PRELOGON_READ_BYTES);
                                opened = conn.opened;
                            }
                            self.slots[i].conn = Some(id);
                            self.slots[i].slot.session.on_connected(opened);
                            i
                        }
                        Some(i) => {
                            // Closed with nothing sent: a Logout, even numbered 1 and
                            // stored nowhere, counts as a message received for QuickFIX (it
                            // raises the number it expects from us), which would break the
                            // session once its other connection is gone.
                            tracing::warn!(session = %self.slots[i].slot.name, ?peer,
                                "second connection for a connected session refused");
                            self.refuse(id);
                            return Ok(());
                        }
                        None => {
                            let peer = self.conns.get(&id).map(|c| c.peer);
                            tracing::warn!(?peer, "Logon for an unknown session refused");
                            if let Some(sid) = &bound {
                                // Tell the counterparty's operator why, instead of a bare close.
                                let text = format!(
                                    "no session is configured for SenderCompID {} and TargetCompID {}",
                                    sid.target_comp_id, sid.sender_comp_id
                                );
                                if let (Some(c), Some(f)) =
                                    (self.conns.get(&id), refusal_logout(sid, &text))
                                {
                                    let _ = c.writer.send(f);
                                }
                            }
                            self.refuse(id);
                            return Ok(());
                        }
                    }
                }
            };
            let Some(conn) = self.conns.get_mut(&id) else {
                return Ok(());
            };
            let session = &mut self.slots[slot].slot.session;
            match conn.deframer.next_frame() {
                Ok(None) => return Ok(()),
                Ok(Some(frame)) => session.on_frame(frame, SystemTime::now()),
                Err(e) => {
                    // Garbled: the specification says ignore it, without a Reject.
                    tracing::warn!(session = %self.slots[slot].slot.name, error = %e,
                        "ignoring garbled bytes");
                    continue;
                }
            }
            self.flush(app, slot)?;
        }
    }

    fn find_or_create(&mut self, sid: &SessionId) -> Option<usize> {
        if let Some(i) = self.slots.iter().position(|s| {
            let c = s.slot.session.config();
            c.role == Role::Acceptor
                && c.begin_string == sid.begin_string
                && c.sender_comp_id == sid.sender_comp_id
                && c.target_comp_id == sid.target_comp_id
        }) {
            return Some(i);
        }
        let slot = self.factory.as_mut()?(sid)?;
        self.grouped |= slot.session.store().unsynced_position().is_some();
        self.slots.push(SlotState::new(slot));
        Some(self.slots.len() - 1)
    }

    /// Closes a connection that never named a session.
    fn refuse(&mut self, id: u64) {
        if self.conns.remove(&id).is_some() {
            self.counters.connections_refused = self.counters.connections_refused.saturating_add(1);
        }
    }

    /// Logs session `i` out with `text` and drops its connection `id`: its counterparty does
    /// not read what we send.
    fn drop_slow_consumer<A: Application>(
        &mut self,
        app: &mut A,
        i: usize,
        id: u64,
        text: &str,
    ) -> Result<(), EngineError> {
        self.counters.slow_consumers_dropped =
            self.counters.slow_consumers_dropped.saturating_add(1);
        let Some(st) = self.slots.get_mut(i) else {
            self.conns.remove(&id);
            return Ok(());
        };
        tracing::warn!(session = %st.slot.name, "{text}; disconnecting");
        // The Logout can only reach a counterparty that reads again: give it a second to do
        // so, then close, so an unread queue is not held for long.
        if let Some(c) = self.conns.get(&id) {
            let writer = c.writer_task.abort_handle();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                writer.abort();
            });
        }
        if st.conn == Some(id) {
            st.slot.session.abort(text, SystemTime::now());
            // Queues the Logout behind what is unread and drops the connection.
            self.flush(app, i)?;
        }
        self.conns.remove(&id);
        Ok(())
    }

    fn on_tick<A: Application>(&mut self, app: &mut A) -> Result<(), EngineError> {
        let expired: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.slot.is_none() && c.opened_mono.elapsed() >= self.prelogon_timeout)
            .map(|(&id, _)| id)
            .collect();
        for id in expired {
            let peer = self.conns.get(&id).map(|c| c.peer);
            tracing::warn!(
                ?peer,
                "no Logon within the logon timeout; connection closed"
            );
            self.refuse(id);
        }
        if let Some(g) = self.group() {
            // Numbers staged while this loop held nothing get written here at the latest.
            self.stores_durable(g.durable())?;
        }
        let now = SystemTime::now();
        let marks: Vec<Option<StoreMark>> = self
            .slots
            .iter()
            .map(|s| s.slot.session.store().mark())
            .collect();
        app.on_tick(now, &marks);
        for i in 0..self.slots.len() {
            if self.slots[i].waiting_schedule && self.slots[i].slot.session.schedule_open(now) {
                self.start_connect(i, Duration::ZERO);
            }
            let s = &mut self.slots[i].slot.session;
            // A fence check on every tick stops an idle stale replica within one tick of a
            // newer claim, not only at its next write.
            let fenced = s.check_fence();
            if fenced.is_ok() {
                s.on_timer(now);
                if let Err(e) = s.store_mut().sync_if_due() {
                    return Err(EngineError::Store {
                        session: self.slots[i].slot.name.clone(),
                        text: e.to_string(),
                    });
                }
            }
            self.flush(app, i)?;
            if let Err(e @ StoreError::Fenced { .. }) = fenced {
                return Err(EngineError::Fenced {
                    session: self.slots[i].slot.name.clone(),
                    text: e.to_string(),
                });
            }
        }
        Ok(())
    }

    /// Writes, delivers and reports what session `i` queued, then sends what the
    /// application answered, until nothing is left.
    fn flush<A: Application>(&mut self, app: &mut A, i: usize) -> Result<(), EngineError> {
        let mut work = vec![i];
        let mut pending: Pending = Vec::new();
        let mut behind_over = Vec::new();
        let mut result = Ok(());
        while let Some(i) = work.pop() {
            let mut delivered = Vec::new();
            let mut out = Outbox::default();
            while let Some(action) = self.slots[i].slot.session.poll() {
                match action {
                    Action::Send(bytes) => {
                        if let Some(id) = self.slots[i].conn {
                            match pending.iter_mut().find(|(c, _)| *c == id) {
                                Some((_, buf)) => buf.extend_from_slice(&bytes),
                                None => pending.push((id, bytes)),
                            }
                        }
                    }
                    Action::Deliver(m) => delivered.push(m),
                    Action::Event(SessionEvent::LoggedOn { reset }) => {
                        let st = &mut self.slots[i];
                        st.logged_on = true;
                        st.unanswered = 0;
                        let info = LogonInfo {
                            id: session_id(&st.slot.session),
                            reset,
                            next_sender_seq: st.slot.session.store().next_sender_seq(),
                            next_target_seq: st.slot.session.store().next_target_seq(),
                        };
                        tracing::info!(session = %st.slot.name, reset,
                            next_sender = info.next_sender_seq,
                            next_target = info.next_target_seq,
                            "logged on");
                        app.on_logon(&mut out, i, &info);
                    }
                    Action::Event(e) => {
                        tracing::debug!(session = %self.slots[i].slot.name, event = ?e, "session event");
                        app.on_event(i, &e);
                    }
                    Action::Disconnect(reason) => {
                        // The session lets the connection go now; what it is owed (a Logout
                        // saying why, in `pending` or held) goes when durable, as every send
                        // does, and the connection closes after it (see `closing`).
                        if let Some(id) = self.slots[i].conn {
                            if let Some(c) = self.conns.remove(&id) {
                                c.reader.abort();
                                self.closing.push((id, c));
                            }
                            self.detach(app, i, id, &reason);
                        }
                        let name = self.slots[i].slot.name.clone();
                        match reason {
                            DisconnectReason::Store { fenced: true, text } => {
                                tracing::error!(session = %name, %text, "store fenced");
                                result = Err(EngineError::Fenced {
                                    session: name,
                                    text,
                                });
                            }
                            DisconnectReason::Store {
                                fenced: false,
                                text,
                            } => {
                                result = Err(EngineError::Store {
                                    session: name,
                                    text,
                                });
                            }
                            _ => {}
                        }
                    }
                }
                if result.is_err() {
                    break;
                }
            }
            if result.is_err() {
                break;
            }
            for m in &delivered {
                app.on_message(&mut out, i, m);
            }
            for item in out.items {
                match self.apply_item(item) {
                    Ok(target) => work.push(target),
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
            if result.is_err() {
                break;
            }
            // Only now, with every forward of what session `i` delivered stored, may its
            // received sequence number advance durably (see `store::Deferred`).
            if let Err(e) = self.slots[i].slot.session.store_mut().commit() {
                result = Err(store_error(&self.slots[i].slot.name, e));
                break;
            }
            let session = &self.slots[i].slot.session;
            let conn = || {
                self.slots[i]
                    .conn
                    .and_then(|id| Some((id, self.conns.get(&id)?)))
            };
            if let Some((id, c)) = session.resending().then(conn).flatten() {
                c.want_drain.store(true, Ordering::Release);
                // What waits behind the answer counts as unsent, as the answer does.
                let behind = session.bytes_behind_resend();
                if behind.saturating_add(c.unwritten.load(Ordering::Relaxed))
                    > MAX_WRITE_QUEUE_BYTES
                {
                    behind_over.push(id);
                }
            }
        }
        // Bytes queued before a failure were stored while we still owned the store, so
        // sending them is safe; after a failure the caller stops and nothing more is sent.
        let mut over = self.send_when_durable(pending);
        result?;
        // A connection named twice is dropped once: the first drop removes it.
        over.extend(behind_over);
        self.drop_over_limit(app, over)
    }

    /// Drops the connections `over` their write-queue bound as slow consumers.
    fn drop_over_limit<A: Application>(
        &mut self,
        app: &mut A,
        over: Vec<u64>,
    ) -> Result<(), EngineError> {
        for id in over {
            let Some(i) = self.conns.get(&id).and_then(|c| c.slot) else {
                continue;
            };
            let text =
                format!("slow consumer: more than {MAX_WRITE_QUEUE_BYTES} bytes sent and not read");
            self.drop_slow_consumer(app, i, id, &text)?;
        }
        Ok(())
    }

    /// Hands the bytes to the writer tasks; returns the connections whose unsent bytes now
    /// exceed [`MAX_WRITE_QUEUE_BYTES`].
    fn write_pending(&mut self, pending: &mut Pending) -> Vec<u64> {
        let mut over = Vec::new();
        for (id, buf) in pending.drain(..) {
            if let Some(c) = self.conn(id) {
                let n = buf.len();
                let before = c.unwritten.fetch_add(n, Ordering::Relaxed);
                if c.writer.send(buf).is_err() {
                    c.unwritten.fetch_sub(n, Ordering::Relaxed);
                } else if before.saturating_add(n) > MAX_WRITE_QUEUE_BYTES {
                    over.push(id);
                }
            }
        }
        over
    }

    /// Writes `pending` now if every record written so far is durable (and nothing older is
    /// held), else holds it for [`on_durable`](Self::on_durable). Returns the connections
    /// over their write-queue bound.
    fn send_when_durable(&mut self, pending: Pending) -> Vec<u64> {
        let over = self.send_or_hold(pending);
        self.close_finished();
        over
    }

    fn send_or_hold(&mut self, mut pending: Pending) -> Vec<u64> {
        let Some(g) = self.group() else {
            return self.write_pending(&mut pending);
        };
        let need = g.written();
        if self.held.is_empty() && g.durable() >= need {
            return self.write_pending(&mut pending);
        }
        if pending.is_empty() {
            return Vec::new();
        }
        if self.durable_rx.is_none() {
            self.durable_rx = Some(g.subscribe());
        }
        let mut over = Vec::new();
        for (id, buf) in &pending {
            if let Some(c) = self.conn(*id) {
                let before = c.unwritten.fetch_add(buf.len(), Ordering::Relaxed);
                if before.saturating_add(buf.len()) > MAX_WRITE_QUEUE_BYTES {
                    over.push(*id);
                }
            }
        }
        // A pass is asked for once the event is handled (`sync_held`), when every record
        // it wrote is written: asked here, it could start before the event's next frame
        // wrote the record its own send waits on, and that send would wait for two passes.
        self.held.push_back((need, pending));
        over
    }

    /// A connection by id, also one that is closing (see `closing`).
    fn conn(&self, id: u64) -> Option<&Conn> {
        self.conns.get(&id).or_else(|| {
            self.closing
                .iter()
                .find_map(|(c, conn)| (*c == id).then_some(conn))
        })
    }

    /// Closes the connections of `closing` of which nothing is held any more: what they
    /// were owed is with their writer tasks, which write it and then close.
    fn close_finished(&mut self) {
        if self.closing.is_empty() {
            return;
        }
        let held = &self.held;
        self.closing
            .retain(|(id, _)| held.iter().any(|(_, p)| p.iter().any(|(c, _)| c == id)));
    }

    /// Sends wait for group commit.
    fn holds(&self) -> bool {
        !self.held.is_empty() && self.group().is_some()
    }

    /// After each event: makes what this loop holds durable. With nothing else queued for the
    /// loop, the pass runs here and now ([`GroupCommit::sync_now`]): a lone message costs its
    /// `fdatasync` and no hand-off to the syncer thread and back, each a wake-up that waits
    /// for a core on a loaded machine. With more queued, or a pass running, the syncer
    /// thread takes it while the loop reads on, and what it reads forms the next batch.
    fn sync_held<A: Application>(&mut self, app: &mut A) -> Result<(), EngineError> {
        self.verify_fences()?;
        let Some(g) = self.group() else {
            return Ok(());
        };
        let Some(&(need, _)) = self.held.back() else {
            return Ok(());
        };
        if self.net_rx.is_empty() && self.cmd_rx.is_empty() {
            if let Some(r) = g.sync_now() {
                // A failed pass is reported by `on_durable`, from the syncer's state.
                return self.on_durable(app, r.unwrap_or_else(|_| g.durable()), false);
            }
        }
        g.request(need);
        // The syncer may have passed `need` before the receiver saw it as news.
        let over = self.release(g.durable());
        self.drop_over_limit(app, over)
    }

    /// Ends a turn for every store: a fence read after what the turn wrote, before any of it
    /// may leave (and the next turn's first write reads it again first).
    fn verify_fences(&mut self) -> Result<(), EngineError> {
        for st in &mut self.slots {
            if let Err(e) = st.slot.session.store_mut().verify_fence() {
                self.held.clear();
                return Err(store_error(&st.slot.name, e));
            }
        }
        Ok(())
    }

    /// Writes what was held for positions up to `durable`, in order.
    fn release(&mut self, durable: u64) -> Vec<u64> {
        let mut over = Vec::new();
        while self.held.front().is_some_and(|(need, _)| *need <= durable) {
            let Some((_, pending)) = self.held.pop_front() else {
                break;
            };
            for (id, buf) in pending {
                let Some(c) = self.conn(id) else {
                    continue;
                };
                let n = buf.len();
                if c.writer.send(buf).is_err() {
                    c.unwritten.fetch_sub(n, Ordering::Relaxed);
                } else if c.unwritten.load(Ordering::Relaxed) > MAX_WRITE_QUEUE_BYTES {
                    over.push(id);
                }
            }
        }
        self.close_finished();
        over
    }

    /// Waits (blocking the loop) until every record written so far is durable and writes
    /// what was held: for a shutdown, whose last bytes must go before the connections do.
    /// `Some(false)` when syncing failed: nothing more may be sent. `None`, with nothing
    /// released, when a standby is found gone meanwhile ([`Engine::standby_gone`]): the
    /// wait would last until `sync_timeout` (a standby stopped a moment before is noticed at
    /// the stream's next round trip, a heartbeat at most).
    fn release_all_unless_standby_gone(&mut self) -> Option<bool> {
        if self.verify_fences().is_err() {
            return Some(false);
        }
        let Some(g) = self.group() else {
            return Some(true);
        };
        let need = g.written();
        loop {
            match g.wait_durable_for(need, SHUTDOWN_POLL) {
                Err(_) => {
                    self.held.clear();
                    return Some(false);
                }
                Ok(true) => break,
                Ok(false) if self.standby_gone() => return None,
                Ok(false) => {}
            }
        }
        let _ = self.release(need);
        Some(true)
    }

    /// The syncer reports records up to `pos` durable: send what waited for them, and let
    /// the stores write what they staged behind them. `after_sends`: for a pass the syncer
    /// thread ran (the loop was busy reading), the staged records wait for the loop's next
    /// turn, after a yield to the writer tasks, so the released batch goes on the wire
    /// first: writing them first put a fence read, a write and a second fence read per store
    /// in front of it, and the gateway's throughput with 4 clients at once is 10–20 % higher
    /// without (`bench fix-roundtrip`, three pairs). After a pass the loop ran itself (a lone
    /// message) they are written at once, as before: there the yield gained the single order
    /// nothing measurable (five pairs, all inside the runs' spread).
    fn on_durable<A: Application>(
        &mut self,
        app: &mut A,
        pos: u64,
        after_sends: bool,
    ) -> Result<(), EngineError> {
        if let Some(text) = self.group().and_then(|g| g.failure()) {
            self.held.clear();
            // The pass failed because a standby told of a newer epoch (how a stale active
            // with sync replication usually learns it, its batch waiting for the standby):
            // that is a fence, exit 3 as the stores' own check says, not a store failure.
            for st in self.slots.iter_mut() {
                if let Err(e @ StoreError::Fenced { .. }) =
                    st.slot.session.store_mut().check_fence()
                {
                    return Err(EngineError::Fenced {
                        session: st.slot.name.clone(),
                        text: e.to_string(),
                    });
                }
            }
            return Err(EngineError::Store {
                session: "(group commit)".into(),
                text,
            });
        }
        // The watch also reports a pass the loop ran itself, with nothing left to release;
        // its yield is kept: skipping it when nothing was released cost the gateway with
        // 4 clients at once most of the gain (three pairs: 32 017–40 089, 34 044–38 694 and
        // 33 537–39 537 orders/s against 39 310–40 808, 37 039–43 262 and 34 665–44 974), the
        // yield letting the readers queue what arrived before the next pass starts.
        let over = self.release(pos);
        if after_sends {
            self.staged_durable = Some(self.staged_durable.map_or(pos, |p| p.max(pos)));
        } else {
            self.stores_durable(pos)?;
        }
        self.drop_over_limit(app, over)
    }

    /// Tells every session store that records up to `pos` are durable.
    fn stores_durable(&mut self, pos: u64) -> Result<(), EngineError> {
        for st in &mut self.slots {
            if let Err(e) = st.slot.session.store_mut().on_durable(pos) {
                return Err(store_error(&st.slot.name, e));
            }
        }
        Ok(())
    }

    /// Applies one outbox item; returns the session to flush.
    fn apply_item(&mut self, item: OutItem) -> Result<usize, EngineError> {
        let now = SystemTime::now();
        match item {
            OutItem::App {
                session,
                msg_type,
                body,
                again,
            } => {
                let Some(st) = self.slots.get_mut(session) else {
                    tracing::warn!(session, "message for an unknown session dropped");
                    return Ok(0);
                };
                match st
                    .slot
                    .session
                    .send_or_store_app(&msg_type, &body, again, now)
                {
                    Ok(_) => Ok(session),
                    Err(SendError::Store(e @ StoreError::Fenced { .. })) => {
                        Err(EngineError::Fenced {
                            session: st.slot.name.clone(),
                            text: e.to_string(),
                        })
                    }
                    Err(SendError::Store(e)) => Err(EngineError::Store {
                        session: st.slot.name.clone(),
                        text: e.to_string(),
                    }),
                    Err(e) => {
                        // The application built a bad message: a bug on our side, not input.
                        tracing::error!(session = %st.slot.name, error = %e, "message not sent");
                        Ok(session)
                    }
                }
            }
            OutItem::Reject {
                session,
                ref_seq_num,
                ref_msg_type,
                ref_tag,
                reason,
                text,
            } => {
                if let Some(st) = self.slots.get_mut(session) {
                    let _ = st.slot.session.reject_app(
                        ref_seq_num,
                        &ref_msg_type,
                        ref_tag,
                        reason,
                        &text,
                        now,
                    );
                }
                Ok(session)
            }
        }
    }

    fn apply<A: Application>(&mut self, app: &mut A, out: Outbox) -> Result<(), EngineError> {
        for item in out.items {
            let target = self.apply_item(item)?;
            self.flush(app, target)?;
        }
        Ok(())
    }
}

/// Connection `id`'s reader: hands what `rd` gives to the loop as [`NetEvent::Data`], each
/// read paid for from `budget` and given back once the loop has handled it; counts in
/// `held_back` every time it stops for the loop. Ends with [`NetEvent::Closed`] when the
/// connection does.
async fn read_for_loop<R: AsyncRead + Unpin>(
    id: u64,
    mut rd: R,
    budget: Arc<tokio::sync::Semaphore>,
    tx: mpsc::UnboundedSender<NetEvent>,
    held_back: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; READ_CHUNK_BYTES];
    loop {
        // A read takes what is left of the budget, up to a chunk: with less left than
        // a read costs, nothing more is read until the loop has handled enough. (A
        // read that waited for a whole chunk would stop every connection before its
        // Logon is handled, and count it, though the loop is not behind.)
        let free = budget.available_permits();
        if free < MIN_READ_CHARGE {
            held_back.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(conn = id, "loop behind: reading paused");
            match budget.acquire_many(MIN_READ_CHARGE as u32).await {
                // Given back at once: the next turn takes all there is by then.
                Ok(enough) => drop(enough),
                // Never closed: only a dropped engine would, and then nobody reads.
                Err(_) => break,
            }
            continue;
        }
        let want = free.min(READ_CHUNK_BYTES);
        let mut share = match budget.clone().try_acquire_many_owned(want as u32) {
            Ok(share) => share,
            // This task alone takes from the budget, so what it saw free still is.
            Err(tokio::sync::TryAcquireError::NoPermits) => continue,
            Err(tokio::sync::TryAcquireError::Closed) => break,
        };
        match rd.read(&mut buf[..want]).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                // What the read did not use goes back at once, down to the least a
                // read costs.
                if let Some(used) = share.split(n.max(MIN_READ_CHARGE)) {
                    share = used;
                }
                if tx
                    .send(NetEvent::Data(id, buf[..n].to_vec(), share))
                    .is_err()
                {
                    return;
                }
            }
        }
    }
    let _ = tx.send(NetEvent::Closed(id));
}

/// The runtime that runs acceptors' TLS handshakes: one thread for the process, built the
/// first time a TLS acceptor starts ([`Engine::run`]), never stopped. `None` when it could
/// not be built: the handshakes then run beside the loop.
///
/// Why: the FIX processes' runtime has a single worker, the loop's (see `loop_runtime` in the
/// understudy binary), and a handshake's key exchange and signature are the one heavy piece
/// of CPU a connection brings, up to [`MAX_PRELOGON_CONNECTIONS`] at once when every client
/// reconnects after a failover: on the loop's thread they would delay every session's
/// messages. Here they use the second core. What stays with the loop: the connection is
/// registered with its runtime, whose I/O driver (run by the loop's thread) reports the
/// handshake's bytes, so a loop blocked in a system call delays handshakes too; the records
/// of a connection handed to the loop are encrypted there; an initiator's handshakes (the
/// gateway's few upstreams) run on the loop.
fn handshake_runtime() -> Option<&'static tokio::runtime::Runtime> {
    static HANDSHAKES: std::sync::OnceLock<Option<tokio::runtime::Runtime>> =
        std::sync::OnceLock::new();
    HANDSHAKES
        .get_or_init(|| {
            let built = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("fix-tls-handshake")
                .enable_time()
                .build();
            match built {
                Ok(rt) => Some(rt),
                Err(e) => {
                    tracing::warn!(error = %e, "no thread of their own for TLS handshakes: they run beside the event loop");
                    None
                }
            }
        })
        .as_ref()
}

/// Runs an acceptor's TLS handshake on [`handshake_runtime`], else beside the loop.
fn spawn_handshake(handshake: impl Future<Output = ()> + Send + 'static) {
    match handshake_runtime() {
        Some(rt) => drop(rt.spawn(handshake)),
        None => drop(tokio::spawn(handshake)),
    }
}

/// The engine's error for store error `e` of session `session`.
fn store_error(session: &str, e: StoreError) -> EngineError {
    let session = session.to_owned();
    match e {
        StoreError::Fenced { .. } => EngineError::Fenced {
            session,
            text: e.to_string(),
        },
        e => EngineError::Store {
            session,
            text: e.to_string(),
        },
    }
}

/// The syncer's next durable position, or never when this loop holds nothing for it.
async fn next_durable(rx: &mut Option<watch::Receiver<u64>>) -> u64 {
    match rx {
        Some(r) => {
            if r.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
            *r.borrow_and_update()
        }
        None => std::future::pending().await,
    }
}

/// The next health probe, or never when there is no admin endpoint.
async fn next_probe(probes: &mut Option<mpsc::UnboundedReceiver<Probe>>) -> Option<Probe> {
    match probes {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The session a first frame belongs to, from the acceptor's point of view.
fn identify(frame: &[u8]) -> Option<SessionId> {
    let m = parse(frame).ok()?;
    let h = m.header().ok()?;
    Some(SessionId {
        begin_string: h.begin_string,
        sender_comp_id: std::str::from_utf8(h.target_comp_id).ok()?.to_owned(),
        target_comp_id: std::str::from_utf8(h.sender_comp_id).ok()?.to_owned(),
    })
}

/// The first wait before dialling again after a connection that ended before its Logon was
/// answered; each one more in a row doubles it, up to `reconnect_interval`.
const FIRST_RETRY: Duration = Duration::from_millis(10);

/// How long an initiator waits before dialling again after its connection ended for `reason`,
/// `unanswered` connections in a row having ended before their Logon was answered.
fn retry_delay(
    reason: &DisconnectReason,
    was_logged_on: bool,
    unanswered: u32,
    interval: Duration,
) -> Duration {
    match reason {
        // A session cut mid-way (its peer crashed or failed over): the next address at once.
        DisconnectReason::ConnectionClosed if was_logged_on => Duration::ZERO,
        // Closed before the Logon was answered. An exchange that still holds the session on
        // an older connection (its former owner not gone yet: stalled on its disk, or a
        // machine lost until the exchange's heartbeat timeout) accepts and closes at once.
        // Dialled again at once, that was hundreds of connections a second; at `interval`
        // alone, a failover would wait up to a whole interval after the race with the old
        // connection's close. So: quickly at first, then backing off to `interval`.
        DisconnectReason::ConnectionClosed => {
            let doublings = unanswered.saturating_sub(1).min(16);
            FIRST_RETRY.saturating_mul(1 << doublings).min(interval)
        }
        // Ended in an orderly way, refused with a reason (a wrong password, sequence numbers
        // too low: venues lock a CompID after repeated failed Logons) or by a protocol error:
        // the configured wait.
        _ => interval,
    }
}

/// A Logout with `text` answering a Logon no session takes; it belongs to no session, so it
/// carries MsgSeqNum 1 and is stored nowhere.
fn refusal_logout(sid: &SessionId, text: &str) -> Option<Vec<u8>> {
    let mut b = MessageBuilder::new(sid.begin_string, msg_type::LOGOUT);
    b.push_str(tags::SENDER_COMP_ID, &sid.sender_comp_id)
        .push_str(tags::TARGET_COMP_ID, &sid.target_comp_id)
        .push_uint(tags::MSG_SEQ_NUM, 1)
        .push_time(tags::SENDING_TIME, SystemTime::now())
        .push_str(tags::TEXT, text);
    b.finish().ok()
}

fn session_id<S: SessionStore>(s: &Session<S>) -> SessionId {
    let c = s.config();
    SessionId::new(c.begin_string, &c.sender_comp_id, &c.target_comp_id)
}

fn is_transient_accept_error(e: &std::io::Error) -> bool {
    // Out of descriptors or a connection reset before accept: the listener itself is fine.
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ECONNABORTED | libc::ENOBUFS | libc::ENOMEM)
    ) || e.kind() == std::io::ErrorKind::ConnectionAborted
}

/// Parses a BeginString given by name in a configuration (`FIX.4.2`, `FIX.4.4`).
pub fn parse_begin_string(s: &str) -> Option<BeginString> {
    BeginString::from_bytes(s.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unanswered_logon_is_retried_quickly_then_at_the_reconnect_interval() {
        let closed = DisconnectReason::ConnectionClosed;
        let refused = DisconnectReason::Protocol("Logon refused by the counterparty: \"x\"".into());
        let s = Duration::from_secs(1);
        let ms = Duration::from_millis;
        assert_eq!(retry_delay(&closed, true, 0, s), Duration::ZERO);
        assert_eq!(retry_delay(&refused, true, 0, s), s);
        let waits: Vec<_> = (1..=10)
            .map(|n| retry_delay(&closed, false, n, s))
            .collect();
        assert_eq!(
            waits,
            [
                ms(10),
                ms(20),
                ms(40),
                ms(80),
                ms(160),
                ms(320),
                ms(640),
                s,
                s,
                s
            ]
        );
        assert_eq!(retry_delay(&closed, false, u32::MAX, s), s);
        assert_eq!(retry_delay(&closed, false, 5, ms(25)), ms(25));
        // A Logon refused with a reason is not hammered.
        assert_eq!(retry_delay(&refused, false, 1, s), s);
        assert_eq!(retry_delay(&refused, false, 3, s), s);
        // Only a connection that really closed: not a protocol error worded alike.
        let worded = DisconnectReason::Protocol("connection closed".into());
        assert_eq!(retry_delay(&worded, true, 0, s), s);
        assert_eq!(retry_delay(&worded, false, 1, s), s);
    }

    #[test]
    fn allowed_peers_match_addresses_and_blocks() {
        let any = AllowedPeers::default();
        assert!(any.is_any() && any.allows("203.0.113.9".parse().unwrap()));
        let a = AllowedPeers::parse(
            &[
                "10.1.0.0/16",
                "192.0.2.7",
                "::1",
                "2001:db8::/32",
                "0.0.0.0/0",
            ][..4],
        )
        .unwrap();
        for ok in [
            "10.1.2.3",
            "10.1.255.255",
            "192.0.2.7",
            "::1",
            "::ffff:10.1.0.9",
            "2001:db8:1::5",
        ] {
            assert!(a.allows(ok.parse().unwrap()), "{ok}");
        }
        for no in ["10.2.0.1", "192.0.2.8", "::2", "2001:db9::1", "127.0.0.1"] {
            assert!(!a.allows(no.parse().unwrap()), "{no}");
        }
        let all = AllowedPeers::parse(&["0.0.0.0/0"]).unwrap();
        assert!(all.allows("8.8.8.8".parse().unwrap()));
        assert!(!all.allows("::2".parse().unwrap()));
        for bad in [
            "10.0.0.0/33",
            "::/129",
            "x",
            "10.0.0.1/",
            "10.0.0.1/-1",
            "/8",
        ] {
            assert!(AllowedPeers::parse(&[bad]).is_err(), "{bad}");
        }
    }

    /// A peer whose reads return `chunks` one per read, then nothing more, the connection
    /// kept open.
    struct Chunks(std::collections::VecDeque<Vec<u8>>);

    impl AsyncRead for Chunks {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            match self.0.pop_front() {
                Some(mut c) => {
                    let n = c.len().min(buf.remaining());
                    buf.put_slice(&c[..n]);
                    if n < c.len() {
                        self.0.push_front(c.split_off(n));
                    }
                    std::task::Poll::Ready(Ok(()))
                }
                None => std::task::Poll::Pending,
            }
        }
    }

    /// What the reader of a connection with budget `budget` hands the loop of `rd` before it
    /// stops (nothing handled meanwhile), and how often it counted itself held back.
    async fn read_unhandled<R: AsyncRead + Unpin + Send + 'static>(
        rd: R,
        budget: &Arc<tokio::sync::Semaphore>,
        events: &mut mpsc::UnboundedReceiver<NetEvent>,
        held_back: &Arc<AtomicU64>,
    ) -> Vec<(Vec<u8>, tokio::sync::OwnedSemaphorePermit)> {
        let (tx, rx) = mpsc::unbounded_channel();
        *events = rx;
        tokio::spawn(read_for_loop(7, rd, budget.clone(), tx, held_back.clone()));
        take_until_quiet(events).await
    }

    /// The Data events in `events` until none came for 200 ms.
    async fn take_until_quiet(
        events: &mut mpsc::UnboundedReceiver<NetEvent>,
    ) -> Vec<(Vec<u8>, tokio::sync::OwnedSemaphorePermit)> {
        let mut got = Vec::new();
        while let Ok(Some(ev)) =
            tokio::time::timeout(Duration::from_millis(200), events.recv()).await
        {
            match ev {
                NetEvent::Data(7, bytes, share) => got.push((bytes, share)),
                _ => panic!("not a Data event of connection 7"),
            }
        }
        got
    }

    #[tokio::test]
    async fn a_read_of_a_few_bytes_costs_a_kib_of_the_budget() {
        let budget = Arc::new(tokio::sync::Semaphore::new(PRELOGON_READ_BYTES));
        let held_back = Arc::new(AtomicU64::new(0));
        let (_, mut events) = mpsc::unbounded_channel();
        let peer = Chunks((0..1000).map(|_| b"x".to_vec()).collect());
        let got = read_unhandled(peer, &budget, &mut events, &held_back).await;
        assert_eq!(got.len(), PRELOGON_READ_BYTES / MIN_READ_CHARGE);
        assert!(got.iter().all(|(b, _)| b == b"x"));
        assert_eq!(held_back.load(Ordering::Relaxed), 1);
        // Handling them gives the budget back: the reader goes on, as far again.
        drop(got);
        let more = take_until_quiet(&mut events).await;
        assert_eq!(more.len(), PRELOGON_READ_BYTES / MIN_READ_CHARGE);
        assert_eq!(held_back.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn a_reader_takes_its_whole_budget_then_as_much_as_the_loop_gives_back() {
        let budget = Arc::new(tokio::sync::Semaphore::new(MAX_READ_QUEUE_BYTES));
        let held_back = Arc::new(AtomicU64::new(0));
        let (_, mut events) = mpsc::unbounded_channel();
        let mut got =
            read_unhandled(tokio::io::repeat(b'x'), &budget, &mut events, &held_back).await;
        let read: usize = got.iter().map(|(b, _)| b.len()).sum();
        assert_eq!(read, MAX_READ_QUEUE_BYTES);
        assert!(got.iter().all(|(b, _)| b.len() <= READ_CHUNK_BYTES));
        assert_eq!(held_back.load(Ordering::Relaxed), 1);
        // One event handled: that much more is read, and no more.
        let (first, _) = got.remove(0);
        let more = take_until_quiet(&mut events).await;
        let again: usize = more.iter().map(|(b, _)| b.len()).sum();
        assert_eq!(again, first.len());
        assert_eq!(held_back.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn a_logon_waiting_for_the_loop_is_not_counted_as_held_back() {
        // Before its Logon binds a session a connection may have one chunk unhandled; the
        // Logon itself is far less, and the loop is not behind.
        let budget = Arc::new(tokio::sync::Semaphore::new(PRELOGON_READ_BYTES));
        let held_back = Arc::new(AtomicU64::new(0));
        let (_, mut events) = mpsc::unbounded_channel();
        let logon = vec![b'8'; 120];
        let got = read_unhandled(
            Chunks([logon.clone()].into()),
            &budget,
            &mut events,
            &held_back,
        )
        .await;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, logon);
        assert_eq!(held_back.load(Ordering::Relaxed), 0);
        // And 64 KiB of junk after it stops the reader at 64 KiB in all.
        let (_, mut events) = mpsc::unbounded_channel();
        let held_back = Arc::new(AtomicU64::new(0));
        let budget = Arc::new(tokio::sync::Semaphore::new(PRELOGON_READ_BYTES));
        let got = read_unhandled(tokio::io::repeat(b'x'), &budget, &mut events, &held_back).await;
        let read: usize = got.iter().map(|(b, _)| b.len()).sum();
        assert_eq!(read, PRELOGON_READ_BYTES);
        assert_eq!(held_back.load(Ordering::Relaxed), 1);
    }
}
