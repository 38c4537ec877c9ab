//! Cost of the aggregation path alone: `Metrics::record_span` over synthetic
//! spans, against a baseline loop that only sums the same spans' durations,
//! measured in the same run. Not a test; run with
//!
//!     cargo bench -p adeline-trace --bench aggregation
//!
//! The spans: 10 stages of a pipeline at 1000 frames/s on one thread, a
//! frame root (stage 0) containing stages 1..=9 back to back, durations
//! jittered 0.5x..2x with 1% 10x outliers, in completion order (children
//! before their frame), starting an hour into the monotonic clock. 2M spans
//! are 200 s of pipeline time, so every window ring wraps.
use std::{
    hint::black_box,
    time::{Duration, Instant},
};

use adeline_trace::metrics::{snapshot::Window, Metrics};
use adeline_trace_common::SpanRecord;

const SPANS: usize = 2_000_000;
const STAGES: u32 = 10;
const RUNS: usize = 3;
const FRAME_NS: u64 = 1_000_000;

/// Deterministic xorshift64*.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// `base` scaled by 0.5..2, or by 10 one time in 100.
    fn jitter(&mut self, base: u64) -> u64 {
        let r = self.next();
        if r.is_multiple_of(100) {
            base * 10
        } else {
            base / 2 + base * (r >> 40) % (3 * base / 2)
        }
    }
}

fn spans() -> Vec<SpanRecord> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut out = Vec::with_capacity(SPANS);
    let mut frame_start = 3_600_000_000_000u64;
    while out.len() < SPANS {
        let mut t = frame_start + rng.jitter(2_000);
        let mut children = 0;
        for stage in 1..STAGES {
            let dur = rng.jitter(8_000 * u64::from(stage));
            out.push(SpanRecord {
                stage,
                pid: 4242,
                tid: 4243,
                start_ns: t,
                dur_ns: dur,
                self_ns: dur,
                frame_ns: frame_start,
                depth: 1,
                ..Default::default()
            });
            children += dur;
            t += dur + rng.jitter(1_000);
        }
        let dur = t - frame_start;
        out.push(SpanRecord {
            stage: 0,
            pid: 4242,
            tid: 4243,
            start_ns: frame_start,
            dur_ns: dur,
            self_ns: dur - children,
            frame_ns: frame_start,
            ..Default::default()
        });
        frame_start += FRAME_NS.max(dur);
    }
    out.truncate(SPANS);
    out
}

fn metrics() -> Metrics {
    let stages = (0..STAGES).map(|i| format!("stage{i}")).collect();
    Metrics::new(stages, vec!["rss".to_string()], Some(0))
}

fn median(mut d: Vec<Duration>) -> Duration {
    d.sort_unstable();
    d[d.len() / 2]
}

fn main() {
    let spans = spans();
    let (mut agg, mut base) = (Vec::new(), Vec::new());
    let mut last = metrics();
    for _ in 0..RUNS {
        let mut m = metrics();
        let t = Instant::now();
        for s in &spans {
            m.record_span(s);
        }
        agg.push(t.elapsed());
        last = black_box(m);

        let t = Instant::now();
        let mut sum = 0u64;
        for s in &spans {
            sum = sum.wrapping_add(black_box(s).dur_ns);
        }
        black_box(sum);
        base.push(t.elapsed());
    }
    let per_span = |d: Duration| d.as_secs_f64() * 1e9 / SPANS as f64;
    let (agg, base) = (per_span(median(agg)), per_span(median(base)));
    println!(
        "aggregation: {agg:.1} ns per span, {:.1} M spans/s per core \
         (median of {RUNS} runs of {SPANS} spans over {STAGES} stages)",
        1e3 / agg
    );
    println!(
        "baseline (sum of dur_ns only): {base:.2} ns per span; aggregation = {:.0}x baseline",
        agg / base
    );

    let end = spans
        .iter()
        .map(|s| s.start_ns + s.dur_ns)
        .max()
        .unwrap_or(0);
    for w in Window::ALL {
        let mut d = Vec::new();
        for _ in 0..RUNS {
            let t = Instant::now();
            black_box(last.snapshot(w, end, 0, 0, 0));
            d.push(t.elapsed());
        }
        println!(
            "snapshot {}: {:.0} us",
            w.as_str(),
            median(d).as_secs_f64() * 1e6
        );
    }
    println!(
        "memory after the run: {:.2} MiB",
        last.bytes() as f64 / (1 << 20) as f64
    );
}
