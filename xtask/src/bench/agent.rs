//! `cargo xtask bench agent`: the agent's own CPU per event (ring-buffer
//! decode + aggregation) at the highest event rate the demo pipeline
//! produces with 2 threads and no sleeps, and whether any record was lost
//! without being counted.
//!
//! Configurations, interleaved round-robin over `--runs` rounds (medians):
//! - untraced: the demo alone (baseline rate and CPU of the pipeline);
//! - `--no-spans`: decode + aggregate only (the metric);
//! - spans: the same plus one JSON `span` line per call to a file.
//!
//! The agent attaches by pid (`-p`) so that `wait4` on it reports the
//! agent's CPU alone. Its fixed cost (loading BPF, reading the ELF) is
//! removed by also running each traced configuration with a few frames:
//! marginal ns/event = (cpu_big - cpu_small) / (events_big - events_small).
//! Unaccounted = calls made - spans delivered - drops counted (must be 0).
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use super::{json_number, median, RUN_TIMEOUT};
use crate::{build_for, target_dir, DEMO_STAGES};

/// Frames per thread of the "small" runs that measure the fixed cost.
const SMALL_FRAMES: u64 = 200;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Config {
    Untraced,
    NoSpans,
    Spans,
}

impl Config {
    fn label(self) -> &'static str {
        match self {
            Config::Untraced => "untraced",
            Config::NoSpans => "agent --no-spans",
            Config::Spans => "agent, spans to file",
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    demo_cpu_ns: f64,
    demo_elapsed_ns: f64,
    calls: f64,
    agent_cpu_ns: f64,
    events: f64,
    drops: f64,
}

struct Paths {
    agent: PathBuf,
    demo: PathBuf,
    work: PathBuf,
}

pub(crate) fn agent(runs: usize, frames: u64) -> Result<i32> {
    let rel = match build_for("bench agent", true, true)? {
        Ok(dir) => dir,
        Err(code) => return Ok(code),
    };
    let paths = Paths {
        agent: rel.join("adeline-trace"),
        demo: rel.join("demo-pipeline"),
        work: target_dir().join("bench/agent"),
    };
    std::fs::create_dir_all(&paths.work)
        .with_context(|| format!("creating {}", paths.work.display()))?;
    let plan: [(Config, u64); 5] = [
        (Config::Untraced, frames),
        (Config::NoSpans, SMALL_FRAMES),
        (Config::NoSpans, frames),
        (Config::Spans, SMALL_FRAMES),
        (Config::Spans, frames),
    ];
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); plan.len()];
    for round in 0..runs {
        for k in 0..plan.len() {
            let i = (k + round) % plan.len();
            let (config, n) = plan[i];
            let s = run_one(&paths, config, n)?;
            eprintln!(
                "bench agent [{}/{}] {:<22} frames/thread {:>6}: {:>8.0} events, agent cpu {:>7.1} ms",
                round * plan.len() + k + 1,
                runs * plan.len(),
                config.label(),
                n,
                s.events,
                s.agent_cpu_ns / 1e6
            );
            samples[i].push(s);
        }
    }
    let med = |i: usize, f: fn(&Sample) -> f64| median(samples[i].iter().map(f).collect());
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nAgent CPU per event: demo-pipeline --threads 2, all sleeps 0, --frame-bytes 256, {frames} frames/thread; medians of {runs} interleaved runs\n"
    );
    let _ = writeln!(
        out,
        "| configuration | events/s | pipeline slowdown vs untraced | agent CPU, ms | agent marginal ns/event | agent CPU / pipeline CPU | drops | unaccounted |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|");
    let untraced_rate = med(0, |s| s.calls / (s.demo_elapsed_ns / 1e9));
    let _ = writeln!(
        out,
        "| untraced | {:.0} calls/s | 1.00 | - | - | - | - | - |",
        untraced_rate
    );
    for (small, big) in [(1, 2), (3, 4)] {
        let rate = med(big, |s| s.events / (s.demo_elapsed_ns / 1e9));
        let slowdown = untraced_rate / med(big, |s| s.calls / (s.demo_elapsed_ns / 1e9));
        let marginal = (med(big, |s| s.agent_cpu_ns) - med(small, |s| s.agent_cpu_ns))
            / (med(big, |s| s.events) - med(small, |s| s.events));
        let share = med(big, |s| s.agent_cpu_ns / s.demo_cpu_ns);
        let unaccounted: f64 = samples[big]
            .iter()
            .chain(&samples[small])
            .map(|s| (s.calls - s.events - s.drops).abs())
            .sum();
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.2} | {:.1} | {:.0} | {:.3} | {:.0} | {:.0} |",
            plan[big].0.label(),
            rate,
            slowdown,
            med(big, |s| s.agent_cpu_ns) / 1e6,
            marginal,
            share,
            med(big, |s| s.drops),
            unaccounted
        );
    }
    print!("{out}");
    Ok(0)
}

fn run_one(paths: &Paths, config: Config, frames: u64) -> Result<Sample> {
    let go = paths.work.join("go");
    let events = paths.work.join("events.jsonl");
    let _ = std::fs::remove_file(&go);
    let _ = std::fs::remove_file(&events);
    let mut demo = Command::new(&paths.demo);
    demo.args(["--threads", "2", "--frame-bytes", "256", "--frames"])
        .arg(frames.to_string())
        .arg("--go-file")
        .arg(&go)
        .stdout(Stdio::piped());
    for stage in DEMO_STAGES {
        demo.args(["--sleep-us", &format!("{stage}=0")]);
    }
    let mut demo = demo.spawn().context("starting demo-pipeline")?;
    let mut agent = None;
    if config != Config::Untraced {
        let mut cmd = Command::new(&paths.agent);
        cmd.args(["run", "--no-api", "-p", &demo.id().to_string(), "-o"])
            .arg(&events);
        for stage in DEMO_STAGES {
            cmd.args([
                "--stage",
                &format!("{stage}={}:{stage}", paths.demo.display()),
            ]);
        }
        if config == Config::NoSpans {
            cmd.arg("--no-spans");
        }
        agent = Some(
            cmd.stderr(Stdio::null())
                .spawn()
                .context("starting the agent")?,
        );
        wait_for_start(&events)?;
    }
    std::fs::write(&go, b"go").context("writing the go file")?;
    let (demo_cpu_ns, _) = wait4(&mut demo)?;
    let mut report = String::new();
    std::io::Read::read_to_string(demo.stdout.as_mut().context("demo stdout")?, &mut report)?;
    let calls: f64 = DEMO_STAGES
        .iter()
        .map(|s| json_number(&report, s).unwrap_or(0.0))
        .sum();
    let demo_elapsed_ns = json_number(&report, "elapsed_ns").context("demo report")?;
    let mut sample = Sample {
        demo_cpu_ns,
        demo_elapsed_ns,
        calls,
        ..Sample::default()
    };
    if let Some(mut agent) = agent {
        let (cpu, code) = wait4(&mut agent)?;
        if code != 0 {
            bail!("the agent exited with status {code}");
        }
        let text = std::fs::read_to_string(&events).context("reading the agent's events")?;
        let summary = text
            .lines()
            .rev()
            .find(|l| l.contains("\"type\":\"summary\""))
            .context("no summary from the agent")?;
        sample.agent_cpu_ns = cpu;
        // Spans only: the memory-mapping records are not calls.
        sample.events = json_number(summary, "spans").context("summary spans")?;
        sample.drops = json_number(summary, "span_drops").context("summary span_drops")?;
    }
    Ok(sample)
}

fn wait_for_start(events: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if std::fs::read_to_string(events)
            .map(|t| t.contains("\"type\":\"start\""))
            .unwrap_or(false)
        {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    bail!("the agent did not start within 30 s")
}

/// Waits for `child` (at most RUN_TIMEOUT, then kills it): its own CPU
/// time (user + system, ns) from wait4's rusage, and its exit code.
pub(super) fn wait4(child: &mut Child) -> Result<(f64, i32)> {
    let pid = child.id() as libc::pid_t;
    let deadline = Instant::now() + RUN_TIMEOUT;
    loop {
        let mut status = 0;
        // SAFETY: zeroed rusage is a valid out-parameter.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: our own child; valid pointers.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if r == pid {
            let tv = |t: libc::timeval| t.tv_sec as f64 * 1e9 + t.tv_usec as f64 * 1e3;
            let code = if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                128 + libc::WTERMSIG(status)
            };
            return Ok((tv(usage.ru_utime) + tv(usage.ru_stime), code));
        }
        if r < 0 {
            bail!("wait4({pid}): {}", std::io::Error::last_os_error());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("pid {pid} ran longer than {RUN_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
