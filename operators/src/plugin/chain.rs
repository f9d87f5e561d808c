//! A team's `processEvent` chain, with PostHog's semantics (spec §1.4):
//! plugins run in order; a falsy result drops the event and stops the chain; an error keeps the
//! event as it was (mutations included) and goes on; a changed `team_id` is put back and counts
//! as a failure; `$plugins_succeeded`, `$plugins_failed` and `$plugins_deferred` list
//! `Name (configId)` of each plugin.
//!
//! Each plugin gets its own copy of the event built in its own runtime, and what it returns is
//! read back by the host as data: as JSON text, or copied as values straight into the next
//! plugin's runtime (`copy`). No object of one plugin is ever seen by another.

use super::error::{Hook, PluginError};
use super::instance::{PluginInstance, Step, StepInput};

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
    /// Events the chain's plugins captured, with their capture hops (filled in by
    /// `WorkerPlugins::process`).
    pub captured: Vec<(String, u32)>,
}

/// Runs `event_json` (an event of team `team`) through `chain` (the team's instances in plugin
/// order).
///
/// Returns `Err` only when the event's text cannot be marked (its `properties` is not an
/// object): the caller dead-letters it. With no plugin to run or mark, the input is returned
/// untouched.
///
/// From one plugin with `processEvent` to the next, the event goes as values copied from one
/// runtime into the other (`copy`) when the copy takes it, else as JSON text; either way the
/// next plugin gets the same event. The plugin that handed it over keeps what it returned
/// until the next one's step is over: when that one fails and leaves nothing readable, the
/// chain goes on with it, as it would with the text.
pub fn run_chain(chain: &mut [&mut PluginInstance], event_json: &str, team: i64) -> Result<ChainOutcome, String> {
    let mut out = ChainOutcome::default();
    let mut event: Option<String> = None;
    // Where `properties` is in `event`, when the last plugin's read-back said so.
    let mut properties: Option<std::ops::Range<usize>> = None;
    // The plugin whose result is in the next step's runtime (its step was `Passed`).
    let mut handed: Option<usize> = None;
    for i in 0..chain.len() {
        if chain[i].has(Hook::ProcessEvent) {
            let from = handed.take();
            let next = (i + 1..chain.len()).find(|&j| chain[j].has(Hook::ProcessEvent));
            let (done, rest) = chain.split_at_mut(i + 1);
            let next = next.map(|j| &*rest[j - i - 1]).filter(|n| n.can_receive());
            let plugin = &mut *done[i];
            let input = match from {
                Some(_) => StepInput::Entered,
                None => StepInput::Text(event.as_deref().unwrap_or(event_json)),
            };
            let step = plugin.step(input, Some(team), next);
            let label = plugin.label().to_string();
            match step {
                Step::Kept(next, at) => {
                    out.succeeded.push(label);
                    event = Some(next);
                    properties = at;
                }
                Step::Passed => {
                    out.succeeded.push(label);
                    handed = Some(i);
                }
                Step::Dropped => {
                    out.succeeded.push(label.clone());
                    out.dropped_by = Some(label);
                }
                Step::Failed(error, kept) => {
                    out.failed.push(error);
                    properties = None;
                    match (kept, from) {
                        (Some(kept), _) => event = Some(kept),
                        // The event as it stood before the call: what the previous plugin
                        // returned. Should even that not be read now, that plugin did not
                        // succeed after all and the event goes on as it was before it.
                        (None, Some(f)) => match done[f].returned_text(team) {
                            Some(text) => event = Some(text),
                            None => {
                                let label = done[f].label();
                                out.succeeded.retain(|l| l != label);
                                out.failed.push(done[f].unreadable_returned());
                            }
                        },
                        (None, None) => {}
                    }
                }
            }
            if let Some(f) = from {
                done[f].forget_returned();
            }
            if out.dropped_by.is_some() {
                return Ok(out);
            }
        }
        if chain[i].has(Hook::OnEvent) {
            out.deferred.push(chain[i].label().to_string());
        }
    }
    debug_assert!(handed.is_none(), "the last plugin with processEvent has no next to hand to");
    let text = event.as_deref().unwrap_or(event_json);
    if out.succeeded.is_empty() && out.failed.is_empty() && out.deferred.is_empty() {
        out.event = Some(text.to_string());
        return Ok(out);
    }
    let failed: Vec<String> = out.failed.iter().map(|e| format!("{} ({})", e.plugin, e.config_id)).collect();
    out.event = Some(super::marks::mark_event_at(text, properties, &out.succeeded, &failed, &out.deferred)?);
    Ok(out)
}
