//! Python stages: what the agent tells the kernel about each probed site of
//! a CPython interpreter, the compiled function patterns, and the state the
//! kernel keeps per code object and per suspended generator.
//!
//! A Python stage is timed by probes inside the interpreter's eval loop
//! (`_PyEval_EvalFrameDefault`): entry sites (the RESUME handlers, or the
//! eval function itself on 3.10) and exit sites (returns, yields, the
//! exception unwind, or the frame pop). The attach cookie of each is an
//! index into the `PY_SITES` array, whose [`PySite`] says what the site
//! means and how to find the frame there.

/// A frame starts running: a new call, or a generator/coroutine resuming.
pub const PY_ROLE_ENTRY: u32 = 1;
/// A frame returns for good.
pub const PY_ROLE_RETURN: u32 = 2;
/// A frame is left by an exception.
pub const PY_ROLE_UNWIND: u32 = 3;
/// A generator or coroutine frame suspends (yield, await).
pub const PY_ROLE_YIELD: u32 = 4;
/// The frame pop (`_PyEvalFrameClearAndPop`, 3.12+): a return, or an
/// unwind when the return address is one of `PySite::unwind_ret`.
pub const PY_ROLE_POP: u32 = 5;
/// 3.10: the eval function's entry (a frame starts or resumes).
pub const PY_ROLE_ENTRY_310: u32 = 6;
/// 3.10: the eval function's exit; the frame's `f_state` says whether it
/// returned, raised or suspended.
pub const PY_ROLE_EXIT_310: u32 = 7;

/// The frame is read through the thread state (see [`PyLayout`]).
pub const PY_FRAME_CHAIN: u32 = 0;
/// The frame is the second argument register (`%rsi`).
pub const PY_FRAME_RSI: u32 = 1;
/// The thread state already points at the caller: the frame is the
/// innermost open Python call of the thread, if its `previous` link is
/// null (3.12 YIELD_VALUE clears it before leaving the frame).
pub const PY_FRAME_TOP_DETACHED: u32 = 2;
/// 3.10 exit: the frame is the innermost open Python call of the thread,
/// if its `f_back` is the thread state's current frame (already popped).
pub const PY_FRAME_TOP_POPPED: u32 = 3;

/// `co_flags` bits of generator-like code (generator, coroutine, iterable
/// coroutine, async generator).
pub const CO_GENERATOR_LIKE: u32 = 0x20 | 0x80 | 0x100 | 0x200;

/// Longest qualified name compared (longer names never match).
pub const PY_QUAL_MAX: usize = 128;
/// Bytes of a file name compared: the last `PY_FILE_MAX` (prefix
/// patterns need the whole name to fit).
pub const PY_FILE_MAX: usize = 256;
/// Most compiled patterns (over all Python stages).
pub const MAX_PY_PATTERNS: u32 = 32;
/// Most probed interpreter sites.
pub const MAX_PY_SITES: u32 = 64;
/// Code objects whose match result is cached.
pub const PY_CODE_CACHE: u32 = 1 << 16;
/// Generators/coroutines with a call in progress tracked at once.
pub const PY_GEN_MAX: u32 = 1 << 14;

/// Bits of an open Python call's key that hold the frame address; the
/// bits above hold the window epoch.
pub const PY_FRAME_MASK: u64 = (1 << 48) - 1;

/// Base of the polynomial string hash (mod 2^64) used to match names.
pub const PY_HASH_BASE: u64 = 0x100_0000_01b3;

/// Hash of `bytes`: h(empty) = 0, h(s + c) = h(s) * BASE + c + 1.
pub const fn py_hash(bytes: &[u8]) -> u64 {
    let mut h = 0u64;
    let mut i = 0;
    while i < bytes.len() {
        h = h
            .wrapping_mul(PY_HASH_BASE)
            .wrapping_add(bytes[i] as u64 + 1);
        i += 1;
    }
    h
}

/// BASE^n mod 2^64.
pub const fn py_hash_pow(n: usize) -> u64 {
    let mut p = 1u64;
    let mut i = 0;
    while i < n {
        p = p.wrapping_mul(PY_HASH_BASE);
        i += 1;
    }
    p
}

/// Where the interpreter keeps what the kernel reads, for one CPython
/// version (byte offsets). 0 means "not present" where noted.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PyLayout {
    /// 0x030A .. 0x030D.
    pub version: u32,
    /// `_PyRuntime` + this = the GIL holder's thread state (3.10/3.11
    /// `gilstate.tstate_current`); 0 on 3.12+.
    pub runtime_tstate: u32,
    /// `_PyRuntime` + this = the main interpreter (3.12+).
    pub runtime_interp_main: u32,
    /// Interpreter + this = the GIL's last holder (3.12+).
    pub interp_gil_holder: u32,
    /// Thread state + this = the current frame, or the cframe (3.11/3.12).
    pub tstate_frame: u32,
    /// Non-zero: `tstate_frame` gives a cframe and the frame is at
    /// cframe + `cframe_frame - 1`.
    pub cframe_frame: u32,
    pub frame_code: u32,
    pub frame_previous: u32,
    /// 3.10 `f_lasti` (-1 before the first instruction), 3.11+
    /// `prev_instr`/`instr_ptr`.
    pub frame_instr: u32,
    /// 3.10 `f_state`; 0 elsewhere.
    pub frame_state: u32,
    pub code_flags: u32,
    pub code_filename: u32,
    /// `co_qualname` (3.11+) or `co_name` (3.10).
    pub code_qualname: u32,
    /// Start of a compact ASCII string's characters.
    pub str_ascii_data: u32,
    /// Up to four RESUME opcodes (one per byte, 0 = none): at an entry
    /// site the instruction pointer names one of them and its oparg tells
    /// a new call (0) from a resume.
    pub resume_ops: u32,
    pub _pad: u32,
}

/// One probed interpreter site (the `PY_SITES` entry its cookie names).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PySite {
    /// `PY_ROLE_*`.
    pub role: u32,
    /// `PY_FRAME_*`.
    pub frame_src: u32,
    /// Address of `_PyRuntime` minus the address of this site (both in
    /// the same file, so the same in every process).
    pub runtime_delta: i64,
    /// `PY_ROLE_POP`: return addresses (minus this site's address) of the
    /// calls made on the exception path; 0 = unused.
    pub unwind_ret: [i64; 2],
    pub layout: PyLayout,
}

/// One literal piece of a pattern: its length and [`py_hash`]; len 0 =
/// absent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PyLit {
    pub len: u32,
    pub _pad: u32,
    pub hash: u64,
}

/// A glob compiled for the kernel: `pre*mid*suf` (exact when `star` is 0:
/// the whole string is `pre`). The kernel compares hashes of substrings.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PyGlob {
    /// 0: exact; 1: one or more '*'.
    pub star: u32,
    /// 1: any string (the glob is `*`).
    pub any: u32,
    pub pre: PyLit,
    pub mid: PyLit,
    pub suf: PyLit,
}

/// One compiled pattern of a Python stage: a qualified-name glob and an
/// optional file-name glob (`file.any` = no constraint).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PyPattern {
    pub stage: u32,
    pub _pad: u32,
    pub qual: PyGlob,
    pub file: PyGlob,
}

/// Key of the per-code-object and per-generator maps.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PyObjKey {
    pub tgid: u32,
    pub _pad: u32,
    pub addr: u64,
}

/// A code object's match result, with what identifies it (a different
/// code object at a reused address has other name/file pointers).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PyCodeInfo {
    /// Stage id, or `NO_STAGE`.
    pub stage: u32,
    /// `co_flags`.
    pub flags: u32,
    pub filename: u64,
    pub qualname: u64,
}

/// A generator or coroutine call in progress (between activations it is
/// suspended and not on any thread's stack).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PyGenState {
    pub stage: u32,
    pub _pad: u32,
    /// The code object (a new generator at a reused address differs).
    pub code: u64,
    /// Window epoch the call started in.
    pub epoch: u64,
    /// Its first activation's start.
    pub start_ns: u64,
    /// Summed durations of its finished activations.
    pub active_ns: u64,
    /// Summed child time inside those activations.
    pub child_ns: u64,
}

/// Counters of the Python probes (the `PY_COUNTERS` per-CPU array).
pub const PY_COUNTER_ENTRIES: u32 = 0;
/// Entries of a stage function (calls or resumes).
pub const PY_COUNTER_STAGE_ENTRIES: u32 = 1;
/// Code objects matched against the patterns (cache misses).
pub const PY_COUNTER_MATCHES: u32 = 2;
/// Frame or code object could not be read.
pub const PY_COUNTER_READ_FAIL: u32 = 3;
/// Exits probed.
pub const PY_COUNTER_EXITS: u32 = 4;
/// Number of Python counters.
pub const PY_COUNTERS: u32 = 5;
