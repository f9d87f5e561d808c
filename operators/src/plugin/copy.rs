//! An event handed from one plugin's runtime to the next one's without JSON text between them.
//!
//! Between two plugins of a chain the event used to be read back to JSON text
//! ([`super::tojson`]) and parsed again in the next runtime ([`super::fromjson`]): every string
//! quoted and unquoted, every key turned to UTF-8 and interned again, every fraction printed and
//! read. [`copy_event`] walks the returned value the way the read-back walks it and builds the
//! same values in the next runtime directly: strings copied by their characters, numbers and
//! booleans by value, objects made from the next runtime's known shapes.
//!
//! It is an optimisation that either gives exactly what reading back and parsing would give,
//! or declines and leaves the next runtime as it was (what it built is freed): the caller then
//! reads the value back as text, which gives the verdict and the message. It declines whatever
//! is not the common case: anything the read-back refuses or treats specially (Dates,
//! accessors, Proxies, class instances, array-index keys, sparse arrays, string ropes, a
//! changed `team_id`, `properties` that is not an object), and an event whose text could be
//! longer than the limit: the text's length is not computed, only bounded from above (six
//! bytes per character, which no escape exceeds). It follows the read-back's rules exactly
//! where it takes a value: the same work budget (every value and shape entry counts), the same
//! depth limit, cycles found the same way, `undefined` and symbols left out of objects and
//! `null` in arrays, non-finite numbers as `null`, `-0` as `0`. No JavaScript runs in either
//! runtime and nothing is allocated in the source runtime; the two runtimes never share a
//! value (the target gets new strings and objects of its own).

#![allow(unsafe_code)] // QuickJS's C API; the target's values are on the stacks until handed over.

use std::ffi::c_void;

use rquickjs::{Ctx, Value, qjs};

use super::fastpath::{self, Atom, MAX_KEY_BYTES, Shapes, Stacks, checked};
use super::tojson::{self, Rules};

const NULL: qjs::JSValue = qjs::JS_MKVAL(qjs::JS_TAG_NULL, 0);
const CLASS_OBJECT: qjs::JSClassID = 1;
const CLASS_ARRAY: qjs::JSClassID = 2;
/// Most bytes one character can take in JSON text (`\u001f`; a lone surrogate `\udc00`).
const MAX_BYTES_PER_CHAR: usize = 6;
/// Most bytes a number takes in JSON text (`-1.2345678901234567e-308`).
const MAX_NUMBER_BYTES: usize = 24;

/// The event `value` of runtime `from` (an object returned by a plugin) built in runtime `to`,
/// as reading it back with `rules` and parsing the text in `to` would build it; `None` when it
/// declines (see the module docs), with nothing left in `to`.
pub(crate) fn copy_event<'b>(
    from: &Ctx<'_>,
    value: &Value<'_>,
    to: &Ctx<'b>,
    shapes: Option<&mut Shapes>,
    rules: &Rules,
) -> Option<Value<'b>> {
    let from = from.as_raw().as_ptr();
    let v = value.as_raw();
    // SAFETY: type checks on a live value.
    if unsafe { qjs::JS_VALUE_GET_TAG(v) } != qjs::JS_TAG_OBJECT || unsafe { qjs::JS_GetClassID(v) } != CLASS_OBJECT {
        return None;
    }
    let mut shapes = shapes;
    let mut c = Copier {
        from,
        to: to.as_raw().as_ptr(),
        rules,
        stacks: Stacks::lend(shapes.as_deref_mut()),
        shapes,
        src_atoms: Vec::with_capacity(256),
        src_values: Vec::with_capacity(256),
        open: Vec::new(),
        work: 0,
        bound: 0,
        long_keys: 0,
        utf8: Vec::new(),
        team_atom: Atom::new(from, c"team_id"),
        properties_atom: Atom::new(from, c"properties"),
    };
    let copied = c.value(v, 1);
    if copied.is_none() {
        // Whatever failed left a pending exception only when the target could not allocate.
        tojson::drop_pending_exception(c.to);
        tojson::drop_pending_exception(from);
    }
    c.stacks.give_back(c.shapes);
    match copied? {
        // SAFETY: one reference to a value of `to`; from_raw takes it over.
        Copied::Value(made) => Some(unsafe { Value::from_raw(to.clone(), made) }),
        Copied::Nothing => None,
    }
}

/// What a source value became in the target.
enum Copied {
    /// One reference to a value of the target.
    Value(qjs::JSValue),
    /// `undefined` or a symbol: left out of objects, `null` in arrays.
    Nothing,
}

struct Copier<'r, 's> {
    from: *mut qjs::JSContext,
    to: *mut qjs::JSContext,
    rules: &'r Rules,
    shapes: Option<&'s mut Shapes>,
    /// Keys and values of the source objects being read (borrowed; each object uses the top).
    src_atoms: Vec<qjs::JSAtom>,
    src_values: Vec<qjs::JSValue>,
    /// Keys and values made in the target for the objects and arrays being built.
    stacks: Stacks,
    /// Source objects being copied (for cycles).
    open: Vec<*mut c_void>,
    /// Work done so far, counted as the read-back counts it.
    work: usize,
    /// An upper bound of the length of the event's JSON text so far.
    bound: usize,
    /// Keys longer than `MAX_KEY_BYTES` made so far (an object holding one is not learnt).
    long_keys: u64,
    /// A key's UTF-8 when its characters are not all ASCII.
    utf8: Vec<u8>,
    team_atom: Atom,
    properties_atom: Atom,
}

impl Copier<'_, '_> {
    fn charge(&mut self, units: usize) -> Option<()> {
        self.work = self.work.saturating_add(units);
        (self.work <= self.rules.max_bytes).then_some(())
    }

    /// Counts `bytes` more of text at most; past the limit the copy declines.
    fn grow(&mut self, bytes: usize) -> Option<()> {
        self.bound = self.bound.saturating_add(bytes);
        (self.bound <= self.rules.max_bytes).then_some(())
    }

    fn value(&mut self, v: qjs::JSValue, depth: usize) -> Option<Copied> {
        self.charge(1)?;
        // SAFETY: `v` is a live value of the source, borrowed for this call.
        let copied = match unsafe { qjs::JS_VALUE_GET_TAG(v) } {
            // Immediate values: the same bits in any runtime.
            qjs::JS_TAG_INT | qjs::JS_TAG_BOOL | qjs::JS_TAG_NULL => {
                self.grow(MAX_NUMBER_BYTES)?;
                Copied::Value(v)
            }
            qjs::JS_TAG_UNDEFINED | qjs::JS_TAG_SYMBOL => Copied::Nothing,
            qjs::JS_TAG_FLOAT64 => {
                self.grow(MAX_NUMBER_BYTES)?;
                let d = unsafe { qjs::JS_VALUE_GET_FLOAT64(v) };
                if !d.is_finite() {
                    Copied::Value(NULL)
                } else {
                    // `-0` is written "0"; an int32-valued double becomes an int, as parsed.
                    Copied::Value(qjs::JS_NewFloat64(if d == 0.0 { 0.0 } else { d }))
                }
            }
            qjs::JS_TAG_STRING => Copied::Value(self.string(v)?),
            qjs::JS_TAG_OBJECT => Copied::Value(self.object(v, depth)?),
            // Ropes, BigInts and internal values: the read-back decides.
            _ => return None,
        };
        Some(copied)
    }

    fn string(&mut self, v: qjs::JSValue) -> Option<qjs::JSValue> {
        let mut chars: *const c_void = std::ptr::null();
        let mut wide = 0;
        // SAFETY: borrows the characters of a live string that is not a rope.
        let len = unsafe { fastpath::JS_PF_StringChars(v, &mut chars, &mut wide) };
        let len = usize::try_from(len).ok()?;
        self.grow(len.saturating_mul(MAX_BYTES_PER_CHAR).saturating_add(2))?;
        // SAFETY: copies `len` characters of that width into a new string of the target.
        checked(unsafe { fastpath::JS_PF_NewString(self.to, chars, len as i32, wide) })
    }

    fn object(&mut self, v: qjs::JSValue, depth: usize) -> Option<qjs::JSValue> {
        // SAFETY: `v` is a live object of the source.
        let class = unsafe { qjs::JS_GetClassID(v) };
        if (class != CLASS_OBJECT && class != CLASS_ARRAY) || depth > self.rules.max_depth {
            return None;
        }
        let ptr = unsafe { qjs::JS_VALUE_GET_PTR(v) };
        if self.open.contains(&ptr) {
            return None;
        }
        self.open.push(ptr);
        let made = if class == CLASS_ARRAY { self.array(v, depth) } else { self.fields(v, depth) };
        self.open.pop();
        made
    }

    fn array(&mut self, v: qjs::JSValue, depth: usize) -> Option<qjs::JSValue> {
        let mut elements: *mut qjs::JSValue = std::ptr::null_mut();
        // SAFETY: where a dense array keeps its elements; nothing changes the source while it
        // is copied (no JavaScript runs, nothing is allocated in it).
        let stored = unsafe { fastpath::JS_PF_ArrayElements(v, &mut elements) };
        let stored = usize::try_from(stored).ok()?;
        let mut len: i64 = 0;
        // SAFETY: an Array's length is an own data property; reading it runs no JavaScript.
        if unsafe { qjs::JS_GetLength(self.from, v, &mut len) } < 0 || usize::try_from(len).ok()? != stored {
            // Holes (or an exception, which reading a plain array's length never throws).
            return None;
        }
        self.grow(stored.saturating_add(2))?;
        let mark = self.stacks.values.len();
        let mut items = || -> Option<()> {
            for i in 0..stored {
                // SAFETY: `i` is below the stored count.
                let item = unsafe { *elements.add(i) };
                match self.value(item, depth + 1)? {
                    Copied::Value(made) => self.stacks.values.push(made),
                    Copied::Nothing => {
                        self.grow(4)?;
                        self.stacks.values.push(NULL);
                    }
                }
            }
            Some(())
        };
        let filled = items();
        self.stacks.array(self.to, mark, filled)
    }

    fn fields(&mut self, v: qjs::JSValue, depth: usize) -> Option<qjs::JSValue> {
        let start = self.src_atoms.len();
        let (len, entries) = fastpath::data_fields(self.from, v, &mut self.src_atoms, &mut self.src_values)?;
        let (marks, long_keys) = (self.stacks.marks(), self.long_keys);
        let filled = self
            .charge(entries)
            .and_then(|()| self.grow(len.saturating_add(2)))
            .and_then(|()| self.members(start, len, depth))
            .map(|()| self.long_keys == long_keys);
        self.src_atoms.truncate(start);
        self.src_values.truncate(start);
        self.stacks.object(self.to, self.shapes.as_deref_mut(), marks, filled)
    }

    /// Copies the `len` source members from `start` of the source stacks onto the target's.
    fn members(&mut self, start: usize, len: usize, depth: usize) -> Option<()> {
        let top = depth == 1;
        let mut saw_team = false;
        for i in start..start + len {
            let (atom, value) = (self.src_atoms[i], self.src_values[i]);
            let team = self.rules.team.filter(|_| top && atom == self.team_atom.atom);
            let made = if let Some(team) = team {
                saw_team = true;
                if !tojson::is_team(value, team) {
                    return None;
                }
                // Written as the team's number, as the read-back writes it (uncharged there too).
                self.grow(MAX_NUMBER_BYTES)?;
                Copied::Value(qjs::JS_NewFloat64(team as f64))
            } else {
                if top && atom == self.properties_atom.atom && !tojson::may_be_properties(value) {
                    return None;
                }
                self.value(value, depth + 1)?
            };
            let Copied::Value(made) = made else { continue };
            let Some(key) = self.key(atom) else {
                // SAFETY: the value made above is ours.
                unsafe { qjs::JS_FreeValue(self.to, made) };
                return None;
            };
            self.stacks.atoms.push(key);
            self.stacks.values.push(made);
        }
        if top && self.rules.team.is_some() && !saw_team {
            return None;
        }
        Some(())
    }

    /// The source key `atom` interned in the target (one reference).
    fn key(&mut self, atom: qjs::JSAtom) -> Option<qjs::JSAtom> {
        let mut len = 0usize;
        // SAFETY: the key's one-byte characters (no copy), valid while the source object lives.
        let latin1 = unsafe { fastpath::JS_PF_AtomLatin1(self.from, atom, &mut len) };
        if latin1.is_null() {
            // Wider characters (or an index, which plain fields never have): the read-back's
            // path decides.
            return None;
        }
        self.grow(len.saturating_mul(MAX_BYTES_PER_CHAR).saturating_add(4))?;
        let bytes = unsafe { std::slice::from_raw_parts(latin1, len) };
        let utf8: &[u8] = if bytes.is_ascii() {
            bytes
        } else {
            self.utf8.clear();
            tojson::latin1_to_utf8(bytes, &mut self.utf8);
            &self.utf8
        };
        self.long_keys += u64::from(utf8.len() > MAX_KEY_BYTES);
        let made = Shapes::intern(self.shapes.as_deref_mut(), self.to, utf8);
        (made != 0).then_some(made)
    }
}
