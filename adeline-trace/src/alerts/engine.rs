//! Evaluates alert rules over metrics snapshots and turns the changes of
//! their conditions into firing/resolved [`AlertEvent`]s (with hysteresis).
//!
//! Semantics (docs/alerts.md):
//! - The run loop calls [`AlertEngine::evaluate`] about every 250 ms with the
//!   1 s-window snapshot: latency, rate, count, share and fps are those of the
//!   last second; `gauge` is the gauge's last value; `drops` is the number of
//!   events lost in the last second, computed here from the run-wide counter.
//! - A rule fires once when its condition has held at every evaluation for its
//!   `for` duration (at the first evaluation where it holds if `for` is 0). It
//!   resolves once when the condition has been false at every evaluation for
//!   the resolve delay ([`RESOLVE_DELAY_NS`], 1 s); holding again before that
//!   cancels the resolve.
//! - No data (a stage with no call in the window, no frames, a gauge never
//!   recorded, no baseline or no such metric in it) is neither true nor false:
//!   it interrupts a `for` in progress (the condition is not known to hold),
//!   and does not resolve a firing alert nor interrupt its resolve delay. A
//!   pipeline that stops does not look recovered. Rates, counts and fps are 0
//!   when nothing ran, which is data.
//! - Memory: `rss` and `rss_growth` are the largest over the traced pids;
//!   `outstanding(S)` and `leak(S)` come from the alloc report when there is
//!   one (alloc mode), else from the stage's mmap/munmap totals. No pid
//!   sampled yet, a growth not fitted yet (None) or a stage absent from the
//!   report is no data, as above: it never fires.
//! - `N * baseline` compares with N times the same metric in the baseline
//!   snapshot the run loop passes (None: no data).
use std::collections::VecDeque;

use super::hook::HookJob;
use super::rule::{parse_rule, validate, Metric, Rule, RuleError, Subject, Threshold};
use super::{AlertEvent, AlertSpec, AlertState};
use crate::metrics::snapshot::{Percentiles, Snapshot};

/// How long a firing rule's condition must stay false before it resolves.
pub const RESOLVE_DELAY_NS: u64 = 1_000_000_000;

/// The span `drops` counts over.
const DROPS_WINDOW_NS: u64 = 1_000_000_000;

/// Rules, their state between evaluations, and the hooks to run.
#[derive(Debug)]
pub struct AlertEngine {
    rules: Vec<RuleState>,
    resolve_delay_ns: u64,
    /// (time, run-wide drop counter) of recent evaluations, oldest first.
    drops_seen: VecDeque<(u64, u64)>,
    /// Hooks of the transitions of the last evaluation.
    hook_jobs: Vec<HookJob>,
}

#[derive(Debug)]
struct RuleState {
    rule: Rule,
    exec: Option<String>,
    /// Since when the condition has held at every evaluation.
    holding_since: Option<u64>,
    /// Since when a firing rule's condition has been false.
    false_since: Option<u64>,
    /// The firing event, while firing.
    firing: Option<AlertEvent>,
}

impl AlertEngine {
    /// An engine over parsed rules (see [`parse_rule`], [`validate`]), each
    /// with its optional `exec` hook command.
    pub fn new(rules: Vec<(Rule, Option<String>)>) -> AlertEngine {
        AlertEngine {
            rules: rules
                .into_iter()
                .map(|(rule, exec)| RuleState {
                    rule,
                    exec,
                    holding_since: None,
                    false_since: None,
                    firing: None,
                })
                .collect(),
            resolve_delay_ns: RESOLVE_DELAY_NS,
            drops_seen: VecDeque::new(),
            hook_jobs: Vec::new(),
        }
    }

    /// Parses and validates the plan's rules against its stages, gauges and
    /// frame stage; the first bad rule is the error.
    pub fn from_specs(
        specs: &[AlertSpec],
        stages: &[String],
        gauges: &[String],
        has_frames: bool,
    ) -> Result<AlertEngine, RuleError> {
        let rules = specs
            .iter()
            .map(|spec| {
                let rule = parse_rule(&spec.rule)?;
                validate(&rule, stages, gauges, has_frames)?;
                Ok((rule, spec.exec.clone()))
            })
            .collect::<Result<Vec<_>, RuleError>>()?;
        Ok(AlertEngine::new(rules))
    }

    /// Replaces the resolve delay (0: resolve at the first false evaluation).
    pub fn with_resolve_delay(mut self, ns: u64) -> AlertEngine {
        self.resolve_delay_ns = ns;
        self
    }

    /// Evaluates every rule at wall-clock time `now_wall_ns` over `current`
    /// (the 1 s-window snapshot) and returns the transitions, in rule order.
    /// The hooks of these transitions are then in [`Self::take_hook_jobs`].
    pub fn evaluate(
        &mut self,
        now_wall_ns: u64,
        current: &Snapshot,
        baseline: Option<&Snapshot>,
    ) -> Vec<AlertEvent> {
        self.hook_jobs.clear();
        let drops = self.recent_drops(now_wall_ns, current.drops);
        let mut events = Vec::new();
        for st in &mut self.rules {
            let observed = observe(&st.rule, current, baseline, drops);
            let Some(event) = st.step(now_wall_ns, observed, self.resolve_delay_ns) else {
                continue;
            };
            if let Some(exec) = &st.exec {
                self.hook_jobs.push(HookJob {
                    exec: exec.clone(),
                    event: event.clone(),
                });
            }
            events.push(event);
        }
        events
    }

    /// Links a profile (its API path) to the firing alert of `rule`, so
    /// the alerts listed as firing carry it.
    pub fn link_profile(&mut self, rule: &str, path: &str) {
        for st in &mut self.rules {
            if let Some(firing) = st.firing.as_mut().filter(|_| st.rule.text == rule) {
                firing.profile = Some(path.to_string());
            }
        }
    }

    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The alerts firing now (their firing events), in rule order.
    pub fn active(&self) -> Vec<AlertEvent> {
        self.rules
            .iter()
            .filter_map(|st| st.firing.clone())
            .collect()
    }

    /// The hooks to run for the last [`Self::evaluate`]'s transitions (rules
    /// with an `exec`), handed over once; pass them to a
    /// [`HookRunner`](super::hook::HookRunner).
    pub fn take_hook_jobs(&mut self) -> Vec<HookJob> {
        std::mem::take(&mut self.hook_jobs)
    }

    /// Events lost during the last second: the growth of the run-wide
    /// counter since the latest evaluation at least 1 s ago (since the start
    /// of the run during the first second).
    fn recent_drops(&mut self, now: u64, total: u64) -> u64 {
        let cutoff = now.saturating_sub(DROPS_WINDOW_NS);
        // Keep one sample at or before the cutoff: the reference.
        while self.drops_seen.len() >= 2 && self.drops_seen[1].0 <= cutoff {
            self.drops_seen.pop_front();
        }
        let reference = match self.drops_seen.front() {
            Some(&(ts, seen)) if ts <= cutoff => seen,
            _ => 0,
        };
        self.drops_seen.push_back((now, total));
        total.saturating_sub(reference)
    }
}

impl RuleState {
    /// Advances the state machine with one observation (value, threshold),
    /// or None for no data; returns the transition, if any.
    fn step(
        &mut self,
        now: u64,
        observed: Option<(f64, f64)>,
        resolve_delay: u64,
    ) -> Option<AlertEvent> {
        let Some((value, threshold)) = observed else {
            if self.firing.is_none() {
                self.holding_since = None;
            }
            return None;
        };
        if self.rule.op.holds(value, threshold) {
            self.false_since = None;
            let since = *self.holding_since.get_or_insert(now);
            if self.firing.is_some() || now.saturating_sub(since) < self.rule.for_ns {
                return None;
            }
            let event = AlertEvent {
                state: AlertState::Firing,
                rule: self.rule.text.clone(),
                value,
                threshold,
                since_ns: since,
                ts_ns: now,
                profile: None,
            };
            self.firing = Some(event.clone());
            return Some(event);
        }
        self.holding_since = None;
        let fired_ns = self.firing.as_ref()?.ts_ns;
        let false_since = *self.false_since.get_or_insert(now);
        if now.saturating_sub(false_since) < resolve_delay {
            return None;
        }
        self.firing = None;
        self.false_since = None;
        Some(AlertEvent {
            state: AlertState::Resolved,
            rule: self.rule.text.clone(),
            value,
            threshold,
            since_ns: fired_ns,
            ts_ns: now,
            profile: None,
        })
    }
}

/// The rule's (value, threshold) now, or None without data.
fn observe(
    rule: &Rule,
    current: &Snapshot,
    baseline: Option<&Snapshot>,
    drops: u64,
) -> Option<(f64, f64)> {
    let value = match rule.metric {
        Metric::Drops => drops as f64,
        ref metric => metric_value(metric, current)?,
    };
    let threshold = match rule.threshold {
        Threshold::Value(t) => t,
        Threshold::Baseline(factor) => factor * metric_value(&rule.metric, baseline?)?,
    };
    Some((value, threshold))
}

/// A metric's value in a snapshot (durations in ns); None without data.
/// `drops` has none here: it is computed over time by the engine.
fn metric_value(metric: &Metric, snap: &Snapshot) -> Option<f64> {
    let latency = |of: &Subject| -> Option<Percentiles> {
        match of {
            Subject::Stage(name) => snap.stage(name).map(|s| s.latency),
            Subject::Frame => snap.frames.as_ref().map(|f| f.latency),
        }
    };
    match metric {
        Metric::Latency { stat, of } => {
            let p = latency(of).filter(|p| p.count > 0)?;
            Some(p.get(*stat) as f64)
        }
        Metric::Count(of) => latency(of).map(|p| p.count as f64),
        Metric::Rate(Subject::Stage(name)) => snap.stage(name).map(|s| s.rate_hz),
        Metric::Rate(Subject::Frame) | Metric::Fps => snap.frames.as_ref().map(|f| f.fps),
        Metric::Share(name) => snap.stage(name)?.frame_share,
        Metric::Gauge(name) => snap.gauge(name)?.last.map(|v| v as f64),
        Metric::Drops => None,
        Metric::Rss => snap
            .memory
            .iter()
            .map(|m| m.rss_bytes)
            .max()
            .map(|b| b as f64),
        Metric::RssGrowth => snap
            .memory
            .iter()
            .filter_map(|m| m.growth_bytes_per_s)
            .max_by(f64::total_cmp),
        Metric::Outstanding(name) => snap.holding(name).map(|h| h.bytes),
        Metric::Leak(name) => snap.holding(name)?.growth_bytes_per_s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::snapshot::{
        AllocReport, Bottleneck, FrameStats, GaugeStats, ProcessMemory, StageAlloc, StageMemory,
        StageStats, Window,
    };

    const MS: u64 = 1_000_000;
    const S: u64 = 1_000_000_000;
    const TICK: u64 = 250 * MS;

    fn stage(name: &str, count: u64, p99_ns: u64) -> StageStats {
        StageStats {
            stage: name.into(),
            rate_hz: count as f64,
            latency: Percentiles {
                count,
                min_ns: p99_ns / 2,
                mean_ns: p99_ns * 3 / 4,
                p50_ns: p99_ns * 3 / 4,
                p90_ns: p99_ns * 9 / 10,
                p95_ns: p99_ns * 19 / 20,
                p99_ns,
                p999_ns: p99_ns,
                max_ns: p99_ns,
            },
            total_ns: count * p99_ns,
            self_ns: count * p99_ns,
            frame_share: Some(0.25),
        }
    }

    fn snap(stages: Vec<StageStats>) -> Snapshot {
        Snapshot {
            v: 1,
            ts_ns: 0,
            window: Window::S1,
            window_ns: S,
            stages,
            frames: None,
            gauges: Vec::new(),
            bottleneck: Bottleneck::default(),
            events: 0,
            drops: 0,
            memory: Vec::new(),
            stage_memory: Vec::new(),
            alloc: None,
            host: None,
            processes: Vec::new(),
        }
    }

    fn infer(p99_ms: u64) -> Snapshot {
        snap(vec![stage("infer", 30, p99_ms * MS)])
    }

    fn engine(rules: &[&str]) -> AlertEngine {
        AlertEngine::new(
            rules
                .iter()
                .map(|r| (parse_rule(r).unwrap(), Some(format!("echo {r}"))))
                .collect(),
        )
    }

    /// Feeds one snapshot per tick from `from` to `to` (exclusive), collecting events.
    fn run(e: &mut AlertEngine, from: u64, to: u64, s: &Snapshot) -> Vec<AlertEvent> {
        let mut out = Vec::new();
        let mut t = from;
        while t < to {
            out.extend(e.evaluate(t, s, None));
            t += TICK;
        }
        out
    }

    #[test]
    fn step_fires_once_after_for_and_resolves_once_after_removal() {
        let mut e = engine(&["p99(infer) > 50ms for 5s"]);
        assert!(run(&mut e, 0, 10 * S, &infer(20)).is_empty());
        // Step up at 10 s: holds from 10 s, fires at 15 s, exactly once.
        let fired = run(&mut e, 10 * S, 15 * S, &infer(80));
        assert!(fired.is_empty(), "{fired:?}");
        let fired = run(&mut e, 15 * S, 30 * S, &infer(80));
        assert_eq!(fired.len(), 1, "{fired:?}");
        let f = &fired[0];
        assert_eq!(f.state, AlertState::Firing);
        assert_eq!(f.rule, "p99(infer) > 50ms for 5s");
        assert_eq!((f.value, f.threshold), (80e6, 50e6));
        assert_eq!((f.since_ns, f.ts_ns), (10 * S, 15 * S));
        assert_eq!(e.active(), fired);
        // Step removed at 30 s: false from 30 s, resolves after the 1 s delay, once.
        let resolved = run(&mut e, 30 * S, 40 * S, &infer(20));
        assert_eq!(resolved.len(), 1, "{resolved:?}");
        let r = &resolved[0];
        assert_eq!(r.state, AlertState::Resolved);
        assert_eq!((r.value, r.threshold), (20e6, 50e6));
        assert_eq!((r.since_ns, r.ts_ns), (15 * S, 31 * S));
        assert!(e.active().is_empty());
    }

    #[test]
    fn for_needs_continuous_holding_and_resolve_needs_continuous_false() {
        let mut e = engine(&["p99(infer) > 50ms for 1s"]);
        // Holds 0.75 s, breaks, holds again: the 1 s restarts.
        assert!(run(&mut e, 0, 750 * MS, &infer(80)).is_empty());
        assert!(e.evaluate(750 * MS, &infer(20), None).is_empty());
        assert!(run(&mut e, S, 2 * S, &infer(80)).is_empty());
        assert_eq!(e.evaluate(2 * S, &infer(80), None)[0].since_ns, S);
        // A dip shorter than the resolve delay does not resolve.
        assert!(run(&mut e, 2 * S + TICK, 3 * S, &infer(20)).is_empty());
        assert!(run(&mut e, 3 * S, 4 * S, &infer(80)).is_empty());
        assert_eq!(e.active().len(), 1);
        // With no resolve delay, the first false evaluation resolves.
        let mut e = engine(&["fps < 25"]).with_resolve_delay(0);
        let mut s = snap(vec![]);
        s.frames = Some(FrameStats {
            root: "frame".into(),
            fps: 10.0,
            latency: Percentiles::default(),
        });
        assert_eq!(e.evaluate(0, &s, None)[0].state, AlertState::Firing);
        s.frames.as_mut().unwrap().fps = 30.0;
        assert_eq!(e.evaluate(TICK, &s, None)[0].state, AlertState::Resolved);
    }

    #[test]
    fn no_data_neither_holds_nor_resolves() {
        let mut e = engine(&["p99(infer) > 50ms for 1s"]);
        let idle = snap(vec![stage("infer", 0, 0)]);
        // No data interrupts the `for`.
        assert!(run(&mut e, 0, 750 * MS, &infer(80)).is_empty());
        assert!(e.evaluate(750 * MS, &idle, None).is_empty());
        assert!(run(&mut e, S, 2 * S, &infer(80)).is_empty());
        assert_eq!(e.evaluate(2 * S, &infer(80), None).len(), 1);
        // A firing alert stays firing while there is no data (the stage stopped).
        assert!(run(&mut e, 3 * S, 60 * S, &idle).is_empty());
        assert!(run(&mut e, 60 * S, 61 * S, &snap(vec![])).is_empty());
        assert_eq!(e.active().len(), 1);
        // ...and resolves once data shows the condition false.
        assert_eq!(run(&mut e, 61 * S, 63 * S, &infer(10)).len(), 1);
        // Rates and counts are 0 when nothing ran: that is data.
        let mut e = engine(&["rate(infer) < 5", "count(infer) < 1"]);
        assert_eq!(e.evaluate(0, &idle, None).len(), 2);
    }

    #[test]
    fn baseline_scales_the_threshold_and_is_no_data_when_absent() {
        let mut e = engine(&["p95(infer) > 1.2 * baseline"]);
        let base = snap(vec![stage("infer", 30, 100 * MS)]); // p95 = 95 ms
        assert!(e.evaluate(0, &infer(200), None).is_empty());
        assert!(e.evaluate(TICK, &infer(110), Some(&base)).is_empty()); // p95 104.5 < 114
        let fired = e.evaluate(2 * TICK, &infer(130), Some(&base)); // 123.5 > 114
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].value, 123.5e6);
        assert!(
            (fired[0].threshold - 114e6).abs() < 1.0,
            "{}",
            fired[0].threshold
        );
        // A baseline without the stage is no data: not resolved.
        assert!(run(&mut e, S, 5 * S, &infer(10),).is_empty());
        assert_eq!(e.active().len(), 1);
    }

    #[test]
    fn frames_gauges_share_and_drops() {
        let mut s = snap(vec![stage("track", 30, MS)]);
        s.frames = Some(FrameStats {
            root: "pipeline".into(),
            fps: 20.0,
            latency: Percentiles {
                count: 20,
                p95_ns: 60 * MS,
                ..Percentiles::default()
            },
        });
        s.gauges = vec![GaugeStats {
            gauge: "tracks".into(),
            count: 3,
            last: Some(150),
            min: Some(1),
            max: Some(150),
            mean: Some(50.0),
        }];
        let mut e = engine(&[
            "fps < 25 for 10s",
            "p95(frame) > 50ms",
            "gauge(tracks) > 100",
            "share(track) > 0.2",
            "rate(frame) < 21",
            "count(frame) >= 20",
            "gauge(tracks) > 1000",
        ]);
        let now = e.evaluate(0, &s, None);
        let rules: Vec<_> = now.iter().map(|e| e.rule.as_str()).collect();
        assert_eq!(
            rules,
            [
                "p95(frame) > 50ms",
                "gauge(tracks) > 100",
                "share(track) > 0.2",
                "rate(frame) < 21",
                "count(frame) >= 20"
            ]
        );
        assert_eq!(run(&mut e, TICK, 10 * S, &s).len(), 0);
        assert_eq!(e.evaluate(10 * S, &s, None)[0].rule, "fps < 25 for 10s");

        // drops: events lost during the last second, not since the start.
        let mut e = engine(&["drops > 0"]).with_resolve_delay(0);
        let mut s = snap(vec![]);
        assert!(e.evaluate(0, &s, None).is_empty());
        s.drops = 7;
        let fired = e.evaluate(TICK, &s, None);
        assert_eq!((fired[0].state, fired[0].value), (AlertState::Firing, 7.0));
        assert!(run(&mut e, 2 * TICK, S + TICK, &s).is_empty());
        let resolved = e.evaluate(S + TICK, &s, None);
        assert_eq!(
            (resolved[0].state, resolved[0].value),
            (AlertState::Resolved, 0.0)
        );
    }

    const MIB: f64 = 1024.0 * 1024.0;

    fn process(pid: u32, rss_bytes: u64, growth: Option<f64>) -> ProcessMemory {
        ProcessMemory {
            pid,
            rss_bytes,
            growth_bytes_per_s: growth,
            samples: 10,
            threads: 1,
            cpu_percent: None,
            rss_source: Default::default(),
        }
    }

    /// A stage charged `resident` bytes (default mode), growing `growth`.
    fn charged(stage: &str, resident: i64, growth: Option<f64>) -> StageMemory {
        StageMemory {
            stage: stage.into(),
            mapped_bytes: 0,
            unmapped_bytes: 0,
            mapped_per_frame: None,
            resident_bytes: resident,
            growth_bytes_per_s: growth,
        }
    }

    fn allocated(stage: &str, outstanding: u64, growth: Option<f64>) -> StageAlloc {
        StageAlloc {
            stage: stage.into(),
            allocs: 1,
            alloc_bytes: outstanding,
            frees: 0,
            freed_bytes: 0,
            outstanding_bytes: outstanding,
            growth_bytes_per_s: growth,
            allocs_per_frame: None,
            bytes_per_frame: None,
        }
    }

    fn alloc_report(stages: Vec<StageAlloc>) -> AllocReport {
        AllocReport {
            sample: 1,
            min_bytes: 0,
            outstanding_bytes: stages.iter().map(|s| s.outstanding_bytes).sum(),
            outstanding_allocs: 0,
            growth_bytes_per_s: None,
            stages,
            sites: Vec::new(),
            map_full: 0,
            no_stack: 0,
        }
    }

    /// A snapshot whose stage `track` grows by `growth` bytes/s (mmap).
    fn growing(growth: f64) -> Snapshot {
        let mut s = snap(vec![]);
        s.stage_memory = vec![charged("track", 0, Some(growth))];
        s
    }

    #[test]
    fn leak_fires_once_after_for_and_resolves_when_growth_drops() {
        // Bare leak(track): > 1 MiB/min for 30 s.
        let mut e = engine(&["leak(track)"]);
        let slow = growing(0.5 * MIB / 60.0);
        let fast = growing(3.0 * MIB / 60.0);
        assert!(run(&mut e, 0, 10 * S, &slow).is_empty());
        assert!(run(&mut e, 10 * S, 40 * S, &fast).is_empty());
        let fired = run(&mut e, 40 * S, 60 * S, &fast);
        assert_eq!(fired.len(), 1, "{fired:?}");
        let f = &fired[0];
        assert_eq!(
            (f.state, f.rule.as_str()),
            (AlertState::Firing, "leak(track)")
        );
        assert_eq!((f.value, f.threshold), (3.0 * MIB / 60.0, MIB / 60.0));
        assert_eq!((f.since_ns, f.ts_ns), (10 * S, 40 * S));
        let resolved = run(&mut e, 60 * S, 70 * S, &slow);
        assert_eq!(resolved.len(), 1, "{resolved:?}");
        assert_eq!(resolved[0].state, AlertState::Resolved);
        assert_eq!((resolved[0].since_ns, resolved[0].ts_ns), (40 * S, 61 * S));
        assert!(e.active().is_empty());

        // rss_growth and rss: the largest over the traced pids.
        let mut e = engine(&["rss_growth > 20MB/min for 60s", "rss > 500MB"]);
        let mut s = snap(vec![]);
        s.memory = vec![
            process(1, 600_000_000, Some(1e3)),
            process(2, 100, Some(25e6 / 60.0)),
        ];
        let fired = run(&mut e, 0, 61 * S, &s);
        assert_eq!(fired.len(), 2, "{fired:?}");
        assert_eq!((fired[0].rule.as_str(), fired[0].ts_ns), ("rss > 500MB", 0));
        assert_eq!((fired[0].value, fired[0].threshold), (600e6, 500e6));
        assert_eq!(fired[1].ts_ns, 60 * S);
        assert_eq!(
            (fired[1].value, fired[1].threshold),
            (25e6 / 60.0, 20e6 / 60.0)
        );
    }

    #[test]
    fn missing_memory_data_never_fires() {
        let mut e = engine(&[
            "rss >= 0B",
            "rss_growth > -1GB/s",
            "outstanding(track) >= 0B",
            "leak(track) > -1GB/s for 0s",
            "leak(decode) > -1GB/s for 0s",
        ]);
        // No pid sampled, no stage memory.
        assert!(run(&mut e, 0, 5 * S, &snap(vec![])).is_empty());
        // Pids sampled but growth not fitted yet; track's growth not fitted;
        // decode absent.
        let mut s = snap(vec![]);
        s.memory = vec![process(1, 0, None)];
        s.stage_memory = vec![charged("track", 10, None)];
        let fired = run(&mut e, 5 * S, 10 * S, &s);
        let rules: Vec<_> = fired.iter().map(|e| e.rule.as_str()).collect();
        assert_eq!(rules, ["rss >= 0B", "outstanding(track) >= 0B"]);
        assert!(fired.iter().all(|e| e.state == AlertState::Firing));
        // With an alloc report, a stage missing from it is no data even if
        // the resident charges have it.
        let mut e = engine(&["outstanding(track) >= 0B", "leak(track) > -1GB/s for 0s"]);
        s.stage_memory = vec![charged("track", 10, Some(1.0))];
        s.alloc = Some(alloc_report(vec![allocated("decode", 5, Some(1.0))]));
        assert!(run(&mut e, 0, 5 * S, &s).is_empty());
        // A firing leak stays firing when its data goes away.
        let mut e = engine(&["leak(track) for 0s"]);
        assert_eq!(e.evaluate(0, &growing(MIB), None).len(), 1);
        assert!(run(&mut e, TICK, 10 * S, &snap(vec![])).is_empty());
        assert_eq!(e.active().len(), 1);
    }

    #[test]
    fn alloc_report_takes_precedence_over_resident_charges() {
        let mut e = engine(&[
            "outstanding(track) > 1MB",
            "leak(track) > 100KB/s for 0s",
            "outstanding(track) < 1MB",
            "leak(track) < 100KB/s for 0s",
        ]);
        let mut s = snap(vec![]);
        // resident: 10 MB, growing 1 MB/s; alloc: 1 KB, growing 1 KB/s.
        s.stage_memory = vec![charged("track", 10_000_000, Some(1e6))];
        let fired = e.evaluate(0, &s, None);
        let values: Vec<_> = fired.iter().map(|e| (e.rule.as_str(), e.value)).collect();
        assert_eq!(
            values,
            [
                ("outstanding(track) > 1MB", 10e6),
                ("leak(track) > 100KB/s for 0s", 1e6)
            ]
        );
        let mut e = engine(&[
            "outstanding(track) > 1MB",
            "leak(track) > 100KB/s for 0s",
            "outstanding(track) < 1MB",
            "leak(track) < 100KB/s for 0s",
        ]);
        s.alloc = Some(alloc_report(vec![allocated("track", 1_000, Some(1e3))]));
        let fired = e.evaluate(0, &s, None);
        let values: Vec<_> = fired.iter().map(|e| (e.rule.as_str(), e.value)).collect();
        assert_eq!(
            values,
            [
                ("outstanding(track) < 1MB", 1e3),
                ("leak(track) < 100KB/s for 0s", 1e3)
            ]
        );
        // Resident bytes may be negative (a stage freeing what others faulted in).
        let mut e = engine(&["outstanding(track) < 0B"]);
        let mut s = snap(vec![]);
        s.stage_memory = vec![charged("track", -4, None)];
        assert_eq!(e.evaluate(0, &s, None)[0].value, -4.0);
    }

    #[test]
    fn hook_jobs_follow_transitions_of_rules_with_exec() {
        let mut e = AlertEngine::new(vec![
            (
                parse_rule("p99(infer) > 50ms").unwrap(),
                Some("cat > /dev/null".into()),
            ),
            (parse_rule("p99(infer) > 60ms").unwrap(), None),
        ]);
        let events = e.evaluate(0, &infer(80), None);
        assert_eq!(events.len(), 2);
        let jobs = e.take_hook_jobs();
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].exec, "cat > /dev/null");
        assert_eq!(jobs[0].event, events[0]);
        assert!(e.take_hook_jobs().is_empty());
        assert!(e.evaluate(TICK, &infer(80), None).is_empty());
        assert!(e.take_hook_jobs().is_empty());
    }

    #[test]
    fn from_specs_validates() {
        let spec = |rule: &str| AlertSpec {
            rule: rule.into(),
            exec: None,
        };
        let stages = ["infer".to_string()];
        assert!(AlertEngine::from_specs(&[spec("p99(infer) > 5ms")], &stages, &[], false).is_ok());
        let err = AlertEngine::from_specs(&[spec("fps < 5")], &stages, &[], false).unwrap_err();
        assert!(err.to_string().contains("fps needs a frame stage"), "{err}");
    }
}
