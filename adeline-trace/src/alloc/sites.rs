//! The allocator functions alloc mode probes, found in the C library the
//! traced process uses (its mappings with `-p`, the linker cache for a
//! launched command).
use std::path::Path;

use adeline_trace_common::{
    ALLOC_FN_ALIGNED, ALLOC_FN_CALLOC, ALLOC_FN_MALLOC, ALLOC_FN_MMAP, ALLOC_FN_POSIX_MEMALIGN,
    ALLOC_FN_REALLOC,
};
use thiserror::Error;

use crate::{
    resolve::{first_bytes, ProbeSite, SiteKind},
    target::{elf::ElfFile, insn::uprobe_refusal, process, TargetError},
};

/// Functions that return a new block, with how to read them.
const ALLOCATORS: &[(&str, u32)] = &[
    ("malloc", ALLOC_FN_MALLOC),
    ("calloc", ALLOC_FN_CALLOC),
    ("realloc", ALLOC_FN_REALLOC),
    ("posix_memalign", ALLOC_FN_POSIX_MEMALIGN),
    ("aligned_alloc", ALLOC_FN_ALIGNED),
    ("memalign", ALLOC_FN_ALIGNED),
    ("valloc", ALLOC_FN_MALLOC),
    ("pvalloc", ALLOC_FN_MALLOC),
    ("mmap", ALLOC_FN_MMAP),
];

/// Functions that end a block (first argument = its address).
const RELEASERS: &[&str] = &["free", "munmap"];

/// The stage name alloc sites carry (they belong to no stage).
pub const ALLOC_SITE_NAME: &str = "(alloc)";

#[derive(Debug, Error)]
pub enum AllocSiteError {
    #[error("--alloc: cannot find the C library of the traced process: {0}")]
    NoLibc(TargetError),
    #[error("--alloc: {path} has no '{symbol}' function: is the process linked against another allocator?")]
    Missing { path: String, symbol: &'static str },
    #[error("--alloc: {0}")]
    Target(#[from] TargetError),
}

/// Entry, return and release sites for the C library of `pids` (the linker
/// cache when empty). `malloc` and `free` are required; the others are
/// probed when present. Aliases (aligned_alloc = memalign) are probed once.
pub fn alloc_sites(pids: &[u32]) -> Result<Vec<ProbeSite>, AllocSiteError> {
    let libc = process::resolve_target("c", pids).map_err(AllocSiteError::NoLibc)?;
    sites_in(&libc)
}

fn sites_in(libc: &Path) -> Result<Vec<ProbeSite>, AllocSiteError> {
    let elf = ElfFile::open(libc)?;
    let mut sites: Vec<ProbeSite> = Vec::new();
    let mut seen: Vec<u64> = Vec::new();
    let mut add = |symbol: &'static str, kinds: &[SiteKind], cookie: u32| {
        let Some(f) = elf.matching(symbol).ok().and_then(|f| f.first().copied()) else {
            return false;
        };
        if seen.contains(&f.file_offset) {
            return true;
        }
        if first_bytes(libc, f.file_offset)
            .and_then(|c| uprobe_refusal(&c))
            .is_some()
        {
            return false;
        }
        seen.push(f.file_offset);
        // An entry-only probe may sit past a NULL check (see past_null_check).
        let offset = match kinds {
            [SiteKind::Free] => {
                let skip = first_bytes(libc, f.file_offset).map_or(0, |c| past_null_check(&c));
                f.file_offset + skip
            }
            _ => f.file_offset,
        };
        for &kind in kinds {
            sites.push(ProbeSite {
                kind,
                stage: ALLOC_SITE_NAME.into(),
                cookie: u64::from(cookie),
                path: libc.to_path_buf(),
                symbol: symbol.into(),
                offset,
                ref_ctr_offset: 0,
            });
        }
        true
    };
    let missing = |symbol| AllocSiteError::Missing {
        path: libc.display().to_string(),
        symbol,
    };
    for &(symbol, cookie) in ALLOCATORS {
        if !add(symbol, &[SiteKind::AllocEnter, SiteKind::AllocExit], cookie) && symbol == "malloc"
        {
            return Err(missing("malloc"));
        }
    }
    for &symbol in RELEASERS {
        if !add(symbol, &[SiteKind::Free], 0) && symbol == "free" {
            return Err(missing("free"));
        }
    }
    Ok(sites)
}

/// Bytes to skip so a probe on `free(ptr)` sits after its NULL check:
/// `test %rdi,%rdi` then `je` (short or near), as glibc's `free` starts.
/// The kernel single-steps a `test` at a uprobe (an extra trap, ~5 us on a
/// VM) but emulates the `push` that follows on the non-NULL path, where
/// `%rdi` still holds the pointer; free(NULL) is a no-op to us anyway.
/// 0 when the code starts otherwise.
fn past_null_check(code: &[u8]) -> u64 {
    match code {
        [0x48, 0x85, 0xff, 0x74, _, ..] => 5,
        [0x48, 0x85, 0xff, 0x0f, 0x84, _, _, _, _, ..] => 9,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_c_library_has_every_entry_point_once() {
        let sites = alloc_sites(&[std::process::id()]).unwrap();
        let names = |kind| -> Vec<&str> {
            sites
                .iter()
                .filter(|s| s.kind == kind)
                .map(|s| s.symbol.as_str())
                .collect()
        };
        // glibc: memalign is an alias of aligned_alloc (same address).
        assert_eq!(
            names(SiteKind::AllocEnter),
            [
                "malloc",
                "calloc",
                "realloc",
                "posix_memalign",
                "aligned_alloc",
                "valloc",
                "pvalloc",
                "mmap"
            ]
        );
        assert_eq!(names(SiteKind::AllocEnter), names(SiteKind::AllocExit));
        assert_eq!(names(SiteKind::Free), ["free", "munmap"]);
        let calloc = sites.iter().find(|s| s.symbol == "calloc").unwrap();
        assert_eq!(calloc.cookie, u64::from(ALLOC_FN_CALLOC));
        assert!(calloc.path.to_string_lossy().contains("libc.so"));
    }

    #[test]
    fn free_is_probed_past_its_null_check() {
        assert_eq!(past_null_check(&[0x48, 0x85, 0xff, 0x74, 0x10, 0x55]), 5);
        assert_eq!(
            past_null_check(&[0x48, 0x85, 0xff, 0x0f, 0x84, 1, 2, 0, 0, 0x55]),
            9
        );
        assert_eq!(past_null_check(&[0x55, 0x48, 0x85, 0xff]), 0);
        assert_eq!(past_null_check(&[0x48, 0x85, 0xff]), 0);
    }

    #[test]
    fn a_library_without_an_allocator_is_a_clear_error() {
        let libm = process::resolve_target("m", &[]).unwrap();
        let err = sites_in(&libm).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "--alloc: {} has no 'malloc' function: is the process linked against another allocator?",
                libm.display()
            )
        );
    }
}
