//! The Python fixtures (tests/fixtures/python) run untraced on every
//! interpreter of the matrix: their reports must hold the exact counts the
//! tracing tests will compare against, the broker must get every message,
//! the async mode must do the same work, and stdout must be deterministic.
//! No BPF and no root needed; under CI=true a missing interpreter, venv or
//! broker fails.

use std::collections::BTreeMap;
use std::time::Duration;

use adeline_trace_tests::*;
use serde_json::Value;

const CALLS_N: u64 = 200;
const CALLS_DEPTH: u64 = 100;
const SLEEPS: u64 = 3;
const SLEEP_MS: u64 = 20;
const GCS: u64 = 3;
const TIMEOUT: Duration = Duration::from_secs(120);

fn u(v: &Value) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("not an unsigned integer: {v}"))
}

/// Expected calls of calls.py per qualified name for --n N --depth D
/// --sleeps S --gc G --asyncio, written out here independently of the
/// fixture's own formulas: (calls, resumes, yields, raised).
fn calls_expected(
    n: u64,
    depth: u64,
    sleeps: u64,
    gcs: u64,
) -> BTreeMap<&'static str, (u64, u64, u64, u64)> {
    BTreeMap::from([
        ("f_plain", (2 * n, 0, 0, 0)),
        ("K.__init__", (n, 0, 0, 0)),
        ("K.meth", (n, 0, 0, 0)),
        ("K.cmeth", (n, 0, 0, 0)),
        ("f_outer", (n, 0, 0, 0)),
        ("f_outer.<locals>.inner", (n, 0, 0, 0)),
        ("f_raise", (2 * n, 0, 0, 2 * n)),
        ("f_raise_outer", (n, 0, 0, n)),
        ("f_gen", (n, 3 * n, 3 * n, 0)),
        ("Suspend.__await__", (n, n, n, 0)),
        ("f_coro", (n, n, n, 0)),
        ("f_coro_inner", (n, 0, 0, 0)),
        ("f_partial", (n, 0, n, n)),
        ("f_recurse", (n * depth, 0, 0, 0)),
        ("f_sleep", (sleeps, 0, 0, 0)),
        ("f_gc", (gcs, 0, 0, 0)),
        ("f_thread_main", (1, 0, 0, 0)),
        ("f_threaded", (n, 0, 0, 0)),
        ("f_async_main", (1, n, n, 0)),
        ("f_async_step", (n, n, n, 0)),
    ])
}

#[test]
fn matrix_interpreters_and_venvs() {
    let matrix = python_matrix();
    if matrix.is_empty() {
        return;
    }
    for env in &matrix {
        eprintln!(
            "{:9} {} {} venv {} libpython {:?} missing {:?}",
            env.label,
            env.version,
            env.exe.display(),
            env.venv.display(),
            env.libpython,
            env.status.missing
        );
        assert!(env.version.starts_with(&format!(
            "3.{}.",
            env.label
                .trim_start_matches("deb-")
                .trim_start_matches("3.")
        )));
        if env.label == "deb-3.11" {
            assert_eq!(env.exe, std::path::Path::new("/usr/bin/python3.11"));
            assert!(env.libpython.is_none());
        } else {
            let lib = env.libpython.as_ref().expect("pyenv builds have libpython");
            assert!(lib.is_file(), "{lib:?}");
        }
        assert!(
            env.status
                .installed
                .iter()
                .any(|p| p.starts_with("numpy=="))
                || !env.has_pipeline()
        );
    }
    if under_ci() {
        assert_eq!(matrix.len(), 5, "CI=true: the whole matrix must be set up");
    }
}

#[test]
fn calls_exact_counts_on_every_interpreter() {
    let matrix = python_matrix();
    let expected = calls_expected(CALLS_N, CALLS_DEPTH, SLEEPS, GCS);
    let args = [
        "--n".to_string(),
        CALLS_N.to_string(),
        "--depth".into(),
        CALLS_DEPTH.to_string(),
        "--sleeps".into(),
        SLEEPS.to_string(),
        "--sleep-ms".into(),
        SLEEP_MS.to_string(),
        "--gc".into(),
        GCS.to_string(),
        "--asyncio".into(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut first_stdout: Option<(String, String)> = None;
    for env in &matrix {
        let mut fx = PyFixture::start(env, "calls.py", &args);
        // Held at the go file: alive, nothing done yet.
        std::thread::sleep(Duration::from_millis(100));
        assert!(fx.running(), "calls.py did not wait for its go file");
        let pid = fx.pid();
        fx.go();
        let run = fx.wait(TIMEOUT);
        let r = &run.report;
        let name = env.name();
        assert_eq!(r["fixture"], "calls.py");
        assert_eq!(r["python"], env.version.as_str(), "{name}");
        assert_eq!(u(&r["pid"]), u64::from(pid), "{name}: report pid");
        assert_eq!(
            r["ok"], true,
            "{name}: the fixture's own check failed:\n{}",
            run.stdout
        );
        assert!(run.stdout.ends_with("ok\n"), "{name}:\n{}", run.stdout);
        let counted = r["counted"].as_object().expect("counted");
        let reported: Vec<&str> = counted.keys().map(String::as_str).collect();
        let mine: Vec<&str> = expected.keys().copied().collect();
        assert_eq!(reported, mine, "{name}: the functions counted");
        for (f, (calls, resumes, yields, raised)) in &expected {
            let c = &counted[*f];
            let e = &r["expected"][*f];
            assert_eq!(
                (u(&c["calls"]), u(&c["resumes"]), u(&c["yields"])),
                (*calls, *resumes, *yields),
                "{name}: {f} counted"
            );
            assert_eq!(
                (
                    u(&e["calls"]),
                    u(&e["resumes"]),
                    u(&e["yields"]),
                    u(&e["raised"])
                ),
                (*calls, *resumes, *yields, *raised),
                "{name}: {f} expected by the fixture"
            );
        }
        assert_eq!(u(&r["caught"]), 2 * CALLS_N);
        // The automatic collector is off: only f_gc() collects.
        assert_eq!(u(&r["gc_full_collections"]), GCS, "{name}");
        assert_eq!(
            r["durations_ns"]["f_gc"].as_array().map(Vec::len),
            Some(GCS as usize)
        );
        // The second thread is a real, other thread.
        let main_tid = u(&r["threads"]["main"]);
        let worker_tid = u(&r["threads"]["worker"]);
        assert_eq!(
            main_tid,
            u64::from(pid),
            "{name}: main thread id is the pid"
        );
        assert_ne!(worker_tid, main_tid, "{name}");
        // The known sleep: each call lasts at least its sleep, and not much
        // more (generous: other builds share the 2 cores).
        let sleeps = r["durations_ns"]["f_sleep"]
            .as_array()
            .expect("f_sleep durations");
        assert_eq!(sleeps.len() as u64, SLEEPS);
        for d in sleeps {
            let d = u(d);
            assert!(d >= SLEEP_MS * 1_000_000, "{name}: f_sleep took {d} ns");
            assert!(d < SLEEP_MS * 1_000_000 * 10, "{name}: f_sleep took {d} ns");
        }
        // stdout does not depend on the interpreter.
        match &first_stdout {
            None => first_stdout = Some((name.clone(), run.stdout.clone())),
            Some((first, out)) => assert_eq!(
                &run.stdout, out,
                "calls.py stdout differs between {first} and {name}"
            ),
        }
    }
}

#[test]
fn calls_stdout_is_deterministic() {
    let Some(env) = python_matrix().into_iter().next() else {
        return;
    };
    let args = [
        "--n",
        "50",
        "--depth",
        "20",
        "--sleeps",
        "1",
        "--sleep-ms",
        "1",
    ];
    let a = PyFixture::run(&env, "calls.py", &args, TIMEOUT);
    let b = PyFixture::run(&env, "calls.py", &args, TIMEOUT);
    assert_eq!(a.stdout, b.stdout);
    assert_ne!(a.pid, b.pid);
}

// ---------------------------------------------------------------------------
// pipeline.py

const FRAMES: u64 = 40;
const RAISE_EVERY: u64 = 7;

/// Every function of pipeline.py with its calls for FRAMES frames in
/// `mode` (frame_source: its one call; see resumes below).
fn pipeline_expected(mode: &str) -> BTreeMap<&'static str, (u64, u64)> {
    let (sync, asy) = if mode == "sync" {
        (FRAMES, 0)
    } else {
        (0, FRAMES)
    };
    let raised = FRAMES / RAISE_EVERY;
    BTreeMap::from([
        ("frame_source", (1, 0)),
        ("render_frame", (FRAMES, 0)),
        ("process_frame", (FRAMES, 0)),
        ("preprocess_frame", (FRAMES, 0)),
        ("run_inference", (FRAMES, 0)),
        ("StandardInferenceHandler.run_inference", (FRAMES, 0)),
        ("postprocess", (FRAMES, raised)),
        ("nms", (FRAMES, 0)),
        ("check_detections", (FRAMES, raised)),
        ("Tracker.update", (FRAMES, 0)),
        ("iou_matrix", (FRAMES, 0)),
        ("publish_results", (sync, 0)),
        ("publish_results_async", (asy, 0)),
        ("make_payload", (FRAMES, 0)),
    ])
}

fn durations(r: &Value, f: &str) -> Vec<u64> {
    r["functions"][f]["durations_ns"]
        .as_array()
        .unwrap_or_else(|| panic!("no durations for {f}"))
        .iter()
        .map(u)
        .collect()
}

/// Runs pipeline.py for FRAMES frames against `broker` on a fresh topic,
/// subscribed first; checks the report's counts and timing and the
/// messages the broker delivered. Returns the run.
fn run_pipeline(env: &PyEnv, broker: &Mosquitto, mode: &str) -> PyRun {
    let name = format!("pipeline.py --mode {mode} on {}", env.name());
    let topic = format!("adeline/test/{}/{mode}/{}", env.label, std::process::id());
    let sub = broker.subscribe(&topic);
    let frames = FRAMES.to_string();
    let every = RAISE_EVERY.to_string();
    let addr = broker.addr();
    let args = [
        "--frames",
        &frames,
        "--raise-every",
        &every,
        "--broker",
        &addr,
        "--topic",
        &topic,
        "--mode",
        mode,
    ];
    let fx = PyFixture::start(env, "pipeline.py", &args);
    let pid = fx.pid();
    fx.go();
    let run = fx.wait(TIMEOUT);
    let r = &run.report;
    assert_eq!(r["fixture"], "pipeline.py");
    assert_eq!(r["mode"], mode);
    assert_eq!(r["python"], env.version.as_str());
    assert_eq!(u(&r["pid"]), u64::from(pid));
    assert_eq!(u(&r["frames"]), FRAMES, "{name}");
    assert_eq!(u(&r["raised"]), FRAMES / RAISE_EVERY, "{name}");

    // Exact counts of every function, and one duration per call.
    let functions = r["functions"].as_object().expect("functions");
    let expected = pipeline_expected(mode);
    let reported: Vec<&str> = functions.keys().map(String::as_str).collect();
    assert_eq!(
        reported,
        expected.keys().copied().collect::<Vec<_>>(),
        "{name}"
    );
    for (f, (calls, raised)) in &expected {
        let e = &functions[*f];
        assert_eq!(u(&e["calls"]), *calls, "{name}: calls of {f}");
        assert_eq!(u(&e["raised"]), *raised, "{name}: raised by {f}");
        let want_durations = if *f == "frame_source" {
            FRAMES + 1
        } else {
            *calls
        };
        assert_eq!(
            durations(r, f).len() as u64,
            want_durations,
            "{name}: durations of {f}"
        );
        assert_eq!(u(&e["stats"]["count"]), want_durations, "{name}: {f}");
        assert!(u(&e["line"]) > 0);
    }
    let src = &functions["frame_source"];
    assert_eq!((u(&src["resumes"]), u(&src["yields"])), (FRAMES, FRAMES));
    let kind = |f: &str| {
        functions[f]["kind"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(
        kind("process_frame"),
        if mode == "sync" {
            "function"
        } else {
            "coroutine"
        }
    );
    assert_eq!(kind("frame_source"), "generator");
    assert_eq!(kind("StandardInferenceHandler.run_inference"), "method");

    // Durations nest: a frame holds its stages, a stage its children.
    let frame = durations(r, "process_frame");
    let publish = durations(
        r,
        if mode == "sync" {
            "publish_results"
        } else {
            "publish_results_async"
        },
    );
    let pre = durations(r, "preprocess_frame");
    let inf = durations(r, "run_inference");
    let method = durations(r, "StandardInferenceHandler.run_inference");
    let post = durations(r, "postprocess");
    let nms = durations(r, "nms");
    let check = durations(r, "check_detections");
    let upd = durations(r, "Tracker.update");
    let iou = durations(r, "iou_matrix");
    let payload = durations(r, "make_payload");
    for i in 0..FRAMES as usize {
        let stages = pre[i] + inf[i] + post[i] + upd[i] + publish[i];
        assert!(
            stages <= frame[i],
            "{name}: frame {i}: stages {stages} > frame {}",
            frame[i]
        );
        assert!(method[i] <= inf[i], "{name}: frame {i}");
        assert!(nms[i] + check[i] <= post[i], "{name}: frame {i}");
        assert!(iou[i] <= upd[i], "{name}: frame {i}");
        assert!(payload[i] <= publish[i], "{name}: frame {i}");
    }
    // Real work: inference is the largest stage at the median (~2 ms on the
    // 2-core VMs), and a QoS 1 publish waits for a real round trip.
    let p50 = |f: &str| u(&functions[f]["stats"]["p50"]);
    let inf50 = p50("StandardInferenceHandler.run_inference");
    assert!(
        (200_000..100_000_000).contains(&inf50),
        "{name}: inference p50 {inf50} ns"
    );
    let pub50 = p50(if mode == "sync" {
        "publish_results"
    } else {
        "publish_results_async"
    });
    assert!(
        pub50 > p50("make_payload"),
        "{name}: publish p50 {pub50} ns"
    );
    eprintln!(
        "{name}: p50 ns: frame {} source {} preprocess {} inference {} postprocess {} track {} publish {}",
        p50("process_frame"),
        p50("frame_source"),
        p50("preprocess_frame"),
        inf50,
        p50("postprocess"),
        p50("Tracker.update"),
        pub50
    );

    // The broker delivered every frame's message, in order, with the
    // tracks stdout printed.
    assert_eq!(u(&r["published"]), FRAMES, "{name}");
    assert_eq!(u(&r["acked"]), FRAMES, "{name}");
    let messages = sub.wait_messages(FRAMES as usize, Duration::from_secs(10));
    assert_eq!(
        messages.len() as u64,
        FRAMES,
        "{name}: messages received on {topic}"
    );
    let frame_lines: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| l.starts_with("frame "))
        .collect();
    assert_eq!(
        frame_lines.len() as u64,
        FRAMES,
        "{name}: stdout:\n{}",
        run.stdout
    );
    for (i, (msg, line)) in messages.iter().zip(&frame_lines).enumerate() {
        let m: Value =
            serde_json::from_str(msg).unwrap_or_else(|e| panic!("{name}: payload {msg}: {e}"));
        assert_eq!(u(&m["frame"]), i as u64, "{name}: message {i}: {msg}");
        let ids: Vec<String> = m["tracks"]
            .as_array()
            .expect("tracks")
            .iter()
            .map(|t| u(&t[0]).to_string())
            .collect();
        let want = format!("tracks=[{}]", ids.join(","));
        assert!(line.contains(&want), "{name}: frame {i}: {line} vs {msg}");
        let rejected = (i as u64 + 1).is_multiple_of(RAISE_EVERY);
        assert_eq!(line.contains("dets=rejected"), rejected, "{name}: {line}");
    }
    assert!(
        run.stdout.ends_with(&format!(
            "frames={FRAMES} rejected={} tracks_created={}\n",
            FRAMES / RAISE_EVERY,
            u(&r["tracks_created"])
        )),
        "{name}: {}",
        run.stdout
    );
    run
}

#[test]
fn pipeline_sync_and_async_on_every_interpreter() {
    if !require_mosquitto() {
        return;
    }
    let matrix = pipeline_matrix();
    if matrix.is_empty() {
        return;
    }
    let broker = Mosquitto::start();
    let mut first: Option<(String, String)> = None;
    for env in &matrix {
        let sync = run_pipeline(env, &broker, "sync");
        let again = run_pipeline(env, &broker, "sync");
        assert_eq!(
            sync.stdout,
            again.stdout,
            "{}: stdout differs between two runs",
            env.name()
        );
        let asy = run_pipeline(env, &broker, "async");
        assert_eq!(
            sync.stdout,
            asy.stdout,
            "{}: async mode did different work",
            env.name()
        );
        // One set of wheels: every interpreter computes the same frames.
        match &first {
            None => first = Some((env.name(), sync.stdout.clone())),
            Some((who, out)) => assert_eq!(
                &sync.stdout,
                out,
                "pipeline.py stdout differs between {who} and {}",
                env.name()
            ),
        }
        for pkg in ["numpy", "onnxruntime", "onnx", "paho-mqtt"] {
            let v = sync.report["versions"][pkg]
                .as_str()
                .unwrap_or_default()
                .to_string();
            assert!(
                env.status.installed.contains(&format!("{pkg}=={v}")),
                "{}: {pkg} {v} is not the pinned one: {:?}",
                env.name(),
                env.status.installed
            );
        }
    }
    assert!(
        broker.log().contains("New client connected"),
        "{}",
        broker.log()
    );
}

#[test]
fn pipeline_waits_for_go_and_paces_frames() {
    let matrix = pipeline_matrix();
    // Debian's interpreter: the one every tracing test must cover.
    let Some(env) = matrix
        .iter()
        .find(|e| e.label == "deb-3.11")
        .or(matrix.first())
    else {
        return;
    };
    let mut fx = PyFixture::start(
        env,
        "pipeline.py",
        &["--frames", "25", "--fps", "50", "--broker", "none"],
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(fx.running(), "pipeline.py did not wait for its go file");
    fx.go();
    let run = fx.wait(TIMEOUT);
    let r = &run.report;
    assert_eq!(u(&r["frames"]), 25);
    assert_eq!(u(&r["published"]), 0);
    assert_eq!(u(&r["functions"]["publish_results"]["calls"]), 25);
    // 25 frames at 50 fps: 24 periods of 20 ms at least.
    let elapsed = u(&r["elapsed_ns"]);
    assert!(elapsed >= 480_000_000, "{elapsed} ns");
    assert!(elapsed < 2_000_000_000, "{elapsed} ns");
}

#[test]
fn pipeline_stops_on_sigint_and_reports_a_broker_error() {
    let matrix = pipeline_matrix();
    let Some(env) = matrix.first() else {
        return;
    };
    // --frames 0 runs until SIGINT, then finishes the frame and reports.
    let fx = PyFixture::start(
        env,
        "pipeline.py",
        &["--frames", "0", "--fps", "100", "--broker", "none"],
    );
    fx.go();
    std::thread::sleep(Duration::from_millis(500));
    fx.signal(libc::SIGINT);
    let run = fx.wait(TIMEOUT);
    let frames = u(&run.report["frames"]);
    assert!(frames >= 5, "{frames} frames");
    assert_eq!(
        u(&run.report["functions"]["process_frame"]["calls"]),
        frames
    );
    assert_eq!(
        run.stdout
            .lines()
            .filter(|l| l.starts_with("frame "))
            .count() as u64,
        frames
    );

    // Nobody listens on a fresh free port: one error line, exit 2, before ready.
    let port = free_port();
    let out = std::process::Command::new(&env.python)
        .arg(python_fixture("pipeline.py"))
        .args(["--frames", "1", "--broker", &format!("127.0.0.1:{port}")])
        .output()
        .expect("running pipeline.py");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with("error: cannot connect to the MQTT broker"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}
