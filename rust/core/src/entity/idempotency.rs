//! Idempotent commands: a command sent with a key is applied once. The key and a hash of the
//! command are persisted with what the command wrote (in the `idempotency_key` and
//! `command_hash` fields of its last event, or in the durable-state envelope), and an entity keeps its most recent keys (its window) in
//! memory, in its snapshots and in its durable state, so the window survives restarts and
//! passivation. A repeat under a key in the window is answered from it and writes nothing; a
//! different command under a used key is refused.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::envelope::{Event, IdempotencyRecord};

/// Event metadata entry where records written before `Event.idempotency_key` existed hold the
/// key (read, never written).
pub const METADATA_KEY: &str = "ego.idempotency_key";
/// Event metadata entry where such records hold the command's hash (16 hex digits).
pub const METADATA_HASH: &str = "ego.command_hash";

/// A command's idempotency key and the hash of the command (its type URL and bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    pub key: Arc<str>,
    pub command_hash: u64,
}

/// What the window says about a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seen {
    /// Not in the window: apply the command.
    New,
    /// The same command was applied (or is being written) up to this revision.
    Applied(u64),
    /// Another command used this key.
    Reused,
}

/// An entity's most recent idempotency keys, oldest first, at most `capacity`.
#[derive(Debug, Default)]
pub(crate) struct KeyWindow {
    capacity: usize,
    order: VecDeque<Arc<str>>,
    keys: HashMap<Arc<str>, (u64, u64), foldhash::fast::RandomState>,
}

impl KeyWindow {
    pub(crate) fn new(capacity: usize) -> Self {
        KeyWindow { capacity: capacity.max(1), ..Default::default() }
    }

    /// What is known of `key`.
    pub(crate) fn seen(&self, key: &IdempotencyKey) -> Seen {
        match self.keys.get(&key.key) {
            None => Seen::New,
            Some(&(hash, revision)) if hash == key.command_hash => Seen::Applied(revision),
            Some(_) => Seen::Reused,
        }
    }

    /// Remembers that the command under `key` led to `revision`, forgetting the oldest key when
    /// the window is full.
    pub(crate) fn insert(&mut self, key: Arc<str>, command_hash: u64, revision: u64) {
        if self.keys.insert(key.clone(), (command_hash, revision)).is_none() {
            self.order.push_back(key);
            while self.order.len() > self.capacity {
                if let Some(old) = self.order.pop_front() {
                    self.keys.remove(&old);
                }
            }
        }
    }

    /// Remembers the key an event carries, if any (in its fields, or in the metadata of a
    /// record written before them).
    pub(crate) fn absorb_event(&mut self, event: &Event) {
        if let Some((key, hash)) = key_of(event) {
            self.insert(key.into(), hash, event.sequence_number);
        }
    }

    /// Remembers persisted records (from a snapshot or a durable state).
    pub(crate) fn absorb_records(&mut self, records: &[IdempotencyRecord]) {
        for r in records {
            self.insert(r.key.as_str().into(), r.command_hash, r.revision);
        }
    }

    /// The window as persisted records, oldest first.
    pub(crate) fn records(&self) -> Vec<IdempotencyRecord> {
        self.order
            .iter()
            .filter_map(|k| {
                self.keys.get(k).map(|&(hash, revision)| IdempotencyRecord { key: k.to_string(), command_hash: hash, revision })
            })
            .collect()
    }
}

/// The hash that tells two commands apart: xxh3-64 of the type URL, a zero byte and the
/// encoded bytes (persisted: it must never change).
pub fn command_hash(type_url: &str, bytes: &[u8]) -> u64 {
    const SHORT: usize = 256;
    let n = type_url.len() + 1 + bytes.len();
    if n <= SHORT {
        // Most commands are short: one call of the one-shot hash on a stack copy costs a
        // fraction of the streaming hasher's set-up and three updates.
        let mut buf = [0u8; SHORT];
        buf[..type_url.len()].copy_from_slice(type_url.as_bytes());
        buf[type_url.len() + 1..n].copy_from_slice(bytes);
        return xxhash_rust::xxh3::xxh3_64(&buf[..n]);
    }
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(type_url.as_bytes());
    h.update(&[0]);
    h.update(bytes);
    h.digest()
}

/// Marks an event as the last one of a command applied under `key`.
pub(crate) fn tag_event(event: &mut Event, key: &IdempotencyKey) {
    // (Not `to_string`: on an `Arc<str>` it goes through the formatting machinery.)
    event.idempotency_key = String::from(&*key.key);
    event.command_hash = key.command_hash;
}

/// The idempotency key and command hash an event carries: in its fields, or (records written
/// before them) in its metadata.
pub fn key_of(event: &Event) -> Option<(&str, u64)> {
    if !event.idempotency_key.is_empty() {
        return Some((&event.idempotency_key, event.command_hash));
    }
    if event.metadata.is_empty() {
        return None;
    }
    let (key, hash) = (event.metadata.get(METADATA_KEY)?, event.metadata.get(METADATA_HASH)?);
    Some((key, u64::from_str_radix(hash, 16).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str, hash: u64) -> IdempotencyKey {
        IdempotencyKey { key: k.into(), command_hash: hash }
    }

    #[test]
    fn a_key_is_new_then_applied_then_reused_by_another_command() {
        let mut w = KeyWindow::new(10);
        assert_eq!(w.seen(&key("a", 1)), Seen::New);
        w.insert("a".into(), 1, 7);
        assert_eq!(w.seen(&key("a", 1)), Seen::Applied(7));
        assert_eq!(w.seen(&key("a", 2)), Seen::Reused);
    }

    #[test]
    fn the_oldest_key_leaves_a_full_window() {
        let mut w = KeyWindow::new(2);
        w.insert("a".into(), 1, 1);
        w.insert("b".into(), 1, 2);
        w.insert("c".into(), 1, 3);
        assert_eq!(w.seen(&key("a", 1)), Seen::New);
        assert_eq!(w.records().iter().map(|r| r.key.as_str()).collect::<Vec<_>>(), ["b", "c"]);
    }

    #[test]
    fn events_and_records_round_trip() {
        let mut e = Event { sequence_number: 4, ..Default::default() };
        tag_event(&mut e, &key("k", 0xabc));
        let mut w = KeyWindow::new(10);
        w.absorb_event(&e);
        assert_eq!(w.seen(&key("k", 0xabc)), Seen::Applied(4));
        let mut again = KeyWindow::new(10);
        again.absorb_records(&w.records());
        assert_eq!(again.seen(&key("k", 0xabc)), Seen::Applied(4));
    }

    #[test]
    fn the_command_hash_is_xxh3_of_type_zero_bytes_whatever_the_length() {
        // Persisted hashes stay valid: short inputs (one-shot) and long ones (streaming) hash
        // the same bytes the same way.
        for len in [0, 10, 200, 226, 227, 228, 300, 5000] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let url = "type.googleapis.com/bank.Credit";
            let mut all = url.as_bytes().to_vec();
            all.push(0);
            all.extend_from_slice(&bytes);
            assert_eq!(command_hash(url, &bytes), xxhash_rust::xxh3::xxh3_64(&all), "length {len}");
            // What earlier builds computed (and persisted): the streaming hasher, three updates.
            let mut h = xxhash_rust::xxh3::Xxh3::new();
            h.update(url.as_bytes());
            h.update(&[0]);
            h.update(&bytes);
            assert_eq!(command_hash(url, &bytes), h.digest(), "length {len}");
        }
    }

    #[test]
    fn records_of_the_metadata_layout_are_still_read() {
        let mut e = Event { sequence_number: 9, ..Default::default() };
        e.metadata.insert(METADATA_KEY.into(), "old".into());
        e.metadata.insert(METADATA_HASH.into(), format!("{:016x}", 0xdef_u64));
        assert_eq!(key_of(&e), Some(("old", 0xdef)));
        let mut w = KeyWindow::new(10);
        w.absorb_event(&e);
        assert_eq!(w.seen(&key("old", 0xdef)), Seen::Applied(9));
        e.metadata.insert(METADATA_HASH.into(), "not hex".into());
        assert_eq!(key_of(&e), None);
        assert_eq!(key_of(&Event::default()), None);
    }
}
