//! Encryption at rest, with crypto-shredding.
//!
//! - [`cipher`]: AES-256-GCM sealing of one record, bound to its place (persistence id,
//!   sequence number or version, kind of record, key id, type URL) by associated data.
//! - [`keys`]: the key-store contract (a data key per entity; erasure) and the cache in front
//!   of it ([`keys::KeyRing`]).
//! - [`vault_keys`]: the built-in key store: data keys wrapped by a master key, kept in a
//!   [`crate::store::KeyVault`] (the same RocksDB directory or PostgreSQL database as the data).
//! - [`layer`]: store wrappers that encrypt what they write and decrypt what they read, so every
//!   store (the Python-written ones included) gets encryption unchanged, and readers get a
//!   tombstone for the records of an erased entity.

pub mod cipher;
pub mod keys;
pub mod layer;
pub mod vault_keys;
