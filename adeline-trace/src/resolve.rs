//! Plan stages and gauges -> concrete probe sites (file + offset) using target/.
use std::{
    collections::HashMap,
    fs::File,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
};

use adeline_trace_common::gauge_cookie;

use crate::{
    config::{GaugeSource, GaugeSpec, StageKind, StageSpec},
    target::{elf::ElfFile, insn::uprobe_refusal, process, TargetError},
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
    /// Python stages: a frame starts/resumes in the eval loop ...
    PyEntry,
    /// ... or leaves it (return, exception, yield); cookie = site index.
    PyExit,
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
        if s.kind == StageKind::Python {
            continue; // python::resolve
        }
        resolver.add(SiteKind::Stage, &s.name, id as u64, &s.target, &s.symbol)?;
    }
    for (id, g) in gauges.iter().enumerate() {
        let (kind, cookie) = match g.source {
            GaugeSource::Arg(n) => (SiteKind::GaugeArg, gauge_cookie(id as u32, n)),
            GaugeSource::Ret => (SiteKind::GaugeRet, id as u64),
        };
        resolver.add(kind, &g.name, cookie, &g.target, &g.symbol)?;
    }
    Ok(resolver.out)
}

struct Resolver<'a> {
    pids: &'a [u32],
    files: HashMap<PathBuf, ElfFile>,
    out: Resolved,
}

impl Resolver<'_> {
    fn add(
        &mut self,
        kind: SiteKind,
        name: &str,
        cookie: u64,
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
            if let Some(reason) = first_bytes(&path, f.file_offset).and_then(|c| uprobe_refusal(&c))
            {
                let err = TargetError::Unprobeable {
                    symbol: f.demangled.clone(),
                    path: path.clone(),
                    reason,
                };
                self.out.warnings.push(format!("'{name}': skipping: {err}"));
                refused.get_or_insert(err);
                continue;
            }
            self.out.sites.push(ProbeSite {
                kind,
                stage: name.to_string(),
                cookie,
                path: path.clone(),
                symbol: f.demangled.clone(),
                offset: f.file_offset,
            });
        }
        match refused {
            Some(err) if self.out.sites.len() == before => Err(err),
            _ => Ok(()),
        }
    }
}

/// The first bytes of the function at `offset` (None if unreadable).
pub fn first_bytes(path: &Path, offset: u64) -> Option<[u8; 16]> {
    let mut buf = [0u8; 16];
    let file = File::open(path).ok()?;
    let n = file.read_at(&mut buf, offset).ok()?;
    (n > 0).then_some(buf)
}
