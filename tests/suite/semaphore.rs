//! USDT semaphores through the attach module (adeline-trace/src/probes/attach):
//! a probe attached with the semaphore's file offset as its
//! `ref_ctr_offset` makes the kernel raise the semaphore in the traced
//! process while it is attached and lower it on detach, under uprobe-multi
//! links and under perf-event uprobes alike. (USDT stages are not in the
//! CLI yet; this drives the library the way they will.)
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use adeline_trace::{
    events::{decode, Event},
    probes::{attach::AttachMode, gauge, memory::MemoryMode, ProbeOptions, ProbeSite, Probes},
    symbols::{
        placement::{place_in_file, Needs},
        usdt::usdt_probes,
    },
};
use adeline_trace_tests::*;
use serde_json::Value;

#[test]
fn semaphore_is_raised_while_attached_in_both_modes() {
    if !require_bpf() {
        return;
    }
    let fixture = many_fixture();
    let tick = usdt_probes(fixture)
        .expect("USDT notes")
        .into_iter()
        .find(|p| p.provider == "many" && p.name == "tick")
        .expect("many:tick in the fixture");
    assert_ne!(tick.semaphore_offset, 0, "many:tick has a semaphore");
    for mode in [AttachMode::Multi, AttachMode::Perf] {
        let dir = scratch_dir("semaphore");
        let (go, done) = (dir.join("go"), dir.join("done"));
        let mut child = Command::new(fixture)
            .arg("usdt")
            .arg(&go)
            .arg(&done)
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting the fixture");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut next_report = || -> Value {
            let line = lines.next().expect("a report line").expect("reading");
            serde_json::from_str(&line).expect("JSON report")
        };
        // The probe's own instruction (a nop): no range to move it in.
        let needs = Needs {
            stack: false,
            registers: &[],
        };
        let placement = place_in_file(fixture, 0, 0, tick.file_offset, &[], &needs)
            .expect("reading the fixture")
            .expect("the USDT nop is probeable");
        let site = ProbeSite {
            stage: "tick".into(),
            cookie: 0,
            path: fixture.to_path_buf(),
            symbol: "many:tick".into(),
            offset: tick.file_offset,
            placement,
            ref_ctr_offset: tick.semaphore_offset,
            programs: gauge::ARG,
        };
        let opts = ProbeOptions {
            pids: vec![child.id()],
            ring_bytes: 1 << 16,
            memory: MemoryMode::Off,
            attach: Some(mode),
            ..ProbeOptions::default()
        };
        let mut probes = Probes::attach(&[site], &opts).expect("attaching");
        assert_eq!(probes.attach_mode().0, mode);
        std::fs::write(&go, "go").unwrap();
        let attached = next_report();
        assert_eq!(attached["semaphore"], 1, "{mode}: {attached}");
        assert_eq!(attached["ticks"], 100, "{mode}: {attached}");
        let mut gauges = 0;
        while let Some(item) = probes.ring.next() {
            if let Ok(Event::Gauge(_)) = decode(&item) {
                gauges += 1;
            }
        }
        assert_eq!(gauges, 100, "{mode}: one gauge record per tick");
        let detached = probes.detach_uprobes();
        assert_eq!(detached.probes, 1);
        drop(probes);
        std::fs::write(&done, "done").unwrap();
        let after = next_report();
        assert_eq!(after["semaphore"], 0, "{mode}: lowered on detach: {after}");
        let status = wait_timeout(&mut child, Duration::from_secs(10)).expect("fixture exits");
        assert!(status.success());
    }
}
