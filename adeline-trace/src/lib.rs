//! adeline-trace agent: Plan -> probes -> ring buffer -> events -> metrics -> sinks.
pub mod cli;
pub mod config;
pub mod events;
pub mod launch;
pub mod list;
pub mod metrics;
pub mod probes;
pub mod resolve;
pub mod run;
pub mod sinks;
pub mod target;
