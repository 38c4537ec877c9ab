//! Following the pipeline: a launched command's children (fork, exec,
//! wrapper scripts) are traced with exact counts; `--no-follow-children`
//! traces the launched process only.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use adeline_trace_tests::*;

const T: Duration = Duration::from_secs(120);

/// `follow-work CALLS [CHILDREN [SLEEP_MS]]` (tests/fixtures/follow/work.c),
/// built once per test process (the tests run in parallel).
fn work_fixture() -> PathBuf {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| small_fixture("follow-work", "follow/work.c", "gcc", &["-O2", "-g"]))
        .clone()
}

/// Runs `run --stage w=EXE:work EXTRA -- COMMAND` to the command's end;
/// the command's stdout and the events.
fn trace(exe: &Path, extra: &[&str], command: &[&str]) -> (String, Vec<serde_json::Value>) {
    let dir = scratch_dir("follow");
    let events = dir.join("events.jsonl");
    let mut cmd = Command::new(agent_bin());
    cmd.args(["run", "--no-api", "--stage"])
        .arg(format!("w={}:work", exe.display()))
        .args(extra)
        .arg("-o")
        .arg(&events)
        .arg("--")
        .args(command);
    let (status, stdout, stderr) = run_captured(&mut cmd, T);
    assert!(status.success(), "{stderr}");
    (stdout, read_jsonl(&events))
}

fn spans(events: &[serde_json::Value]) -> Vec<&serde_json::Value> {
    events
        .iter()
        .filter(|v| v["type"] == "span" && v["stage"] == "w")
        .collect()
}

fn distinct_pids(spans: &[&serde_json::Value]) -> usize {
    let mut pids: Vec<u64> = spans.iter().filter_map(|s| s["pid"].as_u64()).collect();
    pids.sort_unstable();
    pids.dedup();
    pids.len()
}

#[test]
fn forked_and_execed_children_are_traced() {
    if !require_bpf() {
        return;
    }
    let exe = work_fixture();
    let exe_s = exe.to_str().unwrap();
    let (status, untraced, _) = run_captured(Command::new(&exe).args(["50", "2"]), T);
    assert!(status.success());
    let (stdout, events) = trace(&exe, &[], &[exe_s, "50", "2"]);
    assert_eq!(stdout, untraced, "the traced program's output changed");
    let spans = spans(&events);
    // 50 in the launched process, 50 in a forked child, 50 in an exec'd one.
    assert_eq!(spans.len(), 150);
    assert_eq!(distinct_pids(&spans), 3);
}

#[test]
fn a_wrapper_script_is_followed_into_each_run() {
    if !require_bpf() {
        return;
    }
    let exe = work_fixture();
    let script = format!("{0} 40; {0} 60", exe.display());
    let (_, events) = trace(&exe, &[], &["bash", "-c", &script]);
    let spans = spans(&events);
    assert_eq!(spans.len(), 100);
    assert_eq!(distinct_pids(&spans), 2);
}

#[test]
fn no_follow_children_traces_the_launched_process_only() {
    if !require_bpf() {
        return;
    }
    let exe = work_fixture();
    let exe_s = exe.to_str().unwrap();
    let (_, events) = trace(&exe, &["--no-follow-children"], &[exe_s, "50", "2"]);
    let spans = spans(&events);
    assert_eq!(spans.len(), 50);
    assert_eq!(distinct_pids(&spans), 1);
}
