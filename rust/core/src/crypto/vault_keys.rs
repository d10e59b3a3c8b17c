//! The built-in key store: envelope encryption. Each entity's data key is random, wrapped
//! (AES-256-GCM) by a master key the application supplies, and kept in a [`KeyVault`] beside the
//! data. Rotating the master key re-wraps the data keys; no event is rewritten.

use std::collections::HashMap;
use std::sync::Arc;

use crate::clock::now_nanos;
use crate::crypto::cipher::{Place, Record, SealingKey};
use crate::crypto::keys::{KeyLookup, KeyStore};
use crate::envelope::DataKey;
use crate::error::{Error, Result};
use crate::future::BoxFuture;
use crate::store::{KeySlot, KeyVault};

/// Data keys re-wrapped per page during a rotation.
const REWRAP_PAGE: usize = 500;

/// The master keys: the current one wraps new keys; the others (being retired) still unwrap.
pub struct MasterKeys {
    current: Arc<SealingKey>,
    all: HashMap<String, Arc<SealingKey>>,
}

impl MasterKeys {
    /// `current` and `previous` as `(id, 32 bytes)`.
    pub fn new(current: (&str, &[u8]), previous: &[(String, Vec<u8>)]) -> Result<Self> {
        let make = |id: &str, bytes: &[u8]| {
            SealingKey::new(id, bytes)
                .map(Arc::new)
                .ok_or_else(|| Error::Configuration(format!("master key {id:?} must be 32 bytes (AES-256), got {}", bytes.len()).into()))
        };
        if current.0.is_empty() {
            return Err(Error::Configuration("a master key needs a non-empty id".into()));
        }
        let current_key = make(current.0, current.1)?;
        let mut all = HashMap::new();
        for (id, bytes) in previous {
            if id == current.0 {
                return Err(Error::Configuration(format!("master key id {id:?} is both current and previous").into()));
            }
            all.insert(id.clone(), make(id, bytes)?);
        }
        all.insert(current.0.to_string(), current_key.clone());
        Ok(MasterKeys { current: current_key, all })
    }
}

/// The built-in key store.
pub struct VaultKeyStore {
    vault: Arc<dyn KeyVault>,
    masters: Arc<MasterKeys>,
}

impl VaultKeyStore {
    pub fn new(vault: Arc<dyn KeyVault>, masters: MasterKeys) -> Self {
        VaultKeyStore { vault, masters: Arc::new(masters) }
    }
}

/// The plain bytes of a wrapped data key.
fn open_data_key(masters: &MasterKeys, dk: &DataKey) -> Result<zeroize::Zeroizing<Vec<u8>>> {
    let master = masters.all.get(&dk.master_key_id).ok_or_else(|| {
        Error::MasterKey(
            format!(
                "the data key of entity {:?} is wrapped by master key {:?}, which this engine was not given",
                dk.persistence_id, dk.master_key_id
            )
            .into(),
        )
    })?;
    // The data key's own id goes where a record's type URL goes: the wrapping binds both.
    let at = Place { record: Record::DataKey, persistence_id: &dk.persistence_id, sequence_number: 0, type_url: &dk.key_id };
    master.open(&at, &dk.wrapped_key).map(zeroize::Zeroizing::new).map_err(|_| {
        Error::MasterKey(
            format!(
                "master key {:?} cannot unwrap the data key of entity {:?} (is it the right master key?)",
                dk.master_key_id, dk.persistence_id
            )
            .into(),
        )
    })
}

/// A wrapped data key, ready to use.
fn unwrap(masters: &MasterKeys, dk: &DataKey) -> Result<Arc<SealingKey>> {
    let bytes = open_data_key(masters, dk)?;
    SealingKey::new(dk.key_id.as_str(), &bytes)
        .map(Arc::new)
        .ok_or_else(|| Error::MasterKey(format!("the data key of entity {:?} has a bad length", dk.persistence_id).into()))
}

fn wrap(master: &SealingKey, persistence_id: &str, key_id: &str, bytes: &[u8], created_at: i64) -> DataKey {
    let at = Place { record: Record::DataKey, persistence_id, sequence_number: 0, type_url: key_id };
    DataKey {
        persistence_id: persistence_id.to_string(),
        key_id: key_id.to_string(),
        master_key_id: master.id().to_string(),
        wrapped_key: master.seal(&at, bytes),
        created_at,
    }
}

/// A fresh data key id: 16 random bytes, hex.
fn new_key_id() -> String {
    SealingKey::random_bytes()[..16].iter().map(|b| format!("{b:02x}")).collect()
}

impl KeyStore for VaultKeyStore {
    fn key_for_write(&self, persistence_id: &str) -> BoxFuture<'static, Result<Arc<SealingKey>>> {
        let (vault, masters, pid) = (self.vault.clone(), self.masters.clone(), persistence_id.to_string());
        Box::pin(async move {
            let slot = match vault.read_key(&pid).await? {
                KeySlot::Empty => {
                    let bytes = SealingKey::random_bytes();
                    let key = wrap(&masters.current, &pid, &new_key_id(), &bytes, now_nanos());
                    vault.create_key(key).await?
                }
                other => other,
            };
            match slot {
                KeySlot::Key(dk) => unwrap(&masters, &dk),
                KeySlot::Erased(_) => Err(Error::EntityErased(pid.into())),
                KeySlot::Empty => Err(Error::internal(format!("the key vault did not keep the key created for {pid:?}"))),
            }
        })
    }

    fn key_for_read(&self, persistence_id: &str, key_id: &str) -> BoxFuture<'static, Result<KeyLookup>> {
        let (vault, masters) = (self.vault.clone(), self.masters.clone());
        let (pid, kid) = (persistence_id.to_string(), key_id.to_string());
        Box::pin(async move {
            Ok(match vault.read_key(&pid).await? {
                KeySlot::Key(dk) if dk.key_id == kid => KeyLookup::Found(unwrap(&masters, &dk)?),
                KeySlot::Key(_) | KeySlot::Empty => KeyLookup::Missing,
                KeySlot::Erased(_) => KeyLookup::Erased,
            })
        })
    }

    fn erase(&self, persistence_id: &str) -> BoxFuture<'static, Result<()>> {
        self.vault.erase_key(persistence_id, now_nanos())
    }

    fn rewrap(&self) -> BoxFuture<'static, Result<u64>> {
        let (vault, masters) = (self.vault.clone(), self.masters.clone());
        Box::pin(async move {
            let current = masters.current.id().to_string();
            let mut after = None;
            let mut count = 0;
            loop {
                let page = vault.list_keys(after.clone(), REWRAP_PAGE).await?;
                let Some(last) = page.last() else { break };
                after = Some(last.persistence_id.clone());
                for dk in page.iter().filter(|dk| dk.master_key_id != current) {
                    let bytes = open_data_key(&masters, dk)?;
                    let fresh = wrap(&masters.current, &dk.persistence_id, &dk.key_id, &bytes, dk.created_at);
                    if vault.replace_key(fresh, &dk.master_key_id).await? {
                        count += 1;
                    }
                }
                if page.len() < REWRAP_PAGE {
                    break;
                }
            }
            Ok(count)
        })
    }
}
