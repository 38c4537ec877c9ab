//! Attach and detach at scale: 5,000 functions (10,000 uprobes) through
//! uprobe-multi links, exact counts on a known subset, a quick exit; exact
//! counts on the perf-event fallback.
use std::time::{Duration, Instant};

use adeline_trace_tests::*;

const T: Duration = Duration::from_secs(120);

/// The number before `suffix` in the first stderr line containing it.
fn ms_before(stderr: &str, suffix: &str) -> Option<u64> {
    let line = stderr.lines().find(|l| l.contains(suffix))?;
    let head = &line[..line.find(suffix)?];
    head.rsplit(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// `--stage a=FIXTURE:f0* ... --stage e=FIXTURE:f4*`: 1,000 functions each.
fn thousand_stages(fixture: &str) -> Vec<String> {
    ["a", "b", "c", "d", "e"]
        .iter()
        .enumerate()
        .flat_map(|(k, name)| ["--stage".to_string(), format!("{name}={fixture}:f{k}*")])
        .collect()
}

#[test]
fn five_thousand_functions_attach_and_detach_in_under_two_seconds() {
    if !require_bpf() {
        return;
    }
    let fixture = many_fixture().display().to_string();
    let stride = 7;
    let pipeline = Pipeline::many(stride);
    let pid = pipeline.pid().to_string();
    let mut args: Vec<String> = [
        "run",
        "--no-api",
        "--no-spans",
        "--max-probes",
        "5000",
        "-p",
    ]
    .map(String::from)
    .to_vec();
    args.push(pid);
    args.extend(thousand_stages(&fixture));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut agent = Agent::spawn(&args);
    let start = agent.wait_ready(T);
    let programs = bpf_prog_ids_of(agent.pid());
    assert_eq!(
        start["probes"].as_array().map(Vec::len),
        Some(MANY_FUNCTIONS),
        "{start}"
    );
    // One link per program (entry, return), file and stage (a SIGHUP
    // reload detaches one stage alone): 5 stages of the one file.
    let stages = thousand_stages(&fixture).len() / 2;
    assert_eq!(stages, 5);
    let mut want = vec!["uprobe_multi"; stages];
    want.extend(vec!["uretprobe_multi"; stages]);
    assert_eq!(
        bpf_link_types(agent.pid())
            .into_iter()
            .filter(|t| t.contains("probe"))
            .collect::<Vec<_>>(),
        want,
        "{}",
        agent.stderr_so_far()
    );
    pipeline.go();
    let report = pipeline.wait(T);
    let exited = Instant::now();
    // The traced process is gone: the agent stops by itself.
    let status = agent.wait_exit(T);
    let exit_took = exited.elapsed();
    let out = agent.output();
    assert!(status.success(), "{}", out.stderr);
    let expected = many_expected_calls(stride);
    assert_eq!(report["calls"], expected.iter().sum::<u64>());
    for (k, name) in ["a", "b", "c", "d", "e"].iter().enumerate() {
        let stage = out
            .summary_of(name)
            .unwrap_or_else(|| panic!("no summary for {name}: {}", out.stderr));
        assert_eq!(stage["count"], expected[k], "stage {name}: {stage}");
    }
    assert!(
        out.stderr.contains(", 0 dropped, 0 unmatched returns"),
        "{}",
        out.stderr
    );
    let attach_ms = ms_before(&out.stderr, " ms); tracing").expect("attach time");
    let detach_ms = ms_before(&out.stderr, " ms (programs off").expect("detach time");
    assert!(
        out.stderr
            .contains("adeline-trace: detached 10000 uprobes in"),
        "{}",
        out.stderr
    );
    eprintln!(
        "10,000 uprobes on 5,000 functions: attached in {attach_ms} ms, detached in {detach_ms} ms; agent exit {exit_took:?} after the process"
    );
    assert!(
        attach_ms + detach_ms < 2000,
        "attach {attach_ms} ms + detach {detach_ms} ms >= 2 s: {}",
        out.stderr
    );
    assert!(
        exit_took < Duration::from_secs(5),
        "the agent took {exit_took:?} to exit: {}",
        out.stderr
    );
    assert_eq!(
        wait_programs_unloaded(&programs, Duration::from_secs(5)),
        Vec::<u32>::new()
    );
}

/// The perf-event path (kernels without uprobe-multi) counts every call of
/// the demo pipeline exactly too.
#[test]
fn perf_event_fallback_counts_exactly() {
    if !require_bpf() {
        return;
    }
    let args = demo_run_args(
        &["--no-api", "--attach", "perf"],
        &["--frames", "10", "--threads", "2", "--recursion", "3"],
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut agent = Agent::spawn(&args);
    agent.wait_ready(T);
    let programs = bpf_prog_ids_of(agent.pid());
    agent.wait_exit(T);
    let out = agent.output();
    assert!(out.status.success(), "{}", out.stderr);
    assert!(
        out.stderr.contains("(perf-event, attached in"),
        "{}",
        out.stderr
    );
    let report = out.fixture_report().expect("fixture report").clone();
    for stage in DEMO_STAGES {
        assert_eq!(
            out.spans_of(stage).len() as u64,
            report["calls"][stage].as_u64().unwrap(),
            "spans of {stage}: {}",
            out.stderr
        );
    }
    assert!(out.stderr.contains("0 unmatched returns"), "{}", out.stderr);
    assert_eq!(
        wait_programs_unloaded(&programs, Duration::from_secs(5)),
        Vec::<u32>::new()
    );
}

/// The agent holds uprobe-multi links on this kernel, and perf links when
/// told to use perf events.
#[test]
fn attach_mode_shows_in_the_kernel() {
    if !require_bpf() {
        return;
    }
    let fixture = many_fixture().display().to_string();
    for (mode, expected) in [
        ("multi", vec!["uprobe_multi", "uretprobe_multi"]),
        ("perf", vec!["perf"; 4]),
    ] {
        let pipeline = Pipeline::many(1000);
        let pid = pipeline.pid().to_string();
        let stage = format!("s={fixture}:f000[01]");
        let mut agent = Agent::spawn(&[
            "run", "--no-api", "--memory", "off", "--attach", mode, "-p", &pid, "--stage", &stage,
        ]);
        agent.wait_ready(T);
        assert_eq!(bpf_link_types(agent.pid()), expected, "--attach {mode}");
        pipeline.go();
        pipeline.wait(T);
        let out = agent.output();
        assert!(out.status.success(), "{}", out.stderr);
        // f0000 is called once with stride 1000; f0001 not at all.
        assert_eq!(
            out.spans_of("s").len(),
            1,
            "--attach {mode}: {}",
            out.stderr
        );
    }
}
