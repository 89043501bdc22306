//! The binary wire protocol shared by the exchange feed, the price server and the client.
//!
//! Every message travels in one frame:
//!
//! ```text
//! u32 length (big endian, counts the bytes after itself) | u8 version | u8 type | body
//! ```
//!
//! The full layout of every body is in `docs/price-protocol.md`. Decoding never panics: every
//! read is bounds-checked and every failure is a typed [`ProtocolError`]. A frame whose length
//! prefix is valid can always be skipped, so a receiver may answer a malformed body with an
//! error reply and keep the connection; only a bad length prefix ([`ProtocolError::is_fatal`])
//! loses framing and forces the connection closed.
//!
//! The lints below make the compiler hold this module to it: no unchecked arithmetic, no
//! `unwrap`/`expect`, no indexing that could panic.
#![deny(
    clippy::arithmetic_side_effects,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use std::sync::Arc;

use bytes::{Buf, BufMut};
/// The buffer types of [`read_frame`] and [`Message::encode`], re-exported so that users of
/// the protocol need not depend on `bytes` themselves.
pub use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Protocol version written in every frame; a receiver refuses any other.
pub const VERSION: u8 = 1;
/// Largest accepted value of the length prefix: bounds the memory one frame can make a peer hold.
pub const MAX_FRAME_LEN: usize = 1 << 20;
/// Longest symbol in bytes (symbols are length-prefixed with one byte, and kept short on purpose).
pub const MAX_SYMBOL_LEN: usize = 64;
/// Largest number of symbols in one Subscribe or Unsubscribe (the count is a u16).
pub const MAX_SYMBOLS_PER_REQUEST: usize = u16::MAX as usize;
/// Longest error text in bytes (length-prefixed with a u16).
pub const MAX_TEXT_LEN: usize = 1024;
/// Bytes of the length prefix.
const LEN_PREFIX: usize = 4;

/// Message type codes (the byte after the version).
mod code {
    pub const HELLO: u8 = 0x01;
    pub const ROLE_CHANGE: u8 = 0x02;
    pub const HEARTBEAT: u8 = 0x03;
    pub const SUBSCRIBE: u8 = 0x10;
    pub const UNSUBSCRIBE: u8 = 0x11;
    pub const SNAPSHOT: u8 = 0x20;
    pub const UPDATE: u8 = 0x21;
    pub const SNAPSHOT_COMPLETE: u8 = 0x22;
    pub const ERROR: u8 = 0x30;
}

/// Everything that can go wrong while decoding or encoding a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The length prefix exceeds [`MAX_FRAME_LEN`]; framing is lost.
    #[error("frame length {0} exceeds the maximum of {MAX_FRAME_LEN}")]
    FrameTooLarge(usize),
    /// The length prefix is smaller than version + type; framing is lost.
    #[error("frame length {0} is shorter than the 2-byte header")]
    FrameTooShort(usize),
    /// The frame was written by a protocol version this build does not speak.
    #[error("unsupported protocol version {0} (this build speaks {VERSION})")]
    UnsupportedVersion(u8),
    /// The type byte names no known message.
    #[error("unknown message type 0x{0:02x}")]
    UnknownMessageType(u8),
    /// The body ended before a field was complete.
    #[error("frame body truncated while reading {0}")]
    Truncated(&'static str),
    /// The body is longer than its message.
    #[error("{0} unexpected trailing bytes after the message")]
    TrailingBytes(usize),
    /// A string field is not UTF-8.
    #[error("{0} is not valid UTF-8")]
    InvalidUtf8(&'static str),
    /// A symbol is empty or longer than [`MAX_SYMBOL_LEN`].
    #[error("invalid symbol length {0} (1..={MAX_SYMBOL_LEN} bytes)")]
    InvalidSymbol(usize),
    /// The role byte is neither standby (0) nor primary (1).
    #[error("invalid role byte {0}")]
    InvalidRole(u8),
    /// A request lists more symbols than [`MAX_SYMBOLS_PER_REQUEST`].
    #[error("{0} symbols in one request (max {MAX_SYMBOLS_PER_REQUEST})")]
    TooManySymbols(usize),
    /// An error text is longer than [`MAX_TEXT_LEN`].
    #[error("text field of {0} bytes exceeds {MAX_TEXT_LEN}")]
    TextTooLong(usize),
}

impl ProtocolError {
    /// True when the length prefix itself was bad: the stream can no longer be split into
    /// frames and the connection must be closed. Other errors concern one frame only.
    pub fn is_fatal(&self) -> bool {
        matches!(self, Self::FrameTooLarge(_) | Self::FrameTooShort(_))
    }
}

/// Role of a price server, as announced to its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Role {
    /// Mirrors subscriptions and keeps its book current, publishes nothing.
    Standby,
    /// The one server of the group that publishes prices.
    Primary,
}

impl Role {
    fn to_byte(self) -> u8 {
        match self {
            Role::Standby => 0,
            Role::Primary => 1,
        }
    }

    fn from_byte(b: u8) -> Result<Self, ProtocolError> {
        match b {
            0 => Ok(Role::Standby),
            1 => Ok(Role::Primary),
            other => Err(ProtocolError::InvalidRole(other)),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Standby => "standby",
            Role::Primary => "primary",
        })
    }
}

/// Error codes carried by [`Message::Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The symbol is not traded on the upstream exchange.
    UnknownInstrument,
    /// The frame could not be decoded (see the text).
    MalformedFrame,
    /// The peer sent a message that is not valid in this direction.
    UnexpectedMessage,
    /// The server requires a token in the client's Hello, and none or a wrong one came.
    Unauthorized,
    /// A code this build does not know (kept so decoding never fails on new codes).
    Other(u16),
}

impl ErrorCode {
    fn to_u16(self) -> u16 {
        match self {
            ErrorCode::UnknownInstrument => 1,
            ErrorCode::MalformedFrame => 2,
            ErrorCode::UnexpectedMessage => 3,
            ErrorCode::Unauthorized => 4,
            ErrorCode::Other(c) => c,
        }
    }

    fn from_u16(c: u16) -> Self {
        match c {
            1 => ErrorCode::UnknownInstrument,
            2 => ErrorCode::MalformedFrame,
            3 => ErrorCode::UnexpectedMessage,
            4 => ErrorCode::Unauthorized,
            c => ErrorCode::Other(c),
        }
    }
}

/// One instrument's top of book as published by the exchange.
#[derive(Debug, Clone, PartialEq)]
pub struct Price {
    /// Instrument name, e.g. `SYM17`. Shared so fan-out to many clients does not copy it.
    pub symbol: Arc<str>,
    /// Best bid.
    pub bid: f64,
    /// Best ask.
    pub ask: f64,
    /// Quantity at the best bid.
    pub bid_size: u32,
    /// Quantity at the best ask.
    pub ask_size: u32,
    /// The exchange's sequence number for this instrument; increases with every update.
    pub exch_seq: u64,
    /// When the exchange published this price: nanoseconds since the Unix epoch (its clock).
    /// Carried end to end so a client can tell how old a price is (exchange-to-client latency).
    pub exch_time_ns: u64,
}

/// Every message of the protocol. Server-to-client messages carry the sender's epoch.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// First message on a connection: who the sender is and its role and epoch. A client may
    /// send one too (role and epoch are then ignored), to present a server's `token`.
    Hello {
        /// Current role of the sender.
        role: Role,
        /// Current epoch of the sender.
        epoch: u64,
        /// Free-form name of the sender (node name or address), for logs and boards.
        server: String,
        /// The secret a price server configured with a token requires before anything else;
        /// absent on the wire when `None` (so older peers read the Hello unchanged).
        token: Option<String>,
    },
    /// The sender's role or epoch changed (promotion or demotion).
    RoleChange {
        /// New role.
        role: Role,
        /// New epoch.
        epoch: u64,
    },
    /// Liveness signal, sent periodically so a peer detects a silent failure quickly.
    Heartbeat {
        /// Current role of the sender.
        role: Role,
        /// Current epoch of the sender.
        epoch: u64,
    },
    /// Client asks to receive these instruments.
    Subscribe {
        /// Client-chosen id echoed in error replies.
        req_id: u32,
        /// Instruments to add.
        symbols: Vec<String>,
    },
    /// Client no longer wants these instruments.
    Unsubscribe {
        /// Client-chosen id echoed in error replies.
        req_id: u32,
        /// Instruments to drop.
        symbols: Vec<String>,
    },
    /// The current price of an instrument, sent on subscription and on promotion.
    Snapshot {
        /// Epoch of the sender.
        epoch: u64,
        /// The price.
        price: Price,
    },
    /// A change of an instrument's price.
    Update {
        /// Epoch of the sender.
        epoch: u64,
        /// The price.
        price: Price,
    },
    /// End of the initial book sent by the exchange feed on connect.
    SnapshotComplete {
        /// Epoch of the sender (0 for the exchange).
        epoch: u64,
        /// Number of instruments sent.
        count: u32,
    },
    /// A request (or a frame) was refused.
    Error {
        /// Epoch of the sender.
        epoch: u64,
        /// Id of the refused request, 0 when it could not be decoded.
        req_id: u32,
        /// What went wrong.
        code: ErrorCode,
        /// Instrument concerned, empty when none.
        symbol: String,
        /// Human-readable explanation.
        message: String,
    },
}

impl Message {
    /// Appends this message as one complete frame to `out`.
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), ProtocolError> {
        let start = out.len();
        out.put_u32(0); // patched below once the body length is known
        out.put_u8(VERSION);
        let res = self.encode_body(out);
        if let Err(e) = res {
            out.truncate(start);
            return Err(e);
        }
        let len = out.len().saturating_sub(start).saturating_sub(LEN_PREFIX);
        // len <= MAX_FRAME_LEN < u32::MAX, so the conversion succeeds whenever it is in range.
        let prefix = out.get_mut(start..start.saturating_add(LEN_PREFIX));
        match (u32::try_from(len), prefix) {
            (Ok(n), Some(prefix)) if len <= MAX_FRAME_LEN => {
                prefix.copy_from_slice(&n.to_be_bytes());
                Ok(())
            }
            _ => {
                out.truncate(start);
                Err(ProtocolError::FrameTooLarge(len))
            }
        }
    }

    /// Encodes this message into a fresh buffer.
    pub fn to_frame(&self) -> Result<Bytes, ProtocolError> {
        let mut b = BytesMut::with_capacity(64);
        self.encode(&mut b)?;
        Ok(b.freeze())
    }

    fn encode_body(&self, out: &mut BytesMut) -> Result<(), ProtocolError> {
        match self {
            Message::Hello {
                role,
                epoch,
                server,
                token,
            } => {
                out.put_u8(code::HELLO);
                out.put_u8(role.to_byte());
                out.put_u64(*epoch);
                put_text(out, server)?;
                if let Some(t) = token {
                    put_text(out, t)?;
                }
            }
            Message::RoleChange { role, epoch } => {
                out.put_u8(code::ROLE_CHANGE);
                out.put_u8(role.to_byte());
                out.put_u64(*epoch);
            }
            Message::Heartbeat { role, epoch } => {
                out.put_u8(code::HEARTBEAT);
                out.put_u8(role.to_byte());
                out.put_u64(*epoch);
            }
            Message::Subscribe { req_id, symbols } | Message::Unsubscribe { req_id, symbols } => {
                out.put_u8(if matches!(self, Message::Subscribe { .. }) {
                    code::SUBSCRIBE
                } else {
                    code::UNSUBSCRIBE
                });
                out.put_u32(*req_id);
                if symbols.len() > MAX_SYMBOLS_PER_REQUEST {
                    return Err(ProtocolError::TooManySymbols(symbols.len()));
                }
                out.put_u16(symbols.len() as u16);
                for s in symbols {
                    put_symbol(out, s)?;
                }
            }
            Message::Snapshot { epoch, price } | Message::Update { epoch, price } => {
                out.put_u8(if matches!(self, Message::Snapshot { .. }) {
                    code::SNAPSHOT
                } else {
                    code::UPDATE
                });
                out.put_u64(*epoch);
                put_symbol(out, &price.symbol)?;
                out.put_f64(price.bid);
                out.put_f64(price.ask);
                out.put_u32(price.bid_size);
                out.put_u32(price.ask_size);
                out.put_u64(price.exch_seq);
                out.put_u64(price.exch_time_ns);
            }
            Message::SnapshotComplete { epoch, count } => {
                out.put_u8(code::SNAPSHOT_COMPLETE);
                out.put_u64(*epoch);
                out.put_u32(*count);
            }
            Message::Error {
                epoch,
                req_id,
                code: c,
                symbol,
                message,
            } => {
                out.put_u8(code::ERROR);
                out.put_u64(*epoch);
                out.put_u32(*req_id);
                out.put_u16(c.to_u16());
                // The symbol of an error may be whatever the client sent, so it is carried as
                // text (possibly empty or long), not as a validated symbol.
                put_text(out, truncate_utf8(symbol, MAX_SYMBOL_LEN))?;
                put_text(out, truncate_utf8(message, MAX_TEXT_LEN))?;
            }
        }
        Ok(())
    }

    /// Decodes one frame body (everything after the length prefix: version, type, body).
    pub fn decode(frame: &[u8]) -> Result<Message, ProtocolError> {
        let mut r = Reader(frame);
        let version = r.u8("version")?;
        if version != VERSION {
            return Err(ProtocolError::UnsupportedVersion(version));
        }
        let ty = r.u8("message type")?;
        let msg = match ty {
            code::HELLO => {
                let role = Role::from_byte(r.u8("role")?)?;
                let epoch = r.u64("epoch")?;
                let server = r.text("server")?;
                let token = match r.0.is_empty() {
                    true => None,
                    false => Some(r.text("token")?),
                };
                Message::Hello {
                    role,
                    epoch,
                    server,
                    token,
                }
            }
            code::ROLE_CHANGE => Message::RoleChange {
                role: Role::from_byte(r.u8("role")?)?,
                epoch: r.u64("epoch")?,
            },
            code::HEARTBEAT => Message::Heartbeat {
                role: Role::from_byte(r.u8("role")?)?,
                epoch: r.u64("epoch")?,
            },
            code::SUBSCRIBE | code::UNSUBSCRIBE => {
                let req_id = r.u32("req_id")?;
                let n = usize::from(r.u16("symbol count")?);
                // Each symbol takes at least 2 bytes: refuse a count the body cannot hold
                // before allocating for it.
                if n.saturating_mul(2) > r.0.len() {
                    return Err(ProtocolError::Truncated("symbols"));
                }
                let mut symbols = Vec::with_capacity(n);
                for _ in 0..n {
                    symbols.push(r.symbol()?.to_string());
                }
                if ty == code::SUBSCRIBE {
                    Message::Subscribe { req_id, symbols }
                } else {
                    Message::Unsubscribe { req_id, symbols }
                }
            }
            code::SNAPSHOT | code::UPDATE => {
                let epoch = r.u64("epoch")?;
                let price = Price {
                    symbol: Arc::from(r.symbol()?),
                    bid: r.f64("bid")?,
                    ask: r.f64("ask")?,
                    bid_size: r.u32("bid_size")?,
                    ask_size: r.u32("ask_size")?,
                    exch_seq: r.u64("exch_seq")?,
                    exch_time_ns: r.u64("exch_time_ns")?,
                };
                if ty == code::SNAPSHOT {
                    Message::Snapshot { epoch, price }
                } else {
                    Message::Update { epoch, price }
                }
            }
            code::SNAPSHOT_COMPLETE => Message::SnapshotComplete {
                epoch: r.u64("epoch")?,
                count: r.u32("count")?,
            },
            code::ERROR => Message::Error {
                epoch: r.u64("epoch")?,
                req_id: r.u32("req_id")?,
                code: ErrorCode::from_u16(r.u16("error code")?),
                symbol: r.text("symbol")?,
                message: r.text("message")?,
            },
            other => return Err(ProtocolError::UnknownMessageType(other)),
        };
        if !r.0.is_empty() {
            return Err(ProtocolError::TrailingBytes(r.0.len()));
        }
        Ok(msg)
    }

    /// The epoch this message carries, if it is one that carries an epoch.
    pub fn epoch(&self) -> Option<u64> {
        match self {
            Message::Hello { epoch, .. }
            | Message::RoleChange { epoch, .. }
            | Message::Heartbeat { epoch, .. }
            | Message::Snapshot { epoch, .. }
            | Message::Update { epoch, .. }
            | Message::SnapshotComplete { epoch, .. }
            | Message::Error { epoch, .. } => Some(*epoch),
            Message::Subscribe { .. } | Message::Unsubscribe { .. } => None,
        }
    }
}

/// Byte offset of the type code in a complete frame (after the length prefix and version).
const TYPE_OFFSET: usize = LEN_PREFIX + 1;

/// Encodes `Update { epoch, price }` as one frame that a server can share between every client
/// it fans the price out to: encoded once, copied many times.
pub fn price_frame(epoch: u64, price: &Price) -> Result<Bytes, ProtocolError> {
    let mut b = BytesMut::with_capacity(price.symbol.len().saturating_add(48));
    // Cloning the price only bumps the symbol's reference count.
    Message::Update {
        epoch,
        price: price.clone(),
    }
    .encode(&mut b)?;
    Ok(b.freeze())
}

/// Appends a frame made by [`price_frame`] to `out`, as a `Snapshot` when `snapshot` is true:
/// the two messages share one body layout and differ only in their type code.
pub fn put_price_frame(out: &mut BytesMut, frame: &[u8], snapshot: bool) {
    let start = out.len();
    out.extend_from_slice(frame);
    if snapshot {
        if let Some(t) = out.get_mut(start.saturating_add(TYPE_OFFSET)) {
            *t = code::SNAPSHOT;
        }
    }
}

/// Splits one complete frame off the front of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed. The returned bytes start at the version byte
/// and are to be passed to [`Message::decode`]. An error here is always fatal for the stream.
pub fn split_frame(buf: &mut BytesMut) -> Result<Option<Bytes>, ProtocolError> {
    let Some(&[a, b, c, d]) = buf.get(..LEN_PREFIX) else {
        return Ok(None);
    };
    let len = usize::try_from(u32::from_be_bytes([a, b, c, d])).unwrap_or(usize::MAX);
    if len > MAX_FRAME_LEN {
        return Err(ProtocolError::FrameTooLarge(len));
    }
    if len < 2 {
        return Err(ProtocolError::FrameTooShort(len));
    }
    // len <= MAX_FRAME_LEN, so this cannot saturate.
    let total = LEN_PREFIX.saturating_add(len);
    if buf.len() < total {
        // Reserve once so a large frame arriving in pieces does not reallocate repeatedly.
        buf.reserve(total.saturating_sub(buf.len()));
        return Ok(None);
    }
    buf.advance(LEN_PREFIX);
    Ok(Some(buf.split_to(len).freeze()))
}

/// Decodes the next message at the front of `buf`, consuming its frame.
///
/// `Ok(None)`: incomplete. A non-fatal error still consumes the bad frame, so the caller may
/// report it and go on with the next one.
pub fn decode_message(buf: &mut BytesMut) -> Result<Option<Message>, ProtocolError> {
    match split_frame(buf)? {
        None => Ok(None),
        Some(frame) => Message::decode(&frame).map(Some),
    }
}

/// Failure while reading frames from a stream.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The socket failed.
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
    /// The length prefix was invalid; the stream cannot be resynchronised.
    #[error("framing lost: {0}")]
    Framing(#[from] ProtocolError),
    /// The peer closed the connection in the middle of a frame.
    #[error("connection closed in the middle of a frame")]
    UnexpectedEof,
    /// A frame was begun but not completed within the allowed time (see [`read_frame_within`]).
    #[error("a frame was begun but not completed within {0:?}")]
    Stalled(std::time::Duration),
}

/// Reads the next frame from `r`, buffering in `buf`. `Ok(None)` on a clean end of stream.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
) -> Result<Option<Bytes>, ReadError> {
    loop {
        if let Some(frame) = split_frame(buf)? {
            return Ok(Some(frame));
        }
        if buf.capacity().saturating_sub(buf.len()) < 4096 {
            buf.reserve(16 * 1024);
        }
        if r.read_buf(buf).await? == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(ReadError::UnexpectedEof)
            };
        }
    }
}

/// Like [`read_frame`], but a frame that has begun must be complete within `partial`: a peer
/// that sends part of a frame and stops holds a buffer and a connection for nothing. Waiting
/// for the first byte of a frame is not limited (a subscribed client may stay silent).
pub async fn read_frame_within<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    partial: std::time::Duration,
) -> Result<Option<Bytes>, ReadError> {
    let mut begun = (!buf.is_empty()).then(tokio::time::Instant::now);
    loop {
        if let Some(frame) = split_frame(buf)? {
            return Ok(Some(frame));
        }
        if buf.capacity().saturating_sub(buf.len()) < 4096 {
            buf.reserve(16 * 1024);
        }
        let n = match begun {
            None => r.read_buf(buf).await?,
            Some(t0) => {
                let until = t0.checked_add(partial).unwrap_or(t0);
                match tokio::time::timeout_at(until, r.read_buf(buf)).await {
                    Ok(n) => n?,
                    Err(_) => return Err(ReadError::Stalled(partial)),
                }
            }
        };
        if n == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(ReadError::UnexpectedEof)
            };
        }
        if begun.is_none() {
            begun = Some(tokio::time::Instant::now());
        }
    }
}

fn put_symbol(out: &mut BytesMut, s: &str) -> Result<(), ProtocolError> {
    if s.is_empty() || s.len() > MAX_SYMBOL_LEN {
        return Err(ProtocolError::InvalidSymbol(s.len()));
    }
    out.put_u8(s.len() as u8);
    out.put_slice(s.as_bytes());
    Ok(())
}

fn put_text(out: &mut BytesMut, s: &str) -> Result<(), ProtocolError> {
    if s.len() > MAX_TEXT_LEN {
        return Err(ProtocolError::TextTooLong(s.len()));
    }
    out.put_u16(s.len() as u16);
    out.put_slice(s.as_bytes());
    Ok(())
}

/// Cuts `s` to at most `max` bytes on a character boundary (error replies echo client input).
fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    // A char boundary exists within 4 bytes below any index, and 0 is always one.
    let end = (0..=max)
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0);
    s.get(..end).unwrap_or_default()
}

/// Bounds-checked cursor over a frame body.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ProtocolError> {
        if self.0.len() < n {
            return Err(ProtocolError::Truncated(what));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], ProtocolError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, ProtocolError> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, ProtocolError> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, ProtocolError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, ProtocolError> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    fn f64(&mut self, what: &'static str) -> Result<f64, ProtocolError> {
        Ok(f64::from_be_bytes(self.array(what)?))
    }

    fn symbol(&mut self) -> Result<&'a str, ProtocolError> {
        let n = usize::from(self.u8("symbol length")?);
        if n == 0 || n > MAX_SYMBOL_LEN {
            return Err(ProtocolError::InvalidSymbol(n));
        }
        std::str::from_utf8(self.take(n, "symbol")?)
            .map_err(|_| ProtocolError::InvalidUtf8("symbol"))
    }

    fn text(&mut self, what: &'static str) -> Result<String, ProtocolError> {
        let n = usize::from(self.u16(what)?);
        if n > MAX_TEXT_LEN {
            return Err(ProtocolError::TextTooLong(n));
        }
        let bytes = self.take(n, what)?;
        std::str::from_utf8(bytes)
            .map(str::to_string)
            .map_err(|_| ProtocolError::InvalidUtf8(what))
    }
}

#[cfg(test)]
// Test code indexes its own fixtures; the deny above is for code that reads peer input.
#[allow(
    clippy::arithmetic_side_effects,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn price(sym: &str) -> Price {
        Price {
            symbol: Arc::from(sym),
            bid: 99.5,
            ask: 100.25,
            bid_size: 10,
            ask_size: 20,
            exch_seq: 42,
            exch_time_ns: 1_700_000_000_000_000_000,
        }
    }

    fn roundtrip(m: &Message) -> Message {
        let mut b = BytesMut::new();
        m.encode(&mut b).expect("encode");
        let got = decode_message(&mut b).expect("decode").expect("complete");
        assert!(b.is_empty());
        got
    }

    #[test]
    fn every_message_roundtrips() {
        let msgs = vec![
            Message::Hello {
                role: Role::Standby,
                epoch: 7,
                server: "node-a".into(),
                token: None,
            },
            Message::Hello {
                role: Role::Standby,
                epoch: 0,
                server: "client".into(),
                token: Some("s3cret".into()),
            },
            Message::RoleChange {
                role: Role::Primary,
                epoch: 8,
            },
            Message::Heartbeat {
                role: Role::Primary,
                epoch: u64::MAX,
            },
            Message::Subscribe {
                req_id: 1,
                symbols: vec!["SYM1".into(), "SYM2".into()],
            },
            Message::Unsubscribe {
                req_id: 2,
                symbols: vec![],
            },
            Message::Snapshot {
                epoch: 3,
                price: price("SYM1"),
            },
            Message::Update {
                epoch: 3,
                price: price("SYM9"),
            },
            Message::SnapshotComplete {
                epoch: 0,
                count: 200,
            },
            Message::Error {
                epoch: 3,
                req_id: 9,
                code: ErrorCode::UnknownInstrument,
                symbol: "NOPE".into(),
                message: "unknown instrument".into(),
            },
            Message::Error {
                epoch: 3,
                req_id: 0,
                code: ErrorCode::Other(999),
                symbol: String::new(),
                message: String::new(),
            },
        ];
        for m in &msgs {
            assert_eq!(&roundtrip(m), m);
        }
    }

    #[test]
    fn shared_price_frames_decode_as_update_or_snapshot() {
        let p = price("SYM3");
        let frame = price_frame(9, &p).expect("encode");
        let mut out = BytesMut::new();
        put_price_frame(&mut out, &frame, false);
        put_price_frame(&mut out, &frame, true);
        assert_eq!(
            decode_message(&mut out),
            Ok(Some(Message::Update {
                epoch: 9,
                price: p.clone()
            }))
        );
        assert_eq!(
            decode_message(&mut out),
            Ok(Some(Message::Snapshot { epoch: 9, price: p }))
        );
        assert!(out.is_empty());
    }

    #[test]
    fn partial_frames_wait_for_more_bytes() {
        let frame = Message::RoleChange {
            role: Role::Primary,
            epoch: 1,
        }
        .to_frame()
        .expect("encode");
        for cut in 0..frame.len() {
            let mut b = BytesMut::from(&frame[..cut]);
            assert_eq!(decode_message(&mut b), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn bad_frames_give_typed_errors() {
        let mut b = BytesMut::from(&[0xff, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            split_frame(&mut b),
            Err(ProtocolError::FrameTooLarge(_))
        ));
        let mut b = BytesMut::from(&[0, 0, 0, 1, 1][..]);
        assert_eq!(split_frame(&mut b), Err(ProtocolError::FrameTooShort(1)));
        assert_eq!(
            Message::decode(&[2, 1]),
            Err(ProtocolError::UnsupportedVersion(2))
        );
        assert_eq!(
            Message::decode(&[1, 0x77]),
            Err(ProtocolError::UnknownMessageType(0x77))
        );
        assert_eq!(
            Message::decode(&[1, code::ROLE_CHANGE, 5]),
            Err(ProtocolError::InvalidRole(5))
        );
        assert!(matches!(
            Message::decode(&[1, code::HEARTBEAT, 1, 0]),
            Err(ProtocolError::Truncated(_))
        ));
        // A bad body is not fatal: the next frame is still readable.
        let mut b = BytesMut::new();
        b.put_u32(2);
        b.put_slice(&[1, 0x77]);
        Message::Heartbeat {
            role: Role::Standby,
            epoch: 4,
        }
        .encode(&mut b)
        .expect("encode");
        let e = decode_message(&mut b).expect_err("unknown type");
        assert!(!e.is_fatal());
        assert!(matches!(
            decode_message(&mut b),
            Ok(Some(Message::Heartbeat { epoch: 4, .. }))
        ));
    }

    #[test]
    fn encode_refuses_invalid_symbols() {
        let long = "X".repeat(MAX_SYMBOL_LEN + 1);
        let mut b = BytesMut::new();
        let m = Message::Subscribe {
            req_id: 1,
            symbols: vec![long],
        };
        assert!(matches!(
            m.encode(&mut b),
            Err(ProtocolError::InvalidSymbol(_))
        ));
        assert!(
            b.is_empty(),
            "a refused message leaves no partial frame behind"
        );
    }

    fn arb_symbol() -> impl Strategy<Value = String> {
        "[A-Za-z0-9._]{1,64}"
    }

    fn arb_price() -> impl Strategy<Value = Price> {
        (
            arb_symbol(),
            any::<f64>(),
            any::<f64>(),
            any::<u32>(),
            any::<u32>(),
            any::<u64>(),
            any::<u64>(),
        )
            .prop_map(
                |(s, bid, ask, bid_size, ask_size, exch_seq, exch_time_ns)| Price {
                    symbol: Arc::from(s.as_str()),
                    bid,
                    ask,
                    bid_size,
                    ask_size,
                    exch_seq,
                    exch_time_ns,
                },
            )
    }

    fn arb_message() -> impl Strategy<Value = Message> {
        let role = prop_oneof![Just(Role::Standby), Just(Role::Primary)];
        prop_oneof![
            (
                role.clone(),
                any::<u64>(),
                ".{0,40}",
                proptest::option::of(".{0,40}")
            )
                .prop_map(|(role, epoch, server, token)| Message::Hello {
                    role,
                    epoch,
                    server,
                    token,
                }),
            (role.clone(), any::<u64>())
                .prop_map(|(role, epoch)| Message::RoleChange { role, epoch }),
            (role, any::<u64>()).prop_map(|(role, epoch)| Message::Heartbeat { role, epoch }),
            (any::<u32>(), proptest::collection::vec(arb_symbol(), 0..20))
                .prop_map(|(req_id, symbols)| Message::Subscribe { req_id, symbols }),
            (any::<u32>(), proptest::collection::vec(arb_symbol(), 0..20))
                .prop_map(|(req_id, symbols)| Message::Unsubscribe { req_id, symbols }),
            (any::<u64>(), arb_price())
                .prop_map(|(epoch, price)| Message::Snapshot { epoch, price }),
            (any::<u64>(), arb_price()).prop_map(|(epoch, price)| Message::Update { epoch, price }),
            (any::<u64>(), any::<u32>())
                .prop_map(|(epoch, count)| Message::SnapshotComplete { epoch, count }),
            (
                any::<u64>(),
                any::<u32>(),
                any::<u16>(),
                "[A-Z0-9]{0,64}",
                ".{0,100}"
            )
                .prop_map(|(epoch, req_id, c, symbol, message)| Message::Error {
                    epoch,
                    req_id,
                    code: ErrorCode::from_u16(c),
                    symbol,
                    message
                }),
        ]
    }

    /// Compares through the encoding, since NaN prices are not equal to themselves.
    fn same_bytes(a: &Message, b: &Message) -> bool {
        a.to_frame().ok() == b.to_frame().ok()
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut b = BytesMut::from(&bytes[..]);
            // Keep decoding until the input is exhausted or framing is lost.
            while let Ok(Some(_)) | Err(ProtocolError::UnsupportedVersion(_) | ProtocolError::UnknownMessageType(_)
                | ProtocolError::Truncated(_) | ProtocolError::TrailingBytes(_) | ProtocolError::InvalidUtf8(_)
                | ProtocolError::InvalidSymbol(_) | ProtocolError::InvalidRole(_) | ProtocolError::TooManySymbols(_)
                | ProtocolError::TextTooLong(_)) = decode_message(&mut b) {}
            let _ = Message::decode(&bytes);
        }

        #[test]
        fn arbitrary_messages_roundtrip(m in arb_message()) {
            let mut b = BytesMut::new();
            m.encode(&mut b).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let got = decode_message(&mut b).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(got.as_ref().is_some_and(|g| same_bytes(g, &m)));
            prop_assert!(b.is_empty());
        }

        #[test]
        fn corrupting_one_byte_never_panics(m in arb_message(), pos in any::<usize>(), val in any::<u8>()) {
            let frame = m.to_frame().map_err(|e| TestCaseError::fail(e.to_string()))?;
            let mut bytes = frame.to_vec();
            let i = pos % bytes.len();
            bytes[i] = val;
            let mut b = BytesMut::from(&bytes[..]);
            let _ = decode_message(&mut b);
        }
    }
}
