//! Encryption at rest without Python: the key ring over the built-in key store, the store
//! wrappers, erasure and master-key rotation, on the in-memory store.

use std::sync::Arc;

use bytes::Bytes;
use ego_core::crypto::keys::{KeyLookup, KeyRing};
use ego_core::crypto::layer::encrypt_stores;
use ego_core::crypto::vault_keys::{MasterKeys, VaultKeyStore};
use ego_core::envelope::{Any, Event};
use ego_core::error::Error;
use ego_core::future::block_on;
use ego_core::store::memory::MemoryStore;
use ego_core::store::{EventsStore, KeySlot, KeyVault, Stores};

const MASTER: [u8; 32] = [7; 32];
const OTHER: [u8; 32] = [9; 32];

fn ring(vault: &MemoryStore, current: (&str, &[u8]), previous: &[(String, Vec<u8>)]) -> Arc<KeyRing> {
    let masters = MasterKeys::new(current, previous).unwrap();
    KeyRing::new(Arc::new(VaultKeyStore::new(Arc::new(vault.clone()), masters)), 1000)
}

fn event(pid: &str, seq: u64, value: &'static [u8]) -> Event {
    Event {
        persistence_id: pid.into(),
        sequence_number: seq,
        event: Some(Any::new("type.googleapis.com/t.E", Bytes::from_static(value))),
        ..Default::default()
    }
}

/// Events without their store-assigned positions.
fn unpositioned(mut events: Vec<Event>) -> Vec<Event> {
    events.iter_mut().for_each(|e| e.position = 0);
    events
}

fn encrypted(store: &MemoryStore, keys: &Arc<KeyRing>) -> Arc<dyn EventsStore> {
    let plain = Stores { events: Some(Arc::new(store.clone())), snapshots: None, states: None };
    encrypt_stores(&plain, keys).events.unwrap()
}

#[test]
fn writes_are_encrypted_and_read_back() {
    let store = MemoryStore::new();
    let keys = ring(&store, ("m1", &MASTER), &[]);
    let events = encrypted(&store, &keys);
    block_on(events.write_events(vec![event("a", 1, b"secret one"), event("a", 2, b"secret two")])).unwrap();
    let raw = block_on(store.replay_events("a", 1, u64::MAX, 10)).unwrap();
    assert!(raw.iter().all(|e| e.is_encrypted && !e.encryption_key_id.is_empty()));
    assert!(raw.iter().all(|e| !e.event.as_ref().unwrap().value.windows(6).any(|w| w == b"secret")));
    let back = block_on(events.replay_events("a", 1, u64::MAX, 10)).unwrap();
    assert_eq!(unpositioned(back), vec![event("a", 1, b"secret one"), event("a", 2, b"secret two")]);
}

#[test]
fn erasure_refuses_writes_and_leaves_tombstones() {
    let store = MemoryStore::new();
    let keys = ring(&store, ("m1", &MASTER), &[]);
    let events = encrypted(&store, &keys);
    block_on(events.write_events(vec![event("a", 1, b"x")])).unwrap();
    block_on(keys.erase("a")).unwrap();
    assert!(matches!(block_on(events.write_events(vec![event("a", 2, b"y")])), Err(Error::EntityErased(_))));
    let back = block_on(events.replay_events("a", 1, u64::MAX, 10)).unwrap();
    assert!(back[0].is_erased && back[0].event.as_ref().unwrap().value.is_empty());
    assert!(matches!(block_on(store.read_key("a")).unwrap(), KeySlot::Erased(_)));
    // A fresh key ring (another process, a restart) sees the erasure too and never re-creates the key.
    let again = ring(&store, ("m1", &MASTER), &[]);
    assert!(matches!(block_on(again.for_write("a")), Err(Error::EntityErased(_))));
    assert!(matches!(block_on(again.for_read("a", "any")).unwrap(), KeyLookup::Erased));
    // Erasure is idempotent.
    block_on(again.erase("a")).unwrap();
}

#[test]
fn rotation_rewraps_and_the_old_master_can_be_retired() {
    let store = MemoryStore::new();
    let old = ring(&store, ("old", &MASTER), &[]);
    let events = encrypted(&store, &old);
    for pid in ["a", "b", "c"] {
        block_on(events.write_events(vec![event(pid, 1, b"v")])).unwrap();
    }
    let rotating = ring(&store, ("new", &OTHER), &[("old".into(), MASTER.to_vec())]);
    assert_eq!(block_on(rotating.rewrap()).unwrap(), 3);
    assert_eq!(block_on(rotating.rewrap()).unwrap(), 0);
    let new_only = ring(&store, ("new", &OTHER), &[]);
    let back = block_on(encrypted(&store, &new_only).replay_events("b", 1, u64::MAX, 10)).unwrap();
    assert_eq!(unpositioned(back), vec![event("b", 1, b"v")]);
    // The old master alone no longer unwraps them.
    let stale = ring(&store, ("old", &MASTER), &[]);
    assert!(matches!(block_on(encrypted(&store, &stale).replay_events("b", 1, u64::MAX, 10)), Err(Error::MasterKey(_))));
}

#[test]
fn a_missing_key_fails_closed() {
    let store = MemoryStore::new();
    let keys = ring(&store, ("m1", &MASTER), &[]);
    block_on(encrypted(&store, &keys).write_events(vec![event("a", 1, b"x")])).unwrap();
    let elsewhere = MemoryStore::new();
    let other_vault = ring(&elsewhere, ("m1", &MASTER), &[]);
    let err = block_on(encrypted(&store, &other_vault).replay_events("a", 1, u64::MAX, 10)).unwrap_err();
    assert!(matches!(err, Error::KeyNotFound { ref persistence_id, sequence_number: 1, .. } if &**persistence_id == "a"), "{err}");
}
