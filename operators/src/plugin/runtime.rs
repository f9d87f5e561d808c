//! One QuickJS runtime per worker thread, with its limits.
//!
//! QuickJS has one heap per runtime; every plugin instance of a worker gets its own context
//! (its own globals) inside that runtime, so events move between a team's plugins without
//! being serialised. The runtime enforces a memory limit (counted by our allocator, so the
//! host knows when QuickJS was refused memory), a stack limit and a per-call
//! deadline through an interrupt handler.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Limits for plugin code.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    /// Longest a single hook call (including the promise it returns) may run.
    pub call_timeout: Duration,
    /// Heap size of the worker's QuickJS runtime, shared by its plugin instances.
    pub memory_limit_bytes: usize,
    /// Largest JavaScript stack.
    pub max_stack_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            call_timeout: Duration::from_secs(30),
            memory_limit_bytes: 512 * 1024 * 1024,
            max_stack_bytes: 1024 * 1024,
        }
    }
}

/// Deadline shared between the runtime's interrupt handler and the code making calls.
#[derive(Debug, Default)]
pub(crate) struct Deadline {
    at: Cell<Option<Instant>>,
    fired: Cell<bool>,
}

impl Deadline {
    pub fn arm(&self, timeout: Duration) {
        self.at.set(Some(Instant::now() + timeout));
        self.fired.set(false);
    }

    pub fn disarm(&self) {
        self.at.set(None);
        self.fired.set(false);
    }

    /// Whether the deadline has passed (also true once the handler fired).
    pub fn passed(&self) -> bool {
        self.fired.get() || self.at.get().is_some_and(|at| Instant::now() >= at)
    }

    fn check(&self) -> bool {
        let passed = self.passed();
        if passed {
            self.fired.set(true);
        }
        passed
    }
}

/// The worker's heap account, kept by [`LimitedAllocator`].
#[derive(Debug)]
pub(crate) struct Heap {
    used: Cell<usize>,
    limit: usize,
    refused: Cell<u64>,
    /// Open from a refusal until the heap is back under the limit: small requests may then
    /// use [`HEAP_RESERVE`] above it, so QuickJS can build the error it throws.
    reserve_open: Cell<bool>,
}

impl Heap {
    fn new(limit: usize) -> Self {
        Heap { used: Cell::new(0), limit, refused: Cell::new(0), reserve_open: Cell::new(false) }
    }

    /// How many allocations went over the limit so far. A call during which this grew ran
    /// out of memory, whatever it threw: without the reserve QuickJS throws `null` when it
    /// cannot build its error, and a plugin may catch the error and throw something else.
    pub fn refusals(&self) -> u64 {
        self.refused.get()
    }

    /// Whether `extra` more bytes may be taken.
    fn grant(&self, extra: usize) -> bool {
        let want = self.used.get().saturating_add(extra);
        if want <= self.limit {
            return true;
        }
        self.refused.set(self.refused.get() + 1);
        if self.reserve_open.get() && extra <= HEAP_RESERVE / 4 && want <= self.limit + HEAP_RESERVE {
            return true;
        }
        self.reserve_open.set(true);
        false
    }

    fn add(&self, size: usize) {
        self.used.set(self.used.get() + size);
    }

    fn remove(&self, size: usize) {
        self.used.set(self.used.get().saturating_sub(size));
        if self.used.get() < self.limit {
            self.reserve_open.set(false);
        }
    }
}

/// Head room above the limit for QuickJS's own out-of-memory error (object, message, stack).
const HEAP_RESERVE: usize = 256 * 1024;

/// QuickJS's allocations, counted against the memory limit here rather than by QuickJS, so
/// the host learns of every refusal (see [`Heap::refusals`]).
struct LimitedAllocator {
    heap: Rc<Heap>,
}

// SAFETY: every pointer comes from RustAllocator, which meets the trait's contract; this
// wrapper only refuses requests (returns null) and counts sizes. `dealloc` and `realloc`
// get pointers QuickJS received from this allocator.
#[allow(unsafe_code)]
unsafe impl rquickjs::allocator::Allocator for LimitedAllocator {
    fn alloc(&mut self, size: usize) -> *mut u8 {
        if !self.heap.grant(size) {
            return std::ptr::null_mut();
        }
        let ptr = rquickjs::allocator::RustAllocator.alloc(size);
        if !ptr.is_null() {
            self.heap.add(unsafe { Self::usable_size(ptr) });
        }
        ptr
    }

    fn calloc(&mut self, count: usize, size: usize) -> *mut u8 {
        let Some(total) = count.checked_mul(size) else { return std::ptr::null_mut() };
        if !self.heap.grant(total) {
            return std::ptr::null_mut();
        }
        let ptr = rquickjs::allocator::RustAllocator.calloc(count, size);
        if !ptr.is_null() {
            self.heap.add(unsafe { Self::usable_size(ptr) });
        }
        ptr
    }

    unsafe fn dealloc(&mut self, ptr: *mut u8) {
        self.heap.remove(unsafe { Self::usable_size(ptr) });
        unsafe { rquickjs::allocator::RustAllocator.dealloc(ptr) }
    }

    unsafe fn realloc(&mut self, ptr: *mut u8, new_size: usize) -> *mut u8 {
        let old = if ptr.is_null() { 0 } else { unsafe { Self::usable_size(ptr) } };
        if new_size > old && !self.heap.grant(new_size - old) {
            return std::ptr::null_mut();
        }
        let moved = unsafe { rquickjs::allocator::RustAllocator.realloc(ptr, new_size) };
        if !moved.is_null() {
            self.heap.remove(old);
            self.heap.add(unsafe { Self::usable_size(moved) });
        }
        moved
    }

    unsafe fn usable_size(ptr: *mut u8) -> usize {
        unsafe { rquickjs::allocator::RustAllocator::usable_size(ptr) }
    }
}

/// A worker's QuickJS runtime. Create it on the worker thread and keep it there.
pub struct PluginRuntime {
    pub(crate) rt: rquickjs::Runtime,
    pub(crate) deadline: Rc<Deadline>,
    /// Set when an instance's context was released: the next call collects its garbage.
    pub(crate) gc_pending: Rc<Cell<bool>>,
    pub(crate) heap: Rc<Heap>,
    pub(crate) limits: Limits,
}

impl std::fmt::Debug for PluginRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginRuntime").field("limits", &self.limits).finish()
    }
}

impl PluginRuntime {
    /// A runtime with `limits`.
    pub fn new(limits: Limits) -> Result<Self, String> {
        let heap = Rc::new(Heap::new(limits.memory_limit_bytes));
        let allocator = LimitedAllocator { heap: heap.clone() };
        let rt = rquickjs::Runtime::new_with_alloc(allocator).map_err(|e| format!("cannot create QuickJS runtime: {e}"))?;
        rt.set_max_stack_size(limits.max_stack_bytes);
        let deadline = Rc::new(Deadline::default());
        let handler_deadline = deadline.clone();
        rt.set_interrupt_handler(Some(Box::new(move || handler_deadline.check())));
        Ok(Self { rt, deadline, gc_pending: Rc::new(Cell::new(false)), heap, limits })
    }

    /// The limits this runtime enforces.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Bytes QuickJS has allocated for this runtime.
    pub fn memory_used(&self) -> usize {
        self.rt.memory_usage().malloc_size.max(0) as usize
    }

    /// Runs the garbage collector.
    pub fn collect_garbage(&self) {
        self.rt.run_gc();
    }
}
