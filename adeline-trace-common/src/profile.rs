//! The profiler's records: on-CPU samples (a `perf_event` cpu-clock
//! program) and off-CPU intervals (`sched_switch`), both with the user and
//! kernel stacks and the innermost open stage of the thread.
//!
//! A record is a [`SampleHeader`] followed by `n_user` user return
//! addresses and then `n_kernel` kernel addresses (u64 each, innermost
//! first); it is submitted with only the frames it holds (variable size).

/// Record kind of a profile sample (first `u32`, like every record).
pub use crate::KIND_SAMPLE;

/// `SampleHeader::what`: a cpu-clock sample; `weight_ns` is the period.
pub const SAMPLE_ON_CPU: u32 = 1;
/// `SampleHeader::what`: the thread was off the CPU from `ts_ns` for
/// `weight_ns` (blocked) and then `wait_ns` more (runnable, waiting for a
/// CPU). The stacks are the ones at the moment it left the CPU.
pub const SAMPLE_OFF_CPU: u32 = 2;

/// The user stack walk reached the outermost frame (a zero frame pointer):
/// nothing is missing at its root end.
pub const SAMPLE_USER_COMPLETE: u32 = 1;
/// The thread left the CPU preempted (still runnable): all of its off-CPU
/// time was a wait for a CPU.
pub const SAMPLE_PREEMPTED: u32 = 2;
/// A wake-up was seen: `weight_ns` ends at the wake-up, `wait_ns` runs from
/// it to the switch back in.
pub const SAMPLE_WOKEN: u32 = 4;

/// Most user frames walked (frame pointers) per sample.
pub const MAX_USER_FRAMES: usize = 127;
/// Most kernel frames per sample.
pub const MAX_KERNEL_FRAMES: usize = 64;

/// Fixed part of a sample record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SampleHeader {
    /// Always `KIND_SAMPLE`.
    pub kind: u32,
    /// `SAMPLE_ON_CPU` or `SAMPLE_OFF_CPU`.
    pub what: u32,
    pub pid: u32,
    pub tid: u32,
    /// Innermost open traced stage on the thread, or `NO_STAGE`.
    pub stage: u32,
    /// `SAMPLE_*` flag bits.
    pub flags: u32,
    pub n_user: u32,
    pub n_kernel: u32,
    /// CLOCK_MONOTONIC ns: the sample, or when the thread left the CPU.
    pub ts_ns: u64,
    /// On-CPU: the sampling period; off-CPU: the time blocked.
    pub weight_ns: u64,
    /// Off-CPU: the time runnable but waiting for a CPU after it.
    pub wait_ns: u64,
    /// Entry time of the frame-root call open on the thread (0 if none).
    pub frame_ns: u64,
}

/// Room for every frame of a sample.
pub const MAX_FRAMES: usize = MAX_USER_FRAMES + MAX_KERNEL_FRAMES;

/// A whole sample as the kernel builds it (per-CPU scratch, and the
/// per-thread off-CPU state): the user frames, then the kernel frames
/// right after them.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SampleBuf {
    pub header: SampleHeader,
    pub frames: [u64; MAX_FRAMES],
}

/// Bytes of a record holding `n_user` and `n_kernel` frames.
pub const fn sample_bytes(n_user: usize, n_kernel: usize) -> usize {
    core::mem::size_of::<SampleHeader>() + 8 * (n_user + n_kernel)
}

/// Per-CPU counters of the profiler (`PROFILE_COUNTERS`).
/// Samples taken of traced threads.
pub const PCOUNTER_SAMPLES: u32 = 0;
/// Off-CPU intervals recorded.
pub const PCOUNTER_OFF_CPU: u32 = 1;
/// Records lost: the ring buffer was full.
pub const PCOUNTER_RING_FULL: u32 = 2;
/// Off-CPU intervals shorter than the minimum (not sent).
pub const PCOUNTER_OFF_CPU_SHORT: u32 = 3;
pub const PCOUNTERS: u32 = 4;
