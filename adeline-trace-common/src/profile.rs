//! The profiler's records: on-CPU samples (a `perf_event` cpu-clock
//! program) and off-CPU intervals (`sched_switch`), both with the user and
//! kernel stacks and the innermost open stage of the thread.
//!
//! A record is a [`SampleHeader`] followed by `n_user` user return
//! addresses, then `n_kernel` kernel addresses, then `n_py` Python frames
//! (u64 each, innermost first); it is submitted with only the frames it
//! holds (variable size).
//!
//! A Python frame is the address of its code object and the instruction
//! it is at ([`py_code`], [`py_instr`]), with
//! [`PY_LAST_OF_EVAL`] set on the outermost frame that one C call of the
//! interpreter's eval loop runs (what the agent needs to put each group of
//! Python frames in place of its `_PyEval_EvalFrameDefault` native frame).

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
/// The thread waited for a CPU after its wake-up: `weight_ns` is the time
/// blocked, `wait_ns` the wait after it (the thread's `run_delay`).
pub const SAMPLE_WOKEN: u32 = 4;

/// Most user frames walked (frame pointers) per sample.
pub const MAX_USER_FRAMES: usize = 127;
/// Most kernel frames per sample.
pub const MAX_KERNEL_FRAMES: usize = 64;
/// Most Python frames per sample (the innermost ones).
pub const MAX_PY_FRAMES: usize = 64;

/// In a Python frame: this frame is the outermost one its eval-loop C
/// call runs (3.10: every frame; 3.11: `is_entry`).
pub const PY_LAST_OF_EVAL: u64 = 1 << 63;
/// Not a Python function's frame: the eval-loop call's own entry frame
/// (3.12+, owned by the C stack): the frame before it was that call's
/// outermost one.
pub const PY_CSTACK_ENTRY: u64 = 1 << 62;
/// The bits of a Python frame value that hold its code object (a user
/// address, below 2^47 on x86-64).
pub const PY_CODE_MASK: u64 = (1 << 47) - 1;
/// Bits 47-61 of a Python frame value: 1 + the index (in code units) of the
/// instruction the frame is at, 0 when unknown or past 2^15 - 2.
pub const PY_INSTR_SHIFT: u32 = 47;
/// The largest stored 1 + index.
pub const PY_INSTR_MAX: u64 = (1 << 15) - 1;

/// The code object of a Python frame value.
pub const fn py_code(frame: u64) -> u64 {
    frame & PY_CODE_MASK
}

/// The instruction index (code units) of a Python frame value, if known.
pub const fn py_instr(frame: u64) -> Option<u32> {
    match (frame >> PY_INSTR_SHIFT) & PY_INSTR_MAX {
        0 => None,
        i => Some(i as u32 - 1),
    }
}

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
    /// Python frames after the kernel frames (0 outside a known CPython).
    pub n_py: u32,
    pub _pad: u32,
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
pub const MAX_FRAMES: usize = MAX_USER_FRAMES + MAX_KERNEL_FRAMES + MAX_PY_FRAMES;
/// Frame slots of a [`SampleBuf`]: a power of two above `MAX_FRAMES`, so
/// the kernel bounds an index with a mask.
pub const FRAME_SLOTS: usize = 256;
const _: () = assert!(MAX_FRAMES < FRAME_SLOTS);

/// A whole sample as the kernel builds it (per-CPU scratch, and the
/// per-thread off-CPU state): the user frames, then the kernel frames
/// right after them, then the Python frames.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SampleBuf {
    pub header: SampleHeader,
    pub frames: [u64; FRAME_SLOTS],
}

/// Bytes of a record holding `frames` frames (of every kind).
pub const fn sample_bytes(frames: usize) -> usize {
    core::mem::size_of::<SampleHeader>() + 8 * frames
}

/// How a CPython version marks where one eval-loop C call's frames end
/// ([`PyProc::entry_kind`]).
pub const PY_ENTRY_EVERY_FRAME: u32 = 0;
/// 3.11: a byte at `entry_off` (`is_entry`) is non-zero on the outermost
/// frame of an eval call.
pub const PY_ENTRY_FLAG: u32 = 1;
/// 3.12+: a frame whose `owner` byte (at `entry_off`) is
/// [`PY_OWNED_BY_CSTACK`] is the eval call's own entry frame (no code):
/// skipped, it marks the frame before it.
pub const PY_ENTRY_CSTACK_FRAME: u32 = 2;
/// `_PyInterpreterFrame.owner` of a C-stack entry frame (3.12+).
pub const PY_OWNED_BY_CSTACK: u8 = 3;

/// A CPython process the profiler walks (`PROFILE_PY`, by tgid; filled by
/// the agent when it first sees the process run an interpreter it knows).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PyProc {
    /// Address of `_PyRuntime` in the process.
    pub runtime: u64,
    /// `_PyRuntime` + this = `autoTSSkey._key` (an int): the pthread key
    /// under which each thread keeps its own thread state.
    pub tss_key_off: u32,
    /// Thread pointer (fsbase) + this = the C library's first block of
    /// thread-specific data (glibc x86-64: `specific_1stblock`, 16-byte
    /// entries whose `data` is at +8); keys below 32 only.
    pub tsd_off: u32,
    /// Thread state + this = the current frame (or the cframe holding it).
    pub tstate_frame: u32,
    /// Non-zero: the frame is at cframe + `cframe_frame - 1` (3.11/3.12).
    pub cframe_frame: u32,
    pub frame_code: u32,
    pub frame_previous: u32,
    /// `PY_ENTRY_*`.
    pub entry_kind: u32,
    /// Offset of the byte `entry_kind` reads.
    pub entry_off: u32,
    /// Frame + this: where the frame is in its code: 3.10 `f_lasti` (an
    /// int, index in code units); 3.11+ a pointer to the instruction
    /// (`prev_instr`, 3.13 `instr_ptr`).
    pub frame_instr: u32,
    /// Code object + this = its first instruction (3.11+
    /// `co_code_adaptive`); 0: `frame_instr` is an index (3.10).
    pub code_units: u32,
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
/// Samples of a known CPython process whose thread state was not found
/// (no per-thread state yet, or an unreadable one).
pub const PCOUNTER_PY_NO_TSTATE: u32 = 4;
/// Off-CPU intervals of traced threads that ended, recorded or not (the
/// sampled ones are `PCOUNTER_OFF_CPU`).
pub const PCOUNTER_OFF_CPU_SEEN: u32 = 5;
pub const PCOUNTERS: u32 = 6;

/// Off-CPU sampling: an interval's probability of being recorded, in
/// units of 1/`OFF_CPU_PI_ONE` (the kernel draws it when the thread
/// leaves the CPU, from the thread's recent intervals; a recorded
/// interval's times are divided by it, so the expected total is the true
/// one).
pub const OFF_CPU_PI_ONE: u32 = 1 << 16;
/// The lowest probability: 1/64 (a thread whose intervals are all short
/// still gets one in 64 recorded, so a rare long one is not lost for long).
pub const OFF_CPU_PI_MIN: u32 = OFF_CPU_PI_ONE / 64;

/// The probability, in 1/`OFF_CPU_PI_ONE`, of recording an off-CPU
/// interval of a thread whose recent intervals average `avg_ns` (0: none
/// yet) at sampling period `period_ns`: the expected share of a sampling
/// period the interval covers, so a thread off the CPU is recorded about as
/// often as an on-CPU thread is sampled; 1 for intervals of a period or
/// more, and for a thread's first one.
pub const fn off_cpu_probability(avg_ns: u64, period_ns: u64) -> u32 {
    if avg_ns == 0 || period_ns == 0 || avg_ns >= period_ns {
        return OFF_CPU_PI_ONE;
    }
    // avg_ns < period_ns; past 2^48 the period is above 2^48 too: scale it
    // down instead of the average up (the product would overflow).
    // (checked_div: no panic path, which a BPF program cannot hold).
    let p = if avg_ns > (u64::MAX >> 16) {
        avg_ns.checked_div(period_ns >> 16)
    } else {
        (avg_ns << 16).checked_div(period_ns)
    };
    let Some(p) = p else {
        return OFF_CPU_PI_ONE;
    };
    if p < OFF_CPU_PI_MIN as u64 {
        OFF_CPU_PI_MIN
    } else if p >= OFF_CPU_PI_ONE as u64 {
        OFF_CPU_PI_ONE
    } else {
        p as u32
    }
}

/// A recorded interval's time `ns` divided by its probability `pi`.
pub const fn off_cpu_weight(ns: u64, pi: u32) -> u64 {
    if pi >= OFF_CPU_PI_ONE {
        return ns;
    }
    let w = if ns > (u64::MAX >> 16) {
        match ns.checked_div(pi as u64) {
            Some(w) => Some(w.saturating_mul(OFF_CPU_PI_ONE as u64)),
            None => None,
        }
    } else {
        (ns << 16).checked_div(pi as u64)
    };
    match w {
        Some(w) => w,
        None => ns,
    }
}
