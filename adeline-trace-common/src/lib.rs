//! Types shared by the kernel programs and the agent.
//!
//! Every record that crosses the ring buffer starts with a `u32` kind so the
//! agent can decode a stream that mixes record types. All records are
//! `#[repr(C)]`, fixed size and free of implicit padding.
#![no_std]

/// The profiler's records (`run --profile`).
pub mod profile;
pub mod python;
pub mod usdt;

/// Record kinds (first `u32` of every ring-buffer record).
pub const KIND_SPAN: u32 = 1;
/// A gauge sample: an integer argument or return value of a function.
pub const KIND_GAUGE: u32 = 2;

/// A memory mapping change by a traced process: mmap/munmap, a mremap's
/// change of length, a brk move of the heap's end.
pub const KIND_MAP: u32 = 3;
/// `MapRecord::op` values: memory mapped (mmap, growing mremap or brk) ...
pub const MAP_OP_MMAP: u32 = 1;
/// ... or released (munmap, shrinking mremap or brk).
pub const MAP_OP_MUNMAP: u32 = 2;
/// A profiler sample ([`profile::SampleHeader`] and its frames).
pub const KIND_SAMPLE: u32 = 4;

/// Most CPUs the `tp_btf/rss_stat` program handles (more: the classic
/// tracepoint).
pub const RSS_MAX_CPUS: usize = 128;

/// Resident pages of one mm as rss_stat last reported them, in
/// bytes, by member: MM_FILEPAGES, MM_ANONPAGES, MM_SWAPENTS, MM_SHMEMPAGES.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RssState {
    pub member_bytes: [i64; 4],
    /// Tracepoint hits that updated it.
    pub updates: u64,
    /// The tgid whose threads' events are charged to stages (tp_btf path;
    /// the classic path has the record's `curr`).
    pub owner: u32,
    pub _pad: u32,
    /// tp_btf path: each CPU's share of the file, anon and shmem counters
    /// as last seen on that CPU (the counter's `s32` there).
    pub shares: [[i32; RSS_MAX_CPUS]; 3],
}

impl Default for RssState {
    fn default() -> Self {
        RssState {
            member_bytes: [0; 4],
            updates: 0,
            owner: 0,
            _pad: 0,
            shares: [[0; RSS_MAX_CPUS]; 3],
        }
    }
}

impl RssState {
    /// The resident set: file + anon + shmem (swap entries are not resident).
    pub fn rss_bytes(&self) -> u64 {
        let m = &self.member_bytes;
        (m[0].max(0) + m[1].max(0) + m[3].max(0)) as u64
    }
}
/// `MapRecord::stage` when no traced stage was running on the thread.
pub const NO_STAGE: u32 = u32::MAX;

/// `FRAME_STAGE` value meaning "no frame root declared".
pub const NO_FRAME_STAGE: u32 = u32::MAX;

/// Gauge attach cookie: gauge id in the low 32 bits, the argument index
/// (0..=5, x86-64 SysV integer registers) in bits 32..40. Return-value
/// gauges use their own program and ignore the index.
pub const fn gauge_cookie(gauge: u32, arg: u8) -> u64 {
    (gauge as u64) | ((arg as u64) << 32)
}

/// Deepest nesting of traced calls tracked per thread. Deeper calls are
/// counted in `COUNTER_DEPTH_OVERFLOW` and produce no span.
pub const MAX_DEPTH: usize = 32;

/// Most stages one agent can trace (stage ids are `0..MAX_STAGES`).
pub const MAX_STAGES: u32 = 1024;

/// Index of a stage id (or `NO_STAGE`) in the per-stage arrays.
#[inline(always)]
pub const fn stage_slot(stage: u32) -> u32 {
    if stage < MAX_STAGES {
        stage
    } else {
        MAX_STAGES
    }
}

/// Indexes of the per-stage arrays (`ALLOC_STATS`, `STAGE_RSS`) for stage
/// ids `0..stages`, then the slot of "no stage" (`MAX_STAGES`).
pub fn stage_slots(stages: usize) -> impl Iterator<Item = u32> {
    (0..stages as u32).chain(core::iter::once(MAX_STAGES))
}

/// Most processes the in-kernel pid filter holds.
pub const MAX_PIDS: u32 = 1024;

/// Default ring buffer size in bytes (power of two, multiple of the page
/// size; `--ring-bytes` sets another at load time): 4 MiB, ~58,000 span
/// records, 230 ms of 250,000 records a second between the agent's 10 ms
/// drains. Its data pages are mapped into the agent twice, so it counts
/// 8 MiB in the agent's RSS.
pub const RING_BYTES: u32 = 1 << 22;

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
/// A gauge or memory-mapping record could not be reserved (ring full);
/// span losses are `COUNTER_RING_FULL`, so they stay exactly accountable.
pub const COUNTER_OTHER_RING_FULL: u32 = 4;
/// Alloc mode: an allocation could not be recorded (outstanding map full).
pub const COUNTER_ALLOC_MAP_FULL: u32 = 5;
/// Alloc mode: the user stack of an allocation could not be collected.
pub const COUNTER_ALLOC_NO_STACK: u32 = 6;
/// Unwind support: a traced call was unwound by an exception (its span is
/// marked `SPAN_FLAG_EXCEPTION`; counted even when filtered or lost).
pub const COUNTER_UNWOUND: u32 = 7;
/// An open call dropped at the entry of a later call made from the same
/// or an outer frame: it left without a return the probes saw (longjmp,
/// an exit instruction not probed).
pub const COUNTER_ABANDONED: u32 = 8;
/// Number of counters.
pub const COUNTERS: u32 = 9;

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
    /// `dur_ns` minus the durations of the traced calls made directly
    /// inside this one (its own time).
    pub self_ns: u64,
    /// Entry time of the frame-root call this call ran inside (or is), on
    /// this thread; 0 when outside any frame or no frame root is declared.
    pub frame_ns: u64,
    /// Number of traced calls open on this thread below this one.
    pub depth: u32,
    /// `SPAN_FLAG_*` bits (one namespace for every probe kind).
    pub flags: u32,
}

/// `SpanRecord::flags`, one namespace for every probe kind. A native call
/// did not return: an exception (C++ throw, Rust panic, or a thread's
/// forced unwind) unwound it. `dur_ns` runs to the catch (or the thread's
/// exit for a forced unwind). JSON `"exception": true`.
pub const SPAN_FLAG_EXCEPTION: u32 = 1;
/// A Python call ended with an exception: the interpreter left its frame
/// through the unwind path (an exact exit). JSON `"error": true`.
pub const SPAN_FLAG_ERROR: u32 = 2;
/// A Python generator or coroutine call, from its first resume to its
/// final return (self time = its active time minus its children). JSON
/// `"generator": true`.
pub const SPAN_FLAG_GENERATOR: u32 = 4;

/// One integer sampled by a gauge probe.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GaugeRecord {
    /// Always `KIND_GAUGE`.
    pub kind: u32,
    /// Gauge id (low half of the attach cookie).
    pub gauge: u32,
    pub pid: u32,
    pub tid: u32,
    /// CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    /// The register's value as a signed 64-bit integer.
    pub value: i64,
}

/// An mmap or munmap system call of a traced process, with the traced
/// stage that was running on the thread (innermost open call).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MapRecord {
    /// Always `KIND_MAP`.
    pub kind: u32,
    /// `MAP_OP_MMAP` or `MAP_OP_MUNMAP`.
    pub op: u32,
    pub pid: u32,
    pub tid: u32,
    /// Stage id, or `NO_STAGE`.
    pub stage: u32,
    pub _pad: u32,
    /// CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    /// Length asked for (bytes).
    pub bytes: u64,
    /// Start of the frame the thread was in (0 if none), as in `SpanRecord`.
    pub frame_ns: u64,
}

/// Allocator entry points traced in alloc mode (the attach cookie of
/// `alloc_enter`/`alloc_exit`): which arguments hold the size, and how the
/// address comes back.
/// `malloc(size)`, `valloc(size)`, `pvalloc(size)`.
pub const ALLOC_FN_MALLOC: u32 = 1;
/// `calloc(nmemb, size)`.
pub const ALLOC_FN_CALLOC: u32 = 2;
/// `realloc(ptr, size)`: frees `ptr` when it returns non-null (or size 0).
pub const ALLOC_FN_REALLOC: u32 = 3;
/// `posix_memalign(memptr, align, size)`: the address is `*memptr` on 0.
pub const ALLOC_FN_POSIX_MEMALIGN: u32 = 4;
/// `aligned_alloc(align, size)`, `memalign(align, size)`.
pub const ALLOC_FN_ALIGNED: u32 = 5;
/// `mmap(addr, length, ...)`: MAP_FAILED is (void *)-1.
pub const ALLOC_FN_MMAP: u32 = 6;

/// Most outstanding allocations tracked at once (the agent may lower it).
pub const MAX_ALLOCS: u32 = 1 << 18;
/// Distinct user stacks kept for allocation sites.
pub const MAX_ALLOC_STACKS: u32 = 1 << 14;
/// `AllocInfo::stack_id` when no stack was collected.
pub const NO_STACK: u32 = u32::MAX;

/// The allocator call in progress on a thread (alloc mode).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocPending {
    /// Allocator calls open on the thread (an allocator calling another,
    /// e.g. malloc calling mmap, is counted once: only the outermost).
    pub depth: u32,
    /// `ALLOC_FN_*` of the outermost call, 0 when none is open.
    pub kind: u32,
    /// 1 when the new block is kept (passed the size threshold and sampling).
    pub keep: u32,
    pub _pad: u32,
    /// Bytes asked for.
    pub size: u64,
    /// `realloc`'s old pointer, or `posix_memalign`'s `memptr`.
    pub arg: u64,
}

/// One outstanding allocation (alloc mode), keyed by its address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocInfo {
    pub size: u64,
    /// CLOCK_MONOTONIC nanoseconds when it was allocated.
    pub ts_ns: u64,
    /// Stage running on the thread, or `NO_STAGE`.
    pub stage: u32,
    /// Id in the `ALLOC_STACKS` map, or `NO_STACK`.
    pub stack_id: u32,
    /// Process (tgid) that allocated it: its stacks are in its address space.
    pub pid: u32,
    pub _pad: u32,
}

/// Allocation totals of one stage (per CPU; the agent sums). Frees count
/// against the stage that made the allocation, so `alloc_bytes -
/// freed_bytes` is what the stage holds.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocStats {
    pub allocs: u64,
    pub alloc_bytes: u64,
    pub frees: u64,
    pub freed_bytes: u64,
}

/// `READ_RETURN_ADDRESS` bit (kernel global): catch hooks are attached
/// (exit-instruction mode): the entry probe records each call's return
/// address and drops calls of frames that are gone.
pub const RETURN_ADDRESS_UNWIND: u32 = 1;
/// `READ_RETURN_ADDRESS` bit: the profiler runs: the entry probe records
/// each call's return address (`OpenCall::orig`), which the sampler puts
/// back where a uretprobe replaced it.
pub const RETURN_ADDRESS_PROFILE: u32 = 2;

/// In-kernel aggregation (`--no-spans` with `--aggregate-above`): the
/// histogram of a stage's durations, binned exactly as the agent's window
/// histograms (`LogHist`): 0..64 ns one bin each, then each octave
/// `[2^k, 2^(k+1))` for k in 6..42 in 64 equal bins. A quantile read at
/// a bin's middle is within 1/128 (0.78%) of the exact value. Durations
/// of 2^42 ns (~73 min) or more fall in the last bin.
pub const AGG_SUB_BITS: u32 = 6;
/// Bins of [`StageHist`]: 64 exact ones, then 36 octaves of 64.
pub const AGG_BINS: usize = 64 + 36 * 64;

/// Bin of a duration in [`StageHist::bins`] (chunk `c` = bin / 64 and
/// index `i` = bin % 64 as in the agent's `LogHist`).
#[inline(always)]
pub const fn agg_bin(v: u64) -> usize {
    if v < (1 << AGG_SUB_BITS) {
        return v as usize;
    }
    let k = 63 - v.leading_zeros();
    let b = ((k - AGG_SUB_BITS + 1) as usize) << AGG_SUB_BITS
        | (((v >> (k - AGG_SUB_BITS)) as usize) & ((1 << AGG_SUB_BITS) - 1));
    if b < AGG_BINS {
        b
    } else {
        AGG_BINS - 1
    }
}

/// `AGG_MODE` values: the stage's calls are sent as span records ...
pub const AGG_OFF: u32 = 0;
/// ... or counted in its `STAGE_AGG` histogram (no record per call).
pub const AGG_ON: u32 = 1;

/// Calls of one stage counted in the kernel instead of sent (per CPU;
/// the agent sums the CPUs and takes differences between reads, so the
/// counters only ever grow; bins wrap at 2^32, which the differences
/// absorb).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StageHist {
    pub count: u64,
    /// Sum of the durations, ns.
    pub sum_ns: u64,
    /// Sum of the self times, ns.
    pub self_ns: u64,
    /// Sum of the self times of the calls made inside a frame, ns.
    pub frame_self_ns: u64,
    pub bins: [u32; AGG_BINS],
}

impl Default for StageHist {
    fn default() -> Self {
        StageHist {
            count: 0,
            sum_ns: 0,
            self_ns: 0,
            frame_self_ns: 0,
            bins: [0; AGG_BINS],
        }
    }
}

/// `OpenCall::flags`: the open call is a Python frame (`key` = frame |
/// epoch); without it, a native call (`key` = its return-address slot).
pub const OPEN_PYTHON: u32 = 1;
/// `OpenCall::flags`: ... of a generator or coroutine (one activation).
pub const OPEN_GENERATOR: u32 = 2;
/// `OpenCall::flags`: a USDT pair's call (`key` = the stack pointer at
/// its entry probe, not a return-address slot): it may outlive the frame
/// it started in, so only its return probe ends it (never the exit-
/// instruction mode's abandonment, a catch, or another stage's exit scan).
pub const OPEN_USDT: u32 = 4;

/// One open traced call on a thread: native (stage.rs, unwind.rs) and
/// Python (python.rs) calls share the per-thread stack.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenCall {
    pub stage: u32,
    /// `OPEN_*` bits; 0 for a native call.
    pub flags: u32,
    pub start_ns: u64,
    /// Summed durations of the traced calls returned directly inside this one.
    pub child_ns: u64,
    /// What pairs the entry with its exit. A native call: its
    /// return-address slot, the stack pointer at the entry probe (which
    /// sits before the stack pointer moves); exit instructions find their
    /// call by it and a catch tells unwound calls by it. A Python call
    /// (`OPEN_PYTHON`): the frame address and window epoch
    /// (`python::PY_FRAME_MASK`).
    pub key: u64,
    /// A native call in exit-instruction mode: the return address in its
    /// slot at entry (0 if unread): a slot that no longer holds it belongs
    /// to a frame that is gone. 0 for a Python call.
    pub orig: u64,
}

/// The traced calls open on one thread, innermost last.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadCalls {
    pub depth: u32,
    /// 1 + the stack index of the open frame-root call; 0 when none is open.
    pub frame_level: u32,
    /// Entry time of that frame-root call.
    pub frame_ns: u64,
    pub calls: [OpenCall; MAX_DEPTH],
    /// Non-zero once a forced unwind (pthread_exit, pthread_cancel) started
    /// on the thread: its open calls end as unwound when it exits.
    pub forced_unwind: u32,
    pub _pad: u32,
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all are repr(C), Copy, with explicit padding fields only.
    unsafe impl aya::Pod for SpanRecord {}
    unsafe impl aya::Pod for GaugeRecord {}
    unsafe impl aya::Pod for MapRecord {}
    unsafe impl aya::Pod for OpenCall {}
    unsafe impl aya::Pod for ThreadCalls {}
    unsafe impl aya::Pod for AllocPending {}
    unsafe impl aya::Pod for AllocInfo {}
    unsafe impl aya::Pod for AllocStats {}
    unsafe impl aya::Pod for RssState {}
    unsafe impl aya::Pod for profile::SampleHeader {}
    unsafe impl aya::Pod for profile::SampleBuf {}
    unsafe impl aya::Pod for profile::PyProc {}
    unsafe impl aya::Pod for StageHist {}
    unsafe impl aya::Pod for python::PySite {}
    unsafe impl aya::Pod for python::PyPattern {}
    unsafe impl aya::Pod for python::PyObjKey {}
    unsafe impl aya::Pod for python::PyCodeInfo {}
    unsafe impl aya::Pod for python::PyGenState {}
    unsafe impl aya::Pod for usdt::UsdtArgSpec {}
}
