//! C++ targets: a shared library, globs and exact names over demangled
//! names (namespaces, overloads, templates), bare library names resolved
//! through the traced process, recursion in a library, and `list`.
use std::{collections::BTreeMap, time::Duration};

use adeline_trace_tests::*;

const T: Duration = Duration::from_secs(120);

fn counts_by_symbol(out: &AgentOutput, stage: &str) -> BTreeMap<u64, u64> {
    let mut m = BTreeMap::new();
    for s in out.spans_of(stage) {
        *m.entry(s["tid"].as_u64().unwrap()).or_insert(0) += 1;
    }
    m
}

#[test]
fn shared_library_stages_by_glob_and_overload() {
    if !require_bpf() {
        return;
    }
    let fx = cpp_fixture();
    let lib = fx.lib.display().to_string();
    let exe = fx.exe.display().to_string();
    let out = Agent::run(
        &[
            "run",
            "--stage",
            &format!("frame={exe}:app::process_frame"),
            "--stage",
            &format!("infer={lib}:*Detector::infer*"),
            "--stage",
            &format!("scale={lib}:vision::scale"),
            "--stage",
            &format!("normalize={lib}:vision::normalize*"),
            "--stage",
            &format!("pyramid={lib}:vision::pyramid(int)"),
            "--",
            &exe,
            "12",
        ],
        T,
    );
    assert!(out.status.success(), "{}", out.stderr);
    let report = out.fixture_report().expect("fixture report");
    let calls = &report["calls"];
    let n = |stage: &str| out.spans_of(stage).len() as u64;
    assert_eq!(n("frame"), 12);
    assert_eq!(
        n("infer"),
        calls["vision::Detector::infer"].as_u64().unwrap()
    );
    assert_eq!(
        n("scale"),
        calls["vision::scale(int)"].as_u64().unwrap()
            + calls["vision::scale(double)"].as_u64().unwrap()
    );
    assert_eq!(
        n("normalize"),
        calls["vision::normalize<float>"].as_u64().unwrap()
            + calls["vision::normalize<int>"].as_u64().unwrap()
    );
    assert_eq!(n("pyramid"), calls["vision::pyramid"].as_u64().unwrap());
    assert_eq!(n("pyramid"), 36);
    // Which functions each stage attached to (demangled), from `start`.
    let start = out.start().unwrap();
    let symbols = |stage: &str| -> Vec<String> {
        start["probes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["stage"] == stage)
            .map(|p| p["symbol"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        symbols("infer"),
        ["vision::Detector::infer(vision::Frame const&)"]
    );
    let mut scale = symbols("scale");
    scale.sort();
    assert_eq!(scale, ["vision::scale(double)", "vision::scale(int)"]);
    assert_eq!(symbols("normalize").len(), 2);
    assert!(start["probes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["target"] == lib.as_str()));
    // infer sleeps ~1 ms; pyramid(3) recursion: the outermost call holds all three levels.
    let infer = out.durations_of("infer");
    assert!(infer.iter().all(|&d| d >= 1_000_000), "{infer:?}");
    let outer: Vec<u64> = out
        .spans_of("pyramid")
        .iter()
        .filter(|s| s["depth"] == 1)
        .map(|s| s["dur_ns"].as_u64().unwrap())
        .collect();
    assert_eq!(outer.len(), 12);
    assert!(outer.iter().all(|&d| d >= 1_500_000), "{outer:?}");
    assert_eq!(counts_by_symbol(&out, "frame").len(), 1);
}

#[test]
fn bare_library_name_resolves_through_the_process() {
    if !require_bpf() {
        return;
    }
    let fx = cpp_fixture();
    let pipeline = Pipeline::cpp(&fx.exe, 8);
    let pid = pipeline.pid().to_string();
    // The loader maps libdetector.so right after exec; wait for it.
    let maps = format!("/proc/{pid}/maps");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&maps)
        .unwrap_or_default()
        .contains("libdetector.so")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "libdetector.so never mapped"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut agent = Agent::spawn(&[
        "run",
        "-p",
        &pid,
        "--stage",
        "infer=detector:vision::Detector::infer",
    ]);
    let start = agent.wait_ready(Duration::from_secs(30));
    let target = start["probes"][0]["target"].as_str().unwrap().to_string();
    assert!(
        target.starts_with(&format!("/proc/{pid}/root/")),
        "{target}"
    );
    assert!(target.ends_with("/libdetector.so"), "{target}");
    pipeline.go();
    let report = pipeline.wait(T);
    agent.wait_exit(Duration::from_secs(10));
    let out = agent.output();
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(
        out.spans_of("infer").len() as u64,
        report["calls"]["vision::Detector::infer"].as_u64().unwrap()
    );
    assert_eq!(out.spans_of("infer").len(), 8);
}

#[test]
fn list_shows_functions_offsets_and_usdt() {
    let fx = cpp_fixture();
    let out = Agent::run(&["list", fx.lib.to_str().unwrap(), "vision::scale*"], T);
    assert!(out.status.success(), "{}", out.stderr);
    let listing = std::process::Command::new(agent_bin())
        .args(["list", fx.lib.to_str().unwrap(), "vision::scale*"])
        .output()
        .unwrap();
    let text = String::from_utf8(listing.stdout).unwrap();
    // Columns: offset, probe placement, name, [raw name].
    let names: Vec<&str> = text
        .lines()
        .map(|l| l.split("  ").filter(|c| !c.is_empty()).nth(2).unwrap())
        .collect();
    assert_eq!(
        names,
        ["vision::scale(double)", "vision::scale(int)"],
        "{text}"
    );
    // Offsets agree with nm (a .so's file offsets equal its addresses for .text here).
    let json = std::process::Command::new(agent_bin())
        .args(["list", "--json", fx.exe.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(json.status.success());
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let usdt = v["usdt"].as_array().unwrap();
    assert_eq!(usdt.len(), 1, "{usdt:?}");
    assert_eq!(usdt[0]["provider"], "cpp_pipeline");
    assert_eq!(usdt[0]["name"], "frame_done");
    assert!(v["functions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["name"] == "app::process_frame(vision::Detector&, vision::Frame&)"));
    // The stripped copy keeps the USDT note but not app::process_frame.
    let json = std::process::Command::new(agent_bin())
        .args(["list", "--json", fx.stripped.to_str().unwrap()])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["stripped"], true);
    assert_eq!(v["usdt"].as_array().unwrap().len(), 1);
    assert!(!v["functions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["name"].as_str().unwrap().starts_with("app::")));
}
