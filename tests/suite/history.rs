//! History: `run --history FILE` keeps one row per stage per interval in
//! SQLite; the rows outlive a SIGKILLed agent; `adeline-trace history` and
//! `GET /api/history` read them; bad files and arguments get one-line errors.
use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use adeline_trace_tests::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(120);
/// Calls per frame of each demo stage with the default flags (3 layers,
/// refine recursion 3).
const CALLS_PER_FRAME: [(&str, f64); 9] = [
    ("process_frame", 1.0),
    ("decode", 1.0),
    ("preprocess", 1.0),
    ("infer", 1.0),
    ("infer_layer", 3.0),
    ("postprocess", 1.0),
    ("refine", 3.0),
    ("track", 1.0),
    ("publish", 1.0),
];
const FPS: f64 = 20.0;

/// `adeline-trace history ARGS...`: (success, stdout, stderr).
fn history_cmd(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(agent_bin())
        .arg("history")
        .args(args)
        .output()
        .expect("running adeline-trace history");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `history --db DB --json` parsed.
fn history_json(db: &Path) -> Value {
    let (ok, stdout, stderr) = history_cmd(&["--db", db.to_str().unwrap(), "--json"]);
    assert!(ok, "history failed: {stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

/// The agent tracing the demo at 20 fps with frames, no spans, and `extra`.
fn spawn_demo(extra: &[&str], frames: &str) -> Agent {
    let mut extra = extra.to_vec();
    extra.extend(["--no-spans", "--frame-stage", "process_frame"]);
    let fps = FPS.to_string();
    let args = demo_run_args(&extra, &["--frames", frames, "--fps", &fps]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Agent::spawn(&args)
}

fn rows_of<'a>(report: &'a Value, stage: &str) -> Vec<&'a Value> {
    report["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .filter(|r| r["stage"] == stage)
        .collect()
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

// Needs the run loop to record into the store (run --history).
#[test]
fn rows_survive_sigkill_and_match_the_demo_rate() {
    if !require_bpf() {
        return;
    }
    let dir = scratch_dir("history-kill");
    let db = dir.join("state/history.db");
    let mut agent = spawn_demo(
        &[
            "--no-api",
            "--history",
            db.to_str().unwrap(),
            "--history-interval",
            "1s",
        ],
        "400",
    );
    agent.wait_ready(T);
    std::thread::sleep(Duration::from_millis(5500));
    // SIGKILL the agent and the demo it launched (its process group).
    // SAFETY: kill(2) on the process group the harness created for the agent.
    unsafe { libc::kill(-(agent.pid() as libc::pid_t), libc::SIGKILL) };
    let status = agent.wait_exit(Duration::from_secs(10));
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");

    let report = history_json(&db);
    for (stage, per_frame) in CALLS_PER_FRAME {
        let rows = rows_of(&report, stage);
        assert!(rows.len() >= 3, "{stage}: {} rows: {report}", rows.len());
        for r in &rows {
            let interval = f(&r["interval_ns"]);
            assert!(interval > 0.0 && interval <= 1.05e9, "{r}");
        }
        // The first interval with calls may be partial (the demo starts in
        // it); the ones after it are whole.
        let whole: Vec<&&Value> = rows
            .iter()
            .skip_while(|r| r["count"] == 0)
            .skip(1)
            .collect();
        assert!(whole.len() >= 3, "{stage}: whole intervals {whole:?}");
        let want = FPS * per_frame;
        for r in whole {
            let seconds = f(&r["interval_ns"]) / 1e9;
            assert!((seconds - 1.0).abs() < 0.05, "{r}");
            let count = f(&r["count"]);
            assert!(
                (count / (want * seconds) - 1.0).abs() <= 0.2,
                "{stage}: {count} calls in {seconds} s, want {want}/s ±20%: {r}"
            );
            assert!((f(&r["rate_hz"]) / want - 1.0).abs() <= 0.2, "{r}");
            assert!((f(&r["fps"]) / FPS - 1.0).abs() <= 0.2, "{r}");
            assert!(f(&r["p50_ns"]) > 0.0 && f(&r["p99_ns"]) >= f(&r["p50_ns"]));
        }
    }
    // The table: one per stage.
    let (ok, table, stderr) = history_cmd(&["--db", db.to_str().unwrap(), "--since", "10m"]);
    assert!(ok, "{stderr}");
    for (stage, _) in CALLS_PER_FRAME {
        assert!(table.contains(&format!("STAGE {stage}\n")), "{table}");
    }
    assert!(table.contains("CALLS/S"), "{table}");
    assert!(table.contains("FRAMES\n"), "{table}");
    // One stage only.
    let (ok, infer, stderr) =
        history_cmd(&["--db", db.to_str().unwrap(), "--stage", "infer", "--json"]);
    assert!(ok, "{stderr}");
    let infer: Value = serde_json::from_str(&infer).unwrap();
    let rows = infer["rows"].as_array().unwrap();
    assert!(!rows.is_empty() && rows.iter().all(|r| r["stage"] == "infer"));
}

// Needs the run loop to record into the store (run --history).
#[test]
fn api_serves_the_live_history() {
    if !require_bpf() {
        return;
    }
    let dir = scratch_dir("history-api");
    let db = dir.join("history.db");
    let port = free_port();
    let port_arg = port.to_string();
    let mut agent = spawn_demo(
        &[
            "--api-port",
            &port_arg,
            "--history",
            db.to_str().unwrap(),
            "--history-interval",
            "1s",
        ],
        "400",
    );
    agent.wait_ready(T);
    // Wait for 3 intervals of every stage.
    let deadline = Instant::now() + Duration::from_secs(20);
    let report = loop {
        let report = http_json(port, "/api/history?since=1h");
        if CALLS_PER_FRAME
            .iter()
            .all(|(s, _)| rows_of(&report, s).len() >= 3)
        {
            break report;
        }
        assert!(
            Instant::now() < deadline,
            "no 3 intervals of every stage within 20 s: {report}"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    let row = rows_of(&report, "infer")[2];
    for field in [
        "ts_ns",
        "interval_ns",
        "stage",
        "count",
        "rate_hz",
        "p50_ns",
        "p95_ns",
        "p99_ns",
        "max_ns",
        "self_ns",
        "frame_share",
        "fps",
    ] {
        assert!(row.get(field).is_some(), "no {field}: {row}");
    }
    assert!(report["alerts"].is_array());
    let infer = http_json(port, "/api/history?since=1m&stage=infer");
    let rows = infer["rows"].as_array().unwrap();
    assert!(rows.len() >= 3 && rows.iter().all(|r| r["stage"] == "infer"));
    let (status, body) = http_get(port, "/api/history?since=later");
    assert_eq!(status, 400, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("bad since 'later' ("),
        "{body}"
    );
    let status = agent.stop();
    assert!(status.success(), "{status:?}: {}", agent.stderr_so_far());
    // After a clean stop the file reads the same without the agent.
    let after = history_json(&db);
    assert!(rows_of(&after, "infer").len() >= 3, "{after}");
}

#[test]
fn api_without_history_says_how_to_keep_it() {
    if !require_bpf() {
        return;
    }
    let port = free_port();
    let port_arg = port.to_string();
    let mut agent = spawn_demo(&["--api-port", &port_arg], "400");
    agent.wait_ready(T);
    let (status, body) = http_get(port, "/api/history?since=1h");
    assert_eq!(status, 404, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"error": "this agent keeps no history: start it with --history FILE"})
    );
    agent.stop();
}

#[test]
fn history_command_errors_are_one_line() {
    let dir = scratch_dir("history-errors");
    let missing = dir.join("none.db");
    let (ok, _, stderr) = history_cmd(&["--db", missing.to_str().unwrap()]);
    assert!(!ok);
    assert_eq!(
        stderr.trim_end(),
        format!(
            "error: no history database at {0}: start the agent with run --history {0}",
            missing.display()
        )
    );
    assert!(!missing.exists(), "the reader created the file");

    let text = dir.join("notes.txt");
    std::fs::write(&text, "not a database\n".repeat(200)).unwrap();
    let (ok, _, stderr) = history_cmd(&["--db", text.to_str().unwrap()]);
    assert!(!ok);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("is not a SQLite database"), "{stderr}");

    let (ok, _, stderr) = history_cmd(&["--db", text.to_str().unwrap(), "--since", "lately"]);
    assert!(!ok);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: bad --since 'lately' ("),
        "{stderr}"
    );
}
