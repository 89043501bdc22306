//! The sans-IO FIX session state machine.
//!
//! [`Session`] does no I/O and reads no clock: the caller feeds it complete frames
//! ([`Session::on_frame`], e.g. from a [`crate::codec::Deframer`]), timer ticks with the
//! current time ([`Session::on_timer`]) and application sends ([`Session::send_app`]), then
//! drains [`Action`]s: frames to write, messages to deliver, events, and when to disconnect.
//! Every outgoing frame is recorded in the [`SessionStore`] *before* its `Send` action is
//! queued, so a frame is never on the wire unless a successor could resend or gap-fill it.
//!
//! The processing order follows the FIX session-level rules (FIX 4.2 and 4.4 volume 2):
//! garbled messages are ignored; a wrong BeginString ends the session; the first message must
//! be a Logon; CompID and SendingTime problems are rejected and end the session; then the
//! MsgSeqNum decides: too high → queue and ResendRequest, too low → ignore if PossDupFlag=Y,
//! otherwise Logout; in sequence → handle by type.
//!
//! # Limits on what a counterparty can make us do
//!
//! Every number a peer sends is range-checked before it reaches arithmetic, and every buffer
//! its messages fill has a bound with a defined action:
//!
//! | what | range / bound | outside it |
//! |---|---|---|
//! | HeartBtInt(108) on Logon | [`HEART_BT_INT_RANGE`] seconds | Logout naming the field, disconnect |
//! | ResetSeqNumFlag(141)=Y on an acceptor's Logon | only with [`SessionConfig::allow_peer_reset`] | Logout with the reason, disconnect |
//! | MsgSeqNum, NewSeqNo, BeginSeqNo, EndSeqNo | any `u64`; arithmetic saturates | — |
//! | messages waiting for a gap to be filled | [`MAX_QUEUED_MESSAGES`] and [`MAX_QUEUED_BYTES`] | Logout with the reason, disconnect |
//!
//! The lints below keep it so: no unchecked arithmetic, no `unwrap`, no indexing that could
//! panic, anywhere in this module.
#![deny(
    clippy::arithmetic_side_effects,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use std::collections::{BTreeMap, VecDeque};
use std::ops::RangeInclusive;
use std::time::{Duration, SystemTime};

use thiserror::Error;

use crate::codec::{parse, EncodeError, Garbled, Header, Message, MessageBuilder, ParseError};
use crate::schedule::SessionSchedule;
use crate::store::{SessionStore, StoreError};
use crate::tags::{self, msg_type, BeginString, SessionRejectReason, SOH};

/// HeartBtInt(108) values accepted on a Logon, in seconds. 0 (no heartbeats) is refused too:
/// without heartbeats a dead connection would hold its session forever.
pub const HEART_BT_INT_RANGE: RangeInclusive<u64> = 1..=3600;

/// Most messages held while waiting for a gap to be filled (see [`Session::on_frame`]).
pub const MAX_QUEUED_MESSAGES: usize = 10_000;

/// Most bytes held while waiting for a gap to be filled.
pub const MAX_QUEUED_BYTES: usize = 16 << 20;

/// Bytes of stored messages one piece of a resend answer reads and queues (at least one
/// message). A ResendRequest may cover a whole day of messages: it is answered a piece at a
/// time, the next one when the connection has written the last (see
/// [`Session::continue_resend`]), so neither memory nor the write queue holds all of it.
pub const RESEND_PIECE_BYTES: usize = 256 * 1024;

/// Which side opens the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Connects and sends the first Logon.
    Initiator,
    /// Accepts connections and answers Logon.
    Acceptor,
}

/// Static configuration of one session.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Protocol version.
    pub begin_string: BeginString,
    /// Our CompID (SenderCompID on what we send).
    pub sender_comp_id: String,
    /// The counterparty's CompID.
    pub target_comp_id: String,
    /// Initiator or acceptor.
    pub role: Role,
    /// HeartBtInt an initiator proposes; an acceptor adopts the one in the Logon it receives.
    pub heartbeat_interval: Duration,
    /// Initiator: send ResetSeqNumFlag=Y on Logon and start both sequences at 1.
    pub reset_on_logon: bool,
    /// Acceptor: accept a counterparty's Logon with ResetSeqNumFlag=Y (both sequences back to 1,
    /// the stored messages dropped). Off by default: a reset throws away what a resend would
    /// recover after a failover, so it is refused with a Logout that says so.
    pub allow_peer_reset: bool,
    /// How long to wait for the Logon (or its answer) before disconnecting.
    pub logon_timeout: Duration,
    /// How long to wait for the Logout answer before disconnecting.
    pub logout_timeout: Duration,
    /// Largest accepted difference between SendingTime and our clock; `None` disables the
    /// check (SessionRejectReason 10 otherwise).
    pub max_latency: Option<Duration>,
    /// When the session may be logged on, and the periods its sequence numbers belong to
    /// (default: always, never reset). See [`Session::on_timer`].
    pub schedule: SessionSchedule,
}

impl SessionConfig {
    /// A configuration with the usual defaults: 30 s heartbeats, 10 s logon and logout
    /// timeouts, 120 s SendingTime tolerance, no reset on logon.
    pub fn new(begin_string: BeginString, sender: &str, target: &str, role: Role) -> Self {
        SessionConfig {
            begin_string,
            sender_comp_id: sender.to_owned(),
            target_comp_id: target.to_owned(),
            role,
            heartbeat_interval: Duration::from_secs(30),
            reset_on_logon: false,
            allow_peer_reset: false,
            logon_timeout: Duration::from_secs(10),
            logout_timeout: Duration::from_secs(10),
            max_latency: Some(Duration::from_secs(120)),
            schedule: SessionSchedule::Always,
        }
    }
}

/// Configuration errors found by [`Session::new`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    /// A CompID is empty or contains SOH.
    #[error("CompID {0:?} is empty or contains SOH")]
    BadCompId(String),
}

/// Where the session is in its life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// No connection.
    Disconnected,
    /// Acceptor: connected, waiting for the counterparty's Logon.
    AwaitingLogon,
    /// Initiator: Logon sent, waiting for the answer.
    LogonSent,
    /// Logged on.
    Active,
    /// Logout sent, waiting for the answer.
    LogoutSent,
}

/// Why the session asks the transport to close the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The Logout handshake finished (either side started it).
    LoggedOut,
    /// No Logon (or no answer to ours) within the logon timeout.
    LogonTimeout,
    /// No answer to our Logout within the logout timeout.
    LogoutTimeout,
    /// Nothing received for 2.4 heartbeat intervals, TestRequest unanswered.
    HeartbeatTimeout,
    /// MsgSeqNum lower than expected without PossDupFlag.
    SeqTooLow {
        /// What we expected.
        expected: u64,
        /// What arrived.
        received: u64,
    },
    /// The TCP connection ended under the session (closed by the counterparty, or failed)
    /// without a Logout: what a peer's crash or failover looks like from here.
    ConnectionClosed,
    /// The counterparty broke the session protocol (text says how).
    Protocol(String),
    /// Outside the session schedule: a Logon arrived (acceptor) or the connection came up
    /// (initiator) while the schedule is closed. Nothing is sent.
    OutsideSchedule,
    /// The store refused a write; `fenced` when a newer active owns it.
    Store {
        /// A newer epoch claimed the store: this replica must stop.
        fenced: bool,
        /// Detail.
        text: String,
    },
}

/// Something the session reports that is not a frame to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// A new session period began: both sequence numbers were reset to 1 and the stored
    /// messages of the previous period forgotten. `start`: the period's start, Unix seconds.
    NewPeriod {
        /// Start of the period.
        start: i64,
    },
    /// Logon completed.
    LoggedOn {
        /// Both sequences were reset to 1 by ResetSeqNumFlag.
        reset: bool,
    },
    /// A garbled frame was ignored.
    Garbled(String),
    /// A MsgSeqNum gap was found and a ResendRequest sent.
    GapDetected {
        /// First missing number.
        begin: u64,
        /// The number that arrived.
        received: u64,
    },
    /// The counterparty asked for a resend and was answered.
    ResendServed {
        /// First number asked for.
        begin: u64,
        /// Last number answered.
        end: u64,
        /// Application messages resent.
        resent: usize,
    },
    /// We rejected a message.
    RejectSent {
        /// RefSeqNum.
        ref_seq_num: u64,
        /// Reason.
        reason: SessionRejectReason,
        /// Text sent.
        text: String,
    },
    /// The counterparty rejected one of ours.
    RejectReceived {
        /// RefSeqNum(45), if present.
        ref_seq_num: Option<u64>,
        /// Text(58), if present.
        text: Option<String>,
    },
    /// The expected incoming sequence number was moved by a SequenceReset.
    SequenceReset {
        /// The new expected number.
        new_seq_num: u64,
        /// GapFill mode (otherwise Reset mode).
        gap_fill: bool,
    },
    /// A duplicate (PossDupFlag=Y, already seen) was ignored.
    DuplicateIgnored(u64),
}

/// For people: a line of a demo or a log, without Rust's debug syntax.
impl std::fmt::Display for SessionEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionEvent::NewPeriod { start } => {
                write!(
                    f,
                    "new session period (start {start}): sequence numbers reset to 1"
                )
            }
            SessionEvent::LoggedOn { reset: true } => {
                f.write_str("logged on, sequence numbers reset to 1")
            }
            SessionEvent::LoggedOn { reset: false } => f.write_str("logged on"),
            SessionEvent::Garbled(why) => write!(f, "garbled frame ignored: {why}"),
            SessionEvent::GapDetected { begin, received } => write!(
                f,
                "sequence gap: expected MsgSeqNum {begin}, received {received}; asked for a resend"
            ),
            SessionEvent::ResendServed { begin, end, resent } => write!(
                f,
                "resend of MsgSeqNum {begin}..={end} served: {resent} application message(s) resent"
            ),
            SessionEvent::RejectSent {
                ref_seq_num,
                reason,
                text,
            } => write!(
                f,
                "rejected MsgSeqNum {ref_seq_num} (reason {}): {text}",
                reason.code()
            ),
            SessionEvent::RejectReceived { ref_seq_num, text } => {
                f.write_str("the counterparty rejected")?;
                match ref_seq_num {
                    Some(n) => write!(f, " MsgSeqNum {n}")?,
                    None => f.write_str(" a message")?,
                }
                match text {
                    Some(t) => write!(f, ": {t}"),
                    None => Ok(()),
                }
            }
            SessionEvent::SequenceReset {
                new_seq_num,
                gap_fill,
            } => write!(
                f,
                "{} to MsgSeqNum {new_seq_num}",
                if *gap_fill {
                    "gap fill"
                } else {
                    "sequence reset"
                }
            ),
            SessionEvent::DuplicateIgnored(n) => {
                write!(f, "duplicate MsgSeqNum {n} ignored (already seen)")
            }
        }
    }
}

/// An application message delivered in sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppMessage {
    /// MsgSeqNum.
    pub seq_num: u64,
    /// PossDupFlag=Y (a resend the application may already have seen).
    pub poss_dup: bool,
    /// The complete frame as received, for the application to parse.
    pub frame: Vec<u8>,
}

/// Output of the session, drained with [`Session::poll`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write these bytes to the connection.
    Send(Vec<u8>),
    /// Hand this message to the application.
    Deliver(AppMessage),
    /// Report this.
    Event(SessionEvent),
    /// Close the connection (after writing the `Send`s queued before it).
    Disconnect(DisconnectReason),
}

/// How [`Session::send_or_store_app`] marks a message that may have been sent before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Again {
    /// A first send.
    #[default]
    No,
    /// PossResend(97)=Y: the same request may have been sent before under another
    /// MsgSeqNum (a hub forwarding an order it received as a possible duplicate); the
    /// receiver checks its ids (ClOrdID) before acting on it.
    PossResend,
    /// PossDupFlag(43)=Y and PossResend(97)=Y, with OrigSendingTime(122): a copy of a
    /// report that may have reached the counterparty before, forwarded again under a new
    /// MsgSeqNum (after a failover). Engines hand PossDupFlag to the application, which
    /// then de-duplicates by ExecID; PossResend alone is handed over as new by some
    /// (QuickFIX).
    PossDup {
        /// When the original was sent, if known (else: now).
        orig_sending_time: Option<SystemTime>,
    },
}

/// Errors of [`Session::send_app`].
#[derive(Debug, Error)]
pub enum SendError {
    /// Application messages can only be sent while logged on.
    #[error("session is not logged on")]
    NotLoggedOn,
    /// The body could not be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// An admin MsgType was given; the session owns those.
    #[error("MsgType {0:?} is a session-level message")]
    AdminMsgType(String),
    /// The store refused the message: it was not sent, and the session disconnected
    /// (see [`StoreError::Fenced`] for what an in-doubt message means).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One FIX session over one store. See the module documentation.
#[derive(Debug)]
pub struct Session<S: SessionStore> {
    config: SessionConfig,
    store: S,
    state: State,
    state_since: SystemTime,
    heartbeat: Duration,
    last_sent: SystemTime,
    last_received: SystemTime,
    test_request: Option<String>,
    test_request_counter: u64,
    /// Out-of-order messages waiting for the gap before them to be filled.
    queue: BTreeMap<u64, Vec<u8>>,
    /// Bytes held in `queue`, kept so the bound is checked without summing it.
    queued_bytes: usize,
    /// MsgSeqNums of queued ResendRequests, answered when they arrived ahead of a gap: in
    /// their turn they only advance the number expected, as QuickFIX does (answered again,
    /// the counterparty got the whole range twice).
    answered_early: std::collections::BTreeSet<u64>,
    /// Highest MsgSeqNum our outstanding ResendRequest covers; no new request until passed.
    resend_until: Option<u64>,
    /// The counterparty's ResendRequest being answered, a piece at a time.
    answering: Option<ResendAnswer>,
    /// Our messages numbered while a resend is answered: they go out after its last piece,
    /// as they would after a resend answered in one go, never between its pieces (where a
    /// counterparty would see a gap and ask again).
    behind_resend: VecDeque<Vec<u8>>,
    /// Bytes held in `behind_resend`.
    behind_resend_bytes: usize,
    out: VecDeque<Action>,
}

/// Where the answer to a ResendRequest has got to.
#[derive(Debug, Clone, Copy)]
struct ResendAnswer {
    /// First number asked for.
    begin: u64,
    /// Last number to answer.
    end: u64,
    /// First number not answered yet.
    next: u64,
    /// Last number the answer may reach: what we had sent when it started, raised by each
    /// message that joins it (see `emit`). What we number otherwise waits in
    /// `behind_resend`, so no later request makes the answer go past it.
    limit: u64,
    /// Application messages resent so far.
    resent: usize,
    /// First number that joined the answer as it ran (see `emit`): from there on the
    /// answer sends messages for the first time, not again.
    joined_from: Option<u64>,
    /// Highest joined number already sent: sent again (a request that went back), it is a
    /// resend like any other.
    first_sent_upto: u64,
}

fn sanitize(text: &str) -> String {
    text.chars()
        .map(|c| if c == '\u{1}' { ' ' } else { c })
        .collect()
}

/// A resend without the OrigSendingTime it must carry (a SequenceReset-GapFill is exempt).
fn lacks_orig_sending_time(header: &Header<'_>) -> bool {
    header.orig_sending_time.is_none() && header.msg_type != msg_type::SEQUENCE_RESET
}

fn since(now: SystemTime, then: SystemTime) -> Duration {
    now.duration_since(then).unwrap_or(Duration::ZERO)
}

/// Why processing of one message stopped early.
enum Stop {
    /// The session is over (disconnect queued).
    Ended,
}

type Step = Result<(), Stop>;

impl<S: SessionStore> Session<S> {
    /// A disconnected session over `store`.
    pub fn new(config: SessionConfig, store: S) -> Result<Self, ConfigError> {
        for id in [&config.sender_comp_id, &config.target_comp_id] {
            if id.is_empty() || id.as_bytes().contains(&SOH) {
                return Err(ConfigError::BadCompId(id.clone()));
            }
        }
        let heartbeat = config.heartbeat_interval;
        Ok(Session {
            config,
            store,
            state: State::Disconnected,
            state_since: SystemTime::UNIX_EPOCH,
            heartbeat,
            last_sent: SystemTime::UNIX_EPOCH,
            last_received: SystemTime::UNIX_EPOCH,
            test_request: None,
            test_request_counter: 0,
            queue: BTreeMap::new(),
            queued_bytes: 0,
            answered_early: std::collections::BTreeSet::new(),
            resend_until: None,
            answering: None,
            behind_resend: VecDeque::new(),
            behind_resend_bytes: 0,
            out: VecDeque::new(),
        })
    }

    /// Current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// The configuration.
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// The store (sequence numbers, sent messages).
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The store, mutably (e.g. to sync a batched store from a timer).
    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    /// The heartbeat interval in force (negotiated at Logon for an acceptor).
    pub fn heartbeat_interval(&self) -> Duration {
        self.heartbeat
    }

    /// Next queued output, oldest first.
    pub fn poll(&mut self) -> Option<Action> {
        self.out.pop_front()
    }

    /// All queued outputs.
    pub fn drain(&mut self) -> impl Iterator<Item = Action> + '_ {
        self.out.drain(..)
    }

    fn clear_queue(&mut self) {
        self.queue.clear();
        self.queued_bytes = 0;
        self.answered_early.clear();
    }

    fn dequeue(&mut self, seq: u64) -> Option<Vec<u8>> {
        let frame = self.queue.remove(&seq)?;
        self.queued_bytes = self.queued_bytes.saturating_sub(frame.len());
        Some(frame)
    }

    /// Holds a message that arrived ahead of a gap, or ends the session when the peer has sent
    /// more out of sequence than [`MAX_QUEUED_MESSAGES`] / [`MAX_QUEUED_BYTES`] allow.
    fn enqueue(&mut self, seq: u64, raw: &[u8], now: SystemTime) -> Step {
        let replaced = self.queue.get(&seq).map_or(0, Vec::len);
        let bytes = self
            .queued_bytes
            .saturating_sub(replaced)
            .saturating_add(raw.len());
        let full = replaced == 0 && self.queue.len() >= MAX_QUEUED_MESSAGES;
        if full || bytes > MAX_QUEUED_BYTES {
            let text = format!(
                "too many messages out of sequence ({} held, {} bytes) while waiting for a resend",
                self.queue.len(),
                self.queued_bytes
            );
            tracing::warn!(counterparty = %self.config.target_comp_id, "{text}");
            return Err(self.end_session(&text, DisconnectReason::Protocol(text.clone()), now));
        }
        self.queue.insert(seq, raw.to_vec());
        self.queued_bytes = bytes;
        // A frame replaced is no longer the ResendRequest answered early, if it was one.
        self.answered_early.remove(&seq);
        Ok(())
    }

    fn set_state(&mut self, state: State, now: SystemTime) {
        self.state = state;
        self.state_since = now;
    }

    /// A connection is up: an initiator sends its Logon, an acceptor starts waiting for one.
    pub fn on_connected(&mut self, now: SystemTime) {
        self.clear_queue();
        self.drop_resend_answer();
        self.resend_until = None;
        self.test_request = None;
        self.last_received = now;
        self.last_sent = now;
        self.heartbeat = self.config.heartbeat_interval;
        match self.config.role {
            Role::Acceptor => self.set_state(State::AwaitingLogon, now),
            Role::Initiator => {
                if !self.schedule_open(now) {
                    self.disconnect(DisconnectReason::OutsideSchedule, now);
                    return;
                }
                self.set_state(State::LogonSent, now);
                if self.ensure_period(now).is_err() {
                    return;
                }
                if self.config.reset_on_logon {
                    if let Err(e) = self.store.reset() {
                        self.store_failed(&e);
                        return;
                    }
                }
                let reset = self.config.reset_on_logon;
                let hb = self.heartbeat.as_secs();
                let _ = self.send_admin(msg_type::LOGON, now, |b| {
                    b.push_uint(tags::ENCRYPT_METHOD, 0)
                        .push_uint(tags::HEART_BT_INT, hb);
                    if reset {
                        b.push_bool(tags::RESET_SEQ_NUM_FLAG, true);
                    }
                });
            }
        }
    }

    /// The transport lost the connection.
    pub fn on_disconnected(&mut self, now: SystemTime) {
        self.clear_queue();
        self.drop_resend_answer();
        self.resend_until = None;
        self.test_request = None;
        self.set_state(State::Disconnected, now);
    }

    /// Starts the Logout handshake.
    pub fn logout(&mut self, text: Option<&str>, now: SystemTime) {
        if self.state != State::Active {
            return;
        }
        if self.send_logout(text, now).is_ok() {
            self.set_state(State::LogoutSent, now);
        }
    }

    /// Ends the session because of something the transport found (e.g. a counterparty that
    /// does not read): a Logout with `text` when logged on, then a disconnect.
    pub fn abort(&mut self, text: &str, now: SystemTime) {
        if self.state == State::Disconnected {
            return;
        }
        let _ = self.end_session(text, DisconnectReason::Protocol(text.to_owned()), now);
    }

    /// Sends an application message whose body is pre-encoded `tag=value<SOH>` fields (no
    /// header or trailer fields). The message is stored, then queued as a `Send`.
    pub fn send_app(
        &mut self,
        msg_type: &[u8],
        body: &[u8],
        now: SystemTime,
    ) -> Result<u64, SendError> {
        if self.state != State::Active {
            return Err(SendError::NotLoggedOn);
        }
        if msg_type::is_admin(msg_type) {
            return Err(SendError::AdminMsgType(
                String::from_utf8_lossy(msg_type).into_owned(),
            ));
        }
        let seq = self.store.next_sender_seq();
        let mut b = self.header(msg_type, seq, now);
        b.push_raw(body);
        let frame = b.finish()?;
        if let Err(e) = self.store.save_sent(seq, &frame) {
            self.store_failed(&e);
            return Err(SendError::Store(e));
        }
        self.last_sent = now;
        self.emit(frame, Some(seq));
        Ok(seq)
    }

    /// Like [`send_app`](Self::send_app), but while not logged on the message is only
    /// stored, taking the next sequence number without a `Send`. This is how a hub queues
    /// messages for an offline counterparty durably: our next Logon carries a higher
    /// MsgSeqNum, the counterparty asks for the gap, and the stored messages are resent (with
    /// PossDupFlag=Y) — from whichever replica is active by then.
    ///
    /// `again` marks a message that may have been sent before (see [`Again`]).
    pub fn send_or_store_app(
        &mut self,
        msg_type: &[u8],
        body: &[u8],
        again: Again,
        now: SystemTime,
    ) -> Result<u64, SendError> {
        if msg_type::is_admin(msg_type) {
            return Err(SendError::AdminMsgType(
                String::from_utf8_lossy(msg_type).into_owned(),
            ));
        }
        let seq = self.store.next_sender_seq();
        let mut b = self.header(msg_type, seq, now);
        match again {
            Again::No => {}
            Again::PossResend => {
                b.push_bool(tags::POSS_RESEND, true);
            }
            Again::PossDup { orig_sending_time } => {
                // Never after our own SendingTime: the receiver rejects that (and the
                // original may come from another machine's clock).
                let orig = orig_sending_time.map_or(now, |t| t.min(now));
                b.push_bool(tags::POSS_DUP_FLAG, true)
                    .push_bool(tags::POSS_RESEND, true)
                    .push_time(tags::ORIG_SENDING_TIME, orig);
            }
        }
        b.push_raw(body);
        let frame = b.finish()?;
        if let Err(e) = self.store.save_sent(seq, &frame) {
            // Not connected: nothing to disconnect, but a fenced store must still stop us.
            if self.state != State::Disconnected || matches!(e, StoreError::Fenced { .. }) {
                self.store_failed(&e);
            }
            return Err(SendError::Store(e));
        }
        if self.state == State::Active {
            self.last_sent = now;
            self.emit(frame, Some(seq));
        }
        Ok(seq)
    }

    /// Rejects an application message the application found invalid (e.g. a required field
    /// missing: SessionRejectReason 1) with a session-level Reject, as the specification asks
    /// for field-level problems; `ref_msg_type` and `ref_tag` identify the message and field.
    pub fn reject_app(
        &mut self,
        ref_seq_num: u64,
        ref_msg_type: &str,
        ref_tag: Option<u32>,
        reason: SessionRejectReason,
        text: &str,
        now: SystemTime,
    ) -> Result<(), SendError> {
        if self.state != State::Active {
            return Err(SendError::NotLoggedOn);
        }
        // A failed send already queued the Disconnect the transport will act on.
        let _ = self.send_reject(ref_seq_num, Some(ref_msg_type), ref_tag, reason, text, now);
        Ok(())
    }

    /// Re-reads the store's fence (see [`SessionStore::check_fence`]); when a newer epoch
    /// owns the store the session disconnects and this returns the error.
    pub fn check_fence(&mut self) -> Result<(), StoreError> {
        if let Err(e) = self.store.check_fence() {
            if self.state != State::Disconnected {
                self.store_failed(&e);
            }
            return Err(e);
        }
        Ok(())
    }

    fn header(&self, msg_type: &[u8], seq: u64, now: SystemTime) -> MessageBuilder {
        let mut b = MessageBuilder::new(self.config.begin_string, msg_type);
        b.push_str(tags::SENDER_COMP_ID, &self.config.sender_comp_id)
            .push_str(tags::TARGET_COMP_ID, &self.config.target_comp_id)
            .push_uint(tags::MSG_SEQ_NUM, seq)
            .push_time(tags::SENDING_TIME, now);
        b
    }

    /// Whether the schedule allows a Logon at `now`.
    pub fn schedule_open(&self, now: SystemTime) -> bool {
        self.config
            .schedule
            .is_open(chrono::DateTime::<chrono::Utc>::from(now))
    }

    /// Resets the store into the current session period if it belongs to an older one.
    fn ensure_period(&mut self, now: SystemTime) -> Step {
        let t = chrono::DateTime::<chrono::Utc>::from(now);
        let Some(id) = self.config.schedule.session_id_secs(t) else {
            return Ok(());
        };
        if self.store.period() == Some(id) {
            return Ok(());
        }
        if let Err(e) = self.store.reset_for_period(id) {
            self.store_failed(&e);
            return Err(Stop::Ended);
        }
        self.clear_queue();
        self.drop_resend_answer();
        self.resend_until = None;
        tracing::info!(counterparty = %self.config.target_comp_id, period_start = id,
            "new session period: sequence numbers reset to 1");
        self.out
            .push_back(Action::Event(SessionEvent::NewPeriod { start: id }));
        Ok(())
    }

    fn store_failed(&mut self, e: &StoreError) {
        let fenced = matches!(e, StoreError::Fenced { .. });
        tracing::error!(error = %e, "session store failed; disconnecting");
        // What waits behind a resend is stored: the counterparty gets it from whoever
        // serves the session next.
        self.drop_resend_answer();
        self.out
            .push_back(Action::Disconnect(DisconnectReason::Store {
                fenced,
                text: e.to_string(),
            }));
        self.state = State::Disconnected;
    }

    /// Sends a session-level message with the next sequence number, persisted first.
    fn send_admin(
        &mut self,
        msg_type: &[u8],
        now: SystemTime,
        fill: impl FnOnce(&mut MessageBuilder),
    ) -> Step {
        let seq = self.store.next_sender_seq();
        let mut b = self.header(msg_type, seq, now);
        fill(&mut b);
        let frame = match b.finish() {
            Ok(f) => f,
            Err(e) => {
                // Only our own values go into admin messages, so this is a bug, not input.
                self.disconnect(
                    DisconnectReason::Protocol(format!("encoding failed: {e}")),
                    now,
                );
                return Err(Stop::Ended);
            }
        };
        if let Err(e) = self.store.set_next_sender_seq(seq.saturating_add(1)) {
            self.store_failed(&e);
            return Err(Stop::Ended);
        }
        self.last_sent = now;
        self.emit(frame, None);
        Ok(())
    }

    fn send_logout(&mut self, text: Option<&str>, now: SystemTime) -> Step {
        let text = text.map(sanitize).filter(|t| !t.is_empty());
        self.send_admin(msg_type::LOGOUT, now, |b| {
            if let Some(t) = &text {
                b.push_str(tags::TEXT, t);
            }
        })
    }

    fn disconnect(&mut self, reason: DisconnectReason, now: SystemTime) {
        // `on_disconnected` drops an unfinished answer and what waits behind it: nothing
        // numbered past the answer goes out, its Logout least of all. A counterparty
        // (QuickFIX) takes a Logout's number as the next one expected without checking it,
        // and would skip the first number the answer did not reach, for good (review 23).
        // What waited is stored or gap-filled: the counterparty asks again at its next
        // Logon, from where it got to.
        self.out.push_back(Action::Disconnect(reason));
        self.on_disconnected(now);
    }

    /// Logout (when logged on) then disconnect.
    fn end_session(&mut self, text: &str, reason: DisconnectReason, now: SystemTime) -> Stop {
        if matches!(self.state, State::Active | State::LogoutSent) {
            // A failed Logout already queued a Disconnect.
            if self.send_logout(Some(text), now).is_err() {
                return Stop::Ended;
            }
        }
        self.disconnect(reason, now);
        Stop::Ended
    }

    fn send_reject(
        &mut self,
        ref_seq_num: u64,
        ref_msg_type: Option<&str>,
        ref_tag: Option<u32>,
        reason: SessionRejectReason,
        text: &str,
        now: SystemTime,
    ) -> Step {
        let version = self.config.begin_string;
        let text = sanitize(text);
        self.send_admin(msg_type::REJECT, now, |b| {
            b.push_uint(tags::REF_SEQ_NUM, ref_seq_num);
            if let Some(t) = ref_tag {
                b.push_uint(tags::REF_TAG_ID, u64::from(t));
            }
            if let Some(mt) = ref_msg_type.filter(|m| !m.is_empty() && !m.contains('\u{1}')) {
                b.push_str(tags::REF_MSG_TYPE, mt);
            }
            if reason.defined_in(version) {
                b.push_uint(tags::SESSION_REJECT_REASON, u64::from(reason.code()));
            }
            if !text.is_empty() {
                b.push_str(tags::TEXT, &text);
            }
        })?;
        self.out.push_back(Action::Event(SessionEvent::RejectSent {
            ref_seq_num,
            reason,
            text,
        }));
        Ok(())
    }

    fn set_next_target(&mut self, seq: u64) -> Step {
        if let Err(e) = self.store.set_next_target_seq(seq) {
            self.store_failed(&e);
            return Err(Stop::Ended);
        }
        if self.resend_until.is_some_and(|until| seq > until) {
            self.resend_until = None;
        }
        Ok(())
    }

    /// A complete frame arrived.
    pub fn on_frame(&mut self, frame: &[u8], now: SystemTime) {
        if self.state == State::Disconnected {
            return;
        }
        self.last_received = now;
        // Any traffic proves the line alive; a later silence earns a fresh TestRequest.
        self.test_request = None;
        if self.process(frame, now).is_err() {
            return;
        }
        // Messages that arrived early may now be in sequence.
        loop {
            let expected = self.store.next_target_seq();
            // Anything below `expected` was covered by a gap fill or a reset.
            while let Some((&seq, _)) = self.queue.first_key_value() {
                if seq >= expected {
                    break;
                }
                self.dequeue(seq);
                self.answered_early.remove(&seq);
            }
            let Some(next) = self.dequeue(expected) else {
                break;
            };
            if self.process(&next, now).is_err() || self.state == State::Disconnected {
                break;
            }
        }
    }

    fn process(&mut self, raw: &[u8], now: SystemTime) -> Step {
        let msg = match parse(raw) {
            Ok(m) => m,
            Err(ParseError::Garbled(g)) => return self.garbled(g),
            Err(ParseError::BeginString(b)) => {
                return Err(self.end_session(
                    "Incorrect BeginString",
                    DisconnectReason::Protocol(format!("unsupported BeginString {b:?}")),
                    now,
                ));
            }
            Err(e) => return self.invalid(raw, e, now),
        };
        let header = match msg.header() {
            Ok(h) => h,
            Err(e) => return self.invalid(raw, e, now),
        };
        if header.begin_string != self.config.begin_string {
            return Err(self.end_session(
                "Incorrect BeginString",
                DisconnectReason::Protocol(format!("BeginString {} received", header.begin_string)),
                now,
            ));
        }
        let mt = header.msg_type;
        let logging_on = matches!(self.state, State::AwaitingLogon | State::LogonSent);
        if self.state == State::LogonSent && mt == msg_type::LOGOUT {
            // Our Logon refused: say why, in the counterparty's words.
            let why = msg
                .get_str(tags::TEXT)
                .map_or("(no Text)".to_owned(), |t| format!("{:?}", sanitize(t)));
            // No Logout is sent back while logging on (see `end_session`): the text is unused.
            return Err(self.end_session(
                "Logon refused",
                DisconnectReason::Protocol(format!("Logon refused by the counterparty: {why}")),
                now,
            ));
        }
        if logging_on && mt != msg_type::LOGON {
            return Err(self.end_session(
                "First message must be Logon",
                DisconnectReason::Protocol("first message is not a Logon".into()),
                now,
            ));
        }
        if !logging_on && mt == msg_type::LOGON {
            return Err(self.end_session(
                "Logon received while logged on",
                DisconnectReason::Protocol("duplicate Logon".into()),
                now,
            ));
        }

        // CompID and SendingTime problems end the session after a Reject that consumes the
        // sequence number.
        let comp_problem = if header.sender_comp_id != self.config.target_comp_id.as_bytes() {
            Some(tags::SENDER_COMP_ID)
        } else if header.target_comp_id != self.config.sender_comp_id.as_bytes() {
            Some(tags::TARGET_COMP_ID)
        } else {
            None
        };
        let stale = self.config.max_latency.is_some_and(|max| {
            let d = now
                .duration_since(header.sending_time)
                .or_else(|e| Ok::<_, ()>(e.duration()))
                .unwrap_or(Duration::ZERO);
            d > max
        });
        let orig_after = header.poss_dup
            && header
                .orig_sending_time
                .is_some_and(|orig| orig > header.sending_time);
        let fatal = match (comp_problem, stale || orig_after) {
            (Some(tag), _) => Some((tag, SessionRejectReason::CompIdProblem, "CompID problem")),
            (None, true) => Some((
                tags::SENDING_TIME,
                SessionRejectReason::SendingTimeAccuracy,
                "SendingTime accuracy problem",
            )),
            _ => None,
        };
        if let Some((tag, reason, text)) = fatal {
            if logging_on {
                self.disconnect(DisconnectReason::Protocol(text.into()), now);
                return Err(Stop::Ended);
            }
            let seq = header.msg_seq_num;
            self.send_reject(
                seq,
                std::str::from_utf8(mt).ok(),
                Some(tag),
                reason,
                text,
                now,
            )?;
            if seq == self.store.next_target_seq() {
                self.set_next_target(seq.saturating_add(1))?;
            }
            return Err(self.end_session(text, DisconnectReason::Protocol(text.into()), now));
        }

        // Reset mode ignores MsgSeqNum, so only a GapFillFlag that says N (or none) takes it:
        // a malformed one (`123=y`) taken as N would move the target past messages never
        // asked for. It goes through the sequence check and is rejected in its turn.
        if mt == msg_type::SEQUENCE_RESET
            && matches!(msg.get_bool(tags::GAP_FILL_FLAG), Ok(None | Some(false)))
        {
            return self.sequence_reset_mode(&msg, &header, now);
        }
        if mt == msg_type::LOGON {
            return self.on_logon(&msg, &header, now);
        }

        let expected = self.store.next_target_seq();
        let seq = header.msg_seq_num;
        if seq > expected {
            if mt == msg_type::LOGOUT {
                return Err(self.logout_received(&msg, now));
            }
            let resend_request = mt == msg_type::RESEND_REQUEST;
            if resend_request {
                // Answer first, or two sides waiting for each other's resend deadlock.
                self.on_resend_request(&msg, now)?;
            }
            self.enqueue(seq, raw, now)?;
            if resend_request {
                self.answered_early.insert(seq);
            }
            return self.request_resend(expected, seq, now);
        }
        if seq < expected {
            if header.poss_dup {
                // A resend without OrigSendingTime is malformed even as a duplicate: the
                // counterparty is told (FIX test case 2g, as QuickFIX does), the number
                // expected stays.
                if lacks_orig_sending_time(&header) {
                    return self.reject_without_orig_sending_time(seq, mt, now);
                }
                self.out
                    .push_back(Action::Event(SessionEvent::DuplicateIgnored(seq)));
                return Ok(());
            }
            let text = format!("MsgSeqNum too low, expecting {expected} but received {seq}");
            return Err(self.end_session(
                &text,
                DisconnectReason::SeqTooLow {
                    expected,
                    received: seq,
                },
                now,
            ));
        }
        if header.poss_dup && lacks_orig_sending_time(&header) {
            self.reject_without_orig_sending_time(seq, mt, now)?;
            return self.set_next_target(seq.saturating_add(1));
        }
        self.in_sequence(&msg, &header, now)
    }

    /// Rejects message `seq` of type `mt`, marked PossDupFlag=Y without OrigSendingTime
    /// (reason 1, tag 122).
    fn reject_without_orig_sending_time(&mut self, seq: u64, mt: &[u8], now: SystemTime) -> Step {
        self.send_reject(
            seq,
            std::str::from_utf8(mt).ok(),
            Some(tags::ORIG_SENDING_TIME),
            SessionRejectReason::RequiredTagMissing,
            "OrigSendingTime required with PossDupFlag=Y",
            now,
        )
    }

    fn garbled(&mut self, g: Garbled) -> Step {
        tracing::warn!(reason = %g, "ignoring garbled FIX message");
        self.out
            .push_back(Action::Event(SessionEvent::Garbled(g.to_string())));
        Ok(())
    }

    /// A well-framed message that fails validation: Reject it in sequence (or queue it when
    /// early so it is rejected in order), or end the session when it cannot be referenced.
    fn invalid(&mut self, raw: &[u8], e: ParseError, now: SystemTime) -> Step {
        let ParseError::Invalid {
            reason,
            ref_tag,
            ref_seq_num,
            ref_msg_type,
            text,
        } = e
        else {
            return Ok(());
        };
        if matches!(self.state, State::AwaitingLogon | State::LogonSent) {
            self.disconnect(
                DisconnectReason::Protocol(format!("invalid Logon: {text}")),
                now,
            );
            return Err(Stop::Ended);
        }
        let missing_seq = ref_tag == Some(tags::MSG_SEQ_NUM)
            || (ref_seq_num.is_none() && reason != SessionRejectReason::IncorrectDataFormat);
        let Some(seq) = ref_seq_num.filter(|_| !missing_seq) else {
            return Err(self.end_session(
                "MsgSeqNum(34) missing or invalid",
                DisconnectReason::Protocol("message without a valid MsgSeqNum".into()),
                now,
            ));
        };
        let expected = self.store.next_target_seq();
        if seq > expected {
            self.enqueue(seq, raw, now)?;
            return self.request_resend(expected, seq, now);
        }
        if seq < expected {
            // Already processed or covered by a gap fill.
            return Ok(());
        }
        self.send_reject(seq, ref_msg_type.as_deref(), ref_tag, reason, &text, now)?;
        self.set_next_target(seq.saturating_add(1))
    }

    fn request_resend(&mut self, expected: u64, received: u64, now: SystemTime) -> Step {
        if let Some(until) = self.resend_until {
            // Our request asked for everything (EndSeqNo 0), so it covers this too; just
            // remember how far the gap reaches before the request counts as satisfied.
            self.resend_until = Some(until.max(received));
            return Ok(());
        }
        self.out.push_back(Action::Event(SessionEvent::GapDetected {
            begin: expected,
            received,
        }));
        // FIX 4.2 and later: EndSeqNo 0 means "everything after BeginSeqNo".
        self.send_admin(msg_type::RESEND_REQUEST, now, |b| {
            b.push_uint(tags::BEGIN_SEQ_NO, expected)
                .push_uint(tags::END_SEQ_NO, 0);
        })?;
        self.resend_until = Some(received);
        Ok(())
    }

    fn on_logon(&mut self, msg: &Message<'_>, header: &Header<'_>, now: SystemTime) -> Step {
        let protocol = |text: &str| DisconnectReason::Protocol(text.to_owned());
        if self.config.role == Role::Acceptor {
            if !self.schedule_open(now) {
                tracing::warn!(counterparty = %self.config.target_comp_id,
                    schedule = %self.config.schedule, "Logon outside the session schedule refused");
                self.disconnect(DisconnectReason::OutsideSchedule, now);
                return Err(Stop::Ended);
            }
            self.ensure_period(now)?;
        }
        let hb = match msg.get_uint(tags::HEART_BT_INT) {
            Ok(Some(hb)) if HEART_BT_INT_RANGE.contains(&hb) => hb,
            Ok(Some(_)) | Err(_) => {
                let value = msg.get(tags::HEART_BT_INT).unwrap_or_default();
                let text = format!(
                    "HeartBtInt(108)={} is out of range: expected whole seconds in {}..={}",
                    sanitize(&String::from_utf8_lossy(value)),
                    HEART_BT_INT_RANGE.start(),
                    HEART_BT_INT_RANGE.end()
                );
                let why = protocol(&text);
                return Err(self.refuse_logon(&text, why, now));
            }
            Ok(None) => {
                self.disconnect(protocol("Logon without a valid HeartBtInt"), now);
                return Err(Stop::Ended);
            }
        };
        if !matches!(msg.get(tags::ENCRYPT_METHOD), Some(b"0")) {
            self.disconnect(protocol("Logon with unsupported EncryptMethod"), now);
            return Err(Stop::Ended);
        }
        let reset = msg
            .get_bool(tags::RESET_SEQ_NUM_FLAG)
            .ok()
            .flatten()
            .unwrap_or(false);
        if reset && self.config.role == Role::Acceptor {
            if !self.config.allow_peer_reset {
                let text = "ResetSeqNumFlag(141)=Y is not allowed on this session: sequence numbers are kept across failovers; log on without it";
                return Err(self.refuse_logon(text, protocol(text), now));
            }
            if let Err(e) = self.store.reset() {
                self.store_failed(&e);
                return Err(Stop::Ended);
            }
        }
        let expected = self.store.next_target_seq();
        let seq = header.msg_seq_num;
        // Any Logon below the number expected, PossDupFlag or not: a Logon is never resent
        // (a resend gap-fills it). The counterparty is told why before the close, as the
        // session test cases and QuickFIX do: a bare close left its operator with a reconnect
        // loop and no reason. The Logout is numbered and stored like any message of ours.
        if seq < expected {
            let text = format!("MsgSeqNum too low, expecting {expected} but received {seq}");
            let why = DisconnectReason::SeqTooLow {
                expected,
                received: seq,
            };
            return Err(self.refuse_logon(&text, why, now));
        }
        if self.config.role == Role::Acceptor {
            self.heartbeat = Duration::from_secs(hb);
            self.send_admin(msg_type::LOGON, now, |b| {
                b.push_uint(tags::ENCRYPT_METHOD, 0)
                    .push_uint(tags::HEART_BT_INT, hb);
                if reset {
                    b.push_bool(tags::RESET_SEQ_NUM_FLAG, true);
                }
            })?;
        }
        self.set_state(State::Active, now);
        self.out
            .push_back(Action::Event(SessionEvent::LoggedOn { reset }));
        if seq > expected {
            // The Logon itself falls in the requested range; the peer gap-fills it.
            return self.request_resend(expected, seq, now);
        }
        if seq == expected {
            self.set_next_target(seq.saturating_add(1))?;
        }
        Ok(())
    }

    /// Answers a Logon we will not accept with a Logout saying `text`, then closes for
    /// `reason`: the counterparty's operator reads why instead of guessing at a closed socket.
    fn refuse_logon(&mut self, text: &str, reason: DisconnectReason, now: SystemTime) -> Stop {
        tracing::warn!(counterparty = %self.config.target_comp_id, "Logon refused: {text}");
        if self.send_logout(Some(text), now).is_err() {
            return Stop::Ended;
        }
        self.disconnect(reason, now);
        Stop::Ended
    }

    fn sequence_reset_mode(
        &mut self,
        msg: &Message<'_>,
        header: &Header<'_>,
        now: SystemTime,
    ) -> Step {
        let expected = self.store.next_target_seq();
        let new = match msg.get_uint(tags::NEW_SEQ_NO) {
            Ok(Some(n)) => n,
            Ok(None) => {
                return self.send_reject(
                    header.msg_seq_num,
                    Some("4"),
                    Some(tags::NEW_SEQ_NO),
                    SessionRejectReason::RequiredTagMissing,
                    "NewSeqNo missing",
                    now,
                )
            }
            Err(_) => {
                return self.send_reject(
                    header.msg_seq_num,
                    Some("4"),
                    Some(tags::NEW_SEQ_NO),
                    SessionRejectReason::IncorrectDataFormat,
                    "NewSeqNo is not a number",
                    now,
                )
            }
        };
        if new < expected {
            return self.send_reject(
                header.msg_seq_num,
                Some("4"),
                Some(tags::NEW_SEQ_NO),
                SessionRejectReason::ValueIncorrect,
                &format!("attempt to lower sequence number, invalid value NewSeqNo={new}"),
                now,
            );
        }
        if new > expected {
            self.set_next_target(new)?;
            self.out
                .push_back(Action::Event(SessionEvent::SequenceReset {
                    new_seq_num: new,
                    gap_fill: false,
                }));
        }
        Ok(())
    }

    fn logout_received(&mut self, msg: &Message<'_>, now: SystemTime) -> Stop {
        if let Some(text) = msg.get_str(tags::TEXT) {
            tracing::info!(text, "counterparty logged out");
        }
        if self.state == State::LogoutSent {
            self.disconnect(DisconnectReason::LoggedOut, now);
            return Stop::Ended;
        }
        if self.send_logout(None, now).is_err() {
            return Stop::Ended;
        }
        self.disconnect(DisconnectReason::LoggedOut, now);
        Stop::Ended
    }

    fn in_sequence(&mut self, msg: &Message<'_>, header: &Header<'_>, now: SystemTime) -> Step {
        let seq = header.msg_seq_num;
        let next = seq.saturating_add(1);
        match header.msg_type {
            // Any frame already cleared the outstanding TestRequest in `on_frame`.
            msg_type::HEARTBEAT => self.set_next_target(next),
            msg_type::TEST_REQUEST => {
                let Some(id) = msg.get(tags::TEST_REQ_ID) else {
                    self.send_reject(
                        seq,
                        Some("1"),
                        Some(tags::TEST_REQ_ID),
                        SessionRejectReason::RequiredTagMissing,
                        "TestReqID missing",
                        now,
                    )?;
                    return self.set_next_target(next);
                };
                self.set_next_target(next)?;
                self.send_admin(msg_type::HEARTBEAT, now, |b| {
                    b.push_verbatim(tags::TEST_REQ_ID, id);
                })
            }
            msg_type::RESEND_REQUEST => {
                self.set_next_target(next)?;
                if self.answered_early.remove(&seq) {
                    return Ok(());
                }
                self.on_resend_request(msg, now)
            }
            msg_type::REJECT => {
                self.set_next_target(next)?;
                self.out
                    .push_back(Action::Event(SessionEvent::RejectReceived {
                        ref_seq_num: msg.get_uint(tags::REF_SEQ_NUM).ok().flatten(),
                        text: msg.get_str(tags::TEXT).map(str::to_owned),
                    }));
                Ok(())
            }
            msg_type::SEQUENCE_RESET => {
                // Gap fill (reset mode was handled before the sequence check), or a
                // GapFillFlag that is neither Y nor N.
                if msg.get_bool(tags::GAP_FILL_FLAG).is_err() {
                    self.send_reject(
                        seq,
                        Some("4"),
                        Some(tags::GAP_FILL_FLAG),
                        SessionRejectReason::IncorrectDataFormat,
                        "GapFillFlag must be Y or N",
                        now,
                    )?;
                    return self.set_next_target(next);
                }
                match msg.get_uint(tags::NEW_SEQ_NO) {
                    Ok(Some(new)) if new > seq => {
                        self.set_next_target(new)?;
                        self.out
                            .push_back(Action::Event(SessionEvent::SequenceReset {
                                new_seq_num: new,
                                gap_fill: true,
                            }));
                        Ok(())
                    }
                    Ok(Some(new)) => {
                        self.send_reject(
                            seq,
                            Some("4"),
                            Some(tags::NEW_SEQ_NO),
                            SessionRejectReason::ValueIncorrect,
                            &format!(
                                "attempt to lower sequence number, invalid value NewSeqNo={new}"
                            ),
                            now,
                        )?;
                        self.set_next_target(next)
                    }
                    Ok(None) | Err(_) => {
                        self.send_reject(
                            seq,
                            Some("4"),
                            Some(tags::NEW_SEQ_NO),
                            SessionRejectReason::RequiredTagMissing,
                            "NewSeqNo missing or invalid",
                            now,
                        )?;
                        self.set_next_target(next)
                    }
                }
            }
            msg_type::LOGOUT => {
                self.set_next_target(next)?;
                Err(self.logout_received(msg, now))
            }
            _ => {
                self.set_next_target(next)?;
                self.out.push_back(Action::Deliver(AppMessage {
                    seq_num: seq,
                    poss_dup: header.poss_dup,
                    frame: msg.raw().to_vec(),
                }));
                Ok(())
            }
        }
    }

    /// Answers a ResendRequest, a piece at a time (see [`answer_piece`](Self::answer_piece)).
    fn on_resend_request(&mut self, msg: &Message<'_>, now: SystemTime) -> Step {
        let (Ok(Some(begin)), Ok(Some(end))) = (
            msg.get_uint(tags::BEGIN_SEQ_NO),
            msg.get_uint(tags::END_SEQ_NO),
        ) else {
            let seq = msg.seq_num().unwrap_or(0);
            // The first field at fault: missing (reason 1) or not a number (reason 6).
            let (tag, value) = match msg.get_uint(tags::BEGIN_SEQ_NO) {
                Ok(Some(_)) => (tags::END_SEQ_NO, msg.get_uint(tags::END_SEQ_NO)),
                other => (tags::BEGIN_SEQ_NO, other),
            };
            let (reason, text) = match value {
                Err(_) => (
                    SessionRejectReason::IncorrectDataFormat,
                    "BeginSeqNo and EndSeqNo must be sequence numbers",
                ),
                Ok(_) => (
                    SessionRejectReason::RequiredTagMissing,
                    "BeginSeqNo and EndSeqNo required",
                ),
            };
            return self.send_reject(seq, Some("2"), Some(tag), reason, text, now);
        };
        let last_sent = self.store.next_sender_seq().saturating_sub(1);
        // 0 (FIX 4.2+) and 999999 (older counterparties) both mean "up to the last sent".
        let end = if end == 0 || end == 999_999 || end > last_sent {
            last_sent
        } else {
            end
        };
        let begin = begin.max(1);
        if begin > end {
            self.out
                .push_back(Action::Event(SessionEvent::ResendServed {
                    begin,
                    end,
                    resent: 0,
                }));
            return Ok(());
        }
        if let Some(a) = self.answering.as_mut() {
            // Asked again while the answer runs (a counterparty that timed out waiting, or
            // one asking in chunks): the running answer goes on to cover both. What it
            // already queued is on its way on this connection, so it is not queued again
            // (a counterparty asking over and over cannot make us send a range over and
            // over). Never past `limit`: what we numbered since waits behind the answer
            // and goes out as sent. Numbers below the answer's start were never queued on
            // this connection: the answer goes back for them.
            a.end = a.end.max(end.min(a.limit));
            if begin < a.begin {
                a.begin = begin;
                a.next = a.next.min(begin);
            }
            return Ok(());
        }
        self.answering = Some(ResendAnswer {
            begin,
            end,
            next: begin,
            limit: last_sent,
            resent: 0,
            joined_from: None,
            first_sent_upto: 0,
        });
        self.answer_piece(now)
    }

    /// Whether a ResendRequest is still being answered: the transport calls
    /// [`continue_resend`](Self::continue_resend) once the connection has written the last
    /// piece (less than [`RESEND_PIECE_BYTES`] left unwritten).
    pub fn resending(&self) -> bool {
        self.answering.is_some()
    }

    /// Bytes of our own messages waiting for a resend answer to finish: the transport counts
    /// them as unsent, as it counts its own queue (a counterparty that reads too slowly for
    /// both is a slow consumer).
    pub fn bytes_behind_resend(&self) -> usize {
        self.behind_resend_bytes
    }

    /// Queues the next piece of the resend answer (and, after the last, what waited behind
    /// it). Nothing when no answer is running.
    pub fn continue_resend(&mut self, now: SystemTime) {
        if self.answering.is_some() && self.state != State::Disconnected {
            let _ = self.answer_piece(now);
        }
    }

    /// One piece of the answer: at most [`RESEND_PIECE_BYTES`] of stored messages (again,
    /// with PossDupFlag=Y, or for the first time if they joined the answer), and every run of
    /// numbers without one before them (admin messages, or messages a crash kept out of the
    /// store) as one SequenceReset-GapFill.
    fn answer_piece(&mut self, now: SystemTime) -> Step {
        let Some(mut a) = self.answering else {
            return Ok(());
        };
        let stored = match self
            .store
            .sent_range_bounded(a.next, a.end, RESEND_PIECE_BYTES)
        {
            Ok(s) => s,
            Err(e) => {
                self.store_failed(&e);
                return Err(Stop::Ended);
            }
        };
        let read: usize = stored.iter().map(|(_, f)| f.len()).sum();
        let mut read_to = a.next;
        for (seq, frame) in stored {
            read_to = seq.saturating_add(1);
            // A message that joined the answer goes out for the first time: as it would have
            // without the answer, only later (a new order marked PossDupFlag=Y is one many
            // venues reject or hold, review 24).
            let first = a.joined_from.is_some_and(|j| seq >= j) && seq > a.first_sent_upto;
            let Some(again) = self.resend_frame(&frame, seq, now, !first) else {
                tracing::warn!(seq, "stored message unreadable; gap-filling it");
                continue;
            };
            if seq > a.next {
                self.gap_fill(a.next, seq, now)?;
            }
            self.out.push_back(Action::Send(again));
            if first {
                a.first_sent_upto = seq;
            } else {
                a.resent = a.resent.saturating_add(1);
            }
            a.next = seq.saturating_add(1);
        }
        self.last_sent = now;
        // Less than a piece read: the range holds nothing more.
        if read >= RESEND_PIECE_BYTES && read_to <= a.end {
            // Unreadable messages at the end of the piece are filled now, so the next
            // piece starts after them (and cannot read the same ones for ever).
            if read_to > a.next {
                self.gap_fill(a.next, read_to, now)?;
                a.next = read_to;
            }
            self.answering = Some(a);
            return Ok(());
        }
        if a.next <= a.end {
            self.gap_fill(a.next, a.end.saturating_add(1), now)?;
        }
        self.answering = None;
        self.behind_resend_bytes = 0;
        let behind = std::mem::take(&mut self.behind_resend);
        self.out.extend(behind.into_iter().map(Action::Send));
        self.out
            .push_back(Action::Event(SessionEvent::ResendServed {
                begin: a.begin,
                end: a.end,
                resent: a.resent,
            }));
        Ok(())
    }

    /// Queues a message we number now (`stored`: its number, when the store keeps it for
    /// resending): for sending, or, while a resend answer runs, after it. A stored message
    /// numbered right after the answer joins it: the answer sends it from the store when it
    /// gets there, so live flow costs no memory however long the answer takes (held in
    /// memory, a busy session's flow passed the write-queue bound during a long answer, and
    /// a counterparty reading as fast as it could was dropped as a slow consumer). Anything
    /// else (an admin message, or anything after one) waits in memory, in order, and counts
    /// toward that bound.
    fn emit(&mut self, frame: Vec<u8>, stored: Option<u64>) {
        let Some(a) = self.answering.as_mut() else {
            self.out.push_back(Action::Send(frame));
            return;
        };
        match stored {
            // Only an answer running to the last number sent: one asked for an older range
            // would have to send everything after it again to reach the new message.
            Some(seq)
                if self.behind_resend.is_empty()
                    && a.end == a.limit
                    && seq == a.limit.saturating_add(1) =>
            {
                a.joined_from.get_or_insert(seq);
                a.limit = seq;
                a.end = seq;
            }
            _ => {
                self.behind_resend_bytes = self.behind_resend_bytes.saturating_add(frame.len());
                self.behind_resend.push_back(frame);
            }
        }
    }

    /// Forgets a running resend answer and what waited behind it: the connection is gone,
    /// or the numbers start again.
    fn drop_resend_answer(&mut self) {
        self.answering = None;
        self.behind_resend.clear();
        self.behind_resend_bytes = 0;
    }

    /// SequenceReset-GapFill sent *as* message `seq`, moving the peer to `new_seq`; it is a
    /// resend, so it takes an old number and touches nothing in the store.
    fn gap_fill(&mut self, seq: u64, new_seq: u64, now: SystemTime) -> Step {
        let mut b = self.header(msg_type::SEQUENCE_RESET, seq, now);
        b.push_bool(tags::POSS_DUP_FLAG, true)
            .push_time(tags::ORIG_SENDING_TIME, now)
            .push_bool(tags::GAP_FILL_FLAG, true)
            .push_uint(tags::NEW_SEQ_NO, new_seq);
        match b.finish() {
            Ok(f) => {
                self.out.push_back(Action::Send(f));
                Ok(())
            }
            Err(e) => {
                self.disconnect(
                    DisconnectReason::Protocol(format!("encoding failed: {e}")),
                    now,
                );
                Err(Stop::Ended)
            }
        }
    }

    /// The stored frame rebuilt for resending (`again`): same MsgSeqNum and body,
    /// PossDupFlag=Y, OrigSendingTime = its first SendingTime, SendingTime = now. Not
    /// `again` (its first sending, by an answer it joined): as stored, SendingTime = now.
    fn resend_frame(
        &self,
        stored: &[u8],
        seq: u64,
        now: SystemTime,
        again: bool,
    ) -> Option<Vec<u8>> {
        let m = parse(stored).ok()?;
        let orig = m.get(tags::SENDING_TIME)?;
        let mut b = MessageBuilder::new(self.config.begin_string, m.msg_type());
        b.push_str(tags::SENDER_COMP_ID, &self.config.sender_comp_id)
            .push_str(tags::TARGET_COMP_ID, &self.config.target_comp_id)
            .push_uint(tags::MSG_SEQ_NUM, seq);
        if again {
            b.push_bool(tags::POSS_DUP_FLAG, true)
                .push_time(tags::SENDING_TIME, now);
            // Never after this SendingTime: the receiver rejects that and logs out, and after
            // a failover the original was stamped by another machine's clock.
            match crate::time::parse_utc_timestamp(orig) {
                Some(t) if t > now => b.push_time(tags::ORIG_SENDING_TIME, now),
                _ => b.push_verbatim(tags::ORIG_SENDING_TIME, orig),
            };
        } else {
            b.push_time(tags::SENDING_TIME, now);
        }
        // What the lines above wrote anew; the rest goes as stored (a first sending keeps a
        // PossDupFlag its message was stored with).
        let written = [
            tags::BEGIN_STRING,
            tags::BODY_LENGTH,
            tags::MSG_TYPE,
            tags::SENDER_COMP_ID,
            tags::TARGET_COMP_ID,
            tags::MSG_SEQ_NUM,
            tags::SENDING_TIME,
            tags::CHECK_SUM,
        ];
        let resend_fields = [tags::POSS_DUP_FLAG, tags::ORIG_SENDING_TIME];
        let anew = |tag: &u32| written.contains(tag) || (again && resend_fields.contains(tag));
        for f in m.fields().iter().filter(|f| !anew(&f.tag)) {
            b.push_verbatim(f.tag, f.value);
        }
        b.finish().ok()
    }

    /// Timer tick: heartbeats, test requests and the logon, logout and heartbeat timeouts.
    /// Call it at least every second (or every `heartbeat_interval / 10`).
    ///
    /// With a [`SessionSchedule`]: a logged-on session whose schedule has closed (or whose
    /// period has ended, for a 24-hour schedule) sends Logout ("End of session"); one still
    /// waiting for a Logon is disconnected; a disconnected one entering a new period resets
    /// its store to that period ([`SessionStore::reset_for_period`], event
    /// [`SessionEvent::NewPeriod`]).
    pub fn on_timer(&mut self, now: SystemTime) {
        if !matches!(self.config.schedule, SessionSchedule::Always) {
            let t = chrono::DateTime::<chrono::Utc>::from(now);
            let open = self.config.schedule.is_open(t);
            let stale = self
                .config
                .schedule
                .session_id_secs(t)
                .is_some_and(|id| self.store.period() != Some(id));
            match self.state {
                State::Disconnected if open && stale => {
                    let _ = self.ensure_period(now);
                    return;
                }
                State::AwaitingLogon | State::LogonSent if !open || stale => {
                    self.disconnect(DisconnectReason::OutsideSchedule, now);
                    return;
                }
                State::Active if !open || stale => {
                    tracing::info!(counterparty = %self.config.target_comp_id,
                        "end of the session period: logging out");
                    self.logout(Some("End of session"), now);
                    return;
                }
                _ => {}
            }
        }
        match self.state {
            State::Disconnected => {}
            State::AwaitingLogon | State::LogonSent => {
                if since(now, self.state_since) >= self.config.logon_timeout {
                    self.disconnect(DisconnectReason::LogonTimeout, now);
                }
            }
            State::LogoutSent => {
                if since(now, self.state_since) >= self.config.logout_timeout {
                    self.disconnect(DisconnectReason::LogoutTimeout, now);
                }
            }
            State::Active => {
                let hb = self.heartbeat;
                if hb.is_zero() {
                    return;
                }
                let quiet = since(now, self.last_received);
                // `hb` is at most HEART_BT_INT_RANGE's end (or our own configuration), so
                // these cannot saturate in practice; saturating keeps it so if that changes.
                let scaled = |num: u32| hb.saturating_mul(num).checked_div(5).unwrap_or(hb);
                if quiet >= scaled(12) {
                    self.disconnect(DisconnectReason::HeartbeatTimeout, now);
                    return;
                }
                if quiet >= scaled(6) && self.test_request.is_none() {
                    self.test_request_counter = self.test_request_counter.wrapping_add(1);
                    let id = format!("TEST{}", self.test_request_counter);
                    let sent = self.send_admin(msg_type::TEST_REQUEST, now, |b| {
                        b.push_str(tags::TEST_REQ_ID, &id);
                    });
                    if sent.is_err() {
                        return;
                    }
                    self.test_request = Some(id);
                }
                if since(now, self.last_sent) >= hb {
                    let _ = self.send_admin(msg_type::HEARTBEAT, now, |_| {});
                }
            }
        }
    }
}
