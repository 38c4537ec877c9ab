//! Every map the kernel programs use. The agent finds them by these names.
use adeline_trace_common::{
    ThreadCalls, COUNTERS as N_COUNTERS, MAX_PIDS, MAX_THREADS, RING_BYTES,
};
use aya_ebpf::{
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
};

// Configuration set by the agent at load time (constants to the verifier:
// no map lookup per call).

/// Non-zero: only tgids present in `PIDS` are traced.
#[no_mangle]
static FILTER_PIDS: u32 = 0;

/// Spans shorter than this are counted but not sent (0 = send all).
#[no_mangle]
static MIN_DUR_NS: u64 = 0;

/// Records for the agent (spans and later kinds), submitted without wakeup.
#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);

/// Per-CPU event and loss counters, indexed by `COUNTER_*`.
#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(N_COUNTERS, 0);

/// Tgids to trace when `FILTER_PIDS` is set.
#[map(name = "PIDS")]
pub static PIDS: HashMap<u32, u8> = HashMap::with_max_entries(MAX_PIDS, 0);

/// Open traced calls per thread, keyed by pid_tgid.
#[map(name = "THREADS")]
pub static THREADS: LruHashMap<u64, ThreadCalls> = LruHashMap::with_max_entries(MAX_THREADS, 0);

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

/// Minimum span duration to send (0 = all).
#[inline(always)]
pub fn min_duration() -> u64 {
    // SAFETY: read of a load-time constant.
    unsafe { core::ptr::read_volatile(&MIN_DUR_NS) }
}
