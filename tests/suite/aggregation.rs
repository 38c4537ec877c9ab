//! In-kernel aggregation (`--no-spans --aggregate-above`): exact call
//! counts without a record per call, and percentiles that agree with the
//! span path's within the histogram's stated error (1/128 of the value),
//! measured on the same calls by two agents tracing one demo pipeline.
use std::time::Duration;

use adeline_trace_tests::*;
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(120);

/// An agent on `pid` timing every demo stage, started and ready.
fn agent_on(pid: u32, extra: &[&str]) -> Agent {
    let pid = pid.to_string();
    let stages = demo_stage_args(&demo_bin());
    let mut args: Vec<&str> = vec!["run", "--no-api", "-p", &pid];
    args.extend(stages.iter().map(String::as_str));
    args.extend(extra);
    let mut agent = Agent::spawn(&args);
    agent.wait_ready(TIMEOUT);
    agent
}

fn finished(mut agent: Agent) -> AgentOutput {
    let status = agent.wait_exit(TIMEOUT);
    let out = agent.output();
    assert!(status.success(), "agent failed: {}", out.stderr);
    out
}

#[test]
fn counts_are_exact_and_percentiles_match_the_spans() {
    if !require_bpf() {
        return;
    }
    let pipeline = Pipeline::demo(&["--frames", "80"]);
    let spans = agent_on(pipeline.pid(), &[]);
    let agg = agent_on(pipeline.pid(), &["--no-spans", "--aggregate-above", "0"]);
    pipeline.go();
    let report = pipeline.wait(TIMEOUT);
    let (spans, agg) = (finished(spans), finished(agg));
    assert_eq!(agg.spans().len(), 0);
    assert_eq!(agg.summary().unwrap()["spans"], 0, "no record per call");
    // The two agents' programs run one after the other at each probe, so
    // a call's two durations differ by up to a few microseconds.
    const SKEW_NS: f64 = 20_000.0;
    for stage in DEMO_STAGES {
        let calls = &report["calls"][stage];
        let (s, a): (&Value, &Value) = (
            spans.summary_of(stage).unwrap(),
            agg.summary_of(stage).unwrap(),
        );
        assert_eq!(&a["count"], calls, "{stage}: aggregated count");
        assert_eq!(&s["count"], calls, "{stage}: span count");
        for p in ["p50_ns", "p90_ns", "p99_ns", "mean_ns"] {
            let (sv, av) = (s[p].as_f64().unwrap(), a[p].as_f64().unwrap());
            // 1/128 for the aggregated bin, 0.1% for the span path's HDR.
            let tolerance = sv * (1.0 / 128.0 + 0.001) + SKEW_NS;
            assert!(
                (sv - av).abs() <= tolerance,
                "{stage} {p}: spans {sv} vs aggregated {av} (tolerance {tolerance})"
            );
        }
    }
}

#[test]
fn aggregate_above_needs_no_spans() {
    let out = Agent::run(
        &[
            "run",
            "--aggregate-above",
            "10",
            "--stage",
            "a=/bin/true:main",
            "--",
            "/bin/true",
        ],
        TIMEOUT,
    );
    assert!(!out.status.success());
    assert_eq!(
        out.error_line(),
        Some("error: --aggregate-above needs --no-spans, and no --trace-out or OTLP traces (they need a record per call)")
    );
}

/// tests/fixtures/aggregate/rates.c: `rates FAST_HZ SLOW_HZ SECONDS GO`.
fn rates_fixture() -> std::path::PathBuf {
    small_fixture("aggregate-rates", "aggregate/rates.c", "gcc", &["-O2"])
}

fn stage_arg(name: &str, bin: &std::path::Path) -> String {
    format!("{name}={}:{name}", bin.display())
}

/// A stage's summary count, and its calls counted in the kernel.
fn paths(out: &AgentOutput, stage: &str) -> (u64, u64) {
    let s = out
        .summary_of(stage)
        .unwrap_or_else(|| panic!("no {stage}"));
    (
        s["count"].as_u64().unwrap(),
        s["aggregated"].as_u64().unwrap(),
    )
}

#[test]
fn aggregate_above_splits_the_stages_by_call_rate() {
    if !require_bpf() {
        return;
    }
    let bin = rates_fixture();
    // fast: 8,000 calls/s, above 2,000 (and far above half of it, where an
    // aggregated stage falls back to records); slow: 50 calls/s.
    let pipeline = Pipeline::fixture(&bin, &["8000", "50", "3"]);
    let pid = pipeline.pid().to_string();
    let (fast, slow) = (stage_arg("fast", &bin), stage_arg("slow", &bin));
    let mut agent = Agent::spawn(&[
        "run",
        "--no-api",
        "-p",
        &pid,
        "--stage",
        &fast,
        "--stage",
        &slow,
        "--no-spans",
        "--aggregate-above",
        "2000",
    ]);
    agent.wait_ready(TIMEOUT);
    pipeline.go();
    let report = pipeline.wait(TIMEOUT);
    let out = finished(agent);
    let calls = |s: &str| report["calls"][s].as_u64().unwrap();
    let (fast_count, fast_kernel) = paths(&out, "fast");
    let (slow_count, slow_kernel) = paths(&out, "slow");
    assert_eq!(fast_count, calls("fast"), "{}", out.stderr);
    assert_eq!(slow_count, calls("slow"), "{}", out.stderr);
    // fast is aggregated once a second of its calls was seen: most of its
    // 3 s; slow never is.
    assert!(
        fast_kernel > 0 && fast_kernel >= fast_count / 3,
        "fast: {fast_kernel} of {fast_count} calls counted in the kernel"
    );
    assert_eq!(slow_kernel, 0, "slow's calls are records");
    // Every other call came as a record: the summary's span count.
    let summary = out.summary().unwrap();
    assert_eq!(
        summary["spans"].as_u64().unwrap(),
        slow_count + (fast_count - fast_kernel)
    );
    assert_eq!(summary["span_drops"], 0);
}

#[test]
fn stages_added_by_a_reload_are_aggregated_like_the_starts() {
    if !require_bpf() {
        return;
    }
    let bin = rates_fixture();
    let dir = scratch_dir("aggregate-reload");
    let config = dir.join("pipeline.toml");
    let toml = |names: &[&str]| -> String {
        names
            .iter()
            .map(|n| {
                format!(
                    "[[stage]]\nname = \"{n}\"\ntarget = \"{}\"\nsymbol = \"{n}\"\n",
                    bin.display()
                )
            })
            .collect()
    };
    std::fs::write(&config, toml(&["slow"])).unwrap();
    let pipeline = Pipeline::fixture(&bin, &["8000", "50", "3"]);
    // --aggregate-above 0: every stage aggregated from its first call, the
    // one a reload adds included.
    let mut agent = Agent::spawn(&[
        "run",
        "--no-api",
        "--config",
        config.to_str().unwrap(),
        "--no-spans",
        "--aggregate-above",
        "0",
    ]);
    agent.wait_ready(TIMEOUT);
    std::fs::write(&config, toml(&["slow", "fast"])).unwrap();
    // SAFETY: kill(2) on the agent we started.
    unsafe { libc::kill(agent.pid() as libc::pid_t, libc::SIGHUP) };
    let r = agent
        .wait_for_event(Duration::from_secs(10), |v| v["type"] == "reload")
        .expect("a reload record");
    assert_eq!(r["added"], serde_json::json!(["fast"]), "{r}");
    agent
        .wait_for_event(Duration::from_secs(10), |v| v["reason"] == "reload")
        .expect("the new stage's attach record");
    pipeline.go();
    let report = pipeline.wait(TIMEOUT);
    let out = agent.output();
    assert!(out.status.success(), "{}", out.stderr);
    assert!(!out.stderr.contains("warning"), "{}", out.stderr);
    for stage in ["slow", "fast"] {
        let calls = report["calls"][stage].as_u64().unwrap();
        assert_eq!(
            paths(&out, stage),
            (calls, calls),
            "{stage}: {}",
            out.stderr
        );
    }
    assert_eq!(out.summary().unwrap()["spans"], 0, "no record per call");
}
