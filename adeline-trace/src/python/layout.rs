//! Struct offsets the kernel programs read, per CPython version: a table
//! checked against the interpreters' DWARF (3.10-3.12), and 3.13's own
//! `_Py_DebugOffsets` (at the start of `_PyRuntime`) where present.
use adeline_trace_common::python::PyLayout;

use super::{image::Image, sites::resume_ops, Version};

/// The built-in table for a version (None: unsupported).
pub fn table(v: Version) -> Option<PyLayout> {
    let base = PyLayout {
        version: v.hex(),
        resume_ops: resume_ops(v),
        ..PyLayout::default()
    };
    Some(match v.minor {
        10 => PyLayout {
            runtime_tstate: 568,
            tstate_frame: 24,
            frame_code: 32,
            frame_previous: 24,
            frame_instr: 96,
            frame_state: 108,
            code_flags: 36,
            code_filename: 104,
            code_qualname: 112, // co_name: 3.10 code objects have no qualname
            str_ascii_data: 48,
            ..base
        },
        11 => PyLayout {
            runtime_tstate: 576,
            tstate_frame: 56,
            cframe_frame: 8 + 1,
            frame_code: 32,
            frame_previous: 48,
            frame_instr: 56,
            code_flags: 48,
            code_filename: 112,
            code_qualname: 128,
            str_ascii_data: 48,
            ..base
        },
        12 => PyLayout {
            runtime_interp_main: 48,
            interp_gil_holder: 1048,
            tstate_frame: 56,
            cframe_frame: 1,
            frame_code: 0,
            frame_previous: 8,
            frame_instr: 56,
            code_flags: 48,
            code_filename: 112,
            code_qualname: 128,
            str_ascii_data: 40,
            ..base
        },
        13 => PyLayout {
            runtime_interp_main: 640,
            interp_gil_holder: 7760,
            tstate_frame: 72,
            frame_code: 0,
            frame_previous: 8,
            frame_instr: 56,
            code_flags: 48,
            code_filename: 112,
            code_qualname: 128,
            str_ascii_data: 40,
            ..base
        },
        _ => return None,
    })
}

/// 3.13+: `_Py_DebugOffsets` as stored in the file's initialised
/// `_PyRuntime` (cookie "xdebugpy").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DebugOffsets {
    pub version: u64,
    pub free_threaded: u64,
    pub interpreters_head: u64,
    pub threads_head: u64,
    pub gil_holder: u64,
    pub current_frame: u64,
    pub frame_previous: u64,
    pub frame_executable: u64,
    pub frame_instr_ptr: u64,
    pub code_filename: u64,
    pub code_qualname: u64,
    pub ascii_size: u64,
    pub tstate_interp: u64,
    pub tstate_next: u64,
}

pub fn debug_offsets(image: &Image, runtime: u64) -> Option<DebugOffsets> {
    let b = image.bytes(runtime, 584)?;
    if b.len() < 584 || &b[..8] != b"xdebugpy" {
        return None;
    }
    let at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or_default());
    Some(DebugOffsets {
        version: at(8),
        free_threaded: at(16),
        interpreters_head: at(40),
        threads_head: at(72),
        gil_holder: at(144),
        tstate_next: at(168),
        tstate_interp: at(176),
        current_frame: at(184),
        frame_previous: at(232),
        frame_executable: at(240),
        frame_instr_ptr: at(248),
        code_filename: at(280),
        code_qualname: at(296),
        ascii_size: at(560),
    })
}

/// The table overridden by the debug offsets (3.13: `interpreters.main`
/// follows `interpreters.head`).
pub fn with_debug_offsets(mut l: PyLayout, d: &DebugOffsets) -> PyLayout {
    let u = |x: u64| u32::try_from(x).unwrap_or(0);
    l.runtime_interp_main = u(d.interpreters_head + 8);
    l.interp_gil_holder = u(d.gil_holder);
    l.tstate_frame = u(d.current_frame);
    l.cframe_frame = 0;
    l.frame_code = u(d.frame_executable);
    l.frame_previous = u(d.frame_previous);
    l.frame_instr = u(d.frame_instr_ptr);
    l.code_filename = u(d.code_filename);
    l.code_qualname = u(d.code_qualname);
    l.str_ascii_data = u(d.ascii_size);
    l
}
