//! CPython introspection for Python stages: which file holds the eval loop
//! of a user's interpreter, its version and struct offsets, the probe
//! sites inside it, the compiled function patterns, a sanity check of a
//! live interpreter, and listing the functions a process runs. The probe
//! kind that attaches them is probes/python.rs; this layer sits between
//! symbols/ and probes/ and imports neither probes nor the Plan.
//!
//! Supported: CPython 3.10, 3.11, 3.12 and 3.13 (GIL builds) on x86-64,
//! shared (`libpython3.X.so`) or static (Debian's `python3.11`).
use std::{
    collections::HashMap,
    fmt,
    path::{Path, PathBuf},
};

use adeline_trace_common::python::PyLayout;
use thiserror::Error;

use crate::symbols::{process, TargetError};

pub mod check;
pub mod image;
pub mod layout;
pub mod lines;
pub mod list;
pub mod memory;
pub mod pattern;
pub mod sampling;
pub mod sites;
pub mod tsd;

use image::Image;

/// A CPython version (major.minor).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
}

impl Version {
    pub fn hex(self) -> u32 {
        (self.major << 8) | self.minor
    }
    fn supported(self) -> bool {
        self.major == 3 && (10..=13).contains(&self.minor)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

#[derive(Debug, Error)]
pub enum PythonError {
    #[error("{0}")]
    Target(#[from] TargetError),
    #[error("cannot read {}: {reason}", path.display())]
    Read { path: PathBuf, reason: String },
    #[error("{} is not a CPython interpreter: neither it nor a libpython it loads has _PyEval_EvalFrameDefault; point at the python executable, the venv's bin/python or libpython3.X.so", path.display())]
    NotPython { path: PathBuf },
    #[error("{} is CPython {version}, which Python stages do not support: they need CPython 3.10, 3.11, 3.12 or 3.13", path.display())]
    Unsupported { path: PathBuf, version: String },
    #[error("cannot tell the CPython version of {}: name it libpython3.X.so or python3.X", path.display())]
    UnknownVersion { path: PathBuf },
    #[error("{} is a free-threaded CPython {version} build, which Python stages do not support", path.display())]
    FreeThreaded { path: PathBuf, version: Version },
    #[error("cannot place the Python probes in {} (CPython {version}): {reason}", path.display())]
    Sites {
        path: PathBuf,
        version: Version,
        reason: String,
    },
    #[error("invalid Python function pattern '{pattern}': {reason} (form: [FILE.py:|MODULE:]QUALNAME, e.g. pipeline.py:Tracker.*)")]
    Pattern { pattern: String, reason: String },
    #[error("too many Python patterns ({count}); at most {max} (a FILE narrowing counts twice, a MODULE twice)")]
    TooManyPatterns { count: usize, max: u32 },
    #[error("pid {pid}: {reason}; not attaching to a runtime this agent would misread")]
    Sanity { pid: u32, reason: String },
}

/// One interpreter file with what the probes need.
pub struct Interpreter {
    /// The file the probes attach to (holds `_PyEval_EvalFrameDefault`).
    pub path: PathBuf,
    pub version: Version,
    pub image: Image,
    /// Virtual address of `_PyRuntime`.
    pub runtime: u64,
    pub layout: PyLayout,
    /// Where the layout came from: "_Py_DebugOffsets" or "built-in table".
    pub layout_source: &'static str,
    pub sites: Vec<sites::Site>,
}

impl Interpreter {
    /// Loads the interpreter the user named (see [`locate`]).
    pub fn open(target: &str, pids: &[u32]) -> Result<Interpreter, PythonError> {
        let (path, image) = locate(target, pids)?;
        let version = version_of(&image)?;
        let runtime =
            image
                .symbol("_PyRuntime")
                .map(|s| s.0)
                .ok_or_else(|| PythonError::Sites {
                    path: path.clone(),
                    version,
                    reason: "no _PyRuntime symbol".into(),
                })?;
        let mut layout = layout::table(version).ok_or_else(|| PythonError::Unsupported {
            path: path.clone(),
            version: version.to_string(),
        })?;
        let mut layout_source = "built-in table";
        if let Some(d) = layout::debug_offsets(&image, runtime) {
            if d.free_threaded != 0 {
                return Err(PythonError::FreeThreaded { path, version });
            }
            layout = layout::with_debug_offsets(layout, &d);
            layout_source = "_Py_DebugOffsets";
        }
        let sites = sites::find_sites(&image, version)?;
        Ok(Interpreter {
            path,
            version,
            image,
            runtime,
            layout,
            layout_source,
            sites,
        })
    }
}

/// Finds the file holding the eval loop: TARGET itself (a static
/// interpreter or a libpython), else the libpython that TARGET needs (from
/// a traced process's mappings, its run path, or the linker cache).
pub fn locate(target: &str, pids: &[u32]) -> Result<(PathBuf, Image), PythonError> {
    let given = process::resolve_target(target, pids)?;
    let path = std::fs::canonicalize(&given).unwrap_or(given.clone());
    let image = Image::open(&path)?;
    if image.symbol("_PyEval_EvalFrameDefault").is_some() {
        return Ok((path, image));
    }
    let Some(lib) = image
        .needed
        .iter()
        .find(|n| n.starts_with("libpython"))
        .cloned()
    else {
        return Err(PythonError::NotPython { path });
    };
    // A traced process's own mapping of it first (same inode it runs).
    for &pid in pids {
        if let Ok(files) = process::mapped_files(pid) {
            if let Some(f) = files
                .iter()
                .find(|f| f.file_name().is_some_and(|n| n.to_string_lossy() == lib))
            {
                let p = PathBuf::from(format!("/proc/{pid}/root{}", f.display()));
                let img = Image::open(&p)?;
                return Ok((p, img));
            }
        }
    }
    let origin = path.parent().unwrap_or(Path::new("/"));
    for dir in &image.runpath {
        let dir = dir.replace("$ORIGIN", &origin.to_string_lossy());
        let p = Path::new(&dir).join(&lib);
        if p.exists() {
            let p = std::fs::canonicalize(&p).unwrap_or(p);
            let img = Image::open(&p)?;
            return Ok((p, img));
        }
    }
    let p = process::resolve_target(&lib, &[])?;
    let p = std::fs::canonicalize(&p).unwrap_or(p);
    let img = Image::open(&p)?;
    if img.symbol("_PyEval_EvalFrameDefault").is_none() {
        return Err(PythonError::NotPython { path });
    }
    Ok((p, img))
}

/// The version from 3.13's debug offsets, the file name
/// (`libpython3.X.so...`, `python3.X`), or the version string in the file.
pub fn version_of(image: &Image) -> Result<Version, PythonError> {
    let v = if let Some(d) = image
        .symbol("_PyRuntime")
        .and_then(|(rt, _)| layout::debug_offsets(image, rt))
    {
        Some(Version {
            major: (d.version >> 24) as u32 & 0xff,
            minor: (d.version >> 16) as u32 & 0xff,
        })
    } else {
        let name = image
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        version_from_name(&name).or_else(|| version_from_strings(&image.data))
    };
    let Some(v) = v else {
        return Err(PythonError::UnknownVersion {
            path: image.path.clone(),
        });
    };
    if !v.supported() {
        return Err(PythonError::Unsupported {
            path: image.path.clone(),
            version: v.to_string(),
        });
    }
    Ok(v)
}

fn version_from_name(name: &str) -> Option<Version> {
    let rest = name
        .strip_prefix("libpython")
        .or_else(|| name.strip_prefix("python"))?;
    let mut it = rest.split(|c: char| !c.is_ascii_digit());
    let major: u32 = it.next()?.parse().ok()?;
    let minor: u32 = it.next()?.parse().ok()?;
    Some(Version { major, minor })
}

/// `PY_VERSION` ("3.11.2\0") among the file's strings: the most frequent
/// `\03.N.M\0`-style string.
fn version_from_strings(data: &[u8]) -> Option<Version> {
    let mut counts: HashMap<Version, usize> = HashMap::new();
    for w in data.windows(9) {
        if w[0] != 0 || w[1] != b'3' || w[2] != b'.' {
            continue;
        }
        let s: Vec<u8> = w[1..].iter().take_while(|&&b| b != 0).copied().collect();
        let Ok(s) = std::str::from_utf8(&s) else {
            continue;
        };
        let parts: Vec<&str> = s.split('.').collect();
        if parts.len() == 3
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        {
            if let Ok(minor) = parts[1].parse() {
                *counts.entry(Version { major: 3, minor }).or_default() += 1;
            }
        }
    }
    counts.into_iter().max_by_key(|&(_, n)| n).map(|(v, _)| v)
}
