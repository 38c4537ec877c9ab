//! `cargo xtask bench footprint`: the agent's resident memory while it
//! traces a steady load on many stages (xtask/bench/footprint.c: 500
//! functions called round-robin at a fixed total rate), sampled from
//! /proc/PID/status (VmRSS and RssAnon, the heap) every second, with
//! records (`-o /dev/null`, the default mode) and with `--no-spans`
//! (in-kernel aggregation); samples go to target/bench/footprint-rss/N-MODE.csv.
//! Goal: at most 40 MB at 50 stages, and no growth in the second half of
//! the run. Needs root.
use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use super::build_c_fixture;
use crate::{build_for, target_dir};

/// The goal at 50 stages, bytes.
const GOAL_BYTES: u64 = 40 << 20;

/// Agent configurations, by name: records to /dev/null, and `--no-spans`
/// (the ring's pages are mapped into the agent, its data area twice: the
/// default 4 MiB ring is 8 MiB of RSS).
pub(crate) const MODES: [(&str, &str); 2] = [("records", ""), ("no-spans", "--no-spans")];

/// One run's RSS samples (seconds since start, bytes).
struct Run {
    stages: usize,
    mode: &'static str,
    samples: Vec<(f64, u64)>,
    /// RssAnon samples (the heap), same times.
    anon: Vec<(f64, u64)>,
    calls: u64,
    /// Records lost (ring buffer full), from the agent's stop line.
    drops: u64,
}

pub(crate) fn footprint(
    stage_counts: &[usize],
    modes: &[String],
    minutes: f64,
    rate: u64,
) -> Result<i32> {
    let modes: Vec<(&'static str, &'static str)> = modes
        .iter()
        .map(|m| {
            MODES
                .into_iter()
                .find(|(name, _)| name == m)
                .with_context(|| {
                    let names: Vec<&str> = MODES.iter().map(|(n, _)| *n).collect();
                    format!("--modes: no mode {m:?} (modes: {})", names.join(", "))
                })
        })
        .collect::<Result<_>>()?;
    let release = match build_for("bench footprint", true, false)? {
        Ok(dir) => dir,
        Err(code) => return Ok(code),
    };
    let work = target_dir().join("bench");
    std::fs::create_dir_all(&work)?;
    let fixture = work.join("footprint");
    build_c_fixture("footprint", &fixture)?;
    let agent = release.join("adeline-trace");
    let mut runs = Vec::new();
    for &n in stage_counts {
        if !(1..=500).contains(&n) {
            bail!("--stages: each count must be 1..500, not {n}");
        }
        for &mode in &modes {
            eprintln!("bench footprint: {n} stages, {}, {minutes} min", mode.0);
            runs.push(run_one(&agent, &fixture, n, mode, minutes, rate)?);
        }
    }
    println!("{}", report(&runs, minutes, rate));
    Ok(0)
}

/// VmRSS and RssAnon (heap and stacks: what the agent allocates) of `pid`.
fn rss_bytes(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some((field(&status, "VmRSS:")?, field(&status, "RssAnon:")?))
}

fn field(status: &str, name: &str) -> Option<u64> {
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(name))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

fn run_one(
    agent: &Path,
    fixture: &Path,
    n: usize,
    (mode, flags): (&'static str, &'static str),
    minutes: f64,
    rate: u64,
) -> Result<Run> {
    let bin = fixture.display().to_string();
    let mut cmd = Command::new(agent);
    cmd.args(["run", "--no-api", "-o", "/dev/null"]);
    cmd.args(flags.split_whitespace());
    for i in 0..n {
        cmd.arg("--stage").arg(format!("s{i:03}={bin}:fn{i:03}"));
    }
    let seconds = minutes * 60.0;
    cmd.arg("--")
        .arg(fixture)
        .arg(n.to_string())
        .arg(format!("{seconds}"))
        .arg(rate.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().context("starting the agent")?;
    let pid = child.id();
    let start = Instant::now();
    let (mut samples, mut anon) = (Vec::new(), Vec::new());
    let out = std::thread::scope(|s| {
        let waiter = s.spawn(|| child.wait_with_output());
        while !waiter.is_finished() {
            if let Some((b, a)) = rss_bytes(pid) {
                let t = start.elapsed().as_secs_f64();
                samples.push((t, b));
                anon.push((t, a));
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        waiter.join().expect("waiter thread")
    })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "agent failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let calls = stdout
        .lines()
        .find(|l| l.contains("\"fixture\":\"footprint\""))
        .and_then(|l| super::json_number(l, "calls"))
        .context("no fixture report")? as u64;
    // "adeline-trace: stopped (...) after 60.0s: N events, D dropped, ..."
    let stderr = String::from_utf8_lossy(&out.stderr);
    let drops = stderr
        .lines()
        .find(|l| l.contains("adeline-trace: stopped"))
        .and_then(|l| l.split(" dropped").next()?.rsplit(' ').next()?.parse().ok())
        .context("no stop line on the agent's stderr")?;
    let csv: String = samples
        .iter()
        .zip(&anon)
        .map(|(&(t, b), &(_, a))| format!("{t:.1},{b},{a}\n"))
        .collect();
    let dir = crate::target_dir().join("bench").join("footprint-rss");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join(format!("{n}-{mode}.csv")),
        format!("seconds,vmrss_bytes,rssanon_bytes\n{csv}"),
    )?;
    // The table: samples under load only (the last ones can fall after the
    // fixture's end, while the agent detaches and unmaps its ring).
    samples.retain(|&(t, _)| t <= seconds);
    anon.retain(|&(t, _)| t <= seconds);
    Ok(Run {
        stages: n,
        mode,
        samples,
        anon,
        calls,
        drops,
    })
}

fn mib(b: u64) -> String {
    format!("{:.1}", b as f64 / (1 << 20) as f64)
}

/// The last sample at or before `t` seconds.
fn at(samples: &[(f64, u64)], t: f64) -> u64 {
    samples
        .iter()
        .take_while(|&&(s, _)| s <= t)
        .last()
        .or(samples.first())
        .map_or(0, |&(_, b)| b)
}

fn report(runs: &[Run], minutes: f64, rate: u64) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nAgent RSS (VmRSS, MiB) over a steady {minutes} min load of {rate} calls/s spread over the stages\n"
    );
    let _ = writeln!(
        out,
        "| stages | mode | after 10 s | at 1/4 | at 1/2 | at 3/4 | end | max | growth over the 2nd half | RssAnon at 1/2 | RssAnon at the end | calls | drops | goal (50 stages) |"
    );
    let _ = writeln!(
        out,
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    );
    for r in runs {
        let end_t = r.samples.last().map_or(0.0, |s| s.0);
        let max = r.samples.iter().map(|s| s.1).max().unwrap_or(0);
        let half = at(&r.samples, end_t / 2.0);
        let end = at(&r.samples, end_t);
        let verdict = match r.stages {
            50 if max <= GOAL_BYTES => "PASS",
            50 => "FAIL",
            _ => "-",
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:+.1} | {} | {} | {} | {} | {verdict} |",
            r.stages,
            r.mode,
            mib(at(&r.samples, 10.0)),
            mib(at(&r.samples, end_t / 4.0)),
            mib(half),
            mib(at(&r.samples, end_t * 0.75)),
            mib(end),
            mib(max),
            (end as f64 - half as f64) / (1 << 20) as f64,
            mib(at(&r.anon, end_t / 2.0)),
            mib(at(&r.anon, end_t)),
            r.calls,
            r.drops,
        );
    }
    out
}
