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

/// Identifies an instance in a worker: (configuration index in chain order, team).
pub type InstanceKey = (usize, i64);

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
    /// An app-metric count: calls of a hook that ended one way.
    Metric(AppMetric),
}

/// How a hook call ended, for app metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// On the first attempt.
    Succeeded,
    /// After one or more retries.
    SucceededOnRetry,
    /// For good (after the last retry, or at once for a non-retriable error).
    Failed,
}

impl Outcome {
    /// The metric's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::SucceededOnRetry => "succeeded_on_retry",
            Outcome::Failed => "failed",
        }
    }
}

/// One app-metric observation: `count` calls (or exported events) of `hook` in a
/// configuration for a team ended with `outcome`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppMetric {
    /// Configuration id.
    pub config_id: String,
    /// Team.
    pub team: i64,
    /// Hook (category).
    pub hook: Hook,
    /// Outcome.
    pub outcome: Outcome,
    /// How many.
    pub count: u64,
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
            for (i, inst) in &taken {
                if o.succeeded.iter().any(|l| l == inst.label()) {
                    let config_id = self.specs[*i].id.clone();
                    let m = AppMetric { config_id, team, hook: Hook::ProcessEvent, outcome: Outcome::Succeeded, count: 1 };
                    self.notices.push(PluginNotice::Metric(m));
                }
            }
            for err in &o.failed {
                let m = AppMetric { config_id: err.config_id.clone(), team, hook: Hook::ProcessEvent, outcome: Outcome::Failed, count: 1 };
                self.notices.push(PluginNotice::Metric(m));
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

    /// Records an app metric.
    pub fn metric(&mut self, key: InstanceKey, hook: Hook, outcome: Outcome, count: u64) {
        let config_id = self.specs[key.0].id.clone();
        self.notices.push(PluginNotice::Metric(AppMetric { config_id, team: key.1, hook, outcome, count }));
    }

    /// Records a failed call.
    pub fn failed(&mut self, error: PluginError) {
        self.notices.push(PluginNotice::CallFailed(error));
    }

    /// Instances of `team` with any of `hooks`, in chain order (creating them if needed).
    pub fn team_instances_with(&mut self, team: i64, hooks: &[Hook]) -> Vec<InstanceKey> {
        self.chain(team)
            .into_iter()
            .map(|i| (i, team))
            .filter(|k| self.instances.get(k).and_then(Option::as_ref).is_some_and(|p| hooks.iter().any(|h| p.has(*h))))
            .collect()
    }

    /// The instance for `key`, creating it if needed; `None` when it failed to load.
    pub fn instance_mut(&mut self, key: InstanceKey) -> Option<&mut PluginInstance> {
        if key.0 >= self.specs.len() {
            return None;
        }
        self.ensure(key.0, key.1);
        self.instances.get_mut(&key).and_then(Option::as_mut)
    }

    /// Configuration id of the configuration at `index` (chain order).
    pub fn config_id(&self, index: usize) -> &str {
        &self.specs[index].id
    }

    /// The key of configuration `config_id` for `team`.
    pub fn key_of(&self, config_id: &str, team: i64) -> Option<InstanceKey> {
        self.specs.iter().position(|s| s.id == config_id).map(|i| (i, team))
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
