//! Exceptions, Rust panics and thread cancellation through traced
//! functions (docs/unwind.md): the traced program prints exactly what it
//! prints untraced, every call gives exactly one span (normal +
//! exception-marked = calls made), and spans last what the code sleeps.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use adeline_trace_tests::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(120);
/// Every traced call in the fixtures sleeps at least this long (its own
/// sleep or that of a traced callee) before it returns or is unwound.
const SLEEP_NS: u64 = 2_000_000;
/// Tolerance above it: no span may be longer (2 loaded cores in CI).
const MAX_NS: u64 = 500_000_000;

fn cpp_fixture() -> PathBuf {
    small_fixture(
        "unwind-throw",
        "unwind/throw.cpp",
        "g++",
        &["-O2", "-g", "-pthread"],
    )
}

fn rust_fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_unwind-panic"))
}

struct Traced {
    stdout: String,
    spans: Vec<Value>,
    stats: Value,
}

/// Runs `exe ARGS` under the agent with one stage per (name, symbol).
fn trace(exe: &Path, stages: &[(&str, &str)], args: &[&str], extra: &[&str]) -> Traced {
    let dir = scratch_dir("unwind");
    let events = dir.join("events.jsonl");
    let mut cmd = Command::new(agent_bin());
    cmd.args(["run", "--no-api", "--memory", "off"]).args(extra);
    for (name, symbol) in stages {
        cmd.arg("--stage")
            .arg(format!("{name}={}:{symbol}", exe.display()));
    }
    cmd.arg("-o").arg(&events).arg("--").arg(exe).args(args);
    let (status, stdout, stderr) = run_captured(&mut cmd, T);
    assert!(status.success(), "agent failed: {stderr}");
    let all = read_jsonl(&events);
    let spans = all
        .iter()
        .filter(|v| v["type"] == "span")
        .cloned()
        .collect();
    let stats = all
        .iter()
        .rev()
        .find(|v| v["type"] == "stats")
        .cloned()
        .expect("a stats object");
    Traced {
        stdout,
        spans,
        stats,
    }
}

fn untraced(exe: &Path, args: &[&str]) -> String {
    let (status, stdout, stderr) = run_captured(Command::new(exe).args(args), T);
    assert!(status.success(), "{exe:?} {args:?} failed: {stderr}");
    stdout
}

/// Traces `exe ARGS` and checks: stdout identical to the untraced run;
/// per stage exactly (normal, exception-marked) spans; every span between
/// SLEEP_NS and MAX_NS; the kernel counters agree.
fn check(exe: &Path, stages: &[(&str, &str)], args: &[&str], expected: &[(&str, usize, usize)]) {
    let want = untraced(exe, args);
    let got = trace(exe, stages, args, &["--exit-probes", "auto"]);
    assert_eq!(got.stdout, want, "{args:?}: traced output differs");
    let mut counts: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for s in &got.spans {
        let stage = s["stage"].as_str().expect("stage").to_string();
        let entry = counts.entry(stage.clone()).or_default();
        let exception = s.get("exception") == Some(&Value::Bool(true));
        if exception {
            entry.1 += 1;
        } else {
            entry.0 += 1;
        }
        let dur = s["dur_ns"].as_u64().expect("dur_ns");
        assert!(
            (SLEEP_NS..=MAX_NS).contains(&dur),
            "{args:?}: {stage} span of {dur} ns (exception: {exception}) outside \
             [{SLEEP_NS}, {MAX_NS}]"
        );
    }
    for &(stage, normal, unwound) in expected {
        assert_eq!(
            counts.get(stage).copied().unwrap_or_default(),
            (normal, unwound),
            "{args:?}: stage {stage} (normal, exception) spans; all: {counts:?}"
        );
    }
    let total_unwound: usize = expected.iter().map(|e| e.2).sum();
    assert_eq!(got.stats["unwound_total"], total_unwound, "{:?}", got.stats);
    assert_eq!(got.stats["abandoned_total"], 0, "{:?}", got.stats);
    assert_eq!(got.stats["unmatched_total"], 0, "{:?}", got.stats);
    assert_eq!(got.stats["drops_total"], 0, "{:?}", got.stats);
}

const LEVELS: [(&str, &str); 4] = [
    ("l1", "uw::l1"),
    ("l2", "uw::l2"),
    ("l3", "uw::l3"),
    ("catcher", "uw::catcher"),
];

#[test]
fn exceptions_through_one_two_three_traced_frames() {
    if !require_bpf() {
        return;
    }
    let exe = cpp_fixture();
    // 8 rounds, rounds 3 and 7 throw from below the deepest traced frame.
    for depth in 1..=3usize {
        for catcher in [1usize, 0] {
            let args = ["throw", &depth.to_string(), &catcher.to_string(), "8"];
            let mut expected: Vec<(&str, usize, usize)> = LEVELS[..3]
                .iter()
                .enumerate()
                .map(|(k, (name, _))| match k < depth {
                    true => (*name, 6, 2),
                    false => (*name, 0, 0),
                })
                .collect();
            // The catcher catches: it returns normally every round.
            expected.push(("catcher", 8 * catcher, 0));
            check(&exe, &LEVELS, &args, &expected);
        }
    }
}

#[test]
fn rethrow_unwinds_the_rethrowing_frame_too() {
    if !require_bpf() {
        return;
    }
    let exe = cpp_fixture();
    check(
        &exe,
        &[("mid", "uw::mid"), ("inner", "uw::inner")],
        &["rethrow", "8"],
        &[("mid", 6, 2), ("inner", 6, 2)],
    );
}

#[test]
fn exception_caught_inside_the_traced_function() {
    if !require_bpf() {
        return;
    }
    let exe = cpp_fixture();
    check(
        &exe,
        &[("g", "uw::guarded")],
        &["inside", "8"],
        &[("g", 8, 0)],
    );
}

#[test]
fn recursion_with_exceptions() {
    if !require_bpf() {
        return;
    }
    let exe = cpp_fixture();
    // 4 rounds of rec(1..6) = 24 calls; rounds 1 and 3 throw at rec(6),
    // caught in rec(3): rec(4), rec(5), rec(6) unwound each time.
    check(
        &exe,
        &[("rec", "uw::rec")],
        &["recurse", "4"],
        &[("rec", 18, 6)],
    );
}

#[test]
fn pthread_exit_and_cancel_through_traced_frames() {
    if !require_bpf() {
        return;
    }
    let exe = cpp_fixture();
    // Per round: worker -> leaver -> pthread_exit; sleeper cancelled.
    check(
        &exe,
        &[
            ("worker", "uw::worker"),
            ("leaver", "uw::leaver"),
            ("sleeper", "uw::sleeper"),
        ],
        &["cancel", "3"],
        &[("worker", 0, 3), ("leaver", 0, 3), ("sleeper", 0, 3)],
    );
}

#[test]
fn rust_panic_caught_by_catch_unwind() {
    if !require_bpf() {
        return;
    }
    let exe = rust_fixture();
    check(
        &exe,
        &[("outer", "uw_outer"), ("inner", "uw_inner")],
        &["8"],
        &[("outer", 6, 2), ("inner", 6, 2)],
    );
}

/// Why exit probes are the default for C++: with the kernel's uretprobe
/// trampoline on the stack, the first exception through the function
/// terminates the process (the agent still ends cleanly).
#[test]
fn uretprobes_would_terminate_the_process() {
    if !require_bpf() {
        return;
    }
    let exe = cpp_fixture();
    let args = ["throw", "1", "0", "8"];
    assert!(untraced(&exe, &args).starts_with("mode=throw"));
    let got = trace(
        &exe,
        &[("l1", "uw::l1")],
        &args,
        &["--exit-probes", "uretprobe"],
    );
    assert_eq!(got.stdout, "", "the process should have been terminated");
}
