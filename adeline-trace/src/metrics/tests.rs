//! [`Metrics`] end to end: synthetic records at known times, exact figures.
use adeline_trace_common::{GaugeRecord, SpanRecord};

use super::{
    frames::per_second,
    snapshot::{Snapshot, Window},
    window::RING_SLOTS,
    Metrics,
};

const MS: u64 = 1_000_000;
const S: u64 = 1_000_000_000;

fn names(n: &[&str]) -> Vec<String> {
    n.iter().map(|s| s.to_string()).collect()
}

/// A call of `stage` that completes at `end_ns` after `dur_ns`, all self.
fn span(stage: u32, end_ns: u64, dur_ns: u64) -> SpanRecord {
    SpanRecord {
        stage,
        start_ns: end_ns - dur_ns,
        dur_ns,
        self_ns: dur_ns,
        ..Default::default()
    }
}

fn gauge(gauge: u32, ts_ns: u64, value: i64) -> GaugeRecord {
    GaugeRecord {
        gauge,
        ts_ns,
        value,
        ..Default::default()
    }
}

fn snap(m: &Metrics, w: Window, now_ns: u64) -> Snapshot {
    m.snapshot(w, now_ns, 1_700_000_000 * S, 11, 2)
}

#[test]
fn counts_rates_sums_and_window_boundaries() {
    let mut m = Metrics::new(names(&["a", "b"]), vec![], None);
    let now = 100 * S + 50 * MS;
    m.record_span(&span(0, 50 * S, 2 * MS)); // first record
    m.record_span(&span(0, now - 1_050 * MS, 4 * MS)); // outside 1 s
    m.record_span(&span(0, now - 500 * MS, MS));
    m.record_span(&SpanRecord {
        self_ns: 100_000,
        ..span(0, now - 10 * MS, 3 * MS)
    });

    // 1 s: slots of 100 ms from 99.1 s; now - 1.05 s = 99.0 s is out.
    let s1 = snap(&m, Window::S1, now);
    assert_eq!((s1.v, s1.window, s1.window_ns), (1, Window::S1, 950 * MS));
    assert_eq!((s1.ts_ns, s1.events, s1.drops), (1_700_000_000 * S, 11, 2));
    let a = s1.stage("a").unwrap();
    assert_eq!(
        (a.latency.count, a.total_ns, a.self_ns),
        (2, 4 * MS, MS + 100_000)
    );
    assert_eq!(a.rate_hz, per_second(2, 950 * MS));
    assert_eq!(
        (a.latency.min_ns, a.latency.max_ns, a.latency.mean_ns),
        (MS, 3 * MS, 2 * MS)
    );
    assert_eq!(a.frame_share, None);
    let b = s1.stage("b").unwrap();
    assert_eq!((b.latency.count, b.rate_hz, b.total_ns), (0, 0.0, 0));

    // 10 s: slots of 1 s from 91 s.
    let s10 = snap(&m, Window::S10, now);
    assert_eq!(s10.window_ns, 9_050 * MS);
    assert_eq!(s10.stage("a").unwrap().latency.count, 3);
    assert_eq!(s10.stage("a").unwrap().total_ns, 8 * MS);

    // 60 s: slots of 6 s from 42 s, but nothing was seen before 50 s.
    let s60 = snap(&m, Window::S60, now);
    assert_eq!(s60.window_ns, 50_050 * MS);
    assert_eq!(s60.stage("a").unwrap().latency.count, 4);
    assert_eq!(s60.stage("a").unwrap().rate_hz, per_second(4, 50_050 * MS));

    let all = snap(&m, Window::All, now);
    assert_eq!(all.window_ns, 50_050 * MS);
    assert_eq!(all.stage("a").unwrap().total_ns, 10 * MS);
    assert_eq!(all.frames, None);
    assert_eq!(all.bottleneck.p99_growth, None);
}

#[test]
fn early_in_a_run_windows_are_shorter() {
    let mut m = Metrics::new(names(&["a"]), vec![], None);
    assert_eq!(snap(&m, Window::S10, 7 * S).window_ns, 0);
    m.record_span(&span(0, 5 * S, MS));
    let s = snap(&m, Window::S10, 7 * S);
    assert_eq!((s.window_ns, s.stages[0].rate_hz), (2 * S, 0.5));
    // A snapshot taken before the first record covers nothing.
    assert_eq!(snap(&m, Window::All, 4 * S).window_ns, 0);
}

#[test]
fn out_of_order_records_land_by_completion_time() {
    let mut m = Metrics::new(names(&["a"]), vec![], None);
    let now = 1_000 * S;
    // Drained together: a long call that started first completes last, and
    // a 10 ms late record for the previous 100 ms slot.
    m.record_span(&span(0, now - 5 * MS, 40 * MS));
    m.record_span(&span(0, now - 120 * MS, 2 * MS));
    m.record_span(&span(0, now - 895 * MS, MS)); // in: slots from 999.1 s
    m.record_span(&span(0, now - 1_001 * MS, MS)); // out of 1 s
    assert_eq!(snap(&m, Window::S1, now).stages[0].latency.count, 3);
    // Much older than the 1 s and 10 s rings reach: whole run and 60 s only.
    m.record_span(&span(0, now - 30 * S, 7 * MS));
    assert_eq!(snap(&m, Window::S1, now).stages[0].latency.count, 3);
    assert_eq!(snap(&m, Window::S10, now).stages[0].latency.count, 4);
    assert_eq!(snap(&m, Window::S60, now).stages[0].latency.count, 5);
    assert_eq!(snap(&m, Window::All, now).stages[0].latency.count, 5);
    // Older than even the 60 s ring holds (its slot was reused): whole run.
    m.record_span(&span(0, now - 150 * S, 7 * MS));
    assert_eq!(snap(&m, Window::S60, now).stages[0].latency.count, 5);
    assert_eq!(snap(&m, Window::All, now).stages[0].latency.count, 6);
}

/// Deterministic durations over 3 decades, skewed.
fn durations(n: u64) -> Vec<u64> {
    (0..n)
        .map(|i| 20_000 + (i * 7_919 % n).pow(2) * 50_000_000 / (n * n))
        .collect()
}

#[test]
fn percentiles_within_tolerance() {
    let mut m = Metrics::new(names(&["a"]), vec![], None);
    let now = 10 * S;
    let mut values = durations(10_000);
    for (i, &d) in values.iter().enumerate() {
        m.record_span(&span(0, now - 800 * MS + i as u64 * 80_000, d));
    }
    values.sort_unstable();
    let exact = |q: f64| values[((q * values.len() as f64).ceil() as usize).max(1) - 1];
    for (w, tolerance) in [(Window::S1, 0.01), (Window::All, 0.001)] {
        let p = snap(&m, w, now).stages[0].latency;
        assert_eq!(
            (p.count, p.min_ns, p.max_ns),
            (10_000, values[0], values[9_999])
        );
        assert_eq!(p.mean_ns, values.iter().sum::<u64>() / 10_000);
        for (q, got) in [
            (0.5, p.p50_ns),
            (0.9, p.p90_ns),
            (0.95, p.p95_ns),
            (0.99, p.p99_ns),
            (0.999, p.p999_ns),
        ] {
            let want = exact(q);
            let err = (got as f64 - want as f64).abs() / want as f64;
            assert!(err <= tolerance, "{w:?} q{q}: {got} vs {want}");
        }
    }
}

/// Frame k of 50 ms period from 10 s: root 10 ms (5 ms own), containing b
/// (2 ms) then c (3 ms).
fn frame(m: &mut Metrics, k: u64) {
    let t = 10 * S + k * 50 * MS;
    let inner = |stage, start_ns, dur_ns| SpanRecord {
        stage,
        start_ns,
        dur_ns,
        self_ns: dur_ns,
        frame_ns: t,
        depth: 1,
        ..Default::default()
    };
    m.record_span(&inner(1, t + MS, 2 * MS));
    m.record_span(&inner(2, t + 4 * MS, 3 * MS));
    m.record_span(&SpanRecord {
        stage: 0,
        start_ns: t,
        dur_ns: 10 * MS,
        self_ns: 5 * MS,
        frame_ns: t,
        ..Default::default()
    });
}

#[test]
fn frames_give_fps_latency_and_shares_summing_to_one() {
    let mut m = Metrics::new(names(&["frame", "pre", "infer", "idle"]), vec![], Some(0));
    for k in 0..40 {
        frame(&mut m, k); // the last one ends at 11.96 s
    }
    // A root-stage call nested inside a frame is not a frame.
    m.record_span(&SpanRecord {
        stage: 0,
        start_ns: 11_951 * MS,
        dur_ns: 0,
        frame_ns: 11_950 * MS,
        ..Default::default()
    });
    // 1 s window at 12 s: [11.1 s, 12 s], 18 whole frames.
    let s = snap(&m, Window::S1, 12 * S);
    let f = s.frames.as_ref().unwrap();
    assert_eq!(
        (f.root.as_str(), f.latency.count, f.fps),
        ("frame", 18, 20.0)
    );
    assert_eq!((f.latency.p50_ns, f.latency.p999_ns), (10 * MS, 10 * MS));
    let shares: Vec<_> = s.stages.iter().map(|s| s.frame_share).collect();
    assert_eq!(shares, [Some(0.5), Some(0.2), Some(0.3), Some(0.0)]);
    let sum: f64 = shares.iter().flatten().sum();
    assert!((sum - 1.0).abs() < 1e-12, "{sum}");
    // The root is a bottleneck candidate; its own code takes half.
    let top = s.bottleneck.top_self_share.as_ref().unwrap();
    assert_eq!((top.stage.as_str(), top.share), ("frame", 0.5));
    assert_eq!(s.stage("frame").unwrap().latency.count, 19);

    let all = snap(&m, Window::All, 12 * S);
    assert_eq!(all.frames.unwrap().latency.count, 40);
    assert_eq!(all.stages[2].frame_share, Some(0.3));
    // No frames in the window: shares are None.
    let later = snap(&m, Window::S1, 30 * S);
    assert_eq!(later.frames.unwrap().fps, 0.0);
    assert!(later.stages.iter().all(|s| s.frame_share.is_none()));
    assert_eq!(later.bottleneck.top_self_share, None);
}

#[test]
fn p99_growth_compares_with_the_window_before() {
    for (w, len) in [
        (Window::S1, S),
        (Window::S10, 10 * S),
        (Window::S60, 60 * S),
    ] {
        let mut m = Metrics::new(names(&["a", "b", "c", "d"]), vec![], None);
        let slot = len / 10;
        // At the end of a slot, so the current window is a whole W.
        let now = 1_000 * len + slot - 1;
        for i in 0..10 {
            // Earlier window, then the current one (each sample mid-slot).
            let (early, late) = (now - len - slot * i - slot / 2, now - slot * i - slot / 2);
            for (stage, before, after, n) in [
                (0, MS, 3 * MS, 10),
                (1, MS, 2 * MS, 10),
                (2, MS, 50 * MS, 4),
            ] {
                if i < n {
                    m.record_span(&span(stage, early, before));
                    m.record_span(&span(stage, late, after));
                }
            }
            m.record_span(&span(3, early, 5 * MS)); // got faster
            m.record_span(&span(3, late, MS));
        }
        let g = snap(&m, w, now).bottleneck.p99_growth.unwrap();
        assert_eq!(
            (g.stage.as_str(), g.p99_ns, g.earlier_p99_ns, g.ratio),
            ("a", 3 * MS, MS, 3.0),
            "{w:?}"
        );
        assert_eq!(snap(&m, Window::All, now).bottleneck.p99_growth, None);
    }
}

#[test]
fn gauges_over_windows() {
    let mut m = Metrics::new(names(&["a"]), names(&["rss", "queue"]), None);
    let now = 20 * S;
    m.record_gauge(&gauge(0, now - 5 * S, 1_000));
    m.record_gauge(&gauge(0, now - 100 * MS, 300));
    m.record_gauge(&gauge(0, now - 300 * MS, 700)); // late, older
    m.record_gauge(&gauge(0, now - 200 * MS, -50));
    m.record_gauge(&gauge(9, now, 1)); // unknown gauge
    assert_eq!(m.unknown_gauge, 1);
    assert_eq!((m.gauge_name(1), m.gauge_name(2)), (Some("queue"), None));

    let s1 = snap(&m, Window::S1, now);
    let rss = s1.gauge("rss").unwrap();
    assert_eq!(
        (rss.count, rss.last, rss.min, rss.max),
        (3, Some(300), Some(-50), Some(700))
    );
    assert_eq!(rss.mean, Some(950.0 / 3.0));
    let q = s1.gauge("queue").unwrap();
    assert_eq!(
        (q.count, q.last, q.min, q.max, q.mean),
        (0, None, None, None, None)
    );
    let all = snap(&m, Window::All, now);
    let rss = all.gauge("rss").unwrap();
    assert_eq!(
        (rss.count, rss.last, rss.max, rss.mean),
        (4, Some(300), Some(1_000), Some(487.5))
    );
    // Gauges alone start the covered time.
    assert_eq!(all.window_ns, 5 * S);
}

#[test]
fn a_stage_added_while_tracing_counts_from_zero_and_the_others_keep_theirs() {
    let mut m = Metrics::new(names(&["a"]), vec![], None);
    m.track_periods(0);
    for _ in 0..5 {
        m.record_span(&span(0, 2 * S, 1_000));
    }
    m.record_span(&span(1, 2 * S, 1_000));
    assert_eq!(m.unknown_stage, 1);
    assert_eq!(m.add_stage("b".into()), 1);
    for _ in 0..3 {
        m.record_span(&span(1, 3 * S, 2_000));
    }
    m.record_span(&span(0, 3 * S, 1_000));
    let totals = m.totals();
    assert_eq!(
        totals
            .iter()
            .map(|(n, p)| (n.to_string(), p.count))
            .collect::<Vec<_>>(),
        [("a".to_string(), 6), ("b".to_string(), 3)]
    );
    let s10 = snap(&m, Window::S10, 3 * S);
    assert_eq!(s10.stages[1].stage, "b");
    assert_eq!(s10.stages[1].latency.count, 3);
    assert_eq!(s10.stages[0].latency.count, 6);
    assert_eq!(m.take_interval()[1].1.count, 3);
}

#[test]
fn totals_and_interval_still_work() {
    let mut m = Metrics::new(names(&["a", "b"]), vec![], None);
    for v in 1..=100u64 {
        m.record_span(&span(0, 10 * S, v * 1_000));
    }
    m.record_span(&span(7, 10 * S, 1));
    assert_eq!(
        (m.unknown_stage, m.stage_name(1), m.stage_name(2)),
        (1, Some("b"), None)
    );
    let interval = m.take_interval();
    assert_eq!(interval[0].0, "a");
    let s = interval[0].1;
    assert_eq!(
        (s.count, s.min_ns, s.max_ns, s.mean_ns),
        (100, 1_000, 100_000, 50_500)
    );
    assert!((s.p90_ns as f64 / 90_000.0 - 1.0).abs() <= 0.01);
    assert_eq!(m.take_interval()[0].1.count, 0);
    let totals = m.totals();
    assert_eq!((totals[0].0, totals[0].1.count), ("a", 100));
    assert!((totals[0].1.p99_ns as f64 / 99_000.0 - 1.0).abs() <= 0.001);
    assert_eq!(totals[1].1.count, 0);
}

#[test]
fn any_input_is_safe() {
    let mut m = Metrics::new(names(&["a"]), names(&["g"]), Some(5)); // root out of range
    let weird = [
        SpanRecord::default(),
        SpanRecord {
            dur_ns: u64::MAX,
            self_ns: u64::MAX,
            ..Default::default()
        },
        SpanRecord {
            start_ns: u64::MAX,
            dur_ns: 1,
            frame_ns: u64::MAX,
            ..Default::default()
        },
        SpanRecord {
            start_ns: u64::MAX - 10,
            dur_ns: 10,
            self_ns: 11,
            frame_ns: 1,
            ..Default::default()
        },
    ];
    for s in &weird {
        m.record_span(s);
    }
    m.record_gauge(&gauge(0, u64::MAX, i64::MIN));
    m.record_gauge(&gauge(0, 0, i64::MAX));
    for w in Window::ALL {
        for now in [0, 1, u64::MAX / 2, u64::MAX] {
            let s = snap(&m, w, now);
            assert_eq!(s.frames, None);
            let json = serde_json::to_string(&s).unwrap();
            let back: Snapshot = serde_json::from_str(&json).unwrap();
            assert_eq!(back.stages.len(), 1);
        }
    }
    let all = snap(&m, Window::All, u64::MAX);
    assert_eq!(all.stages[0].latency.count, 4);
    assert_eq!(all.stages[0].total_ns, u64::MAX);
    // The u64::MAX-long call is in the whole run only, not in any window.
    assert_eq!(snap(&m, Window::S60, 0).stages[0].latency.count, 1);
}

#[test]
fn memory_stays_bounded_over_ten_minutes() {
    // 32 stages at 50 Hz (stage 0 is the frame root), durations 16x apart
    // in every 100 ms, 2 gauges at 10 Hz.
    let stages: Vec<String> = (0..32).map(|i| format!("s{i}")).collect();
    let mut m = Metrics::new(stages, names(&["rss", "queue"]), Some(0));
    let slots = |m: &Metrics| m.rings.iter().map(|r| r.all().count()).sum::<usize>();
    let mut at_150s = 0;
    for tick in 0..600 * 50u64 {
        let t = S + tick * 20 * MS;
        for stage in 0..32u32 {
            let dur = (100_000 + u64::from(stage) * 20_000) * [1, 2, 4, 8, 15][(tick % 5) as usize];
            m.record_span(&SpanRecord {
                frame_ns: if stage == 0 { t - dur } else { 0 },
                ..span(stage, t, dur)
            });
        }
        if tick % 5 == 0 {
            m.record_gauge(&gauge(0, t, tick as i64));
            m.record_gauge(&gauge(1, t, -(tick as i64)));
        }
        if tick == 150 * 50 {
            at_150s = m.bytes();
        }
    }
    assert_eq!(slots(&m), 3 * RING_SLOTS);
    assert_eq!(m.bytes(), at_150s, "grew after every ring wrapped");
    assert!(m.bytes() <= 8 << 20, "{} bytes", m.bytes());
    // 60 s window at 601 s: [546 s, 601 s].
    let s = snap(&m, Window::S60, S + 600 * S);
    assert_eq!((s.window_ns, s.stages[5].latency.count), (55 * S, 2_750));
    assert_eq!(s.frames.unwrap().fps, 50.0);
}

#[test]
fn rare_outliers_do_not_make_memory_grow() {
    // 50 stages at 40 calls/s each, durations 0.1-4 us (as `cargo xtask
    // bench footprint`), and every 0.7 s one call of some stage lasting
    // 16 us .. 500 ms (one of 16 outliers). Every slot of every ring sees
    // an outlier octave now and then: the memory must level off once the
    // rings have wrapped, not keep the octaves of every outlier ever seen.
    let mut m = Metrics::new((0..50).map(|i| format!("s{i}")).collect(), vec![], None);
    let (mut at_200s, mut most_after) = (0, 0);
    let mut call = 0u64;
    for tick in 0..600 * 100u64 {
        // 20 calls every 10 ms.
        let t = S + tick * 10 * MS;
        for _ in 0..20 {
            call += 1;
            let stage = (call % 50) as u32;
            let dur = if call.is_multiple_of(1_399) {
                16_000 << ((call / 1_399) % 16)
            } else {
                100 + call * 7_919 % 4_000
            };
            m.record_span(&span(stage, t, dur));
        }
        if tick == 200 * 100 {
            at_200s = m.bytes();
        }
        if tick > 200 * 100 && tick.is_multiple_of(100) {
            most_after = most_after.max(m.bytes());
        }
    }
    assert!(
        most_after <= at_200s + at_200s / 20,
        "{at_200s} bytes at 200 s, up to {most_after} later"
    );
    // About 85 KiB a stage: the whole run's bins of 0.1-4 us, and 60 window
    // slots of 1-3 octaves.
    assert!(m.bytes() <= (50 * 100) << 10, "{} bytes", m.bytes());
}

#[test]
fn periods_tile_time_each_record_in_exactly_one() {
    let mut m = Metrics::new(vec!["a".into(), "b".into()], vec![], None);
    assert!(
        m.take_period(Window::S1, 0, 0, 0, 0).is_none(),
        "not tracked yet"
    );
    m.track_periods(1_000);
    let span = |stage: u32, start_ns: u64| SpanRecord {
        stage,
        start_ns,
        dur_ns: 10,
        self_ns: 10,
        ..Default::default()
    };
    for t in 0..7 {
        m.record_span(&span(0, 1_000 + t));
    }
    m.record_span(&span(1, 1_500));
    let first = m.take_period(Window::S1, 2_000, 5, 8, 0).unwrap();
    assert_eq!(first.window_ns, 1_000);
    assert_eq!(first.stages[0].latency.count, 7);
    assert_eq!(first.stages[1].latency.count, 1);
    for t in 0..3 {
        m.record_span(&span(0, 1_990 + t));
    }
    let second = m.take_period(Window::S1, 2_500, 6, 11, 0).unwrap();
    assert_eq!(second.window_ns, 500);
    assert_eq!(
        second.stages[0].latency.count, 3,
        "late records land in the open period"
    );
    assert_eq!(second.stages[1].latency.count, 0);
    assert_eq!(second.stages[0].rate_hz, 3.0 / 500e-9);
}

#[test]
fn mappings_are_attributed_to_the_stage_running_and_per_frame() {
    use adeline_trace_common::{MapRecord, MAP_OP_MMAP, MAP_OP_MUNMAP, NO_STAGE};
    let mut m = Metrics::new(vec!["frame".into(), "track".into()], vec![], Some(0));
    let map = |op, stage, bytes, frame_ns| MapRecord {
        op,
        stage,
        bytes,
        frame_ns,
        ..Default::default()
    };
    for f in 1..=4u64 {
        m.record_span(&SpanRecord {
            stage: 0,
            start_ns: f * 1_000,
            dur_ns: 500,
            frame_ns: f * 1_000,
            ..Default::default()
        });
        m.record_map(&map(MAP_OP_MMAP, 1, 266_240, f * 1_000));
    }
    m.record_map(&map(MAP_OP_MMAP, 1, 4_096, 0)); // outside frames
    m.record_map(&map(MAP_OP_MUNMAP, 1, 8_192, 0));
    m.record_map(&map(MAP_OP_MMAP, NO_STAGE, 1_000, 0));
    let mem = m.stage_memory();
    assert_eq!(mem.len(), 2, "{mem:?}");
    assert_eq!(mem[0].stage, "track");
    assert_eq!(mem[0].mapped_bytes, 4 * 266_240 + 4_096);
    assert_eq!(mem[0].unmapped_bytes, 8_192);
    assert_eq!(mem[0].mapped_per_frame, Some(266_240.0));
    assert_eq!(mem[1].stage, "(no stage)");
    assert_eq!(mem[1].mapped_bytes, 1_000);
}

#[test]
fn kernel_counts_agree_with_the_same_spans_within_a_bin() {
    use super::inkernel::KernelReads;
    use adeline_trace_common::{agg_bin, StageHist};
    let durs: Vec<u64> = (0..5000u64)
        .map(|i| 1_000 + (i * 7919) % 3_000_000)
        .collect();
    let mut spans = Metrics::new(names(&["a"]), vec![], None);
    let mut kernel = Metrics::new(names(&["a"]), vec![], None);
    let mut h = Box::<StageHist>::default();
    for &d in &durs {
        spans.record_span(&span(0, 10 * S, d));
        h.count += 1;
        h.sum_ns += d;
        h.self_ns += d;
        h.bins[agg_bin(d)] += 1;
    }
    let mut reads = KernelReads::new(1);
    kernel.record_kernel(0, 10 * S, &reads.delta(0, h));
    let (s, k) = (spans.totals()[0].1, kernel.totals()[0].1);
    assert_eq!((k.count, k.mean_ns), (s.count, s.mean_ns));
    for (sv, kv) in [
        (s.p50_ns, k.p50_ns),
        (s.p90_ns, k.p90_ns),
        (s.p99_ns, k.p99_ns),
        (s.p999_ns, k.p999_ns),
    ] {
        let err = (sv as f64 - kv as f64).abs() / sv as f64;
        assert!(err <= 1.0 / 128.0 + 0.001, "{sv} vs {kv}");
    }
    // The windows see them too, at the read's time.
    let snap = kernel.snapshot(Window::S1, 10 * S + MS, 0, 0, 0);
    assert_eq!(snap.stages[0].latency.count, 5000);
    assert_eq!(snap.stages[0].self_ns, durs.iter().sum::<u64>());
}
