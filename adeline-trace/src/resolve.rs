//! Plan stages and gauges -> concrete probe sites (file + offset) using target/.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use adeline_trace_common::gauge_cookie;

use crate::{
    config::{GaugeSource, GaugeSpec, StageSpec},
    target::{
        elf::ElfFile,
        placement::{place_symbol, Needs, Placement},
        process, TargetError,
    },
};

/// What a site measures, which decides the programs attached to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SiteKind {
    /// Entry + return timing of a stage.
    Stage,
    /// An argument read at entry.
    GaugeArg,
    /// The return value.
    GaugeRet,
    /// Alloc mode: an allocator's entry (size) ...
    AllocEnter,
    /// ... and its return (address); cookie = `ALLOC_FN_*`.
    AllocExit,
    /// Alloc mode: `free`/`munmap` (entry only).
    Free,
}

/// One function to attach to, for one stage or gauge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSite {
    pub kind: SiteKind,
    /// Stage or gauge name.
    pub stage: String,
    /// The attach cookie (stage id, or gauge id + argument index).
    pub cookie: u64,
    /// File to attach to (inside the process's mount namespace if a pid was given).
    pub path: PathBuf,
    /// Demangled name of the function.
    pub symbol: String,
    /// Offset of the function in the file.
    pub offset: u64,
    /// Where its probes sit, from the function's entry.
    pub placement: Placement,
}

impl ProbeSite {
    /// The file offset the kernel probes: the function plus its placement.
    pub fn probe_offset(&self) -> u64 {
        self.offset + self.placement.offset
    }
}

/// Probe sites, and warnings about glob matches that had to be skipped.
#[derive(Debug, Default)]
pub struct Resolved {
    pub sites: Vec<ProbeSite>,
    pub warnings: Vec<String>,
}

/// Resolves every stage's and gauge's target and symbol. Every glob match
/// joins its stage; no match is an error naming close candidates. A
/// function the kernel cannot probe is an error when named exactly, and is
/// skipped with a warning when a glob matched it among others.
pub fn resolve(
    stages: &[StageSpec],
    gauges: &[GaugeSpec],
    pids: &[u32],
) -> Result<Resolved, TargetError> {
    let mut resolver = Resolver {
        pids,
        files: HashMap::new(),
        out: Resolved::default(),
    };
    for (id, s) in stages.iter().enumerate() {
        let site = (SiteKind::Stage, Needs::CALL, id as u64);
        resolver.add(site, &s.name, &s.target, &s.symbol)?;
    }
    check_overlaps(&resolver.out.sites)?;
    for (id, g) in gauges.iter().enumerate() {
        // An argument gauge's probe must come before its register changes.
        let site = match g.source {
            GaugeSource::Arg(n) => (
                SiteKind::GaugeArg,
                Needs::arg(n),
                gauge_cookie(id as u32, n),
            ),
            GaugeSource::Ret => (SiteKind::GaugeRet, Needs::CALL, id as u64),
        };
        resolver.add(site, &g.name, &g.target, &g.symbol)?;
    }
    Ok(resolver.out)
}

/// Refuses two stages on one function. Both would push an open call at
/// entry and one return would unwind the other's, so one stage would lose
/// every call; a function belongs to one stage.
fn check_overlaps(sites: &[ProbeSite]) -> Result<(), TargetError> {
    use std::os::unix::fs::MetadataExt;
    // The same file can be reached by several paths (symlinks, /proc/PID/root).
    let file_id = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| (m.dev(), m.ino()))
            .unwrap_or_default()
    };
    let mut owner: HashMap<((u64, u64), u64), &ProbeSite> = HashMap::new();
    for site in sites.iter().filter(|s| s.kind == SiteKind::Stage) {
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

struct Resolver<'a> {
    pids: &'a [u32],
    files: HashMap<PathBuf, ElfFile>,
    out: Resolved,
}

impl Resolver<'_> {
    fn add(
        &mut self,
        (kind, needs, cookie): (SiteKind, Needs, u64),
        name: &str,
        target: &str,
        symbol: &str,
    ) -> Result<(), TargetError> {
        let path = process::resolve_target(target, self.pids)?;
        if !self.files.contains_key(&path) {
            self.files.insert(path.clone(), ElfFile::open(&path)?);
        }
        let elf = &self.files[&path];
        let mut refused = None;
        let before = self.out.sites.len();
        for f in elf.matching(symbol)? {
            let placement = if f.ifunc {
                Err(TargetError::Ifunc {
                    symbol: f.demangled.clone(),
                    path: path.clone(),
                })
            } else {
                place_symbol(&path, elf, f, &needs)?.map_err(|refusal| TargetError::Unprobeable {
                    symbol: f.demangled.clone(),
                    path: path.clone(),
                    reason: refusal.0,
                })
            };
            let placement = match placement {
                Ok(p) => p,
                Err(err) => {
                    self.out.warnings.push(format!("'{name}': skipping: {err}"));
                    refused.get_or_insert(err);
                    continue;
                }
            };
            self.out.sites.push(ProbeSite {
                kind,
                stage: name.to_string(),
                cookie,
                path: path.clone(),
                symbol: f.demangled.clone(),
                offset: f.file_offset,
                placement,
            });
        }
        match refused {
            Some(err) if self.out.sites.len() == before => Err(err),
            _ => Ok(()),
        }
    }
}
