//! Reporting: counters per worker ([`stats`], also written as a JSON file)
//! and events for the slowpath through shared-memory rings ([`events`]).

pub mod events;
pub mod metrics;
pub mod stats;
pub mod timings;
