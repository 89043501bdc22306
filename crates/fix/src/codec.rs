//! Zero-copy FIX framing, parsing, validation and encoding.
//!
//! * [`frame`] finds one complete message at the start of a byte stream, reading only
//!   BeginString and BodyLength, so the cost per message is one pass over the bytes.
//! * [`Deframer`] buffers a TCP stream and hands out complete frames as borrowed slices.
//! * [`parse`] splits a frame into [`Field`]s that borrow the frame, and checks the CheckSum
//!   and the structural rules of the standard header and trailer.
//! * [`Message::header`] extracts and type-checks the session header fields.
//! * [`MessageBuilder`] writes a message and computes BodyLength and CheckSum.
//!
//! No function here panics on any input: every index is checked, and the parser is fuzzed
//! (`fuzz/`) and property-tested. The lints below make the compiler hold us to it.
#![deny(
    clippy::arithmetic_side_effects,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use std::time::SystemTime;

use thiserror::Error;

use crate::tags::{self, BeginString, SessionRejectReason, SOH};
use crate::time;

/// Largest BodyLength accepted by default; a peer announcing more is treated as garbage
/// rather than letting it make us buffer without bound.
pub const DEFAULT_MAX_BODY_LENGTH: usize = 1 << 20;

/// Longest BeginString value we look for before declaring the stream garbage.
const MAX_BEGIN_STRING_LEN: usize = 16;

/// BodyLength digits accepted (up to 9 999 999 bytes).
const MAX_BODY_LENGTH_DIGITS: usize = 7;

/// Length of the trailer `10=ccc<SOH>`.
const TRAILER_LEN: usize = 7;

/// Outcome of [`frame`] on a buffer that does not start with garbage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framed {
    /// More bytes are needed to decide.
    Incomplete,
    /// A complete frame of this many bytes starts the buffer.
    Complete(usize),
}

/// Why the start of a buffer is not a FIX frame. In every case the bytes cannot be trusted
/// and the FIX specification treats the message as garbled: it is dropped without a Reject
/// and without consuming a sequence number. `skip()` says how many bytes to drop so the next
/// attempt starts at the next plausible `8=FIX`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    /// The buffer does not start with a `8=<BeginString><SOH>` field.
    #[error("stream does not start with BeginString(8); skipping {skip} bytes")]
    NoBeginString {
        /// Bytes to drop to resynchronise.
        skip: usize,
    },
    /// The second field is not a well-formed BodyLength(9).
    #[error("second field is not a valid BodyLength(9); skipping {skip} bytes")]
    BadBodyLength {
        /// Bytes to drop to resynchronise.
        skip: usize,
    },
    /// BodyLength exceeds the configured maximum.
    #[error("BodyLength {len} exceeds the maximum {max}; skipping {skip} bytes")]
    BodyTooLong {
        /// Announced length.
        len: usize,
        /// Configured maximum.
        max: usize,
        /// Bytes to drop to resynchronise.
        skip: usize,
    },
    /// The bytes where BodyLength says the CheckSum(10) field is are not `10=ddd<SOH>`.
    #[error("CheckSum(10) not found where BodyLength says; skipping {skip} bytes")]
    BodyLengthMismatch {
        /// Bytes to drop to resynchronise.
        skip: usize,
    },
}

impl FrameError {
    /// Bytes to drop from the front of the buffer before framing again.
    pub fn skip(&self) -> usize {
        match *self {
            FrameError::NoBeginString { skip }
            | FrameError::BadBodyLength { skip }
            | FrameError::BodyTooLong { skip, .. }
            | FrameError::BodyLengthMismatch { skip } => skip,
        }
    }
}

/// Offset of the next plausible message start after the first byte, keeping a partial
/// `8=FIX` prefix at the end of the buffer since it may complete with the next read.
fn resync_offset(buf: &[u8]) -> usize {
    const START: &[u8] = b"8=FIX";
    (1..buf.len())
        .find(|&i| buf.get(i..).is_some_and(|rest| is_prefix_of(rest, START)))
        .unwrap_or(buf.len().max(1))
}

/// Whether `have` could be the beginning of `want` (or `want` the beginning of `have`).
fn is_prefix_of(have: &[u8], want: &[u8]) -> bool {
    have.iter().zip(want).all(|(a, b)| a == b)
}

/// Finds one complete frame at the start of `buf`, accepting bodies up to `max_body` bytes.
pub fn frame(buf: &[u8], max_body: usize) -> Result<Framed, FrameError> {
    if buf.is_empty() {
        return Ok(Framed::Incomplete);
    }
    let garbage = || FrameError::NoBeginString {
        skip: resync_offset(buf),
    };
    if !is_prefix_of(buf, b"8=") {
        return Err(garbage());
    }
    let Some(after_tag) = buf.get(2..) else {
        return Ok(Framed::Incomplete);
    };
    // The BeginString value and its SOH.
    const BS_WINDOW: usize = MAX_BEGIN_STRING_LEN + 1;
    let window = after_tag.get(..BS_WINDOW).unwrap_or(after_tag);
    let bs_len = match window.iter().position(|&b| b == SOH) {
        Some(0) => return Err(garbage()),
        Some(i) => i,
        None if window.len() < BS_WINDOW => return Ok(Framed::Incomplete),
        None => return Err(garbage()),
    };
    let bad_len = || FrameError::BadBodyLength {
        skip: resync_offset(buf),
    };
    let rest = after_tag
        .get(bs_len.saturating_add(1)..)
        .unwrap_or_default();
    if !is_prefix_of(rest, b"9=") {
        return Err(bad_len());
    }
    let Some(digits) = rest.get(2..) else {
        return Ok(Framed::Incomplete);
    };
    let mut body_len: usize = 0;
    let mut n: usize = 0;
    loop {
        match digits.get(n) {
            None => {
                return if n <= MAX_BODY_LENGTH_DIGITS {
                    Ok(Framed::Incomplete)
                } else {
                    Err(bad_len())
                }
            }
            Some(&SOH) if n > 0 => break,
            Some(&d) if d.is_ascii_digit() && n < MAX_BODY_LENGTH_DIGITS => {
                // At most MAX_BODY_LENGTH_DIGITS digits: far from overflowing.
                body_len = body_len
                    .saturating_mul(10)
                    .saturating_add(usize::from(d.saturating_sub(b'0')));
                n = n.saturating_add(1);
            }
            Some(_) => return Err(bad_len()),
        }
    }
    if body_len > max_body {
        return Err(FrameError::BodyTooLong {
            len: body_len,
            max: max_body,
            skip: resync_offset(buf),
        });
    }
    // `8=` + BeginString + SOH + `9=` + digits + SOH.
    let offsets = bs_len
        .checked_add(n)
        .and_then(|h| h.checked_add(6))
        .and_then(|body_start| {
            let body_end = body_start.checked_add(body_len)?;
            Some((body_end, body_end.checked_add(TRAILER_LEN)?))
        });
    let Some((body_end, total)) = offsets else {
        return Err(bad_len());
    };
    let mismatch = || FrameError::BodyLengthMismatch {
        skip: resync_offset(buf),
    };
    if body_len == 0 {
        return Err(mismatch());
    }
    if buf.len() < body_end {
        return Ok(Framed::Incomplete);
    }
    if body_end.checked_sub(1).and_then(|i| buf.get(i)) != Some(&SOH) {
        return Err(mismatch());
    }
    // Check what we already have of the trailer, so a wrong BodyLength is reported as soon
    // as possible instead of waiting for bytes that may never come.
    let trailer = buf.get(body_end..buf.len().min(total)).unwrap_or_default();
    for (i, &b) in trailer.iter().enumerate() {
        let ok = match i {
            0 => b == b'1',
            1 => b == b'0',
            2 => b == b'=',
            3..=5 => b.is_ascii_digit(),
            _ => b == SOH,
        };
        if !ok {
            return Err(mismatch());
        }
    }
    if buf.len() < total {
        return Ok(Framed::Incomplete);
    }
    Ok(Framed::Complete(total))
}

/// Accumulates bytes from a stream and yields complete frames without copying them out.
#[derive(Debug)]
pub struct Deframer {
    buf: Vec<u8>,
    start: usize,
    max_body: usize,
}

impl Default for Deframer {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_BODY_LENGTH)
    }
}

impl Deframer {
    /// A deframer accepting bodies up to `max_body` bytes.
    pub fn new(max_body: usize) -> Self {
        Deframer {
            buf: Vec::with_capacity(8192),
            start: 0,
            max_body,
        }
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, data: &[u8]) {
        if self.start > 0 {
            // Compact lazily: frames handed out earlier borrowed the buffer until now.
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// Bytes buffered and not yet consumed.
    pub fn buffered(&self) -> usize {
        self.buf.len().saturating_sub(self.start)
    }

    /// Changes the largest body accepted from now on (e.g. a small one until a connection
    /// has logged on, so an anonymous peer cannot make us buffer a megabyte).
    pub fn set_max_body(&mut self, max_body: usize) {
        self.max_body = max_body;
    }

    /// Like [`next_frame`](Self::next_frame) but leaves a complete frame in the buffer (the
    /// next call of either returns it again); garbage is still skipped.
    pub fn peek_frame(&mut self) -> Result<Option<&[u8]>, FrameError> {
        self.frame_at_start(false)
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed, or the garbage that was
    /// skipped (call again to continue after it).
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, FrameError> {
        self.frame_at_start(true)
    }

    fn frame_at_start(&mut self, consume: bool) -> Result<Option<&[u8]>, FrameError> {
        let start = self.start;
        let avail = self.buf.get(start..).unwrap_or_default();
        match frame(avail, self.max_body) {
            Ok(Framed::Incomplete) => Ok(None),
            Ok(Framed::Complete(n)) => {
                let end = start.saturating_add(n);
                if consume {
                    self.start = end;
                }
                Ok(self.buf.get(start..end))
            }
            Err(e) => {
                let skip = e.skip().min(avail.len());
                self.start = start.saturating_add(skip);
                Err(e)
            }
        }
    }
}

/// One `tag=value` field, borrowing the frame it was parsed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field<'a> {
    /// Tag number.
    pub tag: u32,
    /// Raw value bytes (without the delimiter).
    pub value: &'a [u8],
}

/// Why a garbled frame is dropped (FIX: ignore, no Reject, no sequence number consumed).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Garbled {
    /// Framing failed.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The slice is not exactly one complete frame.
    #[error("not exactly one complete frame")]
    NotOneFrame,
    /// CheckSum(10) does not match the bytes.
    #[error("CheckSum {declared:03} does not match computed {computed:03}")]
    CheckSum {
        /// Value in the message.
        declared: u32,
        /// Value computed over the bytes.
        computed: u32,
    },
    /// The first three fields are not BeginString, BodyLength, MsgType.
    #[error("first three fields are not 8, 9, 35")]
    HeaderOrder,
}

/// Errors from [`parse`] and [`Message::header`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseError {
    /// The frame is garbled and must be ignored.
    #[error("garbled message: {0}")]
    Garbled(#[from] Garbled),
    /// The BeginString is not one we speak (FIX: Logout and disconnect).
    #[error("unsupported BeginString {0:?}")]
    BeginString(String),
    /// The message is well framed but invalid: the session answers with a Reject (or, for a
    /// few cases the session knows, a Logout).
    #[error("invalid message (SessionRejectReason {}): {text}", reason.code())]
    Invalid {
        /// SessionRejectReason to send.
        reason: SessionRejectReason,
        /// RefTagID, when one field is at fault.
        ref_tag: Option<u32>,
        /// MsgSeqNum of the bad message, if it could be read.
        ref_seq_num: Option<u64>,
        /// MsgType of the bad message, if it could be read.
        ref_msg_type: Option<String>,
        /// Human-readable detail for Text(58).
        text: String,
    },
}

impl ParseError {
    /// The SessionRejectReason this error calls for, if a Reject is the right answer.
    pub fn reject_reason(&self) -> Option<SessionRejectReason> {
        match self {
            ParseError::Invalid { reason, .. } => Some(*reason),
            _ => None,
        }
    }
}

/// Sum of bytes modulo 256, as CheckSum(10) defines it.
pub fn checksum(bytes: &[u8]) -> u32 {
    bytes
        .iter()
        .fold(0u32, |acc, &b| acc.wrapping_add(u32::from(b)))
        % 256
}

fn parse_uint(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 19 {
        return None;
    }
    let mut v: u64 = 0;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v
            .checked_mul(10)?
            .checked_add(u64::from(c.checked_sub(b'0')?))?;
    }
    Some(v)
}

/// Reads MsgSeqNum(34) straight from the bytes so a Reject can reference a message whose
/// field structure is too broken to parse.
fn scan_seq_num(raw: &[u8]) -> Option<u64> {
    parse_uint(scan_value(raw, b"\x0134=")?)
}

fn scan_msg_type(raw: &[u8]) -> Option<String> {
    std::str::from_utf8(scan_value(raw, b"\x0135=")?)
        .ok()
        .map(str::to_owned)
}

/// The value after the first occurrence of `pat` (`<SOH>tag=`), up to the next SOH.
fn scan_value<'a>(raw: &'a [u8], pat: &[u8]) -> Option<&'a [u8]> {
    let i = raw.windows(pat.len()).position(|w| w == pat)?;
    let v = raw.get(i.checked_add(pat.len())?..)?;
    let end = v.iter().position(|&b| b == SOH)?;
    v.get(..end)
}

/// A parsed FIX message: an index of fields over the caller's buffer.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    raw: &'a [u8],
    fields: Vec<Field<'a>>,
}

/// Parses exactly one complete frame (as returned by [`frame`] or [`Deframer`]).
pub fn parse(raw: &[u8]) -> Result<Message<'_>, ParseError> {
    match frame(raw, usize::MAX) {
        Ok(Framed::Complete(n)) if n == raw.len() => {}
        Ok(_) => return Err(Garbled::NotOneFrame.into()),
        Err(e) => return Err(Garbled::Frame(e).into()),
    }
    // frame() guarantees the trailer is `10=ddd<SOH>` at the end.
    let body_end = raw.len().saturating_sub(TRAILER_LEN);
    let (Some(body), Some(sum_digits)) = (
        raw.get(..body_end),
        raw.get(body_end.saturating_add(3)..body_end.saturating_add(6)),
    ) else {
        return Err(Garbled::NotOneFrame.into());
    };
    let declared = sum_digits.iter().fold(0u32, |a, &d| {
        // Three ASCII digits: at most 999.
        a.saturating_mul(10)
            .saturating_add(u32::from(d.saturating_sub(b'0')))
    });
    let computed = checksum(body);
    if declared != computed {
        return Err(Garbled::CheckSum { declared, computed }.into());
    }

    let invalid = |reason, ref_tag: Option<u32>, text: &str| ParseError::Invalid {
        reason,
        ref_tag,
        ref_seq_num: scan_seq_num(raw),
        ref_msg_type: scan_msg_type(raw),
        text: text.to_owned(),
    };

    let mut fields: Vec<Field<'_>> = Vec::with_capacity(32);
    let mut pos: usize = 0;
    // Length announced by the previous field if it was the length of a data field.
    let mut pending_data: Option<(u32, usize)> = None;
    while let Some(rest) = raw.get(pos..).filter(|r| !r.is_empty()) {
        let eq = rest.iter().position(|&b| b == b'=' || b == SOH);
        let eq = match eq {
            Some(i) if rest.get(i) == Some(&b'=') => i,
            _ => {
                return Err(invalid(
                    SessionRejectReason::InvalidTagNumber,
                    None,
                    "field without '='",
                ))
            }
        };
        let tag_bytes = rest.get(..eq).unwrap_or_default();
        let tag = match parse_uint(tag_bytes).and_then(|t| u32::try_from(t).ok()) {
            Some(t) if t > 0 && tag_bytes.first() != Some(&b'0') => t,
            _ => {
                return Err(invalid(
                    SessionRejectReason::InvalidTagNumber,
                    None,
                    "tag is not a positive integer",
                ))
            }
        };
        let vstart = pos.saturating_add(eq).saturating_add(1);
        let value_end = match pending_data.take() {
            Some((data_tag, len)) if data_tag == tag => {
                let end = vstart.checked_add(len);
                match end {
                    Some(e) if raw.get(e) == Some(&SOH) => e,
                    _ => {
                        return Err(invalid(
                            SessionRejectReason::IncorrectDataFormat,
                            Some(tag),
                            "data field length does not match its length field",
                        ))
                    }
                }
            }
            _ => match raw
                .get(vstart..)
                .and_then(|v| v.iter().position(|&b| b == SOH))
            {
                Some(i) => vstart.saturating_add(i),
                None => return Err(Garbled::NotOneFrame.into()),
            },
        };
        let Some(value) = raw.get(vstart..value_end) else {
            return Err(Garbled::NotOneFrame.into());
        };
        if value.is_empty() {
            return Err(invalid(
                SessionRejectReason::TagWithoutValue,
                Some(tag),
                "tag specified without a value",
            ));
        }
        if let Some(data_tag) = tags::data_tag_for(tag) {
            match parse_uint(value).and_then(|l| usize::try_from(l).ok()) {
                Some(l) => pending_data = Some((data_tag, l)),
                None => {
                    return Err(invalid(
                        SessionRejectReason::IncorrectDataFormat,
                        Some(tag),
                        "length field is not an integer",
                    ))
                }
            }
        }
        fields.push(Field { tag, value });
        pos = value_end.saturating_add(1);
    }

    let (Some(f0), Some(f1), Some(f2), true) = (
        fields.first(),
        fields.get(1),
        fields.get(2),
        fields.len() >= 4,
    ) else {
        return Err(Garbled::HeaderOrder.into());
    };
    if f0.tag != tags::BEGIN_STRING || f1.tag != tags::BODY_LENGTH || f2.tag != tags::MSG_TYPE {
        return Err(Garbled::HeaderOrder.into());
    }
    if BeginString::from_bytes(f0.value).is_none() {
        return Err(ParseError::BeginString(
            String::from_utf8_lossy(f0.value).into_owned(),
        ));
    }

    // Header fields must come before the body, trailer fields after it, and no header field
    // may repeat (body fields may, because of repeating groups).
    let last = fields.len().saturating_sub(1);
    let mut seen_header: u64 = 0;
    let mut in_body = false;
    for (i, f) in fields.iter().enumerate() {
        if let Some(idx) = tags::HEADER_TAGS.iter().position(|&t| t == f.tag) {
            if in_body {
                return Err(invalid(
                    SessionRejectReason::TagOutOfOrder,
                    Some(f.tag),
                    "header field after body field",
                ));
            }
            // HEADER_TAGS has fewer than 64 entries; an index past that cannot happen.
            let bit = u32::try_from(idx)
                .ok()
                .and_then(|i| 1u64.checked_shl(i))
                .unwrap_or(0);
            if seen_header & bit != 0 {
                return Err(invalid(
                    SessionRejectReason::TagAppearsMoreThanOnce,
                    Some(f.tag),
                    "header field appears more than once",
                ));
            }
            seen_header |= bit;
        } else if f.tag == tags::CHECK_SUM && i != last {
            return Err(invalid(
                SessionRejectReason::TagOutOfOrder,
                Some(f.tag),
                "CheckSum(10) is not the last field",
            ));
        } else {
            in_body = true;
        }
    }

    Ok(Message { raw, fields })
}

/// Session header fields of a received message, type-checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header<'a> {
    /// BeginString(8).
    pub begin_string: BeginString,
    /// MsgType(35).
    pub msg_type: &'a [u8],
    /// SenderCompID(49).
    pub sender_comp_id: &'a [u8],
    /// TargetCompID(56).
    pub target_comp_id: &'a [u8],
    /// MsgSeqNum(34).
    pub msg_seq_num: u64,
    /// SendingTime(52).
    pub sending_time: SystemTime,
    /// PossDupFlag(43) = Y.
    pub poss_dup: bool,
    /// PossResend(97) = Y.
    pub poss_resend: bool,
    /// OrigSendingTime(122), if present.
    pub orig_sending_time: Option<SystemTime>,
}

impl<'a> Message<'a> {
    /// The whole frame.
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// All fields in wire order, including 8, 9 and 10.
    pub fn fields(&self) -> &[Field<'a>] {
        &self.fields
    }

    /// Value of the first occurrence of `tag`.
    pub fn get(&self, tag: u32) -> Option<&'a [u8]> {
        self.fields.iter().find(|f| f.tag == tag).map(|f| f.value)
    }

    /// Values of every occurrence of `tag` (repeating groups).
    pub fn get_all(&self, tag: u32) -> impl Iterator<Item = &'a [u8]> + '_ {
        self.fields
            .iter()
            .filter(move |f| f.tag == tag)
            .map(|f| f.value)
    }

    /// Value of `tag` as UTF-8 text, `None` if absent or not UTF-8.
    pub fn get_str(&self, tag: u32) -> Option<&'a str> {
        self.get(tag).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Value of `tag` as an unsigned integer; `Err` with IncorrectDataFormat if malformed.
    pub fn get_uint(&self, tag: u32) -> Result<Option<u64>, ParseError> {
        match self.get(tag) {
            None => Ok(None),
            Some(v) => parse_uint(v).map(Some).ok_or_else(|| {
                self.invalid(
                    SessionRejectReason::IncorrectDataFormat,
                    tag,
                    "not an unsigned integer",
                )
            }),
        }
    }

    /// Value of a Boolean field (`Y`/`N`); `Err` with IncorrectDataFormat otherwise.
    pub fn get_bool(&self, tag: u32) -> Result<Option<bool>, ParseError> {
        match self.get(tag) {
            None => Ok(None),
            Some(b"Y") => Ok(Some(true)),
            Some(b"N") => Ok(Some(false)),
            Some(_) => {
                Err(self.invalid(SessionRejectReason::IncorrectDataFormat, tag, "not Y or N"))
            }
        }
    }

    /// MsgType(35) (always present after [`parse`]).
    pub fn msg_type(&self) -> &'a [u8] {
        self.fields.get(2).map(|f| f.value).unwrap_or_default()
    }

    /// BeginString (always valid after [`parse`]).
    pub fn begin_string(&self) -> Option<BeginString> {
        self.fields
            .first()
            .and_then(|f| BeginString::from_bytes(f.value))
    }

    /// MsgSeqNum(34) if present and numeric.
    pub fn seq_num(&self) -> Option<u64> {
        self.get(tags::MSG_SEQ_NUM).and_then(parse_uint)
    }

    /// Builds an `Invalid` error that references this message.
    pub fn invalid(&self, reason: SessionRejectReason, tag: u32, text: &str) -> ParseError {
        ParseError::Invalid {
            reason,
            ref_tag: Some(tag),
            ref_seq_num: self.seq_num(),
            ref_msg_type: std::str::from_utf8(self.msg_type()).ok().map(str::to_owned),
            text: text.to_owned(),
        }
    }

    /// Extracts the session header, checking that 49, 56, 34 and 52 are present and well
    /// formed (RequiredTagMissing / IncorrectDataFormat otherwise).
    pub fn header(&self) -> Result<Header<'a>, ParseError> {
        let required = |tag| {
            self.get(tag).ok_or_else(|| {
                self.invalid(
                    SessionRejectReason::RequiredTagMissing,
                    tag,
                    "required tag missing",
                )
            })
        };
        let begin_string = self.begin_string().ok_or_else(|| {
            let value = self.fields.first().map(|f| f.value).unwrap_or_default();
            ParseError::BeginString(String::from_utf8_lossy(value).into_owned())
        })?;
        let sender_comp_id = required(tags::SENDER_COMP_ID)?;
        let target_comp_id = required(tags::TARGET_COMP_ID)?;
        let msg_seq_num = parse_uint(required(tags::MSG_SEQ_NUM)?).ok_or_else(|| {
            self.invalid(
                SessionRejectReason::IncorrectDataFormat,
                tags::MSG_SEQ_NUM,
                "MsgSeqNum is not an unsigned integer",
            )
        })?;
        let time_field = |tag, v: &[u8]| {
            time::parse_utc_timestamp(v).ok_or_else(|| {
                self.invalid(
                    SessionRejectReason::IncorrectDataFormat,
                    tag,
                    "not a UTCTimestamp",
                )
            })
        };
        let sending_time = time_field(tags::SENDING_TIME, required(tags::SENDING_TIME)?)?;
        let orig_sending_time = match self.get(tags::ORIG_SENDING_TIME) {
            Some(v) => Some(time_field(tags::ORIG_SENDING_TIME, v)?),
            None => None,
        };
        Ok(Header {
            begin_string,
            msg_type: self.msg_type(),
            sender_comp_id,
            target_comp_id,
            msg_seq_num,
            sending_time,
            poss_dup: self.get_bool(tags::POSS_DUP_FLAG)?.unwrap_or(false),
            poss_resend: self.get_bool(tags::POSS_RESEND)?.unwrap_or(false),
            orig_sending_time,
        })
    }
}

/// Errors from [`MessageBuilder::finish`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EncodeError {
    /// A non-data value contains SOH, which would silently split it into two fields.
    #[error("value of tag {0} contains SOH")]
    SohInValue(u32),
    /// A value is empty, which FIX forbids.
    #[error("value of tag {0} is empty")]
    EmptyValue(u32),
    /// Pre-encoded fields were not `tag=value<SOH>` sequences.
    #[error("pre-encoded fields are malformed")]
    BadRawFields,
}

/// Writes one message. Fields are appended in call order after 8, 9 and 35; BodyLength and
/// CheckSum are computed by [`finish`](Self::finish).
#[derive(Debug, Clone)]
pub struct MessageBuilder {
    begin_string: BeginString,
    body: Vec<u8>,
    error: Option<EncodeError>,
}

impl MessageBuilder {
    /// Starts a message of `msg_type`.
    pub fn new(begin_string: BeginString, msg_type: &[u8]) -> Self {
        let mut b = MessageBuilder {
            begin_string,
            body: Vec::with_capacity(256),
            error: None,
        };
        b.push(tags::MSG_TYPE, msg_type);
        b
    }

    fn write_tag(&mut self, tag: u32) {
        use std::io::Write;
        // Writing to a Vec cannot fail.
        let _ = write!(self.body, "{tag}=");
    }

    fn check(&mut self, tag: u32, value: &[u8]) -> bool {
        if self.error.is_some() {
            return false;
        }
        if value.is_empty() {
            self.error = Some(EncodeError::EmptyValue(tag));
            return false;
        }
        if value.contains(&SOH) {
            self.error = Some(EncodeError::SohInValue(tag));
            return false;
        }
        true
    }

    /// Appends `tag=value`.
    pub fn push(&mut self, tag: u32, value: &[u8]) -> &mut Self {
        if self.check(tag, value) {
            self.write_tag(tag);
            self.body.extend_from_slice(value);
            self.body.push(SOH);
        }
        self
    }

    /// Appends a text field.
    pub fn push_str(&mut self, tag: u32, value: &str) -> &mut Self {
        self.push(tag, value.as_bytes())
    }

    /// Appends an integer field.
    pub fn push_uint(&mut self, tag: u32, value: u64) -> &mut Self {
        use std::io::Write;
        self.write_tag(tag);
        let _ = write!(self.body, "{value}");
        self.body.push(SOH);
        self
    }

    /// Appends a Boolean field (`Y`/`N`).
    pub fn push_bool(&mut self, tag: u32, value: bool) -> &mut Self {
        self.push(tag, if value { b"Y" } else { b"N" })
    }

    /// Appends a UTCTimestamp field with millisecond precision.
    pub fn push_time(&mut self, tag: u32, t: SystemTime) -> &mut Self {
        self.write_tag(tag);
        time::write_utc_timestamp(&mut self.body, t);
        self.body.push(SOH);
        self
    }

    /// Appends a length-prefixed data field pair, whose value may contain SOH.
    pub fn push_data(&mut self, length_tag: u32, data_tag: u32, data: &[u8]) -> &mut Self {
        if data.is_empty() {
            self.error.get_or_insert(EncodeError::EmptyValue(data_tag));
            return self;
        }
        self.push_uint(length_tag, data.len() as u64);
        self.write_tag(data_tag);
        self.body.extend_from_slice(data);
        self.body.push(SOH);
        self
    }

    /// Appends a field copied from a parsed [`Message`]: its value is already known to be a
    /// valid field (it may be a data field holding SOH), so it is not checked again.
    pub(crate) fn push_verbatim(&mut self, tag: u32, value: &[u8]) -> &mut Self {
        self.write_tag(tag);
        self.body.extend_from_slice(value);
        self.body.push(SOH);
        self
    }

    /// Appends pre-encoded `tag=value<SOH>` fields verbatim (checked only for shape).
    pub fn push_raw(&mut self, fields: &[u8]) -> &mut Self {
        if fields.is_empty() {
            return self;
        }
        let ok = match fields.split_last() {
            Some((&SOH, rest)) => {
                rest.split(|&b| b == SOH)
                    .all(|f| match f.iter().position(|&b| b == b'=') {
                        Some(eq) => f.split_at_checked(eq).is_some_and(|(tag, value)| {
                            !tag.is_empty() && value.len() > 1 && tag.iter().all(u8::is_ascii_digit)
                        }),
                        None => false,
                    })
            }
            _ => false,
        };
        if !ok {
            self.error.get_or_insert(EncodeError::BadRawFields);
            return self;
        }
        self.body.extend_from_slice(fields);
        self
    }

    /// Writes the complete frame: `8=…|9=len|<body>|10=ccc|`.
    pub fn finish(&self) -> Result<Vec<u8>, EncodeError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        use std::io::Write;
        let mut out = Vec::with_capacity(self.body.len().saturating_add(32));
        let _ = write!(
            out,
            "8={}\x019={}\x01",
            self.begin_string.as_str(),
            self.body.len()
        );
        out.extend_from_slice(&self.body);
        let sum = checksum(&out);
        let _ = write!(out, "10={sum:03}\x01");
        Ok(out)
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
    use std::time::{Duration, UNIX_EPOCH};

    /// Turns a readable `|`-delimited message into wire bytes with correct 9 and 10.
    pub(crate) fn wire(s: &str) -> Vec<u8> {
        let s = s.replace('|', "\x01");
        let body_start = s.find("\x0135=").map(|i| i + 1).unwrap_or(0);
        let bs = &s[..body_start];
        let body = &s[body_start..];
        let bs = bs.split('\x01').next().unwrap_or("8=FIX.4.4");
        let mut out = format!("{bs}\x019={}\x01{body}", body.len()).into_bytes();
        let sum = checksum(&out);
        out.extend_from_slice(format!("10={sum:03}\x01").as_bytes());
        out
    }

    fn sample() -> Vec<u8> {
        wire("8=FIX.4.4|35=D|49=CLIENT|56=GW|34=7|52=20240101-10:00:00.000|11=ord1|55=EUR/USD|")
    }

    #[test]
    fn frames_and_parses() {
        let m = sample();
        assert_eq!(frame(&m, 1000), Ok(Framed::Complete(m.len())));
        for cut in 0..m.len() {
            assert_eq!(frame(&m[..cut], 1000), Ok(Framed::Incomplete), "cut {cut}");
        }
        let msg = parse(&m).expect("parse");
        assert_eq!(msg.msg_type(), b"D");
        assert_eq!(msg.get(11), Some(&b"ord1"[..]));
        assert_eq!(msg.get_str(55), Some("EUR/USD"));
        let h = msg.header().expect("header");
        assert_eq!(h.msg_seq_num, 7);
        assert_eq!(h.sender_comp_id, b"CLIENT");
        assert_eq!(h.begin_string, BeginString::Fix44);
        assert!(!h.poss_dup);
    }

    #[test]
    fn garbage_is_skipped_to_next_message() {
        let m = sample();
        let mut input = b"xx8=FOO\x01junk".to_vec();
        input.extend_from_slice(&m);
        let mut d = Deframer::default();
        d.push(&input);
        let mut errors = 0;
        let got = loop {
            match d.next_frame() {
                Ok(Some(f)) => break f.to_vec(),
                Ok(None) => panic!("no frame"),
                Err(_) => errors += 1,
            }
        };
        assert_eq!(got, m);
        assert!(errors >= 1);
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn wrong_body_length_and_checksum() {
        let mut m = sample();
        // Corrupt BodyLength: 9=NN -> one more.
        let s = String::from_utf8(m.clone()).unwrap_or_default();
        let len: usize = s
            .split('\x01')
            .nth(1)
            .and_then(|f| f[2..].parse().ok())
            .unwrap_or(0);
        let bad = s.replacen(&format!("9={len}"), &format!("9={}", len + 1), 1);
        assert!(matches!(
            frame(bad.as_bytes(), 1000),
            Err(FrameError::BodyLengthMismatch { .. })
        ));
        let n = m.len();
        m[n - 2] = if m[n - 2] == b'0' { b'1' } else { b'0' };
        assert!(matches!(
            parse(&m),
            Err(ParseError::Garbled(Garbled::CheckSum { .. }))
        ));
    }

    #[test]
    fn too_long_body_is_refused_early() {
        let r = frame(b"8=FIX.4.4\x019=9999999\x01", 1000);
        assert!(matches!(
            r,
            Err(FrameError::BodyTooLong { len: 9_999_999, .. })
        ));
    }

    #[test]
    fn reject_reasons() {
        let cases: &[(&str, SessionRejectReason, Option<u32>)] = &[
            (
                "8=FIX.4.4|35=D|49=A|56=B|34=2|52=20240101-10:00:00|11=|",
                SessionRejectReason::TagWithoutValue,
                Some(11),
            ),
            (
                "8=FIX.4.4|35=D|49=A|56=B|34=2|52=20240101-10:00:00|x1=5|",
                SessionRejectReason::InvalidTagNumber,
                None,
            ),
            (
                "8=FIX.4.4|35=D|49=A|56=B|34=2|52=20240101-10:00:00|11=a|49=C|",
                SessionRejectReason::TagOutOfOrder,
                Some(49),
            ),
            (
                "8=FIX.4.4|35=D|49=A|49=A|56=B|34=2|52=20240101-10:00:00|",
                SessionRejectReason::TagAppearsMoreThanOnce,
                Some(49),
            ),
        ];
        for (s, reason, tag) in cases {
            match parse(&wire(s)) {
                Err(ParseError::Invalid {
                    reason: r,
                    ref_tag,
                    ref_seq_num,
                    ..
                }) => {
                    assert_eq!(r, *reason, "{s}");
                    assert_eq!(ref_tag, *tag, "{s}");
                    assert_eq!(ref_seq_num, Some(2), "{s}");
                }
                other => panic!("{s}: {other:?}"),
            }
        }
        let missing = wire("8=FIX.4.4|35=D|49=A|34=2|52=20240101-10:00:00|");
        let m = parse(&missing).expect("parse");
        assert!(matches!(
            m.header(),
            Err(ParseError::Invalid {
                reason: SessionRejectReason::RequiredTagMissing,
                ref_tag: Some(56),
                ..
            })
        ));
        let bad_time = wire("8=FIX.4.4|35=D|49=A|56=B|34=2|52=2024|");
        let m = parse(&bad_time).expect("parse");
        assert!(matches!(
            m.header(),
            Err(ParseError::Invalid {
                reason: SessionRejectReason::IncorrectDataFormat,
                ref_tag: Some(52),
                ..
            })
        ));
    }

    #[test]
    fn unsupported_begin_string() {
        let m = wire("8=FIX.4.1|35=0|49=A|56=B|34=2|52=20240101-10:00:00|");
        assert!(matches!(parse(&m), Err(ParseError::BeginString(_))));
    }

    #[test]
    fn data_field_may_contain_soh() {
        let mut b = MessageBuilder::new(BeginString::Fix42, b"D");
        b.push_str(49, "A")
            .push_str(56, "B")
            .push_uint(34, 3)
            .push_time(52, UNIX_EPOCH)
            .push_data(95, 96, b"a\x01b=c")
            .push_str(58, "after");
        let f = b.finish().expect("encode");
        let m = parse(&f).expect("parse");
        assert_eq!(m.get(96), Some(&b"a\x01b=c"[..]));
        assert_eq!(m.get_str(58), Some("after"));
    }

    #[test]
    fn builder_refuses_soh() {
        let mut b = MessageBuilder::new(BeginString::Fix44, b"D");
        b.push(58, b"a\x01b");
        assert_eq!(b.finish(), Err(EncodeError::SohInValue(58)));
        let mut b = MessageBuilder::new(BeginString::Fix44, b"D");
        b.push_raw(b"58=ok\x0159\x01");
        assert_eq!(b.finish(), Err(EncodeError::BadRawFields));
    }

    proptest! {
        #[test]
        fn framer_and_parser_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = frame(&data, 200);
            if let Ok(m) = parse(&data) {
                let _ = m.header();
            }
            let mut d = Deframer::new(100);
            d.push(&data);
            for _ in 0..(data.len() + 2) {
                match d.next_frame() {
                    Ok(Some(f)) => { let _ = parse(f).map(|m| m.header()); }
                    Ok(None) => break,
                    Err(e) => prop_assert!(e.skip() > 0),
                }
            }
        }

        #[test]
        fn mutated_messages_never_panic(idx in 0usize..200, byte in any::<u8>(), cut in 0usize..200) {
            let mut m = sample();
            let i = idx % m.len();
            m[i] = byte;
            m.truncate(cut.max(1).min(m.len()));
            let _ = frame(&m, 1000);
            if let Ok(msg) = parse(&m) { let _ = msg.header(); }
        }

        #[test]
        fn encode_parse_round_trip(
            fields in proptest::collection::vec((1u32..100_000, "[ -~]{1,20}"), 0..20),
            seq in 1u64..u64::MAX / 2,
            ms in 0u64..4_000_000_000_000,
            v44 in any::<bool>(),
        ) {
            let bs = if v44 { BeginString::Fix44 } else { BeginString::Fix42 };
            // Keep body tags out of the header/trailer sets so ordering rules hold.
            let fields: Vec<_> = fields.into_iter()
                .filter(|(t, _)| !tags::is_header_tag(*t) && *t != 10 && tags::data_tag_for(*t).is_none())
                .collect();
            let t = UNIX_EPOCH + Duration::from_millis(ms);
            let mut b = MessageBuilder::new(bs, b"D");
            b.push_str(49, "S").push_str(56, "T").push_uint(34, seq).push_time(52, t);
            for (tag, v) in &fields {
                b.push_str(*tag, v);
            }
            let wire = b.finish().expect("encode");
            prop_assert_eq!(frame(&wire, usize::MAX), Ok(Framed::Complete(wire.len())));
            let m = parse(&wire).expect("parse");
            let h = m.header().expect("header");
            prop_assert_eq!(h.msg_seq_num, seq);
            prop_assert_eq!(h.sending_time, t);
            prop_assert_eq!(h.begin_string, bs);
            let body: Vec<_> = m.fields()[7..m.fields().len() - 1]
                .iter()
                .map(|f| (f.tag, String::from_utf8_lossy(f.value).into_owned()))
                .collect();
            prop_assert_eq!(body, fields);
        }
    }
}
