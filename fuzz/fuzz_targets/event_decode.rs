//! Ring-buffer records (adeline-trace/src/events.rs) and what consumes
//! them: decode, aggregate into the metrics of a 3-stage plan with a frame
//! stage and a gauge, snapshot every window, evaluate alert rules.
//!
//! Input: records one after another, each a length byte then that many
//! bytes (the ring buffer hands the agent one record at a time).
#![no_main]

use adeline_trace::{
    alerts::{engine::AlertEngine, AlertSpec},
    events::{decode, Event},
    metrics::{snapshot::Window, Metrics},
};
use libfuzzer_sys::fuzz_target;

const RULES: [&str; 6] = [
    "p99(infer) > 1ms for 1s",
    "fps < 25",
    "share(track) > 0.4",
    "gauge(tracks) > 100",
    "count(frame) >= 3",
    "drops > 0",
];

fuzz_target!(|data: &[u8]| {
    let stages = vec!["frame".to_string(), "infer".to_string(), "track".to_string()];
    let gauges = vec!["tracks".to_string()];
    let mut metrics = Metrics::new(stages.clone(), gauges.clone(), Some(0));
    metrics.track_periods(0);
    let specs: Vec<AlertSpec> = RULES
        .iter()
        .map(|r| AlertSpec { rule: r.to_string(), exec: None })
        .collect();
    let mut engine = AlertEngine::from_specs(&specs, &stages, &gauges, true).expect("valid rules");
    let mut rest = data;
    let mut latest = 0u64;
    let mut decoded = 0u64;
    while let Some((&len, tail)) = rest.split_first() {
        let (item, next) = tail.split_at((len as usize).min(tail.len()));
        rest = next;
        match decode(item) {
            Ok(Event::Span(s)) => {
                latest = latest.max(s.start_ns.saturating_add(s.dur_ns));
                metrics.record_span(&s);
            }
            Ok(Event::Gauge(g)) => {
                latest = latest.max(g.ts_ns);
                metrics.record_gauge(&g);
            }
            Ok(Event::Map(m)) => metrics.record_map(&m),
            Err(_) => continue,
        }
        decoded += 1;
    }
    for now in [latest, latest.saturating_add(1_500_000_000)] {
        for window in [Window::S1, Window::S10, Window::S60, Window::All] {
            let snap = metrics.snapshot(window, now, now, decoded, 0);
            if window == Window::S1 {
                let _ = engine.evaluate(now, &snap, None);
            }
        }
    }
    let _ = metrics.take_interval();
    let _ = metrics.take_period(Window::S10, latest, latest, decoded, 0);
    let _ = metrics.stage_memory();
    let _ = metrics.totals();
});
