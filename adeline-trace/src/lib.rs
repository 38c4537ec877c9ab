//! adeline-trace agent: Plan -> probes -> ring buffer -> events -> metrics -> sinks.
pub mod alerts;
pub mod cli;
pub mod cmd;
pub mod config;
pub mod container;
pub mod events;
pub mod follow;
pub mod format;
pub mod journal;
pub mod launch;
pub mod metrics;
pub mod probes;
pub mod sinks;
pub mod state;
pub mod symbols;
pub mod tracer;
pub mod units;
