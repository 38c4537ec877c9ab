//! Default memory mode: the traced process's RSS (rss_stat, procfs
//! for threads), sampled about once a second, its growth, the resident
//! bytes charged to each stage, and the memory alert rules. `/api/summary`
//! and the JSON stream are checked against `/proc/PID/status` and what the
//! demo allocates on purpose (`--leak-bytes-per-frame`,
//! `--churn-bytes-per-frame`).
use std::time::Duration;

use adeline_trace_tests::*;
use serde_json::Value;

const MIB: f64 = 1_048_576.0;
/// Alert rules every agent here runs with.
const RSS_RULE: &str = "rss_growth > 5MB/s for 2s";
const LEAK_RULE: &str = "leak(track) for 3s";

/// The rules firing now, from `/api/alerts`.
fn firing(port: u16) -> Vec<String> {
    let alerts = http_json(port, "/api/alerts");
    alerts["alerts"]
        .as_array()
        .unwrap_or_else(|| panic!("no alerts list in {alerts}"))
        .iter()
        .filter(|a| a["state"] == "firing")
        .map(|a| a["rule"].as_str().unwrap().to_string())
        .collect()
}

/// The agent launching the demo at `fps` frames a second with `demo_extra`,
/// frames rooted at process_frame, API on a free port: (agent, port, demo pid).
fn start(fps: &str, demo_extra: &[&str]) -> (Agent, u16, u32) {
    let (agent, port, pid, _) = start_line(fps, demo_extra, &[]);
    (agent, port, pid)
}

/// The same with `env` set for the agent, and the `start` line.
fn start_line(fps: &str, demo_extra: &[&str], env: &[(&str, &str)]) -> (Agent, u16, u32, Value) {
    let port = free_port();
    let port_arg = port.to_string();
    let extra = [
        "--no-spans",
        "--frame-stage",
        "process_frame",
        "--api-port",
        &port_arg,
        "--alert",
        RSS_RULE,
        "--alert",
        LEAK_RULE,
    ];
    let mut demo = vec!["--frames", "0", "--fps", fps];
    demo.extend_from_slice(demo_extra);
    let args = demo_run_args(&extra, &demo);
    let mut cmd = std::process::Command::new(agent_bin());
    cmd.args(&args).envs(env.iter().copied());
    let mut agent = Agent::spawn_command(cmd);
    let start = agent.wait_ready(Duration::from_secs(60));
    let pid = start["pids"][0]
        .as_u64()
        .unwrap_or_else(|| panic!("no pid in the start line {start}")) as u32;
    (agent, port, pid, start)
}

/// The `memory` entry of `pid` in the snapshot of `window`, and the snapshot.
fn memory_of(port: u16, window: &str, pid: u32) -> (Value, Value) {
    let snapshot = http_json(port, &format!("/api/summary?window={window}"));
    let entry = snapshot["memory"]
        .as_array()
        .and_then(|m| m.iter().find(|e| e["pid"] == pid).cloned())
        .unwrap_or_else(|| panic!("no memory entry for pid {pid} in {snapshot}"));
    (entry, snapshot)
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions.
    let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig})");
}

#[test]
fn a_steady_leak_is_reported_as_growth() {
    if !require_bpf() {
        return;
    }
    // 256 KiB a frame at 40 FPS: 10 MiB/s, about 130 MiB after 13 s, far
    // from anything a test host would mind.
    const LEAK: f64 = 262_144.0;
    let (mut agent, port, pid) = start("40", &["--leak-bytes-per-frame", "262144"]);
    // 13 s: the 10 s fit starts after the demo's start-up allocations.
    std::thread::sleep(Duration::from_secs(13));

    let (mem, snapshot) = memory_of(port, "10s", pid);
    // The expected slope uses the FPS the demo really reached over the same
    // 10 s (a debug build may fall a little short of 40): each frame leaks
    // exactly LEAK resident bytes (64 touched pages of an mmap'd chunk).
    let fps = snapshot["frames"]["fps"].as_f64().expect("frames.fps");
    let expected = LEAK * fps;
    let growth = mem["growth_bytes_per_s"].as_f64().expect("a growth rate");
    // 10%: the samples are taken by a 1 s timer whose ticks jitter by a few
    // ms, and frames are paced by sleeps; a least-squares fit over ~10
    // samples of a straight line lands within a few percent.
    assert!(
        (growth / expected - 1.0).abs() <= 0.10,
        "growth {:.2} MiB/s, expected {:.2} MiB/s ({fps:.1} fps x 256 KiB): {mem}",
        growth / MIB,
        expected / MIB
    );
    eprintln!(
        "leak: growth {:.3} MiB/s, expected {:.3} MiB/s at {fps:.2} fps, {} samples",
        growth / MIB,
        expected / MIB,
        mem["samples"]
    );
    assert!(
        (9..=12).contains(&mem["samples"].as_u64().unwrap()),
        "{mem}"
    );
    assert!(mem["threads"].as_u64().unwrap() >= 1, "{mem}");
    assert_eq!(mem["rss_source"], "rss_stat", "{mem}");
    // 10 MiB/s: both memory rules fire (for 2 s and 3 s, well past by now).
    let rules = firing(port);
    assert!(
        rules.contains(&RSS_RULE.to_string()) && rules.contains(&LEAK_RULE.to_string()),
        "firing: {rules:?}"
    );
    // The 1 s window fits over the last 10 s too (never a 1-point slope).
    let (one, _) = memory_of(port, "1s", pid);
    assert!(one["growth_bytes_per_s"].as_f64().is_some(), "{one}");

    // RSS "at the same moment": the RSS grows 10 MiB/s and a sample may be
    // up to a second old, so stop the demo first, let the sampler take at
    // least one sample of the stopped process, then compare. 5% covers the
    // difference between statm (the agent) and VmRSS (status), which the
    // kernel counts alike but may update lazily per thread.
    signal(pid, libc::SIGSTOP);
    std::thread::sleep(Duration::from_millis(1500));
    let (mem, _) = memory_of(port, "10s", pid);
    let vmrss = status_vmrss_bytes(pid).expect("the demo is there") as f64;
    signal(pid, libc::SIGCONT);
    let rss = mem["rss_bytes"].as_f64().unwrap();
    eprintln!(
        "leak: stopped demo rss {:.2} MiB, VmRSS {:.2} MiB",
        rss / MIB,
        vmrss / MIB
    );
    assert!(
        (rss / vmrss - 1.0).abs() <= 0.05,
        "rss {:.1} MiB vs VmRSS {:.1} MiB",
        rss / MIB,
        vmrss / MIB
    );
    assert!(rss > 100.0 * MIB, "the leak shows: {:.1} MiB", rss / MIB);
    assert!(agent.stop().success(), "{}", agent.stderr_so_far());
}

#[test]
fn churn_without_a_leak_is_flat() {
    if !require_bpf() {
        return;
    }
    // 1 MiB allocated, touched and freed in every frame: 40 MiB/s through the
    // allocator, none of it kept.
    let (mut agent, port, pid) = start("40", &["--churn-bytes-per-frame", "1048576"]);
    std::thread::sleep(Duration::from_secs(12));
    let (mem, _) = memory_of(port, "10s", pid);
    let vmrss = status_vmrss_bytes(pid).expect("the demo is there") as f64;
    let growth = mem["growth_bytes_per_s"].as_f64().expect("a growth rate");
    // < 1 MiB/s: the RSS may step by one freed-but-kept chunk (the allocator
    // keeps up to its trim threshold), which over 10 s is well under 1 MiB/s;
    // a leak of the churned size would be 40 MiB/s.
    assert!(
        growth.abs() < MIB,
        "growth {:.3} MiB/s without a leak: {mem}",
        growth / MIB
    );
    let rss = mem["rss_bytes"].as_f64().unwrap();
    eprintln!(
        "churn: growth {:.4} MiB/s, rss {:.2} MiB, VmRSS {:.2} MiB",
        growth / MIB,
        rss / MIB,
        vmrss / MIB
    );
    assert!(firing(port).is_empty(), "firing: {:?}", firing(port));
    // Flat RSS: a sample up to a second old still matches VmRSS within 5%.
    assert!(
        (rss / vmrss - 1.0).abs() <= 0.05,
        "rss {rss} vs VmRSS {vmrss}"
    );
    assert!(agent.stop().success(), "{}", agent.stderr_so_far());
}

#[test]
fn mappings_are_attributed_to_the_leaking_stage() {
    if !require_bpf() {
        return;
    }
    // 256 KiB per frame leaked in `track`: glibc serves it with one mmap of
    // 256 KiB + its 16-byte chunk header, rounded up to pages = 266240 bytes.
    let args = demo_run_args(
        &[
            "--no-api",
            "--no-spans",
            "--frame-stage",
            "process_frame",
            "--stats-interval",
            "200ms",
        ],
        &[
            "--frames",
            "25",
            "--fps",
            "50",
            "--leak-bytes-per-frame",
            "262144",
        ],
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = Agent::run(&args, Duration::from_secs(120));
    assert!(out.status.success(), "{}", out.stderr);
    assert!(
        !out.stderr.contains("memory mappings are not traced"),
        "{}",
        out.stderr
    );
    // The default rss_stat hook is the classic tracepoint.
    assert_eq!(out.of_type("start")[0]["rss_hook"], "kmem:rss_stat");
    let memory = out.of_type("memory");
    let last = memory.last().expect("memory objects every stats interval");
    let stages = last["stages"].as_array().unwrap();
    let track = stages
        .iter()
        .find(|s| s["stage"] == "track")
        .expect("track mapped memory");
    assert_eq!(track["mapped_bytes"], 25 * 266_240, "{track}");
    assert_eq!(track["unmapped_bytes"], 0, "{track}");
    assert_eq!(track["mapped_per_frame"], 266_240.0, "{track}");
    // No other traced stage maps memory (the frame buffers are reused; a
    // page or so faulted in elsewhere is charged, not mapped).
    let others: Vec<&Value> = stages
        .iter()
        .filter(|s| s["stage"] != "track" && s["stage"] != "(no stage)")
        .filter(|s| s["mapped_bytes"] != 0 || s["unmapped_bytes"] != 0)
        .collect();
    assert!(others.is_empty(), "{others:?}");
    // RSS is sampled once a second (tested above); here: the right process.
    let pid = out.fixture_report().unwrap()["pid"].clone();
    assert_eq!(last["processes"][0]["pid"], pid, "{last}");
}

#[test]
fn small_leaks_in_a_thread_are_charged_to_their_stage() {
    if !require_bpf() {
        return;
    }
    // 16 KiB a frame at 100 FPS in the worker thread: glibc serves it from
    // the thread's arena, which grows without mmap or brk (mprotect), so
    // only the resident pages tell: kmem:rss_stat charges each page fault
    // to the stage running on the faulting thread.
    const LEAK: f64 = 16_384.0;
    let args = demo_run_args(
        &[
            "--no-api",
            "--no-spans",
            "--frame-stage",
            "process_frame",
            "--alert",
            LEAK_RULE,
        ],
        &[
            "--frames",
            "1300",
            "--fps",
            "100",
            "--leak-bytes-per-frame",
            "16384",
        ],
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = Agent::run(&args, Duration::from_secs(120));
    assert!(out.status.success(), "{}", out.stderr);
    let report = out.fixture_report().unwrap();
    let leaked = report["leaked_bytes"].as_f64().unwrap();
    assert_eq!(leaked, 1300.0 * LEAK);
    let fps = 1300.0 / (report["elapsed_ns"].as_f64().unwrap() / 1e9);
    let last = out
        .of_type("memory")
        .last()
        .cloned()
        .expect("memory objects")
        .clone();
    let track = last["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stage"] == "track")
        .cloned()
        .unwrap_or_else(|| panic!("nothing charged to track: {last}"));
    let resident = track["resident_bytes"].as_f64().unwrap();
    // Every leaked page is touched once, in track: the charge is the leak
    // plus the pages the blocks' headers spill into (< 1 page a frame).
    assert!(
        resident >= leaked && resident <= leaked + 1300.0 * 4096.0,
        "track resident {resident}, leaked {leaked}: {track}"
    );
    let growth = track["growth_bytes_per_s"].as_f64().expect("a growth rate");
    assert!(
        (growth / (LEAK * fps) - 1.0).abs() <= 0.10,
        "track grows {growth:.0} B/s, expected {:.0} ({fps:.1} fps): {track}",
        LEAK * fps
    );
    // Other stages do not grow (decode's frame buffer is allocated once).
    for s in last["stages"].as_array().unwrap() {
        if s["stage"] != "track" && s["stage"] != "(no stage)" {
            assert!(s["resident_bytes"].as_i64().unwrap() <= 1 << 20, "{s}");
        }
    }
    let alerts = out.of_type("alert");
    assert!(
        alerts
            .iter()
            .any(|a| a["rule"] == LEAK_RULE && a["state"] == "firing"),
        "{alerts:?}"
    );
}

/// RssAnon + RssFile + RssShmem of `/proc/PID/status` (what VmRSS sums),
/// in bytes.
fn status_rss_parts(pid: u32) -> Option<[u64; 3]> {
    Some([
        status_bytes(pid, "RssAnon")?,
        status_bytes(pid, "RssFile")?,
        status_bytes(pid, "RssShmem")?,
    ])
}

#[test]
fn rss_from_the_btf_raw_tracepoint_is_exact() {
    if !require_bpf() {
        return;
    }
    // 64 KiB leaked per frame at 40 FPS: the counters change all the time.
    let (mut agent, port, pid, start_line) = start_line(
        "40",
        &["--leak-bytes-per-frame", "65536"],
        &[("ADELINE_TRACE_RSS_HOOK", "tp_btf")],
    );
    // The BTF raw tracepoint, asked for, is the one attached (this kernel
    // has BTF).
    assert_eq!(start_line["rss_hook"], "tp_btf/rss_stat", "{start_line}");
    std::thread::sleep(Duration::from_secs(3));
    // A quiescent point: the demo stopped, the sampler (1/s) has read the
    // kernel map at least once since. Linux 6.16+ sums the per-CPU
    // counters for /proc/PID/status as the program does, so both are the
    // same exact count: no tolerance.
    signal(pid, libc::SIGSTOP);
    std::thread::sleep(Duration::from_millis(1500));
    let (mem, _) = memory_of(port, "10s", pid);
    let parts = status_rss_parts(pid).expect("the demo is there");
    let vmrss = status_vmrss_bytes(pid).expect("the demo is there");
    signal(pid, libc::SIGCONT);
    assert_eq!(mem["rss_source"], "rss_stat", "{mem}");
    let rss = mem["rss_bytes"].as_u64().unwrap();
    eprintln!("btf: stopped demo rss {rss}, VmRSS {vmrss}, anon/file/shmem {parts:?}");
    assert_eq!(
        rss,
        parts.iter().sum::<u64>(),
        "rss vs RssAnon+RssFile+RssShmem {parts:?}: {mem}"
    );
    assert_eq!(rss, vmrss, "{mem}");
    assert!(agent.stop().success(), "{}", agent.stderr_so_far());
}

#[test]
fn without_btf_rss_stat_falls_back_to_the_classic_tracepoint() {
    if !require_bpf() {
        return;
    }
    let args = demo_run_args(
        &["--no-api", "--no-spans"],
        &[
            "--frames",
            "20",
            "--fps",
            "50",
            "--leak-bytes-per-frame",
            "65536",
        ],
    );
    let mut cmd = std::process::Command::new(agent_bin());
    cmd.args(&args)
        .env("ADELINE_TRACE_RSS_HOOK", "tp_btf")
        .env("ADELINE_TRACE_RSS_BTF", "/nonexistent/vmlinux");
    let mut agent = Agent::spawn_command(cmd);
    agent.wait_exit(Duration::from_secs(120));
    let out = agent.output();
    assert!(out.status.success(), "{}", out.stderr);
    let warnings: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("tp_btf/rss_stat"))
        .collect();
    assert_eq!(
        warnings,
        [
            "warning: memory: tp_btf/rss_stat not used (no kernel BTF (/nonexistent/vmlinux: \
          No such file or directory (os error 2))); kmem:rss_stat instead"
        ],
        "{}",
        out.stderr
    );
    let start = &out.of_type("start")[0];
    assert_eq!(start["rss_hook"], "kmem:rss_stat", "{start}");
    let last = out
        .of_type("memory")
        .last()
        .cloned()
        .expect("memory objects");
    assert_eq!(last["processes"][0]["rss_source"], "rss_stat", "{last}");
}
