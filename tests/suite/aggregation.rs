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
