//! Frames: the outermost calls of the frame-root stage, frames per second,
//! and each stage's share of frame time.
use adeline_trace_common::SpanRecord;

use super::snapshot::{FrameStats, Percentiles};

/// Whether `span` is a frame: an outermost call of the `root` stage on its
/// thread. The kernel gives such a call its own entry time as `frame_ns`; a
/// root-stage call nested inside a frame carries the outer frame's time, so
/// it counts as an ordinary call inside that frame.
#[inline]
pub fn is_frame(span: &SpanRecord, root: Option<u32>) -> bool {
    root == Some(span.stage) && span.frame_ns != 0 && span.frame_ns == span.start_ns
}

/// Whether `span` ran inside a frame (a frame itself included).
#[inline]
pub fn in_frame(span: &SpanRecord) -> bool {
    span.frame_ns != 0
}

/// `count` events per second over `covered_ns`; 0 when nothing is covered.
pub fn per_second(count: u64, covered_ns: u64) -> f64 {
    if covered_ns == 0 {
        0.0
    } else {
        count as f64 * 1e9 / covered_ns as f64
    }
}

/// Frames completed per second over `covered_ns`, and their latency.
pub fn frame_stats(root: &str, latency: Percentiles, covered_ns: u64) -> FrameStats {
    FrameStats {
        root: root.to_string(),
        fps: per_second(latency.count, covered_ns),
        latency,
    }
}

/// Each stage's share of frame time: the self time of its calls inside
/// frames (`frame_self_ns`, one per stage) over the summed duration of the
/// frames, `frames_ns`. The root's own self time is one of the shares, so
/// shares sum to 1 when every call inside the frames of a window completed
/// in that window. All None without frame time.
pub fn shares(frame_self_ns: &[u64], frames_ns: u64) -> Vec<Option<f64>> {
    frame_self_ns
        .iter()
        .map(|&s| (frames_ns > 0).then(|| s as f64 / frames_ns as f64))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(stage: u32, start_ns: u64, frame_ns: u64) -> SpanRecord {
        SpanRecord {
            stage,
            start_ns,
            frame_ns,
            ..Default::default()
        }
    }

    #[test]
    fn frames_are_outermost_root_calls() {
        assert!(is_frame(&span(0, 100, 100), Some(0)));
        assert!(!is_frame(&span(0, 150, 100), Some(0))); // nested root call
        assert!(!is_frame(&span(1, 100, 100), Some(0))); // not the root stage
        assert!(!is_frame(&span(0, 0, 0), Some(0))); // kernel saw no frame
        assert!(!is_frame(&span(0, 100, 100), None));
        assert!(in_frame(&span(1, 150, 100)));
        assert!(!in_frame(&span(1, 150, 0)));
    }

    #[test]
    fn fps_and_shares() {
        let lat = Percentiles {
            count: 30,
            ..Default::default()
        };
        let f = frame_stats("frame", lat, 1_500_000_000);
        assert_eq!((f.root.as_str(), f.fps), ("frame", 20.0));
        assert_eq!(frame_stats("frame", lat, 0).fps, 0.0);
        assert_eq!(
            shares(&[5, 2, 3, 0], 10),
            [Some(0.5), Some(0.2), Some(0.3), Some(0.0)]
        );
        assert_eq!(shares(&[5, 2], 0), [None, None]);
    }
}
