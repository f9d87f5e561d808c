//! What a plugin hands back, read as data: the JSON text of an event written by walking the
//! QuickJS value from Rust.
//!
//! The walk takes only what an event is made of — plain objects (of any prototype) and arrays,
//! their own enumerable data properties, strings, numbers, booleans, null — and never runs
//! plugin code: no getter, no `toJSON`, no Proxy trap, no prototype lookup. Anything else is
//! refused with the path to it ([`Refusal`]): accessors, Proxies, functions, BigInts, cycles,
//! class instances with internal state (Map, Set, typed arrays, boxed primitives, …), nesting
//! deeper than the limit, or text longer than the limit. Two exceptions follow `JSON.stringify`
//! where it needs no plugin code: `undefined` and symbols are left out of objects and written
//! as `null` in arrays, and a `Date` is written as its ISO time, read from its internal time
//! value (`fastpath`: no call, so no interrupt can throw and run the plugin's
//! `Error.prepareStackTrace` in the middle of the walk). A hole in an array is written as
//! `null` without looking at `Array.prototype` (where `JSON.stringify` would find an inherited
//! element a plugin put there).
//!
//! For plain data the text is exactly `JSON.stringify`'s (a differential test checks it): keys
//! in JavaScript's property order, numbers as JavaScript prints them, strings escaped the same
//! way (lone surrogates as `\uXXXX`). The work is bounded by a budget, not by the plugin: every
//! value visited and every own key listed counts, and past `max_bytes` units the read is
//! refused (a small object with 200,000 `undefined` properties, referenced 300,000 times, writes
//! almost nothing but would take minutes to walk; every entry of an object's shape counts,
//! hidden ones too, since listing the keys walks them all).

#![allow(unsafe_code)] // QuickJS's C API: every call below is commented where it owns a value.

use std::fmt;
use std::ops::Range;

use rquickjs::{Ctx, Value, qjs};

use super::fastpath;

/// Integral doubles below this print as integers (2^53: every such double is exact in i64).
const EXACT_INTEGER: f64 = 9_007_199_254_740_992.0;
const CLASS_OBJECT: qjs::JSClassID = 1;
const CLASS_ARRAY: qjs::JSClassID = 2;
const CLASS_ERROR: qjs::JSClassID = 3;
const CLASS_NUMBER: qjs::JSClassID = 4;
const CLASS_STRING: qjs::JSClassID = 5;
const CLASS_BOOLEAN: qjs::JSClassID = 6;

/// What the read may take, and what it checks.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Rules {
    /// Longest text.
    pub max_bytes: usize,
    /// Deepest nesting (the value itself is level 1).
    pub max_depth: usize,
    /// For an event: its team. The top-level `team_id` must be this number; when it is not (or
    /// is missing) this is written in its place and [`Read::team_changed`] says so.
    pub team: Option<i64>,
}

/// A value read as JSON text.
#[derive(Debug)]
pub(crate) struct Read {
    /// The JSON text.
    pub json: String,
    /// The top-level `team_id` was not the event's team (see [`Rules::team`]).
    pub team_changed: bool,
    /// For an event: where its top-level `properties` value is in `json`, when it has one (so
    /// that `marks` can write the `$plugins_*` lists without reading the text again).
    pub properties: Option<Range<usize>>,
}

/// Why a value cannot be read as data: where, and what was found there.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Refusal {
    /// Path from the value, e.g. `event.properties.tags[2]`.
    pub path: String,
    /// What is there, e.g. `an accessor (getter or setter)`.
    pub what: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} is {}", self.path, self.what)
    }
}

/// Reads an event: `value` must be a plain object; the top-level `team_id` is checked (and
/// restored) when `rules.team` is set, and `properties`, when present, must be an object or
/// null.
pub(crate) fn read_event(ctx: &Ctx<'_>, value: &Value<'_>, rules: &Rules) -> Result<Read, Refusal> {
    let mut w = Walker::new(ctx.as_raw().as_ptr(), rules);
    w.event = true;
    let v = value.as_raw();
    let class = object_class(v);
    if class != Some(CLASS_OBJECT) {
        return Err(Refusal { path: "event".into(), what: describe(w.ctx, v) });
    }
    let result = w.value(v, 1);
    w.finish(result)
}

/// The walk met something it does not take; the walker knows where.
struct Stop(String);

enum Wrote {
    Text,
    /// `undefined` or a symbol: left out of objects, `null` in arrays.
    Nothing,
}

/// One step of the path from the root.
#[derive(Clone, Copy)]
enum Step {
    Key(qjs::JSAtom),
    Index(u32),
}

struct Walker<'r> {
    ctx: *mut qjs::JSContext,
    rules: &'r Rules,
    out: Vec<u8>,
    /// Objects being written (for cycles) and the path to the current value.
    open: Vec<*mut std::ffi::c_void>,
    path: Vec<Step>,
    team_changed: bool,
    /// Where the top-level `properties` value was written in `out` (see [`Read::properties`]).
    properties: Option<Range<usize>>,
    /// Reading an event (the top-level rules apply).
    event: bool,
    /// Work done so far (values visited, keys listed); bounded by `rules.max_bytes`.
    work: usize,
    /// Interned `team_id` and `properties`.
    team_atom: fastpath::Atom,
    properties_atom: fastpath::Atom,
    /// Keys and (borrowed) values of the plain objects being written, read from their shapes
    /// (`fastpath`); each object uses the top and gives it back.
    atoms: Vec<qjs::JSAtom>,
    values: Vec<qjs::JSValue>,
    /// A string's (or a rope piece's) UTF-8 when it is not ASCII, made here (the host's memory,
    /// bounded by the size limit) rather than in the plugin's runtime.
    utf8: Vec<u8>,
}

impl<'r> Walker<'r> {
    fn new(ctx: *mut qjs::JSContext, rules: &'r Rules) -> Self {
        let (team_atom, properties_atom) = (fastpath::Atom::new(ctx, c"team_id"), fastpath::Atom::new(ctx, c"properties"));
        Walker {
            ctx,
            rules,
            out: Vec::with_capacity(4096),
            open: Vec::new(),
            path: Vec::new(),
            team_changed: false,
            properties: None,
            event: false,
            work: 0,
            team_atom,
            properties_atom,
            // Room for an event's usual objects at once (each level takes the top).
            atoms: Vec::with_capacity(256),
            values: Vec::with_capacity(256),
            utf8: Vec::new(),
        }
    }

    fn finish(mut self, result: Result<Wrote, Stop>) -> Result<Read, Refusal> {
        match result {
            Ok(_) => {
                let out = std::mem::take(&mut self.out);
                let json = String::from_utf8(out).expect("the walker emits UTF-8 only");
                Ok(Read { json, team_changed: self.team_changed, properties: self.properties.take() })
            }
            Err(Stop(what)) => Err(Refusal { path: self.render_path(), what }),
        }
    }

    fn render_path(&self) -> String {
        let mut out = String::from("event");
        for step in &self.path {
            match *step {
                Step::Index(i) => out.push_str(&format!("[{i}]")),
                Step::Key(atom) => {
                    let key = atom_text(self.ctx, atom).unwrap_or_else(|| "?".into());
                    let plain = !key.is_empty()
                        && !key.starts_with(|c: char| c.is_ascii_digit())
                        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$');
                    if plain {
                        out.push('.');
                        out.push_str(&key);
                    } else {
                        out.push_str(&format!("[{}]", serde_json::Value::String(key)));
                    }
                }
            }
        }
        out
    }

    fn check_size(&self) -> Result<(), Stop> {
        self.fits(0)
    }

    /// Whether the text still fits once `more` bytes are added.
    fn fits(&self, more: usize) -> Result<(), Stop> {
        if self.out.len().saturating_add(more) > self.rules.max_bytes {
            return Err(Stop(format!("past the size limit: the text would be longer than {} bytes", self.rules.max_bytes)));
        }
        Ok(())
    }

    /// Counts `units` of work; past the budget the read stops.
    fn charge(&mut self, units: usize) -> Result<(), Stop> {
        self.work = self.work.saturating_add(units);
        if self.work > self.rules.max_bytes {
            return Err(Stop(format!("past the work limit: reading it visits more than {} values and keys", self.rules.max_bytes)));
        }
        Ok(())
    }

    fn value(&mut self, v: qjs::JSValue, depth: usize) -> Result<Wrote, Stop> {
        self.charge(1)?;
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
            qjs::JS_TAG_FLOAT64 => self.float(unsafe { qjs::JS_VALUE_GET_FLOAT64(v) })?,
            qjs::JS_TAG_STRING | qjs::JS_TAG_STRING_ROPE => self.string_bytes(v, true)?,
            qjs::JS_TAG_OBJECT => self.object(v, depth)?,
            qjs::JS_TAG_BIG_INT | qjs::JS_TAG_SHORT_BIG_INT => return Err(Stop("a BigInt (JSON has no BigInt)".into())),
            _ => return Err(Stop("a value of an internal type".into())),
        }
        self.check_size()?;
        Ok(Wrote::Text)
    }

    fn float(&mut self, d: f64) -> Result<(), Stop> {
        if !d.is_finite() {
            self.out.extend_from_slice(b"null");
        } else if d.fract() == 0.0 && d.abs() < EXACT_INTEGER {
            // Also turns -0 into "0", as JSON.stringify does.
            self.out.extend_from_slice(itoa_i64(d as i64, &mut [0; 20]));
        } else {
            // Fractions and huge numbers: QuickJS's own Number-to-string, for exact JS digits.
            // A primitive number's conversion runs no JavaScript.
            // SAFETY: JS_ToString returns a new string value, freed after it is copied.
            let s = unsafe { qjs::JS_ToString(self.ctx, qjs::JS_NewFloat64(d)) };
            if unsafe { qjs::JS_IsException(s) } {
                return Err(self.out_of_memory());
            }
            let r = self.string_bytes(s, false);
            unsafe { qjs::JS_FreeValue(self.ctx, s) };
            r?;
        }
        Ok(())
    }

    /// Appends the UTF-8 of string value `s`, JSON-quoted when `quote`. Nothing is allocated in
    /// the plugin's runtime: the characters are read where they lie (a rope's from its pieces:
    /// flattening one would make a copy that QuickJS keeps inside a rope with other references)
    /// and encoded here, lone surrogates as 3-byte sequences that `quote_into` escapes.
    fn string_bytes(&mut self, s: qjs::JSValue, quote: bool) -> Result<(), Stop> {
        // Each character takes a byte at least: a string that cannot fit is refused before it
        // is encoded (up to three bytes a character).
        // SAFETY: reads the length of a live string or rope.
        self.fits(usize::try_from(unsafe { fastpath::JS_PF_StringLength(s) }).unwrap_or(0))?;
        self.utf8.clear();
        match string_chars(s) {
            Some(Chars::Latin1(bytes)) if bytes.is_ascii() => {
                // ASCII is its own UTF-8.
                if quote {
                    quote_into(&mut self.out, bytes);
                } else {
                    self.out.extend_from_slice(bytes);
                }
                return Ok(());
            }
            Some(Chars::Latin1(bytes)) => latin1_to_utf8(bytes, &mut self.utf8),
            Some(Chars::Utf16(units)) => {
                let mut pending = None;
                utf16_to_wtf8(units, &mut pending, &mut self.utf8);
                utf16_to_wtf8(&[], &mut pending, &mut self.utf8);
            }
            None => {
                // A rope, piece by piece, each written (and the size checked) before the next
                // is encoded; a surrogate pair split between two pieces is one character.
                if quote {
                    self.out.push(b'"');
                }
                let mut pending = None;
                if !self.rope_pieces(s, quote, &mut pending, 0)? {
                    return Err(Stop("a value of an internal type".into()));
                }
                self.utf8.clear();
                utf16_to_wtf8(&[], &mut pending, &mut self.utf8);
                self.write_utf8(quote);
                if quote {
                    self.out.push(b'"');
                }
                return self.check_size();
            }
        }
        if quote {
            quote_into(&mut self.out, &self.utf8);
        } else {
            self.out.extend_from_slice(&self.utf8);
        }
        Ok(())
    }

    /// Appends `self.utf8`, escaped (without quotes) when `quote`.
    fn write_utf8(&mut self, quote: bool) {
        if quote {
            escape_into(&mut self.out, &self.utf8);
        } else {
            self.out.extend_from_slice(&self.utf8);
        }
    }

    /// Writes the pieces of rope (or string) `s` in order; `pending` carries a high surrogate
    /// that ended the previous piece. False for a value that is neither (or a rope deeper
    /// than QuickJS makes them).
    fn rope_pieces(&mut self, s: qjs::JSValue, quote: bool, pending: &mut Option<u16>, depth: usize) -> Result<bool, Stop> {
        self.utf8.clear();
        match string_chars(s) {
            // An empty piece (the right half of a rope QuickJS flattened) may sit between the
            // two halves of a pair: it changes nothing.
            Some(Chars::Latin1([])) | Some(Chars::Utf16([])) => return Ok(true),
            Some(Chars::Latin1(bytes)) => {
                utf16_to_wtf8(&[], pending, &mut self.utf8);
                latin1_to_utf8(bytes, &mut self.utf8);
            }
            Some(Chars::Utf16(units)) => utf16_to_wtf8(units, pending, &mut self.utf8),
            None => {
                let (mut left, mut right) = (qjs::JS_MKVAL(qjs::JS_TAG_UNDEFINED, 0), qjs::JS_MKVAL(qjs::JS_TAG_UNDEFINED, 0));
                // SAFETY: the halves of a live rope, borrowed while it lives (QuickJS keeps
                // ropes at most 60 deep).
                if depth > 64 || unsafe { fastpath::JS_PF_RopeParts(s, &mut left, &mut right) } == 0 {
                    return Ok(false);
                }
                return Ok(self.rope_pieces(left, quote, pending, depth + 1)? && self.rope_pieces(right, quote, pending, depth + 1)?);
            }
        }
        self.write_utf8(quote);
        self.check_size()?;
        Ok(true)
    }

    fn object(&mut self, v: qjs::JSValue, depth: usize) -> Result<(), Stop> {
        let class = unsafe { qjs::JS_GetClassID(v) };
        if unsafe { qjs::JS_IsDate(v) } {
            return self.date(v);
        }
        if class != CLASS_OBJECT && class != CLASS_ARRAY {
            return Err(Stop(describe(self.ctx, v)));
        }
        if depth > self.rules.max_depth {
            return Err(Stop(format!("nested deeper than {} levels", self.rules.max_depth)));
        }
        let ptr = unsafe { qjs::JS_VALUE_GET_PTR(v) };
        if self.open.contains(&ptr) {
            return Err(Stop("the object that contains it (a cycle)".into()));
        }
        self.open.push(ptr);
        let result = if class == CLASS_ARRAY { self.array(v, depth) } else { self.fields(v, depth) };
        self.open.pop();
        result
    }

    fn date(&mut self, v: qjs::JSValue) -> Result<(), Stop> {
        let mut ms = f64::NAN;
        // SAFETY: reads the time value stored in a Date object; no call, nothing allocated.
        if unsafe { fastpath::JS_PF_DateValue(v, &mut ms) } == 0 {
            return Err(Stop("a Date".into()));
        }
        match iso_time(ms) {
            Some(text) => quote_into(&mut self.out, text.as_bytes()),
            None => self.out.extend_from_slice(b"null"),
        }
        Ok(())
    }

    fn array(&mut self, v: qjs::JSValue, depth: usize) -> Result<(), Stop> {
        let mut len: i64 = 0;
        // SAFETY: an Array's length is an own data property; reading it runs no JavaScript.
        if unsafe { qjs::JS_GetLength(self.ctx, v, &mut len) } < 0 {
            return Err(self.out_of_memory());
        }
        let len = len.clamp(0, u32::MAX as i64) as u32;
        let mut elements: *mut qjs::JSValue = std::ptr::null_mut();
        // SAFETY: reads where a dense array keeps its elements (-1 when it keeps them as
        // properties); nothing below changes the array (no JavaScript runs), so the pointer
        // stays valid for the loop.
        let dense = unsafe { fastpath::JS_PF_ArrayElements(v, &mut elements) };
        self.out.push(b'[');
        for i in 0..len {
            if i > 0 {
                self.out.push(b',');
            }
            self.path.push(Step::Index(i));
            let item = if dense >= 0 {
                // Past the stored elements are holes.
                (i64::from(i) < dense).then(|| self.value(unsafe { *elements.add(i as usize) }, depth + 1)).transpose()?
            } else {
                let atom = unsafe { qjs::JS_NewAtomUInt32(self.ctx, i) };
                if atom == 0 {
                    return Err(self.out_of_memory());
                }
                let item = self.own_data(v, atom, depth);
                unsafe { qjs::JS_FreeAtom(self.ctx, atom) };
                item?
            };
            match item {
                // A hole (no own property) reads as undefined, as in JSON.stringify.
                None | Some(Wrote::Nothing) => self.out.extend_from_slice(b"null"),
                Some(Wrote::Text) => {}
            }
            self.path.pop();
            self.check_size()?;
        }
        self.out.push(b']');
        Ok(())
    }

    fn fields(&mut self, v: qjs::JSValue, depth: usize) -> Result<(), Stop> {
        let start = self.atoms.len();
        if let Some((len, entries)) = self.plain_fields(v) {
            let result = self.charge(entries).and_then(|()| self.write_fields(v, Keys::Plain { start, len }, depth));
            self.atoms.truncate(start);
            self.values.truncate(start);
            return result;
        }
        let mut tab: *mut qjs::JSPropertyEnum = std::ptr::null_mut();
        let mut len: u32 = 0;
        let flags = (qjs::JS_GPN_STRING_MASK | qjs::JS_GPN_ENUM_ONLY) as i32;
        // SAFETY: on success `tab` holds `len` atoms we own; JS_FreePropertyEnum frees them all.
        // On a plain object (class checked by the caller) this runs no JavaScript.
        if unsafe { qjs::JS_GetOwnPropertyNames(self.ctx, &mut tab, &mut len, v, flags) } < 0 {
            return Err(self.out_of_memory());
        }
        let keys = unsafe { std::slice::from_raw_parts(tab, len as usize) };
        // Listing walked every entry of the shape, hidden ones included.
        let entries = usize::try_from(unsafe { fastpath::JS_PF_ShapeEntries(v) }).unwrap_or(0).max(len as usize);
        let result = self.charge(entries).and_then(|()| self.write_fields(v, Keys::Listed(keys), depth));
        unsafe { qjs::JS_FreePropertyEnum(self.ctx, tab, len) };
        result
    }

    /// The own enumerable string-keyed data properties of plain object `v` on top of the
    /// stacks (`fastpath::data_fields`); `None` when it needs the generic path. The values are
    /// borrowed from `v`, which nothing changes while they are read (no JavaScript runs during
    /// the walk).
    fn plain_fields(&mut self, v: qjs::JSValue) -> Option<(usize, usize)> {
        fastpath::data_fields(self.ctx, v, &mut self.atoms, &mut self.values)
    }

    fn write_fields(&mut self, v: qjs::JSValue, keys: Keys<'_>, depth: usize) -> Result<(), Stop> {
        let top = depth == 1 && self.event;
        let team_rule = top && self.rules.team.is_some();
        let mut saw_team = false;
        self.out.push(b'{');
        let mut first = true;
        for i in 0..keys.len() {
            let (atom, plain) = match keys {
                Keys::Listed(keys) => (keys[i].atom, None),
                Keys::Plain { start, .. } => (self.atoms[start + i], Some(self.values[start + i])),
            };
            let team = team_rule && atom == self.team_atom.atom;
            if top && atom == self.properties_atom.atom {
                self.path.push(Step::Key(atom));
                self.check_properties(v, atom)?;
                self.path.pop();
            }
            // The value is known before its key is written: a key whose value is left out
            // (undefined, a symbol, a property no longer there) is never written, so however
            // long it is and however often it is met, it costs one unit of work, as in `copy`.
            let mut owned = None;
            let value = match plain {
                _ if team => None,
                Some(value) => Some(value),
                None => match self.descriptor(v, atom)? {
                    None => continue,
                    Some(Desc::Accessor) => {
                        self.path.push(Step::Key(atom));
                        return Err(Stop("an accessor (getter or setter): events are plain data".into()));
                    }
                    Some(Desc::Data(value)) => {
                        owned = Some(value);
                        owned
                    }
                },
            };
            if let Some(value) = value
                && matches!(unsafe { qjs::JS_VALUE_GET_TAG(value) }, qjs::JS_TAG_UNDEFINED | qjs::JS_TAG_SYMBOL)
            {
                // What `value` charges for a value it leaves out.
                let charged = self.charge(1);
                if let Some(owned) = owned {
                    // SAFETY: the descriptor's reference, ours to free.
                    unsafe { qjs::JS_FreeValue(self.ctx, owned) };
                }
                charged?;
                continue;
            }
            let rollback = self.out.len();
            if !first {
                self.out.push(b',');
            }
            let mut value_start = 0;
            let wrote = self.key(atom).and_then(|()| {
                self.out.push(b':');
                value_start = self.out.len();
                self.path.push(Step::Key(atom));
                let wrote = match value {
                    None => {
                        saw_team = true;
                        self.team_field(v, atom)
                    }
                    Some(value) => self.value(value, depth + 1),
                };
                if wrote.is_ok() {
                    self.path.pop();
                }
                wrote
            });
            if let Some(owned) = owned {
                // SAFETY: the descriptor's reference, ours to free.
                unsafe { qjs::JS_FreeValue(self.ctx, owned) };
            }
            match wrote? {
                Wrote::Text => {
                    first = false;
                    if top && atom == self.properties_atom.atom {
                        self.properties = Some(value_start..self.out.len());
                    }
                }
                Wrote::Nothing => self.out.truncate(rollback),
            }
            self.check_size()?;
        }
        if team_rule && !saw_team {
            // `returned.team_id !== team_id`: PostHog wrote the team back onto the object.
            self.team_changed = true;
            if !first {
                self.out.push(b',');
            }
            self.out.extend_from_slice(b"\"team_id\":");
            let team = self.rules.team.expect("checked by `team_rule`");
            self.out.extend_from_slice(itoa_i64(team, &mut [0; 20]));
        }
        self.out.push(b'}');
        Ok(())
    }

    /// Writes the top-level `team_id`: the event's team, whatever the plugin left there.
    fn team_field(&mut self, v: qjs::JSValue, atom: qjs::JSAtom) -> Result<Wrote, Stop> {
        let team = self.rules.team.expect("only called for events");
        let desc = self.descriptor(v, atom)?;
        let same = match desc {
            Some(Desc::Data(value)) => {
                let same = is_team(value, team);
                unsafe { qjs::JS_FreeValue(self.ctx, value) };
                same
            }
            Some(Desc::Accessor) => return Err(Stop("an accessor (getter or setter): events are plain data".into())),
            None => false,
        };
        if !same {
            self.team_changed = true;
        }
        self.out.extend_from_slice(itoa_i64(team, &mut [0; 20]));
        Ok(Wrote::Text)
    }

    /// The top-level `properties` of an event must be an object (or null, or absent).
    fn check_properties(&mut self, v: qjs::JSValue, atom: qjs::JSAtom) -> Result<(), Stop> {
        if let Some(Desc::Data(value)) = self.descriptor(v, atom)? {
            let ok = may_be_properties(value);
            let what = if ok { String::new() } else { describe(self.ctx, value) };
            unsafe { qjs::JS_FreeValue(self.ctx, value) };
            if !ok {
                return Err(Stop(format!("{what}; an event's properties must be an object")));
            }
        }
        Ok(())
    }

    /// Writes the own data property `atom` of `v`; `None` when there is none.
    fn own_data(&mut self, v: qjs::JSValue, atom: qjs::JSAtom, depth: usize) -> Result<Option<Wrote>, Stop> {
        match self.descriptor(v, atom)? {
            None => Ok(None),
            Some(Desc::Accessor) => Err(Stop("an accessor (getter or setter): events are plain data".into())),
            Some(Desc::Data(value)) => {
                let wrote = self.value(value, depth + 1);
                unsafe { qjs::JS_FreeValue(self.ctx, value) };
                wrote.map(Some)
            }
        }
    }

    /// The own property `atom` of plain object or array `v`, without running any getter.
    fn descriptor(&mut self, v: qjs::JSValue, atom: qjs::JSAtom) -> Result<Option<Desc>, Stop> {
        let mut desc = qjs::JSPropertyDescriptor {
            flags: 0,
            value: qjs::JS_MKVAL(qjs::JS_TAG_UNDEFINED, 0),
            getter: qjs::JS_MKVAL(qjs::JS_TAG_UNDEFINED, 0),
            setter: qjs::JS_MKVAL(qjs::JS_TAG_UNDEFINED, 0),
        };
        // SAFETY: on a plain object or array this looks the property up in its shape (no
        // exotic behaviour, no JavaScript). On 1 the descriptor owns one reference to each of
        // value, getter and setter (undefined when absent); all are freed here or by the caller.
        let found = unsafe { qjs::JS_GetOwnProperty(self.ctx, &mut desc, v, atom) };
        if found < 0 {
            return Err(self.out_of_memory());
        }
        if found == 0 {
            return Ok(None);
        }
        if desc.flags & qjs::JS_PROP_GETSET as i32 != 0 {
            unsafe {
                qjs::JS_FreeValue(self.ctx, desc.getter);
                qjs::JS_FreeValue(self.ctx, desc.setter);
                qjs::JS_FreeValue(self.ctx, desc.value);
            }
            return Ok(Some(Desc::Accessor));
        }
        Ok(Some(Desc::Data(desc.value)))
    }

    fn key(&mut self, atom: qjs::JSAtom) -> Result<(), Stop> {
        let mut len = 0usize;
        // SAFETY: a pointer to the key's own characters (no copy), valid while the atom lives
        // (the object being read holds it).
        let latin1 = unsafe { fastpath::JS_PF_AtomLatin1(self.ctx, atom, &mut len) };
        if !latin1.is_null() {
            let bytes = unsafe { std::slice::from_raw_parts(latin1, len) };
            if bytes.is_ascii() {
                self.fits(len)?;
                quote_into(&mut self.out, bytes);
                return Ok(());
            }
        }
        // Other keys as the string they are (a string key is its own string: nothing is made),
        // written as strings are, the size limit checked before their UTF-8 is made.
        // SAFETY: a new reference to the key's string, freed below.
        let key = unsafe { qjs::JS_AtomToString(self.ctx, atom) };
        if unsafe { qjs::JS_IsException(key) } {
            return Err(self.out_of_memory());
        }
        let wrote = self.string_bytes(key, true);
        unsafe { qjs::JS_FreeValue(self.ctx, key) };
        wrote
    }

    /// QuickJS could not allocate (a heap at its limit): drop its pending exception and stop.
    fn out_of_memory(&self) -> Stop {
        drop_pending_exception(self.ctx);
        Stop("unreadable: the plugin's heap is out of memory".into())
    }
}

/// The keys of an object being written: listed by `JS_GetOwnPropertyNames` (each looked up
/// again for its descriptor), or read from its shape with their values (`Walker::plain_fields`,
/// on the walker's stacks from `start`).
#[derive(Clone, Copy)]
enum Keys<'k> {
    Listed(&'k [qjs::JSPropertyEnum]),
    Plain { start: usize, len: usize },
}

impl Keys<'_> {
    fn len(&self) -> usize {
        match self {
            Keys::Listed(keys) => keys.len(),
            Keys::Plain { len, .. } => *len,
        }
    }
}

/// An own property: its value (one reference, the caller's to free), or the fact that it is an
/// accessor.
enum Desc {
    Data(qjs::JSValue),
    Accessor,
}

/// Whether `value` is the number `team` (a top-level `team_id` left as it was).
pub(super) fn is_team(value: qjs::JSValue, team: i64) -> bool {
    // SAFETY: tag tests and reads of a live value.
    match unsafe { qjs::JS_VALUE_GET_TAG(value) } {
        qjs::JS_TAG_INT => i64::from(unsafe { qjs::JS_VALUE_GET_INT(value) }) == team,
        qjs::JS_TAG_FLOAT64 => (unsafe { qjs::JS_VALUE_GET_FLOAT64(value) }) == team as f64,
        _ => false,
    }
}

/// Whether `value` may be an event's top-level `properties`: a plain object, null or undefined.
pub(super) fn may_be_properties(value: qjs::JSValue) -> bool {
    // SAFETY: a tag test on a live value.
    let tag = unsafe { qjs::JS_VALUE_GET_TAG(value) };
    matches!(tag, qjs::JS_TAG_NULL | qjs::JS_TAG_UNDEFINED) || object_class(value) == Some(CLASS_OBJECT)
}

/// The class of an object value; `None` for primitives.
fn object_class(v: qjs::JSValue) -> Option<qjs::JSClassID> {
    // SAFETY: reading the tag and class id of a live value.
    (unsafe { qjs::JS_VALUE_GET_TAG(v) } == qjs::JS_TAG_OBJECT).then(|| unsafe { qjs::JS_GetClassID(v) })
}

/// What a value that is not plain data is, for an error message.
fn describe(ctx: *mut qjs::JSContext, v: qjs::JSValue) -> String {
    // SAFETY: type checks on a live value; none runs JavaScript.
    unsafe {
        match qjs::JS_VALUE_GET_TAG(v) {
            qjs::JS_TAG_INT | qjs::JS_TAG_FLOAT64 => return "a number".into(),
            qjs::JS_TAG_STRING | qjs::JS_TAG_STRING_ROPE => return "a string".into(),
            qjs::JS_TAG_BOOL => return "a boolean".into(),
            qjs::JS_TAG_NULL => return "null".into(),
            qjs::JS_TAG_UNDEFINED => return "undefined".into(),
            qjs::JS_TAG_SYMBOL => return "a symbol".into(),
            qjs::JS_TAG_BIG_INT | qjs::JS_TAG_SHORT_BIG_INT => return "a BigInt (JSON has no BigInt)".into(),
            qjs::JS_TAG_OBJECT => {}
            _ => return "a value of an internal type".into(),
        }
        if qjs::JS_IsProxy(v) {
            return "a Proxy: events are plain data".into();
        }
        if qjs::JS_IsFunction(ctx, v) {
            return "a function".into();
        }
        let what = match qjs::JS_GetClassID(v) {
            CLASS_ARRAY => "an array",
            CLASS_ERROR => "an Error",
            CLASS_NUMBER => "a Number object (boxed)",
            CLASS_STRING => "a String object (boxed)",
            CLASS_BOOLEAN => "a Boolean object (boxed)",
            _ if qjs::JS_IsMap(v) => "a Map",
            _ if qjs::JS_IsSet(v) => "a Set",
            _ if qjs::JS_IsWeakMap(v) || qjs::JS_IsWeakSet(v) || qjs::JS_IsWeakRef(v) => "a weak collection",
            _ if qjs::JS_IsRegExp(v) => "a RegExp",
            _ if qjs::JS_IsPromise(v) => "a Promise (was it awaited?)",
            _ if qjs::JS_IsArrayBuffer(v) || qjs::JS_IsDataView(v) || qjs::JS_GetTypedArrayType(v) >= 0 => {
                "binary data (a typed array or buffer)"
            }
            _ if qjs::JS_IsDate(v) => "a Date",
            _ => "an object with internal state (not a plain object)",
        };
        what.into()
    }
}

/// The text of an atom (a property key).
fn atom_text(ctx: *mut qjs::JSContext, atom: qjs::JSAtom) -> Option<String> {
    // SAFETY: a new reference to the key's string (made only for an integer key), freed below.
    let key = unsafe { qjs::JS_AtomToString(ctx, atom) };
    if unsafe { qjs::JS_IsException(key) } {
        drop_pending_exception(ctx);
        return None;
    }
    // A path names its keys by their first characters: a key may be as long as the plugin's
    // heap allows.
    let text = match string_chars(key) {
        Some(Chars::Latin1(bytes)) => bytes.iter().take(MAX_PATH_KEY + 1).map(|&b| char::from(b)).collect(),
        Some(Chars::Utf16(units)) => {
            char::decode_utf16(units.iter().copied()).take(MAX_PATH_KEY + 1).map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER)).collect()
        }
        None => String::new(),
    };
    unsafe { qjs::JS_FreeValue(ctx, key) };
    let mut text: String = text;
    if text.chars().count() > MAX_PATH_KEY {
        text = text.chars().take(MAX_PATH_KEY).collect::<String>() + "…";
    }
    Some(text)
}

/// Characters of a key a refusal's path shows.
const MAX_PATH_KEY: usize = 256;

/// Drops the exception a failed QuickJS call left pending on `ctx`, if any.
pub(super) fn drop_pending_exception(ctx: *mut qjs::JSContext) {
    // SAFETY: JS_GetException hands over the pending exception (or undefined); freed at once.
    unsafe { qjs::JS_FreeValue(ctx, qjs::JS_GetException(ctx)) };
}

/// `Date.prototype.toISOString` of a time value in ms since the epoch; `None` for an invalid
/// date (NaN or beyond ±8.64e15 ms), which `toJSON` writes as `null`.
pub(crate) fn iso_time(ms: f64) -> Option<String> {
    if !ms.is_finite() || ms.abs() > 8.64e15 {
        return None;
    }
    let ms = ms.trunc() as i64;
    let in_day = ms.rem_euclid(86_400_000);
    let (year, month, day) = super::log::civil_from_days(ms.div_euclid(86_400_000));
    let year_text = if (0..=9999).contains(&year) {
        format!("{year:04}")
    } else if year < 0 {
        format!("-{:06}", -year)
    } else {
        format!("+{year:06}")
    };
    let (h, m, s, milli) = (in_day / 3_600_000, in_day / 60_000 % 60, in_day / 1000 % 60, in_day % 1000);
    Some(format!("{year_text}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{milli:03}Z"))
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

/// The characters of a string that is not a rope, where they lie.
enum Chars<'a> {
    Latin1(&'a [u8]),
    Utf16(&'a [u16]),
}

/// The characters of string `s`, borrowed (valid while `s` lives and nothing runs in its
/// runtime); `None` for a rope or a value that is not a string.
fn string_chars<'a>(s: qjs::JSValue) -> Option<Chars<'a>> {
    let mut chars: *const std::ffi::c_void = std::ptr::null();
    let mut wide = 0;
    // SAFETY: borrows the characters of a live string that is not a rope (-1 otherwise); the
    // walk runs no JavaScript, so they stay where they are while they are read.
    let n = usize::try_from(unsafe { fastpath::JS_PF_StringChars(s, &mut chars, &mut wide) }).ok()?;
    Some(if wide == 0 {
        Chars::Latin1(unsafe { std::slice::from_raw_parts(chars.cast::<u8>(), n) })
    } else {
        Chars::Utf16(unsafe { std::slice::from_raw_parts(chars.cast::<u16>(), n) })
    })
}

/// Latin-1 characters as UTF-8.
pub(super) fn latin1_to_utf8(bytes: &[u8], out: &mut Vec<u8>) {
    out.reserve(bytes.len() * 2);
    for &b in bytes {
        if b < 0x80 {
            out.push(b);
        } else {
            out.extend_from_slice(&[0xc0 | (b >> 6), 0x80 | (b & 0x3f)]);
        }
    }
}

/// UTF-16 code units as UTF-8, a lone surrogate as the 3-byte sequence of its unit (what
/// QuickJS's `JS_ToCStringLen2` writes without CESU-8, and `quote_into` escapes). `pending` is
/// a high surrogate that ended the previous piece of the same string: it pairs with a low one
/// starting `units`, else it is written lone. A high surrogate ending `units` is held back in
/// `pending` for the next piece, unless there is none (`units` empty: everything is written).
fn utf16_to_wtf8(units: &[u16], pending: &mut Option<u16>, out: &mut Vec<u8>) {
    let mut units = units;
    let mut lead: &[u16] = &[];
    let mut joined = [0u16; 2];
    if let Some(high) = pending.take() {
        match units.first() {
            Some(&low) if (0xdc00..0xe000).contains(&low) => {
                joined = [high, low];
                lead = &joined[..];
                units = &units[1..];
            }
            _ => {
                joined[0] = high;
                lead = &joined[..1];
            }
        }
    }
    let mut end = units.len();
    if let Some(&last) = units.last()
        && (0xd800..0xdc00).contains(&last)
    {
        *pending = Some(last);
        end -= 1;
    }
    wtf8(lead, out);
    wtf8(&units[..end], out);
}

fn wtf8(units: &[u16], out: &mut Vec<u8>) {
    out.reserve(units.len() * 3);
    for c in char::decode_utf16(units.iter().copied()) {
        match c {
            Ok(c) => {
                let mut buf = [0; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
            Err(lone) => {
                let u = lone.unpaired_surrogate();
                out.extend_from_slice(&[0xe0 | (u >> 12) as u8, 0x80 | ((u >> 6) & 0x3f) as u8, 0x80 | (u & 0x3f) as u8]);
            }
        }
    }
}

/// Writes `s` (UTF-8, possibly with lone surrogates as 3-byte sequences) as a JSON string the
/// way `JSON.stringify` does: `\"`, `\\`, `\b\f\n\r\t`, other controls and lone surrogates as
/// lowercase `\uXXXX`; everything else as is.
pub(crate) fn quote_into(out: &mut Vec<u8>, s: &[u8]) {
    out.reserve(s.len() + 2);
    out.push(b'"');
    escape_into(out, s);
    out.push(b'"');
}

/// [`quote_into`] without the quotes: `s` escaped.
fn escape_into(out: &mut Vec<u8>, s: &[u8]) {
    let mut start = 0;
    let mut i = 0;
    while i < s.len() {
        // Plain ASCII (no quote, backslash or control byte) eight bytes at a time.
        while let Some(chunk) = s.get(i..i + 8) {
            let word = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
            if crate::event::scan::special_bytes(word) | word & 0x8080_8080_8080_8080 != 0 {
                break;
            }
            i += 8;
        }
        let Some(&b) = s.get(i) else { break };
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

    #[test]
    fn quoting_finds_every_special_byte_wherever_it_falls_in_a_word() {
        // Plain ASCII is skipped eight bytes at a time: each kind of byte that needs care, at
        // every offset around word boundaries, quoted as serde_json quotes valid UTF-8.
        for special in ["\"", "\\", "\n", "\u{1}", "\u{1f}", "\u{7f}", "é", "\u{d7ff}", "\u{e000}", "😀", "\u{2028}"] {
            for before in 0..20 {
                for after in [0, 1, 7, 8, 9] {
                    let text = format!("{}{special}{}", "a".repeat(before), "b".repeat(after));
                    let mut out = Vec::new();
                    quote_into(&mut out, text.as_bytes());
                    assert_eq!(String::from_utf8(out).unwrap(), serde_json::to_string(&text).unwrap(), "{text:?}");
                }
            }
        }
        for before in 0..20 {
            let mut bytes = vec![b'a'; before];
            bytes.extend_from_slice(&[0xed, 0xbf, 0xbf, b'z']);
            let mut out = Vec::new();
            quote_into(&mut out, &bytes);
            assert_eq!(out, format!("\"{}\\udfffz\"", "a".repeat(before)).into_bytes());
        }
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
            prop::collection::vec((any::<String>(), inner), 0..6).prop_map(|kv| serde_json::Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// The reader against QuickJS's own `JSON.stringify` (the oracle for plain data), and its
/// refusals of everything else, with the path.
#[cfg(test)]
mod differential {
    use proptest::prelude::*;
    use rquickjs::{Context, Runtime};

    const RULES: super::Rules = super::Rules { max_bytes: 1 << 20, max_depth: 64, team: None };

    fn with_ctx<R>(f: impl FnOnce(&rquickjs::Ctx<'_>) -> R) -> R {
        let rt = Runtime::new().unwrap();
        let context = Context::full(&rt).unwrap();
        context.with(|ctx| f(&ctx))
    }

    /// Reads `source`'s value with the reader (no JavaScript runs).
    fn ours(ctx: &rquickjs::Ctx<'_>, source: &str) -> Result<String, String> {
        let v: rquickjs::Value<'_> = ctx.eval(source).unwrap();
        super::read_event(ctx, &v, &RULES).map(|r| r.json).map_err(|r| r.to_string())
    }

    /// Reads `source`'s value both ways: (ours, JSON.stringify's).
    fn both(ctx: &rquickjs::Ctx<'_>, source: &str) -> (Result<String, String>, Option<String>) {
        let theirs = ctx
            .eval::<rquickjs::Value<'_>, _>(source)
            .ok()
            .and_then(|v| ctx.json_stringify(v).ok().flatten())
            .map(|s| s.to_string().unwrap());
        (ours(ctx, source), theirs)
    }

    /// Plain data written in JavaScript: the reader writes exactly what JSON.stringify does.
    const PLAIN: &[&str] = &[
        "({a: undefined, c: Symbol('s'), d: 1})",
        "({arr: [undefined, Symbol('s'), , 2]})",
        "({neg0: -0, frac: 0.1 + 0.2, tiny: 1.5e-7, big: 1e21, huge: 2 ** 60, nan: NaN, inf: -Infinity, exp: 123e-20})",
        "({lone: '\\ud800x', low: 'a\\udc00', pair: '\\ud83d\\ude00', ctl: '\\u0000\\u001f\\u007f', esc: '\"\\\\/'})",
        "({2: 'two', b: 1, 1: 'one', a: 2})",
        "Object.create(null, {x: {value: 1, enumerable: true}, hidden: {value: 2, enumerable: false}})",
        "(() => { class Point { constructor() { this.x = 1 } }; return {pt: new Point()} })()",
        "({when: new Date(0), later: new Date(8.64e15), before: new Date(-62198755200000), bad: new Date(NaN)})",
        "(() => { const shared = {k: 1}; return {a: shared, b: [shared, shared]} })()",
        "(() => { const a = [1, 2, 3]; a.length = 5; return {a} })()",
        "({['__proto__']: {x: 1}, 'a b': {'c.d': [[]]}})",
        // Read from the shape (fastpath): what the generic listing would give.
        "(() => { const o = {a: 1, b: 2, c: 3}; delete o.b; o.d = 4; o.b = 5; return o })()",
        "({'4294967294': 'largest index', '4294967295': 'not an index', x: 1, '01': 'not one'})",
        "(() => { class P { #s = 1; t = 2; static u = 3 }; return {p: new P()} })()",
        "Object.defineProperty({a: 1}, 'g', {get() { for (;;) {} }, enumerable: false})",
        "({[Symbol('k')]: 1, v: 2, [Symbol.iterator]: 3})",
        "({'\\u00e9': 1, '\\ud83d\\ude00': 2, '\\u00ff\\u00fe': 3, 'ascii': {'\\u0100': 4}})",
        "(() => { const a = []; a[3] = 1; const b = [1, 2]; b.x = 3; const c = [1, 2, 3]; delete c[1]; const d = [1, 2, 3]; d.length = 1; return {a, b, c, d} })()",
        "Object.freeze({a: 1, b: Object.freeze([1, {c: 2}])})",
        "Object.fromEntries(Array.from({length: 100}, (_, i) => ['k' + i, i]))",
        "({a: Object.fromEntries(Array.from({length: 40}, (_, i) => ['k' + i, {x: i, y: [i, {z: i}]}])), z: [Array.from({length: 70}, (_, i) => i)]})",
        "({m: Math, j: JSON, e: [Object.prototype]})",
        // Ropes (long concatenations), read from their pieces: a surrogate pair split between
        // two pieces is one character, a lone one at a piece's end stays lone.
        "(() => { const l = 'x'.repeat(3000) + '\\ud83d'; const r = '\\ude00' + 'y'.repeat(3000); const w = '\\u0100'.repeat(600); return {pair: l + r, lone: l + 'z'.repeat(3000), mixed: w + 'é'.repeat(700) + w, deep: Array.from({length: 50}, (_, i) => String(i).repeat(600)).reduce((a, b) => a + b)} })()",
        // A rope flattened by the engine (its right half left empty), then joined again, with
        // a pair split around the empty half; lone surrogates at every end.
        "(() => { const l = 'x'.repeat(3000) + '\\ud83d'; const r = '\\ude00' + 'y'.repeat(3000); const f = l + 'q'.repeat(3000) + '\\ud83d'; const keep = [f, f]; f.indexOf('\\u0000'); JSON.stringify(f); const g = f + r; const h = '\\udc00' + 'a'.repeat(3000) + '\\ud800'; return {g, h, hh: h + h, k: keep.length, flat: '\\ud83d', pairflat: '\\ud83d\\ude00x\\ud800'} })()",
    ];

    #[test]
    fn plain_javascript_values_read_as_json_stringify_writes_them() {
        with_ctx(|ctx| {
            for source in PLAIN {
                let (ours, theirs) = both(ctx, source);
                assert_eq!(ours.as_deref().ok(), theirs.as_deref(), "{source}: {ours:?}");
            }
        });
    }

    /// What is not plain data: refused at the right path, without running plugin code.
    const REFUSED: &[(&str, &str)] = &[
        ("({own: {toJSON() { return 'custom' }}})", "event.own.toJSON is a function"),
        ("({boxed: new String('s')})", "event.boxed is a String object (boxed)"),
        ("({m: new Map([[1, 2]])})", "event.m is a Map"),
        ("({p: new Proxy({a: 1}, {ownKeys() { for (;;) {} }})})", "event.p is a Proxy"),
        ("({get g() { for (;;) {} }})", "event.g is an accessor"),
        (
            "(() => { const a = [1]; Object.defineProperty(a, 0, {get() { for (;;) {} }, enumerable: true}); return {a} })()",
            "event.a[0] is an accessor",
        ),
        ("(() => { const o = {}; o.self = o; return o })()", "event.self is the object that contains it (a cycle)"),
        ("({n: 10n})", "event.n is a BigInt"),
        ("({deep: {'we ird': [{f() {}}]}})", "event.deep[\"we ird\"][0].f is a function"),
        ("({bytes: new Uint8Array(2)})", "event.bytes is binary data"),
        ("[1]", "event is an array"),
        ("new Proxy({}, {})", "event is a Proxy"),
    ];

    #[test]
    fn what_is_not_plain_data_is_refused_with_its_path() {
        with_ctx(|ctx| {
            for (source, want) in REFUSED {
                let err = ours(ctx, source).expect_err(source);
                assert!(err.starts_with(want), "{source}: {err}");
                assert!(!ctx.has_exception(), "an exception was left pending: {:?}", ctx.catch());
            }
        });
    }

    #[test]
    fn limits_of_size_and_depth_are_refusals() {
        with_ctx(|ctx| {
            let deep = format!("({}1{})", "{a:".repeat(70), "}".repeat(70));
            assert!(ours(ctx, &deep).unwrap_err().contains("nested deeper than 64 levels"));
            assert!(ours(ctx, "({s: 'x'.repeat(2 << 20)})").unwrap_err().contains("longer than 1048576 bytes"));
            // Little text, much work: one object of many undefined properties, many times over.
            let amplified = ours(
                ctx,
                "(() => { const o = {}; for (let i = 0; i < 20000; i++) o['k' + i] = undefined; return {amp: new Array(1000).fill(o)} })()",
            )
            .unwrap_err();
            assert!(amplified.contains("past the work limit"), "{amplified}");
            let sparse = ours(ctx, "(() => { const a = []; a.length = 2 ** 32 - 1; return {a} })()").unwrap_err();
            assert!(sparse.starts_with("event.a ") && sparse.contains("longer than"), "a sparse array stops at the size limit: {sparse}");
        });
    }

    #[test]
    fn the_team_is_checked_and_put_back() {
        with_ctx(|ctx| {
            let rules = super::Rules { team: Some(2), ..RULES };
            for (source, changed, json) in [
                ("({team_id: 2, a: 1})", false, r#"{"team_id":2,"a":1}"#),
                ("({team_id: 2.0, a: 1})", false, r#"{"team_id":2,"a":1}"#),
                ("({team_id: '2', a: 1})", true, r#"{"team_id":2,"a":1}"#),
                ("({a: 1})", true, r#"{"a":1,"team_id":2}"#),
                ("({})", true, r#"{"team_id":2}"#),
            ] {
                let v: rquickjs::Value<'_> = ctx.eval(source).unwrap();
                let r = super::read_event(ctx, &v, &rules).unwrap();
                assert_eq!((r.team_changed, r.json.as_str()), (changed, json), "{source}");
            }
            let v: rquickjs::Value<'_> = ctx.eval("({properties: 'x'})").unwrap();
            let err = super::read_event(ctx, &v, &rules).unwrap_err();
            assert_eq!(err.to_string(), "event.properties is a string; an event's properties must be an object");
        });
    }

    /// The read-back says where `properties` is in its text: exactly what `JSON.stringify` writes
    /// for it, and marking the text there gives what marking it after reading the text gives.
    #[test]
    fn the_properties_span_is_what_stringify_writes_for_them() {
        with_ctx(|ctx| {
            let rules = super::Rules { team: Some(2), ..RULES };
            let lists = (["a (1)".to_string()], ["b (2)".to_string()], ["c (3)".to_string()]);
            for source in [
                "({team_id: 2, properties: {a: 1, s: 'x}\"y'}, z: [1]})",
                "({properties: {}, team_id: 2})",
                "({event: '{\"properties\":1}', properties: null, team_id: 2})",
                "({properties: {$plugins_failed: ['old'], n: {properties: 2}}, team_id: '3'})",
                "({a: 1, properties: {k: undefined, 'p\u{e9}': '\u{1F600}'}, b: {properties: {}}})",
                "({properties: {\"plugins\\u0041\": 1, deep: {x: [{}]}}, team_id: 2})",
                "({a: 1, properties: undefined, team_id: 2})",
                "({a: 1, team_id: 2})",
            ] {
                let v: rquickjs::Value<'_> = ctx.eval(source).unwrap();
                let r = super::read_event(ctx, &v, &rules).unwrap();
                let props: rquickjs::Value<'_> = ctx.eval(format!("({source}).properties")).unwrap();
                let theirs = ctx.json_stringify(props).unwrap().map(|s| s.to_string().unwrap());
                assert_eq!(r.properties.clone().map(|at| r.json[at].to_string()), theirs, "{source}");
                let (s, f, d) = &lists;
                let told = crate::plugin::marks::mark_event_at(&r.json, r.properties.clone(), s, f, d);
                assert_eq!(told, crate::plugin::marks::mark_event(&r.json, s, f, d), "{source}");
            }
        });
    }

    #[test]
    fn iso_times_match_to_iso_string() {
        with_ctx(|ctx| {
            for ms in [0.0, 1.5, -1.0, 951_782_400_000.0, -62_198_755_200_000.0, 253_402_300_800_000.0, 8.64e15, -8.64e15, 1e12 + 0.999] {
                let theirs: String = ctx.eval(format!("new Date({ms}).toISOString()")).unwrap();
                assert_eq!(super::iso_time(ms).as_deref(), Some(theirs.as_str()), "{ms}");
            }
            assert_eq!(super::iso_time(f64::NAN), None);
            assert_eq!(super::iso_time(8.64e15 + 1.0), None);
        });
    }

    proptest! {
        #[test]
        fn generated_json_reads_as_json_stringify_writes_it(value in super::differential_json()) {
            let event = serde_json::json!({ "v": value });
            with_ctx(|ctx| {
                let text = serde_json::to_string(&event).unwrap();
                let v = ctx.json_parse(text.clone()).unwrap();
                let ours = super::read_event(ctx, &v, &RULES).map(|r| r.json).ok();
                let theirs = ctx.json_stringify(v).ok().flatten().map(|s| s.to_string().unwrap());
                prop_assert!(ours.is_some(), "refused {}", text);
                prop_assert_eq!(ours, theirs);
                Ok(())
            })?;
        }
    }
}
