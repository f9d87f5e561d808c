//! Byte layout of keys, shared by both stores. Every variable-length component except the last is
//! length-prefixed (LEB128 varint), so no two distinct key tuples encode to the same bytes, and
//! the encoding of a queue name is never a prefix of another queue's.

use crate::{CacheScope, Result, StateError};

/// Appends `n` as an unsigned LEB128 varint.
pub(crate) fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Reads a varint at the start of `bytes`; returns it and how many bytes it took.
pub(crate) fn get_varint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut n: u64 = 0;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        let bits = u64::from(b & 0x7f);
        if i == 9 && b > 1 {
            return None; // would overflow 64 bits
        }
        n |= bits << (7 * i);
        if b & 0x80 == 0 {
            return Some((n, i + 1));
        }
    }
    None
}

/// Appends `bytes` preceded by its length.
pub(crate) fn put_prefixed(out: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Cache key: plugin, team (`"all"` when none) and key.
pub(crate) fn cache_key(scope: &CacheScope, key: &str) -> Vec<u8> {
    let team = scope.team.map_or_else(|| "all".to_owned(), |t| t.to_string());
    let mut out = Vec::with_capacity(scope.plugin.len() + team.len() + key.len() + 4);
    put_prefixed(&mut out, scope.plugin.as_bytes());
    put_prefixed(&mut out, team.as_bytes());
    out.extend_from_slice(key.as_bytes());
    out
}

/// Storage key: plugin configuration and key.
pub(crate) fn storage_key(config: &str, key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(config.len() + key.len() + 2);
    put_prefixed(&mut out, config.as_bytes());
    out.extend_from_slice(key.as_bytes());
    out
}

/// The prefix all keys of `queue` share.
pub(crate) fn queue_prefix(queue: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(queue.len() + 18);
    put_prefixed(&mut out, queue.as_bytes());
    out
}

/// Queue key: queue, due time and id, big-endian so that keys sort earliest-first.
pub(crate) fn queue_key(queue: &str, due_ms: u64, id: u64) -> Vec<u8> {
    let mut out = queue_prefix(queue);
    out.extend_from_slice(&due_ms.to_be_bytes());
    out.extend_from_slice(&id.to_be_bytes());
    out
}

/// The due time and id at the end of a queue key.
pub(crate) fn queue_due_id(key: &[u8]) -> Result<(u64, u64)> {
    let tail = key
        .len()
        .checked_sub(16)
        .and_then(|start| key.get(start..))
        .ok_or_else(|| StateError::Corrupt("queue key shorter than 16 bytes".into()))?;
    let (due, id) = tail.split_at(8);
    Ok((be_u64(due)?, be_u64(id)?))
}

/// Decodes an 8-byte big-endian integer.
pub(crate) fn be_u64(bytes: &[u8]) -> Result<u64> {
    let arr: [u8; 8] = bytes.try_into().map_err(|_| StateError::Corrupt("expected an 8-byte integer".into()))?;
    Ok(u64::from_be_bytes(arr))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(plugin: &str, team: Option<i64>) -> CacheScope {
        CacheScope { plugin: plugin.into(), team }
    }

    #[test]
    fn varint_round_trips() {
        for n in [0, 1, 127, 128, 300, 16_383, 16_384, u64::from(u32::MAX), u64::MAX] {
            let mut buf = Vec::new();
            put_varint(&mut buf, n);
            buf.push(0xAA); // trailing byte must not be consumed
            assert_eq!(get_varint(&buf), Some((n, buf.len() - 1)), "{n}");
        }
        assert_eq!(get_varint(&[0x80]), None);
        assert_eq!(get_varint(&[0xff; 10]), None);
    }

    #[test]
    fn cache_keys_do_not_collide_across_component_boundaries() {
        let keys = [
            cache_key(&scope("a", None), "b/c"),
            cache_key(&scope("a/b", None), "c"),
            cache_key(&scope("a", Some(1)), "2x"),
            cache_key(&scope("a", Some(12)), "x"),
            cache_key(&scope("a", None), "x"),
            cache_key(&scope("a", Some(0)), "x"),
            cache_key(&scope("", None), "ax"),
            cache_key(&scope("a", Some(-1)), "x"),
            // Would collide if the plugin were not length-prefixed.
            cache_key(&scope("a", None), "\u{3}all"),
            cache_key(&scope("a\u{3}all", None), ""),
        ];
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn storage_keys_do_not_collide() {
        assert_ne!(storage_key("a", "b/c"), storage_key("a/b", "c"));
        assert_ne!(storage_key("ab", "c"), storage_key("a", "bc"));
        assert_ne!(storage_key("", "ab"), storage_key("a", "b"));
    }

    #[test]
    fn queue_keys_sort_by_due_then_id_and_prefixes_are_exclusive() {
        let a = queue_key("q", 5, 9);
        let b = queue_key("q", 6, 1);
        let c = queue_key("q", 6, 2);
        assert!(a < b && b < c);
        assert!(a.starts_with(&queue_prefix("q")));
        assert!(!queue_key("qq", 0, 0).starts_with(&queue_prefix("q")));
        assert!(!queue_key("q", 0, 0).starts_with(&queue_prefix("")));
        assert_eq!(queue_due_id(&c).unwrap(), (6, 2));
        assert!(queue_due_id(&[1, 2, 3]).is_err());
    }
}
