//! Exceptions through traced functions (docs/unwind.md).
//!
//! A uretprobe replaces the function's return address on the stack with
//! the kernel's trampoline, which has no unwind info: a C++ exception, a
//! Rust panic or a thread's forced unwind (pthread_exit, pthread_cancel)
//! that crosses the function makes the unwinder give up and the process
//! terminate. BPF cannot put the address back where the kernel is locked
//! down (`bpf_probe_write_user` is refused), so instead (`--exit-probes
//! auto|ret`) stages are timed with uprobes on their exit instructions
//! ([`exits`]), which leave the
//! stack untouched, and read-only hooks end the calls an exception
//! unwound: at the catch (`__cxa_begin_catch`, Rust's
//! `__rust_panic_cleanup`) and, after a forced unwind, at the thread's
//! exit. Kernel side: adeline-trace-ebpf/src/unwind.rs.
pub mod exits;

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
};

use object::Object;

use crate::{
    resolve::{first_bytes, ProbeSite, SiteKind},
    target::{elf::ElfFile, insn::uprobe_refusal, process},
};

use exits::ExitFinder;

/// How stage returns are observed (`--exit-probes`). The default stays
/// `uretprobe` for now: see docs/unwind.md for the open question (alloc
/// mode's attribution of an arena heap under `auto`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ExitProbes {
    /// `ret` for functions in files with exception tables (C++, Rust),
    /// `uretprobe` for the others.
    Auto,
    /// Uprobes on the exit instructions: exceptions, panics and thread
    /// cancellation pass through safely; a single-stepped trap per return.
    Ret,
    /// The kernel's return trampoline: cheapest, but an exception that
    /// unwinds through the function terminates the process.
    #[default]
    Uretprobe,
}

/// Stage name shown for the unwind hooks.
pub const UNWIND_STAGE: &str = "(unwind)";

/// Shared libraries that hold the unwinder and the C++ catch.
const LIBRARIES: [&str; 2] = ["libgcc_s.so.1", "libstdc++.so.6"];

/// Whether a raw symbol name is a catch: C++'s `__cxa_begin_catch`, or
/// Rust's `__rust_panic_cleanup` (plain, or `__rustc::` mangled by newer
/// compilers), which `catch_unwind` calls on a caught panic.
fn is_catch(raw: &str) -> bool {
    raw == "__cxa_begin_catch" || raw.contains("__rust_panic_cleanup")
}

/// Whether the file has C++/Rust exception tables (landing pads).
fn has_exception_tables(path: &Path) -> bool {
    std::fs::read(path)
        .ok()
        .and_then(|d| {
            object::File::parse(&*d)
                .ok()
                .map(|o| o.section_by_name(".gcc_except_table").is_some())
        })
        .unwrap_or(false)
}

/// Rewrites the stage sites for `mode`: a stage function timed at its exit
/// instructions becomes a `StageEntry` site plus one `StageRet` site per
/// exit; the others keep their uretprobe (`Stage`). Adds the catch and
/// forced-unwind hooks when any function is timed at its exits. Returns
/// warnings, one line each.
pub fn plan(sites: &mut Vec<ProbeSite>, mode: ExitProbes, pids: &[u32]) -> Vec<String> {
    let mut warnings = Vec::new();
    if mode == ExitProbes::Uretprobe || !sites.iter().any(|s| s.kind == SiteKind::Stage) {
        return warnings;
    }
    let mut elfs: HashMap<PathBuf, Option<(ElfFile, ExitFinder, bool)>> = HashMap::new();
    let mut added = Vec::new();
    let mut converted: Vec<PathBuf> = Vec::new();
    let mut kept_uretprobe = Vec::new();
    for site in sites.iter_mut().filter(|s| s.kind == SiteKind::Stage) {
        let file = elfs.entry(site.path.clone()).or_insert_with(|| {
            Some((
                ElfFile::open(&site.path).ok()?,
                ExitFinder::open(&site.path)?,
                has_exception_tables(&site.path),
            ))
        });
        let Some((elf, finder, unwinds)) = file else {
            continue;
        };
        if mode == ExitProbes::Auto && !*unwinds {
            continue;
        }
        let func = elf.functions.iter().find(|f| f.file_offset == site.offset);
        let exits = match func {
            Some(f) => finder
                .exits(&f.raw, f.address, f.size)
                .map_err(|e| e.to_string()),
            None => Err("its symbol is gone".to_string()),
        }
        .and_then(|exits| {
            match exits
                .iter()
                .find_map(|&o| first_bytes(&site.path, o).and_then(|c| uprobe_refusal(&c)))
            {
                Some(why) => Err(format!("an exit instruction cannot be probed: {why}")),
                None => Ok(exits),
            }
        });
        match exits {
            Ok(exits) => {
                // No exit at all (noreturn): the entry probe alone; only an
                // unwind (or nothing) ends the call.
                site.kind = SiteKind::StageEntry;
                if !converted.contains(&site.path) {
                    converted.push(site.path.clone());
                }
                added.extend(exits.into_iter().map(|offset| ProbeSite {
                    kind: SiteKind::StageRet,
                    offset,
                    ..site.clone()
                }));
            }
            Err(why) => kept_uretprobe.push(format!("{} ({why})", site.symbol)),
        }
    }
    if !kept_uretprobe.is_empty() {
        warnings.push(format!(
            "timed with a uretprobe, as exits could not be found: {}; an exception that \
             unwinds through one will terminate the process",
            kept_uretprobe.join(", ")
        ));
    }
    if converted.is_empty() {
        return warnings;
    }
    sites.extend(added);
    let hooks = unwind_hooks(&converted, pids);
    if !hooks.iter().any(|s| s.kind == SiteKind::UnwindCatch) {
        warnings.push(
            "no catch entry point (__cxa_begin_catch, __rust_panic_cleanup) found: calls \
             unwound by an exception end without a span"
                .to_string(),
        );
    }
    sites.extend(hooks);
    warnings
}

/// The catch and forced-unwind hooks: in the traced files themselves
/// (Rust's std, a static libstdc++/libgcc) and in the shared libgcc_s and
/// libstdc++ of the traced processes (their mappings with `-p`, else the
/// linker cache).
fn unwind_hooks(stage_files: &[PathBuf], pids: &[u32]) -> Vec<ProbeSite> {
    let mut files: Vec<PathBuf> = stage_files.to_vec();
    for lib in LIBRARIES {
        if let Ok(p) = process::resolve_target(lib, pids) {
            if !files.contains(&p) {
                files.push(p);
            }
        }
    }
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for path in &files {
        let Ok(elf) = ElfFile::open(path) else {
            continue;
        };
        for f in elf.functions.iter().filter(|f| !f.ifunc) {
            let kind = if f.raw == "_Unwind_ForcedUnwind" {
                SiteKind::UnwindForced
            } else if is_catch(&f.raw) {
                SiteKind::UnwindCatch
            } else {
                continue;
            };
            if first_bytes(path, f.file_offset)
                .and_then(|c| uprobe_refusal(&c))
                .is_some()
                || !seen.insert((path.clone(), f.file_offset))
            {
                continue;
            }
            out.push(ProbeSite {
                kind,
                stage: UNWIND_STAGE.to_string(),
                cookie: 0,
                path: path.clone(),
                symbol: f.raw.clone(),
                offset: hook_offset(path, f.file_offset),
            });
        }
    }
    out
}

/// Where to hook a function: past a leading `endbr64` (single-stepped at a
/// uprobe, ~15 us) when a `push` follows (emulated, ~1 us); the stack
/// pointer has not moved at either, which the catch program relies on.
fn hook_offset(path: &Path, offset: u64) -> u64 {
    match first_bytes(path, offset) {
        Some(b) if skips_endbr(&b) => offset + 4,
        _ => offset,
    }
}

fn skips_endbr(b: &[u8; 16]) -> bool {
    b[..4] == [0xf3, 0x0f, 0x1e, 0xfa]
        && (matches!(b[4], 0x50..=0x57) || (b[4] == 0x41 && matches!(b[5], 0x50..=0x57)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catch_names() {
        assert!(is_catch("__cxa_begin_catch"));
        assert!(is_catch("__rust_panic_cleanup"));
        assert!(is_catch(
            "_RNvCsfLfy6EI15iL_7___rustc20___rust_panic_cleanup"
        ));
        assert!(!is_catch("__cxa_end_catch"));
        assert!(!is_catch("_Unwind_RaiseException"));
    }

    #[test]
    fn hooks_skip_endbr64_before_a_push() {
        let mut b = [0u8; 16];
        b[..5].copy_from_slice(&[0xf3, 0x0f, 0x1e, 0xfa, 0x53]); // endbr64; push %rbx
        assert!(skips_endbr(&b));
        b[4..6].copy_from_slice(&[0x41, 0x57]); // push %r15
        assert!(skips_endbr(&b));
        b[4..6].copy_from_slice(&[0x48, 0x89]); // mov
        assert!(!skips_endbr(&b));
        b[..2].copy_from_slice(&[0x55, 0x48]); // push %rbp first
        assert!(!skips_endbr(&b));
    }

    #[test]
    fn nothing_without_stage_sites() {
        let mut sites = Vec::new();
        assert!(plan(&mut sites, ExitProbes::Ret, &[]).is_empty());
        assert!(sites.is_empty());
    }
}
