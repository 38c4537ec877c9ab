//! Unwind support: keep an exception (C++ throw, Rust panic, a thread's
//! forced unwind) that crosses a traced function from meeting the kernel's
//! uretprobe trampoline, which has no unwind info and makes the unwinder
//! terminate the process. The kernel side is adeline-trace-ebpf/src/unwind.rs;
//! docs/unwind.md explains the mechanism and its limits.
//!
//! This module decides where those programs attach: the unwinder's entry
//! points (`_Unwind_RaiseException`, `_Unwind_Resume_or_Rethrow`,
//! `_Unwind_ForcedUnwind`) and the catches (`__cxa_begin_catch`, Rust's
//! `__rust_panic_cleanup`), in the traced files themselves (static
//! unwinder, Rust's std) and in the shared libgcc_s / libstdc++ of the
//! traced processes (their mappings with `-p`, else the linker cache).
pub mod btf;

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
};

use object::{Object, ObjectSymbol};

use crate::{
    resolve::{first_bytes, ProbeSite, SiteKind},
    target::{elf::ElfFile, insn::uprobe_refusal, process},
};

pub use btf::KernelOffsets;

/// Attach cookie of `unwind_raise` at the forced-unwind entry point (the
/// thread's open calls end when it exits).
pub const COOKIE_FORCED: u64 = 1;

/// Stage name shown for unwind hooks.
pub const UNWIND_STAGE: &str = "(unwind)";

/// Unwinder entry points: the unwinder reads return addresses only after one
/// of these was called (`_Unwind_Resume` continues an unwind one of them
/// started; `_Unwind_Backtrace` walks without unwinding, see docs/unwind.md).
const RAISE: [(&str, u64); 3] = [
    ("_Unwind_RaiseException", 0),
    ("_Unwind_Resume_or_Rethrow", 0),
    ("_Unwind_ForcedUnwind", COOKIE_FORCED),
];

/// Shared libraries that hold the unwinder and the C++ catch.
const LIBRARIES: [&str; 2] = ["libgcc_s.so.1", "libstdc++.so.6"];

/// Where unwind support attaches, or why it is missing.
#[derive(Debug, Default)]
pub struct UnwindPlan {
    /// `UnwindRaise` and `UnwindCatch` sites.
    pub sites: Vec<ProbeSite>,
    /// The kernel offsets the programs need (None: support is off).
    pub offsets: Option<KernelOffsets>,
    /// One line each, for stderr and the start event.
    pub warnings: Vec<String>,
}

/// Whether a raw symbol name is a catch: C++'s `__cxa_begin_catch`, or
/// Rust's `__rust_panic_cleanup` (plain, or `__rustc::` mangled by newer
/// compilers), which `catch_unwind` calls on a caught panic.
fn is_catch(raw: &str) -> bool {
    raw == "__cxa_begin_catch" || raw.contains("__rust_panic_cleanup")
}

/// Plans the unwind hooks for the stage sites (any with a return probe).
pub fn plan(sites: &[ProbeSite], pids: &[u32]) -> UnwindPlan {
    let stage_files: Vec<&Path> = {
        let mut seen = HashSet::new();
        sites
            .iter()
            .filter(|s| s.kind == SiteKind::Stage)
            .map(|s| s.path.as_path())
            .filter(|p| seen.insert(p.to_path_buf()))
            .collect()
    };
    let mut out = UnwindPlan::default();
    if stage_files.is_empty() {
        return out;
    }
    match KernelOffsets::kernel() {
        Ok(o) => out.offsets = Some(o),
        Err(e) => {
            out.warnings.push(format!(
                "exceptions are not supported through traced functions ({e}): \
                 an exception that unwinds through one will terminate the process"
            ));
            return out;
        }
    }
    let mut files: Vec<PathBuf> = stage_files.iter().map(|p| p.to_path_buf()).collect();
    for lib in LIBRARIES {
        if let Ok(p) = process::resolve_target(lib, pids) {
            if !files.contains(&p) {
                files.push(p);
            }
        }
    }
    let mut seen = HashSet::new();
    for path in &files {
        let Ok(elf) = ElfFile::open(path) else {
            continue;
        };
        for f in elf.functions.iter().filter(|f| !f.ifunc) {
            let (kind, cookie) = match RAISE.iter().find(|(n, _)| *n == f.raw) {
                Some(&(_, cookie)) => (SiteKind::UnwindRaise, cookie),
                None if is_catch(&f.raw) => (SiteKind::UnwindCatch, 0),
                None => continue,
            };
            if first_bytes(path, f.file_offset)
                .and_then(|c| uprobe_refusal(&c))
                .is_some()
                || !seen.insert((path.clone(), f.file_offset))
            {
                continue;
            }
            out.sites.push(ProbeSite {
                kind,
                stage: UNWIND_STAGE.to_string(),
                cookie,
                path: path.clone(),
                symbol: f.raw.clone(),
                offset: f.file_offset,
            });
        }
    }
    let has = |k: SiteKind| out.sites.iter().any(|s| s.kind == k);
    if !has(SiteKind::UnwindRaise) {
        out.warnings.push(
            "no exception unwinder (_Unwind_RaiseException) found in the traced files or \
             libgcc_s.so.1: an exception that unwinds through a traced function will \
             terminate the process"
                .to_string(),
        );
    } else if !has(SiteKind::UnwindCatch) {
        out.warnings.push(
            "no catch entry point (__cxa_begin_catch, __rust_panic_cleanup) found: calls \
             unwound by an exception produce no span and the traced calls around the catch \
             lose theirs"
                .to_string(),
        );
    }
    for path in stage_files {
        if hidden_unwinder(path) {
            out.warnings.push(format!(
                "{}: has exception handling but its unwinder is linked in without symbols \
                 (static libgcc): an exception raised inside it that unwinds through a \
                 traced function will terminate the process",
                path.display()
            ));
        }
    }
    out
}

/// A file with C++/Rust exception tables that neither imports the shared
/// unwinder nor names its own copy: it unwinds with a private, hidden one.
fn hidden_unwinder(path: &Path) -> bool {
    let Ok(data) = std::fs::read(path) else {
        return false;
    };
    let Ok(obj) = object::File::parse(&*data) else {
        return false;
    };
    if obj.section_by_name(".gcc_except_table").is_none() {
        return false;
    }
    let unwinder = |n: &[u8]| n == b"_Unwind_RaiseException" || n == b"_Unwind_Resume";
    let imports = obj
        .imports()
        .map(|v| v.iter().any(|i| unwinder(i.name())))
        .unwrap_or(false);
    let defines = obj
        .symbols()
        .chain(obj.dynamic_symbols())
        .any(|s| s.is_definition() && s.name_bytes().is_ok_and(unwinder));
    !imports && !defines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catch_names() {
        assert!(is_catch("__cxa_begin_catch"));
        assert!(is_catch("__rust_panic_cleanup"));
        assert!(is_catch("_RNvCsfLfy6EI15iL_7___rustc20___rust_panic_cleanup"));
        assert!(!is_catch("__cxa_end_catch"));
        assert!(!is_catch("_Unwind_RaiseException"));
    }

    #[test]
    fn nothing_without_stage_sites() {
        let p = plan(&[], &[]);
        assert!(p.sites.is_empty() && p.warnings.is_empty() && p.offsets.is_none());
    }
}
