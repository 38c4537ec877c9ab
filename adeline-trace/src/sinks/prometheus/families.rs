//! The agent's metric families: names, types, units, labels and help text
//! (the list in docs/prometheus.md), rendered from what one scrape read.
use crate::{
    metrics::{
        buckets::Cumulative,
        snapshot::{GpuReport, Snapshot},
    },
    sinks::source::OutputHealth,
};

use super::{
    process::AgentUsage,
    stage_memory::stage_memory,
    text::{Exposition, Kind, Value},
};

/// Everything one scrape reads from the agent.
#[derive(Debug, Clone)]
pub struct Scrape<'a> {
    /// The agent's version (`adeline_agent_info`).
    pub version: &'a str,
    /// Whole-run buckets per stage and for frames (None: stage families left out).
    pub cumulative: Option<&'a Cumulative>,
    /// The 1 s window: FPS; traced processes' RSS and growth (whose fit
    /// spans at least 10 s, see memory/growth.rs); processes' and host
    /// cores' CPU use and the GPUs (the last sample, about a second).
    pub last_second: &'a Snapshot,
    /// The whole run: gauges' last values, events and drops.
    pub whole_run: &'a Snapshot,
    /// Alert rules and whether each is firing.
    pub alerts: &'a [(String, bool)],
    /// The agent's own CPU and memory (None: left out).
    pub agent: Option<AgentUsage>,
    /// Outputs that send records elsewhere (OTLP): delivered and lost.
    pub outputs: &'a [OutputHealth],
}

/// The exposition of `s`. Families without samples are left out.
pub fn render(s: &Scrape) -> String {
    let mut e = Exposition::new();
    e.family(
        "adeline_agent_info",
        Kind::Gauge,
        "Always 1; the label carries the adeline-trace agent version.",
    );
    e.sample(
        "adeline_agent_info",
        &[("version", s.version)],
        Value::Int(1),
    );
    if let Some(c) = s.cumulative {
        stages(&mut e, c);
    }
    frames(&mut e, s);
    let gauges: Vec<(&str, i64)> = s
        .whole_run
        .gauges
        .iter()
        .filter_map(|g| Some((g.gauge.as_str(), g.last?)))
        .collect();
    if !gauges.is_empty() {
        e.family(
            "adeline_probe_value",
            Kind::Gauge,
            "Last value recorded by each --gauge probe (an argument or return value).",
        );
        for (gauge, last) in gauges {
            e.sample("adeline_probe_value", &[("gauge", gauge)], Value::Int(last));
        }
    }
    counter(
        &mut e,
        "adeline_events_total",
        "Records the agent has read from the kernel.",
        s.whole_run.events,
    );
    counter(
        &mut e,
        "adeline_drops_total",
        "Records lost in the kernel because the ring buffer was full; their calls are missing from every other metric.",
        s.whole_run.drops,
    );
    processes(&mut e, s);
    memory(&mut e, s);
    stage_memory(&mut e, s.last_second);
    cpu(&mut e, s);
    gpus(&mut e, s);
    if !s.alerts.is_empty() {
        e.family(
            "adeline_alert_firing",
            Kind::Gauge,
            "1 while the alert rule is firing, 0 after it resolved; a rule appears once it has fired.",
        );
        for (rule, firing) in s.alerts {
            e.sample(
                "adeline_alert_firing",
                &[("rule", rule)],
                Value::Int(i64::from(*firing)),
            );
        }
    }
    outputs(&mut e, s.outputs);
    if let Some(a) = s.agent {
        e.family(
            "adeline_agent_cpu_seconds_total",
            Kind::Counter,
            "User and system CPU time of the agent process.",
        );
        e.sample(
            "adeline_agent_cpu_seconds_total",
            &[],
            Value::Float(a.cpu_seconds),
        );
        e.family(
            "adeline_agent_resident_memory_bytes",
            Kind::Gauge,
            "Resident memory of the agent process.",
        );
        e.sample(
            "adeline_agent_resident_memory_bytes",
            &[],
            Value::Count(a.resident_bytes),
        );
    }
    e.finish()
}

/// Calls, durations and self time per stage.
fn stages(e: &mut Exposition, c: &Cumulative) {
    if c.stages.is_empty() {
        return;
    }
    e.family(
        "adeline_stage_calls_total",
        Kind::Counter,
        "Completed calls of each traced stage.",
    );
    for s in &c.stages {
        e.sample(
            "adeline_stage_calls_total",
            &[("stage", &s.stage)],
            Value::Count(s.durations.count),
        );
    }
    e.family(
        "adeline_stage_duration_seconds",
        Kind::Histogram,
        "Duration of each stage call, entry to return.",
    );
    for s in &c.stages {
        e.histogram(
            "adeline_stage_duration_seconds",
            &[("stage", &s.stage)],
            &s.durations,
        );
    }
    e.family(
        "adeline_stage_self_seconds_total",
        Kind::Counter,
        "Self time of each stage: call durations minus the traced calls made inside them.",
    );
    for s in &c.stages {
        e.sample(
            "adeline_stage_self_seconds_total",
            &[("stage", &s.stage)],
            Value::Seconds(s.self_ns),
        );
    }
}

/// Frames (outermost calls of the frame stage), when there is one.
fn frames(e: &mut Exposition, s: &Scrape) {
    if let Some(f) = s.cumulative.and_then(|c| c.frames.as_ref()) {
        counter(
            e,
            "adeline_frames_total",
            "Completed frames (outermost calls of the frame stage).",
            f.count,
        );
        e.family(
            "adeline_frame_duration_seconds",
            Kind::Histogram,
            "End-to-end frame latency.",
        );
        e.histogram("adeline_frame_duration_seconds", &[], f);
    }
    if let Some(f) = &s.last_second.frames {
        e.family(
            "adeline_fps",
            Kind::Gauge,
            "Frames completed per second over the last second.",
        );
        e.sample("adeline_fps", &[], Value::Float(f.fps));
    }
}

/// RSS and its growth per traced process (sampled from procfs).
fn memory(e: &mut Exposition, s: &Scrape) {
    let memory = &s.last_second.memory;
    if memory.is_empty() {
        return;
    }
    const RSS: &str = "adeline_process_resident_memory_bytes";
    const GROWTH: &str = "adeline_process_resident_memory_growth_bytes_per_second";
    e.family(
        RSS,
        Kind::Gauge,
        "Resident memory of each traced process (kmem:rss_stat, else /proc/PID/statm; sampled every second).",
    );
    for m in memory {
        let labels = pid_labels(s, m.pid);
        e.sample(RSS, &as_refs(&labels), Value::Count(m.rss_bytes));
    }
    let growing: Vec<_> = memory
        .iter()
        .filter_map(|m| Some((pid_labels(s, m.pid), m.growth_bytes_per_s?)))
        .collect();
    if growing.is_empty() {
        return;
    }
    e.family(
        GROWTH,
        Kind::Gauge,
        "Growth of each traced process's resident memory: least-squares slope over the last 10 s.",
    );
    for (labels, g) in growing {
        e.sample(GROWTH, &as_refs(&labels), Value::Float(g));
    }
}

/// CPU use of each traced process and of each host core, over the last
/// sampling interval (about a second), as ratios.
fn cpu(e: &mut Exposition, s: &Scrape) {
    const PROCESS: &str = "adeline_process_cpu_usage_ratio";
    const HOST: &str = "adeline_host_cpu_usage_ratio";
    let processes: Vec<_> = s
        .last_second
        .memory
        .iter()
        .filter_map(|m| Some((pid_labels(s, m.pid), m.cpu_percent?)))
        .collect();
    if !processes.is_empty() {
        e.family(
            PROCESS,
            Kind::Gauge,
            "CPU use of each traced process over the last second, in cores (1.5: one and a half cores busy).",
        );
        for (labels, percent) in processes {
            e.sample(PROCESS, &as_refs(&labels), Value::Float(percent / 100.0));
        }
    }
    let Some(host) = &s.last_second.host else {
        return;
    };
    e.family(
        HOST,
        Kind::Gauge,
        "CPU use of each core of the host over the last second, 0 to 1.",
    );
    for (core, percent) in host.cores.iter().enumerate() {
        let core = core.to_string();
        e.sample(HOST, &[("cpu", &core)], Value::Float(percent / 100.0));
    }
}

/// Utilisation and memory of each GPU (NVML), only when GPUs are present.
fn gpus(e: &mut Exposition, s: &Scrape) {
    const UTILIZATION: &str = "adeline_gpu_utilization_ratio";
    const MEMORY: &str = "adeline_gpu_memory_used_bytes";
    let Some(GpuReport::Present { devices }) = s.last_second.host.as_ref().map(|h| &h.gpus) else {
        return;
    };
    let busy: Vec<_> = devices
        .iter()
        .filter_map(|d| Some((d.index.to_string(), d.utilization_percent?)))
        .collect();
    if !busy.is_empty() {
        e.family(
            UTILIZATION,
            Kind::Gauge,
            "Share of the driver's last sample period during which a kernel ran on each GPU (NVML), 0 to 1.",
        );
        for (gpu, percent) in busy {
            e.sample(UTILIZATION, &[("gpu", &gpu)], Value::Float(percent / 100.0));
        }
    }
    let used: Vec<_> = devices
        .iter()
        .filter_map(|d| Some((d.index.to_string(), d.memory_used_bytes?)))
        .collect();
    if !used.is_empty() {
        e.family(MEMORY, Kind::Gauge, "Memory allocated on each GPU (NVML).");
        for (gpu, bytes) in used {
            e.sample(MEMORY, &[("gpu", &gpu)], Value::Count(bytes));
        }
    }
}

/// `pid` and, when known, the process's namespace pid and its container
/// and pod labels: every per-process series carries them.
fn pid_labels(s: &Scrape, pid: u32) -> Vec<(&'static str, String)> {
    let mut labels = vec![("pid", pid.to_string())];
    if let Some(p) = s.last_second.processes.iter().find(|p| p.pid == pid) {
        labels.extend(p.prometheus_labels());
    }
    labels
}

fn as_refs<'a>(labels: &'a [(&'static str, String)]) -> Vec<(&'a str, &'a str)> {
    labels.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// One series per traced process, its labels saying where it runs.
fn processes(e: &mut Exposition, s: &Scrape) {
    const INFO: &str = "adeline_process_info";
    let processes = &s.last_second.processes;
    if processes.is_empty() {
        return;
    }
    e.family(
        INFO,
        Kind::Gauge,
        "Always 1 per traced process; labels: host pid, pid in its own namespace, cgroup, container and Kubernetes pod.",
    );
    for p in processes {
        let mut labels = pid_labels(s, p.pid);
        if let Some(cgroup) = &p.cgroup {
            labels.push(("cgroup", cgroup.clone()));
        }
        e.sample(INFO, &as_refs(&labels), Value::Int(1));
    }
}

/// What the outputs that send records elsewhere delivered and lost.
fn outputs(e: &mut Exposition, outputs: &[OutputHealth]) {
    if outputs.is_empty() {
        return;
    }
    type Field = fn(&OutputHealth) -> u64;
    let families: [(&str, Kind, &str, Field); 4] = [
        (
            "adeline_output_exported_total",
            Kind::Counter,
            "Items (metric data points, spans) an output delivered.",
            |o| o.exported,
        ),
        (
            "adeline_output_dropped_total",
            Kind::Counter,
            "Items an output lost: its queue was full, or every retry of their export failed.",
            |o| o.dropped,
        ),
        (
            "adeline_output_failed_exports_total",
            Kind::Counter,
            "Export requests of an output that failed after their retries.",
            |o| o.failed_exports,
        ),
        (
            "adeline_output_queued",
            Kind::Gauge,
            "Items waiting in an output's queue.",
            |o| o.queued,
        ),
    ];
    for (name, kind, help, field) in families {
        e.family(name, kind, help);
        for o in outputs {
            e.sample(name, &[("output", o.output)], Value::Count(field(o)));
        }
    }
}

fn counter(e: &mut Exposition, name: &str, help: &str, value: u64) {
    e.family(name, Kind::Counter, help);
    e.sample(name, &[], Value::Count(value));
}

#[cfg(test)]
mod tests {
    use adeline_trace_common::GaugeRecord;

    use super::*;
    use crate::metrics::{snapshot::Window, Metrics};

    use crate::metrics::test_span as span;

    /// Two frames of 1.5 ms and 3 ms holding `infer` calls of 900 us and
    /// 400 us, one more `infer` call (1.9 ms) outside frames, a gauge, an alert whose
    /// rule needs escaping; buckets at 0.5, 1 and 2 ms.
    #[test]
    fn exposition_of_a_small_run() {
        const S: u64 = 1_000_000_000;
        let names = ["frame", "infer \"v2\""].map(String::from).to_vec();
        let mut m = Metrics::new(names, vec!["tracks".into()], Some(0));
        m.record_span(&span(1, 900_000, 900_000, S, S));
        m.record_span(&span(0, 1_500_000, 600_000, S, S));
        m.record_span(&span(1, 400_000, 400_000, S + 10_000_000, S + 10_000_000));
        m.record_span(&span(
            0,
            3_000_000,
            2_600_000,
            S + 10_000_000,
            S + 10_000_000,
        ));
        m.record_span(&span(1, 1_900_000, 1_900_000, S + 20_000_000, 0));
        m.record_gauge(&GaugeRecord {
            gauge: 0,
            ts_ns: S,
            value: -7,
            ..Default::default()
        });
        let now = S + 500_000_000;
        let cumulative = m.cumulative_buckets(&[500_000, 1_000_000, 2_000_000]);
        let scrape = Scrape {
            version: "1.2.3",
            cumulative: Some(&cumulative),
            last_second: &m.snapshot(Window::S1, now, 0, 9, 2),
            whole_run: &m.snapshot(Window::All, now, 0, 9, 2),
            alerts: &[
                ("p99(infer) > 1ms\n\\ \"x\"".into(), true),
                ("drops > 0".into(), false),
            ],
            agent: Some(AgentUsage {
                cpu_seconds: 0.25,
                resident_bytes: 8_388_608,
            }),
            outputs: &[],
        };
        let want = r#"# HELP adeline_agent_info Always 1; the label carries the adeline-trace agent version.
# TYPE adeline_agent_info gauge
adeline_agent_info{version="1.2.3"} 1
# HELP adeline_stage_calls_total Completed calls of each traced stage.
# TYPE adeline_stage_calls_total counter
adeline_stage_calls_total{stage="frame"} 2
adeline_stage_calls_total{stage="infer \"v2\""} 3
# HELP adeline_stage_duration_seconds Duration of each stage call, entry to return.
# TYPE adeline_stage_duration_seconds histogram
adeline_stage_duration_seconds_bucket{stage="frame",le="0.0005"} 0
adeline_stage_duration_seconds_bucket{stage="frame",le="0.001"} 0
adeline_stage_duration_seconds_bucket{stage="frame",le="0.002"} 1
adeline_stage_duration_seconds_bucket{stage="frame",le="+Inf"} 2
adeline_stage_duration_seconds_sum{stage="frame"} 0.0045
adeline_stage_duration_seconds_count{stage="frame"} 2
adeline_stage_duration_seconds_bucket{stage="infer \"v2\"",le="0.0005"} 1
adeline_stage_duration_seconds_bucket{stage="infer \"v2\"",le="0.001"} 2
adeline_stage_duration_seconds_bucket{stage="infer \"v2\"",le="0.002"} 3
adeline_stage_duration_seconds_bucket{stage="infer \"v2\"",le="+Inf"} 3
adeline_stage_duration_seconds_sum{stage="infer \"v2\""} 0.0032
adeline_stage_duration_seconds_count{stage="infer \"v2\""} 3
# HELP adeline_stage_self_seconds_total Self time of each stage: call durations minus the traced calls made inside them.
# TYPE adeline_stage_self_seconds_total counter
adeline_stage_self_seconds_total{stage="frame"} 0.0032
adeline_stage_self_seconds_total{stage="infer \"v2\""} 0.0032
# HELP adeline_frames_total Completed frames (outermost calls of the frame stage).
# TYPE adeline_frames_total counter
adeline_frames_total 2
# HELP adeline_frame_duration_seconds End-to-end frame latency.
# TYPE adeline_frame_duration_seconds histogram
adeline_frame_duration_seconds_bucket{le="0.0005"} 0
adeline_frame_duration_seconds_bucket{le="0.001"} 0
adeline_frame_duration_seconds_bucket{le="0.002"} 1
adeline_frame_duration_seconds_bucket{le="+Inf"} 2
adeline_frame_duration_seconds_sum 0.0045
adeline_frame_duration_seconds_count 2
# HELP adeline_fps Frames completed per second over the last second.
# TYPE adeline_fps gauge
adeline_fps 4
# HELP adeline_probe_value Last value recorded by each --gauge probe (an argument or return value).
# TYPE adeline_probe_value gauge
adeline_probe_value{gauge="tracks"} -7
# HELP adeline_events_total Records the agent has read from the kernel.
# TYPE adeline_events_total counter
adeline_events_total 9
# HELP adeline_drops_total Records lost in the kernel because the ring buffer was full; their calls are missing from every other metric.
# TYPE adeline_drops_total counter
adeline_drops_total 2
# HELP adeline_alert_firing 1 while the alert rule is firing, 0 after it resolved; a rule appears once it has fired.
# TYPE adeline_alert_firing gauge
adeline_alert_firing{rule="p99(infer) > 1ms\n\\ \"x\""} 1
adeline_alert_firing{rule="drops > 0"} 0
# HELP adeline_agent_cpu_seconds_total User and system CPU time of the agent process.
# TYPE adeline_agent_cpu_seconds_total counter
adeline_agent_cpu_seconds_total 0.25
# HELP adeline_agent_resident_memory_bytes Resident memory of the agent process.
# TYPE adeline_agent_resident_memory_bytes gauge
adeline_agent_resident_memory_bytes 8388608
"#;
        let got = render(&scrape);
        assert_eq!(got, want, "\n{got}");
    }

    #[test]
    fn memory_of_stages_and_allocations() {
        use crate::metrics::snapshot::{AllocReport, StageAlloc, StageMemory};
        let mut last =
            Metrics::new(vec!["track".into()], vec![], None).snapshot(Window::S1, 1, 0, 0, 0);
        last.stage_memory = vec![StageMemory {
            stage: "track".into(),
            mapped_bytes: 266_240,
            unmapped_bytes: 0,
            mapped_per_frame: None,
            resident_bytes: -8_192,
            growth_bytes_per_s: None,
        }];
        last.alloc = Some(AllocReport {
            sample: 1,
            min_bytes: 0,
            outstanding_bytes: 4_096,
            outstanding_allocs: 1,
            growth_bytes_per_s: None,
            stages: vec![StageAlloc {
                stage: "track".into(),
                allocs: 3,
                alloc_bytes: 12_288,
                frees: 2,
                freed_bytes: 8_192,
                outstanding_bytes: 4_096,
                growth_bytes_per_s: None,
                allocs_per_frame: None,
                bytes_per_frame: None,
            }],
            sites: vec![],
            map_full: 0,
            no_stack: 0,
        });
        let got = render(&Scrape {
            version: "0",
            cumulative: None,
            last_second: &last,
            whole_run: &last,
            alerts: &[],
            agent: None,
            outputs: &[],
        });
        for line in [
            "# TYPE adeline_stage_resident_bytes gauge\n",
            "adeline_stage_resident_bytes{stage=\"track\"} -8192\n",
            "# TYPE adeline_stage_mapped_bytes_total counter\n",
            "adeline_stage_mapped_bytes_total{stage=\"track\"} 266240\n",
            "adeline_stage_allocations_total{stage=\"track\"} 3\n",
            "adeline_stage_allocated_bytes_total{stage=\"track\"} 12288\n",
            "# TYPE adeline_stage_outstanding_bytes gauge\n",
            "adeline_stage_outstanding_bytes{stage=\"track\"} 4096\n",
        ] {
            assert!(got.contains(line), "missing {line:?} in\n{got}");
        }
    }

    #[test]
    fn memory_of_traced_processes() {
        use crate::metrics::snapshot::ProcessMemory;
        let mut m = Metrics::new(vec!["a".into()], vec![], None).snapshot(Window::S1, 1, 0, 0, 0);
        m.memory = vec![
            ProcessMemory {
                pid: 42,
                rss_bytes: 1_048_576,
                growth_bytes_per_s: Some(-2.5),
                samples: 10,
                threads: 2,
                cpu_percent: None,
                rss_source: Default::default(),
            },
            ProcessMemory {
                pid: 43,
                rss_bytes: 4096,
                growth_bytes_per_s: None,
                samples: 1,
                threads: 1,
                cpu_percent: None,
                rss_source: Default::default(),
            },
        ];
        let got = render(&Scrape {
            version: "1",
            cumulative: None,
            last_second: &m,
            whole_run: &m,
            alerts: &[],
            agent: None,
            outputs: &[],
        });
        assert!(
            got.contains("# TYPE adeline_process_resident_memory_bytes gauge\n"),
            "{got}"
        );
        assert!(
            got.contains("adeline_process_resident_memory_bytes{pid=\"42\"} 1048576\n"),
            "{got}"
        );
        assert!(
            got.contains("adeline_process_resident_memory_bytes{pid=\"43\"} 4096\n"),
            "{got}"
        );
        assert!(
            got.contains("# TYPE adeline_process_resident_memory_growth_bytes_per_second gauge\n"),
            "{got}"
        );
        assert!(
            got.contains(
                "adeline_process_resident_memory_growth_bytes_per_second{pid=\"42\"} -2.5\n"
            ),
            "{got}"
        );
        assert!(
            !got.contains("growth_bytes_per_second{pid=\"43\"}"),
            "{got}"
        );
    }

    #[test]
    fn without_frames_gauges_alerts_or_histograms() {
        let m = Metrics::new(vec!["decode".into()], vec!["q".into()], None);
        let snap = m.snapshot(Window::All, 0, 0, 0, 0);
        let scrape = Scrape {
            version: "0",
            cumulative: None,
            last_second: &snap,
            whole_run: &snap,
            alerts: &[],
            agent: None,
            outputs: &[],
        };
        let got = render(&scrape);
        for absent in ["stage", "frame", "fps", "probe_value", "alert", "cpu"] {
            assert!(!got.contains(absent), "{absent} in\n{got}");
        }
        assert!(got.contains("adeline_drops_total 0\n"), "{got}");
        let c = m.cumulative_buckets(&[1]);
        let got = render(&Scrape {
            cumulative: Some(&c),
            ..scrape
        });
        assert!(got.contains("adeline_stage_calls_total{stage=\"decode\"} 0\n"));
        assert!(!got.contains("frame"), "{got}");
    }

    #[test]
    fn cpu_of_processes_and_cores_and_gpus_when_present() {
        use crate::metrics::snapshot::{GpuStats, HostStats, ProcessMemory};
        let mut m = Metrics::new(vec!["a".into()], vec![], None).snapshot(Window::S1, 1, 0, 0, 0);
        let process = |pid, cpu_percent| ProcessMemory {
            pid,
            rss_bytes: 4096,
            growth_bytes_per_s: None,
            samples: 2,
            threads: 3,
            cpu_percent,
            rss_source: Default::default(),
        };
        m.memory = vec![process(42, Some(150.0)), process(43, None)];
        m.host = Some(HostStats {
            cpu_percent: 62.5,
            cores: vec![100.0, 25.0],
            memory_total_bytes: 1 << 30,
            memory_used_bytes: 1 << 29,
            gpus: GpuReport::Absent {
                reason: "built without NVML support".into(),
            },
        });
        let scrape = |m: &Snapshot| {
            render(&Scrape {
                version: "1",
                cumulative: None,
                last_second: m,
                whole_run: m,
                alerts: &[],
                agent: None,
                outputs: &[],
            })
        };
        let got = scrape(&m);
        for line in [
            "# TYPE adeline_process_cpu_usage_ratio gauge\n",
            "adeline_process_cpu_usage_ratio{pid=\"42\"} 1.5\n",
            "# TYPE adeline_host_cpu_usage_ratio gauge\n",
            "adeline_host_cpu_usage_ratio{cpu=\"0\"} 1\n",
            "adeline_host_cpu_usage_ratio{cpu=\"1\"} 0.25\n",
        ] {
            assert!(got.contains(line), "{line} not in\n{got}");
        }
        assert!(!got.contains("cpu_usage_ratio{pid=\"43\"}"), "{got}");
        assert!(!got.contains("adeline_gpu"), "{got}");

        let host = m.host.as_mut().unwrap();
        host.gpus = GpuReport::Present {
            devices: vec![
                GpuStats {
                    index: 0,
                    name: "A".into(),
                    utilization_percent: Some(80.0),
                    memory_used_bytes: Some(2_147_483_648),
                    memory_total_bytes: Some(17_179_869_184),
                },
                GpuStats {
                    index: 1,
                    name: "B".into(),
                    utilization_percent: None,
                    memory_used_bytes: Some(0),
                    memory_total_bytes: None,
                },
            ],
        };
        let got = scrape(&m);
        for line in [
            "# TYPE adeline_gpu_utilization_ratio gauge\n",
            "adeline_gpu_utilization_ratio{gpu=\"0\"} 0.8\n",
            "# TYPE adeline_gpu_memory_used_bytes gauge\n",
            "adeline_gpu_memory_used_bytes{gpu=\"0\"} 2147483648\n",
            "adeline_gpu_memory_used_bytes{gpu=\"1\"} 0\n",
        ] {
            assert!(got.contains(line), "{line} not in\n{got}");
        }
        assert!(!got.contains("utilization_ratio{gpu=\"1\"}"), "{got}");
    }
}
