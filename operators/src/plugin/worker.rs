//! All plugin configurations of one worker: instances per (configuration, team), created on
//! first use, and each team's `processEvent` chain.
//!
//! PostHog kept one VM per plugin configuration per worker thread; so do we. A configuration
//! for several teams (or all teams) acts as one configuration per team: its cache, storage and
//! `global` are per team, as they were for PostHog's per-team configurations.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::chain::{ChainOutcome, run_chain};
use super::error::{ErrorKind, Hook, PluginError};
use super::host::HostServices;
use super::instance::{InstanceConfig, PluginDefinition, PluginInstance};
use super::log::LogLevel;
use super::runtime::{Limits, PluginRuntime};

/// One plugin configuration, as the pipeline hands it over.
#[derive(Clone, Debug)]
pub struct PluginSpec {
    /// Configuration id (unique).
    pub id: String,
    /// The compiled plugin.
    pub def: Arc<PluginDefinition>,
    /// Teams it runs for; `None` for all.
    pub teams: Option<Vec<i64>>,
    /// Config values.
    pub config: Map<String, Value>,
    /// Attachment files by key.
    pub attachments: BTreeMap<String, PathBuf>,
}

impl PluginSpec {
    fn applies_to(&self, team: i64) -> bool {
        self.teams.as_ref().is_none_or(|t| t.contains(&team))
    }
}

/// Something the worker's plugins did that the pipeline counts or reports.
#[derive(Clone, Debug, PartialEq)]
pub enum PluginNotice {
    /// An instance could not be created; its events skip it.
    LoadFailed {
        /// Configuration id.
        config_id: String,
        /// Team.
        team: i64,
        /// Why.
        message: String,
    },
    /// A hook call failed.
    CallFailed(PluginError),
}

/// The plugin instances of one worker.
pub struct WorkerPlugins {
    runtime: PluginRuntime,
    specs: Arc<Vec<PluginSpec>>,
    services: HostServices,
    /// Instance per (spec index, team); `None` when it failed to load.
    instances: HashMap<(usize, i64), Option<PluginInstance>>,
    /// Spec indexes of each team's chain, in order.
    chains: HashMap<i64, Vec<usize>>,
    notices: Vec<PluginNotice>,
}

impl WorkerPlugins {
    /// A worker's plugin set; `specs` must be in chain order (order, then file order).
    pub fn new(limits: Limits, specs: Arc<Vec<PluginSpec>>, services: HostServices) -> Result<Self, String> {
        Ok(Self {
            runtime: PluginRuntime::new(limits)?,
            specs,
            services,
            instances: HashMap::new(),
            chains: HashMap::new(),
            notices: Vec::new(),
        })
    }

    /// Creates (and sets up) the instances of every configuration that names its teams, so
    /// load problems show at start rather than at a team's first event.
    pub fn preload(&mut self) {
        let pairs: Vec<(usize, i64)> = self
            .specs
            .iter()
            .enumerate()
            .flat_map(|(i, s)| s.teams.iter().flatten().map(move |t| (i, *t)))
            .collect();
        for (i, team) in pairs {
            self.ensure(i, team);
        }
    }

    /// Runs the team's `processEvent` chain over one event. `$snapshot` events skip the chain,
    /// as in PostHog.
    pub fn process(&mut self, team: i64, event_name: &str, uuid: &str, json: &str) -> Result<ChainOutcome, String> {
        if event_name == "$snapshot" {
            return Ok(ChainOutcome { event: Some(json.to_string()), ..ChainOutcome::default() });
        }
        let chain = self.chain(team);
        let mut taken: Vec<(usize, PluginInstance)> = Vec::with_capacity(chain.len());
        for i in chain {
            if let Some(Some(inst)) = self.instances.remove(&(i, team)) {
                taken.push((i, inst));
            }
        }
        let mut refs: Vec<&mut PluginInstance> = taken.iter_mut().map(|(_, p)| p).collect();
        let outcome = run_chain(&mut refs, json);
        if let Ok(o) = &outcome {
            for err in &o.failed {
                if let Some((_, inst)) = taken.iter().find(|(_, p)| p.config_id() == err.config_id) {
                    inst.log_error(err, Some(uuid));
                }
                self.notices.push(PluginNotice::CallFailed(err.clone()));
            }
        }
        for (i, inst) in taken {
            self.instances.insert((i, team), Some(inst));
        }
        outcome
    }

    /// What happened since the last call (load failures, failed calls).
    pub fn take_notices(&mut self) -> Vec<PluginNotice> {
        std::mem::take(&mut self.notices)
    }

    /// Calls `teardownPlugin` on every live instance.
    pub fn teardown_all(&mut self) {
        let mut keys: Vec<_> = self.instances.keys().copied().collect();
        keys.sort();
        for key in keys {
            if let Some(Some(inst)) = self.instances.get_mut(&key) {
                if let Err(e) = inst.teardown() {
                    inst.log_system(LogLevel::Error, &format!("Plugin failed to unload: {}: {}", e.name, e.message));
                    self.notices.push(PluginNotice::CallFailed(e));
                }
            }
        }
    }

    /// Live instances (for the summary and metrics).
    pub fn instances(&self) -> impl Iterator<Item = &PluginInstance> {
        self.instances.values().flatten()
    }

    fn chain(&mut self, team: i64) -> Vec<usize> {
        if let Some(c) = self.chains.get(&team) {
            return c.clone();
        }
        let chain: Vec<usize> = (0..self.specs.len()).filter(|&i| self.specs[i].applies_to(team)).collect();
        for &i in &chain {
            self.ensure(i, team);
        }
        self.chains.insert(team, chain.clone());
        chain
    }

    fn ensure(&mut self, i: usize, team: i64) {
        if self.instances.contains_key(&(i, team)) {
            return;
        }
        let spec = &self.specs[i];
        let cfg = InstanceConfig {
            config_id: spec.id.clone(),
            team_id: Some(team),
            config: spec.config.clone(),
            attachments: spec.attachments.clone(),
        };
        let instance = match PluginInstance::new(&self.runtime, &spec.def, &cfg, &self.services) {
            Ok(mut inst) => {
                self.setup(&mut inst);
                Some(inst)
            }
            Err(e) => {
                tracing::error!(plugin = %spec.def.manifest.name, config = %spec.id, team, error = %e, "plugin failed to load; its events skip it");
                self.notices.push(PluginNotice::LoadFailed { config_id: spec.id.clone(), team, message: e.to_string() });
                None
            }
        };
        self.instances.insert((i, team), instance);
    }

    /// Runs `setupPlugin`. A `RetryError` leaves the plugin running (PostHog ran methods while
    /// setup was being retried); any other error disables it, as PostHog did.
    fn setup(&mut self, inst: &mut PluginInstance) {
        match inst.setup() {
            Ok(()) => inst.log_system(LogLevel::Info, "setupPlugin succeeded."),
            Err(e) => {
                inst.log_error(&e, None);
                if !matches!(e.kind, ErrorKind::Retry | ErrorKind::Timeout) {
                    inst.disable(format!("setupPlugin failed: {}: {}", e.name, e.message));
                }
                self.notices.push(PluginNotice::CallFailed(e));
            }
        }
    }

    /// Whether any instance of team `team` has `hook`.
    pub fn team_has(&self, team: i64, hook: Hook) -> bool {
        self.instances.iter().any(|((_, t), inst)| *t == team && inst.as_ref().is_some_and(|i| i.has(hook)))
    }
}
