//! Which worker of the cluster runs a team's plugins.
//!
//! Every configuration × team instance lives on one worker of the whole cluster, the team's
//! **owner** ([`team_owner`]): events of a team with plugins are exchanged to it before the
//! `processEvent` chain, so `global` is one object, a counter in `cache` is bumped by one
//! instance, scheduled tasks have one runner, and memory holds each instance once rather than
//! once per worker that saw the team.
//!
//! What is written for an event (the event, its dead letters, those of its `onEvent` and
//! `exportEvents` calls) goes back to the worker that read its line (its **reader**), and is
//! written there: with exactly-once Kafka delivery each worker's transaction holds its own input
//! offsets, so an output must be written by the worker whose offsets it belongs to. The
//! dataflow is: read → exchange to owner → chain → exchange to reader → write → exchange to
//! owner → `onEvent`/`exportEvents` → exchange to reader → dead letters written.
//!
//! Two kinds of team stay on the worker that read them: teams no configuration applies to
//! (nothing to run, no reason to move them) and teams listed in `[runtime] spread_teams` (the
//! escape for a hot team: its plugins run on every worker that reads its events, one instance
//! per worker, which is right only for plugins that keep no per-instance state).

use std::collections::HashSet;

/// The worker that owns `team` among `peers` workers: FNV-1a over the team's 8 little-endian
/// bytes, then MurmurHash3's 64-bit finalizer, modulo `peers`. Stable across processes, builds and
/// runs (the standard library's hasher is not), so every process of a cluster agrees, and a
/// restart of the same shape finds each team where its state is. (FNV-1a alone keeps the low bits
/// of a small integer: teams 4, 8, 12, … would all land on one of four workers.)
pub fn team_owner(team: i64, peers: usize) -> usize {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in team.to_le_bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^= hash >> 33;
    (hash % peers.max(1) as u64) as usize
}

/// Where each team's plugins run, for one cluster shape.
#[derive(Clone, Debug)]
pub struct Placement {
    peers: usize,
    /// Some configuration applies to every team.
    all_teams: bool,
    /// Teams some configuration names.
    teams: HashSet<i64>,
    /// Teams whose events stay where they were read.
    spread: HashSet<i64>,
}

impl Placement {
    /// The placement over `peers` workers of configurations applying to these teams (`None`: to
    /// every team), `spread` teams staying where they are read.
    pub fn new<'a>(configured: impl IntoIterator<Item = Option<&'a [i64]>>, peers: usize, spread: impl IntoIterator<Item = i64>) -> Self {
        let mut all_teams = false;
        let mut teams = HashSet::new();
        for applies in configured {
            match applies {
                None => all_teams = true,
                Some(t) => teams.extend(t.iter().copied()),
            }
        }
        Self { peers: peers.max(1), all_teams, teams, spread: spread.into_iter().collect() }
    }

    /// Whether any event may move between workers (more than one worker, some plugin).
    pub fn exchanges(&self) -> bool {
        self.peers > 1 && (self.all_teams || !self.teams.is_empty())
    }

    /// Whether `team`'s events go to its owner: it has plugins and is not spread.
    pub fn moves(&self, team: i64) -> bool {
        self.peers > 1 && (self.all_teams || self.teams.contains(&team)) && !self.spread.contains(&team)
    }

    /// The worker that runs `team`'s plugins for an event read by worker `reader`.
    pub fn worker_for(&self, team: i64, reader: usize) -> usize {
        if self.moves(team) { team_owner(team, self.peers) } else { reader }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Golden values from an independent implementation (Python: FNV-1a with offset basis
    /// 0xcbf29ce484222325 and prime 0x100000001b3 over `struct.pack('<q', team)`, then Murmur3's
    /// fmix64): a change here would move every team's state between workers at a cluster's next
    /// start.
    #[test]
    fn owners_match_golden_values() {
        let got: Vec<usize> = (0..8).map(|t| team_owner(t, 4)).collect();
        assert_eq!(got, [2, 2, 2, 2, 1, 3, 2, 1]);
        assert_eq!(team_owner(-1, 7), 3);
        assert_eq!(team_owner(123_456_789, 10), 1);
        assert_eq!(team_owner(5, 0), 0, "no peers counts as one");
    }

    /// Python's counts for the same ids: multiples of 4 over 4 workers 44/54/52/50, even ids over
    /// 2 workers 101/99.
    #[test]
    fn structured_team_ids_spread_over_workers() {
        let count = |ids: &mut dyn Iterator<Item = i64>, peers: usize| {
            let mut per = vec![0; peers];
            ids.for_each(|t| per[team_owner(t, peers)] += 1);
            per
        };
        assert_eq!(count(&mut (0..800).step_by(4), 4), [44, 54, 52, 50]);
        assert_eq!(count(&mut (0..400).step_by(2), 2), [101, 99]);
        for peers in [3, 7] {
            let owners: HashSet<usize> = (0..200).map(|t| team_owner(t, peers)).collect();
            assert_eq!(owners.len(), peers, "{peers} workers, 200 teams: every worker owns some");
        }
    }

    #[test]
    fn only_teams_with_plugins_move_and_spread_teams_stay() {
        let p = Placement::new([Some(&[1, 2, 3][..])], 4, [3]);
        assert!(p.exchanges());
        assert_eq!(p.worker_for(1, 0), team_owner(1, 4));
        assert_eq!(p.worker_for(1, 3), team_owner(1, 4), "wherever it was read");
        assert_eq!(p.worker_for(3, 2), 2, "spread: stays with its reader");
        assert_eq!(p.worker_for(9, 1), 1, "no plugin: stays with its reader");
        let all = Placement::new([Some(&[1][..]), None], 4, []);
        assert_eq!(all.worker_for(9, 1), team_owner(9, 4));
        let one = Placement::new([None], 1, []);
        assert!(!one.exchanges() && !one.moves(9));
        assert!(!Placement::new([], 4, []).exchanges(), "no plugins, nothing moves");
    }
}
