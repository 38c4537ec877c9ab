//! OpenTelemetry export against a receiver that decodes with the upstream
//! OTLP protobuf definitions: exact counts, the `--prom-buckets` bounds and
//! bucket counts against `/metrics` and the spans themselves, frames as
//! traces, resource attributes naming the container; a dead collector and
//! a slow one leave tracing exact and report their drops.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use adeline_trace_tests::cgroup::{container_id, hierarchies, pod_uid, TestCgroup};
use adeline_trace_tests::otlp::*;
use adeline_trace_tests::*;
use serde_json::Value;

const BUCKETS: &str = "0.0005,0.001,0.002,0.005,0.01,0.05";

/// `/metrics`: `name{labels} value` lines as (name, labels text, value).
fn samples(body: &str) -> Vec<(String, String, f64)> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            Some((name.to_string(), labels.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// One stage's histogram in `/metrics`: count, sum, and (le, cumulative).
/// A histogram as count, sum and cumulative (upper bound, count) buckets.
type Histogram = (u64, f64, Vec<(f64, u64)>);

fn prom_histogram(body: &str, stage: &str) -> Histogram {
    let label = format!("stage=\"{stage}\"");
    let mut count = 0;
    let mut sum = 0.0;
    let mut le = Vec::new();
    for (name, labels, value) in samples(body) {
        if !labels.starts_with(&label) {
            continue;
        }
        match name.as_str() {
            "adeline_stage_duration_seconds_count" => count = value as u64,
            "adeline_stage_duration_seconds_sum" => sum = value,
            "adeline_stage_duration_seconds_bucket" => {
                let bound = labels.split("le=\"").nth(1).unwrap().trim_end_matches('"');
                if bound != "+Inf" {
                    le.push((bound.parse().unwrap(), value as u64));
                }
            }
            _ => {}
        }
    }
    (count, sum, le)
}

/// An OTLP histogram point as (count, sum, cumulative counts per bound).
fn cumulative(p: &HistogramDataPoint) -> Histogram {
    let mut total = 0;
    let le = p
        .explicit_bounds
        .iter()
        .zip(&p.bucket_counts)
        .map(|(&b, &n)| {
            total += n;
            (b, total)
        })
        .collect();
    (p.count, p.sum.unwrap_or(f64::NAN), le)
}

fn stage_counts(
    req: &opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest,
) -> BTreeMap<String, u64> {
    histogram_points(req, "adeline.stage.duration")
        .into_iter()
        .map(|(s, p)| (s, p.count))
        .collect()
}

fn calls_counter(
    req: &opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest,
) -> BTreeMap<String, u64> {
    number_points(req, "adeline.stage.calls")
        .into_iter()
        .map(|(a, v)| (attr(a, "stage").unwrap(), v as u64))
        .collect()
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on a fixture process this test started.
    unsafe { libc::kill(pid as libc::pid_t, sig) };
}

#[test]
fn metrics_and_frame_traces_match_the_agent_exactly() {
    if !require_bpf() {
        return;
    }
    let receiver = OtlpReceiver::start();
    // The pipeline runs in a cgroup named as the kubelet and containerd
    // name theirs (v2), the kubelet's log directory naming its pod.
    let (v2, _) = hierarchies();
    let (id, uid) = (container_id(), pod_uid());
    let cgroup = TestCgroup::create(
        &v2,
        &format!(
            "/kubepods.slice/kubepods-pod{}.slice/cri-containerd-{id}.scope",
            uid.replace('-', "_")
        ),
    );
    let kubelet = scratch_dir("kubelet");
    std::fs::create_dir_all(kubelet.join(format!("pods/vision_cam-3_{uid}/infer"))).unwrap();

    let demo = Pipeline::demo(&["--frames", "0", "--threads", "2", "--fps", "40"]);
    let pid = demo.pid();
    cgroup.add(pid);
    let port = free_port();
    let mut args = vec![
        "run".to_string(),
        "-p".into(),
        pid.to_string(),
        "--frame-stage".into(),
        "process_frame".into(),
        "--api-port".into(),
        port.to_string(),
        "--prom-buckets".into(),
        BUCKETS.into(),
        "--otlp".into(),
        receiver.endpoint(),
        "--otlp-interval".into(),
        "300ms".into(),
        "--otlp-traces".into(),
        "1".into(),
        "--otlp-service-name".into(),
        "vision-test".into(),
        "--kubelet-pods-dir".into(),
        kubelet.join("pods").display().to_string(),
    ];
    args.extend(demo_stage_args(&demo_bin()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut agent = Agent::spawn(&args);
    agent.wait_ready(Duration::from_secs(60));
    demo.go();
    std::thread::sleep(Duration::from_millis(1500));

    // Stopped, the pipeline makes no call: /metrics and the next exports
    // hold the same numbers.
    signal(pid, libc::SIGSTOP);
    std::thread::sleep(Duration::from_millis(300));
    let (_, body) = http_get(port, "/metrics");
    let prom: BTreeMap<String, Histogram> = DEMO_STAGES
        .iter()
        .map(|s| (s.to_string(), prom_histogram(&body, s)))
        .collect();
    assert!(prom["decode"].0 > 0, "{body}");
    let want: BTreeMap<String, u64> = prom.iter().map(|(s, h)| (s.clone(), h.0)).collect();
    let export = receiver
        .wait_metrics(Duration::from_secs(10), |m| {
            stage_counts(m) == want && calls_counter(m) == want
        })
        .unwrap_or_else(|| {
            let last = receiver.metrics().pop();
            panic!(
                "no export with the counts of /metrics {want:?}; last: {:?} / {:?}",
                last.as_ref().map(stage_counts),
                last.as_ref().map(calls_counter)
            )
        });
    for (stage, p) in histogram_points(&export, "adeline.stage.duration") {
        let (count, sum, le) = cumulative(p);
        let (p_count, p_sum, p_le) = &prom[&stage];
        assert_eq!(count, *p_count, "{stage}");
        assert!(
            (sum - p_sum).abs() <= 1e-6 * p_sum.max(1e-9),
            "{stage}: {sum} vs {p_sum}"
        );
        let bounds: Vec<f64> = le.iter().map(|b| b.0).collect();
        let p_bounds: Vec<f64> = p_le.iter().map(|b| b.0).collect();
        assert_eq!(bounds, p_bounds, "{stage}: the --prom-buckets bounds");
        for ((b, n), (_, pn)) in le.iter().zip(p_le) {
            // /metrics buckets come from HDR bins: a call within 0.1% below a
            // bound may count only from the next one; OTLP's are exact.
            assert!(n >= pn, "{stage} le={b}: otlp {n} < prometheus {pn}");
        }
    }
    let self_time = number_points(&export, "adeline.stage.self_time");
    for (name, labels, value) in samples(&body) {
        if name == "adeline_stage_self_seconds_total" {
            let stage = labels.trim_start_matches("stage=\"").trim_end_matches('"');
            let (_, v) = self_time
                .iter()
                .find(|(a, _)| attr(a, "stage").as_deref() == Some(stage))
                .unwrap_or_else(|| panic!("no self time of {stage}"));
            assert!(
                (v - value).abs() <= 1e-6 * value.max(1e-9),
                "{stage}: {v} vs {value}"
            );
        }
    }

    signal(pid, libc::SIGCONT);
    demo.signal(libc::SIGINT);
    let report = demo.wait(Duration::from_secs(30));
    let status = agent.wait_exit(Duration::from_secs(30));
    let out = agent.output();
    assert!(status.success(), "{}", out.stderr);

    // The last export: every call, exactly; buckets exact against the spans.
    let calls = |stage: &str| report["calls"][stage].as_u64().unwrap();
    let final_counts: BTreeMap<String, u64> = DEMO_STAGES
        .iter()
        .map(|s| (s.to_string(), calls(s)))
        .collect();
    let last = receiver
        .wait_metrics(Duration::from_secs(10), |m| stage_counts(m) == final_counts)
        .expect("the final export has every call");
    assert_eq!(calls_counter(&last), final_counts);
    let bounds_ns: Vec<u64> = BUCKETS
        .split(',')
        .map(|b| (b.parse::<f64>().unwrap() * 1e9).round() as u64)
        .collect();
    for (stage, p) in histogram_points(&last, "adeline.stage.duration") {
        let durations = out.durations_of(&stage);
        assert_eq!(durations.len() as u64, p.count, "{stage}");
        let (_, sum, le) = cumulative(p);
        let exact_sum: u64 = durations.iter().sum();
        assert!((sum - exact_sum as f64 / 1e9).abs() < 1e-6, "{stage}");
        for ((_, n), &b) in le.iter().zip(&bounds_ns) {
            let at_or_below = durations.iter().filter(|&&d| d <= b).count() as u64;
            assert_eq!(*n, at_or_below, "{stage}: calls at or below {b} ns");
        }
    }
    let frames = histogram_points(&last, "adeline.frame.duration");
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].1.count, report["frames"].as_u64().unwrap());

    // The resource names the service, the host, the process and its
    // container and pod.
    let (resource, _) = metrics_named(&last, "adeline.stage.duration")[0];
    let r = &resource.as_ref().expect("a resource").attributes;
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    for (key, value) in [
        ("service.name", "vision-test".to_string()),
        ("host.name", hostname.trim().to_string()),
        ("process.pid", pid.to_string()),
        ("container.id", id.clone()),
        ("container.runtime", "containerd".into()),
        ("k8s.pod.uid", uid.clone()),
        ("k8s.namespace.name", "vision".into()),
        ("k8s.pod.name", "cam-3".into()),
    ] {
        assert_eq!(
            attr(r, key).as_deref(),
            Some(value.as_str()),
            "{key} in {r:?}"
        );
    }
    let rss = number_points(&last, "adeline.process.memory.resident");
    assert!(
        rss.iter()
            .any(|(a, v)| *v > 0.0 && attr(a, "k8s.pod.uid").as_deref() == Some(&uid)),
        "{rss:?}"
    );

    // Frames as traces: one trace per frame, the root with no parent, one
    // span per call, nested as the calls were.
    let traces = receiver.traces();
    let spans = all_spans(&traces);
    let mut per_stage: HashMap<&str, u64> = HashMap::new();
    for (_, s) in &spans {
        *per_stage.entry(s.name.as_str()).or_default() += 1;
    }
    for stage in DEMO_STAGES {
        assert_eq!(
            per_stage.get(stage).copied().unwrap_or(0),
            calls(stage),
            "spans of {stage}"
        );
    }
    let ids: HashMap<&[u8], &OtlpSpan> = spans
        .iter()
        .map(|(_, s)| (s.span_id.as_slice(), *s))
        .collect();
    let mut traces_seen = HashSet::new();
    for (_, s) in &spans {
        traces_seen.insert(s.trace_id.clone());
        if s.name == "process_frame" {
            assert!(s.parent_span_id.is_empty());
            assert_eq!(
                attr(&s.attributes, "k8s.pod.uid").as_deref(),
                Some(uid.as_str())
            );
            continue;
        }
        let parent = ids
            .get(s.parent_span_id.as_slice())
            .unwrap_or_else(|| panic!("{} has no parent", s.name));
        assert_eq!(parent.trace_id, s.trace_id);
        assert!(parent.start_time_unix_nano <= s.start_time_unix_nano);
        assert!(parent.end_time_unix_nano >= s.end_time_unix_nano);
        let expected: &[&str] = match s.name.as_str() {
            "infer_layer" => &["infer"],
            "refine" => &["postprocess", "refine"],
            _ => &["process_frame"],
        };
        assert!(
            expected.contains(&parent.name.as_str()),
            "{} under {}",
            s.name,
            parent.name
        );
    }
    assert_eq!(traces_seen.len() as u64, report["frames"].as_u64().unwrap());
    assert!(receiver.bad().is_empty(), "{:?}", receiver.bad());
    let total: u64 = per_stage.values().sum();
    assert!(
        out.stderr
            .contains(&format!("otlp_traces: {total} exported, 0 dropped")),
        "{}",
        out.stderr
    );
    drop(cgroup);
}

/// Runs the demo flat out under an agent exporting to `endpoint`; after
/// `run_for`, checks `/metrics` with `during`, then stops the demo and
/// returns the agent's output, the demo's report and how long the agent
/// took to stop.
fn trace_while_exporting(
    endpoint: &str,
    fps: &str,
    run_for: Duration,
    during: impl Fn(&str),
) -> (AgentOutput, Value, Duration) {
    let mut demo_args = vec!["--frames", "0", "--threads", "2", "--fps", fps];
    demo_args.extend(DEMO_NO_SLEEPS);
    let demo = Pipeline::demo(&demo_args);
    let port = free_port();
    let mut args = vec![
        "run".to_string(),
        "-p".into(),
        demo.pid().to_string(),
        "--frame-stage".into(),
        "process_frame".into(),
        "--api-port".into(),
        port.to_string(),
        "--otlp".into(),
        endpoint.to_string(),
        "--otlp-interval".into(),
        "200ms".into(),
        "--otlp-traces".into(),
        "1".into(),
    ];
    args.extend(demo_stage_args(&demo_bin()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut agent = Agent::spawn(&args);
    agent.wait_ready(Duration::from_secs(60));
    demo.go();
    std::thread::sleep(run_for);
    let (_, body) = http_get(port, "/metrics");
    during(&body);
    demo.signal(libc::SIGINT);
    let report = demo.wait(Duration::from_secs(30));
    let stopping = Instant::now();
    let status = agent.wait_exit(Duration::from_secs(30));
    let took = stopping.elapsed();
    let out = agent.output();
    assert!(status.success(), "{}", out.stderr);
    (out, report, took)
}

/// Tracing stayed exact: every call is a span, none lost in the kernel.
fn assert_tracing_exact(out: &AgentOutput, report: &Value) {
    for stage in DEMO_STAGES {
        assert_eq!(
            out.spans_of(stage).len() as u64,
            report["calls"][stage].as_u64().unwrap(),
            "spans of {stage}"
        );
    }
    let summary = out.summary().expect("summary");
    assert_eq!(summary["span_drops"], 0, "{summary}");
}

fn metric(body: &str, name: &str, output: &str) -> f64 {
    samples(body)
        .into_iter()
        .find(|(n, l, _)| n == name && l == &format!("output=\"{output}\""))
        .unwrap_or_else(|| panic!("no {name} of {output} in\n{body}"))
        .2
}

/// The outputs of the last `stats` object.
/// The `otlp_traces` entry of the last stats record's outputs.
fn last_traces_output(out: &AgentOutput) -> Value {
    out.of_type("stats")
        .last()
        .and_then(|s| s["outputs"].as_array().cloned())
        .expect("stats with outputs")
        .into_iter()
        .find(|o| o["output"] == "otlp_traces")
        .expect("an otlp_traces output")
}

#[test]
fn a_dead_collector_leaves_tracing_exact_and_counts_the_drops() {
    if !require_bpf() {
        return;
    }
    // Nothing listens on this port.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let (out, report, took) = trace_while_exporting(&dead, "200", Duration::from_secs(3), |body| {
        assert!(
            metric(body, "adeline_output_dropped_total", "otlp_traces") > 0.0,
            "{body}"
        );
        assert!(metric(body, "adeline_output_failed_exports_total", "otlp_metrics") > 0.0);
        assert_eq!(
            metric(body, "adeline_output_exported_total", "otlp_metrics"),
            0.0
        );
    });
    assert_tracing_exact(&out, &report);
    let traces = last_traces_output(&out);
    assert!(traces["dropped"].as_u64().unwrap() > 0, "{traces}");
    assert_eq!(traces["exported"], 0);
    assert!(
        out.stderr.contains("otlp_traces: 0 exported"),
        "{}",
        out.stderr
    );
    assert!(took < Duration::from_secs(10), "stopping took {took:?}");
}

#[test]
fn a_slow_collector_leaves_tracing_exact_and_counts_the_drops() {
    if !require_bpf() {
        return;
    }
    // Answers every request two seconds late: the trace queue fills up.
    let slow = OtlpReceiver::with_delay(Duration::from_secs(2));
    let (out, report, took) =
        trace_while_exporting(&slow.endpoint(), "1000", Duration::from_secs(4), |body| {
            assert!(
                metric(body, "adeline_output_dropped_total", "otlp_traces") > 0.0,
                "{body}"
            );
        });
    assert_tracing_exact(&out, &report);
    let traces = last_traces_output(&out);
    assert!(traces["dropped"].as_u64().unwrap() > 0, "{traces}");
    assert!(traces["exported"].as_u64().unwrap() > 0, "{traces}");
    // Every span is accounted for: what the receiver got was counted as
    // exported, or as dropped when the run ended during its request.
    let received = all_spans(&slow.traces()).len() as u64;
    let line: Vec<u64> = out
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("adeline-trace: otlp_traces: "))
        .map(|l| l.split(' ').filter_map(|w| w.parse().ok()).collect())
        .expect("the otlp_traces line");
    let (exported, dropped) = (line[0], line[1]);
    assert!(
        exported <= received && received <= exported + dropped,
        "received {received}; {}",
        out.stderr
    );
    assert!(took < Duration::from_secs(15), "stopping took {took:?}");
}
