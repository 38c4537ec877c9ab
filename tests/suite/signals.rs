//! Every signal the agent handles (adeline-trace/src/signals.rs) stops it
//! cleanly: exit 0, the stop named on stderr, the summary written, the
//! API's socket file removed, the launched command ended, and history's
//! last, partial interval written, holding every call the summary counted.
use std::{process::Command, time::Duration};

use adeline_trace_tests::*;
use serde_json::Value;

const FPS: u64 = 20;

/// Runs the demo under the agent, sends `sig` after `after`, and checks
/// the clean stop.
fn stops_cleanly(sig: libc::c_int, name: &str) {
    let dir = scratch_dir(&format!("signal-{name}"));
    let sock = dir.join("agent.sock");
    let db = dir.join("history.db");
    let fps = FPS.to_string();
    let args = demo_run_args(
        &[
            "--no-spans",
            "--frame-stage",
            "process_frame",
            "--api-port",
            "0",
            "--api-socket",
            sock.to_str().unwrap(),
            "--history",
            db.to_str().unwrap(),
            "--history-interval",
            "60s",
        ],
        &["--frames", "0", "--fps", &fps],
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut agent = Agent::spawn(&args);
    let start = agent.wait_ready(Duration::from_secs(30));
    let demo_pid = start["pids"][0].as_u64().expect("the launched pid") as i32;
    std::thread::sleep(Duration::from_millis(2000));
    assert!(sock.exists(), "{name}: the socket is served");
    // SAFETY: kill(2) on the agent this test started.
    assert_eq!(unsafe { libc::kill(agent.pid() as libc::pid_t, sig) }, 0);
    let status = agent.wait_exit(Duration::from_secs(15));
    let out = agent.output();
    assert_eq!(status.code(), Some(0), "{name}: {status:?}: {}", out.stderr);
    let stopped: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("adeline-trace: stopped ("))
        .collect();
    assert_eq!(stopped.len(), 1, "{name}: {}", out.stderr);
    assert!(
        stopped[0].starts_with(&format!("adeline-trace: stopped (signal {name}) after ")),
        "{}",
        stopped[0]
    );
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    assert!(!sock.exists(), "{name}: the socket file is removed");
    // The launched command was ended (and reaped).
    // SAFETY: kill(2) with signal 0 only checks that the pid exists.
    assert_ne!(
        unsafe { libc::kill(demo_pid, 0) },
        0,
        "{name}: demo left running"
    );

    // History: one row per stage, the whole run shorter than its 60 s
    // interval, holding exactly the calls of the summary.
    let report = Command::new(agent_bin())
        .args(["history", "--db", db.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    assert!(report.status.success(), "{name}: history failed");
    let report: Value = serde_json::from_slice(&report.stdout).unwrap();
    for stage in ["process_frame", "decode", "infer_layer"] {
        let rows: Vec<&Value> = report["rows"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["stage"] == stage)
            .collect();
        assert_eq!(rows.len(), 1, "{name} {stage}: {report}");
        let interval_s = rows[0]["interval_ns"].as_f64().unwrap() / 1e9;
        assert!(
            (2.0..10.0).contains(&interval_s),
            "{name} {stage}: {interval_s} s"
        );
        let summary = out.summary_of(stage).unwrap()["count"].as_u64().unwrap();
        assert!(summary >= FPS, "{name} {stage}: {summary} calls");
        assert_eq!(
            rows[0]["count"].as_u64(),
            Some(summary),
            "{name} {stage}: history and summary disagree"
        );
    }
}

#[test]
fn sigint_stops_cleanly() {
    if require_bpf() {
        stops_cleanly(libc::SIGINT, "SIGINT");
    }
}

#[test]
fn sigterm_stops_cleanly() {
    if require_bpf() {
        stops_cleanly(libc::SIGTERM, "SIGTERM");
    }
}

#[test]
fn sigquit_stops_cleanly() {
    if require_bpf() {
        stops_cleanly(libc::SIGQUIT, "SIGQUIT");
    }
}

#[test]
fn sighup_stops_cleanly_until_it_reloads() {
    if require_bpf() {
        stops_cleanly(libc::SIGHUP, "SIGHUP");
    }
}
