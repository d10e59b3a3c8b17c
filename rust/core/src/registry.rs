//! The map of live and dormant entities, sharded to keep lock hold times and contention low.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;

use parking_lot::Mutex;

const SHARDS: usize = 64;

/// Seeded per process (so ids chosen by clients cannot be made to collide), and several times
/// faster than SipHash on short keys.
type Hasher = foldhash::fast::RandomState;
type Shard<V> = Mutex<HashMap<Arc<str>, Arc<V>, Hasher>>;

/// A concurrent map from entity id to `Arc<V>`.
pub struct Registry<V> {
    shards: Box<[Shard<V>]>,
    hasher: Hasher,
}

impl<V> Default for Registry<V> {
    fn default() -> Self {
        Registry { shards: (0..SHARDS).map(|_| Mutex::new(HashMap::default())).collect(), hasher: Default::default() }
    }
}

impl<V> Registry<V> {
    fn shard(&self, id: &str) -> &Shard<V> {
        &self.shards[(self.hasher.hash_one(id) as usize) % SHARDS]
    }

    /// The entry for `id`.
    pub fn get(&self, id: &str) -> Option<Arc<V>> {
        self.shard(id).lock().get(id).cloned()
    }

    /// Inserts `value` unless `id` is taken; returns what is in the map afterwards and whether
    /// it is `value`.
    pub fn insert_if_absent(&self, id: Arc<str>, value: Arc<V>) -> (Arc<V>, bool) {
        let mut shard = self.shard(&id).lock();
        match shard.get(&id) {
            Some(existing) => (existing.clone(), false),
            None => {
                shard.insert(id, value.clone());
                (value, true)
            }
        }
    }

    /// Removes `id` if it maps to exactly `value`.
    pub fn remove_if(&self, id: &str, value: &Arc<V>) -> bool {
        let mut shard = self.shard(id).lock();
        if shard.get(id).is_some_and(|v| Arc::ptr_eq(v, value)) {
            shard.remove(id);
            true
        } else {
            false
        }
    }

    /// Every entry (a snapshot; entries may change meanwhile).
    pub fn values(&self) -> Vec<Arc<V>> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            out.extend(shard.lock().values().cloned());
        }
        out
    }

    /// Calls `f` on every entry, shard by shard, without collecting them.
    pub fn for_each(&self, mut f: impl FnMut(&Arc<V>)) {
        for shard in self.shards.iter() {
            let entries: Vec<Arc<V>> = shard.lock().values().cloned().collect();
            entries.iter().for_each(&mut f);
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes every entry and returns them.
    pub fn drain(&self) -> Vec<Arc<V>> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            out.extend(shard.lock().drain().map(|(_, v)| v));
        }
        out
    }
}
