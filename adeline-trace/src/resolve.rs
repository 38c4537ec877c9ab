//! Plan stages -> concrete probe sites (file + offset) using target/.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use crate::{
    config::StageSpec,
    target::{elf::ElfFile, process, TargetError},
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

/// Resolves every stage's target and symbol. Every glob match joins its
/// stage; a stage with no match is an error naming close candidates.
pub fn resolve_stages(stages: &[StageSpec], pids: &[u32]) -> Result<Vec<ProbeSite>, TargetError> {
    let mut files: HashMap<PathBuf, ElfFile> = HashMap::new();
    let mut sites = Vec::new();
    for (id, stage) in stages.iter().enumerate() {
        let path = process::resolve_target(&stage.target, pids)?;
        if !files.contains_key(&path) {
            files.insert(path.clone(), ElfFile::open(&path)?);
        }
        let elf = &files[&path];
        for f in elf.matching(&stage.symbol)? {
            sites.push(ProbeSite {
                stage_id: id as u32,
                stage: stage.name.clone(),
                path: path.clone(),
                symbol: f.demangled.clone(),
                offset: f.file_offset,
            });
        }
    }
    Ok(sites)
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
