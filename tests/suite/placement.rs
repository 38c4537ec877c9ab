//! Probe placement on real CET-built code (tests/fixtures/placement): each
//! function's probes sit where target/placement.rs puts them (a `push`, a
//! `je`, a `push` after a `mov`, the entry when the stack moves first), and
//! every placement still gives one span per call with the time the call
//! took, through recursion, a caught C++ exception, and argument and
//! return-value gauges.
use std::{path::PathBuf, process::Command, sync::OnceLock, time::Duration};

use adeline_trace_tests::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(120);
const CALLS: u64 = 30;
/// Each timed function sleeps this long per call (placement.cpp).
const SLEEP_NS: u64 = 200_000;
const FUNCTIONS: [&str; 6] = [
    "push_first",
    "test_first",
    "mov_then_push",
    "stack_first",
    "recurse",
    "catcher",
];

fn fixture() -> &'static PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let src = workspace_root().join("tests/fixtures/placement/placement.cpp");
        let dir = target_dir().join("fixtures/placement");
        std::fs::create_dir_all(&dir).unwrap();
        let bin = dir.join("placement-fixture");
        let status = Command::new("g++")
            .args(["-std=c++17", "-O2", "-fcf-protection=full", "-Wall", "-o"])
            .arg(&bin)
            .arg(&src)
            .status()
            .expect("running g++");
        assert!(status.success(), "g++ failed on {}", src.display());
        bin
    })
}

/// Runs the fixture under the agent with one stage per function, plus
/// `extra` arguments.
fn trace(extra: &[&str]) -> AgentOutput {
    let bin = fixture().display().to_string();
    // No API: the default port may be taken by another agent on the machine.
    let mut args: Vec<String> = vec!["run".into(), "--no-api".into()];
    for f in FUNCTIONS {
        args.extend(["--stage".into(), format!("{f}={bin}:{f}")]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend(["--".into(), bin.clone(), CALLS.to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = Agent::run(&args, T);
    assert!(out.status.success(), "agent failed: {}", out.stderr);
    out
}

fn placement_of<'a>(out: &'a AgentOutput, stage: &str) -> &'a Value {
    let start = out.start().expect("start event");
    let probe = start["probes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["stage"] == stage)
        .unwrap_or_else(|| panic!("no probe for {stage}"));
    assert_eq!(
        probe["placement"]["address"].as_u64().unwrap(),
        probe["offset"].as_u64().unwrap() + probe["placement"]["offset"].as_u64().unwrap()
    );
    &probe["placement"]
}

#[test]
fn every_placement_counts_and_times_every_call() {
    if !require_bpf() {
        return;
    }
    let out = trace(&[]);
    // Where each function's probes went (gcc 12 -O2 -fcf-protection=full).
    let site = |stage: &str| {
        let p = placement_of(&out, stage);
        (
            p["offset"].as_u64().unwrap(),
            p["insn"].as_str().unwrap().to_string(),
            p["emulated"].as_bool().unwrap(),
        )
    };
    let (off, insn, emulated) = site("push_first");
    assert_eq!((off, emulated), (4, true), "{insn}");
    assert!(insn.starts_with("push "), "{insn}");
    let (off, insn, emulated) = site("test_first");
    assert_eq!((off, emulated), (7, true), "{insn}");
    assert!(insn.starts_with("je "), "{insn}");
    let (off, insn, emulated) = site("mov_then_push");
    assert!(
        off > 4 && emulated && insn.starts_with("push "),
        "{off} {insn}"
    );
    let (off, insn, emulated) = site("stack_first");
    assert_eq!((off, insn.as_str(), emulated), (0, "endbr64", false));
    let reason = placement_of(&out, "stack_first")["reason"]
        .as_str()
        .unwrap();
    assert!(reason.contains("moves the stack pointer"), "{reason}");
    for f in ["recurse", "catcher"] {
        assert_eq!(site(f).0, 4, "{f}");
    }

    let report = out.fixture_report().expect("fixture report");
    for f in FUNCTIONS {
        let durations = out.durations_of(f);
        let expected = match f {
            // Every level of recurse(3) is a call.
            "recurse" => 3 * CALLS,
            _ => report["calls"][f].as_u64().unwrap(),
        };
        assert_eq!(durations.len() as u64, expected, "{f}: spans");
        // Every call that sleeps lasts at least the sleep. test_first's
        // spans alternate: test_first(&i) sleeps, test_first(nullptr)
        // returns at once (unless the thread is preempted inside it).
        let sleeping: Vec<u64> = match f {
            "test_first" => durations.iter().copied().step_by(2).collect(),
            _ => durations.clone(),
        };
        assert!(
            sleeping.iter().all(|&d| d >= SLEEP_NS),
            "{f}: {durations:?}"
        );
    }
    // The time inside the probes never exceeds what the fixture measured
    // around the same calls (placement only skips the instructions before
    // the site), and is most of it (the rest: traps, and preemption between
    // the fixture's clock and the probes on this loaded 2-core machine).
    for f in ["test_first", "mov_then_push", "stack_first", "catcher"] {
        let traced: u64 = out.durations_of(f).iter().sum();
        let measured = report["ns"][f].as_u64().unwrap();
        assert!(
            traced <= measured && traced * 10 >= measured * 6,
            "{f}: spans {traced} ns, fixture {measured} ns"
        );
    }
    // Recursion pairs: the outermost level holds all three sleeps.
    let outer: Vec<u64> = out
        .spans_of("recurse")
        .iter()
        .filter(|s| s["depth"] == 0)
        .map(|s| s["dur_ns"].as_u64().unwrap())
        .collect();
    assert_eq!(outer.len() as u64, CALLS);
    assert!(outer.iter().all(|&d| d >= 3 * SLEEP_NS), "{outer:?}");
    // The exceptions caught inside catcher left nothing unpaired.
    let stats = out.of_type("stats");
    let last = stats.last().expect("stats");
    assert_eq!(last["unmatched_total"], 0, "{last}");
    assert_eq!(last["drops_total"], 0, "{last}");
}

#[test]
fn gauges_read_their_registers_at_the_placed_site() {
    if !require_bpf() {
        return;
    }
    let bin = fixture().display().to_string();
    let out = trace(&[
        "--gauge",
        &format!("x={bin}:push_first:arg0"),
        "--gauge",
        &format!("r={bin}:test_first:ret"),
    ]);
    let values = |g: &str| -> Vec<i64> {
        out.of_type("gauge")
            .iter()
            .filter(|v| v["gauge"] == g)
            .map(|v| v["value"].as_i64().unwrap())
            .collect()
    };
    // push_first(i) from the loop and from mov_then_push(i, i + 1).
    let mut x = values("x");
    x.sort_unstable();
    let mut want: Vec<i64> = (0..CALLS as i64).flat_map(|i| [i, i]).collect();
    want.sort_unstable();
    assert_eq!(x, want);
    // test_first(&i) = i + 1, test_first(nullptr) = 0.
    let mut r = values("r");
    r.sort_unstable();
    let mut want: Vec<i64> = (0..CALLS as i64).flat_map(|i| [0, i + 1]).collect();
    want.sort_unstable();
    assert_eq!(r, want);
    let gauge_probe = |g: &str| {
        out.start().unwrap()["probes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["stage"] == g)
            .unwrap()["placement"]["offset"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(gauge_probe("x"), 4);
    assert_eq!(gauge_probe("r"), 7);
}

#[test]
fn list_shows_each_functions_placement() {
    let out = Command::new(agent_bin())
        .args(["list", fixture().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let line = |f: &str| {
        text.lines()
            .find(|l| l.ends_with(&format!("  {f}")))
            .unwrap_or_else(|| panic!("{f} missing:\n{text}"))
            .to_string()
    };
    assert!(line("push_first").contains("  +4 push rbx  "), "{text}");
    assert!(line("test_first").contains("  +7 je 0x"), "{text}");
    assert!(
        line("stack_first").contains("  +0 endbr64 (stepped)  "),
        "{text}"
    );
    let json = Command::new(agent_bin())
        .args(["list", "--json", fixture().to_str().unwrap(), "catcher"])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&json.stdout).unwrap();
    let p = &v["functions"][0]["placement"];
    assert_eq!(p["offset"], 4);
    assert_eq!(p["emulated"], true);
    assert_eq!(p["reason"], "emulated push");
}
