//! Encryption settings (`ego.Encryption`) turned into the core's key ring: the built-in key
//! store (master keys from the application, wrapped data keys in a store's key vault), or a key
//! store written in Python (a KMS, Vault, ...; see `ego.encryption.KeyStoreProtocol`), which
//! runs on a thread of its own like a store written in Python.

use std::sync::Arc;

use ego_core::crypto::cipher::SealingKey;
use ego_core::crypto::keys::{KeyLookup, KeyRing, KeyStore};
use ego_core::crypto::vault_keys::{MasterKeys, VaultKeyStore};
use ego_core::error::{Error, Result};
use ego_core::future::BoxFuture;
use ego_core::store::KeyVault;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::errors::configuration;
use crate::pystore::PyStore;

/// Where the data keys of an engine come from, decided when the engine is made.
pub enum KeySource {
    /// The built-in key store over this vault; the master keys are read at start.
    Vault(Arc<dyn KeyVault>),
    /// A key store written in Python.
    Python(PyStore),
}

/// A master key given as bytes, or as a callable returning them (read when the engine starts).
fn master_bytes(py: Python<'_>, what: &str, value: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    let value = if value.is_callable() { value.call0()? } else { value.clone() };
    let bytes = value.cast::<PyBytes>().map_err(|_| configuration(py, format!("{what} must be bytes (or a callable returning bytes)")))?;
    Ok(bytes.as_bytes().to_vec())
}

/// The key ring of an engine, from its `ego.Encryption` settings.
pub fn key_ring(py: Python<'_>, settings: &Bound<'_, PyAny>, source: &KeySource) -> PyResult<Arc<KeyRing>> {
    let capacity: usize = settings.getattr("key_cache_size")?.extract()?;
    let store: Arc<dyn KeyStore> = match source {
        KeySource::Python(p) => Arc::new(p.clone()),
        KeySource::Vault(vault) => {
            let id: String = settings.getattr("master_key_id")?.extract()?;
            let master = settings.getattr("master_key")?;
            if master.is_none() {
                return Err(configuration(py, "the built-in key store needs a master_key (32 bytes, or a callable returning them)"));
            }
            let current = zeroize::Zeroizing::new(master_bytes(py, "master_key", &master)?);
            let mut previous = Vec::new();
            for item in settings.getattr("previous_master_keys")?.call_method0("items")?.try_iter()? {
                let (pid, value): (String, Bound<'_, PyAny>) = item?.extract()?;
                let bytes = master_bytes(py, &format!("previous master key {pid:?}"), &value)?;
                previous.push((pid, bytes));
            }
            let masters = MasterKeys::new((&id, &current), &previous).map_err(|e| crate::errors::to_pyerr(py, &e))?;
            for (_, bytes) in previous.iter_mut() {
                zeroize::Zeroize::zeroize(bytes);
            }
            Arc::new(VaultKeyStore::new(vault.clone(), masters))
        }
    };
    Ok(KeyRing::new(store, capacity))
}

fn s<'py>(py: Python<'py>, v: &str) -> Bound<'py, PyAny> {
    pyo3::types::PyString::new(py, v).into_any()
}

fn key_of(py: Python<'_>, pid: &str, key_id: &str, bytes: &Bound<'_, PyAny>) -> PyResult<Arc<SealingKey>> {
    let bytes = bytes
        .cast::<PyBytes>()
        .map_err(|_| crate::errors::contract_error(py, format!("the key store returned a key for {pid:?} that is not bytes")))?;
    SealingKey::new(key_id, bytes.as_bytes()).map(Arc::new).ok_or_else(|| {
        crate::errors::contract_error(
            py,
            format!("the key store returned a key for {pid:?} of {} bytes (AES-256 needs 32)", bytes.as_bytes().len()),
        )
    })
}

impl KeyStore for PyStore {
    fn key_for_write(&self, persistence_id: &str) -> BoxFuture<'static, Result<Arc<SealingKey>>> {
        let pid = persistence_id.to_string();
        let p2 = pid.clone();
        self.call(
            "get_or_create_key",
            move |py| Ok(vec![s(py, &pid)]),
            move |py, v| {
                let (key_id, bytes): (String, Bound<'_, PyAny>) = v.extract()?;
                key_of(py, &p2, &key_id, &bytes)
            },
        )
    }

    fn key_for_read(&self, persistence_id: &str, key_id: &str) -> BoxFuture<'static, Result<KeyLookup>> {
        let (pid, kid) = (persistence_id.to_string(), key_id.to_string());
        let (p2, k2) = (pid.clone(), kid.clone());
        let fut = self.call(
            "get_key",
            move |py| Ok(vec![s(py, &pid), s(py, &kid)]),
            move |py, v| if v.is_none() { Ok(KeyLookup::Missing) } else { key_of(py, &p2, &k2, &v).map(KeyLookup::Found) },
        );
        Box::pin(async move {
            match fut.await {
                Err(Error::EntityErased(_)) => Ok(KeyLookup::Erased),
                other => other,
            }
        })
    }

    fn erase(&self, persistence_id: &str) -> BoxFuture<'static, Result<()>> {
        let pid = persistence_id.to_string();
        self.call("erase_key", move |py| Ok(vec![s(py, &pid)]), |_, _| Ok(()))
    }
}
