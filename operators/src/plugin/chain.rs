//! A team's `processEvent` chain, with PostHog's semantics (spec §1.4):
//! plugins run in order; a falsy result drops the event and stops the chain; an error keeps the
//! event as it was (mutations included) and goes on; a changed `team_id` is put back and counts
//! as a failure; `$plugins_succeeded`, `$plugins_failed` and `$plugins_deferred` list
//! `Name (configId)` of each plugin.
//!
//! Between plugins the event is JSON text: each plugin gets its own copy built in its own
//! runtime, and what it returns is read back by the host as data. No object of one plugin is
//! ever seen by another.

use super::error::{Hook, PluginError};
use super::instance::{PluginInstance, StepOutcome};

/// What a chain did to one event.
#[derive(Debug, Default)]
pub struct ChainOutcome {
    /// The final event as JSON; `None` when a plugin dropped it.
    pub event: Option<String>,
    /// Label of the plugin that dropped the event.
    pub dropped_by: Option<String>,
    /// Labels of plugins whose `processEvent` succeeded.
    pub succeeded: Vec<String>,
    /// Plugins whose `processEvent` failed, with the error.
    pub failed: Vec<PluginError>,
    /// Labels of plugins with `onEvent` (their work is deferred until after the chain).
    pub deferred: Vec<String>,
}

/// Runs `event_json` (an event of team `team`) through `chain` (the team's instances in plugin
/// order).
///
/// Returns `Err` only when the event's text cannot be marked (its `properties` is not an
/// object): the caller dead-letters it. With no plugin to run or mark, the input is returned
/// untouched.
pub fn run_chain(chain: &mut [&mut PluginInstance], event_json: &str, team: i64) -> Result<ChainOutcome, String> {
    let mut out = ChainOutcome::default();
    let mut event: Option<String> = None;
    for plugin in chain.iter_mut() {
        if plugin.has(Hook::ProcessEvent) {
            match plugin.process(event.as_deref().unwrap_or(event_json), team) {
                StepOutcome::Kept(next) => {
                    out.succeeded.push(plugin.label().to_string());
                    event = Some(next);
                }
                StepOutcome::Dropped => {
                    out.succeeded.push(plugin.label().to_string());
                    out.dropped_by = Some(plugin.label().to_string());
                    return Ok(out);
                }
                StepOutcome::Failed(error, kept) => {
                    out.failed.push(error);
                    if kept.is_some() {
                        event = kept;
                    }
                }
            }
        }
        if plugin.has(Hook::OnEvent) {
            out.deferred.push(plugin.label().to_string());
        }
    }
    let text = event.as_deref().unwrap_or(event_json);
    if out.succeeded.is_empty() && out.failed.is_empty() && out.deferred.is_empty() {
        out.event = Some(text.to_string());
        return Ok(out);
    }
    let failed: Vec<String> = out.failed.iter().map(|e| format!("{} ({})", e.plugin, e.config_id)).collect();
    out.event = Some(super::marks::mark_event(text, &out.succeeded, &failed, &out.deferred)?);
    Ok(out)
}
