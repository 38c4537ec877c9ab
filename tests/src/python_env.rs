//! The Python interpreter matrix of the Python fixtures
//! (tests/fixtures/python): which interpreters, where their venvs live and
//! what `cargo xtask setup` recorded in them.
//!
//! One definition for both sides: the test harness (`adeline_trace_tests::
//! python_env`) and `cargo xtask setup` (which includes this file with
//! `#[path]`), so it uses `std` only.
//!
//! Matrix: the newest pyenv CPython of each minor 3.10, 3.11, 3.12, 3.13
//! (`$(pyenv root)/versions/3.X.Y`, plain release names only) and Debian's
//! system `/usr/bin/python3.11`.
//!
//! Venvs: `$ADELINE_PY_VENVS`, else `~/.local/share/adeline-trace/python`,
//! one directory per interpreter build, keyed by where it comes from and
//! its full version (`pyenv-3.12.1`, `debian-3.11.2`), so a new build of
//! one interpreter makes a new venv and leaves the others alone. A venv is
//! complete when its [`STATUS_FILE`] exists: setup writes it last.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Where an interpreter of the matrix comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The newest `$(pyenv root)/versions/3.MINOR.PATCH`.
    Pyenv { minor: u32 },
    /// A fixed path (Debian's package).
    System { path: &'static str, minor: u32 },
}

/// One slot of the matrix: a label the tests print and where to look.
#[derive(Debug, Clone, Copy)]
pub struct Slot {
    /// `3.10`, `3.11`, `3.12`, `3.13`, `deb-3.11`.
    pub label: &'static str,
    pub source: Source,
}

/// The interpreter matrix, in the order tests run it.
pub const MATRIX: [Slot; 5] = [
    Slot {
        label: "3.10",
        source: Source::Pyenv { minor: 10 },
    },
    Slot {
        label: "3.11",
        source: Source::Pyenv { minor: 11 },
    },
    Slot {
        label: "3.12",
        source: Source::Pyenv { minor: 12 },
    },
    Slot {
        label: "3.13",
        source: Source::Pyenv { minor: 13 },
    },
    Slot {
        label: "deb-3.11",
        source: Source::System {
            path: "/usr/bin/python3.11",
            minor: 11,
        },
    },
];

/// The file setup writes last into a complete venv (`key=value` lines, see
/// [`VenvStatus`]).
pub const STATUS_FILE: &str = "adeline-setup.txt";

/// The packages of the heavy fixture (pipeline.py), as pip names, with the
/// module each is imported as.
pub const PIPELINE_PACKAGES: [(&str, &str); 5] = [
    ("numpy", "numpy"),
    ("opencv-python-headless", "cv2"),
    ("onnxruntime", "onnxruntime"),
    ("onnx", "onnx"),
    ("paho-mqtt", "paho.mqtt.client"),
];

/// A found interpreter of the matrix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interpreter {
    pub label: &'static str,
    /// `3.12.1`.
    pub version: String,
    /// The interpreter executable itself (no shim, no symlink):
    /// `<pyenv root>/versions/3.12.1/bin/python3.12`, `/usr/bin/python3.11`.
    pub exe: PathBuf,
    /// Venv directory name: `pyenv-3.12.1`, `debian-3.11.2`.
    pub key: String,
}

/// The pyenv root: `$PYENV_ROOT`, else `~/.pyenv` when it exists, else
/// what `pyenv root` prints.
pub fn pyenv_root() -> Option<PathBuf> {
    if let Some(r) = std::env::var_os("PYENV_ROOT").filter(|r| !r.is_empty()) {
        return Some(PathBuf::from(r));
    }
    if let Some(home) = std::env::var_os("HOME") {
        let p = PathBuf::from(home).join(".pyenv");
        if p.join("versions").is_dir() {
            return Some(p);
        }
    }
    let out = Command::new("pyenv").arg("root").output().ok()?;
    let root = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !root.is_empty()).then(|| PathBuf::from(root))
}

/// `3.12.1` -> (3, 12, 1); None for anything else (`3.13.0t`, `3.14-dev`,
/// `3.12.0rc1`, virtualenv names).
pub fn parse_release(name: &str) -> Option<(u32, u32, u32)> {
    let mut it = name.split('.');
    let mut num = || -> Option<u32> {
        let s = it.next()?;
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    let v = (num()?, num()?, num()?);
    it.next().is_none().then_some(v)
}

/// The newest release `3.MINOR.*` among `names`.
pub fn newest_patch<'a>(names: impl IntoIterator<Item = &'a str>, minor: u32) -> Option<&'a str> {
    names
        .into_iter()
        .filter_map(|n| parse_release(n).map(|v| (v, n)))
        .filter(|((major, m, _), _)| *major == 3 && *m == minor)
        .max_by_key(|(v, _)| *v)
        .map(|(_, n)| n)
}

/// Runs `exe` to read its `sys.version_info` as `X.Y.Z`.
pub fn interpreter_version(exe: &Path) -> Result<String, String> {
    let out = Command::new(exe)
        .args([
            "-I",
            "-c",
            "import sys; print('%d.%d.%d' % sys.version_info[:3])",
        ])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} failed ({}): {}",
            exe.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Finds the interpreter of one slot, or says why there is none.
pub fn find(slot: &Slot) -> Result<Interpreter, String> {
    match slot.source {
        Source::Pyenv { minor } => {
            let root = pyenv_root()
                .ok_or_else(|| "no pyenv root ($PYENV_ROOT, ~/.pyenv, `pyenv root`)".to_string())?;
            let versions = root.join("versions");
            let names: Vec<String> = std::fs::read_dir(&versions)
                .map_err(|e| format!("reading {}: {e}", versions.display()))?
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            let name = newest_patch(names.iter().map(String::as_str), minor).ok_or_else(|| {
                format!(
                    "no CPython 3.{minor}.* under {} (pyenv install 3.{minor})",
                    versions.display()
                )
            })?;
            let exe = versions.join(name).join(format!("bin/python3.{minor}"));
            if !exe.is_file() {
                return Err(format!("{} is missing", exe.display()));
            }
            let version = interpreter_version(&exe)?;
            if version != name {
                return Err(format!(
                    "{} reports {version}, its directory says {name}",
                    exe.display()
                ));
            }
            Ok(Interpreter {
                label: slot.label,
                key: format!("pyenv-{version}"),
                version,
                exe,
            })
        }
        Source::System { path, minor } => {
            let exe = PathBuf::from(path);
            if !exe.is_file() {
                return Err(format!(
                    "{path} is missing (apt-get install python3.{minor})"
                ));
            }
            let version = interpreter_version(&exe)?;
            if parse_release(&version).map(|(a, b, _)| (a, b)) != Some((3, minor)) {
                return Err(format!("{path} is {version}, not 3.{minor}"));
            }
            Ok(Interpreter {
                label: slot.label,
                key: format!("debian-{version}"),
                version,
                exe,
            })
        }
    }
}

/// Where the venvs live: `$ADELINE_PY_VENVS`, else
/// `~/.local/share/adeline-trace/python`.
pub fn venvs_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("ADELINE_PY_VENVS").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".local/share/adeline-trace/python")
}

impl Interpreter {
    /// The venv of this interpreter (may not exist yet).
    pub fn venv(&self) -> PathBuf {
        venvs_dir().join(&self.key)
    }

    /// The venv's interpreter: `<venv>/bin/python`, a symlink to [`Self::exe`]
    /// (`venv` links, never copies, on Linux), so running it runs the
    /// interpreter itself in the same process.
    pub fn venv_python(&self) -> PathBuf {
        self.venv().join("bin/python")
    }
}

/// What setup recorded in a venv's [`STATUS_FILE`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VenvStatus {
    /// `interpreter=`: the interpreter the venv was made from.
    pub interpreter: String,
    /// `version=`: its version.
    pub version: String,
    /// `requirements=`: hash of the requirements file installed.
    pub requirements: String,
    /// `installed=`: `name==version` pins installed, space separated.
    pub installed: Vec<String>,
    /// `missing=`: one per line, `name==version: why` (no wheel for this
    /// interpreter: pip found no matching distribution).
    pub missing: Vec<String>,
}

impl VenvStatus {
    pub fn parse(text: &str) -> VenvStatus {
        let mut s = VenvStatus::default();
        for line in text.lines() {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            match k {
                "interpreter" => s.interpreter = v.to_string(),
                "version" => s.version = v.to_string(),
                "requirements" => s.requirements = v.to_string(),
                "installed" => s.installed = v.split_whitespace().map(str::to_string).collect(),
                "missing" => s.missing.push(v.to_string()),
                _ => {}
            }
        }
        s
    }

    pub fn render(&self) -> String {
        let mut t = format!(
            "interpreter={}\nversion={}\nrequirements={}\ninstalled={}\n",
            self.interpreter,
            self.version,
            self.requirements,
            self.installed.join(" ")
        );
        for m in &self.missing {
            t.push_str(&format!("missing={m}\n"));
        }
        t
    }

    /// Reads `<venv>/STATUS_FILE`; None when absent (venv incomplete).
    pub fn read(venv: &Path) -> Option<VenvStatus> {
        std::fs::read_to_string(venv.join(STATUS_FILE))
            .ok()
            .map(|t| VenvStatus::parse(&t))
    }

    /// Whether pip package `name` was recorded as missing.
    pub fn is_missing(&self, name: &str) -> bool {
        self.missing.iter().any(|m| {
            m.split("==")
                .next()
                .is_some_and(|n| n.eq_ignore_ascii_case(name))
        })
    }
}

/// FNV-1a 64 of `bytes` as 16 hex digits: the requirements stamp.
pub fn fnv1a_hex(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases() {
        assert_eq!(parse_release("3.12.1"), Some((3, 12, 1)));
        assert_eq!(parse_release("3.13.0t"), None);
        assert_eq!(parse_release("3.12.0rc1"), None);
        assert_eq!(parse_release("3.12"), None);
        assert_eq!(parse_release("3.12.1.2"), None);
        assert_eq!(parse_release("myenv"), None);
        let names = [
            "3.11.7", "3.11.10", "3.11.9", "3.12.1", "3.11.11t", "2.7.18",
        ];
        assert_eq!(newest_patch(names, 11), Some("3.11.10"));
        assert_eq!(newest_patch(names, 12), Some("3.12.1"));
        assert_eq!(newest_patch(names, 13), None);
    }

    #[test]
    fn status_round_trip() {
        let s = VenvStatus {
            interpreter: "/usr/bin/python3.11".into(),
            version: "3.11.2".into(),
            requirements: fnv1a_hex(b"numpy==2.2.6\n"),
            installed: vec!["numpy==2.2.6".into(), "paho-mqtt==2.2.0".into()],
            missing: vec!["onnxruntime==1.23.2: no wheel for cp311".into()],
        };
        let back = VenvStatus::parse(&s.render());
        assert_eq!(back, s);
        assert!(back.is_missing("onnxruntime"));
        assert!(back.is_missing("ONNXRuntime"));
        assert!(!back.is_missing("numpy"));
        assert_eq!(fnv1a_hex(b""), "cbf29ce484222325");
    }
}
