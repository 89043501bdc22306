//! The replication stream's frames, and the checks every number from the peer passes.
//!
//! A frame is `[len u32][crc32 u32][type u8][body]`, little-endian; `len` counts the type
//! byte and the body, the crc covers them. A frame longer than [`MAX_FRAME`], a checksum
//! that does not match, a body that ends early or has bytes left over, a path that is not
//! `SESSION/EPOCH.log`: each is a [`ProtoError`], and the connection is closed. The peer
//! then reconnects and the handshake resumes from what the standby has on disk.

use std::io::{Read, Write};

use thiserror::Error;

/// Protocol version carried by [`Frame::Hello`]. Version 2: the handshake proves the token
/// both ways instead of sending it (see [`super::auth`]).
pub const VERSION: u16 = 2;
/// Largest frame body (type byte included): a [`Frame::Data`] of a whole [`CHUNK`] with its
/// path, or the largest [`Frame::Welcome`] (below 1 MiB + 4 KiB until review 22, R13: a
/// standby holding 4096 files under long CompIDs sent a Welcome every active refused, and
/// never caught up).
pub const MAX_FRAME: usize = if CHUNK + 4096 > MAX_WELCOME {
    CHUNK + 4096
} else {
    MAX_WELCOME
};
/// Most segment bytes one [`Frame::Data`] carries.
pub const CHUNK: usize = 1 << 20;
/// Most files a [`Frame::Welcome`] may list (and a standby may mirror).
pub const MAX_FILES: usize = 4096;
/// Longest relative path.
pub const MAX_PATH: usize = 300;
/// Largest [`Frame::Welcome`] body: type, epoch, count, then per file a path (2-byte length)
/// and its length.
const MAX_WELCOME: usize = 1 + 8 + 4 + MAX_FILES * (2 + MAX_PATH + 8);
/// Longest token or reason text.
pub const MAX_TEXT: usize = 1024;
/// Largest segment offset or length accepted (a segment record is at most 64 MiB; no segment
/// of a session that runs for weeks between compactions comes near this).
pub const MAX_FILE_LEN: u64 = 1 << 40;

const T_HELLO: u8 = 1;
const T_WELCOME: u8 = 2;
const T_REFUSE: u8 = 3;
const T_TRUNCATE: u8 = 4;
const T_DATA: u8 = 5;
const T_SYNC: u8 = 6;
const T_ACK: u8 = 7;
const T_HEARTBEAT: u8 = 8;
const T_CHALLENGE: u8 = 9;
const T_PROOF: u8 = 10;

/// One message of the stream. The active sends `Hello`, `Proof`, `Truncate`, `Data`, `Sync`
/// and `Heartbeat`; the standby answers the hello with `Challenge`, the proof with `Welcome`
/// or `Refuse`, and each `Sync` with `Ack`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Opens a connection: the active's epoch and its nonce.
    Hello {
        /// [`VERSION`].
        version: u16,
        /// The epoch the active's stores are open with.
        epoch: u64,
        /// [`super::auth::NONCE_LEN`] random bytes (up to [`MAX_TEXT`] are read, so that a
        /// version-1 hello, which carried the token here, still gets its version refused).
        nonce: Vec<u8>,
    },
    /// The standby's answer to a hello: its nonce and its proof that it holds the token.
    Challenge {
        /// The standby's random bytes.
        nonce: [u8; super::auth::NONCE_LEN],
        /// [`super::auth::prove`] for [`super::auth::Side::Standby`].
        mac: [u8; super::auth::MAC_LEN],
    },
    /// The active's proof that it holds the token.
    Proof {
        /// [`super::auth::prove`] for [`super::auth::Side::Active`].
        mac: [u8; super::auth::MAC_LEN],
    },
    /// The standby accepts: the newest epoch it has seen and the length of every segment it
    /// holds, so the active sends only what it lacks.
    Welcome {
        /// Newest epoch this standby has seen (the hello's, or newer would have refused).
        seen_epoch: u64,
        /// `(SESSION/EPOCH.log, length)`.
        files: Vec<(String, u64)>,
    },
    /// The standby refuses; `newest_epoch` above the active's means the active is stale.
    Refuse {
        /// The newest epoch the standby knows.
        newest_epoch: u64,
        /// Why, in words.
        reason: String,
    },
    /// Cut a segment to `len` (the standby holds bytes the active's copy does not: an
    /// unreplicated tail of a former active, which the newer claims seal out anyway).
    Truncate {
        /// `SESSION/EPOCH.log`.
        path: String,
        /// New length.
        len: u64,
    },
    /// Segment bytes at `offset`, which must be the standby's length of that file.
    Data {
        /// `SESSION/EPOCH.log`.
        path: String,
        /// Where they go.
        offset: u64,
        /// At most [`CHUNK`] bytes.
        bytes: Vec<u8>,
    },
    /// Make everything received durable and acknowledge `pos` (the active's group-commit
    /// position the bytes sent so far cover).
    Sync {
        /// Group-commit position.
        pos: u64,
    },
    /// Everything up to `pos` is durable on the standby.
    Ack {
        /// The position of the `Sync` answered.
        pos: u64,
    },
    /// The active is alive; `written` is its newest group-commit position (for the lag).
    Heartbeat {
        /// Group-commit position of the last record written.
        written: u64,
    },
}

/// A malformed or unexpected frame, or the connection failing.
#[derive(Debug, Error)]
pub enum ProtoError {
    /// The connection ended cleanly between frames.
    #[error("connection closed")]
    Closed,
    /// The connection ended inside a frame.
    #[error("connection closed inside a frame")]
    Truncated,
    /// A read or write failed (a timeout included).
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The frame length is zero or above [`MAX_FRAME`].
    #[error("frame length {0} out of range")]
    Length(usize),
    /// The checksum does not match.
    #[error("frame checksum mismatch")]
    Checksum,
    /// A type byte nobody sends.
    #[error("unknown frame type {0}")]
    UnknownType(u8),
    /// The body does not hold what its type says.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// A path that is not `SESSION/EPOCH.log`.
    #[error("bad segment path {0:?}")]
    BadPath(String),
}

fn bad(what: &str) -> ProtoError {
    ProtoError::Malformed(what.to_owned())
}

/// Reads a body field by field; every read is bounds-checked.
struct Rd<'a> {
    b: &'a [u8],
    p: usize,
}

impl<'a> Rd<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], ProtoError> {
        let end = self
            .p
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| bad(what))?;
        let s = &self.b[self.p..end];
        self.p = end;
        Ok(s)
    }
    fn u16(&mut self, what: &str) -> Result<u16, ProtoError> {
        let s = self.take(2, what)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }
    fn u32(&mut self, what: &str) -> Result<u32, ProtoError> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4, what)?);
        Ok(u32::from_le_bytes(a))
    }
    fn u64(&mut self, what: &str) -> Result<u64, ProtoError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8, what)?);
        Ok(u64::from_le_bytes(a))
    }
    /// A `[len u16][bytes]` field of at most `max` bytes.
    fn short(&mut self, max: usize, what: &str) -> Result<&'a [u8], ProtoError> {
        let n = usize::from(self.u16(what)?);
        if n > max {
            return Err(ProtoError::Malformed(format!("{what}: {n} bytes")));
        }
        self.take(n, what)
    }
    fn text(&mut self, max: usize, what: &str) -> Result<String, ProtoError> {
        let b = self.short(max, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| bad(what))
    }
    fn path(&mut self) -> Result<String, ProtoError> {
        let p = self.text(MAX_PATH, "path")?;
        segment_epoch(&p)?;
        Ok(p)
    }
    fn length(&mut self, what: &str) -> Result<u64, ProtoError> {
        let v = self.u64(what)?;
        if v > MAX_FILE_LEN {
            return Err(ProtoError::Malformed(format!("{what} {v} out of range")));
        }
        Ok(v)
    }
    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], ProtoError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }
    fn rest(&mut self) -> &'a [u8] {
        let s = &self.b[self.p..];
        self.p = self.b.len();
        s
    }
    fn end(&self) -> Result<(), ProtoError> {
        if self.p == self.b.len() {
            Ok(())
        } else {
            Err(bad("bytes left over"))
        }
    }
}

/// The epoch of a replicated segment path `SESSION/EPOCH.log` (or `SESSION/EPOCH-GEN.log`,
/// a later generation), which is refused unless the
/// session part is one plain directory name (see [`crate::store::SessionId::dir_name`]) and
/// the file name a segment's: nothing from the peer may name a file elsewhere.
pub fn segment_epoch(path: &str) -> Result<u64, ProtoError> {
    let badp = || ProtoError::BadPath(path.chars().take(80).collect());
    let (dir, file) = path.split_once('/').ok_or_else(badp)?;
    let dir_ok = !dir.is_empty()
        && dir.len() <= 255
        && !dir.starts_with('.')
        && dir
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'%'));
    if !dir_ok {
        return Err(badp());
    }
    crate::store::parse_segment_name(file)
        .map(|id| id.epoch)
        .ok_or_else(badp)
}

/// A stream whose reads all end by `until`: each read waits at most for the time left, so a
/// peer sending a frame a byte at a time cannot hold a reader in it for longer than the
/// frame may take in all (as a timeout per read allows). `late` says why when it expires.
pub struct Deadline<'a> {
    s: &'a mut std::net::TcpStream,
    until: std::time::Instant,
    late: &'static str,
}

impl<'a> Deadline<'a> {
    /// Reads of `s` that end by `until`.
    pub fn new(
        s: &'a mut std::net::TcpStream,
        until: std::time::Instant,
        late: &'static str,
    ) -> Self {
        Deadline { s, until, late }
    }
}

impl Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self
            .until
            .saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, self.late));
        }
        self.s.set_read_timeout(Some(left))?;
        match self.s.read(buf) {
            // The socket's timeout ran out inside this read: the same deadline.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Err(std::io::Error::new(std::io::ErrorKind::TimedOut, self.late))
            }
            other => other,
        }
    }
}

fn put_short(out: &mut Vec<u8>, b: &[u8]) {
    // Every short field is bounded by MAX_TEXT/MAX_PATH when built; cut rather than wrap.
    let n = b.len().min(usize::from(u16::MAX));
    out.extend_from_slice(&(n as u16).to_le_bytes());
    out.extend_from_slice(&b[..n]);
}

impl Frame {
    /// Appends the whole frame (header included) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; 8]);
        match self {
            Frame::Hello {
                version,
                epoch,
                nonce,
            } => {
                out.push(T_HELLO);
                out.extend_from_slice(&version.to_le_bytes());
                out.extend_from_slice(&epoch.to_le_bytes());
                put_short(out, nonce);
            }
            Frame::Challenge { nonce, mac } => {
                out.push(T_CHALLENGE);
                out.extend_from_slice(nonce);
                out.extend_from_slice(mac);
            }
            Frame::Proof { mac } => {
                out.push(T_PROOF);
                out.extend_from_slice(mac);
            }
            Frame::Welcome { seen_epoch, files } => {
                out.push(T_WELCOME);
                out.extend_from_slice(&seen_epoch.to_le_bytes());
                out.extend_from_slice(&(files.len() as u32).to_le_bytes());
                for (p, l) in files {
                    put_short(out, p.as_bytes());
                    out.extend_from_slice(&l.to_le_bytes());
                }
            }
            Frame::Refuse {
                newest_epoch,
                reason,
            } => {
                out.push(T_REFUSE);
                out.extend_from_slice(&newest_epoch.to_le_bytes());
                let r = reason.as_bytes();
                put_short(out, &r[..r.len().min(MAX_TEXT)]);
            }
            Frame::Truncate { path, len } => {
                out.push(T_TRUNCATE);
                put_short(out, path.as_bytes());
                out.extend_from_slice(&len.to_le_bytes());
            }
            Frame::Data {
                path,
                offset,
                bytes,
            } => {
                out.push(T_DATA);
                put_short(out, path.as_bytes());
                out.extend_from_slice(&offset.to_le_bytes());
                out.extend_from_slice(bytes);
            }
            Frame::Sync { pos } => {
                out.push(T_SYNC);
                out.extend_from_slice(&pos.to_le_bytes());
            }
            Frame::Ack { pos } => {
                out.push(T_ACK);
                out.extend_from_slice(&pos.to_le_bytes());
            }
            Frame::Heartbeat { written } => {
                out.push(T_HEARTBEAT);
                out.extend_from_slice(&written.to_le_bytes());
            }
        }
        let len = (out.len() - start - 8) as u32;
        let crc = crc32fast::hash(&out[start + 8..]);
        out[start..start + 4].copy_from_slice(&len.to_le_bytes());
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }

    /// Parses a frame body (type byte first) whose length and checksum were checked.
    pub fn parse(body: &[u8]) -> Result<Frame, ProtoError> {
        let (&t, rest) = body.split_first().ok_or_else(|| bad("empty frame"))?;
        let mut r = Rd { b: rest, p: 0 };
        let f = match t {
            T_HELLO => Frame::Hello {
                version: r.u16("version")?,
                epoch: r.u64("epoch")?,
                nonce: r.short(MAX_TEXT, "nonce")?.to_vec(),
            },
            T_CHALLENGE => Frame::Challenge {
                nonce: r.array("nonce")?,
                mac: r.array("proof")?,
            },
            T_PROOF => Frame::Proof {
                mac: r.array("proof")?,
            },
            T_WELCOME => {
                let seen_epoch = r.u64("epoch")?;
                let n = r.u32("file count")? as usize;
                if n > MAX_FILES {
                    return Err(ProtoError::Malformed(format!("{n} files listed")));
                }
                let mut files = Vec::with_capacity(n);
                for _ in 0..n {
                    let p = r.path()?;
                    files.push((p, r.length("file length")?));
                }
                Frame::Welcome { seen_epoch, files }
            }
            T_REFUSE => Frame::Refuse {
                newest_epoch: r.u64("epoch")?,
                reason: r.text(MAX_TEXT, "reason")?,
            },
            T_TRUNCATE => Frame::Truncate {
                path: r.path()?,
                len: r.length("length")?,
            },
            T_DATA => {
                let path = r.path()?;
                let offset = r.length("offset")?;
                let bytes = r.rest().to_vec();
                if bytes.len() > CHUNK || offset + bytes.len() as u64 > MAX_FILE_LEN {
                    return Err(ProtoError::Malformed(format!(
                        "{} bytes at {offset}",
                        bytes.len()
                    )));
                }
                Frame::Data {
                    path,
                    offset,
                    bytes,
                }
            }
            T_SYNC => Frame::Sync {
                pos: r.u64("position")?,
            },
            T_ACK => Frame::Ack {
                pos: r.u64("position")?,
            },
            T_HEARTBEAT => Frame::Heartbeat {
                written: r.u64("position")?,
            },
            t => return Err(ProtoError::UnknownType(t)),
        };
        r.end()?;
        Ok(f)
    }

    /// What the frame is, in a few words that hold nothing the peer chose but numbers: for
    /// errors and logs, where a frame from an unauthenticated peer may land (its `Debug` form
    /// could be megabytes, or control characters).
    pub fn describe(&self) -> String {
        match self {
            Frame::Hello { version, epoch, .. } => {
                format!("a hello (version {version}, epoch {epoch})")
            }
            Frame::Challenge { .. } => "a challenge".into(),
            Frame::Proof { .. } => "a proof".into(),
            Frame::Welcome { seen_epoch, files } => {
                format!("a welcome (epoch {seen_epoch}, {} files)", files.len())
            }
            Frame::Refuse { newest_epoch, .. } => format!("a refusal (epoch {newest_epoch})"),
            Frame::Truncate { len, .. } => format!("a truncate (to {len})"),
            Frame::Data { offset, bytes, .. } => {
                format!("data ({} bytes at {offset})", bytes.len())
            }
            Frame::Sync { pos } => format!("a sync ({pos})"),
            Frame::Ack { pos } => format!("an ack ({pos})"),
            Frame::Heartbeat { written } => format!("a heartbeat ({written})"),
        }
    }

    /// Writes the frame in one `write_all`.
    pub fn write_to(&self, w: &mut impl Write, scratch: &mut Vec<u8>) -> Result<(), ProtoError> {
        scratch.clear();
        self.encode(scratch);
        w.write_all(scratch)?;
        Ok(())
    }
}

/// Largest [`Frame::Hello`] body: type, version, epoch and a nonce of up to [`MAX_TEXT`]
/// bytes. A standby reads a connection's first frame with this bound ([`read_frame_max`]):
/// before the peer has proved the token, it gets no more than that.
pub const MAX_HELLO: usize = 1 + 2 + 8 + 2 + MAX_TEXT;

/// A [`Frame::Proof`] body, the bound a standby reads the second frame with.
pub const MAX_PROOF: usize = 1 + super::auth::MAC_LEN;

/// `text` from a peer made fit for a log line or an error: at most 200 characters, control
/// characters escaped.
pub fn peer_text(text: &str) -> String {
    let cut: String = text.chars().take(200).collect();
    let more = if cut.len() < text.len() { "…" } else { "" };
    format!("{}{more}", cut.escape_debug())
}

/// Reads one frame. A clean end of stream before its first byte is [`ProtoError::Closed`].
pub fn read_frame(r: &mut impl Read, buf: &mut Vec<u8>) -> Result<Frame, ProtoError> {
    read_frame_max(r, buf, MAX_FRAME)
}

/// [`read_frame`] refusing a body longer than `max` ([`ProtoError::Length`]) before reading it.
pub fn read_frame_max(
    r: &mut impl Read,
    buf: &mut Vec<u8>,
    max: usize,
) -> Result<Frame, ProtoError> {
    let mut head = [0u8; 8];
    let mut got = 0;
    while got < head.len() {
        match r.read(&mut head[got..]) {
            Ok(0) if got == 0 => return Err(ProtoError::Closed),
            Ok(0) => return Err(ProtoError::Truncated),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    if len == 0 || len > max.min(MAX_FRAME) {
        return Err(ProtoError::Length(len));
    }
    buf.clear();
    buf.resize(len, 0);
    r.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => ProtoError::Truncated,
        _ => ProtoError::Io(e),
    })?;
    if crc32fast::hash(buf).to_le_bytes() != head[4..8] {
        return Err(ProtoError::Checksum);
    }
    Frame::parse(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: &str = "GW-CLIENT1-FIX.4.4/00000000000000000003.log";

    fn all() -> Vec<Frame> {
        vec![
            Frame::Hello {
                version: VERSION,
                epoch: 7,
                nonce: vec![9; super::super::auth::NONCE_LEN],
            },
            Frame::Challenge {
                nonce: [1; super::super::auth::NONCE_LEN],
                mac: [2; super::super::auth::MAC_LEN],
            },
            Frame::Proof {
                mac: [3; super::super::auth::MAC_LEN],
            },
            Frame::Welcome {
                seen_epoch: 7,
                files: vec![
                    (SEG.into(), 1234),
                    ("ORDERS-GW-FIX.4.4/00000000000000000001.log".into(), 0),
                ],
            },
            Frame::Refuse {
                newest_epoch: 9,
                reason: "newer epoch".into(),
            },
            Frame::Truncate {
                path: SEG.into(),
                len: 99,
            },
            Frame::Data {
                path: SEG.into(),
                offset: 1234,
                bytes: vec![1, 2, 3],
            },
            Frame::Sync { pos: 42 },
            Frame::Ack { pos: 42 },
            Frame::Heartbeat { written: 43 },
        ]
    }

    #[test]
    fn every_frame_round_trips_back_to_back() {
        let mut wire = Vec::new();
        for f in all() {
            f.encode(&mut wire);
        }
        let mut r = &wire[..];
        let mut buf = Vec::new();
        for f in all() {
            assert_eq!(read_frame(&mut r, &mut buf).expect("frame"), f);
        }
        assert!(matches!(
            read_frame(&mut r, &mut buf),
            Err(ProtoError::Closed)
        ));
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        for f in all() {
            let mut wire = Vec::new();
            f.encode(&mut wire);
            for cut in 1..wire.len() {
                let mut r = &wire[..cut];
                let e = read_frame(&mut r, &mut Vec::new()).expect_err("truncated frame");
                assert!(
                    matches!(e, ProtoError::Truncated),
                    "{f:?} cut at {cut}: {e}"
                );
            }
        }
    }

    #[test]
    fn every_flipped_bit_is_refused() {
        for f in all() {
            let mut wire = Vec::new();
            f.encode(&mut wire);
            for i in 0..wire.len() * 8 {
                let mut w = wire.clone();
                w[i / 8] ^= 1 << (i % 8);
                let mut r = &w[..];
                // A bit flipped in the length may make the frame look longer (truncated) or
                // shorter (checksum); never a frame accepted.
                assert!(
                    read_frame(&mut r, &mut Vec::new()).is_err(),
                    "{f:?} bit {i}"
                );
            }
        }
    }

    /// A frame whose checksum is right but whose body lies (built by hand, as a buggy or
    /// hostile peer would): every count and length is checked against what is there.
    fn raw(body: &[u8]) -> Vec<u8> {
        let mut w = Vec::new();
        w.extend_from_slice(&(body.len() as u32).to_le_bytes());
        w.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
        w.extend_from_slice(body);
        w
    }

    fn parse_raw(body: &[u8]) -> Result<Frame, ProtoError> {
        let w = raw(body);
        read_frame(&mut &w[..], &mut Vec::new())
    }

    /// The largest Welcome a standby can send (every file it may hold, each path as long as
    /// allowed) fits in a frame.
    #[test]
    fn the_largest_welcome_is_a_valid_frame() {
        let files: Vec<(String, u64)> = (0..MAX_FILES)
            .map(|i| {
                // The longest a standby can hold: a 255-byte session directory and a
                // segment of a later generation.
                let path = format!("{i:0>255}/{:020}-{:010}.log", 7, 1);
                assert_eq!(path.len(), 291);
                (path, MAX_FILE_LEN)
            })
            .collect();
        let f = Frame::Welcome {
            seen_epoch: u64::MAX,
            files: files.clone(),
        };
        let mut w = Vec::new();
        f.write_to(&mut w, &mut Vec::new()).expect("encode");
        match read_frame(&mut &w[..], &mut Vec::new()).expect("a valid frame") {
            Frame::Welcome {
                seen_epoch: u64::MAX,
                files: back,
            } => assert_eq!(back, files),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn numbers_from_the_peer_are_range_checked() {
        // A file count far beyond what the body holds.
        let mut b = vec![T_WELCOME];
        b.extend_from_slice(&1u64.to_le_bytes());
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(parse_raw(&b), Err(ProtoError::Malformed(_))));
        // A file length beyond MAX_FILE_LEN.
        let mut b = vec![T_TRUNCATE];
        put_short(&mut b, SEG.as_bytes());
        b.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(parse_raw(&b), Err(ProtoError::Malformed(_))));
        // An offset that would wrap once the bytes are added.
        let mut b = vec![T_DATA];
        put_short(&mut b, SEG.as_bytes());
        b.extend_from_slice(&MAX_FILE_LEN.to_le_bytes());
        b.push(0);
        assert!(matches!(parse_raw(&b), Err(ProtoError::Malformed(_))));
        // A token longer than allowed.
        let mut b = vec![T_HELLO];
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes());
        b.extend_from_slice(&u16::MAX.to_le_bytes());
        b.extend(std::iter::repeat_n(b'x', usize::from(u16::MAX)));
        assert!(matches!(parse_raw(&b), Err(ProtoError::Malformed(_))));
        // Bytes left over after a fixed-size body.
        let mut b = vec![T_ACK];
        b.extend_from_slice(&1u64.to_le_bytes());
        b.push(0);
        assert!(matches!(parse_raw(&b), Err(ProtoError::Malformed(_))));
        // A frame length above the bound is refused before anything is allocated.
        let mut w = Vec::new();
        w.extend_from_slice(&((MAX_FRAME + 1) as u32).to_le_bytes());
        w.extend_from_slice(&[0; 4]);
        assert!(matches!(
            read_frame(&mut &w[..], &mut Vec::new()),
            Err(ProtoError::Length(_))
        ));
        assert!(matches!(parse_raw(&[99]), Err(ProtoError::UnknownType(99))));
    }

    #[test]
    fn paths_name_one_segment_inside_the_store() {
        assert_eq!(segment_epoch(SEG).expect("ok"), 3);
        assert_eq!(
            segment_epoch("GW-CLIENT1-FIX.4.4/00000000000000000003-0000000002.log").expect("ok"),
            3
        );
        for p in [
            "a/00000000000000000003-0000000000.log",
            "a/00000000000000000003-2.log",
            "a/00000000000000000003-/000000000.log",
            "a/00000000000000000003-0000000002-0000000001.log",
            "../00000000000000000003.log",
            "a/../00000000000000000003.log",
            "/etc/00000000000000000003.log",
            "a/b/00000000000000000003.log",
            "a/fence",
            "a/0000000000000000003.log",
            "a/0000000000000000000x.log",
            ".hidden/00000000000000000003.log",
            "00000000000000000003.log",
            "a/99999999999999999999.log",
        ] {
            assert!(segment_epoch(p).is_err(), "{p}");
        }
        let mut b = vec![T_DATA];
        put_short(&mut b, b"../x/00000000000000000003.log");
        b.extend_from_slice(&0u64.to_le_bytes());
        assert!(matches!(parse_raw(&b), Err(ProtoError::BadPath(_))));
    }
}
