//! `cargo xtask bench profile`: the profiler's cost and accuracy.
//!
//! Cost: the demo pipeline (default sleeps, 2 threads) runs alone; the
//! agent attaches by pid for `--seconds` with `--no-spans`, then with
//! `--profile 99` and `--profile 999`. Agent CPU is the agent process's
//! own (user + system); kernel CPU is the run time of the profiler's BPF
//! programs (`kernel.bpf_stats_enabled`, bpftool). Both as % of one CPU,
//! minus the same agent without --profile.
//!
//! Accuracy: tests/fixtures/profile/split.c (frame pointers): `split`
//! (hot 70 % / cold 30 % of `work`'s CPU) at 99 and 999 Hz, and `offcpu`
//! (`napper` sleeps 1.5 ms, computes 0.5 ms): blocked µs per call and the
//! blocked share.
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};

use super::run_captured;
use crate::{build_for, root_dir, target_dir, DEMO_STAGES};

/// Summed `run_time_ns` of the loaded BPF programs whose name starts with
/// `prefix` (`bpftool prog show`: `ID: TYPE  name NAME ... run_time_ns N`).
fn bpf_run_ns(prefix: &str) -> f64 {
    let Ok(out) = Command::new("bpftool").args(["prog", "show"]).output() else {
        return 0.0;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter(|l| {
            l.split_whitespace()
                .skip_while(|w| *w != "name")
                .nth(1)
                .is_some_and(|n| n.starts_with(prefix))
        })
        .filter_map(|l| {
            l.split_whitespace()
                .skip_while(|w| *w != "run_time_ns")
                .nth(1)
                .and_then(|n| n.parse::<f64>().ok())
        })
        .sum()
}

/// One agent run on `pid` for `seconds`: (agent CPU ns, BPF profiler ns).
fn cost_run(
    agent: &Path,
    demo: &Path,
    pid: u32,
    seconds: u64,
    hz: Option<u32>,
    work: &Path,
) -> Result<(f64, f64)> {
    let mut cmd = Command::new(agent);
    cmd.args(["run", "--no-api", "--no-spans", "-o", "/dev/null", "-p"])
        .arg(pid.to_string())
        .args(["--duration", &format!("{seconds}s")]);
    for s in DEMO_STAGES {
        cmd.arg("--stage")
            .arg(format!("{s}={}:{s}", demo.display()));
    }
    if let Some(hz) = hz {
        cmd.args(["--profile", &hz.to_string()]);
    }
    // bpf_stats counts while the programs run; they are unloaded at exit,
    // so read it from a thread while the agent runs.
    let before = bpf_run_ns("profile_");
    let reader = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(seconds.saturating_sub(1).max(1)));
        bpf_run_ns("profile_")
    });
    let out = run_captured(&mut cmd, work)?;
    let bpf = reader.join().unwrap_or(0.0) - before;
    Ok((
        out.tree_cpu_ns,
        bpf.max(0.0) * seconds as f64 / seconds.saturating_sub(1).max(1) as f64,
    ))
}

/// The split fixture's folded profile: `split MODE SECONDS` under the agent.
fn fixture_run(
    agent: &Path,
    exe: &Path,
    mode: &str,
    stage: &str,
    hz: u32,
    seconds: u32,
    work: &Path,
) -> Result<(String, u64)> {
    let out_file = work.join(format!("{mode}-{hz}.folded"));
    let mut cmd = Command::new(agent);
    cmd.args([
        "run",
        "--no-api",
        "--no-spans",
        "-o",
        "/dev/null",
        "--profile",
        &hz.to_string(),
    ])
    .arg("--profile-out")
    .arg(&out_file)
    .arg("--stage")
    .arg(format!("{stage}={}:{stage}", exe.display()))
    .arg("--")
    .arg(exe)
    .args([mode, &seconds.to_string()]);
    let out = run_captured(&mut cmd, work)?;
    let calls = out
        .stdout
        .split("\"calls\":")
        .nth(1)
        .and_then(|s| s.trim_end_matches(['}', '\n']).parse().ok())
        .unwrap_or(0);
    Ok((std::fs::read_to_string(&out_file)?, calls))
}

fn sum(folded: &str, pred: impl Fn(&[&str]) -> bool) -> f64 {
    folded
        .lines()
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(s, _)| pred(&s.split(';').collect::<Vec<_>>()))
        .filter_map(|(_, n)| n.parse::<f64>().ok())
        .sum()
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// `kernel.bpf_stats_enabled` on for the cost runs, and back to what it
/// was when dropped (stats add a little to every BPF program run).
struct BpfStats(Option<String>);

impl BpfStats {
    fn enable() -> BpfStats {
        let before = std::fs::read_to_string(BPF_STATS).ok();
        let _ = std::fs::write(BPF_STATS, "1");
        BpfStats(before)
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        if let Some(v) = &self.0 {
            let _ = std::fs::write(BPF_STATS, v.trim());
        }
    }
}

pub fn profile(seconds: u64) -> Result<i32> {
    let rel = match build_for("bench profile", true, true)? {
        Ok(dir) => dir,
        Err(code) => return Ok(code),
    };
    let (agent, demo) = (rel.join("adeline-trace"), rel.join("demo-pipeline"));
    let work = target_dir().join("bench/profile");
    std::fs::create_dir_all(&work).context("creating the work dir")?;
    let stats = BpfStats::enable();

    // Cost.
    let mut demo_child = Command::new(&demo)
        .args(["--frames", "0", "--threads", "2"])
        .stdout(Stdio::null())
        .spawn()
        .context("starting the demo")?;
    let pid = demo_child.id();
    std::thread::sleep(Duration::from_secs(1));
    let wall = seconds as f64 * 1e9;
    let mut rows = Vec::new();
    for hz in [None, Some(99), Some(999)] {
        let (agent_ns, bpf_ns) = cost_run(&agent, &demo, pid, seconds, hz, &work)?;
        rows.push((hz, agent_ns, bpf_ns));
    }
    let _ = demo_child.kill();
    let _ = demo_child.wait();
    drop(stats);
    let base = rows[0].1;
    println!("cost, demo pipeline (2 threads, default sleeps), {seconds} s per run, % of one CPU:");
    println!(
        "{:<16} {:>10} {:>12} {:>14} {:>12}",
        "config", "agent", "agent extra", "profiler BPF", "total extra"
    );
    for (hz, a, b) in &rows {
        let label = hz.map_or("no --profile".to_string(), |h| format!("--profile {h}"));
        println!(
            "{label:<16} {:>9.3}% {:>11.3}% {:>13.3}% {:>11.3}%",
            a / wall * 100.0,
            (a - base) / wall * 100.0,
            b / wall * 100.0,
            ((a - base) + b) / wall * 100.0
        );
    }

    // Accuracy.
    let exe = work.join("profile-split");
    let src = root_dir().join("tests/fixtures/profile/split.c");
    let ok = Command::new("gcc")
        .args([
            "-O2",
            "-g",
            "-pthread",
            "-fno-omit-frame-pointer",
            "-mno-omit-leaf-frame-pointer",
            "-fno-optimize-sibling-calls",
            "-o",
        ])
        .arg(&exe)
        .arg(&src)
        .status()?;
    if !ok.success() {
        bail!("gcc failed on {}", src.display());
    }
    println!("\naccuracy, tests/fixtures/profile/split.c:");
    for hz in [99, 999] {
        let (f, _) = fixture_run(&agent, &exe, "split", "work", hz, 10, &work)?;
        let on = |f: &[&str]| f[0] == "work" && f.last() != Some(&"[off-cpu]");
        let hot = sum(&f, |x| on(x) && x.contains(&"hot"));
        let cold = sum(&f, |x| on(x) && x.contains(&"cold"));
        println!(
            "split 70/30 at {hz} Hz: hot {:.1} % / cold {:.1} % ({:.0} ms sampled)",
            hot / (hot + cold) * 100.0,
            cold / (hot + cold) * 100.0,
            (hot + cold) / 1000.0
        );
    }
    for hz in [99, 999] {
        let (f, calls) = fixture_run(&agent, &exe, "offcpu", "napper", hz, 10, &work)?;
        let blocked = sum(&f, |x| {
            x[0] == "napper" && x.last() == Some(&"[off-cpu]") && !x.contains(&"[runqueue]")
        });
        let runq = sum(&f, |x| x[0] == "napper" && x.contains(&"[runqueue]"));
        let on = sum(&f, |x| x[0] == "napper" && x.last() != Some(&"[off-cpu]"));
        let n = calls.max(1) as f64;
        println!(
            "offcpu 1.5 ms sleep / 0.5 ms compute at {hz} Hz: per call {:.0} µs blocked, {:.0} µs on-CPU, {:.0} µs runnable; blocked share of blocked+on-CPU {:.1} % ({calls} calls)",
            blocked / n,
            on / n,
            runq / n,
            blocked / (blocked + on) * 100.0
        );
    }
    let _ = PathBuf::new();
    Ok(0)
}
