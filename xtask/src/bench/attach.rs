//! `cargo xtask bench attach`: how long attaching and detaching N uprobes
//! takes, through uprobe-multi links and through perf-event uprobes (the
//! fallback for kernels before 6.6), with bpftrace as a reference.
//!
//! The fixture is tests/fixtures/many/many.c (5,000 functions f0000 ..
//! f4999), built with gcc -O1 and started paused (`many-funcs 1000 GO`), so
//! every probe is installed in a running process. N probes = the first N/2
//! functions, entry and return each, selected by prefix globs (`f0*`,
//! `f20*`, ...) that both the agent and bpftrace understand. Per run:
//!
//! - adeline-trace (release) `run -p PID --attach multi|perf --memory off
//!   --no-spans`: the agent's own attach time (programs loaded and every
//!   link created) and detach time (every link closed), both from its
//!   stderr, and the wall time from its start to ready and from the traced
//!   process's exit to the agent's exit;
//! - bpftrace `-p PID` with an empty uprobe and uretprobe on the same
//!   globs: attach = its `Attaching N probes...` line to its BEGIN probe's
//!   output (BEGIN runs once every probe is attached), detach = SIGINT to
//!   its exit.
//!
//! The baseline of each size is uprobe-multi; the table gives the other
//! paths as a ratio of its attach + detach time.
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use super::{have_bpftrace, median};
use crate::{build_for, root_dir, status, target_dir};

/// Functions in the fixture.
const FUNCTIONS: usize = 5000;

/// Longest any single step may take (a perf-event detach of 10,000 probes
/// takes ~15 minutes here).
const STEP_TIMEOUT: Duration = Duration::from_secs(1800);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tracer {
    Multi,
    Perf,
    Bpftrace,
}

impl Tracer {
    fn label(self) -> &'static str {
        match self {
            Tracer::Multi => "adeline-trace, uprobe-multi",
            Tracer::Perf => "adeline-trace, perf-event",
            Tracer::Bpftrace => "bpftrace (perf-event)",
        }
    }
}

/// One measurement, milliseconds.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    attach_ms: f64,
    detach_ms: f64,
    /// Agent only: start of the process to ready (ELF symbols, BPF load,
    /// attach), and traced process exit to agent exit.
    ready_ms: Option<f64>,
    exit_ms: Option<f64>,
}

pub(crate) fn attach(
    sizes: &[usize],
    runs: usize,
    perf_max: usize,
    with_bpftrace: bool,
) -> Result<i32> {
    for &n in sizes {
        if n < 2 || n % 2 != 0 || n > 2 * FUNCTIONS {
            bail!(
                "--sizes: {n} is not an even number of probes from 2 to {}",
                2 * FUNCTIONS
            );
        }
    }
    let rel = match build_for("bench attach", true, false)? {
        Ok(dir) => dir,
        Err(code) => return Ok(code),
    };
    let agent = rel.join("adeline-trace");
    let work = target_dir().join("bench/attach");
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let fixture = work.join("many-funcs");
    let src = root_dir().join("tests/fixtures/many/many.c");
    let built = status(
        Command::new("gcc")
            .args(["-O1", "-fno-ipa-icf", "-Wall", "-Wextra", "-o"])
            .arg(&fixture)
            .arg(&src),
    )?;
    if !built.success() {
        bail!("gcc failed on {}", src.display());
    }
    let bpftrace = with_bpftrace && have_bpftrace();
    let mut table: Vec<(usize, Tracer, Vec<Sample>)> = Vec::new();
    for &n in sizes {
        let mut tracers = vec![Tracer::Multi];
        if n <= perf_max {
            tracers.push(Tracer::Perf);
            if bpftrace {
                tracers.push(Tracer::Bpftrace);
            }
        }
        for tracer in tracers {
            let mut samples = Vec::new();
            for run in 0..runs {
                eprintln!(
                    "bench attach [{n} probes, {}, run {}/{runs}]",
                    tracer.label(),
                    run + 1
                );
                let s = match tracer {
                    Tracer::Bpftrace => run_bpftrace(&fixture, &work, n)?,
                    _ => run_agent(&agent, &fixture, &work, n, tracer)?,
                };
                eprintln!(
                    "  attach {:.0} ms, detach {:.0} ms",
                    s.attach_ms, s.detach_ms
                );
                samples.push(s);
            }
            table.push((n, tracer, samples));
        }
    }
    print!("{}", report(&table, runs));
    Ok(0)
}

/// Globs selecting the first `n` functions: whole thousands, hundreds,
/// tens as `f0*`, `f20*`, `f250*`, single functions by name.
fn prefixes(n: usize) -> Vec<String> {
    let digits: Vec<usize> = format!("{n:04}")
        .bytes()
        .map(|b| usize::from(b - b'0'))
        .collect();
    let mut out = Vec::new();
    let mut prefix = String::from("f");
    for (level, &d) in digits.iter().enumerate() {
        for k in 0..d {
            out.push(match level {
                3 => format!("{prefix}{k}"),
                _ => format!("{prefix}{k}*"),
            });
        }
        prefix.push_str(&d.to_string());
    }
    out
}

/// Starts `many-funcs 1000 GO` (calls f0000, f1000, ... once GO exists).
fn start_fixture(fixture: &Path, work: &Path) -> Result<(Child, std::path::PathBuf)> {
    let go = work.join("go");
    let _ = std::fs::remove_file(&go);
    let child = Command::new(fixture)
        .arg("1000")
        .arg(&go)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .context("starting the fixture")?;
    Ok((child, go))
}

/// Lines of `r` as they come, with their arrival time.
fn lines_of(r: impl Read + Send + 'static) -> Receiver<(Instant, String)> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            if tx.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits for a line containing `what`; every line read is kept in `seen`.
fn wait_line(
    rx: &Receiver<(Instant, String)>,
    what: &str,
    seen: &mut Vec<String>,
) -> Result<(Instant, String)> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (at, line) = rx.recv_timeout(left).with_context(|| {
            format!("no line with {what:?}; output so far: {}", seen.join(" | "))
        })?;
        seen.push(line.clone());
        if line.contains(what) {
            return Ok((at, line));
        }
    }
}

/// The number just before `suffix` in `line`.
fn number_before(line: &str, suffix: &str) -> Option<f64> {
    let head = &line[..line.find(suffix)?];
    head.rsplit(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

fn wait_child(child: &mut Child, what: &str) -> Result<Instant> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        if let Some(s) = child.try_wait()? {
            if !s.success() {
                bail!("{what} failed: {s}");
            }
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("{what} did not exit within {STEP_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn run_agent(
    agent: &Path,
    fixture: &Path,
    work: &Path,
    n: usize,
    tracer: Tracer,
) -> Result<Sample> {
    let (mut fx, go) = start_fixture(fixture, work)?;
    let mode = match tracer {
        Tracer::Perf => "perf",
        _ => "multi",
    };
    let mut cmd = Command::new(agent);
    cmd.args([
        "run",
        "--no-api",
        "--no-spans",
        "--memory",
        "off",
        "--attach",
        mode,
    ])
    .args([
        "--max-probes",
        &FUNCTIONS.to_string(),
        "-p",
        &fx.id().to_string(),
    ]);
    for (i, p) in prefixes(n / 2).iter().enumerate() {
        cmd.arg("--stage")
            .arg(format!("s{i}={}:{p}", fixture.display()));
    }
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the agent")?;
    let rx = lines_of(child.stderr.take().context("agent stderr")?);
    let mut seen = Vec::new();
    let (ready_at, line) = wait_line(&rx, "attached in", &mut seen)?;
    let probes = number_before(&line, " probes on").unwrap_or(0.0) as usize;
    if probes != n {
        bail!("the agent attached {probes} probes, not {n}: {line}");
    }
    let attach_ms = number_before(&line, " ms); ").context("no attach time")?;
    std::fs::write(&go, "go")?;
    let fx_exit = wait_child(&mut fx, "the fixture")?;
    let agent_exit = wait_child(&mut child, "the agent")?;
    let (_, line) = wait_line(&rx, "adeline-trace: detached ", &mut seen)?;
    let detach_ms = number_before(&line, " ms (programs off").context("no detach time")?;
    Ok(Sample {
        attach_ms,
        detach_ms,
        ready_ms: Some(ready_at.duration_since(started).as_secs_f64() * 1e3),
        exit_ms: Some(agent_exit.duration_since(fx_exit).as_secs_f64() * 1e3),
    })
}

fn run_bpftrace(fixture: &Path, work: &Path, n: usize) -> Result<Sample> {
    let (mut fx, go) = start_fixture(fixture, work)?;
    let points = |kind: &str| {
        prefixes(n / 2)
            .iter()
            .map(|p| format!("{kind}:{}:{p}", fixture.display()))
            .collect::<Vec<_>>()
            .join(",")
    };
    let script = format!(
        "BEGIN {{ printf(\"ready\\n\"); }} {} {{ }} {} {{ }}",
        points("uprobe"),
        points("uretprobe")
    );
    let mut child = Command::new("bpftrace")
        .args(["-p", &fx.id().to_string(), "-e", &script])
        .env("BPFTRACE_MAX_PROBES", (2 * FUNCTIONS + 10).to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting bpftrace")?;
    let rx = lines_of(child.stdout.take().context("bpftrace stdout")?);
    let mut err = child.stderr.take().context("bpftrace stderr")?;
    let mut seen = Vec::new();
    let (attaching, line) = wait_line(&rx, "Attaching", &mut seen)?;
    let probes = number_before(&line, " probes").unwrap_or(0.0) as usize;
    // BEGIN is one of the probes bpftrace counts.
    if probes != n + 1 {
        bail!("bpftrace attached {probes} probes, not {}: {line}", n + 1);
    }
    let (ready, _) = wait_line(&rx, "ready", &mut seen).map_err(|e| {
        let mut text = String::new();
        let _ = err.read_to_string(&mut text);
        e.context(text)
    })?;
    std::fs::write(&go, "go")?;
    wait_child(&mut fx, "the fixture")?;
    let stop = Instant::now();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let exited = wait_child(&mut child, "bpftrace")?;
    Ok(Sample {
        attach_ms: ready.duration_since(attaching).as_secs_f64() * 1e3,
        detach_ms: exited.duration_since(stop).as_secs_f64() * 1e3,
        ready_ms: None,
        exit_ms: None,
    })
}

fn report(table: &[(usize, Tracer, Vec<Sample>)], runs: usize) -> String {
    let med = |v: &[Sample], f: fn(&Sample) -> Option<f64>| -> Option<f64> {
        let xs: Vec<f64> = v.iter().filter_map(f).collect();
        (!xs.is_empty()).then(|| median(xs))
    };
    let fmt = |x: Option<f64>| match x {
        Some(ms) if ms >= 10_000.0 => format!("{:.0} s", ms / 1e3),
        Some(ms) => format!("{ms:.0}"),
        None => "-".into(),
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nAttach and detach of N uprobes (N/2 functions of the many-funcs fixture, entry + return), median of {runs} run(s), ms\n"
    );
    let _ = writeln!(
        out,
        "| N probes | tracer | attach | detach | attach + detach | / uprobe-multi | start to ready (agent) | traced exit to agent exit |"
    );
    let _ = writeln!(out, "|---:|---|---:|---:|---:|---:|---:|---:|");
    for (n, tracer, samples) in table {
        let attach = med(samples, |s| Some(s.attach_ms));
        let detach = med(samples, |s| Some(s.detach_ms));
        let total = attach.zip(detach).map(|(a, d)| a + d);
        let base = table
            .iter()
            .find(|(m, t, _)| m == n && *t == Tracer::Multi)
            .and_then(|(_, _, s)| med(s, |s| Some(s.attach_ms)).zip(med(s, |s| Some(s.detach_ms))))
            .map(|(a, d)| a + d);
        let ratio = match (total, base) {
            (Some(t), Some(b)) if b > 0.0 => format!("{:.1}x", t / b),
            _ => "-".into(),
        };
        let _ = writeln!(
            out,
            "| {n} | {} | {} | {} | {} | {ratio} | {} | {} |",
            tracer.label(),
            fmt(attach),
            fmt(detach),
            fmt(total),
            fmt(med(samples, |s| s.ready_ms)),
            fmt(med(samples, |s| s.exit_ms)),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_select_the_first_n_functions() {
        assert_eq!(prefixes(50), ["f000*", "f001*", "f002*", "f003*", "f004*"]);
        assert_eq!(prefixes(500), ["f00*", "f01*", "f02*", "f03*", "f04*"]);
        assert_eq!(
            prefixes(2500),
            ["f0*", "f1*", "f20*", "f21*", "f22*", "f23*", "f24*"]
        );
        assert_eq!(prefixes(5000), ["f0*", "f1*", "f2*", "f3*", "f4*"]);
        assert_eq!(prefixes(12), ["f000*", "f0010", "f0011"]);
        // Each glob matches 1000, 100, 10 or 1 of f0000..f4999: the sum is n.
        for n in [1, 12, 50, 999, 1234, 5000] {
            let count: usize = prefixes(n)
                .iter()
                .map(|p| match p.strip_suffix('*') {
                    Some(stem) => 10usize.pow(5 - stem.len() as u32),
                    None => 1,
                })
                .sum();
            assert_eq!(count, n, "{n}: {:?}", prefixes(n));
        }
    }
}
