//! USDT probes on real BPF (docs/usdt.md): entry/return pairs as a stage
//! with exact counts and durations, arguments decoded exactly (registers
//! of every size, signed and unsigned, a stack slot), a probe as an event,
//! a semaphore-guarded probe that fires only while the agent is attached,
//! and Python's `gc__start`/`gc__done` as a stage on Debian's python3.11.
use std::{
    io::{BufRead, BufReader, Lines},
    path::PathBuf,
    process::{ChildStdout, Command, Stdio},
    time::Duration,
};

use adeline_trace_tests::{python_env, *};
use serde_json::Value;

const MAIN_PAIRS: usize = 20;
const MAIN_SLEEP_MS: u64 = 10;
const WORKER_PAIRS: usize = 30;
const WORKER_SLEEP_MS: u64 = 2;
const VALUES: i64 = 5;
const TICKS: u64 = 7;
const GUARDED: u64 = 9;

fn usdt_fixture() -> PathBuf {
    small_fixture(
        "usdt-fixture",
        "usdt/usdt.c",
        "gcc",
        &["-O2", "-pthread", "-Wall", "-Wextra"],
    )
}

fn next_phase(lines: &mut Lines<BufReader<ChildStdout>>, phase: &str) -> Value {
    let line = lines
        .next()
        .unwrap_or_else(|| panic!("fixture ended before its {phase} line"))
        .expect("reading the fixture");
    let v: Value = serde_json::from_str(&line).expect("a JSON line");
    assert_eq!(v["phase"], phase, "{v}");
    v
}

/// Gauge values of `gauge`, in record order.
fn gauge_values(out: &AgentOutput, gauge: &str) -> Vec<i64> {
    out.of_type("gauge")
        .iter()
        .filter(|g| g["gauge"] == gauge)
        .map(|g| g["value"].as_i64().expect("an integer value"))
        .collect()
}

#[test]
fn pairs_arguments_events_and_semaphores() {
    if !require_bpf() {
        return;
    }
    // Both attach paths carry the semaphores (ref_ctr_offset).
    for mode in ["multi", "perf"] {
        pairs_arguments_events_and_semaphores_with(mode);
    }
}

fn pairs_arguments_events_and_semaphores_with(mode: &str) {
    let fx = usdt_fixture();
    let dir = scratch_dir("usdt");
    let (go, done) = (dir.join("go"), dir.join("done"));
    let mut child = Command::new(&fx)
        .arg(&go)
        .arg(&done)
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting the fixture");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let ready = next_phase(&mut lines, "ready");
    assert_eq!(ready["semaphore"], 0, "no tracer yet: {ready}");
    let f = fx.display().to_string();
    let pid = child.id().to_string();
    let specs = [
        (
            "--stage",
            format!("work=usdt:{f}:fx:work__start,work__done"),
        ),
        ("--gauge", format!("a=usdt:{f}:fx:values:arg0")),
        ("--gauge", format!("b=usdt:{f}:fx:values:arg1")),
        ("--gauge", format!("c=usdt:{f}:fx:values:arg2")),
        ("--gauge", format!("global=usdt:{f}:fx:global:arg0")),
        ("--gauge", format!("local=usdt:{f}:fx:global:arg1")),
        ("--gauge", format!("done_i=usdt:{f}:fx:work__done:arg1")),
        ("--gauge", format!("ticks=usdt:{f}:fx:tick")),
        ("--gauge", format!("guarded=usdt:{f}:fx:guarded:hits")),
    ];
    let mut args: Vec<String> = [
        "run", "--no-api", "--memory", "off", "--attach", mode, "-p", &pid,
    ]
    .map(String::from)
    .into();
    for (flag, spec) in &specs {
        args.push(flag.to_string());
        args.push(spec.clone());
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut agent = Agent::spawn(&refs);
    let start = agent.wait_ready(Duration::from_secs(60));
    // One probe per note: the pair's two, and one per gauge.
    let probes = start["probes"].as_array().expect("probes");
    assert_eq!(probes.len(), 2 + 8, "{start}");
    std::fs::write(&go, "go").unwrap();
    let run = next_phase(&mut lines, "run");
    assert_eq!(run["semaphore"], 1, "{mode}: raised while attached: {run}");
    assert_eq!(run["guarded"], GUARDED, "{run}");
    let out = agent.output();
    assert!(out.status.success(), "{}", out.stderr);
    std::fs::write(&done, "done").unwrap();
    let after = next_phase(&mut lines, "after");
    assert_eq!(after["semaphore"], 0, "{mode}: lowered on detach: {after}");
    assert_eq!(after["guarded"], 0, "{after}");
    let status = wait_timeout(&mut child, Duration::from_secs(10)).expect("fixture exits");
    assert!(status.success());

    // Pairs: exact counts per thread, durations from the sleeps.
    let (main, worker) = (run["main_tid"].clone(), run["worker_tid"].clone());
    let spans = out.spans_of("work");
    let of = |tid: &Value| -> Vec<u64> {
        spans
            .iter()
            .filter(|s| &s["tid"] == tid)
            .map(|s| s["dur_ns"].as_u64().unwrap())
            .collect()
    };
    let (m, w) = (of(&main), of(&worker));
    assert_eq!(
        (m.len(), w.len(), spans.len()),
        (MAIN_PAIRS, WORKER_PAIRS, MAIN_PAIRS + WORKER_PAIRS)
    );
    // A pair is the sleep plus a few µs: never shorter; the median within
    // 3 ms, every one within 30 ms (a loaded 2-core host wakes late).
    for (durs, ms) in [(&m, MAIN_SLEEP_MS), (&w, WORKER_SLEEP_MS)] {
        let mut sorted = durs.clone();
        sorted.sort_unstable();
        let ns = ms * 1_000_000;
        assert!(sorted[0] >= ns, "{ms} ms sleeps: {sorted:?}");
        assert!(
            sorted[sorted.len() / 2] < ns + 3_000_000,
            "{ms} ms: {sorted:?}"
        );
        assert!(
            sorted[sorted.len() - 1] < ns + 30_000_000,
            "{ms} ms: {sorted:?}"
        );
    }

    // Arguments, decoded exactly in probe order.
    let n = 0..VALUES;
    assert_eq!(
        gauge_values(&out, "a"),
        n.clone().map(|i| -1 - i).collect::<Vec<_>>()
    );
    assert_eq!(
        gauge_values(&out, "b"),
        n.clone().map(|i| 60000 + i).collect::<Vec<_>>()
    );
    let c: Vec<i64> = n.clone().map(|i| -1234567890123 * (i + 1)).collect();
    assert_eq!(gauge_values(&out, "c"), c);
    assert_eq!(
        gauge_values(&out, "global"),
        n.clone().map(|i| 1000 + i).collect::<Vec<_>>()
    );
    assert_eq!(
        gauge_values(&out, "local"),
        n.map(|i| -7 * (i + 1)).collect::<Vec<_>>()
    );
    let mut done_i = gauge_values(&out, "done_i");
    done_i.sort_unstable();
    let mut expected: Vec<i64> = (0..MAIN_PAIRS as i64)
        .chain(0..WORKER_PAIRS as i64)
        .map(|i| i * 1000)
        .collect();
    expected.sort_unstable();
    assert_eq!(done_i, expected);
    // Events: one record of 1 per hit.
    assert_eq!(gauge_values(&out, "ticks"), vec![1; TICKS as usize]);
    assert_eq!(gauge_values(&out, "guarded"), vec![1; GUARDED as usize]);
}

#[test]
fn bad_usdt_specs_are_one_line_errors() {
    let fx = usdt_fixture().display().to_string();
    let cases = [
        (
            format!("--stage=w=usdt:{fx}:fx:work__start,nope"),
            format!("error: stage 'w': no USDT probe fx:nope in {fx} (it has: fx:global, fx:guarded, fx:tick, fx:values, fx:work__done, fx:work__start)"),
        ),
        (
            format!("--gauge=g=usdt:{fx}:fx:tick:arg0"),
            format!("error: gauge 'g': USDT probe fx:tick in {fx} has no arguments, not arg0"),
        ),
        (
            format!("--gauge=g=usdt:{fx}:fx:values:arg3"),
            format!("error: gauge 'g': USDT probe fx:values in {fx} has 3 arguments (arg0..arg2), not arg3"),
        ),
        (
            "--stage=w=usdt:/bin/true:fx:a,b".to_string(),
            "error: stage 'w': no USDT probe fx:a in /bin/true (it has no USDT probes: no .note.stapsdt section; `adeline-trace list FILE` shows what a file has)".to_string(),
        ),
        (
            format!("--stage=w=usdt:{fx}:fx:work__start"),
            format!("error: malformed --stage 'w=usdt:{fx}:fx:work__start': expected NAME=TARGET:SYMBOL, e.g. infer=/opt/app/libdetector.so:'*Detector::infer*' (USDT stages are NAME=usdt:TARGET:PROVIDER:ENTRY,RETURN (a single probe is a --gauge))"),
        ),
    ];
    for (flag, want) in cases {
        let stage = format!("--stage=base=usdt:{fx}:fx:work__start,work__done");
        let out = Agent::run(&["run", "--no-api", &stage, &flag], Duration::from_secs(30));
        assert!(!out.status.success(), "{flag}");
        assert_eq!(
            out.error_line(),
            Some(want.as_str()),
            "{flag}: {}",
            out.stderr
        );
    }
}

/// Debian's python3.11 of the interpreter matrix (it has the notes).
fn debian_python() -> Option<python_env::Interpreter> {
    let slot = python_env::MATRIX
        .into_iter()
        .find(|s| s.label == "deb-3.11")
        .expect("deb-3.11 in the matrix");
    match python_env::find(&slot) {
        Ok(i) => Some(i),
        Err(e) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true: Debian's python3.11 not found: {e}"
            );
            eprintln!("skipped: {e}");
            None
        }
    }
}

#[test]
fn python_gc_pauses_as_a_stage_inside_a_python_frame() {
    if !require_bpf() {
        return;
    }
    let Some(py) = debian_python() else {
        return;
    };
    const GCS: u64 = 6;
    let exe = py.exe.display().to_string();
    let dir = scratch_dir("usdt-gc");
    let report = dir.join("report.json");
    let calls = workspace_root().join("tests/fixtures/python/calls.py");
    let gc = format!("gc=usdt:{exe}:python:gc__start,gc__done");
    let f_gc = format!("f_gc=python:{exe}:calls.py:f_gc");
    // Events to a file: the fixture shares the agent's stdout.
    let events = dir.join("events.jsonl");
    let events_arg = events.display().to_string();
    let args = [
        "run",
        "--no-api",
        "-o",
        &events_arg,
        "--memory",
        "off",
        "--python-window",
        "always",
        "--stage",
        &gc,
        "--stage",
        &f_gc,
        "--frame-stage",
        "f_gc",
        "--",
        &exe,
        &calls.display().to_string(),
        "--n",
        "10",
        "--no-thread",
        "--sleeps",
        "0",
        "--gc",
        &GCS.to_string(),
        "--report",
        &report.display().to_string(),
    ];
    let run = Agent::run(&args, Duration::from_secs(120));
    assert!(run.status.success(), "{}", run.stderr);
    let text = std::fs::read_to_string(&events).expect("the events file");
    let out = AgentOutput::parse(run.status, &text);
    assert!(out.non_json.is_empty(), "{:?}", out.non_json);
    let rep: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(rep["gc_full_collections"], GCS, "{rep}");
    let frames = out.spans_of("f_gc");
    assert_eq!(frames.len() as u64, GCS);
    // A collection inside a frame carries that frame's start (what the
    // frame breakdown sums): exactly one per gc.collect(), and the
    // frame's own time excludes it.
    let gc_spans = out.spans_of("gc");
    for f in &frames {
        let of_frame: Vec<&&Value> = gc_spans
            .iter()
            .filter(|g| g["tid"] == f["tid"] && g["frame_ts_ns"] == f["ts_ns"])
            .collect();
        assert_eq!(
            of_frame.len(),
            1,
            "one collection in {f}: {of_frame:?} of {gc_spans:?}"
        );
        let (dur, own) = (
            f["dur_ns"].as_u64().unwrap(),
            f["self_ns"].as_u64().unwrap(),
        );
        let pause = of_frame[0]["dur_ns"].as_u64().unwrap();
        assert!(pause > 0 && pause <= dur, "{f} {:?}", of_frame[0]);
        assert_eq!(own + pause, dur, "f_gc's child time is the collection: {f}");
    }
    // The interpreter's own collections at exit are outside every frame.
    let gcs = out.spans_of("gc").len() as u64;
    assert!(gcs >= GCS, "{gcs}");
}
