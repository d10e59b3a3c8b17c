//! Store wrappers that encrypt on write and decrypt on read, around any store.
//!
//! Encrypted: the value of each event's payload, of each snapshot's state and of each durable
//! state (the bytes of the user's message). In clear: persistence ids, sequence numbers and
//! versions, type URLs, timestamps, shards, positions, metadata, and the sizes of the values.
//! A record already marked encrypted is written as it is (a migration copies ciphertext).
//!
//! Reading gives back exactly what was written: the plaintext, with `is_encrypted` and
//! `encryption_key_id` cleared. An event of an erased entity reads as a tombstone (`is_erased`
//! set, its type URL kept, no value), so readers of the journal go on past it; a snapshot or
//! durable state of an erased entity reads as [`Error::EntityErased`] (only the entity itself
//! reads them); a record of the durable-state change log of an erased entity reads as a
//! tombstone, like an event. A missing key or a record that fails authentication is an error naming the
//! entity.

use std::sync::Arc;

use bytes::Bytes;

use crate::crypto::cipher::{OpenError, Place, Record, SealingKey};
use crate::crypto::keys::{KeyLookup, KeyRing};
use crate::envelope::{Any, DurableState, Event, Snapshot};
use crate::error::{Error, Result};
use crate::future::{poll_once, ready, BoxFuture};
use crate::store::{EventsStore, IdPage, ShardHead, SnapshotCriteria, SnapshotStore, StateStore, Stores};

/// `stores` with every record encrypted under the keys of `keys`.
pub fn encrypt_stores(stores: &Stores, keys: &Arc<KeyRing>) -> Stores {
    Stores {
        events: stores
            .events
            .clone()
            .map(|inner| Arc::new(EncryptedEvents { inner, keys: keys.clone(), decrypt: true }) as Arc<dyn EventsStore>),
        snapshots: stores
            .snapshots
            .clone()
            .map(|inner| Arc::new(EncryptedSnapshots { inner, keys: keys.clone() }) as Arc<dyn SnapshotStore>),
        states: stores
            .states
            .clone()
            .map(|inner| Arc::new(EncryptedStates { inner, keys: keys.clone(), decrypt: true }) as Arc<dyn StateStore>),
    }
}

fn seal_any(key: &SealingKey, record: Record, pid: &str, seq: u64, any: &mut Any) {
    let place = Place { record, persistence_id: pid, sequence_number: seq, type_url: &any.type_url };
    any.value = key.seal(&place, &any.value);
}

fn open_any(key: &SealingKey, record: Record, pid: &str, seq: u64, any: &mut Any) -> Result<()> {
    let place = Place { record, persistence_id: pid, sequence_number: seq, type_url: &any.type_url };
    match key.open(&place, &any.value) {
        Ok(plain) => {
            any.value = Bytes::from(plain);
            Ok(())
        }
        Err(why) => Err(Error::Decryption {
            persistence_id: pid.into(),
            sequence_number: seq,
            detail: match why {
                OpenError::Truncated => "the encrypted value is truncated".into(),
                OpenError::Forged => "the encrypted value failed authentication (changed, damaged, or moved from another record)".into(),
            },
        }),
    }
}

/// Events of an encrypted journal that readers who are not to see plaintext (publishers that
/// publish as stored) read: each event as stored (ciphertext, `is_encrypted` and
/// `encryption_key_id` kept), except that an erased entity's events read as tombstones, as
/// through [`encrypt_stores`]. Writes go through as they are.
pub fn as_stored_events(inner: Arc<dyn EventsStore>, keys: &Arc<KeyRing>) -> Arc<dyn EventsStore> {
    Arc::new(EncryptedEvents { inner, keys: keys.clone(), decrypt: false })
}

/// The durable-state store of an encrypted engine as readers who are not to see plaintext
/// (state publishers that publish as stored) read its change log: each version as stored
/// (ciphertext, `is_encrypted` and `encryption_key_id` kept), except that an erased entity's
/// versions read as tombstones, as through [`encrypt_stores`]. Everything else goes through
/// [`encrypt_stores`]' wrapper unchanged (states read by id are decrypted).
pub fn as_stored_states(inner: Arc<dyn StateStore>, keys: &Arc<KeyRing>) -> Arc<dyn StateStore> {
    Arc::new(EncryptedStates { inner, keys: keys.clone(), decrypt: false })
}

/// The plaintext of encrypted events (tombstones for erased entities); with `decrypt` false,
/// the events as stored but the erased ones as tombstones (a missing key then leaves the event
/// as it is). The key is looked up once per run of events with the same entity and key id (a
/// replay is one run).
async fn open_events(keys: &Arc<KeyRing>, events: Vec<Event>, decrypt: bool) -> Result<Vec<Event>> {
    let mut out = Vec::with_capacity(events.len());
    let mut current: Option<(String, String, KeyLookup)> = None;
    for mut event in events {
        if !event.is_encrypted {
            out.push(event);
            continue;
        }
        let (pid, seq) = (&event.persistence_id, event.sequence_number);
        if !matches!(&current, Some((p, k, _)) if p == pid && *k == event.encryption_key_id) {
            let found = keys.for_read(pid, &event.encryption_key_id).await?;
            current = Some((pid.clone(), event.encryption_key_id.clone(), found));
        }
        match &current.as_ref().expect("looked up").2 {
            KeyLookup::Found(_) | KeyLookup::Missing if !decrypt => {}
            KeyLookup::Found(key) => {
                if let Some(any) = event.event.as_mut() {
                    open_any(key, Record::Event, pid, seq, any)?;
                }
                event.is_encrypted = false;
                event.encryption_key_id.clear();
            }
            KeyLookup::Erased => {
                if let Some(any) = event.event.as_mut() {
                    any.value = Bytes::new();
                }
                event.is_erased = true;
            }
            KeyLookup::Missing => {
                return Err(Error::KeyNotFound {
                    persistence_id: pid.as_str().into(),
                    sequence_number: seq,
                    key_id: event.encryption_key_id.as_str().into(),
                })
            }
        }
        out.push(event);
    }
    Ok(out)
}

/// The plaintext of encrypted change-log records (tombstones for erased entities); with
/// `decrypt` false, the records as stored but the erased ones as tombstones, like
/// [`open_events`].
async fn open_changes(keys: &Arc<KeyRing>, changes: Vec<DurableState>, decrypt: bool) -> Result<Vec<DurableState>> {
    let mut out = Vec::with_capacity(changes.len());
    let mut current: Option<(String, String, KeyLookup)> = None;
    for mut change in changes {
        if !change.is_encrypted {
            out.push(change);
            continue;
        }
        let (pid, version) = (&change.persistence_id, change.version_number);
        if !matches!(&current, Some((p, k, _)) if p == pid && *k == change.encryption_key_id) {
            let found = keys.for_read(pid, &change.encryption_key_id).await?;
            current = Some((pid.clone(), change.encryption_key_id.clone(), found));
        }
        match &current.as_ref().expect("looked up").2 {
            KeyLookup::Found(_) | KeyLookup::Missing if !decrypt => {}
            KeyLookup::Found(key) => {
                if let Some(any) = change.resulting_state.as_mut() {
                    open_any(key, Record::DurableState, pid, version, any)?;
                }
                change.is_encrypted = false;
                change.encryption_key_id.clear();
            }
            KeyLookup::Erased => {
                if let Some(any) = change.resulting_state.as_mut() {
                    any.value = Bytes::new();
                }
                change.is_erased = true;
            }
            KeyLookup::Missing => {
                return Err(Error::KeyNotFound {
                    persistence_id: pid.as_str().into(),
                    sequence_number: version,
                    key_id: change.encryption_key_id.as_str().into(),
                })
            }
        }
        out.push(change);
    }
    Ok(out)
}

/// Runs `fut` inline when it finishes at once (the common case: keys cached, embedded store).
fn inline<T: Send + 'static>(fut: BoxFuture<'static, T>) -> BoxFuture<'static, T> {
    match poll_once(fut) {
        Ok(out) => ready(out),
        Err(fut) => fut,
    }
}

/// An events store whose payloads are encrypted.
pub struct EncryptedEvents {
    inner: Arc<dyn EventsStore>,
    keys: Arc<KeyRing>,
    /// Reads give plaintext (false: as stored, see [`as_stored_events`]).
    decrypt: bool,
}

impl EventsStore for EncryptedEvents {
    fn write_events(&self, mut events: Vec<Event>) -> BoxFuture<'static, Result<()>> {
        let Some(pid) = events.first().map(|e| e.persistence_id.clone()) else { return self.inner.write_events(events) };
        let seal = |key: &SealingKey, events: &mut Vec<Event>| {
            for e in events.iter_mut().filter(|e| !e.is_encrypted) {
                if let Some(any) = e.event.as_mut() {
                    seal_any(key, Record::Event, &e.persistence_id, e.sequence_number, any);
                }
                e.is_encrypted = true;
                e.encryption_key_id = key.id().to_string();
            }
        };
        match poll_once(self.keys.for_write(&pid)) {
            Ok(Ok(key)) => {
                seal(&key, &mut events);
                self.inner.write_events(events)
            }
            Ok(Err(e)) => ready(Err(e)),
            Err(key) => {
                let inner = self.inner.clone();
                Box::pin(async move {
                    let key = key.await?;
                    seal(&key, &mut events);
                    inner.write_events(events).await
                })
            }
        }
    }

    fn replay_events(&self, persistence_id: &str, from: u64, to: u64, max: u64) -> BoxFuture<'static, Result<Vec<Event>>> {
        let (read, keys, decrypt) = (self.inner.replay_events(persistence_id, from, to, max), self.keys.clone(), self.decrypt);
        inline(Box::pin(async move { open_events(&keys, read.await?, decrypt).await }))
    }

    fn highest_sequence_number(&self, persistence_id: &str) -> BoxFuture<'static, Result<u64>> {
        self.inner.highest_sequence_number(persistence_id)
    }

    fn claim_journal(&self, shards: u32) -> BoxFuture<'static, Result<Option<crate::store::JournalInfo>>> {
        self.inner.claim_journal(shards)
    }

    fn delete_events(&self, persistence_id: &str, to: u64) -> BoxFuture<'static, Result<()>> {
        self.inner.delete_events(persistence_id, to)
    }

    fn persistence_ids(&self, page_size: usize, after: Option<String>) -> BoxFuture<'static, Result<IdPage>> {
        self.inner.persistence_ids(page_size, after)
    }

    fn shard_events(&self, shard: u32, after: u64, max: usize) -> BoxFuture<'static, Result<Vec<Event>>> {
        let (read, keys, decrypt) = (self.inner.shard_events(shard, after, max), self.keys.clone(), self.decrypt);
        inline(Box::pin(async move { open_events(&keys, read.await?, decrypt).await }))
    }

    fn shard_heads(&self) -> BoxFuture<'static, Result<Vec<ShardHead>>> {
        self.inner.shard_heads()
    }

    fn close(&self) -> BoxFuture<'static, Result<()>> {
        self.inner.close()
    }
}

/// A snapshot store whose states are encrypted.
pub struct EncryptedSnapshots {
    inner: Arc<dyn SnapshotStore>,
    keys: Arc<KeyRing>,
}

impl SnapshotStore for EncryptedSnapshots {
    fn write_snapshot(&self, mut snapshot: Snapshot) -> BoxFuture<'static, Result<()>> {
        if snapshot.is_encrypted {
            return self.inner.write_snapshot(snapshot);
        }
        let (key, inner) = (self.keys.for_write(&snapshot.persistence_id), self.inner.clone());
        inline(Box::pin(async move {
            let key = key.await?;
            if let Some(any) = snapshot.state.as_mut() {
                seal_any(&key, Record::Snapshot, &snapshot.persistence_id, snapshot.sequence_number, any);
            }
            snapshot.is_encrypted = true;
            snapshot.encryption_key_id = key.id().to_string();
            inner.write_snapshot(snapshot).await
        }))
    }

    fn latest_snapshot(&self, persistence_id: &str, criteria: SnapshotCriteria) -> BoxFuture<'static, Result<Option<Snapshot>>> {
        let (read, keys) = (self.inner.latest_snapshot(persistence_id, criteria), self.keys.clone());
        inline(Box::pin(async move {
            let Some(mut s) = read.await? else { return Ok(None) };
            if !s.is_encrypted {
                return Ok(Some(s));
            }
            let (pid, seq) = (s.persistence_id.clone(), s.sequence_number);
            match keys.for_read(&pid, &s.encryption_key_id).await? {
                KeyLookup::Found(key) => {
                    if let Some(any) = s.state.as_mut() {
                        open_any(&key, Record::Snapshot, &pid, seq, any)?;
                    }
                    s.is_encrypted = false;
                    s.encryption_key_id.clear();
                    Ok(Some(s))
                }
                KeyLookup::Erased => Err(Error::EntityErased(pid.into())),
                KeyLookup::Missing => {
                    Err(Error::KeyNotFound { persistence_id: pid.into(), sequence_number: seq, key_id: s.encryption_key_id.into() })
                }
            }
        }))
    }

    fn delete_snapshots(&self, persistence_id: &str, criteria: SnapshotCriteria) -> BoxFuture<'static, Result<()>> {
        self.inner.delete_snapshots(persistence_id, criteria)
    }

    fn close(&self) -> BoxFuture<'static, Result<()>> {
        self.inner.close()
    }
}

/// A durable-state store whose states are encrypted.
pub struct EncryptedStates {
    inner: Arc<dyn StateStore>,
    keys: Arc<KeyRing>,
    /// Change-log reads give plaintext (false: as stored, see [`as_stored_states`]).
    decrypt: bool,
}

impl StateStore for EncryptedStates {
    fn write_state(&self, mut state: DurableState, expected_version: u64) -> BoxFuture<'static, Result<()>> {
        if state.is_encrypted {
            return self.inner.write_state(state, expected_version);
        }
        let seal = |key: &SealingKey, state: &mut DurableState| {
            if let Some(any) = state.resulting_state.as_mut() {
                seal_any(key, Record::DurableState, &state.persistence_id, state.version_number, any);
            }
            state.is_encrypted = true;
            state.encryption_key_id = key.id().to_string();
        };
        match poll_once(self.keys.for_write(&state.persistence_id)) {
            Ok(Ok(key)) => {
                seal(&key, &mut state);
                self.inner.write_state(state, expected_version)
            }
            Ok(Err(e)) => ready(Err(e)),
            Err(key) => {
                let inner = self.inner.clone();
                Box::pin(async move {
                    let key = key.await?;
                    seal(&key, &mut state);
                    inner.write_state(state, expected_version).await
                })
            }
        }
    }

    fn read_state(&self, persistence_id: &str) -> BoxFuture<'static, Result<Option<DurableState>>> {
        let (read, keys) = (self.inner.read_state(persistence_id), self.keys.clone());
        inline(Box::pin(async move {
            let Some(mut s) = read.await? else { return Ok(None) };
            if !s.is_encrypted {
                return Ok(Some(s));
            }
            let (pid, version) = (s.persistence_id.clone(), s.version_number);
            match keys.for_read(&pid, &s.encryption_key_id).await? {
                KeyLookup::Found(key) => {
                    if let Some(any) = s.resulting_state.as_mut() {
                        open_any(&key, Record::DurableState, &pid, version, any)?;
                    }
                    s.is_encrypted = false;
                    s.encryption_key_id.clear();
                    Ok(Some(s))
                }
                KeyLookup::Erased => Err(Error::EntityErased(pid.into())),
                KeyLookup::Missing => {
                    Err(Error::KeyNotFound { persistence_id: pid.into(), sequence_number: version, key_id: s.encryption_key_id.into() })
                }
            }
        }))
    }

    fn state_version(&self, persistence_id: &str) -> BoxFuture<'static, Result<u64>> {
        // Versions are stored in the clear.
        self.inner.state_version(persistence_id)
    }

    fn delete_state(&self, persistence_id: &str) -> BoxFuture<'static, Result<()>> {
        self.inner.delete_state(persistence_id)
    }

    fn state_ids(&self, page_size: usize, after: Option<String>) -> BoxFuture<'static, Result<IdPage>> {
        self.inner.state_ids(page_size, after)
    }

    fn shard_state_changes(&self, shard: u32, after: u64, max: usize) -> BoxFuture<'static, Result<Vec<DurableState>>> {
        let (read, keys, decrypt) = (self.inner.shard_state_changes(shard, after, max), self.keys.clone(), self.decrypt);
        inline(Box::pin(async move { open_changes(&keys, read.await?, decrypt).await }))
    }

    fn state_shard_heads(&self) -> BoxFuture<'static, Result<Vec<ShardHead>>> {
        self.inner.state_shard_heads()
    }

    fn close(&self) -> BoxFuture<'static, Result<()>> {
        self.inner.close()
    }
}
