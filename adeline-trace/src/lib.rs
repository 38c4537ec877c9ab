//! adeline-trace agent: Plan -> probes -> ring buffer -> events -> metrics -> sinks.
pub mod target;
