//! Per-stage memory over time: the net bytes each stage has mapped
//! (default mode, from the mmap/munmap/brk/mremap records) and, in alloc
//! mode, what each stage's allocations hold. Sampled about once a second so
//! their growth rates can be fitted like the RSS's.
use adeline_trace_common::AllocStats;

use crate::{
    alloc::{report::AllocState, AllocSpec},
    metrics::snapshot::{AllocReport, AllocSite, Snapshot, StageMemory, Window},
};

use super::SeriesSet;

#[derive(Debug, Default)]
pub struct StageMemoryState {
    /// Net mapped bytes per stage name.
    mapped: SeriesSet<String>,
    alloc: Option<AllocState>,
}

impl StageMemoryState {
    pub fn new(alloc: Option<&AllocSpec>) -> StageMemoryState {
        StageMemoryState {
            mapped: SeriesSet::default(),
            alloc: alloc.map(AllocState::new),
        }
    }

    /// Samples every stage's net mapped bytes at `now_ns`.
    pub fn record_mapped(&mut self, now_ns: u64, stages: &[StageMemory]) {
        for s in stages {
            let net = s.mapped_bytes.saturating_sub(s.unmapped_bytes);
            self.mapped.record(s.stage.clone(), now_ns, net);
        }
        self.mapped.forget(now_ns);
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
        self.fill_stages(&mut snapshot.stage_memory, window, now_ns);
        snapshot.alloc = self.alloc_report(window, now_ns, names, frames);
    }

    /// Sets each stage's net mapped growth over `window`.
    pub fn fill_stages(&self, stages: &mut [StageMemory], window: Window, now_ns: u64) {
        for s in stages {
            s.growth_bytes_per_s = self
                .mapped
                .get(s.stage.as_str())
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
    fn net_mapped_growth_per_stage() {
        let mut st = StageMemoryState::new(None);
        let at = |i: u64| {
            vec![StageMemory {
                stage: "track".into(),
                mapped_bytes: 300_000 * i,
                unmapped_bytes: 100_000 * i,
                mapped_per_frame: None,
                growth_bytes_per_s: None,
            }]
        };
        for i in 0..=10 {
            st.record_mapped(i * S, &at(i));
        }
        let mut snap: Snapshot = serde_json::from_str(
            r#"{"v":1,"ts_ns":1,"window":"10s","window_ns":2,"stages":[],"frames":null,
            "gauges":[],"bottleneck":{"top_self_share":null,"p99_growth":null},
            "events":0,"drops":0}"#,
        )
        .unwrap();
        snap.stage_memory = at(10);
        st.fill(&mut snap, Window::S10, 10 * S, &[], None);
        let g = snap.stage_memory[0].growth_bytes_per_s.unwrap();
        assert!((g - 200_000.0).abs() < 1e-6, "{g}");
        assert_eq!(snap.alloc, None);
    }
}
