//! `cargo xtask bench alert`: how fast an alert fires after a step change
//! in a stage's latency, beyond the rule's own `for` duration (goal: <= 2 s),
//! and how fast it resolves after the step is removed.
//!
//! One agent traces the demo pipeline (release, 50 fps) with the rule
//! `p99(decode) > 5ms for 2s`. Each of `--steps` cycles waits 3 s, raises
//! decode's sleep from 1 ms to 8 ms through the demo's control file, times
//! the `firing` alert on the agent's stdout, removes the step and times the
//! `resolved` alert. Detection delay = firing - step - 2 s; the ratio
//! printed is the delay against the rule's `for` (the baseline).
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use super::median;
use crate::{build_for, target_dir};

const RULE: &str = "p99(decode) > 5ms for 2s";
const FOR: Duration = Duration::from_secs(2);

pub(crate) fn alert(steps: usize) -> Result<i32> {
    let rel = match build_for("bench alert", true, true)? {
        Ok(dir) => dir,
        Err(code) => return Ok(code),
    };
    let demo = rel.join("demo-pipeline");
    let work = target_dir().join("bench/alert");
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let control = work.join("control");
    let config = work.join("alert.toml");
    write_atomic(&control, "")?;
    std::fs::write(&config, format!("[[alert]]\nrule = \"{RULE}\"\n"))?;
    let mut agent = Command::new(rel.join("adeline-trace"))
        .args(["run", "--no-api", "--no-spans", "--config"])
        .arg(&config)
        .args(["--stage", &format!("decode={}:decode", demo.display())])
        .arg("--")
        .arg(&demo)
        .args(["--frames", "0", "--fps", "50", "--control-file"])
        .arg(&control)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the agent")?;
    let stdout = agent.stdout.take().context("agent stdout")?;
    let (tx, rx) = mpsc::channel::<(Instant, String)>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    let wait = |what: &str, timeout: Duration| -> Result<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (at, line) = rx
                .recv_timeout(left)
                .with_context(|| format!("no {what} within {timeout:?}"))?;
            if line.contains(what) {
                return Ok(at);
            }
        }
    };
    wait("\"type\":\"start\"", Duration::from_secs(30))?;
    let mut detect = Vec::new();
    let mut resolve = Vec::new();
    for i in 0..steps {
        std::thread::sleep(Duration::from_secs(3));
        write_atomic(&control, "decode=8000\n")?;
        let step = Instant::now();
        let fired = wait("\"state\":\"firing\"", Duration::from_secs(20))?;
        write_atomic(&control, "")?;
        let revert = Instant::now();
        let resolved = wait("\"state\":\"resolved\"", Duration::from_secs(20))?;
        let d = fired.duration_since(step).as_secs_f64() - FOR.as_secs_f64();
        let r = resolved.duration_since(revert).as_secs_f64();
        eprintln!("bench alert [{}/{steps}] fired {d:.3} s after step + for, resolved {r:.3} s after revert", i + 1);
        detect.push(d);
        resolve.push(r);
    }
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(agent.id() as libc::pid_t, libc::SIGINT) };
    let _ = agent.wait();
    let max = |v: &[f64]| v.iter().copied().fold(f64::MIN, f64::max);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nAlert detection: rule `{RULE}`, decode 1 ms -> 8 ms step at 50 fps, {steps} steps\n"
    );
    let _ = writeln!(out, "| measure | median, s | max, s | median / for (2 s) |");
    let _ = writeln!(out, "|---|---:|---:|---:|");
    let (dm, rm) = (median(detect.clone()), median(resolve.clone()));
    let _ = writeln!(
        out,
        "| firing after step, beyond `for` (goal <= 2 s) | {dm:.3} | {:.3} | {:.2} |",
        max(&detect),
        dm / FOR.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "| resolved after revert | {rm:.3} | {:.3} | {:.2} |",
        max(&resolve),
        rm / FOR.as_secs_f64()
    );
    print!("{out}");
    if max(&detect) > 2.0 {
        bail!("detection took more than 2 s beyond the rule's for duration");
    }
    Ok(0)
}

fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}
