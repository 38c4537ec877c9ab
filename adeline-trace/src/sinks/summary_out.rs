//! `run --summary-out FILE`: the whole-run snapshot (docs/api.md), written
//! when the run ends: the input of `compare` and of `--alert-baseline`.
use std::path::{Path, PathBuf};

use super::{
    sink::{Finish, Sink, SinkError},
    source::SnapshotSource,
};
use crate::metrics::snapshot::Window;

pub struct SummaryOut {
    path: PathBuf,
}

impl SummaryOut {
    pub fn new(path: &Path) -> SummaryOut {
        SummaryOut {
            path: path.to_path_buf(),
        }
    }
}

impl Sink for SummaryOut {
    fn finish(&mut self, _: &Finish<'_>, source: &dyn SnapshotSource) -> Result<(), SinkError> {
        let snapshot = source.snapshot(Window::All);
        let json = serde_json::to_string_pretty(&snapshot)
            .map_err(|e| SinkError::write("the summary")(e.into()))?;
        std::fs::write(&self.path, json + "\n").map_err(|source| SinkError::WriteFile {
            what: "the summary",
            path: self.path.clone(),
            source,
        })
    }
}
