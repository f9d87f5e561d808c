//! Timely operators around the plugin host: one extension trait per operator, in its own file.

pub mod chain;
pub mod deferred;
pub mod placement;
pub mod write_events;
pub mod write_letters;
