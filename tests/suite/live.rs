//! Live metrics against the real demo pipeline: frames and their breakdown,
//! gauges, the HTTP API and `summary`, an alert on an injected latency step
//! (with its exec hook), and the `compare` regression gate.
use std::{
    path::Path,
    time::{Duration, Instant},
};

use adeline_trace_tests::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(120);

/// `run --frame-stage process_frame <all demo stages> EXTRA -- demo ARGS`.
fn run_demo(extra: &[&str], demo_args: &[&str]) -> AgentOutput {
    let mut extra = extra.to_vec();
    extra.extend(["--frame-stage", "process_frame"]);
    let args = demo_run_args(&extra, demo_args);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = Agent::run(&args, T);
    assert!(out.status.success(), "agent failed: {}", out.stderr);
    out
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"))
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn frames_fps_self_times_and_bottleneck() {
    if !require_bpf() {
        return;
    }
    let dir = scratch_dir("frames");
    let out_file = dir.join("summary.json");
    let out = run_demo(
        &[
            "--no-api",
            "--no-spans",
            "--summary-out",
            out_file.to_str().unwrap(),
        ],
        &["--frames", "60", "--fps", "20"],
    );
    let report = out.fixture_report().unwrap();
    let snap = read_json(&out_file);
    assert_eq!(snap["v"], 1);
    assert_eq!(snap["window"], "all");
    let frames = &snap["frames"];
    assert_eq!(frames["root"], "process_frame");
    assert_eq!(frames["count"], 60);
    // FPS: the fixture's own frames / elapsed, within 10%.
    let fixture_fps = 60.0 / (f(&report["elapsed_ns"]) / 1e9);
    assert!(
        (f(&frames["fps"]) / fixture_fps - 1.0).abs() < 0.10,
        "fps {} vs {fixture_fps}",
        frames["fps"]
    );
    // Frame latency: the stages' sleeps (5.9 ms) plus work, within +1.5 ms.
    let p50 = f(&frames["p50_ns"]);
    assert!((5_900_000.0..7_400_000.0).contains(&p50), "frame p50 {p50}");
    // Self times of all stages inside frames add up to the frame time.
    let stages = snap["stages"].as_array().unwrap();
    let share_sum: f64 = stages
        .iter()
        .filter_map(|s| s["frame_share"].as_f64())
        .sum();
    assert!((share_sum - 1.0).abs() < 0.02, "shares sum to {share_sum}");
    let self_sum: f64 = stages.iter().map(|s| f(&s["self_ns"])).sum();
    let root_total = f(&stages[0]["total_ns"]);
    assert!(
        (self_sum / root_total - 1.0).abs() < 0.02,
        "self {self_sum} vs frames {root_total}"
    );
    // infer has no sleep of its own: its self time is tiny; infer_layer
    // (3 x 1 ms of 5.9 ms) is the bottleneck.
    let share = |name: &str| f(&stages.iter().find(|s| s["stage"] == name).unwrap()["frame_share"]);
    assert!(share("infer") < 0.03, "infer share {}", share("infer"));
    assert!(
        (0.40..0.55).contains(&share("infer_layer")),
        "{}",
        share("infer_layer")
    );
    assert_eq!(snap["bottleneck"]["top_self_share"]["stage"], "infer_layer");
}

#[test]
fn gauges_record_arguments_and_return_values() {
    if !require_bpf() {
        return;
    }
    let demo = demo_bin().display().to_string();
    let dir = scratch_dir("gauges");
    let out_file = dir.join("summary.json");
    let out = run_demo(
        &[
            "--no-api",
            "--gauge",
            &format!("tracks={demo}:track:ret"),
            "--gauge",
            &format!("published={demo}:publish:arg1"),
            "--summary-out",
            out_file.to_str().unwrap(),
        ],
        &["--frames", "10"],
    );
    // track returns 3 + frame % 5 and publish gets it as argument 1.
    let want: Vec<i64> = (0..10).map(|i| 3 + i % 5).collect();
    for gauge in ["tracks", "published"] {
        let values: Vec<i64> = out
            .of_type("gauge")
            .iter()
            .filter(|g| g["gauge"] == gauge)
            .map(|g| g["value"].as_i64().unwrap())
            .collect();
        assert_eq!(values, want, "{gauge}");
        let g = read_json(&out_file)["gauges"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["gauge"] == gauge)
            .unwrap()
            .clone();
        assert_eq!(g["count"], 10);
        assert_eq!(g["last"], 7);
        assert_eq!(g["min"], 3);
        assert_eq!(g["max"], 7);
        assert_eq!(g["mean"], 5.0);
    }
}

/// An agent tracing a demo launched with `-- demo ARGS`, its API on a free port.
struct Live {
    agent: Agent,
    port: u16,
}

fn live(extra: &[&str], demo_args: &[&str]) -> Live {
    let port = free_port();
    let port_arg = port.to_string();
    let mut extra = extra.to_vec();
    extra.extend(["--frame-stage", "process_frame", "--api-port", &port_arg]);
    let args = demo_run_args(&extra, demo_args);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut agent = Agent::spawn(&args);
    agent.wait_ready(Duration::from_secs(30));
    Live { agent, port }
}

#[test]
fn api_serves_summary_stages_alerts_and_errors() {
    if !require_bpf() {
        return;
    }
    let l = live(&["--no-spans"], &["--frames", "0", "--fps", "50"]);
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(http_json(l.port, "/healthz")["status"], "ok");
    let snap = http_json(l.port, "/api/summary?window=1s");
    assert_eq!(snap["v"], 1);
    assert_eq!(snap["window"], "1s");
    assert_eq!(snap["stages"].as_array().unwrap().len(), DEMO_STAGES.len());
    assert_eq!(snap["drops"], 0);
    let decode = &snap["stages"][1];
    assert_eq!(decode["stage"], "decode");
    assert!((40.0..=60.0).contains(&f(&decode["rate_hz"])), "{decode}");
    assert!(
        (1_000_000.0..1_600_000.0).contains(&f(&decode["p50_ns"])),
        "{decode}"
    );
    for field in [
        "count", "min_ns", "mean_ns", "p90_ns", "p95_ns", "p99_ns", "p999_ns", "max_ns",
        "total_ns", "self_ns",
    ] {
        assert!(decode[field].is_u64(), "{field}: {decode}");
    }
    assert!(
        (40.0..=60.0).contains(&f(&snap["frames"]["fps"])),
        "{}",
        snap["frames"]
    );
    let stage = http_json(l.port, "/api/stages/infer_layer?window=10s");
    assert_eq!(stage["stage"], "infer_layer");
    assert!(f(&stage["rate_hz"]) > 100.0, "{stage}");
    assert_eq!(
        http_json(l.port, "/api/alerts"),
        serde_json::json!({"alerts": []})
    );
    let (status, body) = http_get(l.port, "/api/stages/nope");
    assert_eq!(status, 404, "{body}");
    assert!(serde_json::from_str::<Value>(&body).unwrap()["error"].is_string());
    let (status, body) = http_get(l.port, "/api/summary?window=5m");
    assert_eq!(status, 400, "{body}");
    assert!(serde_json::from_str::<Value>(&body).unwrap()["error"].is_string());

    // `summary` prints the same stages as a table.
    let table = std::process::Command::new(agent_bin())
        .args([
            "summary",
            "--api-port",
            &l.port.to_string(),
            "--window",
            "10s",
        ])
        .output()
        .unwrap();
    assert!(
        table.status.success(),
        "{}",
        String::from_utf8_lossy(&table.stderr)
    );
    let text = String::from_utf8(table.stdout).unwrap();
    for stage in DEMO_STAGES {
        assert!(
            text.lines()
                .any(|l| l.split_whitespace().next() == Some(stage)),
            "{stage} in\n{text}"
        );
    }
    let json = std::process::Command::new(agent_bin())
        .args(["summary", "--json", "--api-port", &l.port.to_string()])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["window"], "10s");
    drop(l);
}

#[test]
fn api_on_a_unix_socket_only_root_can_use() {
    if !require_bpf() {
        return;
    }
    let dir = scratch_dir("sock");
    let sock = dir.join("agent.sock");
    let l = live(
        &["--no-spans", "--api-socket", sock.to_str().unwrap()],
        &["--frames", "0", "--fps", "50"],
    );
    std::thread::sleep(Duration::from_millis(1500));
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let meta = std::fs::metadata(&sock).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let out = std::process::Command::new(agent_bin())
        .args([
            "summary",
            "--json",
            "--window",
            "1s",
            "--api-socket",
            sock.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["window"], "1s");
    assert!(
        (40.0..=60.0).contains(&f(&v["frames"]["fps"])),
        "{}",
        v["frames"]
    );
    let out = l.agent.output();
    assert!(out.status.success(), "{}", out.stderr);
    assert!(!sock.exists(), "the socket is removed at exit");
}

#[test]
fn summary_without_an_agent_says_how_to_start_one() {
    let port = free_port();
    let out = std::process::Command::new(agent_bin())
        .args(["summary", "--api-port", &port.to_string()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        err.trim_end(),
        format!("error: no adeline-trace agent is listening on 127.0.0.1:{port}: start one with 'adeline-trace run ...' (or pass --api-port/--api-socket)")
    );
}

#[test]
fn a_latency_step_fires_an_alert_that_resolves() {
    if !require_bpf() {
        return;
    }
    let dir = scratch_dir("alert");
    let control = dir.join("control");
    let hook_out = dir.join("hook.jsonl");
    write_control_file(&control, "# defaults\n");
    let config = dir.join("pipeline.toml");
    std::fs::write(
        &config,
        format!(
            "[[alert]]\nrule = \"p99(decode) > 10ms for 2s\"\nexec = \"cat >> {}\"\n",
            hook_out.display()
        ),
    )
    .unwrap();
    let mut l = live(
        &["--no-spans", "--config", config.to_str().unwrap()],
        &[
            "--frames",
            "0",
            "--fps",
            "40",
            "--control-file",
            control.to_str().unwrap(),
        ],
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        http_json(l.port, "/api/alerts")["alerts"],
        serde_json::json!([])
    );
    // Step: decode goes from 1 ms to 16 ms.
    write_control_file(&control, "decode=16000\n");
    let step = Instant::now();
    // Within a second the 1 s window's p99 of decode grows against the
    // second before it: the bottleneck report names it.
    // The step is 16x; the earlier second's p99 can hold one scheduling
    // outlier of a few ms on a loaded 2-core machine, so require only that
    // decode is named, at >= 16 ms, and more than doubled.
    let growth = poll_growth(l.port, Duration::from_secs(3));
    assert_eq!(growth["stage"], "decode", "{growth}");
    assert!(f(&growth["p99_ns"]) >= 16_000_000.0, "{growth}");
    assert!(f(&growth["ratio"]) > 2.0, "{growth}");
    let fired = wait_for(&mut l, Duration::from_secs(10), |a| a["state"] == "firing");
    let after = step.elapsed();
    // Fires once the condition has held 2 s, within 2 s more.
    assert!(
        after >= Duration::from_secs(2) && after <= Duration::from_secs(4),
        "fired after {after:?}"
    );
    assert_eq!(fired["rule"], "p99(decode) > 10ms for 2s");
    assert!(f(&fired["value"]) >= 16_000_000.0, "{fired}");
    assert_eq!(f(&fired["threshold"]), 10_000_000.0);
    let active = http_json(l.port, "/api/alerts");
    assert_eq!(active["alerts"][0]["rule"], "p99(decode) > 10ms for 2s");
    let one_s = http_json(l.port, "/api/summary?window=1s");
    assert!(
        f(&one_s["stages"][1]["p99_ns"]) >= 16_000_000.0,
        "{}",
        one_s["stages"][1]
    );
    // Remove the step: it resolves.
    write_control_file(&control, "# defaults again\n");
    let resolved = wait_for(&mut l, Duration::from_secs(10), |a| {
        a["state"] == "resolved"
    });
    assert_eq!(resolved["rule"], "p99(decode) > 10ms for 2s");
    std::thread::sleep(Duration::from_millis(500));
    let out = l.agent.output();
    assert!(out.status.success(), "{}", out.stderr);
    let alerts = out.of_type("alert");
    assert_eq!(alerts.len(), 2, "fires once, resolves once: {alerts:?}");
    // The hook got both transitions as JSON.
    let hook: Vec<Value> = read_jsonl(&hook_out);
    let states: Vec<&str> = hook.iter().map(|h| h["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["firing", "resolved"]);
}

/// Polls the 1 s window until its bottleneck names `decode`'s p99 growth
/// (small growths of other stages from noise may come first).
fn poll_growth(port: u16, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let snap = http_json(port, "/api/summary?window=1s");
        let growth = &snap["bottleneck"]["p99_growth"];
        if growth["stage"] == "decode" {
            return growth.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no p99 growth reported: {}",
            snap["bottleneck"]
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Reads the agent's stdout until an `alert` event matches.
fn wait_for(l: &mut Live, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
    l.agent
        .wait_for_event(timeout, |v| v["type"] == "alert" && pred(v))
        .unwrap_or_else(|| panic!("no matching alert within {timeout:?}"))
}

#[test]
fn compare_gates_on_regressions() {
    if !require_bpf() {
        return;
    }
    let dir = scratch_dir("compare");
    let base = dir.join("base.json");
    let slow = dir.join("slow.json");
    run_demo(
        &[
            "--no-api",
            "--no-spans",
            "--summary-out",
            base.to_str().unwrap(),
        ],
        &["--frames", "30"],
    );
    run_demo(
        &[
            "--no-api",
            "--no-spans",
            "--summary-out",
            slow.to_str().unwrap(),
        ],
        &["--frames", "30", "--sleep-us", "decode=2000"],
    );
    let compare = |a: &Path, b: &Path, extra: &[&str]| {
        let out = std::process::Command::new(agent_bin())
            .arg("compare")
            .arg(a)
            .arg(b)
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, table, _) = compare(
        &base,
        &slow,
        &["--max-regression", "10%", "--metric", "p50"],
    );
    assert_eq!(code, Some(1), "{table}");
    let row = table
        .lines()
        .find(|l| l.split_whitespace().next() == Some("decode"))
        .unwrap();
    assert!(row.contains("REGRESSION"), "{row}");
    let row = table
        .lines()
        .find(|l| l.split_whitespace().next() == Some("publish"))
        .unwrap();
    assert!(row.contains("OK"), "{row}");
    let (code, _, _) = compare(&base, &base, &[]);
    assert_eq!(code, Some(0));
    // Faster is never a regression.
    let (code, _, _) = compare(&slow, &base, &["--metric", "p50"]);
    assert_eq!(code, Some(0));
    let junk = dir.join("junk.json");
    std::fs::write(&junk, "not json").unwrap();
    let (code, _, err) = compare(&base, &junk, &[]);
    assert_eq!(code, Some(2));
    assert!(
        err.starts_with("error: ") && err.lines().count() == 1,
        "{err}"
    );
}

#[test]
fn baseline_rules_compare_with_an_earlier_run() {
    if !require_bpf() {
        return;
    }
    let dir = scratch_dir("baseline");
    let base = dir.join("base.json");
    run_demo(
        &[
            "--no-api",
            "--no-spans",
            "--summary-out",
            base.to_str().unwrap(),
        ],
        &["--frames", "20"],
    );
    // Same pipeline with decode twice as slow: p50(decode) > 1.5 x baseline.
    let out = run_demo(
        &[
            "--no-api",
            "--no-spans",
            "--alert-baseline",
            base.to_str().unwrap(),
            "--alert",
            "p50(decode) > 1.5 * baseline for 500ms",
            "--alert",
            "p50(publish) > 1.5 * baseline",
            "--duration",
            "3s",
        ],
        &["--frames", "0", "--fps", "40", "--sleep-us", "decode=2000"],
    );
    let fired: Vec<&Value> = out.of_type("alert");
    assert_eq!(fired.len(), 1, "only decode regressed: {fired:?}");
    assert_eq!(fired[0]["rule"], "p50(decode) > 1.5 * baseline for 500ms");
    let base_p50 = f(&read_json(&base)["stages"][1]["p50_ns"]);
    assert!(
        (f(&fired[0]["threshold"]) - 1.5 * base_p50).abs() < 1.0,
        "{}",
        fired[0]
    );
    assert!(f(&fired[0]["value"]) >= 2_000_000.0, "{}", fired[0]);
}

#[test]
fn trace_out_writes_a_chrome_trace_matching_the_spans() {
    if !require_bpf() {
        return;
    }
    let dir = scratch_dir("trace");
    let trace = dir.join("trace.json");
    let out = run_demo(
        &["--no-api", "--trace-out", trace.to_str().unwrap()],
        &["--frames", "12", "--threads", "2"],
    );
    let events: Value = read_json(&trace);
    let events = events.as_array().expect("the JSON array trace format");
    let complete: Vec<&Value> = events.iter().filter(|e| e["ph"] == "X").collect();
    // One complete event per span on the JSON stream, same stages.
    assert_eq!(complete.len(), out.spans().len());
    for stage in DEMO_STAGES {
        let n = complete.iter().filter(|e| e["name"] == stage).count();
        assert_eq!(n, out.spans_of(stage).len(), "{stage}");
    }
    // Frame roots are their own category; 12 frames on each of 2 threads.
    let frames: Vec<&&Value> = complete.iter().filter(|e| e["cat"] == "frame").collect();
    assert_eq!(frames.len(), 24);
    assert!(frames.iter().all(|e| e["name"] == "process_frame"));
    // One named track per thread.
    let mut tids: Vec<u64> = complete
        .iter()
        .map(|e| e["tid"].as_u64().unwrap())
        .collect();
    tids.sort_unstable();
    tids.dedup();
    let named: Vec<u64> = events
        .iter()
        .filter(|e| e["name"] == "thread_name")
        .map(|e| e["tid"].as_u64().unwrap())
        .collect();
    assert_eq!(named, tids);
    assert_eq!(tids.len(), 2);
    // Durations are the spans' in microseconds.
    let decode_us: f64 = complete
        .iter()
        .filter(|e| e["name"] == "decode")
        .map(|e| f(&e["dur"]))
        .sum();
    let decode_ns: u64 = out.durations_of("decode").iter().sum();
    assert!((decode_us * 1000.0 - decode_ns as f64).abs() < 1.0 * complete.len() as f64);
}
