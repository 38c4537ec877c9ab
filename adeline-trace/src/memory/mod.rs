//! Memory of the traced processes, sampled from procfs (no eBPF): resident
//! set size from `/proc/PID/statm`, threads from `/proc/PID/status`, and
//! the RSS growth rate by least squares over the recent samples.
//!
//! The run loop calls [`MemorySampler::sample`] about once a second with the
//! traced pids; snapshots read [`MemorySampler::report`].
pub mod growth;
pub mod sampler;
pub mod series;
pub mod stages;

pub use growth::{growth_window_ns, slope_per_s, MIN_GROWTH_WINDOW_NS};
pub use sampler::{read_proc, MemorySampler, ProcSample};
pub use series::{Series, SeriesSet, MAX_SAMPLES};
