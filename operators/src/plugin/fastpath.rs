//! The host's fast paths for plain data, added to our copy of QuickJS
//! (`vendor/rquickjs-sys/quickjs/quickjs.c`, the `JS_PF_*` functions at its end).
//!
//! Reading an event back went through QuickJS's generic calls for every property (list the
//! keys into a new array, look each one up again for its descriptor, make a C string of each
//! key); building one defined each property through `JS_DefineProperty`. These functions read
//! an ordinary object's properties straight from its shape, a dense array's elements straight
//! from its storage, a key's one-byte characters without a copy, and make an object from a
//! shape the host keeps ([`Shapes`]), all its values at once. Each answers "not here" for
//! anything unusual, and the callers then take the generic path they always had.
//!
//! The stacks on which the parser (`fromjson`) and the hand-over (`copy`) build their objects
//! and arrays ([`Stacks`]) live here too, lent by each runtime's [`Shapes`].

#![allow(unsafe_code)] // QuickJS's C API; see each function's contract in quickjs.c.

use super::FastMap;
use std::ffi::c_void;

use rquickjs::qjs;

unsafe extern "C" {
    /// Own enumerable string-keyed data properties of a plain object, in JavaScript's order:
    /// their count (written when it fits `cap`), or -1 for the generic path.
    pub(super) fn JS_PF_DataFields(
        ctx: *mut qjs::JSContext,
        obj: qjs::JSValue,
        atoms: *mut qjs::JSAtom,
        values: *mut qjs::JSValue,
        cap: i32,
        scanned: *mut i32,
    ) -> i32;
    /// How many entries an object's shape has, hidden ones included (0 for a primitive).
    pub(super) fn JS_PF_ShapeEntries(obj: qjs::JSValue) -> i32;
    /// A Date's time value, read without a call: 1, or 0 when it is not a Date.
    pub(super) fn JS_PF_DateValue(obj: qjs::JSValue, ms: *mut f64) -> i32;
    /// A dense array's elements (borrowed) and their number, or -1.
    pub(super) fn JS_PF_ArrayElements(obj: qjs::JSValue, values: *mut *mut qjs::JSValue) -> i64;
    /// A key's characters when each is one byte (Latin-1), or null.
    pub(super) fn JS_PF_AtomLatin1(ctx: *mut qjs::JSContext, atom: qjs::JSAtom, len: *mut usize) -> *const u8;
    fn JS_PF_TakeShape(ctx: *mut qjs::JSContext, obj: qjs::JSValue, count: i32) -> *mut c_void;
    fn JS_PF_FreeShape(rt: *mut qjs::JSRuntime, shape: *mut c_void);
    fn JS_PF_NewObjectFromShape(
        ctx: *mut qjs::JSContext,
        shape: *mut c_void,
        atoms: *const qjs::JSAtom,
        values: *mut qjs::JSValue,
        count: i32,
    ) -> qjs::JSValue;
    /// A string's characters when it is not a rope (borrowed): their number, `wide` 0 for one
    /// byte each (Latin-1) or 1 for UTF-16 units; -1 otherwise.
    pub(super) fn JS_PF_StringChars(v: qjs::JSValue, chars: *mut *const c_void, wide: *mut i32) -> i32;
    /// A new string of `len` characters copied from `chars` (Latin-1, or UTF-16 when `wide`).
    pub(super) fn JS_PF_NewString(ctx: *mut qjs::JSContext, chars: *const c_void, len: i32, wide: i32) -> qjs::JSValue;
    /// The number of characters of a string or rope; -1 for any other value.
    pub(super) fn JS_PF_StringLength(v: qjs::JSValue) -> i32;
    /// A rope's two halves (borrowed), each a string or a rope: 1, or 0 for anything else.
    pub(super) fn JS_PF_RopeParts(v: qjs::JSValue, left: *mut qjs::JSValue, right: *mut qjs::JSValue) -> i32;
}

/// A key interned for the length of a walk (`team_id`, `properties`: compared with the keys a
/// walk meets, atoms being unique per runtime), given back when it ends.
pub(super) struct Atom {
    ctx: *mut qjs::JSContext,
    pub(super) atom: qjs::JSAtom,
}

impl Atom {
    pub(super) fn new(ctx: *mut qjs::JSContext, name: &std::ffi::CStr) -> Atom {
        // SAFETY: interning on a live context; 0 (out of memory) never equals a real key.
        Atom { ctx, atom: unsafe { qjs::JS_NewAtom(ctx, name.as_ptr()) } }
    }
}

impl Drop for Atom {
    fn drop(&mut self) {
        if self.atom != 0 {
            // SAFETY: made in `new` on this context, which outlives the walk.
            unsafe { qjs::JS_FreeAtom(self.ctx, self.atom) };
        }
    }
}

/// Pushes the own enumerable string-keyed data properties of plain object `v` onto `atoms` and
/// `values` (keys and values borrowed from `v`, valid while it is unchanged), straight from its
/// shape: their number, and how many entries its shape has (the work of listing them); `None`
/// (nothing pushed) when it needs the generic path.
pub(super) fn data_fields(
    ctx: *mut qjs::JSContext,
    v: qjs::JSValue,
    atoms: &mut Vec<qjs::JSAtom>,
    values: &mut Vec<qjs::JSValue>,
) -> Option<(usize, usize)> {
    let (start, vstart) = (atoms.len(), values.len());
    let mut room = 32;
    loop {
        atoms.reserve(room);
        values.reserve(room);
        let cap = (atoms.capacity() - start).min(values.capacity() - vstart).min(i32::MAX as usize);
        // SAFETY: the C side writes at most `cap` entries into the spare capacity, and only
        // when all of them fit.
        let mut scanned = 0;
        let n =
            unsafe { JS_PF_DataFields(ctx, v, atoms.as_mut_ptr().add(start), values.as_mut_ptr().add(vstart), cap as i32, &mut scanned) };
        let n = usize::try_from(n).ok()?;
        if n <= cap {
            // SAFETY: the first `n` spare entries were just written.
            unsafe {
                atoms.set_len(start + n);
                values.set_len(vstart + n);
            }
            return Some((n, usize::try_from(scanned).unwrap_or(0).max(n)));
        }
        room = n;
    }
}

// What the table may hold, so that events cannot fill a plugin's heap through it (each entry
// pins its keys' strings in the plugin's runtime): an event stream has a handful of layouts of
// short keys; past a bound the table starts again empty.
/// Key lists a runtime keeps a shape for.
const MAX_SHAPES: usize = 512;
/// Keys of all remembered shapes together.
const MAX_SHAPE_KEYS: usize = 4096;
/// Keys of one remembered shape (a larger object is built a property at a time).
const MAX_KEYS_PER_SHAPE: usize = 256;
/// The longest key (in bytes) an object may have to be remembered (the builder checks); also
/// the longest key the table of keys keeps.
pub(crate) const MAX_KEY_BYTES: usize = 64;
/// Keys a runtime keeps the atom of (see [`Shapes::key`]).
const MAX_KEYS: usize = 512;

/// Object shapes of one runtime by their list of keys: an object with keys already seen, in the
/// same order, is made in one step with its values instead of a property at a time. Each shape
/// is held by a reference of ours (so QuickJS never changes it in place, and its keys stay
/// interned); the references go back when the table is dropped, which must happen before the
/// runtime is freed. The table's hash is keyed (foldhash, seeded at random for each table): key
/// lists follow from what events send, and a hash they could aim at would make every lookup
/// walk the whole table. std's SipHash was 1.8% of the 3-plugin chain's instructions.
pub(crate) struct Shapes {
    rt: *mut qjs::JSRuntime,
    by_keys: FastMap<Box<[qjs::JSAtom]>, *mut c_void>,
    /// Keys of the shapes in `by_keys`, all together.
    shape_keys: usize,
    /// Atoms of keys made here before, by their UTF-8 text (one reference each, ours).
    keys: FastMap<Box<[u8]>, qjs::JSAtom>,
    /// Room the builder lends itself between events (empty between parses).
    pub(crate) scratch: Stacks,
}

impl Shapes {
    pub(crate) fn new(ctx: *mut qjs::JSContext) -> Shapes {
        // SAFETY: reading the runtime of a live context.
        let rt = unsafe { qjs::JS_GetRuntime(ctx) };
        Shapes { rt, by_keys: FastMap::default(), shape_keys: 0, keys: FastMap::default(), scratch: Default::default() }
    }

    /// The atom of the key `utf8` in this runtime (`ctx`), with one reference for the caller; 0
    /// when out of memory. A key met before is found here, not hashed into QuickJS's atom table
    /// again (the parser and the copy make every key of every event: 5% of the 3-plugin
    /// chain's instructions were `JS_NewAtomLen`). Short keys only, at most [`MAX_KEYS`] of
    /// them; past that the table starts again empty.
    pub(crate) fn key(&mut self, ctx: *mut qjs::JSContext, utf8: &[u8]) -> qjs::JSAtom {
        if let Some(&atom) = self.keys.get(utf8) {
            // SAFETY: the table holds a reference to `atom`, an atom of this runtime.
            return unsafe { qjs::JS_DupAtom(ctx, atom) };
        }
        // SAFETY: QuickJS interns a copy of the (valid UTF-8) bytes; 0 means out of memory.
        let atom = unsafe { qjs::JS_NewAtomLen(ctx, utf8.as_ptr().cast(), utf8.len() as _) };
        if atom != 0 && utf8.len() <= MAX_KEY_BYTES {
            if self.keys.len() >= MAX_KEYS {
                self.clear_keys();
            }
            // SAFETY: a second reference to the atom just made, kept by the table.
            self.keys.insert(utf8.into(), unsafe { qjs::JS_DupAtom(ctx, atom) });
        }
        atom
    }

    /// [`Self::key`] when there is a table, else QuickJS's own interning of `utf8`.
    pub(crate) fn intern(shapes: Option<&mut Shapes>, ctx: *mut qjs::JSContext, utf8: &[u8]) -> qjs::JSAtom {
        match shapes {
            Some(shapes) => shapes.key(ctx, utf8),
            // SAFETY: QuickJS interns a copy of the (valid UTF-8) bytes; 0 means out of memory.
            None => unsafe { qjs::JS_NewAtomLen(ctx, utf8.as_ptr().cast(), utf8.len() as _) },
        }
    }

    fn clear_keys(&mut self) {
        for (_, atom) in self.keys.drain() {
            // SAFETY: every atom in the table holds one reference of ours.
            unsafe { qjs::JS_FreeAtomRT(self.rt, atom) };
        }
    }

    /// A new object of `atoms` (keys, borrowed) and `values` (taken over on `Some`) made from a
    /// known shape; `None` (values untouched) when these keys have no shape here yet.
    pub(crate) fn make(&self, ctx: *mut qjs::JSContext, atoms: &[qjs::JSAtom], values: &mut [qjs::JSValue]) -> Option<qjs::JSValue> {
        let shape = *self.by_keys.get(atoms)?;
        // SAFETY: `shape` is held by this table; the C side checks it still has exactly these
        // keys and takes the values over unless it answers undefined.
        let v = unsafe { JS_PF_NewObjectFromShape(ctx, shape, atoms.as_ptr(), values.as_mut_ptr(), atoms.len() as i32) };
        (unsafe { qjs::JS_VALUE_GET_TAG(v) } != qjs::JS_TAG_UNDEFINED).then_some(v)
    }

    /// Remembers the shape of `obj`, just made with keys `atoms` (none longer than
    /// `MAX_KEY_BYTES`), when QuickJS shares it and it is small enough.
    pub(crate) fn learn(&mut self, ctx: *mut qjs::JSContext, obj: qjs::JSValue, atoms: &[qjs::JSAtom]) {
        if atoms.len() > MAX_KEYS_PER_SHAPE {
            return;
        }
        // SAFETY: `obj` is a live value of this context; a non-null answer is a reference ours.
        let shape = unsafe { JS_PF_TakeShape(ctx, obj, atoms.len() as i32) };
        if shape.is_null() {
            return;
        }
        if self.by_keys.len() >= MAX_SHAPES || self.shape_keys + atoms.len() > MAX_SHAPE_KEYS {
            self.clear();
        }
        self.shape_keys += atoms.len();
        if let Some(old) = self.by_keys.insert(atoms.into(), shape) {
            // SAFETY: the replaced reference was ours.
            unsafe { JS_PF_FreeShape(self.rt, old) };
            self.shape_keys -= atoms.len();
        }
    }

    fn clear(&mut self) {
        self.shape_keys = 0;
        for (_, shape) in self.by_keys.drain() {
            // SAFETY: every shape in the table holds one reference of ours.
            unsafe { JS_PF_FreeShape(self.rt, shape) };
        }
    }
}

impl Drop for Shapes {
    fn drop(&mut self) {
        self.clear();
        self.clear_keys();
    }
}

const UNDEFINED: qjs::JSValue = qjs::JS_MKVAL(qjs::JS_TAG_UNDEFINED, 0);

/// Keys and values made in one runtime for the objects and arrays being built (by the parser
/// or by `copy`): each level uses the top of the stacks and gives it back, handed over to what
/// it made or freed when the build fails. A runtime's `Shapes` lends them between builds.
#[derive(Default)]
pub(crate) struct Stacks {
    pub(super) atoms: Vec<qjs::JSAtom>,
    pub(super) values: Vec<qjs::JSValue>,
}

impl Stacks {
    /// Borrows `shapes`' stacks (empty between builds), or new ones.
    pub(super) fn lend(shapes: Option<&mut Shapes>) -> Stacks {
        shapes.map(|s| std::mem::take(&mut s.scratch)).unwrap_or_default()
    }

    /// Gives the stacks back to `shapes` once a build is over.
    pub(super) fn give_back(self, shapes: Option<&mut Shapes>) {
        debug_assert!(self.atoms.is_empty() && self.values.is_empty(), "every level gives its part of the stacks back");
        if let Some(shapes) = shapes {
            shapes.scratch = self;
        }
    }

    /// Frees what a level put on the stacks from the marks on (runtime `ctx`).
    pub(super) fn unwind(&mut self, ctx: *mut qjs::JSContext, atoms: usize, values: usize) {
        // SAFETY: each atom and value above the marks holds one reference of this level
        // (undefined for a value already handed over).
        for &atom in &self.atoms[atoms..] {
            unsafe { qjs::JS_FreeAtom(ctx, atom) };
        }
        for &v in &self.values[values..] {
            unsafe { qjs::JS_FreeValue(ctx, v) };
        }
        self.atoms.truncate(atoms);
        self.values.truncate(values);
    }

    /// Ends an array level begun at values mark `mark`: when its items are all there
    /// (`filled`), the array of them (they are handed over); either way the level's part of
    /// the stacks goes back.
    pub(super) fn array(&mut self, ctx: *mut qjs::JSContext, mark: usize, filled: Option<()>) -> Option<qjs::JSValue> {
        let array = filled.and_then(|()| {
            let items = &mut self.values[mark..];
            let count = i32::try_from(items.len()).ok()?;
            // SAFETY: JS_NewArrayFrom takes over every value's reference, also when it fails.
            let array = unsafe { qjs::JS_NewArrayFrom(ctx, count, items.as_ptr()) };
            items.fill(UNDEFINED);
            checked(array)
        });
        self.unwind(ctx, self.atoms.len(), mark);
        array
    }

    /// Ends an object level begun at marks `atoms`/`values`: when its members are all there
    /// (`filled`, with whether its shape may be learnt), the object of them ([`build_object`]);
    /// either way the level's part of the stacks goes back (keys freed: the object holds its
    /// own).
    pub(super) fn object(
        &mut self,
        ctx: *mut qjs::JSContext,
        shapes: Option<&mut Shapes>,
        (atoms, values): (usize, usize),
        filled: Option<bool>,
    ) -> Option<qjs::JSValue> {
        let object = filled.and_then(|learn| build_object(ctx, shapes, &self.atoms[atoms..], &mut self.values[values..], learn));
        self.unwind(ctx, atoms, values);
        object
    }

    /// Where the next level's part begins.
    pub(super) fn marks(&self) -> (usize, usize) {
        (self.atoms.len(), self.values.len())
    }
}

/// A new plain object of `atoms` (keys, borrowed; none repeated but in a parse, where a repeated
/// key keeps its first place and takes the last value) and `values` (handed over: undefined is
/// left in their place, also when it fails). Made from a known shape when `shapes` has one;
/// else a property at a time, and its shape is learnt when `learn` (no key longer than
/// `MAX_KEY_BYTES`).
fn build_object(
    ctx: *mut qjs::JSContext,
    shapes: Option<&mut Shapes>,
    atoms: &[qjs::JSAtom],
    values: &mut [qjs::JSValue],
    learn: bool,
) -> Option<qjs::JSValue> {
    if let Some(made) = shapes.as_deref().and_then(|shapes| shapes.make(ctx, atoms, values)) {
        values.fill(UNDEFINED);
        return checked(made);
    }
    // SAFETY: a new object, owned here until returned.
    let object = unsafe { qjs::JS_NewObject(ctx) };
    if checked(object).is_none() {
        for value in values.iter_mut() {
            // SAFETY: each value holds one reference, handed over here.
            unsafe { qjs::JS_FreeValue(ctx, std::mem::replace(value, UNDEFINED)) };
        }
        return None;
    }
    let mut failed = false;
    for (&atom, value) in atoms.iter().zip(values.iter_mut()) {
        let value = std::mem::replace(value, UNDEFINED);
        if failed {
            // SAFETY: as above.
            unsafe { qjs::JS_FreeValue(ctx, value) };
            continue;
        }
        // SAFETY: DefineProperty takes over the value's reference, even when it fails; a
        // repeated key keeps its place and takes the new value, as in JSON.parse.
        failed = unsafe { qjs::JS_DefinePropertyValue(ctx, object, atom, value, qjs::JS_PROP_C_W_E as i32) } < 0;
    }
    if failed {
        // SAFETY: the object is ours.
        unsafe { qjs::JS_FreeValue(ctx, object) };
        return None;
    }
    if let Some(shapes) = shapes.filter(|_| learn) {
        shapes.learn(ctx, object, atoms);
    }
    Some(object)
}

/// `v` unless it is an exception (QuickJS ran out of memory; the caller drops it).
pub(super) fn checked(v: qjs::JSValue) -> Option<qjs::JSValue> {
    // SAFETY: a tag test.
    (!unsafe { qjs::JS_IsException(v) }).then_some(v)
}
