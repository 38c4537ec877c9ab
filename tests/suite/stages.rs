//! Stage tracing against the real demo pipeline: exact call counts, timing,
//! nesting and recursion, threads, the pid filter, the kernel min-duration
//! filter, and the summary against the spans.
use std::{collections::BTreeMap, time::Duration};

use adeline_trace_tests::*;
use serde_json::Value;

const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// `run <all demo stages> EXTRA -- demo DEMO_ARGS`, to the end.
fn trace_demo(extra: &[&str], demo_args: &[&str]) -> AgentOutput {
    let args = demo_run_args(extra, demo_args);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = Agent::run(&args, RUN_TIMEOUT);
    assert!(out.status.success(), "agent failed: {}", out.stderr);
    assert!(
        out.non_json.is_empty(),
        "non-JSON stdout: {:?}",
        out.non_json
    );
    out
}

fn span_counts(out: &AgentOutput) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for s in out.spans() {
        *counts
            .entry(s["stage"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    counts
}

/// Asserts one span per call the fixture made, stage by stage; returns the counts.
fn assert_span_counts_match(out: &AgentOutput, report: &Value) -> BTreeMap<String, u64> {
    let counts = span_counts(out);
    for stage in DEMO_STAGES {
        let expected = report["calls"][stage].as_u64().unwrap();
        assert_eq!(
            counts.get(stage).copied().unwrap_or(0),
            expected,
            "stage {stage}"
        );
    }
    counts
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

#[test]
fn command_mode_counts_every_call_exactly() {
    if !require_bpf() {
        return;
    }
    let out = trace_demo(&[], &["--frames", "40"]);
    let report = out
        .fixture_report()
        .expect("fixture report on shared stdout");
    assert_span_counts_match(&out, report);
    for stage in DEMO_STAGES {
        assert_eq!(
            out.summary_of(stage).unwrap()["count"],
            report["calls"][stage],
            "summary {stage}"
        );
    }
    // 3 infer_layer calls and 3 refine levels per frame.
    assert_eq!(report["calls"]["infer_layer"], 120);
    assert_eq!(report["calls"]["refine"], 120);
    let pid = report["pid"].as_u64().unwrap();
    assert!(out.spans().iter().all(|s| s["pid"] == pid));
    assert_eq!(out.start().unwrap()["pids"], serde_json::json!([pid]));
    assert!(
        out.stderr.contains("stopped (command exited)"),
        "{}",
        out.stderr
    );
    let summary = out.summary().unwrap();
    assert_eq!(summary["drops"], 0);
    assert_eq!(summary["spans"], out.spans().len() as u64);
    // Events also count the memory-mapping records of the launched command.
    assert!(
        summary["events"].as_u64() >= summary["spans"].as_u64(),
        "{summary}"
    );
}

#[test]
fn durations_match_the_fixture_sleeps() {
    if !require_bpf() {
        return;
    }
    // Tolerance: every call lasts at least its sleep; the median is within
    // +0.5 ms of it (the fixture's CPU work is ~10 us; the rest is timer
    // and scheduling overshoot on a loaded 2-core machine).
    const SLACK_NS: u64 = 500_000;
    let out = trace_demo(&[], &["--frames", "30"]);
    let report = out.fixture_report().unwrap();
    for stage in ["decode", "preprocess", "infer_layer", "track", "publish"] {
        let sleep_ns = report["sleep_us"][stage].as_u64().unwrap() * 1000;
        let durs = out.durations_of(stage);
        assert!(
            durs.iter().all(|&d| d >= sleep_ns),
            "{stage}: {durs:?} < {sleep_ns}"
        );
        let m = median(durs);
        assert!(
            m <= sleep_ns + SLACK_NS,
            "{stage}: median {m} vs sleep {sleep_ns}"
        );
    }
    // infer contains its 3 traced infer_layer calls.
    let layer_ns = report["sleep_us"]["infer_layer"].as_u64().unwrap() * 1000;
    let infer = median(out.durations_of("infer"));
    assert!(
        infer >= 3 * layer_ns && infer <= 3 * layer_ns + 2 * SLACK_NS,
        "infer {infer}"
    );
    // The frame contains every stage's sleep.
    let frame_sleep: u64 = ["decode", "preprocess", "postprocess", "track", "publish"]
        .iter()
        .map(|s| report["sleep_us"][s].as_u64().unwrap() * 1000)
        .sum::<u64>()
        + 3 * layer_ns
        + 3 * report["sleep_us"]["refine"].as_u64().unwrap() * 1000;
    let frame = median(out.durations_of("process_frame"));
    assert!(
        frame >= frame_sleep && frame <= frame_sleep + 4 * SLACK_NS,
        "frame {frame} vs {frame_sleep}"
    );
}

/// Spans of one thread, ordered by start.
fn spans_by_start(out: &AgentOutput) -> Vec<&Value> {
    let mut spans = out.spans();
    spans.sort_by_key(|s| s["ts_ns"].as_u64().unwrap());
    spans
}

fn end(s: &Value) -> u64 {
    s["ts_ns"].as_u64().unwrap() + s["dur_ns"].as_u64().unwrap()
}

#[test]
fn nesting_and_recursion_time_each_level() {
    if !require_bpf() {
        return;
    }
    let out = trace_demo(&[], &["--frames", "10", "--recursion", "4"]);
    let refine_ns = out.fixture_report().unwrap()["sleep_us"]["refine"]
        .as_u64()
        .unwrap()
        * 1000;
    let spans = spans_by_start(&out);
    let frames: Vec<&&Value> = spans
        .iter()
        .filter(|s| s["stage"] == "process_frame")
        .collect();
    assert_eq!(frames.len(), 10);
    for frame in frames {
        assert_eq!(frame["depth"], 0);
        let inside: Vec<&&Value> = spans
            .iter()
            .filter(|s| s["ts_ns"].as_u64() >= frame["ts_ns"].as_u64() && end(s) <= end(frame))
            .filter(|s| s["stage"] != "process_frame")
            .collect();
        // 6 stages + 3 layers + 4 refine levels, all inside the frame.
        assert_eq!(inside.len(), 13, "frame at {}", frame["ts_ns"]);
        for s in &inside {
            let want = match s["stage"].as_str().unwrap() {
                "infer_layer" => 2,
                "refine" => continue,
                _ => 1,
            };
            assert_eq!(s["depth"], want, "{s}");
        }
        // refine(4) at depth 2 contains refine(3) at depth 3, ... down to depth 5.
        let mut refine: Vec<&&&Value> = inside.iter().filter(|s| s["stage"] == "refine").collect();
        refine.sort_by_key(|s| s["depth"].as_u64().unwrap());
        let depths: Vec<u64> = refine
            .iter()
            .map(|s| s["depth"].as_u64().unwrap())
            .collect();
        assert_eq!(depths, [2, 3, 4, 5]);
        for (i, r) in refine.iter().enumerate() {
            let levels = 4 - i as u64;
            let d = r["dur_ns"].as_u64().unwrap();
            assert!(d >= levels * refine_ns, "refine level {levels}: {d}");
            if let Some(inner) = refine.get(i + 1) {
                assert!(inner["ts_ns"].as_u64() >= r["ts_ns"].as_u64() && end(inner) <= end(r));
                assert!(d > inner["dur_ns"].as_u64().unwrap() + refine_ns);
            }
        }
    }
    assert!(
        out.stderr.contains(", 0 unmatched returns"),
        "{}",
        out.stderr
    );
}

#[test]
fn every_thread_is_timed_separately() {
    if !require_bpf() {
        return;
    }
    let out = trace_demo(&[], &["--frames", "15", "--threads", "4"]);
    let report = out.fixture_report().unwrap();
    assert_eq!(report["frames"], 60);
    assert_span_counts_match(&out, report);
    let mut per_tid: BTreeMap<u64, u64> = BTreeMap::new();
    for s in out.spans_of("process_frame") {
        *per_tid.entry(s["tid"].as_u64().unwrap()).or_default() += 1;
    }
    assert_eq!(per_tid.len(), 4, "{per_tid:?}");
    assert!(per_tid.values().all(|&n| n == 15), "{per_tid:?}");
    // Nesting is per thread: infer_layer is always at depth 2 even with 4
    // threads interleaving.
    assert!(out.spans_of("infer_layer").iter().all(|s| s["depth"] == 2));
}

#[test]
fn pid_filter_excludes_a_second_process_of_the_same_binary() {
    if !require_bpf() {
        return;
    }
    let traced = Pipeline::demo(&["--frames", "20"]);
    let traced_pid = traced.pid();
    let other = Pipeline::demo(&["--frames", "25"]);
    let demo = demo_bin();
    let mut args: Vec<String> = vec!["run".into(), "-p".into(), traced.pid().to_string()];
    args.extend(demo_stage_args(&demo));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut agent = Agent::spawn(&args);
    let start = agent.wait_ready(Duration::from_secs(30));
    assert_eq!(start["pids"], serde_json::json!([traced.pid()]));
    traced.go();
    other.go();
    let traced_report = traced.wait(RUN_TIMEOUT);
    let other_report = other.wait(RUN_TIMEOUT);
    // The agent ends by itself when its only pid has exited.
    agent.wait_exit(Duration::from_secs(10));
    let out = agent.output();
    assert!(out.status.success(), "{}", out.stderr);
    assert!(
        out.stderr.contains("stopped (traced processes exited)"),
        "{}",
        out.stderr
    );
    assert!(out.spans().iter().all(|s| s["pid"] == traced_pid));
    assert_span_counts_match(&out, &traced_report);
    assert_eq!(other_report["calls"]["decode"], 25);
}

#[test]
fn min_duration_filters_short_calls_in_the_kernel() {
    if !require_bpf() {
        return;
    }
    // With 10 ms layers, infer (~30 ms) and process_frame (~33 ms) are the
    // only stages above 20 ms; every other stage sleeps at most 1 ms.
    let out = trace_demo(
        &["--min-duration", "20ms", "--stats-interval", "100ms"],
        &["--frames", "10", "--sleep-us", "infer_layer=10000"],
    );
    let counts = span_counts(&out);
    assert_eq!(
        counts.keys().collect::<Vec<_>>(),
        ["infer", "process_frame"]
    );
    assert_eq!(counts["infer"], 10);
    assert_eq!(counts["process_frame"], 10);
    assert!(out
        .spans()
        .iter()
        .all(|s| s["dur_ns"].as_u64().unwrap() >= 20_000_000));
    // Filtered calls are counted, not lost: 10 x (13 - 2) = 110.
    let last = *out.of_type("stats").last().expect("stats events");
    assert_eq!(last["filtered_total"], 110, "{last}");
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[u64], q: f64) -> u64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).max(1);
    sorted[rank - 1]
}

#[test]
fn summary_matches_the_spans_and_schema_holds() {
    if !require_bpf() {
        return;
    }
    let out = trace_demo(
        &["--stats-interval", "200ms"],
        &["--frames", "60", "--fps", "100"],
    );
    // Schema: every line versioned and typed; start first, summary last.
    let ours = out.lines.iter().filter(|l| l.get("fixture").is_none());
    assert!(ours.clone().all(|l| l["v"] == 1), "unversioned line");
    let types: Vec<&str> = ours.map(|l| l["type"].as_str().unwrap()).collect();
    assert_eq!(types.first(), Some(&"start"));
    assert_eq!(types.last(), Some(&"summary"));
    assert!(types
        .iter()
        .all(|t| ["start", "attach", "span", "stats", "memory", "summary"].contains(t)));
    assert!(types.contains(&"stats"));
    for s in out.spans() {
        for field in ["ts_ns", "pid", "tid", "dur_ns", "self_ns", "depth"] {
            assert!(s[field].is_u64(), "span field {field}: {s}");
        }
        assert!(s["stage"].is_string());
        assert_eq!(s.as_object().unwrap().len(), 9, "span fields: {s}");
        assert!(s["self_ns"].as_u64() <= s["dur_ns"].as_u64());
    }
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let first_ts = out.spans()[0]["ts_ns"].as_u64().unwrap();
    assert!(
        now_ns - first_ts < 120_000_000_000,
        "ts_ns is wall clock: {first_ts}"
    );
    for stage in DEMO_STAGES {
        let mut durs = out.durations_of(stage);
        durs.sort_unstable();
        let s = out.summary_of(stage).unwrap();
        assert_eq!(s["count"], durs.len() as u64);
        assert_eq!(s["min_ns"], durs[0]);
        assert_eq!(s["max_ns"], *durs.last().unwrap());
        let mean = durs.iter().sum::<u64>() / durs.len() as u64;
        assert_eq!(s["mean_ns"], mean, "{stage}");
        for (field, q) in [("p50_ns", 0.5), ("p90_ns", 0.9), ("p99_ns", 0.99)] {
            let exact = percentile(&durs, q) as f64;
            let got = s[field].as_u64().unwrap() as f64;
            assert!(
                (got - exact).abs() <= exact * 0.001 + 1.0,
                "{stage} {field}: {got} vs {exact}"
            );
        }
    }
    // The human table on stderr has a row per stage with the same count.
    for stage in DEMO_STAGES {
        let row = out
            .stderr
            .lines()
            .find(|l| l.split_whitespace().next() == Some(stage))
            .unwrap();
        assert_eq!(
            row.split_whitespace().nth(1).unwrap(),
            out.summary_of(stage).unwrap()["count"].to_string()
        );
    }
}

#[test]
fn output_file_and_duration() {
    if !require_bpf() {
        return;
    }
    let dir = scratch_dir("out");
    let file = dir.join("events.jsonl");
    let pipeline = Pipeline::demo(&["--frames", "0", "--fps", "50"]);
    let demo = demo_bin();
    let mut args: Vec<String> = vec![
        "run".into(),
        "--stage".into(),
        format!("decode={}:decode", demo.display()),
        "--duration".into(),
        "1500ms".into(),
        "-o".into(),
        file.display().to_string(),
    ];
    args.extend(["-p".into(), pipeline.pid().to_string()]);
    pipeline.go();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let t0 = std::time::Instant::now();
    let out = Agent::run(&args, RUN_TIMEOUT);
    let took = t0.elapsed();
    assert!(out.status.success(), "{}", out.stderr);
    assert!(out.lines.is_empty(), "events went to the file, not stdout");
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(10),
        "{took:?}"
    );
    assert!(
        out.stderr.contains("stopped (duration reached)"),
        "{}",
        out.stderr
    );
    let lines = read_jsonl(&file);
    let spans = lines.iter().filter(|l| l["type"] == "span").count() as u64;
    // 50 fps for ~1.5 s.
    assert!((50..=90).contains(&spans), "{spans} spans");
    let summary = lines.last().unwrap();
    assert_eq!(summary["type"], "summary");
    assert_eq!(summary["stages"][0]["count"], spans);
    pipeline.signal(libc::SIGTERM);
    pipeline.wait(RUN_TIMEOUT);
}

#[test]
fn duration_ends_a_launched_command_without_losing_its_last_calls() {
    if !require_bpf() {
        return;
    }
    let out = trace_demo(&["--duration", "1s"], &["--frames", "0", "--fps", "50"]);
    assert!(
        out.stderr.contains("stopped (duration reached)"),
        "{}",
        out.stderr
    );
    let report = out.fixture_report().expect("fixture report");
    assert_eq!(report["stopped_by_signal"], true);
    let counts = assert_span_counts_match(&out, report);
    assert!(counts["process_frame"] >= 40, "{counts:?}");
}

#[test]
fn default_scope_traces_every_process_running_the_target() {
    if !require_bpf() {
        return;
    }
    let demo = demo_bin();
    let stage = format!("decode={}:decode", demo.display());
    let mut agent = Agent::spawn(&["run", "--stage", &stage]);
    let start = agent.wait_ready(Duration::from_secs(30));
    assert_eq!(start["pids"], serde_json::json!([]));
    // Two processes started after the agent: both are traced.
    let a = Pipeline::demo(&["--frames", "7"]);
    let b = Pipeline::demo(&["--frames", "11"]);
    let (pid_a, pid_b) = (a.pid(), b.pid());
    a.go();
    b.go();
    a.wait(RUN_TIMEOUT);
    b.wait(RUN_TIMEOUT);
    let out = agent.output();
    assert!(out.status.success(), "{}", out.stderr);
    assert!(
        out.stderr.contains("stopped (signal SIGINT)"),
        "{}",
        out.stderr
    );
    let of = |pid: u32| out.spans().iter().filter(|s| s["pid"] == pid).count();
    assert_eq!(of(pid_a), 7);
    assert_eq!(of(pid_b), 11);
}

#[test]
fn a_full_ring_buffer_loses_nothing_silently() {
    if !require_bpf() {
        return;
    }
    // A one-page ring and a pipeline with no sleeps: the agent (draining
    // every 10 ms) cannot keep up, so records are lost. Every lost record
    // must be counted: spans + drops == the calls the fixture made.
    let mut owned: Vec<String> = ["--frames", "2000", "--frame-bytes", "1024"]
        .map(String::from)
        .to_vec();
    for s in [
        "decode",
        "preprocess",
        "infer_layer",
        "postprocess",
        "refine",
        "track",
        "publish",
    ] {
        owned.push("--sleep-us".into());
        owned.push(format!("{s}=0"));
    }
    let demo_args: Vec<&str> = owned.iter().map(String::as_str).collect();
    let out = trace_demo(&["--ring-bytes", "4096"], &demo_args);
    let report = out.fixture_report().unwrap();
    let calls: u64 = DEMO_STAGES
        .iter()
        .map(|s| report["calls"][s].as_u64().unwrap())
        .sum();
    let summary = out.summary().unwrap();
    // Spans lost are counted apart from the memory records lost, so the
    // spans stay exactly accountable.
    let drops = summary["span_drops"].as_u64().unwrap();
    assert!(drops > 0, "the test needs a full ring: {summary}");
    assert!(summary["drops"].as_u64().unwrap() >= drops, "{summary}");
    assert_eq!(out.spans().len() as u64, summary["spans"].as_u64().unwrap());
    assert_eq!(out.spans().len() as u64 + drops, calls);
    let all_drops = summary["drops"].as_u64().unwrap();
    assert!(
        out.stderr.contains(&format!("{all_drops} dropped")),
        "{}",
        out.stderr
    );
}
