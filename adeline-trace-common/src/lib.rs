//! Types shared by the kernel programs and the agent.
//!
//! Every record that crosses the ring buffer starts with a `u32` kind so the
//! agent can decode a stream that mixes record types. All records are
//! `#[repr(C)]`, fixed size and free of implicit padding.
#![no_std]

/// Version of the kernel/agent record layout. Bump on any layout change.
pub const ABI_VERSION: u32 = 1;

/// Record kinds (first `u32` of every ring-buffer record).
pub const KIND_SPAN: u32 = 1;

/// Deepest nesting of traced calls tracked per thread. Deeper calls are
/// counted in `COUNTER_DEPTH_OVERFLOW` and produce no span.
pub const MAX_DEPTH: usize = 16;

/// Most stages one agent can trace (stage ids are `0..MAX_STAGES`).
pub const MAX_STAGES: u32 = 1024;

/// Most processes the in-kernel pid filter holds.
pub const MAX_PIDS: u32 = 1024;

/// Ring buffer size in bytes (power of two, multiple of the page size).
pub const RING_BYTES: u32 = 1 << 24;

/// Indexes of the per-CPU counters in the `COUNTERS` map. Delivered
/// records are counted by the agent as it reads them, not here.
/// A record could not be reserved: the ring buffer was full.
pub const COUNTER_RING_FULL: u32 = 0;
/// A call nested deeper than `MAX_DEPTH`.
pub const COUNTER_DEPTH_OVERFLOW: u32 = 1;
/// A return without a matching entry (attached mid-call, longjmp, eviction).
pub const COUNTER_UNMATCHED_EXIT: u32 = 2;
/// A span shorter than the minimum duration, filtered in the kernel.
pub const COUNTER_FILTERED_SHORT: u32 = 3;
/// Number of counters.
pub const COUNTERS: u32 = 4;

/// One completed call of a traced stage function.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpanRecord {
    /// Always `KIND_SPAN`.
    pub kind: u32,
    /// Stage id (the attach cookie).
    pub stage: u32,
    /// Process id (tgid).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Entry time, CLOCK_MONOTONIC nanoseconds (bpf_ktime_get_ns).
    pub start_ns: u64,
    /// Duration from entry to return, nanoseconds.
    pub dur_ns: u64,
    /// Number of traced calls open on this thread below this one.
    pub depth: u32,
    pub _pad: u32,
}

/// One open traced call on a thread.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenCall {
    pub stage: u32,
    pub _pad: u32,
    pub start_ns: u64,
}

/// The traced calls open on one thread, innermost last.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadCalls {
    pub depth: u32,
    pub _pad: u32,
    pub calls: [OpenCall; MAX_DEPTH],
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all are repr(C), Copy, with explicit padding fields only.
    unsafe impl aya::Pod for SpanRecord {}
    unsafe impl aya::Pod for OpenCall {}
    unsafe impl aya::Pod for ThreadCalls {}
}
