//! A JSON object read member by member, each key and value kept as the text it was written in
//! (serde_json's `RawValue`), for the places that reshape an event without reading all of it:
//! an ingestion envelope merged with its `data`, the `ProcessedPluginEvent` that `onEvent` and
//! `exportEvents` receive, the events of an export batch.
//!
//! serde_json's `Value` cannot hold a lone surrogate escape (`"\ud83d"`: text cut inside an
//! emoji), which JavaScript's `JSON.parse` reads and a plugin's output can hold. Reading into a
//! `Value` failed on such an event, and the event lost its `onEvent` and export without a word.
//! Kept as text, what is not looked at passes through exactly as it came.

use std::borrow::Cow;
use std::collections::HashMap;

use serde::de::{Deserializer as _, Error as _, MapAccess, Visitor};
use serde_json::value::RawValue;

/// An object's members in the order written, repeated keys included (see [`Members::text`]).
#[derive(Debug)]
pub struct Members<'a> {
    list: Vec<(&'a RawValue, &'a RawValue)>,
}

impl<'a> Members<'a> {
    /// Reads `text`, which must hold one JSON object.
    pub fn parse(text: &'a str) -> Result<Members<'a>, serde_json::Error> {
        let mut de = serde_json::Deserializer::from_str(text);
        let list = de.deserialize_map(ListVisitor)?;
        de.end()?;
        Ok(Members { list })
    }

    /// The value of `key`, as written; the last one when the key repeats (as in `JSON.parse`).
    pub fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.list.iter().rev().find(|(k, _)| key_bytes(k) == key.as_bytes()).map(|&(_, v)| v)
    }

    /// Removes every member named `key`.
    pub fn remove(&mut self, key: &str) {
        self.list.retain(|(k, _)| key_bytes(k) != key.as_bytes());
    }

    /// Sets every member named `key` to `value` (the key must be present to change anything).
    pub fn replace(&mut self, key: &str, value: &'a RawValue) {
        for (k, v) in &mut self.list {
            if key_bytes(k) == key.as_bytes() {
                *v = value;
            }
        }
    }

    /// Appends `other`'s members after these.
    pub fn extend(&mut self, other: Members<'a>) {
        self.list.extend(other.list);
    }

    /// The object as JSON text. A key written more than once is written once, in its first
    /// place, with its last value: serde_json's `Value` (with `preserve_order`) did the same, and
    /// `JSON.parse` keeps the last value too.
    pub fn text(&self) -> String {
        let mut last: HashMap<Cow<'a, [u8]>, usize> = HashMap::with_capacity(self.list.len());
        for (i, (k, _)) in self.list.iter().enumerate() {
            last.insert(key_bytes(k), i);
        }
        let mut out = String::with_capacity(self.list.iter().map(|(k, v)| k.get().len() + v.get().len() + 2).sum::<usize>() + 2);
        out.push('{');
        for (k, _) in &self.list {
            // A key's first place takes it out of `last`: its later places write nothing.
            let Some(i) = last.remove(&key_bytes(k)) else { continue };
            if out.len() > 1 {
                out.push(',');
            }
            out.push_str(k.get());
            out.push(':');
            out.push_str(self.list[i].1.get());
        }
        out.push('}');
        out
    }
}

/// `null` as a raw value.
pub fn null() -> &'static RawValue {
    serde_json::from_str("null").expect("null is JSON")
}

/// `{}` as a raw value.
pub fn empty_object() -> &'static RawValue {
    serde_json::from_str("{}").expect("{} is JSON")
}

/// What kind of JSON value `raw` is, worded as [`super::json_kind`] words it.
pub fn kind(raw: &RawValue) -> &'static str {
    match raw.get().as_bytes().first() {
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

/// A key's characters (UTF-8, a lone surrogate in the WTF-8 form serde_json gives it), read from
/// the key as written: borrowed when it has no escape.
fn key_bytes(key: &RawValue) -> Cow<'_, [u8]> {
    let text = key.get();
    let inner = &text[1..text.len() - 1];
    if !inner.contains('\\') {
        return Cow::Borrowed(inner.as_bytes());
    }
    struct Bytes;
    impl Visitor<'_> for Bytes {
        type Value = Vec<u8>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a string")
        }
        fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }
    }
    // Already read once as a key: it decodes.
    Cow::Owned(serde_json::Deserializer::from_str(text).deserialize_bytes(Bytes).unwrap_or_else(|_| text.as_bytes().to_vec()))
}

/// The members of a map, keys and values as written.
struct ListVisitor;

impl<'de> Visitor<'de> for ListVisitor {
    type Value = Vec<(&'de RawValue, &'de RawValue)>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut list = Vec::with_capacity(map.size_hint().unwrap_or(8));
        while let Some(member) = map.next_entry::<&RawValue, &RawValue>()? {
            list.push(member);
        }
        Ok(list)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
        Err(A::Error::custom("expected a JSON object, got an array"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lone_surrogates_pass_through_as_written() {
        let text = r#"{"a":"x\ud83d","\udc00k":1,"n":{"deep":"\ud800"}}"#;
        let m = Members::parse(text).unwrap();
        assert_eq!(m.get("a").unwrap().get(), r#""x\ud83d""#);
        assert_eq!(m.get("n").unwrap().get(), r#"{"deep":"\ud800"}"#);
        assert_eq!(m.text(), text);
        // serde_json's Value, the oracle for everything else, refuses the text.
        assert!(serde_json::from_str::<serde_json::Value>(text).is_err());
    }

    #[test]
    fn repeated_keys_keep_their_first_place_and_last_value_as_serde_json_did() {
        for text in [
            r#"{"a":1,"b":2,"a":3}"#,
            r#"{"a":1,"\u0061":2}"#,
            r#"{ "x" : [1, 2] , "y":{"z":null},"x":"last" }"#,
            r#"{}"#,
            r#"{"é":1,"\u00e9":2,"e":3}"#,
        ] {
            let ours: serde_json::Value = serde_json::from_str(&Members::parse(text).unwrap().text()).unwrap();
            let value: serde_json::Value = serde_json::from_str(text).unwrap();
            assert_eq!(serde_json::to_string(&ours).unwrap(), serde_json::to_string(&value).unwrap(), "{text}");
        }
        let m = Members::parse(r#"{"a":1,"\u0061":2}"#).unwrap();
        assert_eq!(m.get("a").unwrap().get(), "2");
    }

    #[test]
    fn only_an_object_is_members() {
        for text in ["[1]", "1", "\"s\"", "null", "{\"a\":1", "{\"a\":1} x", "{\"a\" 1}"] {
            assert!(Members::parse(text).is_err(), "{text}");
        }
    }

    #[test]
    fn members_are_removed_replaced_and_extended() {
        let mut outer = Members::parse(r#"{"data":"…","ip":"","a":1}"#).unwrap();
        outer.remove("data");
        outer.extend(Members::parse(r#"{"a":2,"b":3}"#).unwrap());
        outer.replace("ip", null());
        assert_eq!(outer.text(), r#"{"ip":null,"a":2,"b":3}"#);
        assert_eq!([kind(outer.get("ip").unwrap()), kind(outer.get("a").unwrap())], ["null", "a number"]);
    }
}
