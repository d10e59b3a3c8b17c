//! Entity ids and shards.
//!
//! An entity id (persistence id) is 1 to [`MAX_ID_BYTES`] bytes of UTF-8 with no control
//! characters. Anything else printable is allowed (`account:42`, `a.b/c`), which is wider than
//! the Go library (alphanumerics, `-` and `_`); the stores key on the raw bytes and use `\0` as
//! a separator, which the rule excludes.

use crate::error::{Error, Result};

/// Longest entity id, in UTF-8 bytes.
pub const MAX_ID_BYTES: usize = 255;

/// Checks an entity id; the error says what is wrong with it.
pub fn validate_id(id: &str) -> Result<()> {
    let reason = if id.is_empty() {
        "it is empty"
    } else if id.len() > MAX_ID_BYTES {
        "it is longer than 255 bytes"
    } else if !id.bytes().all(|b| (0x20..0x7f).contains(&b)) && id.chars().any(char::is_control) {
        // (Printable ASCII, the usual id, needs no decoding.)
        "it contains a control character"
    } else {
        return Ok(());
    };
    Err(Error::InvalidEntityId { id: truncate(id), reason })
}

fn truncate(id: &str) -> String {
    if id.len() <= 64 {
        return id.to_string();
    }
    let mut end = 64;
    while !id.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &id[..end])
}

/// The shard of a persistence id: xxh3-64 of its bytes modulo `shards`. Stable across
/// processes, machines and releases (it is persisted with every event).
pub fn shard_of(id: &str, shards: u32) -> u32 {
    if shards <= 1 {
        return 0;
    }
    (xxhash_rust::xxh3::xxh3_64(id.as_bytes()) % u64::from(shards)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_printable_ids() {
        for id in ["a", "account-1", "account:42", "a.b/c", "ünïcödé", &"x".repeat(255)] {
            validate_id(id).unwrap();
        }
    }

    #[test]
    fn rejects_bad_ids() {
        for (id, why) in
            [("", "empty"), (&"x".repeat(256) as &str, "longer"), ("a\0b", "control"), ("a\nb", "control"), ("tab\there", "control")]
        {
            let err = validate_id(id).unwrap_err();
            assert!(err.to_string().contains(why), "{err}");
        }
    }

    #[test]
    fn shard_is_stable_and_in_range() {
        assert_eq!(shard_of("account-1", 1), 0);
        let s = shard_of("account-1", 16);
        assert!(s < 16);
        assert_eq!(s, shard_of("account-1", 16));
        // Pinned: the shard is persisted, so the hash must never change.
        assert_eq!(shard_of("account-1", 1024), (xxhash_rust::xxh3::xxh3_64(b"account-1") % 1024) as u32);
    }
}
