//! Memory of the traced processes, sampled from procfs (no eBPF): resident
//! set size from `/proc/PID/statm`, threads from `/proc/PID/status`, and
//! the RSS growth rate by least squares over the recent samples; with them,
//! the processes' CPU use, the host's cores and memory, and its GPUs
//! ([`HostSampler`], through sysinfo and NVML).
//!
//! The run loop calls [`MemorySampler::sample`] and [`HostSampler::sample`]
//! about once a second with the traced pids; snapshots read their reports.
pub mod alloc;
pub mod gpu;
pub mod growth;
pub mod host;
pub mod sampler;
pub mod series;
pub mod stages;

pub use gpu::{Gpus, WITHOUT_NVML};
pub use growth::{growth_window_ns, slope_per_s, MIN_GROWTH_WINDOW_NS};
pub use host::HostSampler;
pub use sampler::{read_proc, MemorySampler, ProcSample};
pub use series::{Series, SeriesSet, MAX_SAMPLES};
