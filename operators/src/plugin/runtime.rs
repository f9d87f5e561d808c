//! One QuickJS runtime per worker thread, with its limits.
//!
//! QuickJS has one heap per runtime; every plugin instance of a worker gets its own context
//! (its own globals) inside that runtime, so events move between a team's plugins without
//! being serialised. The runtime enforces a memory limit, a stack limit and a per-call
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

/// A worker's QuickJS runtime. Create it on the worker thread and keep it there.
pub struct PluginRuntime {
    pub(crate) rt: rquickjs::Runtime,
    pub(crate) deadline: Rc<Deadline>,
    /// Set when an instance's context was released: the next call collects its garbage.
    pub(crate) gc_pending: Rc<Cell<bool>>,
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
        let rt = rquickjs::Runtime::new().map_err(|e| format!("cannot create QuickJS runtime: {e}"))?;
        rt.set_memory_limit(limits.memory_limit_bytes);
        rt.set_max_stack_size(limits.max_stack_bytes);
        let deadline = Rc::new(Deadline::default());
        let handler_deadline = deadline.clone();
        rt.set_interrupt_handler(Some(Box::new(move || handler_deadline.check())));
        Ok(Self { rt, deadline, gc_pending: Rc::new(Cell::new(false)), limits })
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
