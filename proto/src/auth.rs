//! frp token authentication: the privilege key and the server's run id.
//!
//! With `auth.method = "token"` frpc proves it knows the shared token by
//! sending `privilege_key = hex(md5(token ‖ decimal(timestamp)))` together
//! with the `timestamp` it used, in Login and (when the matching scopes are
//! on) in every Ping and NewWorkConn. The server recomputes the key and
//! compares in constant time. Upstream frps checks no freshness window, so
//! neither do these functions: whether to bound the timestamp is the
//! caller's policy, decided with a clock this crate does not have.

use md5::{Digest, Md5};
use ring::rand::{SecureRandom, SystemRandom};

/// Length of a privilege key: an MD5 digest as lowercase hex.
pub const PRIVILEGE_KEY_LEN: usize = 32;

/// Length of a run id in characters (16 lowercase hex digits).
pub const RUN_ID_LEN: usize = 16;

/// Computes frp's privilege key for `token` at `timestamp` (Unix seconds).
///
/// The timestamp is formatted like Go's `strconv.FormatInt(ts, 10)`: plain
/// base 10, no padding, a leading `-` when negative.
///
/// ```
/// assert_eq!(
///     proto::auth::privilege_key("123456", 1_700_000_000),
///     "0537ef113282c8d47f39f43f72db6e77"
/// );
/// ```
pub fn privilege_key(token: &str, timestamp: i64) -> String {
    hex::encode(privilege_digest(token, timestamp))
}

/// Checks a presented privilege key against the one `token` and `timestamp`
/// produce, in time independent of where the two differ.
///
/// The comparison is on the exact string, as upstream does: an upper-case
/// hex rendering of the right digest is rejected.
pub fn verify_privilege_key(token: &str, timestamp: i64, presented: &str) -> bool {
    let mut expected = [0u8; PRIVILEGE_KEY_LEN];
    // Encoding into a fixed buffer cannot fail: the digest is 16 bytes and
    // the buffer holds exactly their 32 hex digits.
    if hex::encode_to_slice(privilege_digest(token, timestamp), &mut expected).is_err() {
        return false;
    }
    constant_time_eq(&expected, presented.as_bytes())
}

/// Generates a fresh frps run id: 16 lowercase hex characters from the OS
/// random source.
///
/// Upstream hex-encodes 9 random bytes and keeps the first 16 digits, which
/// is 64 random bits; 8 bytes give the same.
///
/// # Panics
///
/// Panics if the operating system's random source fails. A server that
/// cannot get randomness must not carry on handing out guessable ids.
pub fn new_run_id() -> String {
    let mut bytes = [0u8; RUN_ID_LEN / 2];
    #[allow(clippy::expect_used)]
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("operating system random source failed");
    hex::encode(bytes)
}

/// MD5 over the token bytes followed by the decimal timestamp: the
/// privilege key before hex encoding.
pub fn privilege_digest(token: &str, timestamp: i64) -> [u8; 16] {
    let mut md5 = Md5::new();
    md5.update(token.as_bytes());
    md5.update(timestamp.to_string().as_bytes());
    md5.finalize().into()
}

/// Byte-slice equality whose running time depends only on the lengths.
///
/// The length is not secret (a privilege key is always 32 characters), so
/// an early return on a length mismatch leaks nothing useful. `ring` has
/// deprecated its public helper for this, hence the local fold.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // black_box keeps the optimiser from turning the fold back into an
    // early-exit comparison.
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn privilege_key_reference_vector() {
        assert_eq!(
            privilege_key("123456", 1_700_000_000),
            "0537ef113282c8d47f39f43f72db6e77"
        );
    }

    /// The Login frpc v0.70.1 sent in the `nomux` capture (token "test-token").
    #[test]
    fn privilege_key_from_real_capture() {
        assert_eq!(
            privilege_key("test-token", 1_795_383_782),
            "f46948c4330a5294aa37186da62edea8"
        );
        assert!(verify_privilege_key(
            "test-token",
            1_795_383_782,
            "f46948c4330a5294aa37186da62edea8"
        ));
    }

    #[test]
    fn privilege_key_formats_timestamp_like_go() {
        // md5("") ‖ "0": what a server demanding a scope frpc did not enable
        // would compute against the omitted fields.
        assert_eq!(privilege_key("", 0), hex::encode(Md5::digest(b"0")));
        assert_eq!(privilege_key("t", -5), hex::encode(Md5::digest(b"t-5")));
        assert_eq!(
            privilege_key("t", i64::MIN),
            hex::encode(Md5::digest(b"t-9223372036854775808"))
        );
    }

    #[test]
    fn verify_accepts_exact_key_only() {
        let key = privilege_key("123456", 1_700_000_000);
        assert!(verify_privilege_key("123456", 1_700_000_000, &key));
        assert!(!verify_privilege_key("123456", 1_700_000_001, &key));
        assert!(!verify_privilege_key("1234567", 1_700_000_000, &key));
        assert!(!verify_privilege_key(
            "123456",
            1_700_000_000,
            &key.to_uppercase()
        ));
        assert!(!verify_privilege_key("123456", 1_700_000_000, &key[..31]));
        assert!(!verify_privilege_key("123456", 1_700_000_000, ""));
        let mut longer = key.clone();
        longer.push('0');
        assert!(!verify_privilege_key("123456", 1_700_000_000, &longer));
    }

    #[test]
    fn run_ids_are_16_lowercase_hex_and_distinct() {
        let a = new_run_id();
        let b = new_run_id();
        assert_eq!(a.len(), RUN_ID_LEN);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
        assert_ne!(a, b);
    }
}
