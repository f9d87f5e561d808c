//! The worker's plugin sandbox: limits, the call deadline, and one QuickJS runtime per plugin
//! instance.
//!
//! Every plugin instance gets a runtime of its own (its own heap, garbage collector, atoms and
//! job queue), so nothing one plugin allocates, leaves queued or corrupts in its heap can reach
//! another. Events cross between instances as data (JSON text read by the host), never as
//! shared objects. Each heap is counted by our own allocator against the instance's limit, so
//! the host knows when QuickJS was refused memory and whose call it was; the worker keeps a
//! total across its instances. A deadline shared by the worker's runtimes bounds every call
//! through QuickJS's interrupt handler, and a cancel flag ends every call at once on shutdown.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Limits for plugin code.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    /// Longest a single hook call (including the promise it returns) may run.
    pub call_timeout: Duration,
    /// Heap size of one plugin instance's QuickJS runtime.
    pub memory_limit_bytes: usize,
    /// Largest JavaScript stack.
    pub max_stack_bytes: usize,
    /// Largest event (JSON bytes) that enters or leaves a plugin.
    pub max_event_bytes: usize,
    /// Deepest nesting of objects and arrays in an event (the event object itself is 1).
    pub max_event_depth: usize,
    /// Calls that time out or run out of memory after which an instance is disabled.
    pub max_timeouts: u32,
    /// `posthog.capture` calls one hook call may make.
    pub max_captures_per_call: u32,
    /// `posthog.capture` calls one instance may make per epoch (batch).
    pub max_captures_per_epoch: u32,
    /// Jobs one hook call may enqueue.
    pub max_jobs_per_call: u32,
    /// Bytes of `console` output one hook call may write; more is cut with a marker.
    pub max_log_bytes_per_call: usize,
    /// Bytes one hook call may hand the host to keep: captured events, job payloads, cache
    /// and storage writes (host memory and disk outside the plugin's heap).
    pub max_host_bytes_per_call: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            call_timeout: Duration::from_secs(30),
            memory_limit_bytes: 64 * 1024 * 1024,
            max_stack_bytes: 1024 * 1024,
            max_event_bytes: 1024 * 1024,
            max_event_depth: 64,
            max_timeouts: 5,
            max_captures_per_call: 100,
            max_captures_per_epoch: 10_000,
            max_jobs_per_call: 100,
            max_log_bytes_per_call: 64 * 1024,
            max_host_bytes_per_call: 16 * 1024 * 1024,
        }
    }
}

/// Deadline shared between the worker's runtimes (through their interrupt handlers) and the
/// code making calls. `cancel`, when set, ends every call at once (shutdown).
#[derive(Debug, Default)]
pub(crate) struct Deadline {
    at: Cell<Option<Instant>>,
    fired: Cell<bool>,
    cancel: Arc<AtomicBool>,
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

    /// Makes the deadline pass now (the call is over: whatever it left queued is cut short).
    pub fn fire(&self) {
        self.fired.set(true);
    }

    /// Whether the deadline has passed (also true once the handler fired, or when cancelled).
    pub fn passed(&self) -> bool {
        self.fired.get() || self.cancelled() || self.at.get().is_some_and(|at| Instant::now() >= at)
    }

    /// Whether every call is being ended (shutdown).
    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    /// Time left before the armed deadline (`None` when disarmed).
    pub fn remaining(&self) -> Option<Duration> {
        if self.cancelled() {
            return Some(Duration::ZERO);
        }
        self.at.get().map(|at| at.saturating_duration_since(Instant::now()))
    }

    fn check(&self) -> bool {
        let passed = self.passed();
        if passed {
            self.fired.set(true);
        }
        passed
    }
}

/// One instance's heap account, kept by [`LimitedAllocator`]; it also adds to the worker's
/// total.
#[derive(Debug)]
pub(crate) struct Heap {
    used: Cell<usize>,
    limit: usize,
    refused: Cell<u64>,
    /// Open from a refusal until the heap is back under the limit: small requests may then
    /// use [`HEAP_RESERVE`] above it, so QuickJS can build the error it throws.
    reserve_open: Cell<bool>,
    /// Set while QuickJS compiles code the host hands it (see [`Heap::unrefused`]).
    unlimited: Cell<bool>,
    worker_total: Rc<Cell<usize>>,
}

impl Heap {
    fn new(limit: usize, worker_total: Rc<Cell<usize>>) -> Self {
        Heap { used: Cell::new(0), limit, refused: Cell::new(0), reserve_open: Cell::new(false), unlimited: Cell::new(false), worker_total }
    }

    /// How many allocations went over the limit so far. A call during which this grew ran
    /// out of memory, whatever it threw: without the reserve QuickJS throws `null` when it
    /// cannot build its error, and a plugin may catch the error and throw something else.
    pub fn refusals(&self) -> u64 {
        self.refused.get()
    }

    /// Bytes allocated now.
    pub fn used(&self) -> usize {
        self.used.get()
    }

    /// Whether the heap is over its limit.
    pub fn over(&self) -> bool {
        self.used.get() > self.limit
    }

    /// Runs `f` with no allocation refused. QuickJS's parser does not survive every refused
    /// allocation (it patches bytecode at offsets it recorded before an emit that failed, and
    /// writes out of bounds), so code is compiled only here, from sources the host bounds, and
    /// plugins cannot compile code at run time (see the prelude). The caller checks
    /// [`Heap::over`] afterwards. The host's read-back of a result runs here too: what it
    /// allocates is its own work, freed before it returns.
    pub fn unrefused<R>(&self, f: impl FnOnce() -> R) -> R {
        /// Puts the flag back as it was, also when `f` unwinds (and for a nested use).
        struct Restore<'h>(&'h Cell<bool>, bool);
        impl Drop for Restore<'_> {
            fn drop(&mut self) {
                self.0.set(self.1);
            }
        }
        let _restore = Restore(&self.unlimited, self.unlimited.replace(true));
        f()
    }

    /// Whether `extra` more bytes may be taken.
    fn grant(&self, extra: usize) -> bool {
        let want = self.used.get().saturating_add(extra);
        if want <= self.limit || self.unlimited.get() {
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
        self.worker_total.set(self.worker_total.get() + size);
    }

    fn remove(&self, size: usize) {
        self.used.set(self.used.get().saturating_sub(size));
        self.worker_total.set(self.worker_total.get().saturating_sub(size));
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

// SAFETY: every pointer comes from RustAllocator, which meets the trait's contract (8-byte
// alignment, a size header read back by `usable_size`); this wrapper only refuses requests
// (returns null, which QuickJS turns into an out-of-memory exception) and counts sizes.
// `dealloc` and `realloc` get pointers QuickJS received from this allocator; QuickJS frees
// null itself (rquickjs filters it) and never reallocates null, but a null `realloc` is
// still served as an allocation rather than handed to RustAllocator, which would read a
// header in front of it.
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
        if ptr.is_null() {
            // C's realloc(NULL, n) is malloc(n); RustAllocator would read a header before NULL.
            return self.alloc(new_size);
        }
        let old = unsafe { Self::usable_size(ptr) };
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

/// The worker's sandbox: the limits, the deadline every call runs under, and the heap total
/// of the worker's instances. Create it on the worker thread and keep it there; each plugin
/// instance makes its own QuickJS runtime through it.
pub struct PluginRuntime {
    pub(crate) deadline: Rc<Deadline>,
    pub(crate) limits: Limits,
    heap_total: Rc<Cell<usize>>,
    /// The worker's current epoch (per-epoch allowances count within it).
    pub(crate) epoch: Rc<Cell<u64>>,
}

impl std::fmt::Debug for PluginRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginRuntime").field("limits", &self.limits).finish()
    }
}

/// One instance's QuickJS runtime and its heap account.
pub(crate) struct InstanceRuntime {
    pub rt: rquickjs::Runtime,
    pub heap: Rc<Heap>,
}

impl PluginRuntime {
    /// A sandbox with `limits`.
    pub fn new(limits: Limits) -> Result<Self, String> {
        Self::with_cancel(limits, Arc::new(AtomicBool::new(false)))
    }

    /// A sandbox whose calls all end at once when `cancel` is set (for shutdown).
    pub fn with_cancel(limits: Limits, cancel: Arc<AtomicBool>) -> Result<Self, String> {
        if limits.memory_limit_bytes < 64 * 1024 {
            return Err(format!("the plugin memory limit must be at least 64 KiB, got {} bytes", limits.memory_limit_bytes));
        }
        let deadline = Rc::new(Deadline { cancel, ..Deadline::default() });
        Ok(Self { deadline, limits, heap_total: Rc::new(Cell::new(0)), epoch: Rc::new(Cell::new(0)) })
    }

    /// Starts epoch `epoch`: per-epoch allowances (captures) start again.
    pub fn begin_epoch(&self, epoch: u64) {
        self.epoch.set(epoch);
    }

    /// The limits this sandbox enforces.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Whether every call is being ended (the shutdown's grace is over): no new work starts.
    pub fn cancelled(&self) -> bool {
        self.deadline.cancelled()
    }

    /// Bytes QuickJS holds for all instances made through this sandbox.
    pub fn memory_used(&self) -> usize {
        self.heap_total.get()
    }

    /// A new QuickJS runtime for one instance, with its own heap limit.
    pub(crate) fn instance_runtime(&self) -> Result<InstanceRuntime, String> {
        let heap = Rc::new(Heap::new(self.limits.memory_limit_bytes, self.heap_total.clone()));
        let allocator = LimitedAllocator { heap: heap.clone() };
        let rt = rquickjs::Runtime::new_with_alloc(allocator).map_err(|e| format!("cannot create a QuickJS runtime: {e}"))?;
        rt.set_max_stack_size(self.limits.max_stack_bytes);
        let handler_deadline = self.deadline.clone();
        rt.set_interrupt_handler(Some(Box::new(move || handler_deadline.check())));
        Ok(InstanceRuntime { rt, heap })
    }
}
