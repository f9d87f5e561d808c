//! An event's JSON text made into a QuickJS value by serde_json's parser, building the objects
//! through QuickJS's C API as it goes.
//!
//! `JSON.parse` in QuickJS tokenises into JS strings and then interns keys; serde_json scans
//! faster and hands keys over as borrowed slices, which become atoms directly. The result is
//! the same value `JSON.parse` makes: keys in document order (a repeated key keeps its first
//! place and its last value), integers in int32 as ints, other numbers as doubles, strings
//! UTF-8 decoded. Where serde_json refuses text that `JSON.parse` takes (nesting deeper than
//! 128, a lone surrogate escape) or the text is not JSON at all, [`parse`] returns `None` and
//! the caller uses `JSON.parse`, which also gives the error message plugins would see.

#![allow(unsafe_code)] // QuickJS's C API; each value is owned by an `Owned` until handed over.

use std::cell::RefCell;
use std::fmt;

use rquickjs::{Ctx, Value, qjs};
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use super::fastpath::Shapes;

/// `JSON.parse(text)` built from serde_json's parse; `None` to fall back (see module docs).
/// With `shapes`, objects whose keys it has seen before are made from their known shape.
pub fn parse<'js>(ctx: &Ctx<'js>, text: &str, shapes: Option<&mut Shapes>) -> Option<Value<'js>> {
    let raw = ctx.as_raw().as_ptr();
    let mut shapes = shapes;
    let (atoms, values) = shapes.as_deref_mut().map(|s| std::mem::take(&mut s.scratch)).unwrap_or_default();
    let state = State { shapes: RefCell::new(shapes), atoms: RefCell::new(atoms), values: RefCell::new(values) };
    let mut de = serde_json::Deserializer::from_str(text);
    let owned = Build { ctx: raw, state: &state }.deserialize(&mut de);
    let State { shapes, atoms, values } = state;
    if let Some(shapes) = shapes.into_inner() {
        // Every level gave its part of the stacks back (freed or handed over).
        shapes.scratch = (atoms.into_inner(), values.into_inner());
    }
    let owned = owned.ok()?;
    de.end().ok()?;
    // SAFETY: `owned` holds one reference to a value of this context; from_raw takes it over.
    Some(unsafe { Value::from_raw(ctx.clone(), owned.into_raw()) })
}

/// One reference to a QuickJS value, released on drop (so a parse error frees what was built).
struct Owned {
    ctx: *mut qjs::JSContext,
    v: qjs::JSValue,
}

impl Owned {
    /// Takes over `v`; an error if it is an exception (QuickJS ran out of memory).
    fn new<E: serde::de::Error>(ctx: *mut qjs::JSContext, v: qjs::JSValue) -> Result<Owned, E> {
        // SAFETY: `v` was just returned by QuickJS; an exception value owns nothing, but the
        // pending exception must be cleared so the fallback starts clean.
        if unsafe { qjs::JS_IsException(v) } {
            return Err(failed(ctx));
        }
        Ok(Owned { ctx, v })
    }

    fn into_raw(self) -> qjs::JSValue {
        let v = self.v;
        std::mem::forget(self);
        v
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        // SAFETY: we hold one reference to `v`.
        unsafe { qjs::JS_FreeValue(self.ctx, self.v) };
    }
}

fn out_of_memory<E: serde::de::Error>() -> E {
    E::custom("QuickJS could not allocate")
}

/// A QuickJS call failed (out of memory): clear its pending exception and stop the parse.
fn failed<E: serde::de::Error>(ctx: *mut qjs::JSContext) -> E {
    super::tojson::drop_pending_exception(ctx);
    out_of_memory()
}

/// What one parse shares between its levels: the runtime's known shapes, and one stack of
/// the keys and values of the objects and arrays being read (each level uses the top of it
/// and gives it back), so no level allocates lists of its own.
struct State<'s> {
    shapes: RefCell<Option<&'s mut Shapes>>,
    atoms: RefCell<Vec<qjs::JSAtom>>,
    values: RefCell<Vec<qjs::JSValue>>,
}

/// The top of the stacks one object or array owns, from `atoms`/`values` on: every atom and
/// value still there is released on drop (an error part-way), undefined slots being values
/// already handed over.
struct Level<'a, 's> {
    ctx: *mut qjs::JSContext,
    state: &'a State<'s>,
    atoms: usize,
    values: usize,
}

impl Drop for Level<'_, '_> {
    fn drop(&mut self) {
        let mut atoms = self.state.atoms.borrow_mut();
        let mut values = self.state.values.borrow_mut();
        // SAFETY: each atom and value above the marks holds one reference of this level.
        for &atom in &atoms[self.atoms..] {
            unsafe { qjs::JS_FreeAtom(self.ctx, atom) };
        }
        for &v in &values[self.values..] {
            unsafe { qjs::JS_FreeValue(self.ctx, v) };
        }
        atoms.truncate(self.atoms);
        values.truncate(self.values);
    }
}

const UNDEFINED: qjs::JSValue = qjs::JS_MKVAL(qjs::JS_TAG_UNDEFINED, 0);

#[derive(Clone, Copy)]
struct Build<'a, 's> {
    ctx: *mut qjs::JSContext,
    state: &'a State<'s>,
}

impl<'a, 's> Build<'a, 's> {
    fn plain<E: serde::de::Error>(self, v: qjs::JSValue) -> Result<Owned, E> {
        Ok(Owned { ctx: self.ctx, v })
    }

    fn string<E: serde::de::Error>(self, s: &str) -> Result<Owned, E> {
        // SAFETY: QuickJS copies the bytes (valid UTF-8) into a new string.
        let v = unsafe { qjs::JS_NewStringLen(self.ctx, s.as_ptr().cast(), s.len() as _) };
        Owned::new(self.ctx, v)
    }

    fn number<E: serde::de::Error>(self, n: f64) -> Result<Owned, E> {
        // JS_NewFloat64 stores int32-valued doubles as ints, as JSON.parse does.
        self.plain(qjs::JS_NewFloat64(n))
    }

    fn level(self) -> Level<'a, 's> {
        Level { ctx: self.ctx, state: self.state, atoms: self.state.atoms.borrow().len(), values: self.state.values.borrow().len() }
    }

    /// The object of the keys and values on top of the stacks (from `level`'s marks).
    fn object<E: serde::de::Error>(self, level: &Level<'_, '_>) -> Result<Owned, E> {
        let ctx = self.ctx;
        let atoms = self.state.atoms.borrow();
        let mut values = self.state.values.borrow_mut();
        let (atoms, values) = (&atoms[level.atoms..], &mut values[level.values..]);
        let mut shapes = self.state.shapes.borrow_mut();
        if let Some(made) = shapes.as_deref().and_then(|shapes| shapes.make(ctx, atoms, values)) {
            values.fill(UNDEFINED);
            return Owned::new(ctx, made);
        }
        // SAFETY: a new object, owned by `object` from here on.
        let object = Owned::new(ctx, unsafe { qjs::JS_NewObject(ctx) })?;
        for (&atom, value) in atoms.iter().zip(values.iter_mut()) {
            let value = std::mem::replace(value, UNDEFINED);
            // SAFETY: DefineProperty takes over the value's reference, even when it fails; a
            // repeated key keeps its place and takes the new value, as in JSON.parse.
            if unsafe { qjs::JS_DefinePropertyValue(ctx, object.v, atom, value, qjs::JS_PROP_C_W_E as i32) } < 0 {
                return Err(failed(ctx));
            }
        }
        if let Some(shapes) = shapes.as_deref_mut() {
            shapes.learn(ctx, object.v, atoms);
        }
        Ok(object)
    }
}

impl<'de> DeserializeSeed<'de> for Build<'_, '_> {
    type Value = Owned;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Owned, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Build<'_, '_> {
    type Value = Owned;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Owned, E> {
        self.plain(qjs::JS_MKVAL(qjs::JS_TAG_NULL, 0))
    }

    fn visit_bool<E: serde::de::Error>(self, b: bool) -> Result<Owned, E> {
        self.plain(qjs::JS_MKVAL(qjs::JS_TAG_BOOL, b as i32))
    }

    fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Owned, E> {
        self.number(n as f64)
    }

    fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Owned, E> {
        self.number(n as f64)
    }

    fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<Owned, E> {
        self.number(n)
    }

    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Owned, E> {
        self.string(s)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Owned, A::Error> {
        // The items first (on the shared stack; an error frees them), then one fast array made
        // from them at once.
        let level = self.level();
        while let Some(item) = seq.next_element_seed(self)? {
            self.state.values.borrow_mut().push(item.into_raw());
        }
        let array = {
            let mut values = self.state.values.borrow_mut();
            let items = &mut values[level.values..];
            let count = i32::try_from(items.len()).map_err(|_| out_of_memory::<A::Error>())?;
            // SAFETY: JS_NewArrayFrom takes over every value's reference, also when it fails.
            let array = unsafe { qjs::JS_NewArrayFrom(self.ctx, count, items.as_ptr()) };
            items.fill(UNDEFINED);
            array
        };
        Owned::new(self.ctx, array)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Owned, A::Error> {
        // Keys and values first (on the shared stacks; an error frees them), then the object.
        let level = self.level();
        while let Some(key) = map.next_key_seed(Key { ctx: self.ctx })? {
            self.state.atoms.borrow_mut().push(key.0);
            let value = map.next_value_seed(self)?;
            self.state.values.borrow_mut().push(value.into_raw());
        }
        self.object(&level)
    }
}
/// An interned property key.
struct Atom(qjs::JSAtom);

struct Key {
    ctx: *mut qjs::JSContext,
}

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Atom;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Atom, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Atom;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Atom, E> {
        // SAFETY: QuickJS interns a copy of the bytes; JS_ATOM_NULL (0) means out of memory.
        let atom = unsafe { qjs::JS_NewAtomLen(self.ctx, s.as_ptr().cast(), s.len() as _) };
        if atom == 0 {
            return Err(failed(self.ctx));
        }
        Ok(Atom(atom))
    }
}

#[cfg(test)]
mod differential {
    use proptest::prelude::*;
    use rquickjs::{Context, Runtime};

    /// Describes a parsed value: `JSON.stringify` of it, again with negative zeros made
    /// visible, and the top-level keys (int vs double storage is invisible to JS: not checked).
    fn show<'js>(ctx: &rquickjs::Ctx<'js>, v: rquickjs::Value<'js>) -> String {
        let f: rquickjs::Function<'js> = ctx
            .eval("(v) => JSON.stringify(v) + '|' + JSON.stringify(v, (k, x) => typeof x === 'number' && Object.is(x, -0) ? '-0' : x) + '|' + (v && typeof v === 'object' ? Object.keys(v).join(',') : '')")
            .unwrap();
        f.call((v,)).unwrap()
    }

    /// Parses `text` both ways.
    fn both(text: &str) -> (Option<String>, Option<String>) {
        let rt = Runtime::new().unwrap();
        let context = Context::full(&rt).unwrap();
        context.with(|ctx| {
            let ours = super::parse(&ctx, text, None).map(|v| show(&ctx, v));
            // Again with known shapes: the first parse teaches them, the second uses them.
            let mut shapes = super::Shapes::new(ctx.as_raw().as_ptr());
            for _ in 0..2 {
                let shaped = super::parse(&ctx, text, Some(&mut shapes)).map(|v| show(&ctx, v));
                assert_eq!(shaped, ours, "{text} with known shapes");
            }
            let theirs = ctx.json_parse(text.to_string()).ok().map(|v| show(&ctx, v));
            (ours, theirs)
        })
    }

    #[test]
    fn tricky_documents_match_json_parse() {
        for text in [
            r#"{"b": 1, "a": 2, "b": 3, "2": "x", "1": "y"}"#,
            r#"{"__proto__": {"x": 1}, "n": [1, -1, 2147483648, -2147483649, 1e300, 5e-324, 0.1, 1.0, 123456789012345678901234567890]}"#,
            r#"{"s": "\u00e9\ud83d\ude00\u0000\n\"", "u": "plain", "e": "", "nested": [[[]], {}]}"#,
            r#"[true, false, null, {"k": [1.5e-7, 1e21]}]"#,
            r#"{"neg_zero": -0, "neg_zero_float": -0.0}"#,
        ] {
            let (ours, theirs) = both(text);
            assert!(ours.is_some(), "{text}");
            assert_eq!(ours, theirs, "{text}");
        }
    }

    #[test]
    fn what_serde_refuses_is_left_to_json_parse() {
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        for text in [r#"{"lone": "\ud800"}"#, "{\"a\": 1,}", "nope", "{} extra", deep.as_str()] {
            let rt = Runtime::new().unwrap();
            let context = Context::full(&rt).unwrap();
            context.with(|ctx| {
                assert!(super::parse(&ctx, text, None).is_none(), "{text}");
                assert!(!ctx.has_exception(), "an exception was left pending: {:?}", ctx.catch());
            });
        }
    }

    proptest! {
        #[test]
        fn generated_json_matches_json_parse(value in crate::plugin::tojson::differential_json()) {
            let text = serde_json::to_string(&value).unwrap();
            let (ours, theirs) = both(&text);
            prop_assert!(ours.is_some(), "declined {}", text);
            prop_assert_eq!(ours, theirs);
        }
    }
}
