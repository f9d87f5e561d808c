//! Timely operators around the plugin host: one extension trait per operator.
