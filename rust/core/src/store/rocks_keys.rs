//! The key vault of the RocksDB store: column families `keys` (persistence id -> `DataKey`)
//! and `erasures` (persistence id -> `Erasure`).
//!
//! Creating a key is a write that is not synced on its own: the first event encrypted with it
//! is written (and synced) after it, and the write-ahead log keeps their order, so the key is
//! durable before anything that needs it is acknowledged. An erasure is synced before it
//! completes, then the old key's range is compacted so its bytes leave the table files.

use prost::Message;
use rocksdb::{WriteBatch, WriteOptions};

use super::rocks::{cf, journal_end, map_err, RocksStore, CF_ERASURES, CF_KEYS};
use super::{KeySlot, KeyVault};
use crate::envelope::{DataKey, Erasure};
use crate::error::{Error, Result};
use crate::future::{ready, BoxFuture};

impl RocksStore {
    fn slot(&self, pid: &str) -> Result<KeySlot> {
        let db = self.db()?;
        if let Some(v) = db.get_pinned_cf(cf(&db, CF_ERASURES), pid.as_bytes()).map_err(map_err)? {
            let e = Erasure::decode(&*v).map_err(|e| corrupt(pid, e))?;
            return Ok(KeySlot::Erased(e.erased_at));
        }
        let key = db.get_pinned_cf(cf(&db, CF_KEYS), pid.as_bytes()).map_err(map_err)?;
        match key {
            Some(v) => Ok(KeySlot::Key(DataKey::decode(&*v).map_err(|e| corrupt(pid, e))?)),
            None => Ok(KeySlot::Empty),
        }
    }

    fn write_keys(&self, batch: WriteBatch, sync: bool) -> Result<()> {
        let db = self.db()?;
        let mut wo = WriteOptions::default();
        wo.set_sync(sync && self.syncs());
        db.write_opt(batch, &wo).map_err(map_err)
    }

    fn create(&self, key: DataKey) -> Result<KeySlot> {
        crate::ids::validate_id(&key.persistence_id)?;
        let _guard = self.keys_lock().lock();
        match self.slot(&key.persistence_id)? {
            KeySlot::Empty => {}
            found => return Ok(found),
        }
        let db = self.db()?;
        let mut batch = WriteBatch::default();
        batch.put_cf(cf(&db, CF_KEYS), key.persistence_id.as_bytes(), key.encode_to_vec());
        self.write_keys(batch, false)?;
        Ok(KeySlot::Key(key))
    }

    fn erase(&self, pid: &str, erased_at: i64) -> Result<()> {
        crate::ids::validate_id(pid)?;
        {
            let _guard = self.keys_lock().lock();
            if matches!(self.slot(pid)?, KeySlot::Erased(_)) {
                return Ok(());
            }
            let db = self.db()?;
            let mut batch = WriteBatch::default();
            batch.delete_cf(cf(&db, CF_KEYS), pid.as_bytes());
            let record = Erasure { persistence_id: pid.to_string(), erased_at };
            batch.put_cf(cf(&db, CF_ERASURES), pid.as_bytes(), record.encode_to_vec());
            self.write_keys(batch, true)?;
        }
        // The deletion is durable; compaction drops the old key's bytes from the table files
        // (the WAL that held it is recycled once the memtables are flushed). Best effort.
        let db = self.db()?;
        let _ = db.flush_cf(cf(&db, CF_KEYS));
        db.compact_range_cf(cf(&db, CF_KEYS), Some(pid.as_bytes()), Some(journal_end(pid)));
        Ok(())
    }

    fn keys_after(&self, after: Option<String>, max: usize) -> Result<Vec<DataKey>> {
        let db = self.db()?;
        let mut it = db.raw_iterator_cf(cf(&db, CF_KEYS));
        match &after {
            Some(a) => {
                it.seek(a.as_bytes());
                if it.valid() && it.key() == Some(a.as_bytes()) {
                    it.next();
                }
            }
            None => it.seek_to_first(),
        }
        let mut out = Vec::new();
        while it.valid() && out.len() < max {
            let pid = String::from_utf8_lossy(it.key().unwrap_or_default()).into_owned();
            out.push(DataKey::decode(it.value().unwrap_or_default()).map_err(|e| corrupt(&pid, e))?);
            it.next();
        }
        it.status().map_err(map_err)?;
        Ok(out)
    }

    fn erasures_after(&self, after: Option<String>, max: usize) -> Result<Vec<(String, i64)>> {
        let db = self.db()?;
        let mut it = db.raw_iterator_cf(cf(&db, CF_ERASURES));
        match &after {
            Some(a) => {
                it.seek(a.as_bytes());
                if it.valid() && it.key() == Some(a.as_bytes()) {
                    it.next();
                }
            }
            None => it.seek_to_first(),
        }
        let mut out = Vec::new();
        while it.valid() && out.len() < max {
            let pid = String::from_utf8_lossy(it.key().unwrap_or_default()).into_owned();
            let record = Erasure::decode(it.value().unwrap_or_default()).map_err(|e| corrupt(&pid, e))?;
            out.push((pid, record.erased_at));
            it.next();
        }
        it.status().map_err(map_err)?;
        Ok(out)
    }

    fn replace(&self, key: DataKey, expected_master: &str) -> Result<bool> {
        let _guard = self.keys_lock().lock();
        match self.slot(&key.persistence_id)? {
            KeySlot::Key(stored) if stored.master_key_id == expected_master && stored.key_id == key.key_id => {}
            _ => return Ok(false),
        }
        let db = self.db()?;
        let mut batch = WriteBatch::default();
        batch.put_cf(cf(&db, CF_KEYS), key.persistence_id.as_bytes(), key.encode_to_vec());
        self.write_keys(batch, true)?;
        Ok(true)
    }
}

fn corrupt(pid: &str, e: prost::DecodeError) -> Error {
    Error::Corrupt { persistence_id: pid.into(), sequence_number: 0, detail: format!("undecodable key vault record: {e}").into() }
}

impl KeyVault for RocksStore {
    fn read_key(&self, persistence_id: &str) -> BoxFuture<'static, Result<KeySlot>> {
        ready(self.slot(persistence_id))
    }

    fn create_key(&self, key: DataKey) -> BoxFuture<'static, Result<KeySlot>> {
        ready(self.create(key))
    }

    fn erase_key(&self, persistence_id: &str, erased_at: i64) -> BoxFuture<'static, Result<()>> {
        ready(self.erase(persistence_id, erased_at))
    }

    fn list_keys(&self, after: Option<String>, max: usize) -> BoxFuture<'static, Result<Vec<DataKey>>> {
        ready(self.keys_after(after, max))
    }

    fn list_erasures(&self, after: Option<String>, max: usize) -> BoxFuture<'static, Result<Vec<(String, i64)>>> {
        ready(self.erasures_after(after, max))
    }

    fn replace_key(&self, key: DataKey, expected_master: &str) -> BoxFuture<'static, Result<bool>> {
        ready(self.replace(key, expected_master))
    }
}
