//! The stream's handshake proves, both ways, that the peer holds `replication.token_file`,
//! without the token itself crossing the network.
//!
//! Why both ways: an active believes the epochs a standby answers with, and one newer than
//! its own fences it (the gateway exits). Until protocol version 2 the active sent the token in
//! its hello to whatever answered at a peer address, and believed any answer: a process that
//! took the standby's port (the standby's gateway down, a port above 1024) or its address could
//! stop the active with one made-up epoch, and learned the token. Now:
//!
//! 1. active → standby: `Hello { epoch, nonce_a }`;
//! 2. standby → active: `Challenge { nonce_s, mac_s }`, `mac_s` = HMAC-SHA256(token,
//!    "standby" ‖ epoch ‖ nonce_a ‖ nonce_s): the active checks it before it sends anything
//!    more or believes any answer, epochs included;
//! 3. active → standby: `Proof { mac_a }`, the same over "active": the standby checks it
//!    before it records the epoch or writes anything.
//!
//! Each side's fresh random nonce keeps a proof from being replayed on another connection,
//! and the labels keep one side's proof from serving as the other's. The frames after the
//! handshake carry no MAC: an attacker able to inject segments into an established TCP
//! connection between the two gateways (on the path between them) is out of scope, as for
//! PostgreSQL's streaming replication without TLS; the replication network should be one the
//! group's operators control.

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use thiserror::Error;

/// Bytes of each side's nonce.
pub const NONCE_LEN: usize = 32;
/// Bytes of a proof (HMAC-SHA256).
pub const MAC_LEN: usize = 32;

/// Which side a proof speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The gateway sending its stores.
    Active,
    /// The gateway keeping a copy.
    Standby,
}

impl Side {
    fn label(self) -> &'static [u8] {
        match self {
            Side::Active => b"understudy replication v2: active",
            Side::Standby => b"understudy replication v2: standby",
        }
    }
}

/// The system's random source failed.
#[derive(Debug, Error)]
#[error("no random bytes for the replication handshake's nonce")]
pub struct NoRandom;

/// A fresh nonce from the operating system's random source.
pub fn nonce() -> Result<[u8; NONCE_LEN], NoRandom> {
    let mut n = [0u8; NONCE_LEN];
    SystemRandom::new().fill(&mut n).map_err(|_| NoRandom)?;
    Ok(n)
}

fn signed(side: Side, epoch: u64, active: &[u8], standby: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(64 + 8 + active.len() + standby.len());
    m.extend_from_slice(side.label());
    m.extend_from_slice(&epoch.to_le_bytes());
    m.extend_from_slice(active);
    m.extend_from_slice(standby);
    m
}

/// `side`'s proof that it holds `token`, for the connection of `epoch` whose nonces are
/// `active` and `standby`.
pub fn prove(
    token: &[u8],
    side: Side,
    epoch: u64,
    active: &[u8; NONCE_LEN],
    standby: &[u8; NONCE_LEN],
) -> [u8; MAC_LEN] {
    let key = hmac::Key::new(hmac::HMAC_SHA256, token);
    let tag = hmac::sign(&key, &signed(side, epoch, active, standby));
    let mut out = [0u8; MAC_LEN];
    out.copy_from_slice(tag.as_ref());
    out
}

/// Whether `mac` is `side`'s proof for that connection (compared in constant time).
pub fn verify(
    token: &[u8],
    side: Side,
    epoch: u64,
    active: &[u8; NONCE_LEN],
    standby: &[u8; NONCE_LEN],
    mac: &[u8; MAC_LEN],
) -> bool {
    let key = hmac::Key::new(hmac::HMAC_SHA256, token);
    hmac::verify(&key, &signed(side, epoch, active, standby), mac).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proof_holds_only_for_its_token_side_epoch_and_nonces() {
        let (a, s) = (nonce().expect("nonce"), nonce().expect("nonce"));
        assert_ne!(a, s, "two nonces alike");
        let p = prove(b"t0ken", Side::Standby, 7, &a, &s);
        assert!(verify(b"t0ken", Side::Standby, 7, &a, &s, &p));
        assert!(!verify(b"t0keN", Side::Standby, 7, &a, &s, &p), "token");
        assert!(!verify(b"t0ken", Side::Active, 7, &a, &s, &p), "side");
        assert!(!verify(b"t0ken", Side::Standby, 8, &a, &s, &p), "epoch");
        assert!(!verify(b"t0ken", Side::Standby, 7, &s, &a, &p), "nonces");
        let mut bent = p;
        bent[31] ^= 1;
        assert!(!verify(b"t0ken", Side::Standby, 7, &a, &s, &bent), "mac");
    }
}
