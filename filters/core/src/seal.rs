//! Cookie sealing: AES-256-GCM under a per-seal key, as fixed in DESIGN.md.
//!
//! # Format
//!
//! A sealed value is base64url (no padding) of
//!
//! ```text
//! version 2 (written):  2 ‖ key_id(1) ‖ nonce(12) ‖ salt(32) ‖ ciphertext‖tag(16)
//! version 1 (read only): 1 ‖ key_id(1) ‖ nonce(12) ‖ ciphertext‖tag(16)
//! ```
//!
//! Both versions keep DESIGN.md's prefix `version ‖ key_id ‖ nonce`; version 2
//! inserts the salt before the ciphertext. The associated data binds the
//! cookie name, the app id, the version and the key id, so a cookie is
//! worthless under another name, at another app, or relabelled as the other
//! version.
//!
//! # Construction (version 2)
//!
//! Every seal draws 44 fresh random bytes from the caller: a 12-byte `nonce`
//! and a 32-byte `salt`. It derives a one-time AES-256 key with HKDF-SHA256
//! (RFC 5869) from the configured key and the salt:
//!
//! ```text
//! PRK    = HKDF-Extract(salt = "portcullis-seal/v2", IKM = configured key)
//! subkey = HKDF-Expand(PRK, info = "portcullis-seal/v2/aes-256-gcm" ‖ salt, L = 32)
//! ```
//!
//! and seals with AES-256-GCM(subkey, nonce, aad). Opening reads the salt
//! from the value and derives the same subkey. `PRK` depends on the key only,
//! so it is computed once per configured key (with its HMAC pads); a seal or
//! an open pays one HKDF-Expand block (three SHA-256 compressions) and one AES
//! key schedule. The per-seal randomness enters through `info`, which RFC 5869
//! §3.2 provides for exactly this: distinct `info` values give independent
//! keys from one PRK. (Putting the random salt into Extract instead would
//! give the same keys' quality at three times the hashing per request.)
//!
//! Why: with one AES-GCM key and random 96-bit nonces, NIST SP 800-38D caps a
//! key at 2^32 seals (nonce-collision probability 2^-32); a repeated nonce
//! under one key leaks the XOR of two plaintexts and the GHASH key, i.e.
//! forgeries. With a fresh subkey per seal the configured key itself never
//! meets AES-GCM: a (subkey, nonce) pair repeats only if a 256-bit salt and a
//! 96-bit nonce both repeat, which takes about 2^176 seals. HKDF-SHA256 as a
//! PRF keyed by PRK has no comparable bound at any realistic count, so a
//! sealing key no longer wears out; it is rotated for hygiene only.
//!
//! # Version 1
//!
//! Version 1 (one AES-GCM key per configured key, no salt) is never written
//! any more, but still opens, so sessions and login states sealed before an
//! upgrade keep working across it. A session lives at most its app's
//! `max_session_seconds` (8 h by default, 30 days at most), so every version-1
//! cookie is dead 30 days after the upgrade; opening version 1 is removed in
//! the first release after that.
//!
//! # Keys
//!
//! Several keys may be configured: the first seals, all open (rotation).
//! A key's id is the first byte of a SHA-256 over a label and the key, so it
//! does not change when keys are added or reordered; a rare id collision is
//! handled by trying every key that carries the id.
//!
//! The salt and nonce are passed in (the core has no randomness). Every
//! failure to open is the single [`OpenError`]: no oracle on what was wrong.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hkdf::Hkdf;
use sha2::{Digest, Sha256};
use std::fmt;

/// The format version written in the first byte (per-seal HKDF subkey).
pub const SEAL_VERSION: u8 = 2;
/// The previous version (one AES-GCM key per configured key): opened, never written.
pub const LEGACY_SEAL_VERSION: u8 = 1;
/// Length of a sealing key in bytes (AES-256).
pub const KEY_LEN: usize = 32;
/// Length of the AES-GCM nonce in bytes.
pub const NONCE_LEN: usize = 12;
/// Length of the per-seal HKDF salt in bytes.
pub const SALT_LEN: usize = 32;
/// Random bytes one seal takes: the nonce, then the salt.
pub const SEAL_RANDOM_LEN: usize = NONCE_LEN + SALT_LEN;
/// HKDF-Extract salt of the version-2 PRK.
const PRK_SALT: &[u8] = b"portcullis-seal/v2";
/// HKDF-Expand `info` prefix of the version-2 subkey (the per-seal salt follows).
const SUBKEY_INFO: &[u8] = b"portcullis-seal/v2/aes-256-gcm";
/// Bytes before the ciphertext in version 1: version, key id, nonce.
const V1_HEADER_LEN: usize = 2 + NONCE_LEN;
/// Bytes before the ciphertext in version 2: version, key id, nonce, salt.
const V2_HEADER_LEN: usize = 2 + NONCE_LEN + SALT_LEN;
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

/// One configured key: its version-2 PRK (HMAC state ready) and its
/// version-1 AES key schedule, both computed once.
#[derive(Clone)]
struct SealKey {
    id: u8,
    prk: Hkdf<Sha256>,
    legacy: Aes256Gcm,
}

impl SealKey {
    fn new(key: &[u8; KEY_LEN]) -> SealKey {
        SealKey {
            id: key_id(key),
            prk: Hkdf::<Sha256>::new(Some(PRK_SALT), key),
            legacy: Aes256Gcm::new(key.into()),
        }
    }

    /// The version-2 subkey for one `salt`.
    fn subkey(&self, salt: &[u8]) -> [u8; KEY_LEN] {
        let mut subkey = [0u8; KEY_LEN];
        // 32 bytes is far below HKDF-SHA256's 255 × 32 limit: expand cannot fail.
        let _ = self
            .prk
            .expand_multi_info(&[SUBKEY_INFO, salt], &mut subkey);
        subkey
    }
}

/// The AES-256-GCM open of format 2, once the subkey is derived: what
/// [`Sealer::open`] calls for every candidate key. Public so that the
/// published AES-GCM vectors run through exactly this function
/// (`filters/core/tests/wycheproof.rs`). The cookie format fixes a 12-byte
/// nonce and a 16-byte tag at the end of `ciphertext_and_tag`.
pub fn open_with_subkey(
    subkey: &[u8; KEY_LEN],
    nonce: &[u8; NONCE_LEN],
    ciphertext_and_tag: &[u8],
    aad: &[u8],
) -> Result<Vec<u8>, OpenError> {
    Aes256Gcm::new(subkey.into())
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: ciphertext_and_tag,
                aad,
            },
        )
        .map_err(|_| OpenError)
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
    let [id, ..]: [u8; 32] = h.finalize().into();
    id
}

impl Sealer {
    /// A sealer over `keys` (first seals). Returns `None` when `keys` is empty
    /// or holds the same key twice.
    pub fn new(keys: &[[u8; KEY_LEN]]) -> Option<Sealer> {
        if keys.is_empty() {
            return None;
        }
        for (i, k) in keys.iter().enumerate() {
            if keys.iter().take(i).any(|earlier| earlier == k) {
                return None;
            }
        }
        let keys = keys.iter().map(SealKey::new).collect();
        Some(Sealer { keys })
    }

    /// The key ids, sealing key first.
    pub fn key_ids(&self) -> Vec<u8> {
        self.keys.iter().map(|k| k.id).collect()
    }

    fn aad(version: u8, cookie_name: &str, app_id: &str, key_id: u8) -> Vec<u8> {
        let mut aad = Vec::with_capacity(
            32usize
                .saturating_add(cookie_name.len())
                .saturating_add(app_id.len()),
        );
        aad.extend_from_slice(b"portcullis-seal");
        aad.push(version);
        aad.push(key_id);
        // Length prefixes keep ("ab","c") and ("a","bc") apart.
        aad.extend_from_slice(&(cookie_name.len() as u32).to_be_bytes());
        aad.extend_from_slice(cookie_name.as_bytes());
        aad.extend_from_slice(&(app_id.len() as u32).to_be_bytes());
        aad.extend_from_slice(app_id.as_bytes());
        aad
    }

    /// Seals `plaintext` for cookie `cookie_name` of app `app_id` with the
    /// first key, in version 2. `random` is the caller's fresh random bytes:
    /// the nonce, then the HKDF salt. Fails with [`SealError::TooLarge`] if
    /// `cookie_name=value` would exceed [`MAX_COOKIE_PAIR_LEN`].
    pub fn seal(
        &self,
        cookie_name: &str,
        app_id: &str,
        plaintext: &[u8],
        random: [u8; SEAL_RANDOM_LEN],
    ) -> Result<String, SealError> {
        // Saturating: a length near usize::MAX is simply too large.
        let raw_len = plaintext.len().saturating_add(V2_HEADER_LEN + TAG_LEN);
        let size = cookie_name
            .len()
            .saturating_add(1)
            .saturating_add(raw_len.div_ceil(3).saturating_mul(4));
        // base64 without padding is at most this long; check before working.
        if size > MAX_COOKIE_PAIR_LEN + 3 {
            return Err(SealError::TooLarge {
                size,
                max: MAX_COOKIE_PAIR_LEN,
            });
        }
        let key = self.keys.first().ok_or(SealError::Cipher)?;
        let (nonce, salt) = random.split_at(NONCE_LEN);
        let cipher = Aes256Gcm::new(&key.subkey(salt).into());
        let aad = Self::aad(SEAL_VERSION, cookie_name, app_id, key.id);
        let ciphertext = cipher
            .encrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .map_err(|_| SealError::Cipher)?;
        let mut raw = Vec::with_capacity(raw_len);
        raw.push(SEAL_VERSION);
        raw.push(key.id);
        raw.extend_from_slice(nonce);
        raw.extend_from_slice(salt);
        raw.extend_from_slice(&ciphertext);
        let value = URL_SAFE_NO_PAD.encode(raw);
        let size = cookie_name
            .len()
            .saturating_add(1)
            .saturating_add(value.len());
        if size > MAX_COOKIE_PAIR_LEN {
            return Err(SealError::TooLarge {
                size,
                max: MAX_COOKIE_PAIR_LEN,
            });
        }
        Ok(value)
    }

    /// Opens a value sealed (version 2, or the older version 1) for cookie
    /// `cookie_name` of app `app_id` with any configured key.
    pub fn open(&self, cookie_name: &str, app_id: &str, value: &str) -> Result<Vec<u8>, OpenError> {
        if value.len() > 2 * MAX_COOKIE_PAIR_LEN {
            return Err(OpenError);
        }
        let raw = URL_SAFE_NO_PAD.decode(value).map_err(|_| OpenError)?;
        let &version = raw.first().ok_or(OpenError)?;
        let header_len = match version {
            SEAL_VERSION => V2_HEADER_LEN,
            LEGACY_SEAL_VERSION => V1_HEADER_LEN,
            _ => return Err(OpenError),
        };
        // The header (version, key id, nonce, salt), then at least a tag.
        let (header, ciphertext_and_tag) = raw.split_at_checked(header_len).ok_or(OpenError)?;
        if ciphertext_and_tag.len() < TAG_LEN {
            return Err(OpenError);
        }
        let [_, id, nonce_and_salt @ ..] = header else {
            return Err(OpenError);
        };
        let id = *id;
        let (nonce, salt) = nonce_and_salt
            .split_at_checked(NONCE_LEN)
            .ok_or(OpenError)?;
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| OpenError)?;
        let aad = Self::aad(version, cookie_name, app_id, id);
        self.keys
            .iter()
            .filter(|k| k.id == id)
            .find_map(|k| {
                if version == SEAL_VERSION {
                    open_with_subkey(&k.subkey(salt), &nonce, ciphertext_and_tag, &aad).ok()
                } else {
                    k.legacy
                        .decrypt(
                            Nonce::from_slice(&nonce),
                            Payload {
                                msg: ciphertext_and_tag,
                                aad: &aad,
                            },
                        )
                        .ok()
                }
            })
            .ok_or(OpenError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: [u8; 32] = [1; 32];
    const K2: [u8; 32] = [2; 32];
    const N: [u8; SEAL_RANDOM_LEN] = [7; SEAL_RANDOM_LEN];

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
        assert_eq!(&r[2..14], &N[..12]);
        assert_eq!(&r[14..46], &N[12..]);
        assert_eq!(r.len(), 1 + 1 + 12 + 32 + 5 + 16);
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
        // A future version, and version 0.
        for version in [0, 3, 255] {
            let mut r = raw(&v);
            r[0] = version;
            assert_eq!(s1.open("c", "app", &enc(&r)), Err(OpenError));
        }
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

    /// Sealed by the version-1 code (commit 26b5658, `Sealer::seal` with keys
    /// `[K1, K2]`, nonce `[7; 12]`, cookie `__Host-portcullis`, app `hr`).
    const GOLDEN_V1: &str = "AdQHBwcHBwcHBwcHBwf20ZnRbYyLg3j2bVPD4hpRIje3G6c9D1H4JEc7Bbc1";

    #[test]
    fn version_1_cookies_still_open() {
        let during_rotation = Sealer::new(&[K2, K1]).unwrap();
        let r = raw(GOLDEN_V1);
        assert_eq!(r[0], LEGACY_SEAL_VERSION);
        assert_eq!(
            during_rotation
                .open("__Host-portcullis", "hr", GOLDEN_V1)
                .unwrap(),
            br#"{"sub":"alice"}"#
        );
        // Still bound to name and app, and every bit counts.
        assert_eq!(during_rotation.open("c", "hr", GOLDEN_V1), Err(OpenError));
        assert_eq!(
            during_rotation.open("__Host-portcullis", "other", GOLDEN_V1),
            Err(OpenError)
        );
        for byte in 0..r.len() {
            let mut t = r.clone();
            t[byte] ^= 0x01;
            assert_eq!(
                during_rotation.open("__Host-portcullis", "hr", &enc(&t)),
                Err(OpenError)
            );
        }
        // Relabelled as version 2 (with or without room for a salt), it does not open.
        let mut t = r.clone();
        t[0] = SEAL_VERSION;
        assert_eq!(
            during_rotation.open("__Host-portcullis", "hr", &enc(&t)),
            Err(OpenError)
        );
        t.splice(14..14, [0u8; SALT_LEN]);
        assert_eq!(
            during_rotation.open("__Host-portcullis", "hr", &enc(&t)),
            Err(OpenError)
        );
        // Without the key that sealed it, it does not open.
        let retired = Sealer::new(&[K2]).unwrap();
        assert_eq!(
            retired.open("__Host-portcullis", "hr", GOLDEN_V1),
            Err(OpenError)
        );
    }

    #[test]
    fn version_2_is_hkdf_subkey_then_aes_gcm() {
        // Recompute the construction from its definition in the module docs.
        let s = Sealer::new(&[K1]).unwrap();
        let mut random = [0u8; SEAL_RANDOM_LEN];
        for (i, b) in random.iter_mut().enumerate() {
            *b = i as u8;
        }
        let v = s.seal("c", "app", b"payload", random).unwrap();
        let r = raw(&v);
        let (nonce, salt) = random.split_at(NONCE_LEN);
        let mut info = b"portcullis-seal/v2/aes-256-gcm".to_vec();
        info.extend_from_slice(salt);
        let mut subkey = [0u8; 32];
        Hkdf::<Sha256>::new(Some(b"portcullis-seal/v2"), &K1)
            .expand(&info, &mut subkey)
            .unwrap();
        let mut aad = b"portcullis-seal".to_vec();
        aad.extend_from_slice(&[2, key_id(&K1), 0, 0, 0, 1, b'c', 0, 0, 0, 3]);
        aad.extend_from_slice(b"app");
        let expect = Aes256Gcm::new(&subkey.into())
            .encrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: b"payload",
                    aad: &aad,
                },
            )
            .unwrap();
        assert_eq!(&r[46..], &expect[..]);
        // The configured key itself does not open it: it never met AES-GCM.
        let direct = Aes256Gcm::new(&K1.into()).decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: &r[46..],
                aad: &aad,
            },
        );
        assert!(direct.is_err());
    }

    #[test]
    fn same_nonce_other_salt_gives_unrelated_ciphertexts() {
        // The wear-out case of version 1: the nonce repeats. Under version 2 a
        // different salt still gives a different key stream.
        let s = Sealer::new(&[K1]).unwrap();
        let mut a = [9u8; SEAL_RANDOM_LEN];
        let mut b = a;
        a[NONCE_LEN] = 1;
        b[NONCE_LEN] = 2;
        let pt = [0u8; 64];
        let ra = raw(&s.seal("c", "app", &pt, a).unwrap());
        let rb = raw(&s.seal("c", "app", &pt, b).unwrap());
        assert_eq!(ra[2..14], rb[2..14]);
        // Zero plaintext: the ciphertext is the key stream itself.
        let same = ra[46..46 + 64]
            .iter()
            .zip(&rb[46..46 + 64])
            .filter(|(x, y)| x == y)
            .count();
        assert!(same < 8, "{same} equal key-stream bytes");
        assert_eq!(s.open("c", "app", &enc(&ra)).unwrap(), pt);
        assert_eq!(s.open("c", "app", &enc(&rb)).unwrap(), pt);
    }
}
