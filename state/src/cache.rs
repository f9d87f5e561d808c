//! The cache commands (`GET`, `SET`, `INCR`, `EXPIRE`, `LPUSH`, `LRANGE`, `LLEN`, `LPOP`, `LREM`)
//! written once against [`CacheSlots`], so both stores share one set of Redis semantics and only
//! differ in where an [`Entry`] lives and how a key is locked.

use crate::value::{Entry, PackedList, Value, expiry_for};
use crate::{Result, StateError};

/// Where a store keeps its cache entries.
pub(crate) trait CacheSlots {
    /// Now, by the store's clock.
    fn now_ms(&self) -> u64;
    /// The entry under `key` as stored, possibly expired.
    fn load(&self, key: &[u8]) -> Result<Option<Entry>>;
    /// Runs `f` on the entry under `key` (possibly expired) with no other update of that key in
    /// between. `f` returns its result and whether the slot changed; a changed slot is stored
    /// (`None` deletes the key). When `f` fails, nothing is stored.
    fn update<R>(&self, key: &[u8], f: impl FnOnce(&mut Option<Entry>) -> Result<(R, bool)>) -> Result<R>;
    /// Stores `entry` under `key` whatever was there (`SET`), with no other update of that key
    /// in between. A store that can write without reading first says so here.
    fn replace(&self, key: &[u8], entry: Entry) -> Result<()> {
        self.update(key, |slot| {
            *slot = Some(entry);
            Ok(((), true))
        })
    }
}

/// Loads `key`, treating an expired entry as missing.
fn live<S: CacheSlots>(s: &S, key: &[u8]) -> Result<Option<Entry>> {
    let now = s.now_ms();
    Ok(s.load(key)?.filter(|e| !e.is_expired(now)))
}

/// Like [`CacheSlots::update`], but `f` sees an expired entry as `None`.
fn update_live<S: CacheSlots, R>(s: &S, key: &[u8], f: impl FnOnce(&mut Option<Entry>, u64) -> Result<(R, bool)>) -> Result<R> {
    s.update(key, |slot| {
        let now = s.now_ms();
        let expired = slot.as_ref().is_some_and(|e| e.is_expired(now));
        if expired {
            *slot = None;
        }
        let (result, changed) = f(slot, now)?;
        Ok((result, changed || expired))
    })
}

pub(crate) fn get<S: CacheSlots>(s: &S, key: &[u8]) -> Result<Option<String>> {
    live(s, key)?.map(|e| e.as_str().map(str::to_owned)).transpose()
}

/// `SET` replaces whatever was under `key`, expired or not, so the old entry is not read.
pub(crate) fn set<S: CacheSlots>(s: &S, key: &[u8], value: &str, ttl: Option<u64>) -> Result<()> {
    s.replace(key, Entry::string(value.to_owned(), expiry_for(s.now_ms(), ttl)))
}

pub(crate) fn incr<S: CacheSlots>(s: &S, key: &[u8]) -> Result<i64> {
    update_live(s, key, |slot, _| {
        let (current, expires_at_ms) = match slot {
            None => (0, 0),
            Some(e) => (parse_integer(e.as_str()?)?, e.expires_at_ms),
        };
        let next = current.checked_add(1).ok_or(StateError::NotAnInteger)?;
        *slot = Some(Entry::string(next.to_string(), expires_at_ms));
        Ok((next, true))
    })
}

/// Redis's integer rules (`string2ll`): `0`, or an optional `-` and digits without a leading zero,
/// within 64 bits. `str::parse` alone would also take `+1`, `01` and `-0`, which Redis refuses.
fn parse_integer(s: &str) -> Result<i64> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    let canonical = s == "0" || digits.bytes().next().is_some_and(|b| (b'1'..=b'9').contains(&b));
    if !canonical || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(StateError::NotAnInteger);
    }
    s.parse().map_err(|_| StateError::NotAnInteger)
}

pub(crate) fn expire<S: CacheSlots>(s: &S, key: &[u8], ttl: u64) -> Result<bool> {
    update_live(s, key, |slot, now| match slot {
        None => Ok((false, false)),
        Some(_) if ttl == 0 => {
            *slot = None;
            Ok((true, true))
        }
        Some(e) => {
            e.expires_at_ms = expiry_for(now, Some(ttl));
            Ok((true, true))
        }
    })
}

pub(crate) fn lpush<S: CacheSlots>(s: &S, key: &[u8], values: &[String]) -> Result<u64> {
    update_live(s, key, |slot, _| match slot {
        None if values.is_empty() => Ok((0, false)),
        None => {
            let mut list = PackedList::default();
            list.push_front(values);
            let len = list.len() as u64;
            *slot = Some(Entry { expires_at_ms: 0, value: Value::List(list) });
            Ok((len, true))
        }
        Some(e) => {
            let list = e.as_list_mut()?;
            list.push_front(values);
            Ok((list.len() as u64, !values.is_empty()))
        }
    })
}

pub(crate) fn lrange<S: CacheSlots>(s: &S, key: &[u8], start: i64, stop: i64) -> Result<Vec<String>> {
    match live(s, key)? {
        None => Ok(Vec::new()),
        Some(e) => e.as_list()?.range(start, stop),
    }
}

pub(crate) fn llen<S: CacheSlots>(s: &S, key: &[u8]) -> Result<u64> {
    match live(s, key)? {
        None => Ok(0),
        Some(e) => Ok(e.as_list()?.len() as u64),
    }
}

pub(crate) fn lpop<S: CacheSlots>(s: &S, key: &[u8], count: u64) -> Result<Vec<String>> {
    update_live(s, key, |slot, _| {
        let Some(e) = slot else {
            return Ok((Vec::new(), false));
        };
        let list = e.as_list_mut()?;
        let popped = list.pop_front(count)?;
        let changed = !popped.is_empty();
        if list.is_empty() {
            *slot = None;
        }
        Ok((popped, changed))
    })
}

pub(crate) fn lrem<S: CacheSlots>(s: &S, key: &[u8], count: i64, value: &str) -> Result<u64> {
    update_live(s, key, |slot, _| {
        let Some(e) = slot else { return Ok((0, false)) };
        let list = e.as_list_mut()?;
        let removed = list.remove(count, value);
        if list.is_empty() {
            *slot = None;
        }
        Ok((removed, removed > 0))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::{Cell, RefCell};
    use std::collections::HashMap;

    /// A single-threaded slot map that records how many writes happened.
    #[derive(Default)]
    struct Slots {
        now: Cell<u64>,
        map: RefCell<HashMap<Vec<u8>, Entry>>,
        writes: Cell<usize>,
    }

    impl CacheSlots for Slots {
        fn now_ms(&self) -> u64 {
            self.now.get()
        }
        fn load(&self, key: &[u8]) -> Result<Option<Entry>> {
            Ok(self.map.borrow().get(key).cloned())
        }
        fn update<R>(&self, key: &[u8], f: impl FnOnce(&mut Option<Entry>) -> Result<(R, bool)>) -> Result<R> {
            let mut slot = self.load(key)?;
            let (result, changed) = f(&mut slot)?;
            if changed {
                self.writes.set(self.writes.get() + 1);
                match slot {
                    Some(e) => self.map.borrow_mut().insert(key.to_vec(), e),
                    None => self.map.borrow_mut().remove(key),
                };
            }
            Ok(result)
        }
    }

    #[test]
    fn parse_integer_follows_redis_where_parse_differs() {
        assert_eq!(parse_integer("-12").unwrap(), -12);
        assert!(parse_integer("+1").is_err());
        assert!(parse_integer(" 1").is_err());
        assert!(parse_integer("1 ").is_err());
        assert!(parse_integer("1.0").is_err());
        assert!(parse_integer("").is_err());
        assert!(parse_integer("9223372036854775808").is_err());
        assert_eq!(parse_integer("0").unwrap(), 0);
        assert_eq!(parse_integer("-9223372036854775808").unwrap(), i64::MIN);
        for refused in ["01", "-0", "00", "-01", "-", "--1", "1-"] {
            assert!(parse_integer(refused).is_err(), "{refused}");
        }
    }

    #[test]
    fn reads_and_no_op_updates_do_not_write() {
        let s = Slots::default();
        assert_eq!(lpop(&s, b"k", 3).unwrap(), Vec::<String>::new());
        assert_eq!(lrem(&s, b"k", 0, "x").unwrap(), 0);
        assert!(!expire(&s, b"k", 5).unwrap());
        assert_eq!(lpush(&s, b"k", &[]).unwrap(), 0);
        assert_eq!(s.writes.get(), 0);
        assert!(s.map.borrow().is_empty());
    }

    #[test]
    fn failed_updates_leave_the_value_alone() {
        let s = Slots::default();
        set(&s, b"k", "abc", None).unwrap();
        assert!(matches!(incr(&s, b"k"), Err(StateError::NotAnInteger)));
        assert!(matches!(lpush(&s, b"k", &["x".into()]), Err(StateError::WrongType)));
        assert_eq!(get(&s, b"k").unwrap().as_deref(), Some("abc"));
        assert_eq!(s.writes.get(), 1);
    }

    #[test]
    fn touching_an_expired_entry_reclaims_it() {
        let s = Slots::default();
        set(&s, b"k", "v", Some(1)).unwrap();
        s.now.set(1_000);
        assert!(!expire(&s, b"k", 5).unwrap());
        assert!(s.map.borrow().is_empty());
    }
}
