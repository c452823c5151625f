//! Encryption at rest: batches of encrypted partitions are sealed with
//! AES-256-GCM before they reach a segment file and opened when read, so
//! everything above the log (tail cache, protocols) sees plain batches and
//! nothing plain is on disk.
//!
//! An encrypted batch keeps Kafka's v2 header (base offset, length, CRC,
//! attributes, offsets, times, producer, count) so recovery, indexes and
//! CRC checks work unchanged; attribute bit 14 marks it, and its records
//! section becomes `key id (4) ‖ nonce (12) ‖ ciphertext ‖ tag (16)`. The
//! header fields that give the records their meaning (base offset,
//! attributes, offsets, times, producer, count) are bound to the ciphertext
//! as associated data, so a batch cannot be moved or re-dated unnoticed.
//! Nonces are random (96 bits) per batch: a torn tail rewritten at the same
//! offset never reuses one.

use std::fmt;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use fjord_core::batch::HEADER_LEN;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::error::LogError;

/// Attribute bit of a batch sealed by Fjord.
pub const ATTR_ENCRYPTED: i16 = 1 << 14;

const CRC_START: usize = 21;
const KEY_ID_LEN: usize = 4;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// What sealing adds to a batch.
pub const OVERHEAD: usize = KEY_ID_LEN + NONCE_LEN + TAG_LEN;

/// A tenant's keys: the first seals, all of them open (older keys stay
/// until no segment uses them).
pub struct KeyRing {
    keys: Vec<([u8; KEY_ID_LEN], Aes256Gcm)>,
}

impl fmt::Debug for KeyRing {
    /// Key ids only: key material is never printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<String> = self
            .keys
            .iter()
            .map(|(id, _)| id.iter().map(|b| format!("{b:02x}")).collect())
            .collect();
        f.debug_struct("KeyRing").field("key_ids", &ids).finish()
    }
}

impl KeyRing {
    /// `keys[0]` is the current key. A key's id is the start of its
    /// SHA-256, so the id says nothing about the key.
    pub fn new(keys: &[[u8; 32]]) -> Option<Self> {
        if keys.is_empty() {
            return None;
        }
        Some(Self {
            keys: keys
                .iter()
                .map(|k| {
                    let digest = Sha256::digest(k);
                    let mut id = [0u8; KEY_ID_LEN];
                    id.copy_from_slice(&digest[..KEY_ID_LEN]);
                    (id, Aes256Gcm::new(k.into()))
                })
                .collect(),
        })
    }

    /// Seals a plain batch (its header already final).
    pub fn seal(&self, batch: &[u8]) -> Result<Vec<u8>, LogError> {
        if batch.len() < HEADER_LEN {
            return Err(LogError::Encryption("batch shorter than its header".into()));
        }
        let (id, cipher) = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let aad = associated_data(batch);
        let sealed = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &batch[HEADER_LEN..],
                    aad: &aad,
                },
            )
            .map_err(|_| LogError::Encryption("sealing failed".into()))?;
        let mut out = Vec::with_capacity(HEADER_LEN + OVERHEAD + batch.len() - HEADER_LEN);
        out.extend_from_slice(&batch[..HEADER_LEN]);
        out.extend_from_slice(id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        let attrs = i16::from_be_bytes([out[21], out[22]]) | ATTR_ENCRYPTED;
        out[21..23].copy_from_slice(&attrs.to_be_bytes());
        finish_header(&mut out);
        Ok(out)
    }

    /// Opens a sealed batch back into the plain one.
    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, LogError> {
        if sealed.len() < HEADER_LEN + OVERHEAD {
            return Err(LogError::Encryption("sealed batch too short".into()));
        }
        let body = &sealed[HEADER_LEN..];
        let (id, rest) = body.split_at(KEY_ID_LEN);
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let cipher = self
            .keys
            .iter()
            .find(|(k, _)| k == id)
            .map(|(_, c)| c)
            .ok_or_else(|| {
                LogError::Encryption(
                    "the batch was sealed with a key the key file no longer holds".into(),
                )
            })?;
        let mut plain = sealed[..HEADER_LEN].to_vec();
        let attrs = i16::from_be_bytes([plain[21], plain[22]]) & !ATTR_ENCRYPTED;
        plain[21..23].copy_from_slice(&attrs.to_be_bytes());
        let aad = associated_data(&plain);
        let records = cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| {
                LogError::Encryption(
                    "the batch does not authenticate (wrong key or tampered)".into(),
                )
            })?;
        plain.extend_from_slice(&records);
        finish_header(&mut plain);
        Ok(plain)
    }
}

/// Whether a batch (header) is sealed.
pub fn is_sealed(batch: &[u8]) -> bool {
    batch.len() >= 23 && i16::from_be_bytes([batch[21], batch[22]]) & ATTR_ENCRYPTED != 0
}

/// Base offset, then everything from the attributes to the record count,
/// of the plain header.
fn associated_data(plain_header: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(8 + HEADER_LEN - CRC_START);
    aad.extend_from_slice(&plain_header[..8]);
    aad.extend_from_slice(&plain_header[CRC_START..HEADER_LEN]);
    aad
}

/// Sets the batch length and CRC for the batch's current bytes.
fn finish_header(batch: &mut [u8]) {
    let len = (batch.len() - 12) as i32;
    batch[8..12].copy_from_slice(&len.to_be_bytes());
    let crc = crc32c::crc32c(&batch[CRC_START..]);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use fjord_core::batch::{self, BatchHeader};
    use fjord_core::RecordInput;

    fn plain() -> Vec<u8> {
        let recs: Vec<RecordInput> = (0..3)
            .map(|i| RecordInput {
                key: Some(format!("k{i}").into()),
                value: Some(format!("secret reading {i}").into()),
                ..Default::default()
            })
            .collect();
        batch::encode(42, 1_700_000_000_000, Default::default(), &recs)
    }

    #[test]
    fn sealed_batches_keep_their_header_hide_their_records_and_open_back() {
        let ring = KeyRing::new(&[[7u8; 32]]).unwrap();
        let p = plain();
        let s = ring.seal(&p).unwrap();
        assert!(is_sealed(&s) && !is_sealed(&p));
        assert!(!s.windows(6).any(|w| w == b"secret"));
        let h = BatchHeader::parse(&s).unwrap();
        assert_eq!(h.base_offset, 42);
        assert_eq!(h.total_len(), s.len());
        batch::verify_crc(&s).unwrap();
        assert_eq!(ring.open(&s).unwrap(), p);
    }

    #[test]
    fn tampering_a_wrong_key_and_a_moved_batch_are_caught() {
        let ring = KeyRing::new(&[[7u8; 32]]).unwrap();
        let s = ring.seal(&plain()).unwrap();
        let mut flipped = s.clone();
        let last = flipped.len() - 20;
        flipped[last] ^= 1;
        assert!(ring.open(&flipped).is_err());
        let mut moved = s.clone();
        batch::set_base_offset(&mut moved, 43);
        assert!(ring.open(&moved).is_err());
        let other = KeyRing::new(&[[8u8; 32]]).unwrap();
        assert!(other.open(&s).is_err());
        // After rotation the old key still opens old batches.
        let rotated = KeyRing::new(&[[8u8; 32], [7u8; 32]]).unwrap();
        assert_eq!(rotated.open(&s).unwrap(), plain());
        assert!(!format!("{rotated:?}").contains("07070707"));
    }
}
