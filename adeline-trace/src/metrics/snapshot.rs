//! What the agent reports about a window of time: the one data model the
//! API, `summary`, alerts, `--summary-out` and `compare` share. Serialized
//! as JSON (schema version [`SNAPSHOT_VERSION`], docs/api.md).
use serde::{Deserialize, Serialize};

use crate::container::ProcessInfo;

/// Version of the snapshot JSON schema.
pub const SNAPSHOT_VERSION: u32 = 1;

/// A reporting window: a sliding window ending now, or the whole run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Window {
    #[serde(rename = "1s")]
    S1,
    #[serde(rename = "10s")]
    S10,
    #[serde(rename = "60s")]
    S60,
    #[serde(rename = "all")]
    All,
}

impl Window {
    pub const ALL: [Window; 4] = [Window::S1, Window::S10, Window::S60, Window::All];

    /// Parses `1s`, `10s`, `60s` (also `1m`) or `all`.
    pub fn parse(s: &str) -> Option<Window> {
        match s {
            "1s" => Some(Window::S1),
            "10s" => Some(Window::S10),
            "60s" | "1m" => Some(Window::S60),
            "all" => Some(Window::All),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Window::S1 => "1s",
            Window::S10 => "10s",
            Window::S60 => "60s",
            Window::All => "all",
        }
    }

    /// Length in nanoseconds (None for the whole run).
    pub fn nanos(self) -> Option<u64> {
        match self {
            Window::S1 => Some(1_000_000_000),
            Window::S10 => Some(10_000_000_000),
            Window::S60 => Some(60_000_000_000),
            Window::All => None,
        }
    }
}

/// Latency percentiles of a set of durations (nanoseconds).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub min_ns: u64,
    pub mean_ns: u64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p95_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    pub max_ns: u64,
}

impl Percentiles {
    /// The value of one statistic.
    pub fn get(&self, stat: Stat) -> u64 {
        match stat {
            Stat::P50 => self.p50_ns,
            Stat::P90 => self.p90_ns,
            Stat::P95 => self.p95_ns,
            Stat::P99 => self.p99_ns,
            Stat::P999 => self.p999_ns,
            Stat::Mean => self.mean_ns,
            Stat::Min => self.min_ns,
            Stat::Max => self.max_ns,
        }
    }
}

/// A statistic of [`Percentiles`]: what alert rules (`p99(infer)`) and
/// `compare --metric` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stat {
    P50,
    P90,
    P95,
    P99,
    P999,
    Mean,
    Min,
    Max,
}

impl Stat {
    /// Every statistic, in the order they are listed to users.
    pub const ALL: [Stat; 8] = [
        Stat::P50,
        Stat::P90,
        Stat::P95,
        Stat::P99,
        Stat::P999,
        Stat::Mean,
        Stat::Min,
        Stat::Max,
    ];

    /// Its name (`p99`, `mean`, ...); the JSON field is the name + `_ns`.
    pub fn as_str(self) -> &'static str {
        match self {
            Stat::P50 => "p50",
            Stat::P90 => "p90",
            Stat::P95 => "p95",
            Stat::P99 => "p99",
            Stat::P999 => "p999",
            Stat::Mean => "mean",
            Stat::Min => "min",
            Stat::Max => "max",
        }
    }

    /// The statistic named `word`.
    pub fn from_word(word: &str) -> Option<Stat> {
        Stat::ALL.into_iter().find(|s| s.as_str() == word)
    }
}

/// One stage over the window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageStats {
    pub stage: String,
    /// Calls per second over the window.
    pub rate_hz: f64,
    #[serde(flatten)]
    pub latency: Percentiles,
    /// Sum of durations (ns) of the calls in the window.
    pub total_ns: u64,
    /// Sum of self times (ns): durations minus traced calls made inside.
    pub self_ns: u64,
    /// Share of frame time spent in this stage's own code:
    /// self_ns of its calls inside frames / total frame time. None without
    /// a frame root or without frames in the window.
    pub frame_share: Option<f64>,
}

/// Frames: the calls of the frame-root stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrameStats {
    /// The frame-root stage.
    pub root: String,
    /// Frames completed per second over the window.
    pub fps: f64,
    /// End-to-end frame latency.
    #[serde(flatten)]
    pub latency: Percentiles,
}

/// One gauge over the window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GaugeStats {
    pub gauge: String,
    pub count: u64,
    pub last: Option<i64>,
    pub min: Option<i64>,
    pub max: Option<i64>,
    pub mean: Option<f64>,
}

/// The stage that costs the most, and the one that got slower.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Bottleneck {
    /// Stage with the largest share of frame time in its own code.
    pub top_self_share: Option<ShareOf>,
    /// Stage whose p99 grew most against its own earlier window.
    pub p99_growth: Option<GrowthOf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShareOf {
    pub stage: String,
    pub share: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GrowthOf {
    pub stage: String,
    pub p99_ns: u64,
    pub earlier_p99_ns: u64,
    /// p99_ns / earlier_p99_ns.
    pub ratio: f64,
}

/// Memory mapped and unmapped (mmap, munmap, mremap, brk) and resident
/// pages gained or released while a stage was the innermost traced call on
/// the thread, over the whole run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageMemory {
    /// Stage name, or "(no stage)" for calls outside every traced stage.
    pub stage: String,
    pub mapped_bytes: u64,
    pub unmapped_bytes: u64,
    /// Bytes mapped inside frames by this stage, per frame (None without frames).
    pub mapped_per_frame: Option<f64>,
    /// Resident bytes the process's pages gained (page faults) minus those
    /// it released while this stage was running on the thread, over the
    /// whole run (kmem:rss_stat; 0 when the kernel reported none).
    #[serde(default)]
    pub resident_bytes: i64,
    /// Least-squares slope of `resident_bytes` (sampled about once a
    /// second) over the window, at least the last 10 s: how fast the stage
    /// makes the process grow; None under two samples.
    #[serde(default)]
    pub growth_bytes_per_s: Option<f64>,
}

/// Alloc mode (`run --alloc`): the traced allocator calls, per stage and
/// per allocation site. Counts and bytes are estimates for all calls:
/// with `--alloc-sample N` the kept ones times N.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AllocReport {
    /// 1 in `sample` allocations is tracked.
    pub sample: u32,
    /// Allocations smaller than this are not tracked.
    pub min_bytes: u64,
    /// All stages (and none): bytes allocated and not yet freed.
    pub outstanding_bytes: u64,
    pub outstanding_allocs: u64,
    /// Slope of `outstanding_bytes` over the window (at least 10 s).
    pub growth_bytes_per_s: Option<f64>,
    /// Stages that allocated anything, plan order, then "(no stage)".
    pub stages: Vec<StageAlloc>,
    /// Largest outstanding sites older than `--min-age`, largest first
    /// (computed every few seconds, see docs/memory.md).
    pub sites: Vec<AllocSite>,
    /// Allocations not tracked because the outstanding map was full.
    pub map_full: u64,
    /// Allocations tracked without a user stack.
    pub no_stack: u64,
}

/// Allocations made while a stage was the innermost traced call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageAlloc {
    pub stage: String,
    /// Whole run.
    pub allocs: u64,
    pub alloc_bytes: u64,
    /// Frees of this stage's allocations (by any code).
    pub frees: u64,
    pub freed_bytes: u64,
    /// `alloc_bytes - freed_bytes`.
    pub outstanding_bytes: u64,
    /// Slope of `outstanding_bytes` over the window (at least 10 s).
    pub growth_bytes_per_s: Option<f64>,
    /// Whole-run allocations and bytes divided by the frames completed
    /// (None without a frame stage or before the first frame).
    pub allocs_per_frame: Option<f64>,
    pub bytes_per_frame: Option<f64>,
}

/// Outstanding allocations with one user stack and stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AllocSite {
    pub stage: String,
    pub bytes: u64,
    pub allocs: u64,
    /// Age of the oldest of them.
    pub oldest_age_ns: u64,
    /// Symbolized user stack, innermost (the allocator's caller) first:
    /// `function+0xOFF (file:line)` or `0xADDR (module)`; empty without stacks.
    pub stack: Vec<String>,
}

/// Everything the agent reports for one window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Schema version ([`SNAPSHOT_VERSION`]).
    pub v: u32,
    /// Wall-clock nanoseconds when taken.
    pub ts_ns: u64,
    pub window: Window,
    /// Time actually covered (shorter than the window early in a run).
    pub window_ns: u64,
    /// Stages in plan order.
    pub stages: Vec<StageStats>,
    pub frames: Option<FrameStats>,
    pub gauges: Vec<GaugeStats>,
    pub bottleneck: Bottleneck,
    /// Records the agent read / lost in the kernel, over the whole run.
    pub events: u64,
    pub drops: u64,
    /// Memory of the traced processes, sampled from procfs (empty when the
    /// source samples none; absent in files written before it existed).
    #[serde(default)]
    pub memory: Vec<ProcessMemory>,
    /// Per-stage mmap/munmap bytes over the whole run (only when pids are
    /// known: `-p` or a launched command).
    #[serde(default)]
    pub stage_memory: Vec<StageMemory>,
    /// Alloc mode report (None without `run --alloc`).
    #[serde(default)]
    pub alloc: Option<AllocReport>,
    /// The host's CPU and memory use and its GPUs, sampled about once a
    /// second (None until two samples were taken, for sources that sample
    /// nothing, and in files written before it existed).
    #[serde(default)]
    pub host: Option<HostStats>,
    /// The traced processes: host pid, pid in their own namespace, cgroup,
    /// container and pod (empty when the source tracks none, and in files
    /// written before it existed).
    #[serde(default)]
    pub processes: Vec<ProcessInfo>,
}

/// One traced process's memory (see memory/ and docs/api.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessMemory {
    pub pid: u32,
    /// Resident set size at the latest sample.
    pub rss_bytes: u64,
    /// Least-squares RSS slope over the window, at least the last 10 s
    /// (so the 1 s window equals the 10 s one); None under two samples.
    pub growth_bytes_per_s: Option<f64>,
    /// Samples (about one a second) the growth was fitted over.
    pub samples: u32,
    pub threads: u32,
    /// CPU use over the last sampling interval (about a second) in percent
    /// of one core, like top: a process keeping two threads busy reads 200.
    /// None at the pid's first sample (and in files written before it).
    #[serde(default)]
    pub cpu_percent: Option<f64>,
    /// Where `rss_bytes` came from.
    #[serde(default)]
    pub rss_source: RssSource,
}

/// The source of a process's resident set size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RssSource {
    /// `/proc/PID/statm` (the per-CPU counters' approximate sum).
    #[default]
    Procfs,
    /// The last `kmem:rss_stat` event of the process's mm (exact at the
    /// time of the last change).
    RssStat,
}

/// The host the agent runs on (see memory/host.rs and docs/api.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostStats {
    /// Whole-host CPU use over the last sampling interval, 0..100 (100:
    /// every core busy).
    pub cpu_percent: f64,
    /// CPU use of each core (cpu0, cpu1, ... of /proc/stat), 0..100.
    pub cores: Vec<f64>,
    /// Physical memory (MemTotal of /proc/meminfo).
    pub memory_total_bytes: u64,
    /// Memory in use: total minus available (MemAvailable).
    pub memory_used_bytes: u64,
    pub gpus: GpuReport,
}

/// The host's NVIDIA GPUs read through NVML, or why there are none to read.
/// JSON: `{"status":"present","devices":[...]}` or
/// `{"status":"absent","reason":"..."}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum GpuReport {
    Present {
        devices: Vec<GpuStats>,
    },
    /// No GPU can be read: one line saying why (no driver, built without
    /// NVML support, no device).
    Absent {
        reason: String,
    },
}

/// One GPU. A value the driver cannot give (an unsupported query) is None.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuStats {
    /// NVML device index.
    pub index: u32,
    pub name: String,
    /// Time a kernel was running over the driver's last sample period, 0..100.
    pub utilization_percent: Option<f64>,
    pub memory_used_bytes: Option<u64>,
    pub memory_total_bytes: Option<u64>,
}

/// What a stage holds and how fast that grows: alloc mode's outstanding
/// allocations when the snapshot has an alloc report (then a stage absent
/// from it holds no data), otherwise the resident bytes charged to it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Holding<'a> {
    pub stage: &'a str,
    pub bytes: f64,
    pub growth_bytes_per_s: Option<f64>,
}

impl Snapshot {
    /// Every stage's [`Holding`] (the source `leak()`, `outstanding()`,
    /// `summary` and the dashboard read).
    pub fn holdings(&self) -> Vec<Holding<'_>> {
        match &self.alloc {
            Some(a) => a
                .stages
                .iter()
                .map(|s| Holding {
                    stage: &s.stage,
                    bytes: s.outstanding_bytes as f64,
                    growth_bytes_per_s: s.growth_bytes_per_s,
                })
                .collect(),
            None => self
                .stage_memory
                .iter()
                .map(|s| Holding {
                    stage: &s.stage,
                    bytes: s.resident_bytes as f64,
                    growth_bytes_per_s: s.growth_bytes_per_s,
                })
                .collect(),
        }
    }

    /// One stage's [`Holding`].
    pub fn holding(&self, stage: &str) -> Option<Holding<'_>> {
        self.holdings().into_iter().find(|h| h.stage == stage)
    }

    pub fn stage(&self, name: &str) -> Option<&StageStats> {
        self.stages.iter().find(|s| s.stage == name)
    }

    pub fn gauge(&self, name: &str) -> Option<&GaugeStats> {
        self.gauges.iter().find(|g| g.gauge == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_parse_and_print() {
        for w in Window::ALL {
            assert_eq!(Window::parse(w.as_str()), Some(w));
        }
        assert_eq!(Window::parse("1m"), Some(Window::S60));
        assert_eq!(Window::parse("5s"), None);
        assert_eq!(serde_json::to_string(&Window::S10).unwrap(), "\"10s\"");
    }

    #[test]
    fn snapshots_written_before_memory_still_parse() {
        let old = r#"{"v":1,"ts_ns":1,"window":"all","window_ns":2,"stages":[],
            "frames":null,"gauges":[],"bottleneck":{"top_self_share":null,
            "p99_growth":null},"events":3,"drops":0}"#;
        let s: Snapshot = serde_json::from_str(old).unwrap();
        assert!(s.memory.is_empty());
        assert_eq!(s.events, 3);
    }

    #[test]
    fn host_and_process_cpu_round_trip() {
        let old = r#"{"v":1,"ts_ns":1,"window":"all","window_ns":2,"stages":[],
            "frames":null,"gauges":[],"bottleneck":{"top_self_share":null,
            "p99_growth":null},"events":3,"drops":0,"memory":[{"pid":7,
            "rss_bytes":4096,"growth_bytes_per_s":null,"samples":1,"threads":1}]}"#;
        let mut s: Snapshot = serde_json::from_str(old).unwrap();
        assert_eq!(s.host, None);
        assert_eq!(s.memory[0].cpu_percent, None);

        s.memory[0].cpu_percent = Some(150.5);
        s.host = Some(HostStats {
            cpu_percent: 37.5,
            cores: vec![50.0, 25.0],
            memory_total_bytes: 8 << 30,
            memory_used_bytes: 3 << 30,
            gpus: GpuReport::Present {
                devices: vec![GpuStats {
                    index: 0,
                    name: "NVIDIA T4".into(),
                    utilization_percent: Some(80.0),
                    memory_used_bytes: Some(1 << 30),
                    memory_total_bytes: None,
                }],
            },
        });
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["memory"][0]["cpu_percent"], 150.5);
        assert_eq!(json["host"]["cores"], serde_json::json!([50.0, 25.0]));
        assert_eq!(json["host"]["gpus"]["status"], "present");
        assert_eq!(json["host"]["gpus"]["devices"][0]["name"], "NVIDIA T4");
        let back: Snapshot = serde_json::from_value(json).unwrap();
        assert_eq!(back, s);

        let absent = GpuReport::Absent {
            reason: "built without NVML support".into(),
        };
        assert_eq!(
            serde_json::to_string(&absent).unwrap(),
            r#"{"status":"absent","reason":"built without NVML support"}"#
        );
    }
}
