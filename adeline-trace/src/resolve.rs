//! Plan stages -> concrete probe sites (file + offset) using target/.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use std::{fs::File, os::unix::fs::FileExt};

use crate::{
    config::StageSpec,
    target::{elf::ElfFile, insn::uprobe_refusal, process, TargetError},
};

/// One function to attach to, for one stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSite {
    /// Index of the stage in the plan; the attach cookie.
    pub stage_id: u32,
    pub stage: String,
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

/// Resolves every stage's target and symbol. Every glob match joins its
/// stage; a stage with no match is an error naming close candidates. A
/// function the kernel cannot probe is an error when named exactly, and is
/// skipped with a warning when a glob matched it among others.
pub fn resolve_stages(stages: &[StageSpec], pids: &[u32]) -> Result<Resolved, TargetError> {
    let mut files: HashMap<PathBuf, ElfFile> = HashMap::new();
    let mut out = Resolved::default();
    for (id, stage) in stages.iter().enumerate() {
        let path = process::resolve_target(&stage.target, pids)?;
        if !files.contains_key(&path) {
            files.insert(path.clone(), ElfFile::open(&path)?);
        }
        let elf = &files[&path];
        let mut refused = None;
        let before = out.sites.len();
        for f in elf.matching(&stage.symbol)? {
            if let Some(reason) = first_bytes(&path, f.file_offset).and_then(|c| uprobe_refusal(&c))
            {
                let err = TargetError::Unprobeable {
                    symbol: f.demangled.clone(),
                    path: path.clone(),
                    reason,
                };
                out.warnings
                    .push(format!("stage '{}': skipping: {err}", stage.name));
                refused.get_or_insert(err);
                continue;
            }
            out.sites.push(ProbeSite {
                stage_id: id as u32,
                stage: stage.name.clone(),
                path: path.clone(),
                symbol: f.demangled.clone(),
                offset: f.file_offset,
            });
        }
        if out.sites.len() == before {
            if let Some(err) = refused {
                return Err(err);
            }
        }
    }
    Ok(out)
}

/// The first bytes of the function at `offset` (None if unreadable).
fn first_bytes(path: &Path, offset: u64) -> Option<[u8; 16]> {
    let mut buf = [0u8; 16];
    let file = File::open(path).ok()?;
    let n = file.read_at(&mut buf, offset).ok()?;
    (n > 0).then_some(buf)
}

/// The host path for display: strips a `/proc/PID/root` prefix.
pub fn display_path(path: &Path) -> String {
    let s = path.display().to_string();
    if let Some(rest) = s.strip_prefix("/proc/") {
        if let Some((_, tail)) = rest.split_once("/root/") {
            return format!("/{tail}");
        }
    }
    s
}
