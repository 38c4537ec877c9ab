//! Alloc mode (`run --alloc`): uprobes on the demo's C library allocator.
//! The demo allocates on purpose only in `track`: `--leak-bytes-per-frame N`
//! callocs N bytes a frame and keeps them, `--churn-bytes-per-frame N`
//! callocs and frees them in the same call (Rust's `vec![0u8; N]` is
//! `calloc(N, 1)`). Its own counters give the exact frames it made.
use std::time::Duration;

use adeline_trace_tests::*;
use serde_json::Value;

const LEAK: u64 = 262_144;

/// Runs the agent with `extra` over the demo with `demo` args to the end.
fn run(extra: &[&str], demo: &[&str]) -> AgentOutput {
    let mut all = vec!["--no-api", "--no-spans", "--frame-stage", "process_frame"];
    all.extend_from_slice(extra);
    let args = demo_run_args(&all, demo);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = Agent::run(&args, Duration::from_secs(180));
    assert!(out.status.success(), "{}", out.stderr);
    out
}

/// The last `memory` object's alloc report, and track's entry in it.
fn last_alloc(out: &AgentOutput) -> (Value, Value) {
    let memory = out.of_type("memory");
    let alloc = memory
        .last()
        .map(|m| m["alloc"].clone())
        .filter(|a| !a.is_null())
        .unwrap_or_else(|| panic!("no alloc report in the memory objects: {memory:?}"));
    let track = alloc["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stage"] == "track")
        .cloned()
        .unwrap_or_else(|| panic!("track allocated nothing: {alloc}"));
    (alloc, track)
}

fn alerts_of<'a>(out: &'a AgentOutput, rule: &str) -> Vec<&'a Value> {
    out.of_type("alert")
        .into_iter()
        .filter(|a| a["rule"] == rule)
        .collect()
}

#[test]
fn a_leak_names_its_stage_its_site_and_its_rate() {
    if !require_bpf() {
        return;
    }
    // 256 KiB a frame at 40 FPS for 12 s: 10 MiB/s kept by track.
    let rule = "leak(track) for 3s";
    let out = run(
        &["--alloc", "--min-age", "1s", "--alert", rule],
        &[
            "--frames",
            "480",
            "--fps",
            "40",
            "--leak-bytes-per-frame",
            "262144",
        ],
    );
    let report = out.fixture_report().expect("the demo's report");
    let frames = report["frames"].as_u64().unwrap();
    assert_eq!(frames, 480);
    assert_eq!(report["leaked_bytes"].as_u64().unwrap(), frames * LEAK);
    let (alloc, track) = last_alloc(&out);
    // Exact: one calloc of LEAK per track call, none freed.
    assert_eq!(track["allocs"], frames, "{track}");
    assert_eq!(track["alloc_bytes"], frames * LEAK, "{track}");
    assert_eq!(track["frees"], 0, "{track}");
    assert_eq!(track["outstanding_bytes"], frames * LEAK, "{track}");
    assert_eq!(track["bytes_per_frame"], LEAK as f64, "{track}");
    assert_eq!(track["allocs_per_frame"], 1.0, "{track}");
    assert_eq!(alloc["sample"], 1);
    assert_eq!(alloc["map_full"], 0);
    // The rate: least squares over the last 10 s of once-a-second samples,
    // against LEAK x the FPS the demo reached (its frames over its elapsed
    // time). 10%: sampling-timer jitter over ~10 points of a straight line.
    let fps = frames as f64 / (report["elapsed_ns"].as_f64().unwrap() / 1e9);
    let growth = track["growth_bytes_per_s"].as_f64().expect("a growth rate");
    let expected = LEAK as f64 * fps;
    assert!(
        (growth / expected - 1.0).abs() <= 0.10,
        "track grows {growth:.0} B/s, expected {expected:.0} B/s ({fps:.2} fps): {track}"
    );
    // The leak alert fired (through the same path as latency rules).
    let fired = alerts_of(&out, rule);
    assert!(
        fired.iter().any(|a| a["state"] == "firing"),
        "no firing alert for {rule}: {:?}",
        out.of_type("alert")
    );
    // The largest site: track's, all its allocations, symbolized through
    // frame pointers down to track itself (demo_pipeline.rs).
    let sites = out.of_type("alloc_site");
    let last_ts = sites.last().expect("alloc_site objects")["ts_ns"].clone();
    let top = sites
        .iter()
        .find(|s| s["ts_ns"] == last_ts && s["rank"] == 1)
        .expect("a rank 1 site");
    assert_eq!(top["stage"], "track", "{top}");
    // Allocations younger than --min-age (1 s) are left out of sites.
    let (bytes, count) = (
        top["bytes"].as_u64().unwrap(),
        top["allocs"].as_u64().unwrap(),
    );
    assert_eq!(bytes, count * LEAK, "{top}");
    assert!(count <= frames && count >= frames - 60, "{top}");
    assert!(
        top["oldest_age_ns"].as_u64().unwrap() >= 11_000_000_000,
        "{top}"
    );
    let stack: Vec<&str> = top["stack"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert!(
        stack
            .iter()
            .any(|f| f.starts_with("track (") && f.contains("demo_pipeline.rs:")),
        "{stack:?}"
    );
    assert!(
        stack.iter().any(|f| f.starts_with("process_frame (")),
        "{stack:?}"
    );
}

#[test]
fn churn_is_not_a_leak() {
    if !require_bpf() {
        return;
    }
    // 1 MiB calloc'd and freed in every track call (glibc mmaps and munmaps
    // it): heavy allocator traffic, nothing kept.
    let rule = "leak(track) for 3s";
    let out = run(
        &["--alloc", "--alert", rule],
        &[
            "--frames",
            "400",
            "--fps",
            "40",
            "--churn-bytes-per-frame",
            "1048576",
        ],
    );
    let frames = out.fixture_report().unwrap()["frames"].as_u64().unwrap();
    let (_, track) = last_alloc(&out);
    assert_eq!(track["allocs"], frames, "{track}");
    assert_eq!(track["frees"], frames, "{track}");
    assert_eq!(track["alloc_bytes"], frames << 20, "{track}");
    assert_eq!(track["freed_bytes"], frames << 20, "{track}");
    assert_eq!(track["outstanding_bytes"], 0, "{track}");
    assert_eq!(track["growth_bytes_per_s"], 0.0, "{track}");
    assert!(
        alerts_of(&out, rule).is_empty(),
        "{:?}",
        out.of_type("alert")
    );
    // glibc's own mmap for the 1 MiB block happens inside calloc: counted
    // once (as the calloc), not again as an mmap.
    assert!(
        out.of_type("alloc_site")
            .iter()
            .all(|s| s["stage"] != "track"),
        "{:?}",
        out.of_type("alloc_site")
    );
}

#[test]
fn sampling_keeps_one_allocation_in_n() {
    if !require_bpf() {
        return;
    }
    // 64 KiB churned per frame, flat out; --alloc-min-bytes keeps only those
    // callocs (everything else track does is smaller).
    const FRAMES: u64 = 20_000;
    const N: u64 = 10;
    let frames_arg = FRAMES.to_string();
    let mut demo = vec!["--frames", &frames_arg, "--churn-bytes-per-frame", "65536"];
    demo.extend_from_slice(&DEMO_NO_SLEEPS);
    // Unsampled, the count is exact.
    let out = run(&["--alloc", "--alloc-min-bytes", "64KiB"], &demo);
    let (alloc, track) = last_alloc(&out);
    assert_eq!(track["allocs"], FRAMES, "{track}");
    assert_eq!(track["frees"], FRAMES, "{track}");
    assert_eq!(alloc["min_bytes"], 65_536);
    // 1 in N at random: the kept count is Binomial(FRAMES, 1/N), mean 2000,
    // sd sqrt(20000 * 0.1 * 0.9) = 42.4. Reported counts are kept x N.
    let out = run(
        &[
            "--alloc",
            "--alloc-min-bytes",
            "64KiB",
            "--alloc-sample",
            "10",
        ],
        &demo,
    );
    let (alloc, track) = last_alloc(&out);
    assert_eq!(alloc["sample"], N);
    let reported = track["allocs"].as_u64().unwrap();
    assert_eq!(reported % N, 0, "{track}");
    let kept = (reported / N) as f64;
    let (mean, sd) = (FRAMES as f64 / N as f64, (FRAMES as f64 * 0.1 * 0.9).sqrt());
    eprintln!("sampling: kept {kept} of {FRAMES} (expected {mean} +- {sd:.1})");
    // 4.5 sd: a correct sampler fails this about once in 150,000 runs.
    assert!(
        (kept - mean).abs() <= 4.5 * sd,
        "kept {kept}, expected {mean} +- {:.0}: {track}",
        4.5 * sd
    );
    // Every kept allocation was freed and matched.
    assert_eq!(track["frees"], track["allocs"], "{track}");
    assert_eq!(track["alloc_bytes"].as_u64().unwrap(), reported * 65_536);
}
