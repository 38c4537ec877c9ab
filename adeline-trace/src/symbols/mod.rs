//! What to attach to: ELF symbols, USDT notes, processes and their mappings.
//!
//! Every user-facing problem with a target (missing file, not an ELF, no such
//! function, dead pid, unknown library) is a [`TargetError`] whose `Display` is
//! one line saying what went wrong, where, and what to do about it.

use std::io;
use std::path::PathBuf;

pub mod elf;
pub mod exits;
pub mod placement;
pub mod process;
pub mod symbolize;
pub mod usdt;
pub mod x86;

pub use elf::{ElfFile, FunctionSymbol};
pub use process::{ensure_running, exe_path, mapped_files, resolve_target};
pub use usdt::{usdt_probes, UsdtArg, UsdtArgLoc, UsdtProbe};

/// Why a probe target could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// The path does not exist (on the host or in the process's mount namespace).
    #[error("{} does not exist; check the path (for a containerized process also pass its pid with -p)", path.display())]
    NotFound {
        /// The path as the user gave it.
        path: PathBuf,
    },

    /// The file exists but is not an ELF executable or shared library.
    #[error("{} is not an ELF executable or shared library ({reason}); point at the binary or .so that contains the code", path.display())]
    NotElf {
        /// The offending file.
        path: PathBuf,
        /// What the parser found instead.
        reason: String,
    },

    /// Reading a file failed.
    #[error("cannot read {}: {error}; check permissions (the agent normally runs as root)", path.display())]
    Io {
        /// The file or /proc entry being read.
        path: PathBuf,
        /// The underlying error (shown in the message, not chained as a source).
        error: io::Error,
    },

    /// The file is an ELF for another machine (aarch64, i386, ...).
    #[error("{} is built for {machine} ({bits}-bit); adeline-trace probes x86-64 code only", path.display())]
    WrongMachine {
        /// The offending file.
        path: PathBuf,
        /// The ELF machine, as `object` names it.
        machine: String,
        /// 32 or 64.
        bits: u8,
    },

    /// A function pattern matched nothing.
    #[error("{}", no_match_message(pattern, path, candidates, *stripped, *probeable))]
    NoMatch {
        /// The pattern as the user gave it.
        pattern: String,
        /// The ELF file that was searched.
        path: PathBuf,
        /// Up to 5 similar function names, best first.
        candidates: Vec<String>,
        /// The file has no `.symtab`, only dynamic symbols.
        stripped: bool,
        /// How many functions the file offers for probing.
        probeable: usize,
    },

    /// A glob pattern could not be compiled.
    #[error(
        "invalid function pattern '{pattern}': {reason}; use * ? and [..] globs or an exact name"
    )]
    BadPattern {
        /// The pattern as the user gave it.
        pattern: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A `.note.stapsdt` entry is malformed.
    #[error("malformed USDT note #{index} in {}: {reason}; the file may be corrupt or truncated", path.display())]
    BadUsdtNote {
        /// The ELF file.
        path: PathBuf,
        /// Zero-based index of the note in `.note.stapsdt`.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },

    /// The pid does not name a live process (missing or zombie).
    #[error("process {pid} is not running; check the pid with `ps -p {pid}`")]
    PidNotRunning {
        /// The pid as given.
        pid: u32,
    },

    /// A bare library/executable name was not found anywhere.
    #[error("no library or executable named '{name}' found (searched {searched}); pass its full path instead")]
    LibraryNotFound {
        /// The bare name as given (`detector`, `libdetector.so`, `c`).
        name: String,
        /// Human-readable list of the places searched.
        searched: String,
    },
    /// The kernel would accept the probe but never fire it (see placement.rs).
    #[error("cannot probe {symbol} in {}: {reason}, which the kernel's x86 uprobes refuse (the probe would never fire); probe its caller or a function it calls", path.display())]
    Unprobeable {
        /// Demangled name of the function.
        symbol: String,
        /// File that holds it.
        path: PathBuf,
        /// What is wrong with its first instruction.
        reason: &'static str,
    },

    /// Two stages resolve to one function.
    #[error("stages '{first}' and '{second}' both probe {symbol} in {}: a function can be timed by one stage only; remove it from one of them", path.display())]
    OverlappingStages {
        /// The stage that claimed the function first.
        first: String,
        /// The other stage.
        second: String,
        /// Demangled name of the function.
        symbol: String,
        /// File that holds it.
        path: PathBuf,
    },

    /// The symbol is an IFUNC: its address holds the resolver, which runs
    /// once at load time, not the implementation callers run.
    #[error("cannot probe {symbol} in {}: it is an IFUNC (its symbol is the resolver that picks an implementation when the library loads, so a probe there would never see a call); probe a function that calls it instead", path.display())]
    Ifunc {
        /// Name of the symbol.
        symbol: String,
        /// File that holds it.
        path: PathBuf,
    },

    /// The stages' and gauges' patterns match more functions than the
    /// per-run limit (`--max-probes`).
    #[error("{}", too_many_message(what, name, pattern, *matches, *total, *max))]
    TooManyProbes {
        /// "stage" or "gauge".
        what: &'static str,
        /// Its name.
        name: String,
        /// TARGET:SYMBOL as the user gave it.
        pattern: String,
        /// Functions this stage's pattern matched.
        matches: usize,
        /// Functions matched so far, this stage included.
        total: usize,
        /// The limit.
        max: usize,
    },
}

fn too_many_message(
    what: &str,
    name: &str,
    pattern: &str,
    matches: usize,
    total: usize,
    max: usize,
) -> String {
    let functions = match matches {
        1 => "function",
        _ => "functions",
    };
    let with_others = match total > matches {
        true => format!(" ({total} with the stages and gauges before it)"),
        false => String::new(),
    };
    format!(
        "{what} '{name}' pattern '{pattern}' matches {matches} {functions}{with_others}, over the limit of {max} probed functions per run; narrow the pattern, or raise the limit with --max-probes {total} (config: max_probes = {total})"
    )
}

impl TargetError {
    /// Build an [`TargetError::Io`], mapping "no such file" to [`TargetError::NotFound`].
    pub(crate) fn io(path: impl Into<PathBuf>, error: io::Error) -> Self {
        let path = path.into();
        if error.kind() == io::ErrorKind::NotFound {
            TargetError::NotFound { path }
        } else {
            TargetError::Io { path, error }
        }
    }
}

fn no_match_message(
    pattern: &str,
    path: &std::path::Path,
    candidates: &[String],
    stripped: bool,
    probeable: usize,
) -> String {
    let mut msg = format!("no function matching '{pattern}' in {}", path.display());
    if stripped {
        msg.push_str(&format!(
            ": the file is stripped (no .symtab); only its {probeable} dynamic symbols can be probed"
        ));
    }
    if !candidates.is_empty() {
        msg.push_str(&format!(" (did you mean: {}?)", candidates.join(", ")));
    } else if !stripped {
        msg.push_str(&format!(
            "; see `adeline-trace list {}` for what can be probed",
            path.display()
        ));
    }
    msg
}

/// Helpers shared by the unit tests of this module.
#[cfg(test)]
pub(crate) mod testutil {
    use std::path::{Path, PathBuf};
    use std::process::Command;

    /// Compile `src` (C or C++, by `compiler`) into `dir/name` with `args`.
    pub(crate) fn compile(
        dir: &Path,
        name: &str,
        compiler: &str,
        src: &str,
        args: &[&str],
    ) -> PathBuf {
        let ext = if compiler.ends_with("++") { "cpp" } else { "c" };
        let src_path = dir.join(format!("{name}.{ext}"));
        std::fs::write(&src_path, src).unwrap();
        let out = dir.join(name);
        let status = Command::new(compiler)
            .args(args)
            .arg("-o")
            .arg(&out)
            .arg(&src_path)
            .status()
            .unwrap_or_else(|e| panic!("cannot run {compiler}: {e}"));
        assert!(
            status.success(),
            "{compiler} failed on {}",
            src_path.display()
        );
        out
    }

    /// `path`, a file of the system a test reads (from Debian `package`),
    /// when it exists. When it does not: a failure under `CI=true` (CI must
    /// run the test), else None after printing why the test is skipped.
    pub(crate) fn system_file<'a>(path: &'a str, package: &str) -> Option<&'a Path> {
        let path = Path::new(path);
        if path.exists() {
            return Some(path);
        }
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!(
                "CI=true: {} is missing: install the Debian package {package}",
                path.display()
            );
        }
        eprintln!("skipped: {} not present", path.display());
        None
    }

    /// Stdout of a command that must succeed.
    pub(crate) fn run(cmd: &str, args: &[&str]) -> String {
        let out = Command::new(cmd)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
        assert!(out.status.success(), "{cmd} {args:?} failed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_match_display_lists_candidates() {
        let e = TargetError::NoMatch {
            pattern: "infr".into(),
            path: "/x/bin".into(),
            candidates: vec!["infer".into(), "infer_layer".into()],
            stripped: false,
            probeable: 10,
        };
        assert_eq!(
            e.to_string(),
            "no function matching 'infr' in /x/bin (did you mean: infer, infer_layer?)"
        );
    }

    #[test]
    fn no_match_display_stripped() {
        let e = TargetError::NoMatch {
            pattern: "x".into(),
            path: "/x/bin".into(),
            candidates: vec![],
            stripped: true,
            probeable: 12,
        };
        assert_eq!(
            e.to_string(),
            "no function matching 'x' in /x/bin: the file is stripped (no .symtab); only its 12 dynamic symbols can be probed"
        );
    }

    #[test]
    fn every_message_is_one_line() {
        let errors = [
            TargetError::NotFound { path: "/a".into() },
            TargetError::io("/a", io::Error::from(io::ErrorKind::PermissionDenied)),
            TargetError::PidNotRunning { pid: 4242 },
            TargetError::LibraryNotFound {
                name: "detector".into(),
                searched: "the maps of pid 1, the linker cache, $PATH".into(),
            },
        ];
        for e in errors {
            assert!(!e.to_string().contains('\n'), "{e}");
        }
        assert!(matches!(
            TargetError::io("/a", io::Error::from(io::ErrorKind::NotFound)),
            TargetError::NotFound { .. }
        ));
    }
}
