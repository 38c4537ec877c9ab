//! `cargo xtask bench soak [--minutes M]`: the demo pipeline at its highest
//! rate (2 threads, every sleep 0, `--frame-bytes 256`, as `bench agent`)
//! traced for M minutes (default 5, at least 2) by one agent, which must
//! lose nothing and must not grow.
//!
//! - Traced run: `adeline-trace run --no-api -p PID --frame-stage
//!   process_frame --stage S=DEMO:S (all 9) --gauge tracks=DEMO:track:ret
//!   -o -`, spans included: every call becomes a JSON line on the agent's
//!   stdout, which this task reads and counts (it keeps the other records).
//!   The demo is stopped with SIGTERM after M minutes; the agent stops when
//!   its pid is gone and writes its summary.
//! - Exact counts: span lines read == the summary's `spans`, and spans +
//!   span drops == the calls the fixture counted (nothing unaccounted for);
//!   lossless: 0 drops of any kind, and then every stage's summary count ==
//!   the fixture's.
//! - Memory: the agent's VmRSS every `--sample-secs` (default 5 s); the
//!   least-squares slope in MB/min over the whole run and after the first
//!   minute (the histograms grow while new durations appear), and the peak
//!   (VmHWM). Samples go to target/bench/soak/rss.csv. Flat means the slope
//!   after the first minute is at most `--max-slope` MB/min (default 0.25;
//!   a leak of one byte per span would be tens of MB/min at this rate).
//! - Baseline, same run: the untraced demo with the same flags for
//!   `--baseline-secs` (default 30) before and after the soak; the ratio
//!   is untraced calls/s (mean of both) / traced calls/s.
use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader, Read as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use super::agent::wait4;
use super::json_number;
use crate::{build_for, target_dir, DEMO_STAGES};

/// How long the agent may take to start (load BPF, attach) and to stop.
const AGENT_GRACE: Duration = Duration::from_secs(60);

/// What the soak run found.
struct Soak {
    calls: Vec<u64>,
    demo_elapsed_ns: f64,
    span_lines: u64,
    summary: String,
    stats_lines: u64,
    /// (seconds since the go signal, VmRSS bytes)
    rss: Vec<(f64, f64)>,
    hwm_bytes: f64,
    agent_cpu_ns: f64,
    agent_exit: i32,
    agent_stderr: String,
}

pub(crate) fn soak(
    minutes: u64,
    sample_secs: u64,
    baseline_secs: u64,
    max_slope: f64,
) -> Result<i32> {
    let rel = match build_for("bench soak", true, true)? {
        Ok(dir) => dir,
        Err(code) => return Ok(code),
    };
    let agent = rel.join("adeline-trace");
    let demo = rel.join("demo-pipeline");
    let work = target_dir().join("bench/soak");
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;

    let before = untraced(&demo, baseline_secs)?;
    eprintln!("bench soak: untraced before: {before:.0} calls/s");
    let s = traced(&agent, &demo, &work, minutes, sample_secs)?;
    let after = untraced(&demo, baseline_secs)?;
    eprintln!("bench soak: untraced after: {after:.0} calls/s");

    let mut csv = String::from("seconds,rss_bytes\n");
    for (t, b) in &s.rss {
        let _ = writeln!(csv, "{t:.1},{b:.0}");
    }
    let csv_path = work.join("rss.csv");
    std::fs::write(&csv_path, csv).with_context(|| format!("writing {}", csv_path.display()))?;

    // Counts.
    let calls: u64 = s.calls.iter().sum();
    let num = |key: &str| json_number(&s.summary, key).map(|v| v as u64);
    let spans = num("spans").context("the summary has no spans")?;
    let span_drops = num("span_drops").context("the summary has no span_drops")?;
    let drops = num("drops").context("the summary has no drops")?;
    let mut problems = Vec::new();
    if s.agent_exit != 0 {
        problems.push(format!(
            "the agent exited with status {}: {}",
            s.agent_exit,
            s.agent_stderr.trim()
        ));
    }
    // Accounting: every call is a span line or a counted span drop.
    if !(s.span_lines == spans && spans + span_drops == calls) {
        problems.push(format!(
            "span lines {} / summary spans {spans} / span drops {span_drops} do not add up \
             to the {calls} calls",
            s.span_lines
        ));
    }
    // Lossless: nothing dropped, so every stage's count is exact too.
    if drops != 0 || span_drops != 0 {
        problems.push(format!(
            "the agent fell behind: drops {drops}, span drops {span_drops} ({:.0} ppm of the calls)",
            1e6 * span_drops as f64 / calls.max(1) as f64
        ));
    } else {
        for (stage, &n) in DEMO_STAGES.iter().zip(&s.calls) {
            let pat = format!("\"stage\":\"{stage}\",\"count\":");
            let got = s
                .summary
                .find(&pat)
                .and_then(|i| json_number(&s.summary[i + 1..], "count"));
            if got != Some(n as f64) {
                problems.push(format!("{stage}: {n} calls, summary count {got:?}"));
            }
        }
    }

    // Memory.
    let mb = |b: f64| b / 1e6;
    let slope_all = slope_mb_per_min(&s.rss);
    let warm: Vec<(f64, f64)> = s.rss.iter().copied().filter(|(t, _)| *t >= 60.0).collect();
    let slope_warm = slope_mb_per_min(&warm);
    // NaN (too few samples) fails too.
    if slope_warm.is_nan() || slope_warm > max_slope {
        problems.push(format!(
            "agent RSS is not flat: {slope_warm:+.3} MB/min after the first minute \
             (limit {max_slope} MB/min)"
        ));
    }
    let first = s.rss.first().map_or(f64::NAN, |x| x.1);
    let last = s.rss.last().map_or(f64::NAN, |x| x.1);
    let peak = s.rss.iter().map(|x| x.1).fold(s.hwm_bytes, f64::max);

    let traced_rate = calls as f64 / (s.demo_elapsed_ns / 1e9);
    let untraced_rate = (before + after) / 2.0;
    let secs = s.demo_elapsed_ns / 1e9;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nSoak: demo-pipeline --threads 2, all sleeps 0, --frame-bytes 256, traced {:.1} min \
         (9 stages, frame stage, 1 gauge, spans as JSON lines read by the bench); RSS every {sample_secs} s\n",
        secs / 60.0
    );
    let _ = writeln!(out, "| measure | value |");
    let _ = writeln!(out, "|---|---:|");
    let _ = writeln!(out, "| calls made (fixture's count) | {calls} |");
    let _ = writeln!(
        out,
        "| span lines read / summary spans | {} / {spans} |",
        s.span_lines
    );
    let _ = writeln!(
        out,
        "| drops (all records) / span drops | {drops} / {span_drops} |"
    );
    let _ = writeln!(out, "| stats records (1 per s) | {} |", s.stats_lines);
    let _ = writeln!(out, "| traced calls/s | {traced_rate:.0} |");
    let _ = writeln!(
        out,
        "| untraced calls/s (before / after, {baseline_secs} s each) | {before:.0} / {after:.0} |"
    );
    let _ = writeln!(
        out,
        "| slowdown: untraced / traced calls/s | {:.2} |",
        untraced_rate / traced_rate
    );
    let _ = writeln!(
        out,
        "| agent CPU (user+sys) / wall | {:.1} % |",
        100.0 * s.agent_cpu_ns / s.demo_elapsed_ns
    );
    let _ = writeln!(
        out,
        "| agent CPU per span | {:.0} ns |",
        s.agent_cpu_ns / spans.max(1) as f64
    );
    let _ = writeln!(
        out,
        "| agent RSS first / last sample | {:.1} / {:.1} MB |",
        mb(first),
        mb(last)
    );
    let _ = writeln!(out, "| agent RSS peak (VmHWM) | {:.1} MB |", mb(peak));
    let _ = writeln!(
        out,
        "| RSS slope, whole run ({} samples) | {slope_all:+.3} MB/min |",
        s.rss.len()
    );
    let _ = writeln!(
        out,
        "| RSS slope after the first minute ({} samples) | {slope_warm:+.3} MB/min |",
        warm.len()
    );
    let _ = writeln!(out, "\nRSS samples: {}", csv_path.display());
    print!("{out}");
    if problems.is_empty() {
        println!("bench soak: counts exact, nothing dropped, agent RSS flat");
        Ok(0)
    } else {
        for p in &problems {
            println!("bench soak: FAILED: {p}");
        }
        Ok(1)
    }
}

/// Least-squares slope of (seconds, bytes) in MB per minute (NaN with
/// fewer than two samples).
fn slope_mb_per_min(samples: &[(f64, f64)]) -> f64 {
    let n = samples.len() as f64;
    if samples.len() < 2 {
        return f64::NAN;
    }
    let mx = samples.iter().map(|s| s.0).sum::<f64>() / n;
    let my = samples.iter().map(|s| s.1).sum::<f64>() / n;
    let sxy: f64 = samples.iter().map(|s| (s.0 - mx) * (s.1 - my)).sum();
    let sxx: f64 = samples.iter().map(|s| (s.0 - mx).powi(2)).sum();
    sxy / sxx * 60.0 / 1e6
}

/// The demo with the soak's flags; `--frames 0` runs until SIGTERM.
fn demo_cmd(demo: &Path, go: Option<&Path>) -> Command {
    let mut cmd = Command::new(demo);
    cmd.args(["--threads", "2", "--frame-bytes", "256", "--frames", "0"]);
    for stage in DEMO_STAGES {
        cmd.args(["--sleep-us", &format!("{stage}=0")]);
    }
    if let Some(go) = go {
        cmd.arg("--go-file").arg(go);
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::piped());
    cmd
}

/// Stops the demo (SIGTERM) and reads its report: calls per stage (in
/// DEMO_STAGES order) and elapsed ns.
fn stop_demo(mut demo: Child) -> Result<(Vec<u64>, f64)> {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(demo.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(30);
    while demo.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = demo.kill();
            bail!("the demo did not stop within 30 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut report = String::new();
    demo.stdout
        .take()
        .context("demo stdout")?
        .read_to_string(&mut report)?;
    let calls = DEMO_STAGES
        .iter()
        .map(|s| json_number(&report, s).map(|v| v as u64))
        .collect::<Option<Vec<u64>>>()
        .with_context(|| format!("no call counts in the demo's report: {report}"))?;
    let elapsed = json_number(&report, "elapsed_ns").context("no elapsed_ns in the demo report")?;
    Ok((calls, elapsed))
}

/// Calls per second of the untraced demo over `secs`.
fn untraced(demo: &Path, secs: u64) -> Result<f64> {
    let child = demo_cmd(demo, None)
        .spawn()
        .context("starting demo-pipeline")?;
    std::thread::sleep(Duration::from_secs(secs));
    let (calls, elapsed_ns) = stop_demo(child)?;
    Ok(calls.iter().sum::<u64>() as f64 / (elapsed_ns / 1e9))
}

/// (VmRSS, VmHWM) of `pid` in bytes.
fn rss(pid: u32) -> Option<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = |key: &str| -> Option<f64> {
        let line = status.lines().find(|l| l.starts_with(key))?;
        let v: f64 = line[key.len()..].split_whitespace().next()?.parse().ok()?;
        Some(v * 1024.0)
    };
    Some((kb("VmRSS:")?, kb("VmHWM:")?))
}

/// What the agent's stdout carried.
#[derive(Default)]
struct Stream {
    span_lines: u64,
    stats_lines: u64,
    summary: Option<String>,
}

fn traced(agent: &Path, demo: &Path, work: &Path, minutes: u64, sample_secs: u64) -> Result<Soak> {
    let go = work.join("go");
    let _ = std::fs::remove_file(&go);
    let demo_child = demo_cmd(demo, Some(&go))
        .spawn()
        .context("starting demo-pipeline")?;
    let stderr_path: PathBuf = work.join("agent.stderr");
    let mut cmd = Command::new(agent);
    cmd.args(["run", "--no-api", "-p", &demo_child.id().to_string()])
        .args(["--frame-stage", "process_frame", "-o", "-"]);
    for stage in DEMO_STAGES {
        cmd.arg("--stage")
            .arg(format!("{stage}={}:{stage}", demo.display()));
    }
    cmd.arg("--gauge")
        .arg(format!("tracks={}:track:ret", demo.display()));
    let mut agent_child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_path).context("creating agent.stderr")?)
        .spawn()
        .context("starting the agent")?;
    let agent_pid = agent_child.id();

    // Read every line the agent writes; tell when `start` arrives.
    let stdout = agent_child.stdout.take().context("agent stdout")?;
    let (started_tx, started_rx) = mpsc::channel::<()>();
    let reader = std::thread::spawn(move || -> std::io::Result<Stream> {
        let mut r = BufReader::with_capacity(1 << 20, stdout);
        let mut line = Vec::with_capacity(512);
        let mut s = Stream::default();
        const SPAN: &[u8] = b"{\"v\":1,\"type\":\"span\"";
        loop {
            line.clear();
            if r.read_until(b'\n', &mut line)? == 0 {
                return Ok(s);
            }
            if line.starts_with(SPAN) {
                s.span_lines += 1;
            } else if line.starts_with(b"{\"v\":1,\"type\":\"stats\"") {
                s.stats_lines += 1;
            } else if line.starts_with(b"{\"v\":1,\"type\":\"start\"") {
                let _ = started_tx.send(());
            } else if line.starts_with(b"{\"v\":1,\"type\":\"summary\"") {
                s.summary = Some(String::from_utf8_lossy(&line).into_owned());
            }
        }
    });
    if started_rx.recv_timeout(AGENT_GRACE).is_err() {
        let _ = agent_child.kill();
        let _ = stop_demo(demo_child);
        bail!(
            "the agent did not start within {AGENT_GRACE:?}: {}",
            std::fs::read_to_string(&stderr_path)
                .unwrap_or_default()
                .trim()
        );
    }
    std::fs::write(&go, b"go").context("writing the go file")?;
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs(minutes * 60);
    let mut samples = Vec::new();
    let mut hwm = 0.0f64;
    let mut next = t0;
    eprintln!("bench soak: tracing for {minutes} min (RSS every {sample_secs} s)");
    while Instant::now() < end {
        if let Some(code) = agent_child.try_wait()? {
            let _ = stop_demo(demo_child);
            bail!(
                "the agent exited early ({code}): {}",
                std::fs::read_to_string(&stderr_path)
                    .unwrap_or_default()
                    .trim()
            );
        }
        if Instant::now() >= next {
            if let Some((rss, h)) = rss(agent_pid) {
                let t = t0.elapsed().as_secs_f64();
                samples.push((t, rss));
                hwm = hwm.max(h);
                if samples.len() % 12 == 1 {
                    eprintln!("bench soak: {:>5.0} s: agent RSS {:.1} MB", t, rss / 1e6);
                }
            }
            next += Duration::from_secs(sample_secs);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    if let Some((_, h)) = rss(agent_pid) {
        hwm = hwm.max(h);
    }
    let (calls, demo_elapsed_ns) = stop_demo(demo_child)?;
    // The agent notices its pid is gone and stops by itself.
    let (agent_cpu_ns, agent_exit) = wait4(&mut agent_child)?;
    let stream = reader
        .join()
        .map_err(|_| anyhow::anyhow!("the reader thread panicked"))?
        .context("reading the agent's stdout")?;
    Ok(Soak {
        calls,
        demo_elapsed_ns,
        span_lines: stream.span_lines,
        summary: stream.summary.context("no summary record from the agent")?,
        stats_lines: stream.stats_lines,
        rss: samples,
        hwm_bytes: hwm,
        agent_cpu_ns,
        agent_exit,
        agent_stderr: std::fs::read_to_string(&stderr_path).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_of_a_line() {
        // 1 MB every 30 s = 2 MB/min, with noise that cancels.
        let s: Vec<(f64, f64)> = (0..20)
            .map(|i| {
                let t = i as f64 * 30.0;
                (
                    t,
                    50e6 + t / 30.0 * 1e6 + if i % 2 == 0 { 1e5 } else { -1e5 },
                )
            })
            .collect();
        assert!(
            (slope_mb_per_min(&s) - 2.0).abs() < 0.01,
            "{}",
            slope_mb_per_min(&s)
        );
        assert!(slope_mb_per_min(&s[..1]).is_nan());
    }
}
