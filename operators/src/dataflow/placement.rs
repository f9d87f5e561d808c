//! `to_owners` / `to_readers`: the exchanges around the plugin stages
//! ([`crate::plugin::placement`]). A record goes to the worker that runs its team's plugins, and
//! what was made of it comes back to the worker that read its line. Where nothing moves (one
//! worker, no plugin) there is no exchange at all.
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use operators::dataflow::placement::ToOwners;
//! use operators::plugin::placement::{Placement, team_owner};
//! use timely::dataflow::operators::{Inspect, ToStream};
//!
//! // Two workers, a configuration for every team: each team's records meet on its owner, and
//! // come back to the worker that made them.
//! let seen = Arc::new(Mutex::new(Vec::new()));
//! let sink = seen.clone();
//! timely::execute(timely::Config::process(2), move |worker| {
//!     let (me, sink) = (worker.index(), sink.clone());
//!     let placement = Arc::new(Placement::new([None], 2, []));
//!     worker.dataflow::<u64, _, _>(|scope| {
//!         // (team, reader) pairs, made on each worker.
//!         let records: Vec<(i64, u32)> = (1..=6).map(|team| (team, me as u32)).collect();
//!         let at_owner = records.to_stream(scope).to_owners(&placement, |r: &(i64, u32)| *r);
//!         let s = sink.clone();
//!         at_owner
//!             .inspect(move |r| s.lock().unwrap().push(("owner", r.0, me)))
//!             .to_readers(&placement, |r: &(i64, u32)| r.1)
//!             .inspect(move |r| sink.lock().unwrap().push(("reader", r.0, r.1 as usize - me)));
//!     });
//! })
//! .unwrap();
//! let seen = seen.lock().unwrap();
//! assert_eq!(seen.len(), 24);
//! for (stage, team, at) in seen.iter() {
//!     match *stage {
//!         "owner" => assert_eq!(*at, team_owner(*team, 2), "team {team} met on its owner"),
//!         _ => assert_eq!(*at, 0, "back where it was made"),
//!     }
//! }
//! ```

use std::sync::Arc;

use timely::ExchangeData;
use timely::dataflow::Stream;
use timely::dataflow::operators::core::Exchange;

use crate::plugin::placement::Placement;

/// The exchanges to a team's owner and back to a record's reader.
pub trait ToOwners<'scope, D: ExchangeData> {
    /// Sends each record to the worker that runs its team's plugins; `team_and_reader` names
    /// its team and the worker that read it.
    fn to_owners(self, placement: &Arc<Placement>, team_and_reader: impl Fn(&D) -> (i64, u32) + 'static) -> Self;
    /// Sends each record back to the worker that read its event (`reader`).
    fn to_readers(self, placement: &Arc<Placement>, reader: impl Fn(&D) -> u32 + 'static) -> Self;
}

impl<'scope, D: ExchangeData> ToOwners<'scope, D> for Stream<'scope, u64, Vec<D>> {
    fn to_owners(self, placement: &Arc<Placement>, team_and_reader: impl Fn(&D) -> (i64, u32) + 'static) -> Self {
        if !placement.exchanges() {
            return self;
        }
        let place = placement.clone();
        self.exchange(move |d: &D| {
            let (team, reader) = team_and_reader(d);
            place.worker_for(team, reader as usize) as u64
        })
    }

    fn to_readers(self, placement: &Arc<Placement>, reader: impl Fn(&D) -> u32 + 'static) -> Self {
        if !placement.exchanges() {
            return self;
        }
        self.exchange(move |d: &D| u64::from(reader(d)))
    }
}
