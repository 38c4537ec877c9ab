//! `adeline-trace list --python -p PID`: the Python functions a running
//! interpreter has, read from outside through /proc/PID/mem (the process
//! keeps running; nothing is attached).
//!
//! Two sources, with the struct offsets the Python stages use:
//! - every function object the garbage collector tracks: the lists of the
//!   main interpreter's GC generations (and its permanent generation),
//!   whose objects of type `PyFunction_Type` give `__qualname__` and
//!   `__code__` (file, first line). That is every `def` and `lambda` still
//!   referenced: module functions, methods, closures;
//! - the code objects on every thread's Python stack right now (functions
//!   whose function object is gone, module bodies, comprehensions).
//!
//! Limits: the lists change while they are read, so an object can be
//! missed or the walk cut short (said in the result, never an error); a
//! function that was defined, called and dropped before the listing is
//! not there; names and files that are not compact ASCII strings are
//! skipped; only the main interpreter is read.
use std::collections::BTreeSet;

use serde::Serialize;

use super::{check, memory::Mem, Interpreter, PythonError, Version};

/// One Python function of the process.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct PyFunction {
    /// `co_filename`.
    pub file: String,
    /// `co_firstlineno`.
    pub line: u32,
    /// `__qualname__` (3.10 stack-only code objects: `co_name`).
    pub qualname: String,
    /// `function` (a live function object) or `stack` (only on a stack).
    pub source: &'static str,
}

/// What the walk found, and how complete it is.
#[derive(Debug, Default, Serialize)]
pub struct Listing {
    pub functions: Vec<PyFunction>,
    /// GC-tracked objects visited.
    pub objects: u64,
    /// Thread states read.
    pub threads: u32,
    /// Why the walk may have missed functions (the list changed under it).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub incomplete: Vec<String>,
}

/// Offsets the listing reads beyond the stages' layout, per minor version.
struct Offsets {
    /// `_PyRuntime` -> `interpreters.main`.
    main: u64,
    /// Interpreter -> its thread states' head.
    threads: u64,
    /// Interpreter -> `gc` (struct _gc_runtime_state): three generations
    /// of 24 bytes from +24, the permanent generation at +104.
    gc: u64,
    /// Code object -> `co_firstlineno` (int).
    firstlineno: u64,
    /// Frame -> owner byte (3.12+: 3 = a C entry frame, no code).
    owner: Option<u64>,
}

/// Checked against the pyenv builds' DWARF; the Debian 3.11 build shares
/// 3.11's. Function objects: `func_qualname` +40 and `func_code` +48 in
/// every supported version.
fn offsets(v: Version) -> Option<Offsets> {
    Some(match v.minor {
        10 => Offsets {
            main: 40,
            threads: 8,
            gc: 616,
            firstlineno: 40,
            owner: None,
        },
        11 => Offsets {
            main: 48,
            threads: 16,
            gc: 648,
            firstlineno: 72,
            owner: None,
        },
        12 => Offsets {
            main: 48,
            threads: 72,
            gc: 112,
            firstlineno: 68,
            owner: Some(70),
        },
        13 => Offsets {
            main: 640,
            threads: 7344,
            gc: 7400,
            firstlineno: 68,
            owner: Some(70),
        },
        _ => return None,
    })
}

const FUNC_QUALNAME: u64 = 40;
const FUNC_CODE: u64 = 48;
/// Bytes of a GC header (`PyGC_Head`: next, prev) before each object.
const GC_HEAD: u64 = 16;
/// At most this many objects per generation (a list being rewritten
/// under the walk can loop).
const MAX_OBJECTS: u64 = 20_000_000;
/// At most this many frames per thread.
const MAX_FRAMES: usize = 4096;

/// The Python functions the process `pid` has, read with the offsets of
/// `interp` (the file it runs the eval loop from).
pub fn list(pid: u32, interp: &Interpreter) -> Result<Listing, PythonError> {
    let fail = |reason: String| PythonError::Sanity { pid, reason };
    check::sanity(pid, interp)?;
    let o = offsets(interp.version).ok_or_else(|| PythonError::Unsupported {
        path: interp.path.clone(),
        version: interp.version.to_string(),
    })?;
    let first = check::first_vaddr(&interp.image);
    let bias = super::memory::load_bias(pid, &interp.path, first).ok_or_else(|| {
        fail(format!(
            "it does not map {}; point at the interpreter it runs",
            interp.path.display()
        ))
    })?;
    let mem = Mem::open(pid).map_err(|e| fail(format!("cannot read its memory: {e}")))?;
    let type_addr = |name: &str| {
        interp
            .image
            .symbol(name)
            .map(|(a, _)| a.wrapping_add(bias))
            .ok_or_else(|| fail(format!("no {name} symbol in {}", interp.path.display())))
    };
    let func_type = type_addr("PyFunction_Type")?;
    let code_type = type_addr("PyCode_Type")?;
    let rt = interp.runtime.wrapping_add(bias);
    let main = mem
        .u64(rt + o.main)
        .filter(|&m| m != 0)
        .ok_or_else(|| fail("the interpreter has not started".into()))?;
    let l = &interp.layout;
    let code = Code {
        mem: &mem,
        code_type,
        filename: u64::from(l.code_filename),
        name: u64::from(l.code_qualname),
        firstlineno: o.firstlineno,
        ascii: u64::from(l.str_ascii_data),
    };
    let mut out = Listing::default();
    let mut found = BTreeSet::new();
    // Function objects in the GC lists.
    let gc = main + o.gc;
    let heads = [gc + 24, gc + 48, gc + 72, gc + 104];
    for (g, &head) in heads.iter().enumerate() {
        let mut at = mem.u64(head).unwrap_or(0) & !3;
        let mut n = 0u64;
        while at != head {
            n += 1;
            if at == 0 || n > MAX_OBJECTS {
                out.incomplete
                    .push(format!("generation {g}: the list changed while read"));
                break;
            }
            let Some(b) = mem.bytes(at, 32) else {
                out.incomplete
                    .push(format!("generation {g}: an object was freed while read"));
                break;
            };
            let word =
                |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap_or_default());
            let obj = at + GC_HEAD;
            if word(3) == func_type {
                let qual = mem
                    .u64(obj + FUNC_QUALNAME)
                    .and_then(|s| mem.ascii(s, code.ascii));
                let co = mem.u64(obj + FUNC_CODE).unwrap_or(0);
                if let (Some(qualname), Some((file, line, _))) = (qual, code.read(co)) {
                    found.insert(PyFunction {
                        file,
                        line,
                        qualname,
                        source: "function",
                    });
                }
            }
            at = word(0) & !3;
        }
        out.objects += n;
    }
    // Code objects on every thread's stack.
    let mut tstate = mem.u64(main + o.threads).unwrap_or(0);
    while tstate != 0 && out.threads < 10_000 {
        out.threads += 1;
        let mut frame = current_frame(&mem, l, tstate);
        for _ in 0..MAX_FRAMES {
            if frame == 0 {
                break;
            }
            let entry_frame = o
                .owner
                .and_then(|off| mem.bytes(frame + off, 1))
                .is_some_and(|b| b[0] == 3);
            if !entry_frame {
                let co = mem.u64(frame + u64::from(l.frame_code)).unwrap_or(0);
                if let Some((file, line, qualname)) = code.read(co) {
                    let known = found
                        .iter()
                        .any(|f| f.file == file && f.line == line && f.qualname == qualname);
                    if !known {
                        found.insert(PyFunction {
                            file,
                            line,
                            qualname,
                            source: "stack",
                        });
                    }
                }
            }
            frame = mem.u64(frame + u64::from(l.frame_previous)).unwrap_or(0);
        }
        tstate = mem.u64(tstate + 8).unwrap_or(0);
    }
    out.functions = found.into_iter().collect();
    Ok(out)
}

/// The innermost frame of a thread state (see `PyLayout::tstate_frame`).
fn current_frame(mem: &Mem, l: &adeline_trace_common::python::PyLayout, tstate: u64) -> u64 {
    let at = mem.u64(tstate + u64::from(l.tstate_frame)).unwrap_or(0);
    if l.cframe_frame == 0 || at == 0 {
        return at;
    }
    mem.u64(at + u64::from(l.cframe_frame - 1)).unwrap_or(0)
}

/// Reads code objects of the process.
struct Code<'a> {
    mem: &'a Mem,
    code_type: u64,
    filename: u64,
    name: u64,
    firstlineno: u64,
    ascii: u64,
}

impl Code<'_> {
    /// (file, first line, qualified name) of the code object at `co`, if it
    /// is one.
    fn read(&self, co: u64) -> Option<(String, u32, String)> {
        if co == 0 || self.mem.u64(co + 8)? != self.code_type {
            return None;
        }
        let file = self
            .mem
            .ascii(self.mem.u64(co + self.filename)?, self.ascii)?;
        let name = self.mem.ascii(self.mem.u64(co + self.name)?, self.ascii)?;
        let line = u32::try_from(self.mem.i32(co + self.firstlineno)?).ok()?;
        Some((file, line, name))
    }
}
