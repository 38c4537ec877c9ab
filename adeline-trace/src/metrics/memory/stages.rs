//! Per-stage memory over time: the resident bytes each stage's page faults
//! added (default mode, kmem:rss_stat charged in the kernel to the stage
//! running on the faulting thread) and, in alloc mode, what each stage's
//! allocations hold. Sampled about once a second so their growth rates can
//! be fitted like the RSS's.
use adeline_trace_common::AllocStats;

use crate::{
    metrics::{
        memory::alloc::{AllocState, NO_STAGE_NAME},
        snapshot::{AllocReport, AllocSite, Snapshot, StageMemory, Window},
    },
    probes::alloc::AllocSpec,
};

use super::SeriesSet;

#[derive(Debug, Default)]
pub struct StageMemoryState {
    /// Resident bytes charged per stage id (the last is "(no stage)").
    resident: Vec<i64>,
    resident_series: SeriesSet<usize>,
    alloc: Option<AllocState>,
}

impl StageMemoryState {
    pub fn new(alloc: Option<&AllocSpec>) -> StageMemoryState {
        StageMemoryState {
            resident: Vec::new(),
            resident_series: SeriesSet::default(),
            alloc: alloc.map(AllocState::new),
        }
    }

    /// Records the resident bytes charged to each stage id (the last one
    /// is "(no stage)"), read from the kernel at `now_ns`.
    pub fn record_resident(&mut self, now_ns: u64, resident: Vec<i64>) {
        for (i, &bytes) in resident.iter().enumerate() {
            if bytes != 0 {
                self.resident_series.record(i, now_ns, bytes);
            }
        }
        self.resident_series.forget(now_ns);
        self.resident = resident;
    }

    /// Records alloc mode's kernel totals (ignored without alloc mode).
    pub fn record_alloc(&mut self, now_ns: u64, totals: Vec<AllocStats>, lost: (u64, u64)) {
        if let Some(a) = self.alloc.as_mut() {
            a.record(now_ns, totals, lost.0, lost.1);
        }
    }

    pub fn set_alloc_sites(&mut self, sites: Vec<AllocSite>) {
        if let Some(a) = self.alloc.as_mut() {
            a.set_sites(sites);
        }
    }

    /// Fills the growth of `snapshot.stage_memory` and `snapshot.alloc`
    /// over `window` ending at `now_ns`.
    pub fn fill(
        &self,
        snapshot: &mut Snapshot,
        window: Window,
        now_ns: u64,
        names: &[String],
        frames: Option<u64>,
    ) {
        self.fill_stages(&mut snapshot.stage_memory, names, window, now_ns);
        snapshot.alloc = self.alloc_report(window, now_ns, names, frames);
    }

    /// Sets each stage's resident bytes and their growth over `window`,
    /// adding the stages that changed resident memory without mapping any.
    pub fn fill_stages(
        &self,
        stages: &mut Vec<StageMemory>,
        names: &[String],
        window: Window,
        now_ns: u64,
    ) {
        let name_of = |i: usize| {
            names
                .get(i)
                .cloned()
                .unwrap_or_else(|| NO_STAGE_NAME.to_string())
        };
        for (i, &bytes) in self.resident.iter().enumerate() {
            if bytes == 0 {
                continue;
            }
            let name = name_of(i);
            let at = match stages.iter().position(|s| s.stage == name) {
                Some(at) => at,
                None => {
                    stages.push(StageMemory {
                        stage: name,
                        mapped_bytes: 0,
                        unmapped_bytes: 0,
                        mapped_per_frame: None,
                        resident_bytes: 0,
                        growth_bytes_per_s: None,
                    });
                    stages.len() - 1
                }
            };
            stages[at].resident_bytes = bytes;
            stages[at].growth_bytes_per_s = self
                .resident_series
                .get(&i)
                .and_then(|series| series.growth(window, now_ns).0);
        }
    }

    /// Alloc mode's report (None without alloc mode).
    pub fn alloc_report(
        &self,
        window: Window,
        now_ns: u64,
        names: &[String],
        frames: Option<u64>,
    ) -> Option<AllocReport> {
        self.alloc
            .as_ref()
            .map(|a| a.report(window, now_ns, names, frames))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn resident_growth_per_stage_and_stages_that_only_faulted() {
        let mut st = StageMemoryState::new(None);
        let names = vec!["decode".to_string(), "track".to_string()];
        // track gains 200 kB a second; decode nothing; no stage: flat 4 kB.
        for i in 0..=10 {
            st.record_resident(i * S, vec![0, 200_000 * i as i64, 4_096]);
        }
        let mut snap: Snapshot = serde_json::from_str(
            r#"{"v":1,"ts_ns":1,"window":"10s","window_ns":2,"stages":[],"frames":null,
            "gauges":[],"bottleneck":{"top_self_share":null,"p99_growth":null},
            "events":0,"drops":0}"#,
        )
        .unwrap();
        snap.stage_memory = vec![StageMemory {
            stage: "track".into(),
            mapped_bytes: 300_000,
            unmapped_bytes: 100_000,
            mapped_per_frame: None,
            resident_bytes: 0,
            growth_bytes_per_s: None,
        }];
        st.fill(&mut snap, Window::S10, 10 * S, &names, None);
        let m = &snap.stage_memory;
        assert_eq!(m.len(), 2, "{m:?}");
        assert_eq!(
            (m[0].stage.as_str(), m[0].resident_bytes),
            ("track", 2_000_000)
        );
        assert_eq!(m[0].mapped_bytes, 300_000);
        assert!((m[0].growth_bytes_per_s.unwrap() - 200_000.0).abs() < 1e-6);
        assert_eq!(
            (m[1].stage.as_str(), m[1].resident_bytes),
            (NO_STAGE_NAME, 4_096)
        );
        assert_eq!(m[1].growth_bytes_per_s, Some(0.0));
        assert_eq!(snap.alloc, None);
    }
}
