//! Alloc mode totals over time: the per-stage counters read from the
//! kernel about once a second, the outstanding bytes' growth, and the
//! latest allocation sites, assembled into the snapshot's [`AllocReport`].
//! Pure: the kernel maps are read by [`super::maps`].
use adeline_trace_common::{AllocStats, NO_STAGE};

use crate::{
    metrics::{
        memory::{Series, SeriesSet},
        snapshot::{AllocReport, AllocSite, StageAlloc, Window},
    },
    probes::alloc::{AllocSpec, OutstandingSite},
};

/// Name of the pseudo stage of allocations outside every traced stage.
pub const NO_STAGE_NAME: &str = "(no stage)";

/// The outstanding sites read from the kernel, with their stage names
/// (`names` by stage id; "(no stage)" outside every stage).
pub fn name_sites(sites: Vec<OutstandingSite>, names: &[String]) -> Vec<AllocSite> {
    sites
        .into_iter()
        .map(|s| AllocSite {
            stage: match s.stage {
                NO_STAGE => NO_STAGE_NAME.to_string(),
                id => names
                    .get(id as usize)
                    .cloned()
                    .unwrap_or_else(|| NO_STAGE_NAME.to_string()),
            },
            bytes: s.bytes,
            allocs: s.allocs,
            oldest_age_ns: s.oldest_age_ns,
            stack: s.stack,
        })
        .collect()
}

/// What alloc mode has read so far.
#[derive(Debug, Clone)]
pub struct AllocState {
    sample: u32,
    min_bytes: u64,
    /// Latest totals per stage id; the last entry is "(no stage)".
    totals: Vec<AllocStats>,
    /// Outstanding bytes per stage id (estimated), sampled.
    outstanding: SeriesSet<usize>,
    all: Series,
    sites: Vec<AllocSite>,
    map_full: u64,
    no_stack: u64,
}

impl AllocState {
    pub fn new(spec: &AllocSpec) -> AllocState {
        AllocState {
            sample: spec.sample,
            min_bytes: spec.min_bytes,
            totals: Vec::new(),
            outstanding: SeriesSet::default(),
            all: Series::default(),
            sites: Vec::new(),
            map_full: 0,
            no_stack: 0,
        }
    }

    /// Records the kernel totals (raw, unscaled) read at `now_ns`.
    pub fn record(&mut self, now_ns: u64, totals: Vec<AllocStats>, map_full: u64, no_stack: u64) {
        let mut all = 0u64;
        for (i, t) in totals.iter().enumerate() {
            let held = self.scale(t.alloc_bytes.saturating_sub(t.freed_bytes));
            all += held;
            if t.allocs != 0 {
                self.outstanding.record(i, now_ns, held as i64);
            }
        }
        self.all.push(now_ns, all as i64);
        self.totals = totals;
        self.map_full = map_full;
        self.no_stack = no_stack;
    }

    pub fn set_sites(&mut self, sites: Vec<AllocSite>) {
        self.sites = sites;
    }

    /// Estimated count for all calls from a sampled one.
    fn scale(&self, raw: u64) -> u64 {
        raw.saturating_mul(u64::from(self.sample))
    }

    /// The report over `window` ending at `now_ns`; `names` are the stage
    /// names by id, `frames` the frames completed in the run.
    pub fn report(
        &self,
        window: Window,
        now_ns: u64,
        names: &[String],
        frames: Option<u64>,
    ) -> AllocReport {
        let per_frame = |v: u64| frames.filter(|&f| f > 0).map(|f| v as f64 / f as f64);
        let stages: Vec<StageAlloc> = self
            .totals
            .iter()
            .enumerate()
            .filter(|(_, t)| t.allocs != 0)
            .map(|(i, t)| {
                let stage = names
                    .get(i)
                    .cloned()
                    .unwrap_or_else(|| NO_STAGE_NAME.to_string());
                let (allocs, alloc_bytes) = (self.scale(t.allocs), self.scale(t.alloc_bytes));
                StageAlloc {
                    stage,
                    allocs,
                    alloc_bytes,
                    frees: self.scale(t.frees),
                    freed_bytes: self.scale(t.freed_bytes),
                    outstanding_bytes: alloc_bytes.saturating_sub(self.scale(t.freed_bytes)),
                    growth_bytes_per_s: self
                        .outstanding
                        .get(&i)
                        .and_then(|s| s.growth(window, now_ns).0),
                    allocs_per_frame: per_frame(allocs),
                    bytes_per_frame: per_frame(alloc_bytes),
                }
            })
            .collect();
        let outstanding_allocs = self
            .totals
            .iter()
            .map(|t| self.scale(t.allocs.saturating_sub(t.frees)))
            .sum();
        AllocReport {
            sample: self.sample,
            min_bytes: self.min_bytes,
            outstanding_bytes: self.all.latest().unwrap_or(0) as u64,
            outstanding_allocs,
            growth_bytes_per_s: self.all.growth(window, now_ns).0,
            stages,
            sites: self.sites.clone(),
            map_full: self.map_full,
            no_stack: self.no_stack,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const S: u64 = 1_000_000_000;

    fn stats(allocs: u64, alloc_bytes: u64, frees: u64, freed_bytes: u64) -> AllocStats {
        AllocStats {
            allocs,
            alloc_bytes,
            frees,
            freed_bytes,
        }
    }

    #[test]
    fn sampled_totals_are_scaled_and_growth_is_per_stage() {
        let spec = AllocSpec {
            min_bytes: 0,
            sample: 4,
            min_age: Duration::from_secs(1),
            top: 10,
        };
        let mut st = AllocState::new(&spec);
        let names = vec!["decode".to_string(), "track".to_string()];
        // track keeps 1000 (raw) bytes more every second; decode frees all.
        for i in 0..=10u64 {
            st.record(
                i * S,
                vec![
                    stats(10 * i, 500 * i, 10 * i, 500 * i),
                    stats(2 * i, 1000 * i, 0, 0),
                    stats(0, 0, 0, 0),
                ],
                0,
                0,
            );
        }
        let r = st.report(Window::S10, 10 * S, &names, Some(100));
        assert_eq!(r.sample, 4);
        assert_eq!(r.stages.len(), 2);
        let (decode, track) = (&r.stages[0], &r.stages[1]);
        assert_eq!(decode.stage, "decode");
        assert_eq!((decode.allocs, decode.outstanding_bytes), (400, 0));
        assert_eq!(decode.growth_bytes_per_s, Some(0.0));
        assert_eq!(track.allocs, 80);
        assert_eq!(track.alloc_bytes, 40_000);
        assert_eq!(track.outstanding_bytes, 40_000);
        assert!((track.growth_bytes_per_s.unwrap() - 4_000.0).abs() < 1e-6);
        assert_eq!(track.allocs_per_frame, Some(0.8));
        assert_eq!(track.bytes_per_frame, Some(400.0));
        assert_eq!(r.outstanding_bytes, 40_000);
        assert_eq!(r.outstanding_allocs, 80);
        assert!((r.growth_bytes_per_s.unwrap() - 4_000.0).abs() < 1e-6);
        // No frames: no per-frame figures.
        let r = st.report(Window::S10, 10 * S, &names, None);
        assert_eq!(r.stages[1].bytes_per_frame, None);
    }

    #[test]
    fn allocations_outside_stages_are_named() {
        let spec = AllocSpec {
            min_bytes: 64,
            sample: 1,
            min_age: Duration::from_secs(1),
            top: 10,
        };
        let mut st = AllocState::new(&spec);
        st.record(S, vec![stats(0, 0, 0, 0), stats(3, 300, 1, 100)], 2, 1);
        let r = st.report(Window::S10, S, &["a".to_string()], None);
        assert_eq!(r.stages.len(), 1);
        assert_eq!(r.stages[0].stage, NO_STAGE_NAME);
        assert_eq!(r.stages[0].outstanding_bytes, 200);
        assert_eq!((r.map_full, r.no_stack, r.min_bytes), (2, 1, 64));
        assert_eq!(r.stages[0].growth_bytes_per_s, None);
    }
}
