//! adeline-trace agent: Plan -> probes -> ring buffer -> events -> metrics -> sinks.
pub mod alerts;
pub mod cli;
pub mod compare;
pub mod config;
pub mod events;
pub mod history;
pub mod launch;
pub mod list;
pub mod metrics;
pub mod probes;
pub mod resolve;
pub mod run;
pub mod sinks;
pub mod state;
pub mod summary;
pub mod target;
pub mod tracer;
