//! An event's JSON text made into a QuickJS value by a parser of ours, building the objects
//! through QuickJS's C API as it goes.
//!
//! `JSON.parse` in QuickJS tokenises into JS strings and then interns keys and defines each
//! property through the generic path. This parser searches strings eight bytes at a time
//! (`event::scan::special`) and makes an object whose keys it has seen before from its known
//! shape ([`Shapes`]), all its values at once. The result is the value `JSON.parse` makes: keys in document order (a
//! repeated key keeps its first place and its last value), integers in int32 as ints, other
//! numbers as doubles (correctly rounded, as JavaScript reads them), strings UTF-8 decoded. What
//! it does not take — text that is not JSON, nesting deeper than 128, a lone surrogate escape —
//! makes [`parse`] return `None`, and the caller uses `JSON.parse`, which also gives the error
//! message plugins would see. It may decline what `JSON.parse` accepts, never the reverse.

#![allow(unsafe_code)] // QuickJS's C API; each value is on the parser's stacks until handed over.

use rquickjs::{Ctx, Value, qjs};

use super::fastpath::{MAX_KEY_BYTES, Shapes, Stacks, checked};
use crate::event::scan::{Scan, special};

/// Deeper documents are left to `JSON.parse` (the limit serde_json had here before).
const MAX_DEPTH: usize = 128;

/// `JSON.parse(text)` built by our parser; `None` to fall back (see module docs). With
/// `shapes`, object shapes seen before are reused.
pub fn parse<'js>(ctx: &Ctx<'js>, text: &str, shapes: Option<&mut Shapes>) -> Option<Value<'js>> {
    let mut shapes = shapes;
    let mut p = Parser {
        text,
        s: Scan { b: text.as_bytes(), i: 0, utf8: true },
        ctx: ctx.as_raw().as_ptr(),
        stacks: Stacks::lend(shapes.as_deref_mut()),
        shapes,
        unescaped: String::new(),
        long_keys: 0,
    };
    p.s.ws();
    let mut v = p.value(MAX_DEPTH);
    if v.is_some() {
        p.s.ws();
        if p.s.i != p.s.b.len() {
            // SAFETY: the value is ours and nothing else holds it.
            unsafe { qjs::JS_FreeValue(p.ctx, v.take().expect("checked")) };
        }
    }
    if v.is_none() {
        // Whatever failed left a pending exception only when QuickJS could not allocate.
        super::tojson::drop_pending_exception(p.ctx);
    }
    p.stacks.give_back(p.shapes);
    // SAFETY: `v` holds one reference to a value of this context; from_raw takes it over.
    v.map(|v| unsafe { Value::from_raw(ctx.clone(), v) })
}

struct Parser<'t, 's> {
    text: &'t str,
    /// Where the parse is in `text`.
    s: Scan<'t>,
    ctx: *mut qjs::JSContext,
    shapes: Option<&'s mut Shapes>,
    /// Keys and values of the objects and arrays being read.
    stacks: Stacks,
    /// A string with escapes, decoded.
    unescaped: String,
    /// Keys longer than `fastpath::MAX_KEY_BYTES` read so far: an object holding one (here or
    /// nested) is not remembered.
    long_keys: u64,
}

impl Parser<'_, '_> {
    /// A value of any kind, nested at most `left` levels deep: one reference, or `None` (the
    /// parse fails; nothing of this value is left).
    fn value(&mut self, left: usize) -> Option<qjs::JSValue> {
        let c = self.s.next()?;
        self.value_at(c, left)
    }

    /// [`Self::value`] whose first byte `c` was taken.
    fn value_at(&mut self, c: u8, left: usize) -> Option<qjs::JSValue> {
        match c {
            b'"' => {
                let ctx = self.ctx;
                let s = self.string()?;
                if s.is_ascii() {
                    // ASCII is its own Latin-1: the string JS_NewStringLen would make, without
                    // its pass to tell what kind of string the bytes make.
                    // SAFETY: QuickJS copies `s.len()` one-byte characters (an event is far
                    // shorter than i32::MAX bytes).
                    return checked(unsafe { super::fastpath::JS_PF_NewString(ctx, s.as_ptr().cast(), s.len() as i32, 0) });
                }
                // SAFETY: QuickJS copies the bytes (valid UTF-8) into a new string.
                checked(unsafe { qjs::JS_NewStringLen(ctx, s.as_ptr().cast(), s.len() as _) })
            }
            b'{' => self.object(left.checked_sub(1)?),
            b'[' => self.array(left.checked_sub(1)?),
            b't' => self.word(b"rue", qjs::JS_MKVAL(qjs::JS_TAG_BOOL, 1)),
            b'f' => self.word(b"alse", qjs::JS_MKVAL(qjs::JS_TAG_BOOL, 0)),
            b'n' => self.word(b"ull", qjs::JS_MKVAL(qjs::JS_TAG_NULL, 0)),
            b'-' | b'0'..=b'9' => {
                self.s.i -= 1;
                self.number()
            }
            _ => None,
        }
    }

    fn word(&mut self, rest: &[u8], v: qjs::JSValue) -> Option<qjs::JSValue> {
        self.s.word(rest).map(|()| v)
    }

    /// `-?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?` (the check's grammar), read as
    /// JavaScript reads it.
    fn number(&mut self) -> Option<qjs::JSValue> {
        let start = self.s.i;
        let negative = self.s.eat_if(b'-');
        let int_start = self.s.i;
        self.s.number()?;
        let digits = &self.s.b[int_start..self.s.i];
        let n = if digits.len() <= 15 && digits.iter().all(u8::is_ascii_digit) {
            // An integer exact in an f64 (below 2^53); `-0` stays a negative zero.
            let magnitude = digits.iter().fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0')) as f64;
            if negative { -magnitude } else { magnitude }
        } else {
            // Correctly rounded, as JavaScript's own number reading.
            self.text[start..self.s.i].parse::<f64>().ok()?
        };
        // JS_NewFloat64 stores int32-valued doubles (not -0) as ints, as JSON.parse does.
        Some(qjs::JS_NewFloat64(n))
    }

    /// The rest of a string after its opening quote, decoded: borrowed from the text when it
    /// has no escapes. `None` for a control character, a malformed or lone-surrogate escape, or
    /// no closing quote.
    fn string(&mut self) -> Option<&str> {
        let start = self.s.i;
        let end = special(self.s.b, self.s.i)?;
        if self.s.b[end] == b'"' {
            self.s.i = end + 1;
            // Both ends are next to ASCII bytes: character boundaries.
            return Some(&self.text[start..end]);
        }
        self.unescaped.clear();
        self.unescaped.push_str(&self.text[start..end]);
        self.s.i = end;
        loop {
            match self.s.next()? {
                b'"' => return Some(&self.unescaped),
                b'\\' => {
                    let c = match self.s.next()? {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let unit = self.hex4()?;
                            match unit {
                                0xD800..=0xDBFF => {
                                    if self.s.next()? != b'\\' || self.s.next()? != b'u' {
                                        return None;
                                    }
                                    let low = self.hex4()?;
                                    if !(0xDC00..=0xDFFF).contains(&low) {
                                        return None;
                                    }
                                    char::from_u32(0x10000 + ((u32::from(unit) - 0xD800) << 10) + (u32::from(low) - 0xDC00))?
                                }
                                // A lone low surrogate: JSON.parse keeps it, a Rust string cannot.
                                0xDC00..=0xDFFF => return None,
                                _ => char::from_u32(u32::from(unit))?,
                            }
                        }
                        _ => return None,
                    };
                    self.unescaped.push(c);
                }
                _ => return None, // a control character
            }
            let next = special(self.s.b, self.s.i)?;
            self.unescaped.push_str(&self.text[self.s.i..next]);
            self.s.i = next;
        }
    }

    fn hex4(&mut self) -> Option<u16> {
        let hex = self.s.b.get(self.s.i..self.s.i + 4)?;
        let mut unit = 0u16;
        for &h in hex {
            unit = unit << 4 | (h as char).to_digit(16)? as u16;
        }
        self.s.i += 4;
        Some(unit)
    }

    /// The rest of an array after its `[`; its items get `left` levels.
    fn array(&mut self, left: usize) -> Option<qjs::JSValue> {
        let mark = self.stacks.values.len();
        let filled = self.items(left);
        self.stacks.array(self.ctx, mark, filled)
    }

    fn items(&mut self, left: usize) -> Option<()> {
        let mut c = self.s.token()?;
        if c == b']' {
            return Some(());
        }
        loop {
            let item = self.value_at(c, left)?;
            self.stacks.values.push(item);
            match self.s.token()? {
                b',' => c = self.s.token()?,
                b']' => return Some(()),
                _ => return None,
            }
        }
    }

    /// The rest of an object after its `{`; its values get `left` levels.
    fn object(&mut self, left: usize) -> Option<qjs::JSValue> {
        let (marks, long_keys) = (self.stacks.marks(), self.long_keys);
        let filled = self.members(left).map(|()| self.long_keys == long_keys);
        self.stacks.object(self.ctx, self.shapes.as_deref_mut(), marks, filled)
    }

    fn members(&mut self, left: usize) -> Option<()> {
        let mut c = self.s.token()?;
        if c == b'}' {
            return Some(());
        }
        loop {
            if c != b'"' {
                return None;
            }
            let atom = self.key()?;
            self.stacks.atoms.push(atom);
            if self.s.token()? != b':' {
                return None;
            }
            let first = self.s.token()?;
            let value = self.value_at(first, left)?;
            self.stacks.values.push(value);
            match self.s.token()? {
                b',' => c = self.s.token()?,
                b'}' => return Some(()),
                _ => return None,
            }
        }
    }

    /// A key after its opening quote, interned (one reference).
    fn key(&mut self) -> Option<qjs::JSAtom> {
        let ctx = self.ctx;
        // Out of `self` while the key (which may borrow `self`) is made.
        let mut shapes = self.shapes.take();
        let made = self.string().map(|key| (Shapes::intern(shapes.as_deref_mut(), ctx, key.as_bytes()), key.len() > MAX_KEY_BYTES));
        self.shapes = shapes;
        let (atom, long) = made?;
        self.long_keys += u64::from(long);
        (atom != 0).then_some(atom)
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
            " \t\n{ \"a\" : [ 1 , 2 ] ,\r\n \"b\" : { } , \"c\":[ ]}\r\n ",
            r#""\/\b\f\n\r\t\"\\ \uD83D\uDE00 \u00e9\u00E9 \u0000 \u2028 plain""#,
            r#"[-0, 0, -0.0, 1E2, 1e-2, 1e+2, 1e400, -1e400, 9007199254740993, 123456789012345678, 999999999999999, 0.1, 5e-324, 2.2250738585072014e-308, 1.7976931348623157e308, 2147483647, 2147483648, -2147483648, -2147483649]"#,
            r#"{"__proto__": 1, "a": 1, "a": 2, "": "", "1": 1, "0": 0, "-1": 2, "4294967295": 3}"#,
            r#"[[[[]]], {}, "", [{}], {"x": {"y": {"z": []}}}]"#,
            r#""é ü 😀 \u00fc mixed""#,
            "true",
            "null",
            "-12.5e-3",
        ] {
            let (ours, theirs) = both(text);
            assert!(ours.is_some(), "{text}");
            assert_eq!(ours, theirs, "{text}");
        }
    }

    #[test]
    fn non_ascii_keys_keep_their_characters_whatever_came_before() {
        // "é" in UTF-8 is the bytes of "Ã©" read as Latin-1: QuickJS's atom lookup by bytes took
        // one for the other once the other was interned in the runtime.
        let rt = Runtime::new().unwrap();
        let context = Context::full(&rt).unwrap();
        context.with(|ctx| {
            let mut shapes = super::Shapes::new(ctx.as_raw().as_ptr());
            for text in [r#"{"Ã©": 1}"#, r#"{"é": 2}"#, r#"{"Ã¼x": 1}"#, r#"{"üx": 2}"#, r#"{"æ¥": 3}"#, r#"{"日": 4}"#] {
                let theirs = ctx.json_parse(text.to_string()).ok().map(|v| show(&ctx, v));
                assert_eq!(super::parse(&ctx, text, None).map(|v| show(&ctx, v)), theirs, "{text}");
                assert_eq!(super::parse(&ctx, text, Some(&mut shapes)).map(|v| show(&ctx, v)), theirs, "{text} with known shapes");
            }
        });
    }

    #[test]
    fn what_the_parser_declines_is_left_to_json_parse() {
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        for text in [
            r#"{"lone": "\ud800"}"#,
            r#"{"lone": "\udc00"}"#,
            r#"{"lone": "\ud800\u0041"}"#,
            "{\"a\": 1,}",
            "nope",
            "{} extra",
            deep.as_str(),
            "[1,]",
            "[,1]",
            "[1,,2]",
            "{,\"a\":1}",
            // Control bytes between tokens are not whitespace (only space, \t, \n, \r are).
            "[1,\u{b}2]",
            "{\"a\":1\u{c}}",
            "\u{0}1",
            "[1\u{1f}]",
            "01",
            "1.",
            ".5",
            "+1",
            "1e",
            "[",
            "{\"a\" 1}",
            r#""\x""#,
            "\"tab\there\"",
            "nul",
            "truex",
            r#""\u00""#,
            "",
            " ",
            "\"unterminated",
        ] {
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
