//! A node's two keys (seed 003 §3.1): the machine key, Ed25519, made once
//! and kept on disk (owner-only), which identifies the device to the
//! controller and signs every node key; and the node key, X25519, which
//! agrees session keys with peers and is rotated (default every 24 h).
//! Public keys travel as standard base64.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ring::rand::{SecureRandom as _, SystemRandom};
use ring::signature::{self, Ed25519KeyPair, KeyPair as _};

/// Why a key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or writing it failed.
    #[error("{path}: {err}")]
    Io {
        /// The file.
        path: String,
        /// What failed.
        err: std::io::Error,
    },
    /// It does not hold a key.
    #[error("{0}: not a machine key (one line of base64, 32 bytes)")]
    Malformed(String),
    /// Others may read it.
    #[error("{0}: readable by others (mode {1:o}); chmod 600 it")]
    Exposed(String, u32),
    /// The system's random source failed.
    #[error("no randomness from the system")]
    Rng,
}

/// Decode a base64 public key of 32 bytes.
pub fn decode_key(text: &str) -> Option<[u8; 32]> {
    B64.decode(text.trim()).ok()?.try_into().ok()
}

/// Encode bytes as base64.
pub fn encode(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

fn random32() -> Result<[u8; 32], KeyError> {
    let mut b = [0; 32];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| KeyError::Rng)?;
    Ok(b)
}

/// The device's Ed25519 identity.
pub struct MachineKey {
    seed: [u8; 32],
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for MachineKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MachineKey")
            .field("public", &self.public_b64())
            .finish_non_exhaustive()
    }
}

impl MachineKey {
    /// A new key.
    pub fn generate() -> Result<MachineKey, KeyError> {
        MachineKey::from_seed(random32()?)
    }

    /// The key with this 32-byte seed.
    pub fn from_seed(seed: [u8; 32]) -> Result<MachineKey, KeyError> {
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed)
            .map_err(|_| KeyError::Malformed(String::new()))?;
        Ok(MachineKey { seed, pair })
    }

    /// The key in `path`, or a new one written there (mode 0600) when the
    /// file does not exist. A file others may read is refused.
    pub fn load_or_create(path: &Path) -> Result<MachineKey, KeyError> {
        let name = path.display().to_string();
        let io = |err| KeyError::Io {
            path: name.clone(),
            err,
        };
        // Opened without following a symlink, and the mode read from the
        // file opened (not from the path again).
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path);
        match opened {
            Ok(mut f) => {
                let mode = f.metadata().map_err(io)?.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(KeyError::Exposed(name, mode));
                }
                let mut text = String::new();
                std::io::Read::read_to_string(&mut f, &mut text).map_err(io)?;
                let seed = decode_key(&text).ok_or_else(|| KeyError::Malformed(name.clone()))?;
                MachineKey::from_seed(seed).map_err(|_| KeyError::Malformed(name))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = MachineKey::generate()?;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .mode(0o600)
                    .open(path)
                    .map_err(io)?;
                writeln!(f, "{}", encode(&key.seed)).map_err(io)?;
                f.sync_all().map_err(io)?;
                Ok(key)
            }
            Err(e) => Err(io(e)),
        }
    }

    /// The public key.
    pub fn public(&self) -> [u8; 32] {
        let mut p = [0; 32];
        p.copy_from_slice(self.pair.public_key().as_ref());
        p
    }

    /// The public key, base64 (as AUTH_REQUEST's `machine_key`).
    pub fn public_b64(&self) -> String {
        encode(&self.public())
    }

    /// Sign `msg`.
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        let mut s = [0; 64];
        s.copy_from_slice(self.pair.sign(msg).as_ref());
        s
    }
}

/// Whether `sig` is `public`'s Ed25519 signature of `msg`.
pub fn verify(public: &[u8; 32], msg: &[u8], sig: &[u8]) -> bool {
    signature::UnparsedPublicKey::new(&signature::ED25519, public)
        .verify(msg, sig)
        .is_ok()
}

/// An X25519 node key.
pub struct NodeKey {
    secret: x25519_dalek::StaticSecret,
    public: x25519_dalek::PublicKey,
}

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeKey")
            .field("public", &self.public_b64())
            .finish_non_exhaustive()
    }
}

impl NodeKey {
    /// A new key.
    pub fn generate() -> Result<NodeKey, KeyError> {
        Ok(NodeKey::from_bytes(random32()?))
    }

    /// The key with these secret bytes.
    pub fn from_bytes(secret: [u8; 32]) -> NodeKey {
        let secret = x25519_dalek::StaticSecret::from(secret);
        let public = x25519_dalek::PublicKey::from(&secret);
        NodeKey { secret, public }
    }

    /// The public key.
    pub fn public(&self) -> [u8; 32] {
        self.public.to_bytes()
    }

    /// The public key, base64 (as `node_key` in messages).
    pub fn public_b64(&self) -> String {
        encode(&self.public())
    }

    /// The shared secret with `peer`'s public key; None for a public key
    /// of small order (the result would be all zeros, known to anyone).
    pub fn agree(&self, peer: &[u8; 32]) -> Option<[u8; 32]> {
        let shared = self
            .secret
            .diffie_hellman(&x25519_dalek::PublicKey::from(*peer));
        shared.was_contributory().then(|| shared.to_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_keys_sign_and_persist_owner_only() {
        let dir = std::env::temp_dir().join(format!("totoro-mesh-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("machine.key");
        let _ = std::fs::remove_file(&path);
        let a = MachineKey::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let b = MachineKey::load_or_create(&path).unwrap();
        assert_eq!(a.public(), b.public());
        let sig = a.sign(b"hello");
        assert!(verify(&b.public(), b"hello", &sig));
        assert!(!verify(&b.public(), b"hellO", &sig));
        assert_eq!(decode_key(&a.public_b64()), Some(a.public()));
        // Exposed and malformed files are refused, not used or replaced.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            MachineKey::load_or_create(&path),
            Err(KeyError::Exposed(_, 0o644))
        ));
        std::fs::write(&path, "short\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            MachineKey::load_or_create(&path),
            Err(KeyError::Malformed(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn node_keys_agree_and_refuse_small_order_points() {
        let a = NodeKey::generate().unwrap();
        let b = NodeKey::generate().unwrap();
        assert_eq!(a.agree(&b.public()), b.agree(&a.public()));
        assert!(a.agree(&b.public()).is_some());
        // u = 0 and u = 1, both of small order.
        assert_eq!(a.agree(&[0; 32]), None);
        let mut one = [0u8; 32];
        one[0] = 1;
        assert_eq!(a.agree(&one), None);
    }
}
