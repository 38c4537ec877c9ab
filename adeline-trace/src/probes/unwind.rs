//! Probe kind `unwind`: exceptions through traced functions
//! (docs/unwind.md).
//!
//! A uretprobe replaces the function's return address on the stack with
//! the kernel's trampoline, which has no unwind info: a C++ exception, a
//! Rust panic or a thread's forced unwind (pthread_exit, pthread_cancel)
//! that crosses the function makes the unwinder give up and the process
//! terminate. BPF cannot put the address back where the kernel is locked
//! down (`bpf_probe_write_user` is refused), so instead (`--exit-probes
//! auto|ret`) stages are timed with uprobes on their exit instructions
//! (found by symbols/exits.rs), which leave the stack untouched, and
//! read-only hooks end the calls an exception unwound: at the catch
//! (`__cxa_begin_catch`, Rust's `__rust_panic_cleanup`) and, after a forced
//! unwind, at the thread's exit. [`plan`] rewrites the function kind's
//! sites; kernel side: adeline-trace-ebpf/src/unwind.rs.
use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
};

use object::Object;

use crate::symbols::{
    elf::ElfFile,
    exits::function_exits,
    placement::{on_instruction, place_symbol, Needs, Reason},
    process,
};

use super::{
    function,
    site::{ProbeSite, Program, Tracepoint},
};

/// How stage returns are observed (`--exit-probes`). The default is
/// `auto`: a process must never be aborted because an exception crossed a
/// traced function (docs/unwind.md, "Choosing").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ExitProbes {
    /// `ret` for functions an exception can unwind through (in files with
    /// exception tables: C++, Rust; not leaves), `uretprobe` for the others.
    #[default]
    Auto,
    /// Uprobes on the exit instructions: exceptions, panics and thread
    /// cancellation pass through safely; a single-stepped trap per return.
    Ret,
    /// The kernel's return trampoline: cheapest, but an exception that
    /// unwinds through the function terminates the process.
    Uretprobe,
}

/// A stage timed at its exit instructions: the entry program alone at the
/// function's placed site ...
pub const ENTRY: &[Program] = &[Program::entry("stage_entry")];
/// ... and `stage_ret` at each exit instruction (cookie = stage id).
pub const EXIT: &[Program] = &[Program::exit("stage_ret")];
/// A catch (`__cxa_begin_catch`, `__rust_panic_cleanup`).
pub const CATCH: &[Program] = &[Program::exit("unwind_catch")];
/// `_Unwind_ForcedUnwind` (cookie unused) ...
pub const FORCED: &[Program] = &[Program::exit("unwind_forced")];
/// ... whose thread's open calls end at its exit.
pub const THREAD_EXIT: Tracepoint =
    Tracepoint::new("unwind_thread_exit", "sched", "sched_process_exit");

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

/// Whether a site is an exit instruction or an unwind hook (not a function
/// of its own in the `start` record).
pub fn is_exit(site: &ProbeSite) -> bool {
    site.programs == EXIT
}

/// Whether a site is a catch or forced-unwind hook.
pub fn is_hook(site: &ProbeSite) -> bool {
    site.programs == CATCH || site.programs == FORCED
}

/// Rewrites the stage sites (the function kind's) for `mode`: a stage
/// function timed at its exit instructions keeps its placed entry site
/// with [`ENTRY`] only and gets one [`EXIT`] site per exit; the others keep
/// their uretprobe. Adds the catch and forced-unwind hooks when any
/// function is timed at its exits. Returns warnings, one line each.
pub fn plan(sites: &mut Vec<ProbeSite>, mode: ExitProbes, pids: &[u32]) -> Vec<String> {
    let mut warnings = Vec::new();
    if mode == ExitProbes::Uretprobe || !sites.iter().any(|s| s.programs == function::PROGRAMS) {
        return warnings;
    }
    let mut elfs: HashMap<PathBuf, Option<(ElfFile, bool)>> = HashMap::new();
    let mut added = Vec::new();
    let mut converted: Vec<PathBuf> = Vec::new();
    let mut kept_uretprobe = Vec::new();
    for site in sites
        .iter_mut()
        .filter(|s| s.programs == function::PROGRAMS)
    {
        let file = elfs.entry(site.path.clone()).or_insert_with(|| {
            Some((
                ElfFile::open(&site.path).ok()?,
                has_exception_tables(&site.path),
            ))
        });
        let Some((elf, unwinds)) = file else {
            continue;
        };
        if mode == ExitProbes::Auto && !*unwinds {
            continue;
        }
        let func = elf.functions.iter().find(|f| f.file_offset == site.offset);
        let exits = match func {
            Some(f) => function_exits(&site.path, elf, f).map_err(|e| e.to_string()),
            None => Err("its symbol is gone".to_string()),
        };
        // A leaf calls nothing: no exception can start below it, so none
        // can cross it, and its uretprobe is safe (and cheaper).
        if mode == ExitProbes::Auto && exits.as_ref().is_ok_and(|e| e.leaf) {
            continue;
        }
        let exits = exits.and_then(|exits| {
            exits
                .offsets
                .into_iter()
                .map(|o| match on_instruction(&site.path, o, Reason::Exit) {
                    Ok(Ok(p)) => Ok((o, p)),
                    Ok(Err(why)) => Err(format!("an exit instruction cannot be probed: {}", why.0)),
                    Err(e) => Err(e.to_string()),
                })
                .collect::<Result<Vec<_>, _>>()
        });
        match exits {
            Ok(exits) => {
                // No exit at all (noreturn): the entry probe alone; only an
                // unwind (or nothing) ends the call.
                site.programs = ENTRY;
                if !converted.contains(&site.path) {
                    converted.push(site.path.clone());
                }
                // An exit site's offset is the instruction's (a `.cold`
                // part may lie before the function).
                added.extend(exits.into_iter().map(|(offset, placement)| ProbeSite {
                    offset,
                    placement,
                    programs: EXIT,
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
    if !hooks.iter().any(|s| s.programs == CATCH) {
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
/// linker cache). Each is placed like a stage's entry (the catch program
/// reads the function's own return-address slot: the stack pointer must
/// not have moved), so a leading `endbr64` before a `push` is skipped.
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
            let programs = if f.raw == "_Unwind_ForcedUnwind" {
                FORCED
            } else if is_catch(&f.raw) {
                CATCH
            } else {
                continue;
            };
            let Ok(Ok(placement)) = place_symbol(path, &elf, f, &Needs::CALL) else {
                continue;
            };
            if !seen.insert((path.clone(), f.file_offset)) {
                continue;
            }
            out.push(ProbeSite {
                stage: UNWIND_STAGE.to_string(),
                cookie: 0,
                path: path.clone(),
                symbol: f.raw.clone(),
                offset: f.file_offset,
                placement,
                ref_ctr_offset: 0,
                programs,
            });
        }
    }
    out
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
    fn nothing_without_stage_sites() {
        let mut sites = Vec::new();
        assert!(plan(&mut sites, ExitProbes::Ret, &[]).is_empty());
        assert!(sites.is_empty());
    }
}
