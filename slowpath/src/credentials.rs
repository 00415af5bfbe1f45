//! Secrets the control plane hands out once and stores only as hashes:
//! node keys, invite codes, the admin key; plus the frp token and random ids.

use ring::rand::{SecureRandom, SystemRandom};

/// `n` random bytes as lowercase hex.
pub fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    // A failing system RNG leaves zeros; the unique constraints on every
    // stored hash then refuse the duplicate rather than accept a weak secret.
    let _ = SystemRandom::new().fill(&mut buf);
    hex::encode(buf)
}

/// SHA-256 of `text`, lowercase hex: how secrets are stored and looked up.
pub fn sha256_hex(text: &str) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, text.as_bytes()))
}

/// A new node key (`nk_` + 32 hex digits).
pub fn new_node_key() -> String {
    format!("nk_{}", random_hex(16))
}

/// A new admin API key (`tak_` + 48 hex digits).
pub fn new_admin_key() -> String {
    format!("tak_{}", random_hex(24))
}

/// A new frp token for a node.
pub fn new_frp_token() -> String {
    random_hex(16)
}

/// A new node id (`node_` + 16 hex digits).
pub fn new_node_id() -> String {
    format!("node_{}", random_hex(8))
}

/// A new subdomain label for an invite: eight characters of `a-z0-9`,
/// the first a letter (about 40 bits), e.g. `k3x9q2ab`; None when the
/// system's random source fails.
pub fn new_subdomain_label() -> Option<String> {
    const LETTERS: &[u8; 26] = b"abcdefghijklmnopqrstuvwxyz";
    const ALNUM: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut raw = [0u8; 8];
    // Unlike the hashed secrets, a label is stored as is: a failing system
    // RNG must not hand out "aaaaaaaa".
    SystemRandom::new().fill(&mut raw).ok()?;
    let label = raw
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let set: &[u8] = if i == 0 { LETTERS } else { ALNUM };
            char::from(set[usize::from(*b) % set.len()])
        })
        .collect();
    Some(label)
}

/// Crockford base32: no I, L, O or U, so a code read aloud or retyped survives.
const CODE_ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// A new invite code: five groups of four, 100 bits, e.g. `K7QM-2XRT-…`.
pub fn new_invite_code() -> String {
    let mut raw = [0u8; 20];
    let _ = SystemRandom::new().fill(&mut raw);
    let mut code = String::with_capacity(24);
    for (i, b) in raw.iter().enumerate() {
        if i > 0 && i % 4 == 0 {
            code.push('-');
        }
        code.push(char::from(CODE_ALPHABET[usize::from(b & 31)]));
    }
    code
}

/// The canonical form of a typed invite code: trimmed, upper-cased, and the
/// look-alikes Crockford base32 leaves out read as the digits they resemble,
/// so `k7qm-2xrt`, ` K7QM-2XRT ` and `K7QM-2XRT` resolve alike.
pub fn normalize_invite_code(code: &str) -> String {
    code.trim()
        .chars()
        .map(|c| match c.to_ascii_uppercase() {
            'O' => '0',
            'I' | 'L' => '1',
            c => c,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invite_codes_look_right() {
        let c = new_invite_code();
        assert_eq!(c.len(), 24);
        assert_eq!(c.matches('-').count(), 4);
        assert_ne!(c, new_invite_code());
        assert_eq!(normalize_invite_code(&format!(" {} ", c.to_lowercase())), c);
    }

    #[test]
    fn hashes_are_hex_sha256() {
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
