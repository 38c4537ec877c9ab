//! Every map the kernel programs use. The agent finds them by these names.
use core::{ffi::c_void, ptr};

use adeline_trace_common::{
    AllocInfo, AllocPending, AllocStats, RssState, StageHist, ThreadCalls, AGG_ON,
    COUNTERS as N_COUNTERS, MAX_ALLOCS, MAX_ALLOC_STACKS, MAX_PIDS, MAX_STAGES, RING_BYTES,
};
use aya_ebpf::{
    bindings::{bpf_map_type::BPF_MAP_TYPE_TASK_STORAGE, BPF_LOCAL_STORAGE_GET_F_CREATE},
    helpers::{bpf_get_current_task_btf, bpf_task_storage_get},
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf, StackTrace},
};

// Configuration set by the agent at load time (constants to the verifier:
// no map lookup per call).

/// Non-zero: only tgids present in `PIDS` are traced.
#[no_mangle]
static FILTER_PIDS: u32 = 0;

/// Stage id of the frame root (`NO_FRAME_STAGE` when none).
#[no_mangle]
static FRAME_STAGE: u32 = adeline_trace_common::NO_FRAME_STAGE;

/// `RETURN_ADDRESS_*` bits. Non-zero: the entry probe reads each call's
/// return address. With catch hooks attached (unwind.rs, exit-instruction
/// mode) they compare against it, and the entry drops calls of frames
/// that are gone; the profiler puts it back where a uretprobe replaced it.
#[no_mangle]
static READ_RETURN_ADDRESS: u32 = 0;

/// Whether catch hooks are attached (the entry probe drops stale calls).
#[inline(always)]
pub fn read_return_address() -> bool {
    // SAFETY: read of a load-time constant.
    unsafe {
        core::ptr::read_volatile(&READ_RETURN_ADDRESS) & adeline_trace_common::RETURN_ADDRESS_UNWIND
            != 0
    }
}

/// Whether the entry probe records the return address (`OpenCall::orig`).
#[inline(always)]
pub fn record_return_address() -> bool {
    // SAFETY: read of a load-time constant.
    unsafe { core::ptr::read_volatile(&READ_RETURN_ADDRESS) != 0 }
}

/// Spans shorter than this are counted but not sent (0 = send all).
#[no_mangle]
static MIN_DUR_NS: u64 = 0;

/// Non-zero when in-kernel aggregation may be on (`AGG_MODE` is read
/// only then).
#[no_mangle]
static AGGREGATE: u32 = 0;

/// Alloc mode: allocations smaller than this are not tracked.
#[no_mangle]
static ALLOC_MIN_BYTES: u64 = 0;

/// Alloc mode: keep one allocation in this many, at random (1 = all).
#[no_mangle]
static ALLOC_SAMPLE: u32 = 1;

/// Alloc mode: non-zero to collect the user stack of each allocation.
#[no_mangle]
static ALLOC_WITH_STACKS: u32 = 1;

/// Records for the agent (spans and later kinds), submitted without wakeup.
#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);

/// Per-CPU event and loss counters, indexed by `COUNTER_*`.
#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(N_COUNTERS, 0);

/// Tgids to trace when `FILTER_PIDS` is set.
#[map(name = "PIDS")]
pub static PIDS: HashMap<u32, u8> = HashMap::with_max_entries(MAX_PIDS, 0);

/// A BTF-defined task-local storage map (kernel 5.11+): one `T` per thread,
/// found through the task itself instead of a hash lookup, and freed by the
/// kernel when the thread exits. aya-ebpf 0.2.1 has no type for it; this is
/// the same layout as its `btf_map_def!` maps (`.maps` section, fields are
/// BTF-encoded pointers the loader reads, never dereferenced).
#[repr(C)]
pub struct TaskStorage<T> {
    r#type: *const [i32; BPF_MAP_TYPE_TASK_STORAGE as usize],
    key: *const i32,
    value: *const T,
    max_entries: *const [i32; 0],
    // BPF_F_NO_PREALLOC, required for local storage maps.
    map_flags: *const [i32; 1],
}

// SAFETY: placeholder pointers patched by the loader, never dereferenced.
unsafe impl<T> Sync for TaskStorage<T> {}

impl<T> TaskStorage<T> {
    pub const fn new() -> Self {
        TaskStorage {
            r#type: ptr::null(),
            key: ptr::null(),
            value: ptr::null(),
            max_entries: ptr::null(),
            map_flags: ptr::null(),
        }
    }

    /// The current thread's value, zero-initialised on first use when
    /// `create` is set; null if absent (or the kernel refused).
    #[inline(always)]
    pub fn current(&self, create: bool) -> *mut T {
        let flags = if create {
            BPF_LOCAL_STORAGE_GET_F_CREATE as u64
        } else {
            0
        };
        // SAFETY: the helpers take this map's address and the current task.
        unsafe {
            bpf_task_storage_get(
                ptr::from_ref(self).cast_mut().cast::<c_void>(),
                bpf_get_current_task_btf(),
                ptr::null_mut(),
                flags,
            )
        }
        .cast::<T>()
    }
}

/// Open traced calls of each thread (task-local storage).
#[unsafe(link_section = ".maps")]
#[unsafe(export_name = "THREADS")]
pub static THREADS: TaskStorage<ThreadCalls> = TaskStorage::new();

/// The allocator call in progress on each thread (alloc mode).
#[unsafe(link_section = ".maps")]
#[unsafe(export_name = "ALLOC_THREADS")]
pub static ALLOC_THREADS: TaskStorage<AllocPending> = TaskStorage::new();

/// Outstanding allocations by address (alloc mode).
#[map(name = "ALLOCS")]
pub static ALLOCS: HashMap<u64, AllocInfo> = HashMap::with_max_entries(MAX_ALLOCS, 0);

/// User stacks of allocation sites (alloc mode).
#[map(name = "ALLOC_STACKS")]
pub static ALLOC_STACKS: StackTrace = StackTrace::with_max_entries(MAX_ALLOC_STACKS, 0);

/// Allocation totals per stage (index = stage id; `MAX_STAGES` = no stage).
#[map(name = "ALLOC_STATS")]
pub static ALLOC_STATS: PerCpuArray<AllocStats> = PerCpuArray::with_max_entries(MAX_STAGES + 1, 0);

/// Resident counters per mm (key: kmem:rss_stat's hashed id, or the
/// mm's address on the tp_btf path), for the traced processes' mms.
#[map(name = "RSS")]
pub static RSS: HashMap<u64, RssState> = HashMap::with_max_entries(MAX_PIDS, 0);

/// Where a new `RSS` value is built (per CPU; too big for the stack).
#[map(name = "RSS_SCRATCH")]
pub static RSS_SCRATCH: PerCpuArray<RssState> = PerCpuArray::with_max_entries(1, 0);

/// Resident bytes added (negative: released) by page-counter changes of a
/// traced process's own threads, per stage running on the thread (index =
/// stage id; `MAX_STAGES` = no stage).
#[map(name = "STAGE_RSS")]
pub static STAGE_RSS: PerCpuArray<i64> = PerCpuArray::with_max_entries(MAX_STAGES + 1, 0);

/// The `RSS` key of each traced tgid (learned from its own rss_stat events).
#[map(name = "MM_IDS")]
pub static MM_IDS: HashMap<u32, u64> = HashMap::with_max_entries(MAX_PIDS, 0);

/// The last program break (brk) seen per traced tgid.
#[map(name = "BRKS")]
pub static BRKS: HashMap<u32, u64> = HashMap::with_max_entries(MAX_PIDS, 0);

/// Per stage: `AGG_ON` when its calls go to `STAGE_AGG` instead of the
/// ring buffer (set by the agent by call rate).
#[map(name = "AGG_MODE")]
pub static AGG_MODE: Array<u32> = Array::with_max_entries(MAX_STAGES, 0);

/// Per stage (index = stage id), per CPU: the histogram of its aggregated
/// calls. The agent sets the size to its number of stages.
#[map(name = "STAGE_AGG")]
pub static STAGE_AGG: PerCpuArray<StageHist> = PerCpuArray::with_max_entries(1, 0);

/// The aggregation histogram of `stage` when its calls are aggregated.
#[inline(always)]
pub fn aggregated(stage: u32) -> Option<*mut StageHist> {
    // SAFETY: read of a load-time constant.
    if unsafe { core::ptr::read_volatile(&AGGREGATE) } == 0 {
        return None;
    }
    if AGG_MODE.get(stage).copied() != Some(AGG_ON) {
        return None;
    }
    STAGE_AGG.get_ptr_mut(stage)
}

/// Adds one to a per-CPU counter.
#[inline(always)]
pub fn bump(counter: u32) {
    if let Some(p) = COUNTERS.get_ptr_mut(counter) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *p += 1 };
    }
}

/// Whether the process `tgid` is traced.
#[inline(always)]
pub fn pid_allowed(tgid: u32) -> bool {
    // SAFETY: read of a load-time constant.
    if unsafe { core::ptr::read_volatile(&FILTER_PIDS) } == 0 {
        return true;
    }
    // SAFETY: only presence is checked; the value is not read.
    unsafe { PIDS.get(&tgid).is_some() }
}

/// Whether the in-kernel pid filter is on (the profiler, without it,
/// samples the threads that have entered a traced stage).
#[inline(always)]
pub fn pid_filter_on() -> bool {
    // SAFETY: read of a load-time constant.
    unsafe { core::ptr::read_volatile(&FILTER_PIDS) != 0 }
}

/// Stage id of the frame root.
#[inline(always)]
pub fn frame_stage() -> u32 {
    // SAFETY: read of a load-time constant.
    unsafe { core::ptr::read_volatile(&FRAME_STAGE) }
}

/// Minimum span duration to send (0 = all).
#[inline(always)]
pub fn min_duration() -> u64 {
    // SAFETY: read of a load-time constant.
    unsafe { core::ptr::read_volatile(&MIN_DUR_NS) }
}

/// Alloc mode settings: (minimum bytes, 1-in-N sampling, collect stacks).
#[inline(always)]
pub fn alloc_settings() -> (u64, u32, bool) {
    // SAFETY: reads of load-time constants.
    unsafe {
        (
            core::ptr::read_volatile(&ALLOC_MIN_BYTES),
            core::ptr::read_volatile(&ALLOC_SAMPLE),
            core::ptr::read_volatile(&ALLOC_WITH_STACKS) != 0,
        )
    }
}
