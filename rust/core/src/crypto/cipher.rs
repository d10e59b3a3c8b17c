//! AES-256-GCM for one record (RustCrypto `aes-gcm`). A sealed value is
//! `nonce (12 bytes, random) ++ ciphertext ++ tag (16 bytes)`. Nonces come from the thread's
//! cryptographically secure generator (`rand::rng()`: ChaCha12 seeded and reseeded from the
//! operating system), not one system call per record; keys come from the operating system. The associated data binds it to
//! its place: the kind of record, the persistence id, the sequence number (or version), the
//! key id and the type URL. A value copied to another entity, position or kind of record, or
//! with any bit flipped, fails to open.

use std::sync::Arc;

use aes_gcm::aead::{Aead, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use bytes::Bytes;

/// Bytes of a data key and of a master key.
pub const KEY_BYTES: usize = 32;
const NONCE_BYTES: usize = 12;
const TAG_BYTES: usize = 16;

/// The kind of record a value was sealed for (part of the associated data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Record {
    Event = 1,
    Snapshot = 2,
    DurableState = 3,
    /// A data key wrapped by a master key.
    DataKey = 4,
}

/// A key ready to seal and open (its AES key schedule computed once). The key bytes are not
/// kept beside it and are wiped from memory when it is dropped (`zeroize`).
pub struct SealingKey {
    id: Arc<str>,
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealingKey").field("id", &self.id).finish_non_exhaustive()
    }
}

/// Why a value did not open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenError {
    /// Shorter than a nonce and a tag.
    Truncated,
    /// Authentication failed: wrong key, wrong place, or changed bytes.
    Forged,
}

impl SealingKey {
    /// A key from its 32 bytes; `None` for another length.
    pub fn new(id: impl Into<Arc<str>>, bytes: &[u8]) -> Option<Self> {
        (bytes.len() == KEY_BYTES).then(|| SealingKey { id: id.into(), cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(bytes)) })
    }

    /// 32 fresh random bytes (from the operating system).
    pub fn random_bytes() -> zeroize::Zeroizing<Vec<u8>> {
        zeroize::Zeroizing::new(Aes256Gcm::generate_key(OsRng).to_vec())
    }

    /// The key's id (recorded beside what it sealed).
    pub fn id(&self) -> &Arc<str> {
        &self.id
    }

    /// Seals `plaintext` for `place`, with a fresh random nonce.
    pub fn seal(&self, place: &Place<'_>, plaintext: &[u8]) -> Bytes {
        let mut nonce = [0u8; NONCE_BYTES];
        rand::fill(&mut nonce);
        let nonce = Nonce::from_slice(&nonce);
        let aad = place.aad(&self.id);
        let ciphertext = self
            .cipher
            .encrypt(nonce, Payload { msg: plaintext, aad: &aad })
            .expect("AES-GCM encryption cannot fail for in-memory buffers");
        let mut out = Vec::with_capacity(NONCE_BYTES + ciphertext.len());
        out.extend_from_slice(nonce);
        out.extend_from_slice(&ciphertext);
        out.into()
    }

    /// Opens a value sealed for `place` by this key.
    pub fn open(&self, place: &Place<'_>, sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
        if sealed.len() < NONCE_BYTES + TAG_BYTES {
            return Err(OpenError::Truncated);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_BYTES);
        let aad = place.aad(&self.id);
        self.cipher.decrypt(Nonce::from_slice(nonce), Payload { msg: ciphertext, aad: &aad }).map_err(|_| OpenError::Forged)
    }
}

/// Where a sealed value belongs.
#[derive(Debug, Clone, Copy)]
pub struct Place<'a> {
    pub record: Record,
    pub persistence_id: &'a str,
    /// The event's sequence number, the snapshot's, or the durable state's version (0 for a
    /// data key).
    pub sequence_number: u64,
    pub type_url: &'a str,
}

impl Place<'_> {
    /// `"ego1" kind len(pid) pid seq len(key id) key id type_url`, lengths as big-endian u32:
    /// unambiguous, so two different places never share associated data.
    fn aad(&self, key_id: &str) -> Vec<u8> {
        let mut aad = Vec::with_capacity(4 + 1 + 4 + self.persistence_id.len() + 8 + 4 + key_id.len() + self.type_url.len());
        aad.extend_from_slice(b"ego1");
        aad.push(self.record as u8);
        aad.extend_from_slice(&(self.persistence_id.len() as u32).to_be_bytes());
        aad.extend_from_slice(self.persistence_id.as_bytes());
        aad.extend_from_slice(&self.sequence_number.to_be_bytes());
        aad.extend_from_slice(&(key_id.len() as u32).to_be_bytes());
        aad.extend_from_slice(key_id.as_bytes());
        aad.extend_from_slice(self.type_url.as_bytes());
        aad
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place(pid: &str, seq: u64) -> Place<'_> {
        Place { record: Record::Event, persistence_id: pid, sequence_number: seq, type_url: "type.googleapis.com/t.E" }
    }

    #[test]
    fn round_trip_and_bound_to_its_place() {
        let key = SealingKey::new("k1", &SealingKey::random_bytes()).unwrap();
        let sealed = key.seal(&place("a", 1), b"secret");
        assert_eq!(key.open(&place("a", 1), &sealed).unwrap(), b"secret");
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        assert_eq!(key.open(&place("a", 2), &sealed), Err(OpenError::Forged));
        assert_eq!(key.open(&place("b", 1), &sealed), Err(OpenError::Forged));
        let snapshot = Place { record: Record::Snapshot, ..place("a", 1) };
        assert_eq!(key.open(&snapshot, &sealed), Err(OpenError::Forged));
        let other_type = Place { type_url: "type.googleapis.com/t.F", ..place("a", 1) };
        assert_eq!(key.open(&other_type, &sealed), Err(OpenError::Forged));
    }

    #[test]
    fn a_flipped_bit_or_a_cut_fails() {
        let key = SealingKey::new("k1", &SealingKey::random_bytes()).unwrap();
        let sealed = key.seal(&place("a", 1), b"secret");
        for i in 0..sealed.len() {
            let mut bad = sealed.to_vec();
            bad[i] ^= 1;
            assert_eq!(key.open(&place("a", 1), &bad), Err(OpenError::Forged), "bit flipped at {i}");
        }
        assert_eq!(key.open(&place("a", 1), &sealed[..20]), Err(OpenError::Truncated));
    }

    #[test]
    fn another_key_or_key_id_fails() {
        let bytes = SealingKey::random_bytes();
        let key = SealingKey::new("k1", &bytes).unwrap();
        let sealed = key.seal(&place("a", 1), b"secret");
        let same_bytes_other_id = SealingKey::new("k2", &bytes).unwrap();
        assert_eq!(same_bytes_other_id.open(&place("a", 1), &sealed), Err(OpenError::Forged));
        let other = SealingKey::new("k1", &SealingKey::random_bytes()).unwrap();
        assert_eq!(other.open(&place("a", 1), &sealed), Err(OpenError::Forged));
        assert!(SealingKey::new("k", &[0u8; 16]).is_none());
    }

    #[test]
    fn nonces_differ() {
        let key = SealingKey::new("k1", &SealingKey::random_bytes()).unwrap();
        let a = key.seal(&place("a", 1), b"same");
        let b = key.seal(&place("a", 1), b"same");
        assert_ne!(a, b);
    }
}
