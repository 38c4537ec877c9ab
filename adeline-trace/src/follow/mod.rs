//! Following the targets while tracing (docs/follow.md): the [`Follower`]
//! changes the uprobe links ([`Probes`] keeps them) while tracing:
//!
//! - every [`FOLLOW_EVERY`] it checks each target path; when it names
//!   another file than the one probed (a deploy: `mv prog.tmp prog`), the
//!   stages are resolved again, the new file's probes attached (same stage
//!   ids: same names and series) and an `attach` record says so, with the
//!   processes that ran the new file before (`missed`). Probes of a
//!   replaced file stay while a process still maps it;
//! - [`Follower::reload`] applies a reloaded config's stages (`reload.rs`);
//! - with `--follow`, new processes of the followed executables join the
//!   traced ones ([`restart::Restarts`]).
//!
//! `procs` reads procfs for it.
pub mod procs;
mod reload;
pub mod restart;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use procs::FileId;

pub use reload::{ConfigSource, ReloadError, StageChanges};

use crate::{
    probes::{
        follow::{stage_sites, SiteLinks},
        gauge::{self, GaugeSpec},
        resolve::Resolver,
        unwind::ExitProbes,
        ProbeSite, Probes, StageSpec,
    },
    sinks::{Attach, AttachReason, AttachedProbe, Missed},
};

/// How often target paths are checked.
pub const FOLLOW_EVERY: Duration = Duration::from_millis(250);
/// How often probes of replaced files are checked for processes still
/// mapping them.
const RETIRE_EVERY: Duration = Duration::from_secs(10);

/// A file probed for the plan, by the path it was found at.
#[derive(Debug)]
struct Target {
    path: PathBuf,
    file: FileId,
    /// A file found at `path` that cannot be probed (warned once).
    refused: Option<FileId>,
}

/// Links to a file no longer at its path.
#[derive(Debug)]
struct Retired {
    file: FileId,
    links: SiteLinks,
}

/// What a check found.
#[derive(Debug)]
pub enum Followed {
    Attached(Attach),
    /// A line for stderr.
    Warning(String),
}

pub struct Follower {
    /// By stage id; None: removed by a reload (its id is kept for its name).
    stages: Vec<Option<StageSpec>>,
    /// Stage names by id (removed ones too).
    names: Vec<String>,
    gauges: Vec<GaugeSpec>,
    /// Processes bare target names are resolved for (`-p`).
    pids: Vec<u32>,
    targets: Vec<Target>,
    /// How stage returns are observed (`--exit-probes`).
    exit_probes: ExitProbes,
    retired: Vec<Retired>,
    next_retire: Instant,
    /// The kernel pid filter is on: only processes in it are traced.
    filtered: bool,
    /// `--follow`: restarted processes join the traced ones.
    restarts: Option<restart::Restarts>,
}

impl Follower {
    /// Follows the files of `sites` (resolved at start for `stages` and
    /// `gauges`, for `pids`; their links stay in [`Probes`]).
    pub fn new(
        stages: Vec<StageSpec>,
        gauges: Vec<GaugeSpec>,
        pids: Vec<u32>,
        sites: &[ProbeSite],
        exit_probes: ExitProbes,
        filtered: bool,
    ) -> Follower {
        let mut f = Follower {
            names: stages.iter().map(|s| s.name.clone()).collect(),
            stages: stages.into_iter().map(Some).collect(),
            gauges,
            pids,
            targets: Vec::new(),
            exit_probes,
            retired: Vec::new(),
            next_retire: Instant::now() + RETIRE_EVERY,
            filtered,
            restarts: None,
        };
        f.add_targets(sites);
        f
    }

    /// `--follow`: new processes of the followed executables join.
    pub fn follow_restarts(&mut self, restarts: restart::Restarts) {
        self.restarts = Some(restarts);
    }

    /// The stage target files (paths as resolved).
    pub fn target_paths(&self) -> Vec<PathBuf> {
        self.targets.iter().map(|t| t.path.clone()).collect()
    }

    fn add_targets(&mut self, sites: &[ProbeSite]) {
        for site in sites {
            if self.targets.iter().any(|t| t.path == site.path) {
                continue;
            }
            if let Ok((file, _)) = FileId::of(&site.path) {
                self.targets.push(Target {
                    path: site.path.clone(),
                    file,
                    refused: None,
                });
            }
        }
    }

    /// `attach` records for the files of `sites` (reason `start` or
    /// `reload`), with the processes running them now.
    pub fn attached(
        &self,
        reason: AttachReason,
        sites: &[ProbeSite],
        probes: &Probes,
    ) -> Vec<Attach> {
        self.targets
            .iter()
            .filter_map(|t| {
                let of_target: Vec<ProbeSite> =
                    sites.iter().filter(|s| s.path == t.path).cloned().collect();
                if of_target.is_empty() {
                    return None;
                }
                let pids = self.traced(probes, procs::mapping(t.file));
                Some(record(reason, t, None, pids, &of_target, Vec::new()))
            })
            .collect()
    }

    /// Checks every target path; attaches to files that replaced them.
    pub fn poll(&mut self, probes: &mut Probes) -> Vec<Followed> {
        let mut out = Vec::new();
        for i in 0..self.targets.len() {
            let t = &mut self.targets[i];
            // Missing: a deploy between its unlink and its rename, or a
            // /proc/PID/root path of a process gone: then the path as it saw it.
            let found = FileId::of(&t.path).or_else(|e| {
                let seen = procs::in_namespace(&t.path);
                let (file, changed) = FileId::of(&seen).map_err(|_| e)?;
                t.path = seen;
                Ok::<_, std::io::Error>((file, changed))
            });
            let Ok((file, changed_ns)) = found else {
                continue;
            };
            let t = &self.targets[i];
            if file == t.file || Some(file) == t.refused {
                continue;
            }
            out.push(self.replaced(probes, i, file, changed_ns));
        }
        if let Some(r) = self.restarts.as_mut() {
            out.extend(r.poll(probes).into_iter().map(Followed::Attached));
        }
        if Instant::now() >= self.next_retire {
            self.next_retire = Instant::now() + RETIRE_EVERY;
            self.retire();
        }
        out
    }

    /// Target `i`'s path names `file` now (since `changed_ns`, wall clock).
    fn replaced(
        &mut self,
        probes: &mut Probes,
        i: usize,
        file: FileId,
        changed_ns: u64,
    ) -> Followed {
        let path = self.targets[i].path.clone();
        let sites = match self.sites_in(&path) {
            Ok(sites) => sites,
            Err(why) => return self.refuse(i, file, why),
        };
        let links = match probes.attach_sites(&sites) {
            Ok(links) => links,
            Err(e) => return self.refuse(i, file, e.to_string()),
        };
        let attached = procs::boot_ns();
        let since = procs::wall_to_boot_ns(changed_ns);
        let running = self.traced(probes, procs::mapping(file));
        let missed = running
            .iter()
            .filter_map(|&pid| {
                let start = procs::start_boot_ns(pid)?.max(since);
                Some(Missed {
                    pid,
                    gap_ms: attached.saturating_sub(start) / 1_000_000,
                })
            })
            .collect();
        let previous = self.targets[i].file;
        let old = probes.take_links(|l| l.path == path);
        self.retired.push(Retired {
            file: previous,
            links: old,
        });
        probes.keep_links(links);
        let t = &mut self.targets[i];
        t.file = file;
        t.refused = None;
        Followed::Attached(record(
            AttachReason::Replaced,
            t,
            Some(previous.ino),
            running,
            &sites,
            missed,
        ))
    }

    fn refuse(&mut self, i: usize, file: FileId, why: String) -> Followed {
        let t = &mut self.targets[i];
        t.refused = Some(file);
        Followed::Warning(format!(
            "{} was replaced (inode {} -> {}) and the new file gets no probes: {why}; its processes are not traced",
            t.path.display(),
            t.file.ino,
            file.ino
        ))
    }

    /// The sites of the current stages and gauges in `path`. A stage whose
    /// own target fails to resolve (another file mid-deploy) is left out;
    /// none at all is an error.
    fn sites_in(&mut self, path: &Path) -> Result<Vec<ProbeSite>, String> {
        self.drop_gone_pids();
        let mut resolver = Resolver::new(&self.pids);
        let mut sites = Vec::new();
        let mut last_error = None;
        for (id, stage) in self.stages.iter().enumerate() {
            let Some(stage) = stage else { continue };
            match stage_sites(
                &mut resolver,
                id as u32,
                stage,
                self.exit_probes,
                &self.pids,
            ) {
                Ok(found) => sites.extend(found.into_iter().filter(|s| s.path == path)),
                Err(e) => last_error = Some(e),
            }
        }
        for (id, g) in self.gauges.iter().enumerate() {
            match gauge::sites(&mut resolver, id as u32, g) {
                Ok(found) => sites.extend(found.into_iter().filter(|s| s.path == path)),
                Err(e) => last_error = Some(e.to_string()),
            }
        }
        match (sites.is_empty(), last_error) {
            (false, _) => Ok(sites),
            (true, Some(e)) => Err(e),
            (true, None) => Err("none of the stages' functions is in it".into()),
        }
    }

    /// Keeps the `-p` processes still running (targets resolve through
    /// them; with none left, through the host's files).
    fn drop_gone_pids(&mut self) {
        self.pids
            .retain(|&p| crate::symbols::process::ensure_running(p).is_ok());
    }

    /// Of `pids`, those traced (in the kernel pid filter when it is on).
    fn traced(&self, probes: &Probes, pids: Vec<u32>) -> Vec<u32> {
        match self.filtered {
            true => pids.into_iter().filter(|&p| probes.follows(p)).collect(),
            false => pids,
        }
    }

    /// Detaches the probes of replaced files no process maps any more.
    fn retire(&mut self) {
        let (gone, kept): (Vec<Retired>, Vec<Retired>) = std::mem::take(&mut self.retired)
            .into_iter()
            .partition(|r| procs::mapping(r.file).is_empty());
        self.retired = kept;
        for r in gone {
            r.links.detach();
        }
    }
}

fn record(
    reason: AttachReason,
    t: &Target,
    previous_inode: Option<u64>,
    pids: Vec<u32>,
    sites: &[ProbeSite],
    missed: Vec<Missed>,
) -> Attach {
    let pids_total = pids.len();
    Attach {
        ts_ns: 0,
        reason,
        target: t.path.display().to_string(),
        inode: t.file.ino,
        previous_inode,
        pids: pids.into_iter().take(Attach::MAX_PIDS).collect(),
        pids_total,
        probes: sites
            .iter()
            .map(|s| AttachedProbe {
                stage: s.stage.clone(),
                symbol: s.symbol.clone(),
                offset: s.offset,
            })
            .collect(),
        missed,
    }
}
