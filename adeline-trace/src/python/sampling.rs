//! What the profiler needs to walk a live CPython process's own Python
//! frames from a sample (any thread, GIL holder or not) and to name them:
//! which mapped file is the interpreter, where its `_PyRuntime` is in the
//! process, and the per-version offsets of the thread-state key, the frame
//! chain, the marker of each eval-loop call's outermost frame, and the
//! code object's names. Interpreter files are read once (by inode).
use std::{collections::HashMap, os::unix::fs::MetadataExt, path::PathBuf};

use adeline_trace_common::{
    profile::{PyProc, PY_ENTRY_CSTACK_FRAME, PY_ENTRY_EVERY_FRAME, PY_ENTRY_FLAG},
    python::PyLayout,
};

use super::{
    check::first_vaddr, image::Image, layout, lines::LineTable, memory, tsd, version_of, Version,
};

/// glibc x86-64 (2.36): `struct pthread`'s `specific_1stblock`, from the
/// thread pointer: assumed when the process's C library does not tell
/// ([`tsd::offset_in`]).
const GLIBC_TSD_OFF: u32 = 0x310;

/// The longest line table read (bytes; a longer one is left out, its
/// frames show their first line).
pub const LINE_TABLE_MAX: usize = 1 << 16;

/// Where a code object keeps its names (user-space reads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeNames {
    /// `co_qualname` (3.10: `co_name`).
    pub qualname: u64,
    pub filename: u64,
    /// `co_firstlineno` (an int).
    pub firstlineno: u64,
    /// `co_linetable` (a bytes object) and its format.
    pub linetable: u64,
    pub lines: LineTable,
    /// Start of a compact ASCII string's characters.
    pub ascii_data: u64,
}

/// A CPython process the profiler can walk.
#[derive(Debug, Clone)]
pub struct Sampled {
    pub proc: PyProc,
    pub names: CodeNames,
    pub version: Version,
    /// The interpreter file (the executable or its libpython).
    pub path: PathBuf,
    /// The C library `proc.tsd_off` was read from (None: not found, the
    /// glibc 2.36 value is assumed).
    pub tsd_from: Option<PathBuf>,
}

/// Sampling offsets of one version beyond the shared layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Offsets {
    /// `autoTSSkey._key` in `_PyRuntime`.
    tss_key: u32,
    /// `PY_ENTRY_*` and the offset of the byte it reads.
    entry_kind: u32,
    entry_off: u32,
    /// In the code object: `co_firstlineno`, `co_linetable`, and the first
    /// instruction (`co_code_adaptive`, 3.11+; 0 on 3.10).
    firstlineno: u64,
    linetable: u64,
    code_units: u32,
}

/// Sampling offsets of one version. Runtime-verified against each
/// interpreter of the matrix (3.13 has no debug offset for the key); the
/// first instruction is at the code type's `__basicsize__`.
fn sampling_offsets(v: Version) -> Option<Offsets> {
    let (tss_key, entry_kind, entry_off, firstlineno, linetable, code_units) = match v.minor {
        10 => (588, PY_ENTRY_EVERY_FRAME, 0, 40, 120, 0),
        11 => (596, PY_ENTRY_FLAG, 68, 72, 136, 184),
        12 => (1548, PY_ENTRY_CSTACK_FRAME, 70, 68, 136, 192),
        13 => (2164, PY_ENTRY_CSTACK_FRAME, 70, 68, 136, 200),
        _ => return None,
    };
    Some(Offsets {
        tss_key,
        entry_kind,
        entry_off,
        firstlineno,
        linetable,
        code_units,
    })
}

/// One interpreter file as read.
struct Known {
    version: Version,
    layout: PyLayout,
    runtime: u64,
    first_vaddr: u64,
}

/// Interpreter files read so far, by (device, inode); None: not one.
#[derive(Default)]
pub struct Interpreters {
    files: HashMap<(u64, u64), Option<Known>>,
    /// C libraries read so far, by (device, inode): their thread-specific
    /// data offset.
    libcs: HashMap<(u64, u64), Option<u32>>,
}

/// Whether a mapped file's name looks like the C library.
fn libc_named(path: &std::path::Path) -> bool {
    path.file_name().is_some_and(|n| {
        let n = n.to_string_lossy();
        n.starts_with("libc.so") || (n.starts_with("libc-") && n.ends_with(".so"))
    })
}

/// Whether a mapped file's name looks like a CPython interpreter.
fn candidate(path: &std::path::Path) -> bool {
    path.file_name().is_some_and(|n| {
        let n = n.to_string_lossy();
        n.starts_with("libpython3") || n.starts_with("python3") || n == "python"
    })
}

impl Interpreters {
    /// The CPython interpreter `pid` runs, if it maps one this agent
    /// knows and its runtime is found in the process.
    pub fn process(&mut self, pid: u32) -> Option<Sampled> {
        let files = crate::symbols::process::mapped_files(pid).ok()?;
        let (tsd_off, tsd_from) = self.tsd_offset(pid, &files);
        for file in files.iter().filter(|f| candidate(f)) {
            let path = PathBuf::from(format!("/proc/{pid}/root{}", file.display()));
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            let known = self
                .files
                .entry((meta.dev(), meta.ino()))
                .or_insert_with(|| read_interpreter(&path));
            let Some(k) = known else { continue };
            let Some(bias) = memory::load_bias(pid, &path, k.first_vaddr) else {
                continue;
            };
            let Some(o) = sampling_offsets(k.version) else {
                continue;
            };
            let l = &k.layout;
            return Some(Sampled {
                proc: PyProc {
                    runtime: k.runtime.wrapping_add(bias),
                    tss_key_off: o.tss_key,
                    tsd_off,
                    tstate_frame: l.tstate_frame,
                    cframe_frame: l.cframe_frame,
                    frame_code: l.frame_code,
                    frame_previous: l.frame_previous,
                    entry_kind: o.entry_kind,
                    entry_off: o.entry_off,
                    frame_instr: l.frame_instr,
                    code_units: o.code_units,
                },
                names: CodeNames {
                    qualname: u64::from(l.code_qualname),
                    filename: u64::from(l.code_filename),
                    firstlineno: o.firstlineno,
                    linetable: o.linetable,
                    lines: match o.code_units {
                        0 => LineTable::Pep626,
                        _ => LineTable::Locations,
                    },
                    ascii_data: u64::from(l.str_ascii_data),
                },
                version: k.version,
                path: file.clone(),
                tsd_from,
            });
        }
        None
    }

    /// The thread-specific data offset of the C library `pid` maps, and
    /// that library; the glibc 2.36 value and None when not found.
    fn tsd_offset(&mut self, pid: u32, files: &[PathBuf]) -> (u32, Option<PathBuf>) {
        for file in files.iter().filter(|f| libc_named(f)) {
            let path = PathBuf::from(format!("/proc/{pid}/root{}", file.display()));
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            let off = *self
                .libcs
                .entry((meta.dev(), meta.ino()))
                .or_insert_with(|| tsd::offset_in(&path));
            if let Some(off) = off {
                return (off, Some(file.clone()));
            }
        }
        (GLIBC_TSD_OFF, None)
    }
}

/// The version, layout and `_PyRuntime` of an interpreter file (None: not
/// a CPython this agent supports).
fn read_interpreter(path: &std::path::Path) -> Option<Known> {
    let image = Image::open(path).ok()?;
    image.symbol("_PyEval_EvalFrameDefault")?;
    let (runtime, _) = image.symbol("_PyRuntime")?;
    let version = version_of(&image).ok()?;
    let mut l = layout::table(version)?;
    if let Some(d) = layout::debug_offsets(&image, runtime) {
        if d.free_threaded != 0 {
            return None;
        }
        l = layout::with_debug_offsets(l, &d);
    }
    Some(Known {
        version,
        layout: l,
        runtime,
        first_vaddr: first_vaddr(&image),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_supported_version_has_sampling_offsets() {
        for minor in 10..=13 {
            assert!(sampling_offsets(Version { major: 3, minor }).is_some());
        }
        assert!(sampling_offsets(Version {
            major: 3,
            minor: 14
        })
        .is_none());
    }

    #[test]
    fn this_process_is_not_python() {
        assert!(Interpreters::default()
            .process(std::process::id())
            .is_none());
    }
}
