//! The end-to-end session between two nodes (seed 003 §3.2).
//!
//! Key schedule: `shared = X25519(my node_key, peer's node_key)`, then
//! HKDF-SHA256 with the shared secret as input, `"wss-mesh-session"` as
//! salt and the two node ids as info (lower id first, 4 bytes each, big
//! endian, so both sides derive the same bytes), expanded to 64 bytes: the
//! first 32 key the direction from the lower id to the higher, the next 32
//! the other. Two keys rather than one: each side picks its nonce prefix
//! at random, and one key for both directions would reuse a nonce whenever
//! the two prefixes collide.
//!
//! Packets: ChaCha20-Poly1305 with the nonce `prefix (4, random per
//! session) | counter (8, big endian, from 0)` and the DATA header's src
//! and dst as additional data, so a relay cannot redirect a packet. The
//! receiver verifies the tag, then its [`ReplayWindow`].

use proto::mesh::data::{self, Data};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use ring::hkdf;
use ring::rand::{SecureRandom as _, SystemRandom};

use crate::keys::NodeKey;
use crate::replay::{Replay, ReplayWindow};

/// HKDF salt of the session keys.
pub const SALT: &[u8] = b"wss-mesh-session";

/// The two directional keys of a node pair: (lower id → higher id, higher
/// → lower).
pub fn derive(shared: &[u8; 32], a: u32, b: u32) -> ([u8; 32], [u8; 32]) {
    struct Len(usize);
    impl hkdf::KeyType for Len {
        fn len(&self) -> usize {
            self.0
        }
    }
    let (lo, hi) = (a.min(b), a.max(b));
    let mut info = [0u8; 8];
    info[..4].copy_from_slice(&lo.to_be_bytes());
    info[4..].copy_from_slice(&hi.to_be_bytes());
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, SALT).extract(shared);
    let mut okm = [0u8; 64];
    // 64 bytes is far under HKDF-SHA256's 8160-byte limit: expand and fill
    // cannot fail.
    if let Ok(o) = prk.expand(&[&info], Len(64)) {
        let _ = o.fill(&mut okm);
    }
    let mut up = [0; 32];
    let mut down = [0; 32];
    up.copy_from_slice(&okm[..32]);
    down.copy_from_slice(&okm[32..]);
    (up, down)
}

/// Why a packet was not sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The counter ran out (2^64 packets): a new node key is due.
    #[error("the session's packet counter is exhausted")]
    Exhausted,
}

/// Why a DATA payload was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Too short to be DATA.
    #[error("{0}")]
    Malformed(data::DataError),
    /// Not from this session's peer to this node.
    #[error("DATA from node {src} to node {dst} is not for this session")]
    WrongPair {
        /// Its src.
        src: u32,
        /// Its dst.
        dst: u32,
    },
    /// The tag does not verify (wrong key, or altered on the way).
    #[error("DATA does not authenticate")]
    Auth,
    /// Seen before, or older than the window.
    #[error("DATA counter replayed ({0:?})")]
    Replay(Replay),
}

/// One node's session with one peer.
pub struct Session {
    me: u32,
    peer: u32,
    send: LessSafeKey,
    recv: LessSafeKey,
    prefix: [u8; 4],
    next: u64,
    window: ReplayWindow,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("me", &self.me)
            .field("peer", &self.peer)
            .field("sent", &self.next)
            .finish_non_exhaustive()
    }
}

fn key(bytes: &[u8; 32]) -> LessSafeKey {
    // A 32-byte key is what ChaCha20-Poly1305 takes: this cannot fail.
    LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, bytes).expect("32-byte key"))
}

impl Session {
    /// The session of node `me` (holding `mine`) with node `peer` (whose
    /// public node key is `peer_key`), with a random nonce prefix. None
    /// when the peer's key is of small order.
    pub fn new(mine: &NodeKey, me: u32, peer: u32, peer_key: &[u8; 32]) -> Option<Session> {
        let mut prefix = [0; 4];
        SystemRandom::new().fill(&mut prefix).ok()?;
        Session::with_prefix(mine, me, peer, peer_key, prefix)
    }

    /// As [`Session::new`], with a given nonce prefix (tests).
    pub fn with_prefix(
        mine: &NodeKey,
        me: u32,
        peer: u32,
        peer_key: &[u8; 32],
        prefix: [u8; 4],
    ) -> Option<Session> {
        let shared = mine.agree(peer_key)?;
        let (up, down) = derive(&shared, me, peer);
        let (send, recv) = if me < peer { (up, down) } else { (down, up) };
        Some(Session {
            me,
            peer,
            send: key(&send),
            recv: key(&recv),
            prefix,
            next: 0,
            window: ReplayWindow::default(),
        })
    }

    /// Append a DATA payload carrying `packet` (header, ciphertext, tag) to
    /// `out`.
    pub fn seal(&mut self, packet: &[u8], out: &mut Vec<u8>) -> Result<(), SealError> {
        let counter = self.next;
        self.next = counter.checked_add(1).ok_or(SealError::Exhausted)?;
        let nonce = data::nonce(self.prefix, counter);
        data::put_header(out, self.me, self.peer, &nonce);
        let at = out.len();
        out.extend_from_slice(packet);
        let tag = self
            .send
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(data::aad(self.me, self.peer)),
                &mut out[at..],
            )
            .map_err(|_| SealError::Exhausted)?;
        out.extend_from_slice(tag.as_ref());
        Ok(())
    }

    /// Open a DATA payload in place; the IP packet it carried.
    pub fn open<'a>(&mut self, payload: &'a mut [u8]) -> Result<&'a [u8], OpenError> {
        let d = Data::parse(payload).map_err(OpenError::Malformed)?;
        if d.src != self.peer || d.dst != self.me {
            return Err(OpenError::WrongPair {
                src: d.src,
                dst: d.dst,
            });
        }
        let counter = d.counter();
        self.window.check(counter).map_err(OpenError::Replay)?;
        let nonce = d.nonce;
        let aad = data::aad(d.src, d.dst);
        let plain = self
            .recv
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut payload[data::HEADER_LEN..],
            )
            .map_err(|_| OpenError::Auth)?;
        // Recorded only once authentic: a forged counter moves nothing.
        self.window.accept(counter).map_err(OpenError::Replay)?;
        Ok(plain)
    }

    /// Packets sealed so far.
    pub fn sent(&self) -> u64 {
        self.next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Session, Session) {
        let (ka, kb) = (NodeKey::generate().unwrap(), NodeKey::generate().unwrap());
        let a = Session::new(&ka, 3, 9, &kb.public()).unwrap();
        let b = Session::new(&kb, 9, 3, &ka.public()).unwrap();
        (a, b)
    }

    #[test]
    fn both_ways_and_nothing_in_clear() {
        let (mut a, mut b) = pair();
        let packet = b"\x45\x00 an IPv4 packet with a known payload: HELLO-MESH";
        for i in 0..3u64 {
            let mut p = Vec::new();
            a.seal(packet, &mut p).unwrap();
            assert_eq!(p.len(), data::HEADER_LEN + packet.len() + data::TAG_LEN);
            assert!(
                !p.windows(10).any(|w| w == b"HELLO-MESH"),
                "plaintext on the wire"
            );
            assert_eq!(data::Data::parse(&p).unwrap().counter(), i);
            assert_eq!(b.open(&mut p).unwrap(), packet);
            let mut q = Vec::new();
            b.seal(b"reply", &mut q).unwrap();
            assert_eq!(a.open(&mut q).unwrap(), b"reply");
        }
        assert_eq!(a.sent(), 3);
    }

    #[test]
    fn tampering_redirection_replay_and_wrong_keys_are_refused() {
        let (mut a, mut b) = pair();
        let mut p = Vec::new();
        a.seal(b"payload", &mut p).unwrap();
        let orig = p.clone();
        // A flipped ciphertext bit.
        p[data::HEADER_LEN] ^= 1;
        assert_eq!(b.open(&mut p), Err(OpenError::Auth));
        // A relay rewriting src (or dst) is refused before decryption, and
        // the ids are in the AAD as well.
        let mut p = orig.clone();
        p[3] = 4;
        assert!(matches!(
            b.open(&mut p),
            Err(OpenError::WrongPair { src: 4, .. })
        ));
        // The genuine packet once, then its replay.
        let mut p = orig.clone();
        assert!(b.open(&mut p).is_ok());
        let mut p = orig.clone();
        assert_eq!(b.open(&mut p), Err(OpenError::Replay(Replay::Duplicate)));
        // A forged counter far ahead does not move the window.
        let mut p = Vec::new();
        a.seal(b"next", &mut p).unwrap();
        let mut forged = p.clone();
        forged[12..20].copy_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(b.open(&mut forged), Err(OpenError::Auth));
        assert_eq!(b.open(&mut p).unwrap(), b"next");
        // A sender with other keys claiming node 3: nothing opens.
        let stranger = NodeKey::generate().unwrap();
        let other = NodeKey::generate().unwrap();
        let mut c = Session::new(&stranger, 3, 9, &other.public()).unwrap();
        let mut q = Vec::new();
        // Past the counters b has seen (0 and 1), so the tag is what fails.
        for _ in 0..3 {
            q.clear();
            c.seal(b"x", &mut q).unwrap();
        }
        assert_eq!(b.open(&mut q), Err(OpenError::Auth));
        // Short payloads.
        assert!(matches!(
            b.open(&mut [0u8; 10]),
            Err(OpenError::Malformed(_))
        ));
    }

    #[test]
    fn both_sides_derive_the_same_directional_keys() {
        let s = [7u8; 32];
        assert_eq!(derive(&s, 3, 9), derive(&s, 9, 3));
        let (up, down) = derive(&s, 3, 9);
        assert_ne!(up, down);
        assert_ne!(derive(&s, 3, 10), derive(&s, 3, 9));
    }
}
