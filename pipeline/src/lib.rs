//! pluginflow: run PostHog plugins over event streams as a timely dataflow.
//!
//! This crate is "where events come from and go": configuration, the recorded-log source, the
//! outputs, and the assembly of the dataflow. The per-event work lives in `operators`.

pub mod config;
pub mod http;
pub mod io;
pub mod kafka;
pub mod live;
pub mod log_input;
pub mod resume;
pub mod run;
pub mod stats;
pub mod try_plugin;
