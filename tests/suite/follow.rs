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

/// Spans of stage `w` by pid.
fn count_by_pid(out: &AgentOutput, pid: u32) -> usize {
    out.spans_of("w")
        .iter()
        .filter(|s| s["pid"].as_u64() == Some(u64::from(pid)))
        .count()
}

/// A fresh copy of the fixture, `<scratch>/prog`, and the stage `w` on
/// its work().
fn fresh_prog(name: &str) -> (PathBuf, String) {
    let prog = scratch_dir(name).join("prog");
    std::fs::copy(work_fixture(), &prog).unwrap();
    let stage = format!("w={}:work", prog.display());
    (prog, stage)
}

/// Starts `exe ARGS` (stdout discarded).
fn start(exe: &Path, args: &[&str]) -> std::process::Child {
    Command::new(exe)
        .args(args)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// Runs `exe ARGS` to its end; its pid.
fn run_to_end(exe: &Path, args: &[&str]) -> u32 {
    let mut child = start(exe, args);
    let pid = child.id();
    assert!(child.wait().unwrap().success());
    pid
}

/// `cp new prog.tmp && mv prog.tmp prog`: the path names a new inode.
fn deploy(fixture: &Path, prog: &Path) {
    let tmp = prog.with_extension("tmp");
    std::fs::copy(fixture, &tmp).unwrap();
    std::fs::rename(&tmp, prog).unwrap();
}

#[test]
fn a_binary_replaced_on_disk_is_traced_again_within_a_second() {
    if !require_bpf() {
        return;
    }
    let (prog, stage) = fresh_prog("follow-deploy");
    let mut agent = Agent::spawn(&["run", "--no-api", "--stage", &stage]);
    agent.wait_ready(T);
    let first = run_to_end(&prog, &["10"]);

    // A deploy, and the new binary started at once: 40 calls of 25 ms.
    deploy(&work_fixture(), &prog);
    let deployed = std::time::Instant::now();
    let mut running = start(&prog, &["40", "0", "25"]);
    let attach = agent
        .wait_for_event(Duration::from_secs(5), |v| {
            v["type"] == "attach" && v["reason"] == "replaced"
        })
        .expect("an attach record for the replaced binary");
    let took = deployed.elapsed();
    assert!(took < Duration::from_secs(1), "attached after {took:?}");
    let inode = std::fs::metadata(&prog).unwrap();
    assert_eq!(
        attach["inode"].as_u64(),
        Some(std::os::unix::fs::MetadataExt::ino(&inode))
    );
    assert_eq!(attach["target"], prog.to_str().unwrap());
    assert_eq!(attach["probes"][0]["stage"], "w");
    let second = running.id();
    assert_eq!(attach["pids"], serde_json::json!([second]));
    let gap = attach["missed"][0]["gap_ms"].as_u64().unwrap();
    assert_eq!(attach["missed"][0]["pid"], second);
    assert!(gap < 1000, "{attach}");
    assert!(running.wait().unwrap().success());

    // Started after the attach: every call.
    let third = run_to_end(&prog, &["30"]);
    std::thread::sleep(Duration::from_millis(200));
    let out = agent.output();
    assert_eq!(count_by_pid(&out, first), 10);
    assert_eq!(count_by_pid(&out, third), 30);
    // The calls of the gap were not seen; every later one was.
    let seen = count_by_pid(&out, second) as u64;
    let unseen_at_most = gap / 25 + 1;
    assert!(
        seen <= 40 && seen + unseen_at_most >= 40,
        "{seen} of 40 seen with a gap of {gap} ms"
    );
    let starts = out.of_type("attach");
    assert_eq!(starts[0]["reason"], "start");
}

#[test]
fn a_launched_script_runs_the_replaced_binary_traced() {
    if !require_bpf() {
        return;
    }
    let dir = scratch_dir("follow-deploy-cmd");
    let prog = dir.join("prog");
    std::fs::copy(work_fixture(), &prog).unwrap();
    let script = format!("{0} 10; sleep 1.5; {0} 20", prog.display());
    let stage = format!("w={}:work", prog.display());
    let mut agent = Agent::spawn(&[
        "run", "--no-api", "--stage", &stage, "--", "bash", "-c", &script,
    ]);
    agent.wait_ready(T);
    std::thread::sleep(Duration::from_millis(300));
    deploy(&work_fixture(), &prog);
    agent
        .wait_for_event(Duration::from_secs(1), |v| v["reason"] == "replaced")
        .expect("attached to the new binary within a second");
    agent.wait_exit(T);
    let out = agent.output();
    assert!(out.status.success(), "{}", out.stderr);
    // Both runs, the second on the new inode.
    assert_eq!(out.spans_of("w").len(), 30, "{}", out.stderr);
}

fn stage_toml(name: &str, prog: &Path, symbol: &str) -> String {
    format!(
        "[[stage]]\nname = \"{name}\"\ntarget = \"{}\"\nsymbol = \"{symbol}\"\n",
        prog.display()
    )
}

/// Writes `text` to `config` and sends SIGHUP to the agent.
fn reload(agent: &Agent, config: &Path, text: &str) {
    std::fs::write(config, text).unwrap();
    // SAFETY: kill(2) on the agent we started.
    unsafe { libc::kill(agent.pid() as libc::pid_t, libc::SIGHUP) };
}

fn reload_record(agent: &mut Agent) -> serde_json::Value {
    agent
        .wait_for_event(Duration::from_secs(10), |v| v["type"] == "reload")
        .expect("a reload record")
}

#[test]
fn sighup_reloads_the_config_keeping_what_was_counted() {
    if !require_bpf() {
        return;
    }
    let dir = scratch_dir("follow-reload");
    let prog = dir.join("prog");
    std::fs::copy(work_fixture(), &prog).unwrap();
    let config = dir.join("pipeline.toml");
    let w = stage_toml("w", &prog, "work");
    let t = stage_toml("t", &prog, "tock");
    std::fs::write(&config, &w).unwrap();
    let mut agent = Agent::spawn(&["run", "--no-api", "--config", config.to_str().unwrap()]);
    agent.wait_ready(T);
    run_to_end(&prog, &["20"]);

    // Add t.
    reload(&agent, &config, &format!("{w}{t}"));
    let r = reload_record(&mut agent);
    assert_eq!(r["added"], serde_json::json!(["t"]), "{r}");
    assert_eq!(r["unchanged"], serde_json::json!(["w"]));
    assert_eq!(r["removed"], serde_json::json!([]));
    let a = agent
        .wait_for_event(Duration::from_secs(5), |v| v["reason"] == "reload")
        .expect("an attach record for the new stage");
    assert_eq!(a["probes"][0]["stage"], "t");
    run_to_end(&prog, &["30"]);

    // Remove w: it keeps its 50 calls.
    reload(&agent, &config, &t);
    let r = reload_record(&mut agent);
    assert_eq!(r["removed"], serde_json::json!(["w"]), "{r}");
    assert_eq!(r["unchanged"], serde_json::json!(["t"]));
    run_to_end(&prog, &["10"]);

    // t now times work(): changed, same series.
    reload(&agent, &config, &stage_toml("t", &prog, "work"));
    let r = reload_record(&mut agent);
    assert_eq!(r["changed"], serde_json::json!(["t"]), "{r}");
    run_to_end(&prog, &["7"]);

    // A bad config is refused with one line; the running one goes on.
    // The previous reload's stderr line is written before its record, but
    // read by another thread: wait for it so it is not taken for this one's.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !agent.stderr_so_far().contains("1 changed, 0 unchanged")
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let before = agent.stderr_so_far();
    reload(&agent, &config, "stage = [");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while agent.stderr_so_far() == before && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let said = agent.stderr_so_far()[before.len()..].to_string();
    assert_eq!(said.lines().count(), 1, "{said}");
    assert!(
        said.starts_with(&format!(
            "error: reload of {} refused, still tracing with the previous config: config {}:1:",
            config.display(),
            config.display()
        )),
        "{said}"
    );
    run_to_end(&prog, &["5"]);
    std::thread::sleep(Duration::from_millis(200));
    let out = agent.output();
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(out.summary_of("w").unwrap()["count"], 50);
    assert_eq!(out.summary_of("t").unwrap()["count"], 30 + 10 + 7 + 5);
    assert_eq!(out.of_type("reload").len(), 3);
}

/// Waits for the `restart` attach record of `pid`; how long it took from
/// `since`.
fn restart_of(agent: &mut Agent, pid: u32) -> serde_json::Value {
    agent
        .wait_for_event(Duration::from_secs(5), |v| {
            v["reason"] == "restart" && v["pids"][0] == pid
        })
        .unwrap_or_else(|| panic!("no restart record for {pid}"))
}

/// A restarted process's spans: the calls of its gap (25 ms each) were
/// not seen, every later one was.
fn assert_seen_after_gap(out: &AgentOutput, pid: u32, calls: u64, gap_ms: u64) {
    let seen = count_by_pid(out, pid) as u64;
    assert!(
        seen <= calls && seen + gap_ms / 25 + 1 >= calls,
        "{seen} of {calls} seen after a gap of {gap_ms} ms"
    );
}

#[test]
fn follow_picks_up_a_restarted_command_within_a_second() {
    if !require_bpf() {
        return;
    }
    let (prog, stage) = fresh_prog("follow-restart-cmd");
    let exe = prog.to_str().unwrap();
    let mut agent = Agent::spawn(&[
        "run", "--no-api", "--follow", "--stage", &stage, "--", exe, "8", "0", "25",
    ]);
    agent.wait_ready(T);
    // The command exits; the agent goes on. A supervisor starts it again.
    std::thread::sleep(Duration::from_millis(600));
    let started = std::time::Instant::now();
    let mut again = start(&prog, &["40", "0", "25"]);
    // Other arguments: another program, not a restart.
    let other = run_to_end(&prog, &["3"]);
    let r = restart_of(&mut agent, again.id());
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(r["target"], exe);
    let gap = r["missed"][0]["gap_ms"].as_u64().unwrap();
    assert!(gap < 1000, "{r}");
    assert!(again.wait().unwrap().success());
    std::thread::sleep(Duration::from_millis(300));
    let out = agent.output();
    let launched = out.start().unwrap()["pids"][0].as_u64().unwrap() as u32;
    assert_eq!(count_by_pid(&out, launched), 8);
    assert_eq!(count_by_pid(&out, other), 0);
    assert_seen_after_gap(&out, again.id(), 40, gap);
    // One stage, one series across both processes.
    let total = out.summary_of("w").unwrap()["count"].as_u64().unwrap();
    assert_eq!(total as usize, out.spans_of("w").len());
}

#[test]
fn follow_picks_up_a_restarted_pid_even_after_a_deploy() {
    if !require_bpf() {
        return;
    }
    let dir = scratch_dir("follow-restart-pid");
    let prog = dir.join("prog");
    std::fs::copy(work_fixture(), &prog).unwrap();
    let first = start(&prog, &["40", "0", "25"]);
    let first_pid = first.id().to_string();
    let stage = format!("w={}:work", prog.display());
    let mut agent = Agent::spawn(&[
        "run", "--no-api", "--follow", "-p", &first_pid, "--stage", &stage,
    ]);
    agent.wait_ready(T);
    let mut first = first;
    assert!(first.wait().unwrap().success());
    // A deploy, then the restart on the new binary.
    deploy(&work_fixture(), &prog);
    std::thread::sleep(Duration::from_millis(100));
    let started = std::time::Instant::now();
    let mut again = start(&prog, &["40", "0", "25"]);
    let r = restart_of(&mut agent, again.id());
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let gap = r["missed"][0]["gap_ms"].as_u64().unwrap();
    assert!(again.wait().unwrap().success());
    std::thread::sleep(Duration::from_millis(300));
    let out = agent.output();
    assert!(out.status.success(), "{}", out.stderr);
    // The new binary got the probes (at the same check or the one before).
    let replaced = out
        .of_type("attach")
        .into_iter()
        .find(|v| v["reason"] == "replaced")
        .cloned()
        .expect("the new binary's probes");
    assert_eq!(replaced["target"], prog.to_str().unwrap());
    assert!(gap < 1000, "{r}");
    assert_seen_after_gap(&out, again.id(), 40, gap);
}

#[test]
fn follow_needs_pids_or_a_command() {
    let out = Agent::run(&["run", "--follow", "--stage", "w=/bin/true:main"], T);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert_eq!(
        out.stderr.trim(),
        "error: --follow needs -p PID or a command to launch: without them every process running the targets is traced already"
    );
}

#[test]
fn another_process_of_the_same_binary_is_neither_counted_nor_unmatched() {
    if !require_bpf() {
        return;
    }
    let (prog, stage) = fresh_prog("follow-other");
    let exe = prog.to_str().unwrap();
    let mut agent = Agent::spawn(&[
        "run", "--no-api", "--stage", &stage, "--", exe, "10", "0", "50",
    ]);
    agent.wait_ready(T);
    // Probes are in every process running prog; the pid filter drops this one.
    run_to_end(&prog, &["30"]);
    agent.wait_exit(T);
    let out = agent.output();
    assert_eq!(out.spans_of("w").len(), 10);
    assert!(
        out.stderr.contains(" 0 unmatched returns"),
        "{}",
        out.stderr
    );
}
