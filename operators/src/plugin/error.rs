//! Errors of the plugin host: a plugin that cannot load, and a hook call that failed.
//!
//! Call failures are classified by what the caller can do about them (see [`ErrorKind`]):
//! the dataflow retries `Retry` and `Timeout` where PostHog did, records `Failed`, and skips a
//! `Disabled` instance.

use std::fmt;

use super::manifest::ManifestError;
use super::source::SourceError;

/// A plugin hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Hook {
    /// `setupPlugin(meta)`.
    SetupPlugin,
    /// `teardownPlugin(meta)`.
    TeardownPlugin,
    /// `processEvent(event, meta)` (or the `processEventBatch` shim).
    ProcessEvent,
    /// `onEvent(event, meta)`.
    OnEvent,
    /// `exportEvents(events, meta)`.
    ExportEvents,
    /// `runEveryMinute(meta)`.
    RunEveryMinute,
    /// `runEveryHour(meta)`.
    RunEveryHour,
    /// `runEveryDay(meta)`.
    RunEveryDay,
    /// A job from the plugin's `jobs` export.
    Job,
}

impl Hook {
    /// Every hook, in lifecycle order.
    pub const ALL: [Hook; 9] = [
        Hook::SetupPlugin,
        Hook::ProcessEvent,
        Hook::OnEvent,
        Hook::ExportEvents,
        Hook::RunEveryMinute,
        Hook::RunEveryHour,
        Hook::RunEveryDay,
        Hook::Job,
        Hook::TeardownPlugin,
    ];

    /// The exported function's name (`job` for jobs).
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::SetupPlugin => "setupPlugin",
            Hook::TeardownPlugin => "teardownPlugin",
            Hook::ProcessEvent => "processEvent",
            Hook::OnEvent => "onEvent",
            Hook::ExportEvents => "exportEvents",
            Hook::RunEveryMinute => "runEveryMinute",
            Hook::RunEveryHour => "runEveryHour",
            Hook::RunEveryDay => "runEveryDay",
            Hook::Job => "job",
        }
    }

    /// The hook exported under `name`, if any.
    pub fn from_export(name: &str) -> Option<Hook> {
        Hook::ALL.into_iter().find(|h| *h != Hook::Job && h.as_str() == name)
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What kind of failure a hook call ended in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The plugin threw `RetryError`: worth calling again later.
    Retry,
    /// The call ran past its deadline (a busy loop, a promise that never settles) or the plugin
    /// threw `TimeoutError`. PostHog made timeouts retriable in July 2022; so do we.
    Timeout,
    /// Any other error: the plugin's own problem; retrying will not help.
    Failed,
    /// The instance is disabled (setup failed for good, or it exhausted memory).
    Disabled,
}

impl ErrorKind {
    /// Whether the dataflow may retry a call that failed this way.
    pub fn is_retriable(self) -> bool {
        matches!(self, ErrorKind::Retry | ErrorKind::Timeout)
    }
}

/// A failed hook call.
#[derive(Clone, Debug, PartialEq)]
pub struct PluginError {
    /// Classification.
    pub kind: ErrorKind,
    /// Plugin display name.
    pub plugin: String,
    /// Plugin configuration id.
    pub config_id: String,
    /// The hook that failed.
    pub hook: Hook,
    /// The JavaScript error's name (`Error`, `TypeError`, `RetryError`, ...).
    pub name: String,
    /// The error message (secrets masked).
    pub message: String,
    /// The JavaScript stack, when there is one.
    pub stack: String,
}

impl fmt::Display for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "plugin '{}' ({}) {}: {}: {}", self.plugin, self.config_id, self.hook, self.name, self.message)
    }
}

impl std::error::Error for PluginError {}

/// Why a plugin instance could not be created.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// `plugin.json` or the configuration is wrong.
    #[error("plugin '{plugin}': {source}")]
    Manifest {
        /// Plugin name or folder.
        plugin: String,
        /// What is wrong.
        #[source]
        source: ManifestError,
    },
    /// The code does not compile, or imports what it may not.
    #[error("plugin '{plugin}': {source}")]
    Source {
        /// Plugin name.
        plugin: String,
        /// What is wrong.
        #[source]
        source: SourceError,
    },
    /// An attachment file could not be read.
    #[error("plugin '{plugin}': attachment '{key}' ({path}): {source}")]
    Attachment {
        /// Plugin name.
        plugin: String,
        /// Attachment key.
        key: String,
        /// File path.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The module's top-level code threw, or the runtime could not be set up.
    #[error("plugin '{plugin}': loading failed: {message}")]
    Script {
        /// Plugin name.
        plugin: String,
        /// The error, with the JavaScript stack when there is one.
        message: String,
    },
}
