//! JSON text of an event, written by walking the QuickJS value from Rust.
//!
//! QuickJS's `JSON.stringify` quotes every key and string into a fresh JS string and joins
//! them in a growing JS string buffer; on a 3 KB event that was a third of a three-plugin
//! chain's time. This walker reads the same properties in the same order through QuickJS's C
//! API and writes bytes straight into one `Vec`.
//!
//! It covers what events are made of: plain objects, arrays, strings, numbers, booleans, null,
//! and the values `JSON.stringify` leaves out (undefined, functions, symbols). Anything whose
//! JSON form is defined by more of the spec — a `toJSON` method (Date), boxed primitives,
//! proxies, Map/Set and other classes, BigInt, cycles or very deep nesting, a throwing
//! getter — makes [`stringify`] return `None`, and the caller uses `JSON.stringify` itself.
//! A differential test checks the two agree.

#![allow(unsafe_code)] // QuickJS's C API: every call below is commented where it owns a value.

use rquickjs::{Ctx, Value, qjs};

/// Nesting deeper than this (or a cycle) is left to `JSON.stringify`, which throws on cycles.
const MAX_DEPTH: usize = 200;
/// Integral doubles below this print as integers (2^53: every such double is exact in i64).
const EXACT_INTEGER: f64 = 9_007_199_254_740_992.0;
const CLASS_OBJECT: qjs::JSClassID = 1;
const CLASS_ARRAY: qjs::JSClassID = 2;

/// The JSON text of `value`, as `JSON.stringify(value)` writes it; `None` when the value needs
/// `JSON.stringify`'s full algorithm (see the module docs) or is not serialisable at top level.
pub fn stringify(ctx: &Ctx<'_>, value: &Value<'_>) -> Option<String> {
    let mut w = Writer::new(ctx.as_raw().as_ptr());
    let wrote = w.value(value.as_raw(), 0);
    let out = std::mem::take(&mut w.out);
    drop(w);
    match wrote {
        Ok(Wrote::Text) => Some(String::from_utf8(out).expect("the writer emits UTF-8 only")),
        Ok(Wrote::Nothing) | Err(Bail) => None,
    }
}

/// The walk met something it leaves to `JSON.stringify`.
struct Bail;

enum Wrote {
    Text,
    /// `undefined`, a function or a symbol: left out of objects, `null` in arrays.
    Nothing,
}

struct Writer {
    ctx: *mut qjs::JSContext,
    out: Vec<u8>,
    to_json: qjs::JSAtom,
}

impl Writer {
    fn new(ctx: *mut qjs::JSContext) -> Self {
        // SAFETY: ctx is a live context (borrowed from a `Ctx` for this call); the atom is freed in Drop.
        let to_json = unsafe { qjs::JS_NewAtom(ctx, c"toJSON".as_ptr()) };
        Writer { ctx, out: Vec::with_capacity(4096), to_json }
    }

    fn value(&mut self, v: qjs::JSValue, depth: usize) -> Result<Wrote, Bail> {
        // SAFETY: `v` is a live value borrowed from the caller for the duration of this call.
        let tag = unsafe { qjs::JS_VALUE_GET_TAG(v) };
        match tag {
            qjs::JS_TAG_INT => {
                let n = unsafe { qjs::JS_VALUE_GET_INT(v) };
                self.out.extend_from_slice(itoa_i64(n as i64, &mut [0; 20]));
            }
            qjs::JS_TAG_BOOL => {
                let b = unsafe { qjs::JS_VALUE_GET_BOOL(v) };
                self.out.extend_from_slice(if b { b"true" } else { b"false" });
            }
            qjs::JS_TAG_NULL => self.out.extend_from_slice(b"null"),
            qjs::JS_TAG_UNDEFINED | qjs::JS_TAG_SYMBOL => return Ok(Wrote::Nothing),
            qjs::JS_TAG_FLOAT64 => self.float(v)?,
            qjs::JS_TAG_STRING | qjs::JS_TAG_STRING_ROPE => self.string(v)?,
            qjs::JS_TAG_OBJECT => return self.object(v, depth),
            _ => return Err(Bail), // BigInt (JSON.stringify throws) and internal tags
        }
        Ok(Wrote::Text)
    }

    fn float(&mut self, v: qjs::JSValue) -> Result<(), Bail> {
        let d = unsafe { qjs::JS_VALUE_GET_FLOAT64(v) };
        if !d.is_finite() {
            self.out.extend_from_slice(b"null");
        } else if d.fract() == 0.0 && d.abs() < EXACT_INTEGER {
            // Also turns -0 into "0", as JSON.stringify does.
            self.out.extend_from_slice(itoa_i64(d as i64, &mut [0; 20]));
        } else {
            // Fractions and huge numbers: QuickJS's own Number-to-string, for exact JS digits.
            // SAFETY: JS_ToString returns a new string value, freed after it is copied.
            let s = unsafe { qjs::JS_ToString(self.ctx, v) };
            if unsafe { qjs::JS_IsException(s) } {
                return Err(self.clear_exception());
            }
            let r = self.string_bytes(s, false);
            unsafe { qjs::JS_FreeValue(self.ctx, s) };
            r?;
        }
        Ok(())
    }

    fn string(&mut self, v: qjs::JSValue) -> Result<(), Bail> {
        self.string_bytes(v, true)
    }

    /// Appends the UTF-8 of string value `s`, JSON-quoted when `quote`.
    fn string_bytes(&mut self, s: qjs::JSValue, quote: bool) -> Result<(), Bail> {
        let mut len: qjs::size_t = 0;
        // SAFETY: returns a pointer into QuickJS memory (or a copy) valid until JS_FreeCString.
        // With cesu8 = false, pairs become 4-byte UTF-8 and lone surrogates 3-byte sequences.
        let ptr = unsafe { qjs::JS_ToCStringLen2(self.ctx, &mut len, s, false) };
        if ptr.is_null() {
            return Err(self.clear_exception());
        }
        let bytes = unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len as usize) };
        if quote {
            quote_into(&mut self.out, bytes);
        } else {
            self.out.extend_from_slice(bytes);
        }
        unsafe { qjs::JS_FreeCString(self.ctx, ptr) };
        Ok(())
    }

    fn object(&mut self, v: qjs::JSValue, depth: usize) -> Result<Wrote, Bail> {
        let class = unsafe { qjs::JS_GetClassID(v) };
        if class != CLASS_OBJECT && class != CLASS_ARRAY {
            return if unsafe { qjs::JS_IsFunction(self.ctx, v) } { Ok(Wrote::Nothing) } else { Err(Bail) };
        }
        if depth >= MAX_DEPTH {
            return Err(Bail);
        }
        // A toJSON anywhere on the prototype chain changes the output: leave it to JS.
        // SAFETY: JS_GetProperty returns a new value; freed at once.
        let method = unsafe { qjs::JS_GetProperty(self.ctx, v, self.to_json) };
        let plain = unsafe { qjs::JS_IsUndefined(method) };
        if unsafe { qjs::JS_IsException(method) } {
            return Err(self.clear_exception());
        }
        unsafe { qjs::JS_FreeValue(self.ctx, method) };
        if !plain {
            return Err(Bail);
        }
        if class == CLASS_ARRAY { self.array(v, depth) } else { self.fields(v, depth) }?;
        Ok(Wrote::Text)
    }

    fn array(&mut self, v: qjs::JSValue, depth: usize) -> Result<(), Bail> {
        let mut len: i64 = 0;
        if unsafe { qjs::JS_GetLength(self.ctx, v, &mut len) } < 0 {
            return Err(self.clear_exception());
        }
        self.out.push(b'[');
        for i in 0..len {
            if i > 0 {
                self.out.push(b',');
            }
            // SAFETY: a new value (holes and missing indexes give undefined), freed below.
            let item = unsafe { qjs::JS_GetPropertyInt64(self.ctx, v, i) };
            if unsafe { qjs::JS_IsException(item) } {
                return Err(self.clear_exception());
            }
            let wrote = self.value(item, depth + 1);
            unsafe { qjs::JS_FreeValue(self.ctx, item) };
            if let Wrote::Nothing = wrote? {
                self.out.extend_from_slice(b"null");
            }
        }
        self.out.push(b']');
        Ok(())
    }

    fn fields(&mut self, v: qjs::JSValue, depth: usize) -> Result<(), Bail> {
        let mut tab: *mut qjs::JSPropertyEnum = std::ptr::null_mut();
        let mut len: u32 = 0;
        let flags = (qjs::JS_GPN_STRING_MASK | qjs::JS_GPN_ENUM_ONLY) as i32;
        // SAFETY: on success `tab` holds `len` atoms we own; JS_FreePropertyEnum frees them all.
        if unsafe { qjs::JS_GetOwnPropertyNames(self.ctx, &mut tab, &mut len, v, flags) } < 0 {
            return Err(self.clear_exception());
        }
        let keys = unsafe { std::slice::from_raw_parts(tab, len as usize) };
        let result = self.write_fields(v, keys, depth);
        unsafe { qjs::JS_FreePropertyEnum(self.ctx, tab, len) };
        result
    }

    fn write_fields(&mut self, v: qjs::JSValue, keys: &[qjs::JSPropertyEnum], depth: usize) -> Result<(), Bail> {
        self.out.push(b'{');
        let mut first = true;
        for key in keys {
            let rollback = self.out.len();
            if !first {
                self.out.push(b',');
            }
            self.key(key.atom)?;
            self.out.push(b':');
            // SAFETY: a new value (a getter may run, as in JSON.stringify), freed below.
            let item = unsafe { qjs::JS_GetProperty(self.ctx, v, key.atom) };
            if unsafe { qjs::JS_IsException(item) } {
                return Err(self.clear_exception());
            }
            let wrote = self.value(item, depth + 1);
            unsafe { qjs::JS_FreeValue(self.ctx, item) };
            match wrote? {
                Wrote::Text => first = false,
                Wrote::Nothing => self.out.truncate(rollback),
            }
        }
        self.out.push(b'}');
        Ok(())
    }

    fn key(&mut self, atom: qjs::JSAtom) -> Result<(), Bail> {
        let mut len: qjs::size_t = 0;
        // SAFETY: like JS_ToCStringLen2: valid until JS_FreeCString.
        let ptr = unsafe { qjs::JS_AtomToCStringLen(self.ctx, &mut len, atom) };
        if ptr.is_null() {
            return Err(self.clear_exception());
        }
        quote_into(&mut self.out, unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len as usize) });
        unsafe { qjs::JS_FreeCString(self.ctx, ptr) };
        Ok(())
    }

    /// Drops the exception a failed call left pending; `JSON.stringify` will meet it again.
    fn clear_exception(&mut self) -> Bail {
        drop_pending_exception(self.ctx);
        Bail
    }
}

/// Drops the exception a failed QuickJS call left pending on `ctx`, if any.
pub(super) fn drop_pending_exception(ctx: *mut qjs::JSContext) {
    // SAFETY: JS_GetException hands over the pending exception (or undefined); freed at once.
    unsafe { qjs::JS_FreeValue(ctx, qjs::JS_GetException(ctx)) };
}

impl Drop for Writer {
    fn drop(&mut self) {
        // SAFETY: the atom was made in `new` on this context.
        unsafe { qjs::JS_FreeAtom(self.ctx, self.to_json) };
    }
}

/// Decimal digits of `n` (written backwards into `buf`).
fn itoa_i64(n: i64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    let mut m = n.unsigned_abs();
    loop {
        i -= 1;
        buf[i] = b'0' + (m % 10) as u8;
        m /= 10;
        if m == 0 {
            break;
        }
    }
    if n < 0 {
        i -= 1;
        buf[i] = b'-';
    }
    &buf[i..]
}

/// Bytes that stop the copy loop in [`quote_into`]: controls, `"`, `\\`, and 0xED (the lead byte
/// of U+D000..U+DFFF, which includes lone surrogates).
const STOP: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        t[b] = true;
        b += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t[0xed] = true;
    t
};

/// Writes `s` (UTF-8, possibly with lone surrogates as 3-byte sequences) as a JSON string the
/// way `JSON.stringify` does: `\"`, `\\`, `\b\f\n\r\t`, other controls and lone surrogates as
/// lowercase `\uXXXX`; everything else as is.
pub(crate) fn quote_into(out: &mut Vec<u8>, s: &[u8]) {
    out.reserve(s.len() + 2);
    out.push(b'"');
    let mut start = 0;
    let mut i = 0;
    while i < s.len() {
        let b = s[i];
        if !STOP[b as usize] {
            i += 1;
            continue;
        }
        if b == 0xed && s.get(i + 1).is_none_or(|c| *c < 0xa0) {
            i += 1; // U+D000..U+D7FF: an ordinary character
            continue;
        }
        out.extend_from_slice(&s[start..i]);
        i += match b {
            b'"' => push(out, b"\\\""),
            b'\\' => push(out, b"\\\\"),
            b'\n' => push(out, b"\\n"),
            b'\r' => push(out, b"\\r"),
            b'\t' => push(out, b"\\t"),
            0x08 => push(out, b"\\b"),
            0x0c => push(out, b"\\f"),
            0x00..=0x1f => {
                unicode_escape(out, b as u16);
                1
            }
            _ => {
                // 0xED 0xA0..0xBF xx encodes a surrogate code unit U+D800..U+DFFF.
                let unit = 0xd000 | ((s[i + 1] as u16 & 0x3f) << 6) | (s.get(i + 2).copied().unwrap_or(0x80) as u16 & 0x3f);
                unicode_escape(out, unit);
                3
            }
        };
        start = i.min(s.len());
    }
    out.extend_from_slice(&s[start.min(s.len())..]);
    out.push(b'"');
}

/// Appends an escape; returns how many input bytes it stands for (one).
fn push(out: &mut Vec<u8>, escape: &[u8]) -> usize {
    out.extend_from_slice(escape);
    1
}

fn unicode_escape(out: &mut Vec<u8>, unit: u16) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.extend_from_slice(b"\\u");
    for shift in [12, 8, 4, 0] {
        out.push(HEX[((unit >> shift) & 0xf) as usize]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_print_like_javascript() {
        for n in [0, 7, -7, 10, i64::MAX, i64::MIN, 9_007_199_254_740_991] {
            assert_eq!(itoa_i64(n, &mut [0; 20]), n.to_string().as_bytes());
        }
    }

    #[test]
    fn quoting_escapes_what_json_stringify_escapes() {
        let mut out = Vec::new();
        quote_into(&mut out, "a\"b\\c\n\r\t\u{8}\u{c}\u{1}\u{1f}\u{7f}é😀\u{2028}".as_bytes());
        assert_eq!(String::from_utf8(out).unwrap(), "\"a\\\"b\\\\c\\n\\r\\t\\b\\f\\u0001\\u001f\u{7f}é😀\u{2028}\"");
        // A lone high surrogate as QuickJS hands it over (3-byte generalized UTF-8).
        let mut out = Vec::new();
        quote_into(&mut out, &[b'x', 0xed, 0xa0, 0x80, b'y']);
        assert_eq!(out, b"\"x\\ud800y\"");
    }
}

/// Arbitrary JSON documents for the differential tests of this module and `fromjson`.
#[cfg(test)]
pub(crate) fn differential_json() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
    use proptest::prelude::*;
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(|n| serde_json::json!(n)),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| serde_json::json!(f)),
        any::<String>().prop_map(serde_json::Value::String),
        "[a-z$_\\\\\"\\x00-\\x1f\u{e9}\u{1F600}]{0,12}".prop_map(serde_json::Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
            prop::collection::vec((any::<String>(), inner), 0..6)
                .prop_map(|kv| serde_json::Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// The walker against QuickJS's own `JSON.stringify`, on generated JSON and on values only
/// JavaScript can make.
#[cfg(test)]
mod differential {
    use proptest::prelude::*;
    use rquickjs::{Context, Runtime};

    fn both<'js>(ctx: &rquickjs::Ctx<'js>, v: rquickjs::Value<'js>) -> (Option<String>, Option<String>) {
        let ours = super::stringify(ctx, &v);
        let theirs = ctx.json_stringify(v).ok().flatten().map(|s| s.to_string().unwrap());
        (ours, theirs)
    }

    fn with_ctx<R>(f: impl FnOnce(&rquickjs::Ctx<'_>) -> R) -> R {
        let rt = Runtime::new().unwrap();
        let context = Context::full(&rt).unwrap();
        context.with(|ctx| f(&ctx))
    }

    /// Values written in JavaScript: (source, whether the walker handles it itself).
    const CASES: &[(&str, bool)] = &[
        ("({a: undefined, b: function () {}, c: Symbol('s'), d: 1})", true),
        ("[undefined, () => 1, Symbol('s'), , 2]", true),
        ("({neg0: -0, frac: 0.1 + 0.2, tiny: 1.5e-7, big: 1e21, huge: 2 ** 60, nan: NaN, inf: -Infinity, exp: 123e-20})", true),
        ("({lone: '\\ud800x', low: 'a\\udc00', pair: '\\ud83d\\ude00', ctl: '\\u0000\\u001f\\u007f', esc: '\"\\\\/'})", true),
        ("({2: 'two', b: 1, 1: 'one', a: 2})", true),
        ("Object.create(null, {x: {value: 1, enumerable: true}, hidden: {value: 2, enumerable: false}})", true),
        ("(() => { const o = {a: 1}; Object.defineProperty(o, 'g', {get() { return [1, {z: 'x'}] }, enumerable: true}); return o })()", true),
        ("({when: new Date(0)})", false),
        ("({own: {toJSON() { return 'custom' }}})", false),
        ("({boxed: new String('s')})", false),
        ("({m: new Map([[1, 2]])})", false),
        ("({p: new Proxy({a: 1}, {})})", false),
        ("(() => { class Point { constructor() { this.x = 1 } }; return {pt: new Point()} })()", true),
    ];

    #[test]
    fn javascript_values_match_json_stringify() {
        with_ctx(|ctx| {
            for (source, handled) in CASES {
                let v: rquickjs::Value<'_> = ctx.eval(*source).unwrap();
                let (ours, theirs) = both(ctx, v);
                assert_eq!(ours.is_some(), *handled, "{source}: walker {ours:?}, JSON.stringify {theirs:?}");
                if let Some(ours) = ours {
                    assert_eq!(Some(ours), theirs, "{source}");
                }
            }
        });
    }

    #[test]
    fn cycles_throwing_getters_and_bigints_are_left_to_json_stringify() {
        with_ctx(|ctx| {
            for source in [
                "(() => { const o = {}; o.self = o; return o })()",
                "({ get boom() { throw new Error('no') }, enumerable: true })",
                "({n: 10n})",
            ] {
                let v: rquickjs::Value<'_> = ctx.eval(source).unwrap();
                assert_eq!(super::stringify(ctx, &v), None, "{source}");
                // No exception is left pending by the walker.
                let ok: i32 = ctx.eval("1 + 1").unwrap();
                assert_eq!(ok, 2);
            }
        });
    }

    proptest! {
        #[test]
        fn generated_json_matches_json_stringify(value in super::differential_json()) {
            with_ctx(|ctx| {
                let text = serde_json::to_string(&value).unwrap();
                let v = ctx.json_parse(text.clone()).unwrap();
                let (ours, theirs) = both(ctx, v);
                prop_assert!(ours.is_some(), "walker declined {text}");
                prop_assert_eq!(ours, theirs);
                Ok(())
            })?;
        }
    }
}
