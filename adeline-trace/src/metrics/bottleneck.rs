//! Bottlenecks: the stage that takes the largest share of frame time in its
//! own code, and the stage whose p99 grew most.
use super::snapshot::{GrowthOf, Percentiles, ShareOf, StageStats};

/// Fewest samples in each window for a p99 comparison to count.
pub const MIN_GROWTH_SAMPLES: u64 = 5;

/// The stage with the largest `frame_share` (the first in plan order on a
/// tie). The frame root is a candidate like any stage: its share is the
/// frame time spent in its own code, outside every traced stage, and when
/// that is the largest share, that untraced code is the bottleneck.
pub fn top_self_share(stages: &[StageStats]) -> Option<ShareOf> {
    let mut best: Option<(&StageStats, f64)> = None;
    for s in stages {
        if let Some(share) = s.frame_share {
            if best.is_none_or(|(_, b)| share > b) {
                best = Some((s, share));
            }
        }
    }
    best.map(|(s, share)| ShareOf {
        stage: s.stage.clone(),
        share,
    })
}

/// The stage whose p99 in `now` grew most against `earlier` (the window of
/// the same length just before), as `now.p99 / earlier.p99`. Only ratios
/// above 1.0 from stages with at least [`MIN_GROWTH_SAMPLES`] samples in
/// both windows (and a non-zero earlier p99) count; the first in plan
/// order wins a tie. `names`, `now` and `earlier` are in plan order.
pub fn p99_growth(
    names: &[String],
    now: &[Percentiles],
    earlier: &[Percentiles],
) -> Option<GrowthOf> {
    let mut best: Option<GrowthOf> = None;
    for ((name, n), e) in names.iter().zip(now).zip(earlier) {
        if n.count < MIN_GROWTH_SAMPLES || e.count < MIN_GROWTH_SAMPLES || e.p99_ns == 0 {
            continue;
        }
        let ratio = n.p99_ns as f64 / e.p99_ns as f64;
        if ratio > 1.0 && best.as_ref().is_none_or(|b| ratio > b.ratio) {
            best = Some(GrowthOf {
                stage: name.clone(),
                p99_ns: n.p99_ns,
                earlier_p99_ns: e.p99_ns,
                ratio,
            });
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(name: &str, share: Option<f64>) -> StageStats {
        StageStats {
            stage: name.to_string(),
            rate_hz: 0.0,
            latency: Percentiles::default(),
            total_ns: 0,
            self_ns: 0,
            frame_share: share,
        }
    }

    fn p(count: u64, p99_ns: u64) -> Percentiles {
        Percentiles {
            count,
            p99_ns,
            ..Default::default()
        }
    }

    #[test]
    fn top_share_includes_the_root_and_skips_none() {
        let s = [
            stage("frame", Some(0.5)),
            stage("pre", Some(0.2)),
            stage("infer", Some(0.3)),
            stage("idle", None),
        ];
        let top = top_self_share(&s).unwrap();
        assert_eq!((top.stage.as_str(), top.share), ("frame", 0.5));
        let top = top_self_share(&s[1..]).unwrap();
        assert_eq!(top.stage, "infer");
        let tie = [stage("a", Some(0.5)), stage("b", Some(0.5))];
        assert_eq!(top_self_share(&tie).unwrap().stage, "a");
        assert_eq!(top_self_share(&s[3..]), None);
    }

    #[test]
    fn growth_picks_the_largest_ratio_above_one_with_enough_samples() {
        let names: Vec<String> = ["a", "b", "c", "d", "e"].map(String::from).to_vec();
        let now = [
            p(100, 300),
            p(100, 500),
            p(4, 9_000),
            p(100, 100),
            p(100, 7),
        ];
        let earlier = [
            p(100, 100),
            p(100, 250),
            p(100, 100),
            p(100, 200),
            p(100, 0),
        ];
        let g = p99_growth(&names, &now, &earlier).unwrap();
        assert_eq!(
            g,
            GrowthOf {
                stage: "a".into(),
                p99_ns: 300,
                earlier_p99_ns: 100,
                ratio: 3.0
            }
        );
        // b grew 2x, c had too few samples, d shrank, e had no earlier p99.
        assert_eq!(
            p99_growth(&names[1..], &now[1..], &earlier[1..])
                .unwrap()
                .stage,
            "b"
        );
        assert_eq!(p99_growth(&names[2..], &now[2..], &earlier[2..]), None);
        // Exactly 5 samples count; unchanged does not.
        assert_eq!(
            p99_growth(&names[..1], &[p(5, 200)], &[p(5, 100)])
                .unwrap()
                .ratio,
            2.0
        );
        assert_eq!(p99_growth(&names[..1], &[p(5, 100)], &[p(5, 100)]), None);
    }
}
