//! Every map the kernel programs use. The agent finds them by these names.
use adeline_trace_common::{
    Config, ThreadCalls, COUNTERS as N_COUNTERS, MAX_PIDS, MAX_THREADS, RING_BYTES,
};
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};

/// Records for the agent (spans and later kinds), submitted without wakeup.
#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);

/// Per-CPU event and loss counters, indexed by `COUNTER_*`.
#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(N_COUNTERS, 0);

/// Agent configuration (element 0).
#[map(name = "CONFIG")]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Tgids to trace when `Config::filter_pids` is set.
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
    match CONFIG.get(0) {
        Some(cfg) if cfg.filter_pids != 0 => unsafe { PIDS.get(&tgid).is_some() },
        _ => true,
    }
}

/// Minimum span duration to send (0 = all).
#[inline(always)]
pub fn min_duration() -> u64 {
    CONFIG.get(0).map(|c| c.min_dur_ns).unwrap_or(0)
}
