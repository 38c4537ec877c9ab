//! adeline-trace agent: Plan -> probes -> ring buffer -> events -> metrics -> sinks.
pub mod alerts;
pub mod cli;
pub mod cmd;
pub mod config;
pub mod events;
pub mod format;
pub mod launch;
pub mod metrics;
pub mod probes;
pub mod python;
pub mod sinks;
pub mod state;
pub mod symbols;
pub mod tracer;
pub mod units;
