//! `cargo xtask demo`: trace the demo pipeline (tests/fixtures/demo_pipeline.rs)
//! with every stage probed, for `--seconds S`:
//!
//! ```text
//! adeline-trace run --live --duration Ss --stage process_frame=DEMO:process_frame ...
//!     -o target/demo/events.jsonl -- DEMO --frames 0 --fps 20
//! ```
//!
//! The agent's live per-stage latency view appears on stderr; the events
//! (JSON Lines) go to target/demo/events.jsonl. Needs root.
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

use crate::{build_for, is_root, setup, target_dir, DEMO_STAGES};

pub fn run(seconds: u64) -> Result<i32> {
    if !is_root() {
        eprintln!("demo needs root: run it as root (sudo -E cargo xtask demo)");
        return Ok(1);
    }
    setup::run(false)?;
    let bin = match build_for("demo", false, true)? {
        Ok(dir) => dir,
        Err(code) => return Ok(code),
    };
    let agent = bin.join("adeline-trace");
    let demo = bin.join("demo-pipeline");
    let out_dir = target_dir().join("demo");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let events = out_dir.join("events.jsonl");
    let _ = std::fs::remove_file(&events);

    let mut cmd = Command::new(&agent);
    cmd.args(["run", "--live", "--duration", &format!("{seconds}s")]);
    for s in DEMO_STAGES {
        cmd.arg("--stage")
            .arg(format!("{s}={}:{s}", demo.display()));
    }
    // Frames (FPS, per-stage share), a gauge (the tracker's active tracks,
    // its return value) and an alert on the inference layers' p99.
    cmd.args(["--frame-stage", "process_frame", "--gauge"])
        .arg(format!("tracks={}:track:ret", demo.display()))
        .args(["--alert", "p99(infer_layer) > 5ms for 2s"]);
    cmd.arg("-o")
        .arg(&events)
        .arg("--")
        .arg(&demo)
        .args(["--frames", "0", "--fps", "20"]);
    println!(
        "demo: tracing {} for {seconds} s; live view below (stderr); meanwhile, in another \
         terminal: `target/debug/adeline-trace summary` or curl http://127.0.0.1:7878/api/summary",
        demo.display()
    );
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", agent.display()))?;

    // The agent stops itself after --duration; past a grace period ask it
    // to stop (SIGINT), then kill it.
    let deadline = Instant::now() + Duration::from_secs(seconds + 30);
    let mut interrupted = false;
    let st = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() > deadline && !interrupted {
            eprintln!("demo: the agent is still running after {seconds} s + 30 s: sending SIGINT");
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            interrupted = true;
        } else if Instant::now() > deadline + Duration::from_secs(20) {
            eprintln!("demo: the agent ignored SIGINT for 20 s: killing it");
            child.kill()?;
            break child.wait()?;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    stop_leftover_demo(&events, &demo);

    let lines = std::fs::read_to_string(&events)
        .map(|t| t.lines().count())
        .unwrap_or(0);
    println!(
        "demo: agent exited ({st}); {lines} JSON lines (start, spans, stats, summary) in {}",
        events.display()
    );
    Ok(if st.success() {
        0
    } else {
        st.code().unwrap_or(1)
    })
}

/// Terminates the demo if the agent left it running: its pid is in the
/// `start` event's `pids` (first line of the events file).
fn stop_leftover_demo(events: &Path, demo: &Path) {
    let Ok(text) = std::fs::read_to_string(events) else {
        return;
    };
    let Some(first) = text.lines().next() else {
        return;
    };
    let Some(pids) = first
        .split_once("\"pids\":[")
        .and_then(|(_, rest)| rest.split_once(']'))
        .map(|(list, _)| list)
    else {
        return;
    };
    for pid in pids.split(',').filter_map(|p| p.trim().parse::<u32>().ok()) {
        let exe = std::fs::read_link(format!("/proc/{pid}/exe"));
        if exe.ok().as_deref() == Some(demo) {
            eprintln!("demo: the demo pipeline (pid {pid}) outlived the agent: stopping it");
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
    }
}
