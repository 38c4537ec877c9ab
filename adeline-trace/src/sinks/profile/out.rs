//! `--profile-out FILE`: the whole run's profile, written when the run
//! ends, as folded stacks (`frame;frame;… µs`), a flame graph (`.svg`) or
//! pprof (`.pb`, `.pprof`), by the file's name.
use std::path::{Path, PathBuf};

use super::{render, Format};
use crate::{
    metrics::profile::ProfileQuery,
    sinks::{Finish, Sink, SinkError, SnapshotSource},
};

pub struct ProfileOut {
    path: PathBuf,
}

impl ProfileOut {
    /// Checks the file can be created (before anything is attached).
    pub fn create(path: &Path) -> Result<ProfileOut, SinkError> {
        std::fs::File::create(path).map_err(|source| SinkError::Create {
            what: "profile file",
            path: path.to_path_buf(),
            source,
        })?;
        Ok(ProfileOut {
            path: path.to_path_buf(),
        })
    }
}

impl Sink for ProfileOut {
    fn finish(
        &mut self,
        finish: &Finish<'_>,
        source: &dyn SnapshotSource,
    ) -> Result<(), SinkError> {
        let Ok(Some(unnamed)) = source.profile(&ProfileQuery::default()) else {
            return Ok(());
        };
        let profile = unnamed.name();
        let start = finish.ts_ns.saturating_sub(finish.duration_ns);
        let bytes = render(
            &profile,
            Format::for_path(&self.path),
            "adeline-trace: whole run (µs, on- and off-CPU)",
            start,
        )
        .map_err(|source| SinkError::WriteFile {
            what: "profile",
            path: self.path.clone(),
            source,
        })?;
        std::fs::write(&self.path, bytes).map_err(|source| SinkError::WriteFile {
            what: "profile",
            path: self.path.clone(),
            source,
        })?;
        let t = profile.total_ns();
        eprintln!(
            "adeline-trace: profile ({} stacks, {:.3} s of wall-clock time{}) written to {}",
            profile.stacks.len(),
            t as f64 / 1e9,
            if profile.truncated > 0 {
                format!(
                    "; {} samples have a [truncated] user stack: frame pointers are missing on their path",
                    profile.truncated
                )
            } else {
                String::new()
            },
            self.path.display()
        );
        Ok(())
    }
}
