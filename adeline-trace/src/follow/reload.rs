//! A reloaded config's stages, applied while tracing (SIGHUP in service
//! mode): removed stages are detached and keep what they counted, changed
//! ones (another target or symbol) are attached again under the same id,
//! added ones get the next id (or their old one, if a reload removed
//! them before). Everything is resolved first: a config that fails changes
//! nothing.
use thiserror::Error;

use super::Follower;
use crate::probes::Location;
use crate::probes::{
    follow::stage_sites, resolve::check_overlaps, resolve::Resolver, ProbeError, ProbeSite, Probes,
    StageSpec,
};

/// Re-reads the config file: its stages, and warnings (settings a reload
/// does not apply); or why the new config is refused, in one line.
pub type ConfigSource = Box<dyn FnMut() -> Result<(Vec<StageSpec>, Vec<String>), String>>;

#[derive(Debug, Error)]
pub enum ReloadError {
    #[error("{0}")]
    Resolve(String),
    #[error("{count} stages over the run is more than the {max} the kernel programs hold (removed stages keep their ids)")]
    TooManyStages { count: usize, max: u32 },
    #[error(transparent)]
    Attach(#[from] ProbeError),
}

/// What a reload changed, by stage name; `sites` are the probes attached.
#[derive(Debug, Default)]
pub struct StageChanges {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    pub unchanged: Vec<String>,
    pub sites: Vec<ProbeSite>,
    /// Glob matches skipped while resolving.
    pub warnings: Vec<String>,
}

impl Follower {
    /// Applies `new` (the reloaded config's stages, in its order).
    /// `add_stage` gives a stage name its id in the metrics (called for
    /// names never seen before, in order, before their probes are attached).
    pub fn reload(
        &mut self,
        probes: &mut Probes,
        new: &[StageSpec],
        mut add_stage: impl FnMut(&str) -> u32,
    ) -> Result<StageChanges, ReloadError> {
        let mut changes = StageChanges::default();
        // Ids: a known name keeps its id; new names follow the known ones.
        let mut fresh = 0;
        let ids: Vec<u32> = new
            .iter()
            .map(|s| match self.names.iter().position(|n| *n == s.name) {
                Some(id) => id as u32,
                None => {
                    fresh += 1;
                    (self.names.len() + fresh - 1) as u32
                }
            })
            .collect();
        let max = adeline_trace_common::MAX_STAGES;
        if self.names.len() + fresh > max as usize {
            return Err(ReloadError::TooManyStages {
                count: self.names.len() + fresh,
                max,
            });
        }
        // Resolve every stage of the new config: it must stand on its own.
        self.drop_gone_pids();
        let mut resolver = Resolver::new(&self.pids);
        let mut all = Vec::new();
        for (stage, &id) in new.iter().zip(&ids) {
            // An unchanged Python stage keeps its probes (Python stages are
            // not resolved while tracing).
            let old = self.stages.get(id as usize).and_then(Option::as_ref);
            if matches!(stage.location, Location::Python { .. }) && old == Some(stage) {
                all.push(Vec::new());
                continue;
            }
            let sites = stage_sites(&mut resolver, id, stage, self.exit_probes, &self.pids)
                .map_err(ReloadError::Resolve)?;
            all.push(sites);
        }
        let flat: Vec<ProbeSite> = all.iter().flatten().cloned().collect();
        check_overlaps(&flat).map_err(|e| ReloadError::Resolve(e.to_string()))?;
        changes.warnings = resolver.warnings;
        // Classify, and collect the sites to attach.
        let mut redo = Vec::new();
        for ((stage, &id), sites) in new.iter().zip(&ids).zip(all) {
            match self.stages.get(id as usize).and_then(Option::as_ref) {
                Some(old) if old == stage => changes.unchanged.push(stage.name.clone()),
                Some(_) => {
                    changes.changed.push(stage.name.clone());
                    redo.push(id);
                    changes.sites.extend(sites);
                }
                None => {
                    changes.added.push(stage.name.clone());
                    changes.sites.extend(sites);
                }
            }
        }
        let gone: Vec<u32> = self
            .stages
            .iter()
            .enumerate()
            .filter(|(_, s)| {
                s.as_ref()
                    .is_some_and(|s| !new.iter().any(|n| n.name == s.name))
            })
            .map(|(id, _)| id as u32)
            .collect();
        changes.removed = gone
            .iter()
            .map(|&id| self.names[id as usize].clone())
            .collect();
        // New names into the metrics before any of their calls can arrive.
        for (stage, &id) in new.iter().zip(&ids) {
            if id as usize >= self.names.len() {
                let given = add_stage(&stage.name);
                debug_assert_eq!(given, id, "metrics and follower stage ids differ");
                self.names.push(stage.name.clone());
                self.stages.push(None);
            }
        }
        let links = probes.attach_sites(&changes.sites)?;
        // The new probes are in: detach the removed and changed stages' old ones.
        let old_ids: Vec<u64> = gone.iter().chain(&redo).map(|&id| u64::from(id)).collect();
        let is_old = |l: &crate::probes::follow::SiteLink| l.stage && old_ids.contains(&l.cookie);
        let mut old = probes.take_links(is_old);
        for r in &mut self.retired {
            old.extend(r.links.take(is_old));
        }
        old.detach();
        probes.keep_links(links);
        for id in gone {
            self.stages[id as usize] = None;
        }
        for (stage, &id) in new.iter().zip(&ids) {
            self.stages[id as usize] = Some(stage.clone());
        }
        self.add_targets(&changes.sites);
        Ok(changes)
    }
}
