//! pluginflow's per-event work.
//!
//! - [`plugin`]: the QuickJS plugin host (no timely, no Kafka).
//! - [`dataflow`]: thin timely operators around it.
//! - [`event`]: from an input line to an event or a dead letter.
//! - [`output`]: what the graph's sinks write to.
//! - [`sync`]: the policy for poisoned locks.
#![warn(missing_docs)]

pub mod dataflow;
pub mod event;
pub mod output;
pub mod plugin;
pub mod sync;
