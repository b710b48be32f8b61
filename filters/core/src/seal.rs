//! Cookie sealing: AES-256-GCM, as fixed in DESIGN.md.
//!
//! A sealed value is base64url (no padding) of
//! `version(1) ‖ key_id(1) ‖ nonce(12) ‖ ciphertext‖tag(16)`.
//! The associated data binds the cookie name, the app id, the version and
//! the key id, so a cookie is worthless under another name or at another app.
//!
//! Several keys may be configured: the first seals, all open (rotation).
//! A key's id is the first byte of a SHA-256 over a label and the key, so it
//! does not change when keys are added or reordered; a rare id collision is
//! handled by trying every key that carries the id.
//!
//! The nonce is passed in (the core has no randomness). Every failure to open
//! is the single [`OpenError`]: no oracle on what was wrong.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use sha2::{Digest, Sha256};
use std::fmt;

/// The format version written in the first byte.
pub const SEAL_VERSION: u8 = 1;
/// Length of a sealing key in bytes (AES-256).
pub const KEY_LEN: usize = 32;
/// Length of the nonce in bytes.
pub const NONCE_LEN: usize = 12;
/// Bytes before the ciphertext: version, key id, nonce.
const HEADER_LEN: usize = 2 + NONCE_LEN;
/// Length of the GCM tag.
const TAG_LEN: usize = 16;
/// Largest `name=value` a sealed cookie may have, leaving room under the
/// browsers' 4096-byte limit for the attributes (`; Path=/; Secure; …`).
pub const MAX_COOKIE_PAIR_LEN: usize = 3900;

/// A sealing failure that the caller can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SealError {
    /// The sealed `name=value` would be `size` bytes, above `max`.
    TooLarge {
        /// Size the cookie pair would have.
        size: usize,
        /// The limit ([`MAX_COOKIE_PAIR_LEN`]).
        max: usize,
    },
    /// The cipher refused to encrypt (cannot happen with valid inputs).
    Cipher,
}

impl fmt::Display for SealError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SealError::TooLarge { size, max } => write!(
                f,
                "sealed cookie would be {size} bytes, above the limit of {max}: \
                 name fewer groups/claims for this app"
            ),
            SealError::Cipher => f.write_str("encryption failed"),
        }
    }
}

impl std::error::Error for SealError {}

/// The one error for a value that cannot be opened, whatever the reason
/// (bad base64, wrong length, version, unknown key, tag mismatch, wrong app or name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenError;

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sealed value is invalid")
    }
}

impl std::error::Error for OpenError {}

/// One configured key with its AES key schedule computed once.
#[derive(Clone)]
struct SealKey {
    id: u8,
    cipher: Aes256Gcm,
}

/// The set of sealing keys of an app: the first seals, all open.
#[derive(Clone)]
pub struct Sealer {
    keys: Vec<SealKey>,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        f.debug_struct("Sealer")
            .field("key_ids", &self.key_ids())
            .finish()
    }
}

/// The key id of a 32-byte key: first byte of SHA-256("portcullis-seal-key-id" ‖ key).
pub fn key_id(key: &[u8; KEY_LEN]) -> u8 {
    let mut h = Sha256::new();
    h.update(b"portcullis-seal-key-id");
    h.update(key);
    h.finalize()[0]
}

impl Sealer {
    /// A sealer over `keys` (first seals). Returns `None` when `keys` is empty
    /// or holds the same key twice.
    pub fn new(keys: &[[u8; KEY_LEN]]) -> Option<Sealer> {
        if keys.is_empty() {
            return None;
        }
        for (i, k) in keys.iter().enumerate() {
            if keys[..i].contains(k) {
                return None;
            }
        }
        let keys = keys
            .iter()
            .map(|k| SealKey {
                id: key_id(k),
                cipher: Aes256Gcm::new(k.into()),
            })
            .collect();
        Some(Sealer { keys })
    }

    /// The key ids, sealing key first.
    pub fn key_ids(&self) -> Vec<u8> {
        self.keys.iter().map(|k| k.id).collect()
    }

    fn aad(cookie_name: &str, app_id: &str, key_id: u8) -> Vec<u8> {
        let mut aad = Vec::with_capacity(32 + cookie_name.len() + app_id.len());
        aad.extend_from_slice(b"portcullis-seal");
        aad.push(SEAL_VERSION);
        aad.push(key_id);
        // Length prefixes keep ("ab","c") and ("a","bc") apart.
        aad.extend_from_slice(&(cookie_name.len() as u32).to_be_bytes());
        aad.extend_from_slice(cookie_name.as_bytes());
        aad.extend_from_slice(&(app_id.len() as u32).to_be_bytes());
        aad.extend_from_slice(app_id.as_bytes());
        aad
    }

    /// Seals `plaintext` for cookie `cookie_name` of app `app_id` with the
    /// first key and the caller's fresh random `nonce`. Fails with
    /// [`SealError::TooLarge`] if `cookie_name=value` would exceed
    /// [`MAX_COOKIE_PAIR_LEN`].
    pub fn seal(
        &self,
        cookie_name: &str,
        app_id: &str,
        plaintext: &[u8],
        nonce: [u8; NONCE_LEN],
    ) -> Result<String, SealError> {
        let raw_len = HEADER_LEN + plaintext.len() + TAG_LEN;
        let size = cookie_name.len() + 1 + raw_len.div_ceil(3) * 4;
        // base64 without padding is at most this long; check before working.
        if size > MAX_COOKIE_PAIR_LEN + 3 {
            return Err(SealError::TooLarge {
                size,
                max: MAX_COOKIE_PAIR_LEN,
            });
        }
        let key = &self.keys[0];
        let aad = Self::aad(cookie_name, app_id, key.id);
        let ciphertext = key
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .map_err(|_| SealError::Cipher)?;
        let mut raw = Vec::with_capacity(raw_len);
        raw.push(SEAL_VERSION);
        raw.push(key.id);
        raw.extend_from_slice(&nonce);
        raw.extend_from_slice(&ciphertext);
        let value = URL_SAFE_NO_PAD.encode(raw);
        let size = cookie_name.len() + 1 + value.len();
        if size > MAX_COOKIE_PAIR_LEN {
            return Err(SealError::TooLarge {
                size,
                max: MAX_COOKIE_PAIR_LEN,
            });
        }
        Ok(value)
    }

    /// Opens a value sealed for cookie `cookie_name` of app `app_id` with any
    /// configured key.
    pub fn open(&self, cookie_name: &str, app_id: &str, value: &str) -> Result<Vec<u8>, OpenError> {
        if value.len() > 2 * MAX_COOKIE_PAIR_LEN {
            return Err(OpenError);
        }
        let raw = URL_SAFE_NO_PAD.decode(value).map_err(|_| OpenError)?;
        if raw.len() < HEADER_LEN + TAG_LEN || raw[0] != SEAL_VERSION {
            return Err(OpenError);
        }
        let id = raw[1];
        let nonce = Nonce::from_slice(&raw[2..HEADER_LEN]);
        let aad = Self::aad(cookie_name, app_id, id);
        self.keys
            .iter()
            .filter(|k| k.id == id)
            .find_map(|k| {
                k.cipher
                    .decrypt(
                        nonce,
                        Payload {
                            msg: &raw[HEADER_LEN..],
                            aad: &aad,
                        },
                    )
                    .ok()
            })
            .ok_or(OpenError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: [u8; 32] = [1; 32];
    const K2: [u8; 32] = [2; 32];
    const N: [u8; 12] = [7; 12];

    fn raw(value: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(value).unwrap()
    }

    fn enc(raw: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(raw)
    }

    #[test]
    fn round_trip_and_layout() {
        let s = Sealer::new(&[K1]).unwrap();
        let v = s.seal("__Host-portcullis", "app1", b"hello", N).unwrap();
        assert!(!v.contains('=') && !v.contains('+') && !v.contains('/'));
        let r = raw(&v);
        assert_eq!(r[0], SEAL_VERSION);
        assert_eq!(r[1], key_id(&K1));
        assert_eq!(&r[2..14], &N);
        assert_eq!(r.len(), 1 + 1 + 12 + 5 + 16);
        assert_eq!(s.open("__Host-portcullis", "app1", &v).unwrap(), b"hello");
    }

    #[test]
    fn every_bit_flip_is_refused() {
        let s = Sealer::new(&[K1]).unwrap();
        let v = s.seal("c", "app", b"payload!", N).unwrap();
        let r = raw(&v);
        // Flip every bit of the version, key id, nonce, ciphertext and tag.
        for byte in 0..r.len() {
            for bit in 0..8 {
                let mut t = r.clone();
                t[byte] ^= 1 << bit;
                assert_eq!(s.open("c", "app", &enc(&t)), Err(OpenError), "{byte}/{bit}");
            }
        }
    }

    #[test]
    fn truncation_and_garbage_are_refused() {
        let s = Sealer::new(&[K1]).unwrap();
        let v = s.seal("c", "app", b"payload", N).unwrap();
        let r = raw(&v);
        for len in 0..r.len() {
            assert_eq!(s.open("c", "app", &enc(&r[..len])), Err(OpenError));
        }
        let mut longer = r.clone();
        longer.push(0);
        assert_eq!(s.open("c", "app", &enc(&longer)), Err(OpenError));
        assert_eq!(s.open("c", "app", "!!!"), Err(OpenError));
        assert_eq!(s.open("c", "app", &format!("{v}=")), Err(OpenError));
        assert_eq!(s.open("c", "app", ""), Err(OpenError));
        assert_eq!(s.open("c", "app", &"A".repeat(10_000)), Err(OpenError));
    }

    #[test]
    fn wrong_app_or_cookie_name_is_refused() {
        let s = Sealer::new(&[K1]).unwrap();
        let v = s.seal("c", "app1", b"x", N).unwrap();
        assert_eq!(s.open("c", "app2", &v), Err(OpenError));
        assert_eq!(s.open("d", "app1", &v), Err(OpenError));
        // Length prefixes: moving a byte between name and app changes the AAD.
        let v = s.seal("ab", "c", b"x", N).unwrap();
        assert_eq!(s.open("a", "bc", &v), Err(OpenError));
    }

    #[test]
    fn wrong_key_and_unknown_key_id_are_refused() {
        let s1 = Sealer::new(&[K1]).unwrap();
        let s2 = Sealer::new(&[K2]).unwrap();
        let v = s1.seal("c", "app", b"x", N).unwrap();
        assert_eq!(s2.open("c", "app", &v), Err(OpenError));
        // Rewrite the key id to K2's: the AAD and the key both differ.
        let mut r = raw(&v);
        r[1] = key_id(&K2);
        assert_eq!(s2.open("c", "app", &enc(&r)), Err(OpenError));
        // An id no key has.
        let mut r = raw(&v);
        r[1] = (0..=255u8).find(|i| *i != key_id(&K1)).unwrap();
        assert_eq!(s1.open("c", "app", &enc(&r)), Err(OpenError));
        // A future version.
        let mut r = raw(&v);
        r[0] = 2;
        assert_eq!(s1.open("c", "app", &enc(&r)), Err(OpenError));
    }

    #[test]
    fn rotation_seals_with_first_opens_with_all() {
        let old = Sealer::new(&[K1]).unwrap();
        let rotated = Sealer::new(&[K2, K1]).unwrap();
        let retired = Sealer::new(&[K2]).unwrap();
        let from_old = old.seal("c", "app", b"old", N).unwrap();
        assert_eq!(rotated.open("c", "app", &from_old).unwrap(), b"old");
        let from_new = rotated.seal("c", "app", b"new", N).unwrap();
        assert_eq!(raw(&from_new)[1], key_id(&K2));
        assert_eq!(retired.open("c", "app", &from_new).unwrap(), b"new");
        assert_eq!(retired.open("c", "app", &from_old), Err(OpenError));
        assert_eq!(old.open("c", "app", &from_new), Err(OpenError));
    }

    #[test]
    fn colliding_key_ids_still_open() {
        // Find a second key whose id collides with K1's.
        let target = key_id(&K1);
        let mut other = [0u8; 32];
        for i in 0..=u16::MAX {
            other[..2].copy_from_slice(&i.to_be_bytes());
            if key_id(&other) == target && other != K1 {
                break;
            }
        }
        assert_eq!(key_id(&other), target);
        let s = Sealer::new(&[other, K1]).unwrap();
        let v = Sealer::new(&[K1]).unwrap().seal("c", "a", b"x", N).unwrap();
        assert_eq!(s.open("c", "a", &v).unwrap(), b"x");
    }

    #[test]
    fn too_large_is_a_typed_error() {
        let s = Sealer::new(&[K1]).unwrap();
        let big = vec![b'x'; 4000];
        match s.seal("c", "app", &big, N) {
            Err(SealError::TooLarge { size, max }) => {
                assert!(size > max);
                assert_eq!(max, MAX_COOKIE_PAIR_LEN);
            }
            other => panic!("{other:?}"),
        }
        // Right at the limit still works: find the largest payload that fits.
        let fits = (0..3000)
            .rev()
            .find(|n| s.seal("c", "app", &vec![0; *n], N).is_ok())
            .unwrap();
        let v = s.seal("c", "app", &vec![0; fits], N).unwrap();
        assert!(2 + v.len() <= MAX_COOKIE_PAIR_LEN);
        assert!(s.seal("c", "app", &vec![0; fits + 3], N).is_err());
    }

    #[test]
    fn empty_or_duplicate_keys_are_refused_and_debug_hides_keys() {
        assert!(Sealer::new(&[]).is_none());
        assert!(Sealer::new(&[K1, K1]).is_none());
        let s = Sealer::new(&[K1, K2]).unwrap();
        let d = format!("{s:?}");
        assert!(d.contains("key_ids"));
        assert!(!d.contains("[1, 1, 1"));
    }
}
