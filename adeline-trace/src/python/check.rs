//! The sanity check at attach: read a traced process's live runtime and
//! check that the offsets the kernel will use find a consistent
//! interpreter (3.13: the `_Py_DebugOffsets` cookie and version too).
use super::{image::Image, memory, Interpreter, PythonError};

/// (`interpreters.main` in `_PyRuntime`, `threads.head` in the
/// interpreter) per minor version; a thread state's `interp` is at +16.
fn anchors(minor: u32) -> Option<(u64, u64)> {
    Some(match minor {
        10 => (40, 8),
        11 => (48, 16),
        12 => (48, 72),
        13 => (640, 7344),
        _ => return None,
    })
}

/// Checks the interpreter that `pid` runs from `interp.path`, if it maps
/// it and has started; Ok when the process does not map the file.
pub fn sanity(pid: u32, interp: &Interpreter) -> Result<(), PythonError> {
    let fail = |reason: String| PythonError::Sanity { pid, reason };
    let first = first_vaddr(&interp.image);
    let Some(bias) = memory::load_bias(pid, &interp.path, first) else {
        return Ok(());
    };
    let Ok(mem) = memory::Mem::open(pid) else {
        return Ok(());
    };
    let rt = interp.runtime.wrapping_add(bias);
    let v = interp.version;
    if v.minor >= 13 {
        let head = mem.bytes(rt, 16).unwrap_or_default();
        if head.len() < 16 || &head[..8] != b"xdebugpy" {
            return Err(fail(format!(
                "CPython {v} at {}: no _Py_DebugOffsets cookie at _PyRuntime",
                interp.path.display()
            )));
        }
        let ver = u64::from_le_bytes(head[8..16].try_into().unwrap_or_default());
        if (ver >> 24) & 0xff != v.major as u64 || (ver >> 16) & 0xff != v.minor as u64 {
            return Err(fail(format!(
                "the running runtime says version {:#x}, the file {v}",
                ver
            )));
        }
    }
    let Some((main_off, threads_off)) = anchors(v.minor) else {
        return Ok(());
    };
    let Some(main) = mem.u64(rt + main_off) else {
        return Err(fail(format!("cannot read _PyRuntime at {rt:#x}")));
    };
    if main == 0 {
        // Not initialised yet (a command held before exec).
        return Ok(());
    }
    let tstate = mem.u64(main + threads_off).unwrap_or(0);
    if tstate == 0 {
        return Ok(());
    }
    let back = mem.u64(tstate + 16).unwrap_or(0);
    if back != main {
        return Err(fail(format!(
            "CPython {v} at {}: the main interpreter's first thread state does not point back to it (layout differs from the {})",
            interp.path.display(),
            interp.layout_source
        )));
    }
    Ok(())
}

pub fn first_vaddr(image: &Image) -> u64 {
    if image.pie {
        0
    } else {
        image.text_delta()
    }
}
