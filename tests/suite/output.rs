//! The traced program prints exactly what it prints untraced: for every
//! fixture under tests/fixtures, its stdout and exit status under
//! `adeline-trace run` (events to a file with `-o`, so the agent's JSON
//! never mixes with the program's stdout) are byte-identical to an
//! untraced run. Each case also checks the exact number of spans (and
//! gauge values) recorded, so it cannot pass by tracing nothing.
//!
//! Where a fixture prints values that differ from run to run (pids,
//! thread ids, timings, a count of calls made in a fixed time), exactly
//! those named keys are blanked on both sides before comparing (see
//! [`MaskKeys`] in each case); every other byte must be equal.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use adeline_trace_tests::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(120);

/// Top-level JSON keys whose integer values are blanked in every stdout
/// line before comparing (both runs).
type MaskKeys = &'static [&'static str];

/// What the traced run recorded: its stdout and events.
struct Traced {
    stdout: String,
    events: Vec<Value>,
}

impl Traced {
    /// Spans per stage.
    fn spans(&self) -> BTreeMap<String, usize> {
        self.count("span", "stage")
    }

    /// Values recorded per gauge.
    fn gauges(&self) -> BTreeMap<String, usize> {
        self.count("gauge", "gauge")
    }

    fn count(&self, kind: &str, key: &str) -> BTreeMap<String, usize> {
        let mut n = BTreeMap::new();
        for e in self.events.iter().filter(|e| e["type"] == kind) {
            *n.entry(e[key].as_str().unwrap_or("?").to_string())
                .or_default() += 1;
        }
        n
    }
}

/// `"key":123` -> `"key":_` for each key (the fixtures print compact JSON
/// with integer values, or a flat object of them, there); everything else
/// unchanged.
fn mask(text: &str, keys: MaskKeys) -> String {
    let mut out = text.to_string();
    for key in keys {
        let needle = format!("\"{key}\":");
        let mut from = 0;
        while let Some(at) = out[from..].find(&needle) {
            let start = from + at + needle.len();
            let len = if out[start..].starts_with('{') {
                // A flat object of integers: blanked whole.
                out[start..].find('}').map(|n| n + 1)
            } else {
                out[start..].find(|c: char| !(c.is_ascii_digit() || c == '-'))
            }
            .unwrap_or(out.len() - start);
            assert!(len > 0, "{key} is not an integer in {text:?}");
            out.replace_range(start..start + len, "_");
            from = start + 1;
        }
    }
    out
}

/// Runs `program ARGS` untraced, then under `adeline-trace run PROBES -o
/// FILE -- program ARGS`; asserts equal exit status and stdout (after
/// [`mask`]); returns the traced run.
fn compare(case: &str, probes: &[String], program: &Path, args: &[&str], keys: MaskKeys) -> Traced {
    let (want_status, want, want_err) = run_captured(Command::new(program).args(args), T);
    assert!(
        want_status.success(),
        "{case}: untraced {program:?} {args:?} failed: {want_err}"
    );
    let events = scratch_dir(&format!("output-{case}")).join("events.jsonl");
    let mut cmd = Command::new(agent_bin());
    cmd.args(["run", "--no-api"])
        .args(probes)
        .arg("-o")
        .arg(&events)
        .arg("--")
        .arg(program)
        .args(args);
    let (status, got, stderr) = run_captured(&mut cmd, T);
    assert_eq!(
        status.code(),
        want_status.code(),
        "{case}: traced exit status {status} (untraced {want_status}); agent stderr:\n{stderr}"
    );
    assert!(!want.is_empty(), "{case}: the fixture printed nothing");
    assert_eq!(
        mask(&got, keys),
        mask(&want, keys),
        "{case}: traced stdout differs (masked keys: {keys:?}); agent stderr:\n{stderr}"
    );
    Traced {
        stdout: got,
        events: read_jsonl(&events),
    }
}

/// `--stage NAME=TARGET:SYMBOL` for each (name, symbol).
fn stages(target: &Path, list: &[(&str, &str)]) -> Vec<String> {
    list.iter()
        .flat_map(|(name, sym)| {
            [
                "--stage".to_string(),
                format!("{name}={}:{sym}", target.display()),
            ]
        })
        .collect()
}

fn gauge(name: &str, target: &Path, spec: &str) -> [String; 2] {
    [
        "--gauge".to_string(),
        format!("{name}={}:{spec}", target.display()),
    ]
}

fn json_line(stdout: &str) -> Value {
    let line = stdout.lines().last().expect("a line");
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

#[test]
fn cold_fixture() {
    if !require_bpf() {
        return;
    }
    let exe = small_fixture("cold-work", "cold/work.cpp", "g++", &["-O2", "-g"]);
    let got = compare(
        "cold",
        &stages(&exe, &[("w", "app::work")]),
        &exe,
        &["200"],
        &[],
    );
    assert_eq!(got.spans(), counts(&[("w", 200)]));
}

#[test]
fn cpp_fixture_with_shared_library() {
    if !require_bpf() {
        return;
    }
    let fx = cpp_fixture();
    let mut probes = stages(&fx.exe, &[("frame", "app::process_frame")]);
    probes.extend(stages(&fx.lib, &[("infer", "*Detector::infer*")]));
    // The fixture's own USDT probe, as a gauge (frame_no, then n).
    probes.extend([
        "--gauge".to_string(),
        format!(
            "done=usdt:{}:cpp_pipeline:frame_done:arg0",
            fx.exe.display()
        ),
    ]);
    // The report's pid is the process's own.
    let got = compare("cpp", &probes, &fx.exe, &["12"], &["pid"]);
    let report = json_line(&got.stdout);
    let infer = report["calls"]["vision::Detector::infer"].as_u64().unwrap() as usize;
    assert_eq!(got.spans(), counts(&[("frame", 12), ("infer", infer)]));
    assert_eq!(got.gauges(), counts(&[("done", 12)]));
}

#[test]
fn follow_fixture_with_gauge() {
    if !require_bpf() {
        return;
    }
    let exe = small_fixture("follow-work", "follow/work.c", "gcc", &["-O2", "-g"]);
    let mut probes = stages(&exe, &[("w", "work")]);
    probes.extend(gauge("i", &exe, "tock:arg0"));
    let got = compare("follow", &probes, &exe, &["50"], &[]);
    assert_eq!(got.spans(), counts(&[("w", 50)]));
    assert_eq!(got.gauges(), counts(&[("i", 50)]));
}

#[test]
fn many_functions_fixture() {
    if !require_bpf() {
        return;
    }
    let exe = many_fixture();
    // Stride 10: f0000, f0010, .. f0090 once each; f4900 .. f4990 5 times.
    let stride = 10;
    let calls = |prefix: &str| -> usize {
        (0..MANY_FUNCTIONS)
            .step_by(stride)
            .filter(|i| format!("f{i:04}").starts_with(prefix))
            .map(|i| 1 + i / 1000)
            .sum()
    };
    let got = compare(
        "many",
        &stages(exe, &[("f00", "f00*"), ("f49", "f49*")]),
        exe,
        &[&stride.to_string()],
        &[],
    );
    assert_eq!(calls("f00"), 10);
    assert_eq!(
        got.spans(),
        counts(&[("f00", calls("f00")), ("f49", calls("f49"))])
    );
}

#[test]
fn placement_fixture() {
    if !require_bpf() {
        return;
    }
    // The flags of suite/placement.rs (a Ubuntu/Fedora-like build).
    let exe = small_fixture(
        "placement-fixture",
        "placement/placement.cpp",
        "g++",
        &["-std=c++17", "-O2", "-fcf-protection=full", "-Wall"],
    );
    let list = [
        ("push_first", "push_first"),
        ("test_first", "test_first"),
        ("mov_then_push", "mov_then_push"),
        ("stack_first", "stack_first"),
        ("recurse", "recurse"),
        ("catcher", "catcher"),
    ];
    // "ns" holds the fixture's own timings of each function.
    let got = compare("placement", &stages(&exe, &list), &exe, &["10"], &["ns"]);
    assert_eq!(
        got.spans(),
        counts(&[
            ("push_first", 20),
            ("test_first", 20),
            ("mov_then_push", 10),
            ("stack_first", 10),
            ("recurse", 30),
            ("catcher", 10),
        ])
    );
}

#[test]
fn profile_split() {
    if !require_bpf() {
        return;
    }
    let exe = profile_split_fixture();
    // "calls" is how many 10 ms calls fit in the 0.3 s run: timing.
    let got = compare(
        "split",
        &stages(&exe, &[("work", "work"), ("hot", "hot")]),
        &exe,
        &["split", "0.3"],
        &["calls"],
    );
    let calls = json_line(&got.stdout)["calls"].as_u64().unwrap() as usize;
    assert!(calls > 0, "{}", got.stdout);
    assert_eq!(got.spans(), counts(&[("work", calls), ("hot", calls)]));
}

#[test]
fn unwind_fixtures() {
    if !require_bpf() {
        return;
    }
    // The flags of suite/unwind.rs.
    let exe = small_fixture(
        "unwind-throw",
        "unwind/throw.cpp",
        "g++",
        &["-O2", "-g", "-pthread"],
    );
    let levels = [
        ("l1", "uw::l1"),
        ("l2", "uw::l2"),
        ("catcher", "uw::catcher"),
    ];
    // 8 rounds, 2 of them throwing through l1 and l2 to the catcher.
    let got = compare(
        "unwind",
        &stages(&exe, &levels),
        &exe,
        &["throw", "2", "1", "8"],
        &[],
    );
    assert_eq!(got.spans(), counts(&[("l1", 8), ("l2", 8), ("catcher", 8)]));

    let rust = PathBuf::from(env!("CARGO_BIN_EXE_unwind-panic"));
    let got = compare(
        "unwind-panic",
        &stages(&rust, &[("outer", "uw_outer"), ("inner", "uw_inner")]),
        &rust,
        &["8"],
        &[],
    );
    assert_eq!(got.spans(), counts(&[("outer", 8), ("inner", 8)]));
}

#[test]
fn usdt_fixture() {
    if !require_bpf() {
        return;
    }
    // The flags of suite/usdt.rs.
    let exe = small_fixture(
        "usdt-fixture",
        "usdt/usdt.c",
        "gcc",
        &["-O2", "-pthread", "-Wall", "-Wextra"],
    );
    // Go and done files exist from the start: the fixture runs straight through.
    let dir = scratch_dir("output-usdt-files");
    let (go, done) = (dir.join("go"), dir.join("done"));
    std::fs::write(&go, "").unwrap();
    std::fs::write(&done, "").unwrap();
    let f = exe.display();
    let probes = [
        "--stage".to_string(),
        format!("work=usdt:{f}:fx:work__start,work__done"),
        "--gauge".to_string(),
        format!("ticks=usdt:{f}:fx:tick"),
    ];
    // pid and thread ids are the process's own. The printed semaphore is
    // fx:guarded's, which these probes leave alone (so it stays equal).
    let got = compare(
        "usdt",
        &probes,
        &exe,
        &[go.to_str().unwrap(), done.to_str().unwrap()],
        &["pid", "main_tid", "worker_tid"],
    );
    assert_eq!(got.spans(), counts(&[("work", 20 + 30)]));
    assert_eq!(got.gauges(), counts(&[("ticks", 7)]));
}

#[test]
fn demo_pipeline_fixture() {
    if !require_bpf() {
        return;
    }
    let demo = demo_bin();
    let mut args: Vec<&str> = vec!["--frames", "20"];
    args.extend(DEMO_NO_SLEEPS);
    // The report's pid and elapsed_ns (wall time of the run).
    let got = compare(
        "demo",
        &demo_stage_args(&demo),
        &demo,
        &args,
        &["pid", "elapsed_ns"],
    );
    let report = json_line(&got.stdout);
    let want: BTreeMap<String, usize> = DEMO_STAGES
        .iter()
        .map(|s| (s.to_string(), report["calls"][s].as_u64().unwrap() as usize))
        .collect();
    assert_eq!(want["process_frame"], 20);
    assert_eq!(got.spans(), want);
}

/// Debian's interpreter when it qualifies (the one every tracing test
/// covers), else the first of `envs`.
fn one_interpreter(envs: Vec<PyEnv>) -> Option<PyEnv> {
    let deb = envs.iter().position(|e| e.label == "deb-3.11");
    envs.into_iter().nth(deb.unwrap_or(0))
}

#[test]
fn python_calls_fixture() {
    if !require_bpf() {
        return;
    }
    let Some(env) = one_interpreter(python_matrix()) else {
        return;
    };
    let exe = env.exe.display();
    let script = python_fixture("calls.py").display().to_string();
    let probes = [
        "--stage".to_string(),
        format!("plain=python:{exe}:calls.py:f_plain"),
        "--stage".to_string(),
        format!("recurse=python:{exe}:calls.py:f_recurse"),
        // Exact counts over the whole run, not the default 1s/30s window.
        "--python-window".to_string(),
        "always".to_string(),
    ];
    let args = [
        script.as_str(),
        "--n",
        "50",
        "--depth",
        "10",
        "--sleeps",
        "1",
        "--sleep-ms",
        "1",
        "--asyncio",
    ];
    let got = compare("calls.py", &probes, &env.python, &args, &[]);
    assert_eq!(got.spans(), counts(&[("plain", 100), ("recurse", 500)]));
}

#[test]
fn python_pipeline_fixture() {
    if !require_bpf() {
        return;
    }
    let Some(env) = one_interpreter(pipeline_matrix()) else {
        return;
    };
    let exe = env.exe.display();
    let script = python_fixture("pipeline.py").display().to_string();
    let probes = [
        "--stage".to_string(),
        format!("frame=python:{exe}:pipeline.py:process_frame"),
        "--stage".to_string(),
        format!("publish=python:{exe}:pipeline.py:publish_results"),
        // The default window (1 s every 30 s) can close before the frames
        // start: the imports alone take about a second on a loaded host.
        "--python-window".to_string(),
        "always".to_string(),
    ];
    // stdout has no timings (the report with elapsed_ns goes to --report,
    // not used here): compared byte for byte.
    let args = [script.as_str(), "--frames", "5", "--broker", "none"];
    let got = compare("pipeline.py", &probes, &env.python, &args, &[]);
    assert_eq!(got.spans(), counts(&[("frame", 5), ("publish", 5)]));
}

#[test]
fn mask_blanks_only_the_named_integers() {
    assert_eq!(
        mask(
            "{\"pid\":42,\"a\":1,\"t\":-3,\"ns\":{\"x\":5},\"b\":2}\n",
            &["pid", "t", "ns"]
        ),
        "{\"pid\":_,\"a\":1,\"t\":_,\"ns\":_,\"b\":2}\n"
    );
}
