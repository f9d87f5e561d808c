//! A team's `processEvent` chain, with PostHog's semantics (spec §1.4):
//! plugins run in order; a falsy result drops the event and stops the chain; an error keeps the
//! event as it was (mutations included) and goes on; a changed `team_id` is put back and counts
//! as a failure; `$plugins_succeeded`, `$plugins_failed` and `$plugins_deferred` list
//! `Name (configId)` of each plugin.
//!
//! The event is parsed once, moves between the plugins' contexts as a QuickJS object, and is
//! serialised once at the end.

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

/// Runs `event_json` through `chain` (the team's instances in plugin order).
///
/// Returns `Err` only when the event is not valid JSON. With no plugin to run or mark, the
/// input is returned untouched.
pub fn run_chain(chain: &mut [&mut PluginInstance], event_json: &str) -> Result<ChainOutcome, String> {
    let mut out = ChainOutcome::default();
    let runs = chain.iter().any(|p| p.has(Hook::ProcessEvent));
    let marks = chain.iter().any(|p| p.has(Hook::OnEvent));
    if !runs && !marks {
        out.event = Some(event_json.to_string());
        return Ok(out);
    }
    let first = chain.iter().position(|p| p.has(Hook::ProcessEvent)).unwrap_or(0);
    let mut event = chain[first].parse_event(event_json)?;
    let team = chain[first].team_of(&event);
    let mut last = first;
    for (i, plugin) in chain.iter_mut().enumerate() {
        if plugin.has(Hook::ProcessEvent) {
            last = i;
            match plugin.process(event, &team) {
                StepOutcome::Kept(next) => {
                    out.succeeded.push(plugin.label().to_string());
                    event = next;
                }
                StepOutcome::Dropped => {
                    out.succeeded.push(plugin.label().to_string());
                    out.dropped_by = Some(plugin.label().to_string());
                    return Ok(out);
                }
                StepOutcome::Failed(error, kept) => {
                    out.failed.push(error);
                    event = kept;
                }
            }
        }
        if plugin.has(Hook::OnEvent) {
            out.deferred.push(plugin.label().to_string());
        }
    }
    let failed: Vec<String> = out.failed.iter().map(|e| format!("{} ({})", e.plugin, e.config_id)).collect();
    chain[last].mark(&event, &out.succeeded, &failed, &out.deferred);
    out.event = Some(chain[last].stringify(&event));
    Ok(out)
}
