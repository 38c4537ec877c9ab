//! What the probe kinds share to find where their probes go: the files of
//! the plan's targets (opened once), their functions, and the kernel's
//! refusals. A kind's own file says which functions and which programs.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use crate::symbols::{
    elf::ElfFile,
    placement::{place_symbol, Needs},
    process, FunctionSymbol, TargetError,
};

use super::site::{ProbeSite, Program};

/// Files and functions of the targets, resolved for the traced pids.
pub struct Resolver<'a> {
    pids: &'a [u32],
    files: HashMap<PathBuf, ElfFile>,
    /// Glob matches that had to be skipped, one line each.
    pub warnings: Vec<String>,
}

impl<'a> Resolver<'a> {
    /// Resolves targets for `pids` (empty: the host's files).
    pub fn new(pids: &'a [u32]) -> Resolver<'a> {
        Resolver {
            pids,
            files: HashMap::new(),
            warnings: Vec::new(),
        }
    }

    /// The processes the targets are resolved for.
    pub fn pids(&self) -> &'a [u32] {
        self.pids
    }

    /// The ELF file at `path`, opened once.
    pub fn open(&mut self, path: &Path) -> Result<&ElfFile, TargetError> {
        if !self.files.contains_key(path) {
            self.files.insert(path.to_path_buf(), ElfFile::open(path)?);
        }
        Ok(&self.files[path])
    }

    /// One site per function of `target` matching `symbol`, each with
    /// `programs`, placed where the programs find what they `need`
    /// (symbols/placement.rs). Every glob match joins; no match is an error
    /// naming close candidates. A function the kernel cannot probe is an
    /// error when named exactly, and is skipped with a warning when a glob
    /// matched it among others.
    pub fn functions(
        &mut self,
        label: &str,
        cookie: u64,
        target: &str,
        symbol: &str,
        programs: &'static [Program],
        needs: &Needs,
    ) -> Result<Vec<ProbeSite>, TargetError> {
        let path = process::resolve_target(target, self.pids)?;
        let elf = self.open(&path)?;
        let mut placed = Vec::new();
        for f in elf.matching(symbol)? {
            let placement = if f.ifunc {
                Err(TargetError::Ifunc {
                    symbol: f.demangled.clone(),
                    path: path.clone(),
                })
            } else {
                place_symbol(&path, elf, f, needs)?.map_err(|refusal| TargetError::Unprobeable {
                    symbol: f.demangled.clone(),
                    path: path.clone(),
                    reason: refusal.0,
                })
            };
            placed.push((FunctionSymbol::clone(f), placement));
        }
        let mut refused = None;
        let mut sites = Vec::new();
        for (f, placement) in placed {
            let placement = match placement {
                Ok(p) => p,
                Err(err) => {
                    self.warnings.push(format!("'{label}': skipping: {err}"));
                    refused.get_or_insert(err);
                    continue;
                }
            };
            sites.push(ProbeSite {
                stage: label.to_string(),
                cookie,
                path: path.clone(),
                symbol: f.demangled,
                offset: f.file_offset,
                placement,
                ref_ctr_offset: 0,
                programs,
            });
        }
        match refused {
            Some(err) if sites.is_empty() => Err(err),
            _ => Ok(sites),
        }
    }
}

/// Refuses more than `max` stage and gauge sites (functions) in all:
/// `total` so far, the last `matches` of them from stage or gauge `name`
/// (`what`) with TARGET:SYMBOL `pattern`.
pub fn check_max_probes(
    (total, matches): (usize, usize),
    max: usize,
    what: &'static str,
    name: &str,
    pattern: &str,
) -> Result<(), TargetError> {
    if total <= max {
        return Ok(());
    }
    Err(TargetError::TooManyProbes {
        what,
        name: name.to_string(),
        pattern: pattern.to_string(),
        matches,
        total,
        max,
    })
}

/// Refuses two stages on one function. Both would push an open call at
/// entry and one return would unwind the other's, so one stage would lose
/// every call; a function belongs to one stage.
pub fn check_overlaps(sites: &[ProbeSite]) -> Result<(), TargetError> {
    use std::os::unix::fs::MetadataExt;
    // The same file can be reached by several paths (symlinks, /proc/PID/root).
    let file_id = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| (m.dev(), m.ino()))
            .unwrap_or_default()
    };
    let mut owner: HashMap<((u64, u64), u64), &ProbeSite> = HashMap::new();
    for site in sites {
        let key = (file_id(&site.path), site.offset);
        match owner.get(&key) {
            Some(first) if first.stage != site.stage => {
                return Err(TargetError::OverlappingStages {
                    first: first.stage.clone(),
                    second: site.stage.clone(),
                    symbol: site.symbol.clone(),
                    path: site.path.clone(),
                })
            }
            _ => {
                owner.insert(key, site);
            }
        }
    }
    Ok(())
}
