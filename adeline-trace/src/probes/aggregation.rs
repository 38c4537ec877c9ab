//! In-kernel aggregation's maps: which stages are aggregated (`AGG_MODE`)
//! and their per-CPU histograms (`STAGE_AGG`, sized to the stages at load
//! time). The agent decides by call rate (tracer.rs) and merges what it
//! reads into the metrics (metrics/inkernel.rs).
use adeline_trace_common::{StageHist, AGG_OFF, AGG_ON};
use aya::{
    maps::{Array, MapData, PerCpuArray},
    Ebpf,
};

use super::{load_err, site::chain, ProbeError};

/// The aggregation maps of a loaded object.
pub struct AggMaps {
    mode: Array<MapData, u32>,
    hists: PerCpuArray<MapData, StageHist>,
}

impl AggMaps {
    /// Takes the maps out of `ebpf`.
    pub fn take(ebpf: &mut Ebpf) -> Result<AggMaps, ProbeError> {
        let mut take = |name: &'static str| {
            ebpf.take_map(name)
                .ok_or_else(|| load_err(format!("no {name} map")))
        };
        let mode = Array::try_from(take("AGG_MODE")?).map_err(|e| load_err(chain(&e)))?;
        let hists = PerCpuArray::try_from(take("STAGE_AGG")?).map_err(|e| load_err(chain(&e)))?;
        Ok(AggMaps { mode, hists })
    }

    /// Aggregates the calls of `stage` in the kernel (`on`) or sends a
    /// record per call.
    pub fn set(&mut self, stage: u32, on: bool) -> Result<(), ProbeError> {
        let v = if on { AGG_ON } else { AGG_OFF };
        self.mode.set(stage, v, 0).map_err(|e| ProbeError::Map {
            map: "AGG_MODE",
            reason: chain(&e),
        })
    }

    /// The histogram of `stage` summed over the CPUs (bins modulo 2^32).
    pub fn read(&self, stage: u32) -> Result<Box<StageHist>, ProbeError> {
        let values = self.hists.get(&stage, 0).map_err(|e| ProbeError::Map {
            map: "STAGE_AGG",
            reason: chain(&e),
        })?;
        let mut sum = Box::<StageHist>::default();
        for v in values.iter() {
            sum.count = sum.count.wrapping_add(v.count);
            sum.sum_ns = sum.sum_ns.wrapping_add(v.sum_ns);
            sum.self_ns = sum.self_ns.wrapping_add(v.self_ns);
            sum.frame_self_ns = sum.frame_self_ns.wrapping_add(v.frame_self_ns);
            for (s, &n) in sum.bins.iter_mut().zip(v.bins.iter()) {
                *s = s.wrapping_add(n);
            }
        }
        Ok(sum)
    }
}
