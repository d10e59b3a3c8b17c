//! The key-store contract and the cache in front of it.
//!
//! One data key per entity (persistence id), created on its first encrypted write. Erasing an
//! entity destroys its key for good and records the erasure: from then on its records read as
//! tombstones and its id takes no more writes. A key that is missing without an erasure record
//! is an error ([`Error::KeyNotFound`]), never an erasure: ego fails closed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::crypto::cipher::SealingKey;
use crate::error::{Error, Result};
use crate::future::{poll_once, ready, BoxFuture};

/// What a key store knows of one key.
#[derive(Debug, Clone)]
pub enum KeyLookup {
    Found(Arc<SealingKey>),
    /// The entity was erased: its key is gone for good.
    Erased,
    /// No such key, and no erasure recorded.
    Missing,
}

/// Where data keys come from: the built-in store ([`crate::crypto::vault_keys`]) or one
/// written in Python (a KMS, Vault, ...).
pub trait KeyStore: Send + Sync + 'static {
    /// The key that encrypts new records of `persistence_id`, created on first use.
    /// [`Error::EntityErased`] once the entity was erased (a shredded key is never re-created).
    fn key_for_write(&self, persistence_id: &str) -> BoxFuture<'static, Result<Arc<SealingKey>>>;
    /// The key `key_id` of `persistence_id`, to decrypt its records.
    fn key_for_read(&self, persistence_id: &str, key_id: &str) -> BoxFuture<'static, Result<KeyLookup>>;
    /// Destroys the entity's key and records its erasure, durably, before it completes.
    /// Idempotent.
    fn erase(&self, persistence_id: &str) -> BoxFuture<'static, Result<()>>;
    /// Re-wraps every data key under the current master key; returns how many were re-wrapped.
    /// Resumable: run it again after a crash. Key stores without master keys: 0.
    fn rewrap(&self) -> BoxFuture<'static, Result<u64>> {
        ready(Ok(0))
    }
}

enum Cached {
    Key(Arc<SealingKey>),
    Erased,
}

/// A key store with a cache of unwrapped keys (bounded: `capacity` entities), and the entities
/// being erased (their writes are refused from the moment an erasure starts).
///
/// In one process, an erasure is seen at once. Another process that shares the store keeps
/// the key it cached until it restarts or its cache is cleared; what it writes meanwhile is
/// encrypted under the destroyed key, so it is unreadable too.
pub struct KeyRing {
    store: Arc<dyn KeyStore>,
    cache: Mutex<HashMap<Arc<str>, Cached, foldhash::fast::RandomState>>,
    erasing: Mutex<HashSet<Arc<str>>>,
    capacity: usize,
}

impl KeyRing {
    /// A cache of up to `capacity` entities' keys in front of `store`.
    pub fn new(store: Arc<dyn KeyStore>, capacity: usize) -> Arc<Self> {
        Arc::new(KeyRing { store, cache: Mutex::new(HashMap::default()), erasing: Mutex::new(HashSet::new()), capacity: capacity.max(1) })
    }

    fn remember(&self, pid: &str, entry: Cached) {
        if self.erasing.lock().contains(pid) {
            return;
        }
        let mut cache = self.cache.lock();
        if cache.len() >= self.capacity {
            // Rare, and cheaper than tracking recency on every hit: start over.
            cache.clear();
        }
        cache.insert(pid.into(), entry);
    }

    /// The key for new records of `persistence_id` (see [`KeyStore::key_for_write`]).
    pub fn for_write(self: &Arc<Self>, persistence_id: &str) -> BoxFuture<'static, Result<Arc<SealingKey>>> {
        if self.erasing.lock().contains(persistence_id) {
            return ready(Err(Error::EntityErased(persistence_id.into())));
        }
        match self.cache.lock().get(persistence_id) {
            Some(Cached::Key(k)) => return ready(Ok(k.clone())),
            Some(Cached::Erased) => return ready(Err(Error::EntityErased(persistence_id.into()))),
            None => {}
        }
        let fut = self.store.key_for_write(persistence_id);
        let (ring, pid) = (self.clone(), persistence_id.to_string());
        let fut = Box::pin(async move {
            match fut.await {
                Ok(k) => {
                    ring.remember(&pid, Cached::Key(k.clone()));
                    Ok(k)
                }
                Err(Error::EntityErased(id)) => {
                    ring.remember(&pid, Cached::Erased);
                    Err(Error::EntityErased(id))
                }
                Err(e) => Err(e),
            }
        });
        // A key store that answers at once (a cache of its own, memory) answers inline.
        match poll_once(fut) {
            Ok(out) => ready(out),
            Err(fut) => fut,
        }
    }

    /// The key `key_id` of `persistence_id` (see [`KeyStore::key_for_read`]).
    pub fn for_read(self: &Arc<Self>, persistence_id: &str, key_id: &str) -> BoxFuture<'static, Result<KeyLookup>> {
        match self.cache.lock().get(persistence_id) {
            Some(Cached::Key(k)) if &**k.id() == key_id => return ready(Ok(KeyLookup::Found(k.clone()))),
            Some(Cached::Erased) => return ready(Ok(KeyLookup::Erased)),
            _ => {}
        }
        let fut = self.store.key_for_read(persistence_id, key_id);
        let (ring, pid) = (self.clone(), persistence_id.to_string());
        Box::pin(async move {
            let found = fut.await?;
            match &found {
                KeyLookup::Found(k) => ring.remember(&pid, Cached::Key(k.clone())),
                KeyLookup::Erased => ring.remember(&pid, Cached::Erased),
                KeyLookup::Missing => {}
            }
            Ok(found)
        })
    }

    /// Starts erasing `persistence_id`: from now on its writes are refused and its key is no
    /// longer cached. [`KeyRing::erase`] finishes the erasure.
    pub fn begin_erase(&self, persistence_id: &str) {
        self.erasing.lock().insert(persistence_id.into());
        self.cache.lock().remove(persistence_id);
    }

    /// Whether an erasure of `persistence_id` started in this process.
    pub fn is_erasing(&self, persistence_id: &str) -> bool {
        self.erasing.lock().contains(persistence_id)
    }

    /// Destroys the key of `persistence_id` and records the erasure, durably. Writes of the
    /// entity stay refused whatever the outcome (an erasure that failed is retried by calling
    /// it again).
    pub fn erase(self: &Arc<Self>, persistence_id: &str) -> BoxFuture<'static, Result<()>> {
        self.begin_erase(persistence_id);
        let fut = self.store.erase(persistence_id);
        let (ring, pid): (_, Arc<str>) = (self.clone(), persistence_id.into());
        Box::pin(async move {
            fut.await?;
            ring.cache.lock().insert(pid, Cached::Erased);
            Ok(())
        })
    }

    /// Re-wraps every data key under the current master key (see [`KeyStore::rewrap`]).
    pub fn rewrap(&self) -> BoxFuture<'static, Result<u64>> {
        self.cache.lock().clear();
        self.store.rewrap()
    }
}
