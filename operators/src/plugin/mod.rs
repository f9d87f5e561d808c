//! The plugin host: loads PostHog plugin folders and runs their hooks in QuickJS.
//!
//! It knows nothing of timely or Kafka. It takes a plugin folder, a configuration and an event
//! (or a hook to run) and returns a result or a typed [`PluginError`]. The pieces:
//!
//! - [`manifest`]: `plugin.json` and configuration checks.
//! - [`source`]: TypeScript and ES modules to CommonJS (oxc), import allow-list.
//! - [`runtime`]: the worker's sandbox: limits, the call deadline, one QuickJS runtime per
//!   plugin instance.
//! - [`instance`]: one plugin configuration in a runtime of its own; typed hook calls; what a
//!   plugin returns read back as data (`tojson`).
//! - [`chain`]: a team's `processEvent` chain with PostHog's semantics.
//! - `host` and `js/prelude.js`: `meta`, globals and modules plugins see.

pub mod chain;
mod copy;
pub mod deferred;
pub mod error;
mod fastpath;
mod fromjson;
pub mod geoip;
pub mod instance;
pub mod log;
pub mod manifest;
pub mod marks;
pub mod placement;
pub mod retry;
pub mod runtime;
pub mod schedule;
pub mod source;
pub mod timing;
mod tojson;
pub mod worker;

mod capture;
mod host;
mod intl;
mod natives;

pub use chain::{ChainOutcome, run_chain};

/// A hash map for tables consulted on the per-event path, hashed with foldhash seeded at random
/// for each table: std's SipHash cost ~1–2% of a chain's instructions wherever it was used there
/// (the shape and key tables, the worker's tables, a call's latency histograms), and a seeded hash
/// keeps keys that follow from events (team ids, key lists) from aiming at one bucket.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
pub use error::{ErrorKind, Hook, LoadError, PluginError};
pub use geoip::GeoIp;
pub use host::{EnqueuedJob, HostServices, JobTime, Outbox};
pub use instance::{InstanceConfig, PluginDefinition, PluginInstance, StepOutcome};
pub use log::{InstanceIdentity, LogEntry, LogLevel, LogSink, LogSource, MemoryLogSink};
pub use runtime::{Limits, PluginRuntime};
