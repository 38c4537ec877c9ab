//! Test data shared by the API's and `summary`'s tests: a fixed snapshot of
//! a four-stage pipeline and a source that serves it.
use std::sync::Mutex;

use crate::{
    alerts::{AlertEvent, AlertState},
    container::{Container, ProcessInfo, Runtime},
    metrics::snapshot::{
        Bottleneck, FrameStats, GaugeStats, GrowthOf, Percentiles, ProcessMemory, ShareOf,
        Snapshot, StageStats, Window, SNAPSHOT_VERSION,
    },
    sinks::SnapshotSource,
};

fn stage(name: &str, rate_hz: f64, latency: Percentiles, frame_share: Option<f64>) -> StageStats {
    StageStats {
        stage: name.to_string(),
        rate_hz,
        latency,
        total_ns: latency.count * latency.mean_ns,
        self_ns: latency.count * latency.mean_ns,
        frame_share,
    }
}

fn ms(v: f64) -> u64 {
    (v * 1e6).round() as u64
}

fn percentiles(count: u64, [min, mean, p50, p90, p95, p99, p999, max]: [f64; 8]) -> Percentiles {
    Percentiles {
        count,
        min_ns: ms(min),
        mean_ns: ms(mean),
        p50_ns: ms(p50),
        p90_ns: ms(p90),
        p95_ns: ms(p95),
        p99_ns: ms(p99),
        p999_ns: ms(p999),
        max_ns: ms(max),
    }
}

/// A fixed snapshot over `window`: preprocess (no frame share), inference
/// (the bottleneck), a stage with a space in its name and no calls, and
/// tracking (slower than before); frames, one gauge, some drops.
pub fn sample_snapshot(window: Window) -> Snapshot {
    Snapshot {
        v: SNAPSHOT_VERSION,
        ts_ns: 1_700_000_000_000_000_000,
        window,
        window_ns: window.nanos().unwrap_or(42_500_000_000),
        stages: vec![
            stage(
                "preprocess",
                30.0,
                Percentiles {
                    count: 300,
                    min_ns: 800,
                    mean_ns: 950,
                    p50_ns: 940,
                    p90_ns: 990,
                    p95_ns: 999,
                    p99_ns: 1_500,
                    p999_ns: 9_996,
                    max_ns: 12_345,
                },
                None,
            ),
            stage(
                "inference",
                30.0,
                percentiles(300, [15.0, 20.0, 19.5, 24.0, 25.0, 31.0, 33.0, 33.5]),
                Some(0.625),
            ),
            stage("post process", 0.0, Percentiles::default(), Some(0.0)),
            stage(
                "tracking",
                29.95,
                percentiles(299, [1.0, 2.0, 1.9, 3.0, 3.5, 4.0, 999.9996, 1_234.5]),
                Some(0.0625),
            ),
        ],
        frames: Some(FrameStats {
            root: "frame".to_string(),
            fps: 29.5,
            latency: percentiles(295, [25.0, 32.0, 31.0, 36.0, 38.0, 45.0, 47.0, 48.0]),
        }),
        gauges: vec![
            GaugeStats {
                gauge: "queue_depth".to_string(),
                count: 300,
                last: Some(3),
                min: Some(0),
                max: Some(8),
                mean: Some(2.5),
            },
            GaugeStats {
                gauge: "batch".to_string(),
                count: 0,
                last: None,
                min: None,
                max: None,
                mean: None,
            },
        ],
        bottleneck: Bottleneck {
            top_self_share: Some(ShareOf {
                stage: "inference".to_string(),
                share: 0.625,
            }),
            p99_growth: Some(GrowthOf {
                stage: "tracking".to_string(),
                p99_ns: 4_000_000,
                earlier_p99_ns: 2_000_000,
                ratio: 2.0,
            }),
        },
        events: 1_234_567,
        drops: 12,
        memory: vec![ProcessMemory {
            pid: 4242,
            rss_bytes: 104_857_600,
            growth_bytes_per_s: Some(524_288.0),
            samples: 10,
            threads: 4,
            cpu_percent: None,
            rss_source: Default::default(),
        }],
        stage_memory: vec![],
        alloc: None,
        host: None,
        processes: vec![sample_process()],
    }
}

/// The fixture's traced process: pid 1 of a Docker container (cgroup v2,
/// systemd driver).
pub fn sample_process() -> ProcessInfo {
    const ID: &str = "4b825dc642cb6eb9a060e54bf8d69288fbee4904e4b825dc642cb6eb9a060e54";
    ProcessInfo {
        pid: 4242,
        ns_pid: Some(1),
        cgroup: Some(format!("/system.slice/docker-{ID}.scope")),
        container: Some(Container {
            runtime: Runtime::Docker,
            id: ID.to_string(),
            name: None,
            pod: None,
        }),
    }
}

/// Alert transitions, newest last: one rule firing, one that fired and resolved.
pub fn sample_alerts() -> Vec<AlertEvent> {
    vec![
        AlertEvent {
            state: AlertState::Firing,
            rule: "p99(inference) > 30ms for 5s".to_string(),
            value: 31_000_000.0,
            threshold: 30_000_000.0,
            since_ns: 1_699_999_990_000_000_000,
            ts_ns: 1_699_999_995_000_000_000,
            profile: None,
        },
        AlertEvent {
            state: AlertState::Firing,
            rule: "fps < 25 for 10s".to_string(),
            value: 24.5,
            threshold: 25.0,
            since_ns: 1_699_999_970_000_000_000,
            ts_ns: 1_699_999_980_000_000_000,
            profile: None,
        },
        AlertEvent {
            state: AlertState::Resolved,
            rule: "fps < 25 for 10s".to_string(),
            value: 29.5,
            threshold: 25.0,
            since_ns: 1_699_999_980_000_000_000,
            ts_ns: 1_699_999_996_000_000_000,
            profile: None,
        },
    ]
}

/// Serves [`sample_snapshot`] and [`sample_alerts`], recording the windows asked for.
#[derive(Debug, Default)]
pub struct FakeSource {
    asked: Mutex<Vec<Window>>,
}

impl FakeSource {
    /// The windows requested so far, in order.
    pub fn windows(&self) -> Vec<Window> {
        self.asked.lock().map(|w| w.clone()).unwrap_or_default()
    }
}

impl SnapshotSource for FakeSource {
    fn snapshot(&self, window: Window) -> Snapshot {
        if let Ok(mut asked) = self.asked.lock() {
            asked.push(window);
        }
        sample_snapshot(window)
    }

    fn alerts(&self) -> Vec<AlertEvent> {
        sample_alerts()
    }
}
