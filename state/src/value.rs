//! Cache values as both stores hold them: an [`Entry`] is a string or a list plus its expiry, and
//! this module owns its byte encoding (`8-byte big-endian expiry ms (0 = none)`, one type byte,
//! payload; a list payload is its elements, each preceded by its varint length, head first).

use crate::keys::{be_u64, get_varint, put_prefixed};
use crate::{Result, StateError};

const TYPE_STRING: u8 = 0;
const TYPE_LIST: u8 = 1;
const HEADER_LEN: usize = 9;

/// A cache value and when it expires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    /// Expiry in ms since the epoch; 0 means never.
    pub expires_at_ms: u64,
    /// The value.
    pub value: Value,
}

/// The two kinds of cache value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Value {
    /// A plain string (`SET`, `INCR`).
    Str(String),
    /// A list (`LPUSH` and friends); never empty while stored.
    List(PackedList),
}

impl Entry {
    /// A string entry.
    pub fn string(value: String, expires_at_ms: u64) -> Self {
        Self { expires_at_ms, value: Value::Str(value) }
    }

    /// Whether the entry is expired at `now_ms`.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        is_expired(self.expires_at_ms, now_ms)
    }

    /// The string, or [`StateError::WrongType`] for a list.
    pub fn as_str(&self) -> Result<&str> {
        match &self.value {
            Value::Str(s) => Ok(s),
            Value::List(_) => Err(StateError::WrongType),
        }
    }

    /// The list, or [`StateError::WrongType`] for a string.
    pub fn as_list_mut(&mut self) -> Result<&mut PackedList> {
        match &mut self.value {
            Value::List(l) => Ok(l),
            Value::Str(_) => Err(StateError::WrongType),
        }
    }

    /// The list, or [`StateError::WrongType`] for a string.
    pub fn as_list(&self) -> Result<&PackedList> {
        match &self.value {
            Value::List(l) => Ok(l),
            Value::Str(_) => Err(StateError::WrongType),
        }
    }

    /// The stored form.
    pub fn encode(&self) -> Vec<u8> {
        let (kind, payload) = match &self.value {
            Value::Str(s) => (TYPE_STRING, s.as_bytes()),
            Value::List(l) => (TYPE_LIST, l.bytes.as_slice()),
        };
        let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
        out.extend_from_slice(&self.expires_at_ms.to_be_bytes());
        out.push(kind);
        out.extend_from_slice(payload);
        out
    }

    /// Decodes the stored form.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let expires_at_ms = stored_expiry(bytes).ok_or_else(|| StateError::Corrupt("cache value shorter than its header".into()))?;
        let payload = &bytes[HEADER_LEN..];
        let value = match bytes[8] {
            TYPE_STRING => Value::Str(utf8(payload.to_vec())?),
            TYPE_LIST => Value::List(PackedList::from_bytes(payload.to_vec())?),
            other => {
                return Err(StateError::Corrupt(format!("unknown cache value type {other}")));
            }
        };
        Ok(Self { expires_at_ms, value })
    }
}

/// Whether an expiry (0 = never) has passed at `now_ms`.
pub(crate) fn is_expired(expires_at_ms: u64, now_ms: u64) -> bool {
    expires_at_ms != 0 && now_ms >= expires_at_ms
}

/// The expiry recorded in a stored value, without decoding the rest; `None` when too short.
pub(crate) fn stored_expiry(bytes: &[u8]) -> Option<u64> {
    bytes.get(..HEADER_LEN).and_then(|h| be_u64(&h[..8]).ok())
}

/// The expiry for a TTL given now: `None` and `Some(0)` mean no expiry (0).
pub(crate) fn expiry_for(now_ms: u64, ttl_seconds: Option<u64>) -> u64 {
    match ttl_seconds {
        None | Some(0) => 0,
        Some(secs) => now_ms.saturating_add(secs.saturating_mul(1000)).max(1),
    }
}

fn utf8(bytes: Vec<u8>) -> Result<String> {
    String::from_utf8(bytes).map_err(|_| StateError::Corrupt("stored string is not UTF-8".into()))
}

/// A list kept in its encoded form (varint length + bytes per element, head first), so that a
/// push is a byte copy rather than a decode and re-encode of every element.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct PackedList {
    bytes: Vec<u8>,
    len: usize,
}

impl PackedList {
    /// Checks the element framing of `bytes` and counts the elements.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        let mut pos = 0;
        let mut len = 0;
        while pos < bytes.len() {
            pos = next_element(&bytes, pos).ok_or_else(|| StateError::Corrupt("malformed list element".into()))?.1;
            len += 1;
        }
        Ok(Self { bytes, len })
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the list has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The elements, head first.
    fn elements(&self) -> impl Iterator<Item = &[u8]> {
        let mut pos = 0;
        std::iter::from_fn(move || {
            let (element, next) = next_element(&self.bytes, pos)?;
            pos = next;
            Some(element)
        })
    }

    /// Pushes each value at the head in turn (the last value ends up first).
    pub fn push_front(&mut self, values: &[String]) {
        let mut bytes = Vec::with_capacity(self.bytes.len() + values.iter().map(|v| v.len() + 2).sum::<usize>());
        for value in values.iter().rev() {
            put_prefixed(&mut bytes, value.as_bytes());
        }
        bytes.extend_from_slice(&self.bytes);
        self.bytes = bytes;
        self.len += values.len();
    }

    /// Elements `start..=stop` with Redis `LRANGE` index rules.
    pub fn range(&self, start: i64, stop: i64) -> Result<Vec<String>> {
        let Some((from, to)) = redis_range(self.len, start, stop) else {
            return Ok(Vec::new());
        };
        self.elements().skip(from).take(to - from + 1).map(to_string).collect()
    }

    /// Removes and returns up to `count` elements from the head.
    pub fn pop_front(&mut self, count: u64) -> Result<Vec<String>> {
        let n = usize::try_from(count).unwrap_or(usize::MAX).min(self.len);
        let mut popped = Vec::with_capacity(n);
        let mut pos = 0;
        for _ in 0..n {
            let (element, next) = next_element(&self.bytes, pos).ok_or_else(|| StateError::Corrupt("malformed list element".into()))?;
            popped.push(to_string(element)?);
            pos = next;
        }
        self.bytes.drain(..pos);
        self.len -= n;
        Ok(popped)
    }

    /// Removes elements equal to `value`: the first `count` from the head when positive, the
    /// last `-count` from the tail when negative, all when 0. Returns how many were removed.
    pub fn remove(&mut self, count: i64, value: &str) -> u64 {
        let target = value.as_bytes();
        let limit = if count == 0 { usize::MAX } else { usize::try_from(count.unsigned_abs()).unwrap_or(usize::MAX) };
        let mut elements: Vec<&[u8]> = self.elements().collect();
        let before = elements.len();
        if count < 0 {
            elements.reverse();
        }
        let mut removed = 0;
        elements.retain(|e| {
            let hit = removed < limit && *e == target;
            removed += usize::from(hit);
            !hit
        });
        if count < 0 {
            elements.reverse();
        }
        if removed > 0 {
            let rebuilt = Self::from_elements(&elements, before - removed);
            *self = rebuilt;
        }
        removed as u64
    }

    fn from_elements(elements: &[&[u8]], len: usize) -> Self {
        let mut bytes = Vec::with_capacity(elements.iter().map(|e| e.len() + 2).sum());
        for element in elements {
            put_prefixed(&mut bytes, element);
        }
        Self { bytes, len }
    }
}

/// The element starting at `pos` and where the next one starts.
fn next_element(bytes: &[u8], pos: usize) -> Option<(&[u8], usize)> {
    let (len, used) = get_varint(bytes.get(pos..)?)?;
    let start = pos + used;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    Some((bytes.get(start..end)?, end))
}

fn to_string(element: &[u8]) -> Result<String> {
    utf8(element.to_vec())
}

/// Redis `LRANGE` index rules: negative indexes count from the end, `start` is clamped to 0,
/// `stop` to the last element; `None` when the range is empty.
pub(crate) fn redis_range(len: usize, start: i64, stop: i64) -> Option<(usize, usize)> {
    let len = i64::try_from(len).unwrap_or(i64::MAX);
    let start = if start < 0 { start.saturating_add(len).max(0) } else { start };
    let stop = if stop < 0 { stop.saturating_add(len) } else { stop };
    if start > stop || start >= len {
        return None;
    }
    let stop = stop.min(len - 1);
    Some((usize::try_from(start).ok()?, usize::try_from(stop).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(values: &[&str]) -> PackedList {
        let mut l = PackedList::default();
        let owned: Vec<String> = values.iter().rev().map(|s| (*s).to_owned()).collect();
        l.push_front(&owned);
        l
    }

    fn all(l: &PackedList) -> Vec<String> {
        l.range(0, -1).unwrap()
    }

    #[test]
    fn push_front_puts_last_value_first() {
        let mut l = PackedList::default();
        l.push_front(&["a".into(), "b".into()]);
        assert_eq!(all(&l), ["b", "a"]);
        l.push_front(&["c".into()]);
        assert_eq!(all(&l), ["c", "b", "a"]);
        assert_eq!(l.len(), 3);
    }

    #[test]
    fn lrange_index_rules() {
        assert_eq!(redis_range(5, 0, -1), Some((0, 4)));
        assert_eq!(redis_range(5, -2, -1), Some((3, 4)));
        assert_eq!(redis_range(5, -100, 2), Some((0, 2)));
        assert_eq!(redis_range(5, 1, 100), Some((1, 4)));
        assert_eq!(redis_range(5, 3, 1), None);
        assert_eq!(redis_range(5, 5, 10), None);
        assert_eq!(redis_range(5, 0, -6), None);
        assert_eq!(redis_range(5, -1, -1), Some((4, 4)));
        assert_eq!(redis_range(0, 0, -1), None);
        assert_eq!(redis_range(3, i64::MIN, i64::MAX), Some((0, 2)));
        let l = list(&["a", "b", "c", "d", "e"]);
        assert_eq!(l.range(-3, -2).unwrap(), ["c", "d"]);
        assert_eq!(l.range(1, 1).unwrap(), ["b"]);
    }

    #[test]
    fn pop_front_takes_from_head() {
        let mut l = list(&["a", "b", "c"]);
        assert_eq!(l.pop_front(2).unwrap(), ["a", "b"]);
        assert_eq!(all(&l), ["c"]);
        assert_eq!(l.pop_front(10).unwrap(), ["c"]);
        assert!(l.is_empty());
        assert!(l.pop_front(1).unwrap().is_empty());
    }

    #[test]
    fn remove_follows_lrem_count_rules() {
        let mut l = list(&["x", "a", "x", "b", "x"]);
        assert_eq!(l.remove(1, "x"), 1);
        assert_eq!(all(&l), ["a", "x", "b", "x"]);
        let mut l = list(&["x", "a", "x", "b", "x"]);
        assert_eq!(l.remove(-2, "x"), 2);
        assert_eq!(all(&l), ["x", "a", "b"]);
        let mut l = list(&["x", "a", "x"]);
        assert_eq!(l.remove(0, "x"), 2);
        assert_eq!(all(&l), ["a"]);
        assert_eq!(l.len(), 1);
        assert_eq!(l.remove(0, "zzz"), 0);
        let mut l = list(&["x", "x"]);
        assert_eq!(l.remove(i64::MIN, "x"), 2);
        assert!(l.is_empty());
    }

    #[test]
    fn entries_round_trip_and_reject_garbage() {
        let s = Entry::string("héllo".into(), 42);
        assert_eq!(Entry::decode(&s.encode()).unwrap(), s);
        let l = Entry { expires_at_ms: 0, value: Value::List(list(&["", "a", &"z".repeat(300)])) };
        assert_eq!(Entry::decode(&l.encode()).unwrap(), l);
        assert!(Entry::decode(&[0; 8]).is_err());
        assert!(Entry::decode(&[0, 0, 0, 0, 0, 0, 0, 0, 9]).is_err());
        assert!(Entry::decode(&[0, 0, 0, 0, 0, 0, 0, 0, TYPE_LIST, 5, b'a']).is_err());
        assert!(Entry::decode(&[0, 0, 0, 0, 0, 0, 0, 0, TYPE_STRING, 0xff]).is_err());
        assert_eq!(stored_expiry(&s.encode()), Some(42));
    }

    #[test]
    fn expiry_rules() {
        assert_eq!(expiry_for(1_000, None), 0);
        assert_eq!(expiry_for(1_000, Some(0)), 0);
        assert_eq!(expiry_for(1_000, Some(2)), 3_000);
        assert_eq!(expiry_for(u64::MAX - 5, Some(u64::MAX)), u64::MAX);
        assert!(!is_expired(0, u64::MAX));
        assert!(!is_expired(3_000, 2_999));
        assert!(is_expired(3_000, 3_000));
    }
}
