//! Frames as traces: the frame-root call is the root span, every traced
//! call inside it on the same thread a child, nested as the calls were
//! (a call's parent is the innermost call that encloses it). A frame's
//! calls come in as they return, the root last; they wait here until it
//! does. Frames are sampled by a ratio, decided from the frame's identity
//! (pid, thread, start) so every call of a frame gets the same answer.
use std::{
    borrow::Cow,
    collections::HashMap,
    time::{Duration, SystemTime},
};

use opentelemetry::{
    trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState},
    InstrumentationScope, KeyValue,
};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SpanData, SpanEvents, SpanLinks};

/// One call waiting for its frame's root.
#[derive(Debug, Clone)]
pub struct Call {
    pub stage: String,
    pub start_ns: u64,
    pub dur_ns: u64,
    pub self_ns: u64,
    pub depth: u32,
}

/// A frame: (pid, tid, wall-clock start of its root).
type FrameKey = (u32, u32, u64);

/// Frames waiting for their root at most; a new frame beyond is dropped.
const MAX_OPEN_FRAMES: usize = 4096;
/// Calls kept per frame at most; more are dropped.
const MAX_CALLS_PER_FRAME: usize = 1024;

/// Frames being put together (on the tracing thread: only the calls are
/// kept; spans are made by the export thread, [`Frame::spans`]).
pub struct Frames {
    /// Sampled when the frame's hash is below this (u64::MAX: every frame).
    threshold: u64,
    open: HashMap<FrameKey, Vec<Call>>,
    /// Calls dropped here (too many open frames or calls in one frame).
    pub dropped: u64,
}

/// A finished frame: its root call and the calls made inside it.
#[derive(Debug, Clone)]
pub struct Frame {
    pub pid: u32,
    pub tid: u32,
    pub root: Call,
    pub calls: Vec<Call>,
    /// Attributes of the root span (the process's container and pod).
    pub attributes: Vec<KeyValue>,
}

/// What makes spans: trace and span ids, the instrumentation scope.
pub struct SpanMaker {
    ids: RandomIdGenerator,
    scope: InstrumentationScope,
}

impl Default for SpanMaker {
    fn default() -> SpanMaker {
        SpanMaker {
            ids: RandomIdGenerator::default(),
            scope: InstrumentationScope::builder("adeline-trace")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        }
    }
}

impl Frames {
    /// `ratio`: the share of frames traced, 0..=1.
    pub fn new(ratio: f64) -> Frames {
        let threshold = if ratio >= 1.0 {
            u64::MAX
        } else {
            (ratio.max(0.0) * u64::MAX as f64) as u64
        };
        Frames {
            threshold,
            open: HashMap::new(),
            dropped: 0,
        }
    }

    fn sampled(&self, key: FrameKey) -> bool {
        self.threshold == u64::MAX || frame_hash(key) < self.threshold
    }

    /// A call of frame (pid, tid, frame start). Returns the frame when
    /// this call is its root (`root`: the frame-root stage's outermost
    /// call); `attributes` go on the root span.
    pub fn call(
        &mut self,
        pid: u32,
        tid: u32,
        frame_ns: u64,
        call: Call,
        root: bool,
        attributes: &[KeyValue],
    ) -> Option<Frame> {
        let key = (pid, tid, frame_ns);
        if !self.sampled(key) {
            return None;
        }
        if root {
            let calls = self.open.remove(&key).unwrap_or_default();
            return Some(Frame {
                pid,
                tid,
                root: call,
                calls,
                attributes: attributes.to_vec(),
            });
        }
        let open = self.open.len();
        match self.open.get_mut(&key) {
            Some(calls) if calls.len() < MAX_CALLS_PER_FRAME => calls.push(call),
            None if open < MAX_OPEN_FRAMES => {
                self.open.insert(key, vec![call]);
            }
            _ => self.dropped += 1,
        }
        None
    }

    /// Forgets frames that began more than `older_than_ns` before `now_ns`
    /// (wall clock) without their root returning (a thread that died, a
    /// root that never returns); their calls count as dropped.
    pub fn expire(&mut self, now_ns: u64, older_than_ns: u64) {
        let before = self.open.len();
        let mut lost = 0;
        self.open.retain(|&(_, _, start), calls| {
            let keep = start + older_than_ns >= now_ns;
            if !keep {
                lost += calls.len() as u64;
            }
            keep
        });
        if self.open.len() != before {
            self.dropped += lost;
        }
    }
}

impl Frame {
    /// Spans sent for this frame.
    pub fn span_count(&self) -> usize {
        self.calls.len() + 1
    }

    /// The root's span and its calls', nested.
    pub fn spans(self, maker: &SpanMaker) -> Vec<SpanData> {
        let Frame {
            pid,
            tid,
            root,
            mut calls,
            attributes,
        } = self;
        let trace_id = maker.ids.new_trace_id();
        let root_id = maker.ids.new_span_id();
        // Enclosing calls first: by start, then the shallower one.
        calls.sort_by_key(|c| (c.start_ns, c.depth));
        let mut out = Vec::with_capacity(calls.len() + 1);
        let mut root_attrs = vec![KeyValue::new("process.pid", i64::from(pid))];
        root_attrs.extend(attributes);
        out.push(maker.span(trace_id, root_id, SpanId::INVALID, &root, tid, root_attrs));
        // The calls that may still enclose the next one: (end, depth, id).
        let mut stack: Vec<(u64, u32, SpanId)> = vec![(end(&root), root.depth, root_id)];
        for call in &calls {
            while stack.len() > 1 && {
                let &(end_ns, depth, _) = stack.last().expect("non-empty");
                !(end_ns >= end(call) && depth < call.depth)
            } {
                stack.pop();
            }
            let parent = stack.last().expect("the root stays").2;
            let id = maker.ids.new_span_id();
            out.push(maker.span(trace_id, id, parent, call, tid, Vec::new()));
            stack.push((end(call), call.depth, id));
        }
        out
    }
}

impl SpanMaker {
    fn span(
        &self,
        trace_id: TraceId,
        id: SpanId,
        parent: SpanId,
        call: &Call,
        tid: u32,
        mut attributes: Vec<KeyValue>,
    ) -> SpanData {
        attributes.push(KeyValue::new("thread.id", i64::from(tid)));
        attributes.push(KeyValue::new("adeline.stage", call.stage.clone()));
        attributes.push(KeyValue::new(
            "adeline.self_time_ns",
            i64::try_from(call.self_ns).unwrap_or(i64::MAX),
        ));
        attributes.push(KeyValue::new("adeline.depth", i64::from(call.depth)));
        let start = SystemTime::UNIX_EPOCH + Duration::from_nanos(call.start_ns);
        SpanData {
            span_context: SpanContext::new(
                trace_id,
                id,
                TraceFlags::SAMPLED,
                false,
                TraceState::NONE,
            ),
            parent_span_id: parent,
            parent_span_is_remote: false,
            span_kind: SpanKind::Internal,
            name: Cow::Owned(call.stage.clone()),
            start_time: start,
            end_time: start + Duration::from_nanos(call.dur_ns),
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: self.scope.clone(),
        }
    }
}

fn end(c: &Call) -> u64 {
    c.start_ns + c.dur_ns
}

/// A well-mixed hash of a frame's identity (splitmix64 steps).
fn frame_hash((pid, tid, start): FrameKey) -> u64 {
    let mut x = start ^ (u64::from(pid) << 32 | u64::from(tid));
    for _ in 0..2 {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x = z ^ (z >> 31);
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(stage: &str, start_ns: u64, dur_ns: u64, depth: u32) -> Call {
        Call {
            stage: stage.into(),
            start_ns,
            dur_ns,
            self_ns: dur_ns,
            depth,
        }
    }

    fn name_of(spans: &[SpanData], id: SpanId) -> &str {
        spans
            .iter()
            .find(|s| s.span_context.span_id() == id)
            .map(|s| s.name.as_ref())
            .unwrap_or("(root parent)")
    }

    #[test]
    fn a_frame_nests_its_calls_under_the_root() {
        let mut f = Frames::new(1.0);
        // frame [100, 1100): decode [110,200), infer [300,900) holding
        // layer [310,400) and layer [500,600) (recursion-like depth 2),
        // publish [950,1000).
        let calls = [
            call("decode", 110, 90, 1),
            call("layer", 310, 90, 2),
            call("layer", 500, 100, 2),
            call("infer", 300, 600, 1),
            call("publish", 950, 50, 1),
        ];
        for c in calls {
            assert!(f.call(7, 8, 100, c, false, &[]).is_none());
        }
        // Another thread's frame stays open.
        assert!(f
            .call(7, 9, 100, call("decode", 120, 10, 1), false, &[])
            .is_none());
        let attrs = [KeyValue::new("container.id", "abc")];
        let frame = f
            .call(7, 8, 100, call("frame", 100, 1000, 0), true, &attrs)
            .unwrap();
        assert_eq!(frame.span_count(), 6);
        let spans = frame.spans(&SpanMaker::default());
        assert_eq!(spans.len(), 6);
        let root = &spans[0];
        assert_eq!(root.name, "frame");
        assert_eq!(root.parent_span_id, SpanId::INVALID);
        assert!(root
            .attributes
            .contains(&KeyValue::new("container.id", "abc")));
        assert!(root.attributes.contains(&KeyValue::new("process.pid", 7)));
        let trace = root.span_context.trace_id();
        assert!(spans.iter().all(|s| s.span_context.trace_id() == trace));
        let parents: Vec<(&str, &str)> = spans[1..]
            .iter()
            .map(|s| (s.name.as_ref(), name_of(&spans, s.parent_span_id)))
            .collect();
        assert_eq!(
            parents,
            [
                ("decode", "frame"),
                ("infer", "frame"),
                ("layer", "infer"),
                ("layer", "infer"),
                ("publish", "frame"),
            ]
        );
        let infer = &spans[2];
        assert_eq!(
            infer.end_time.duration_since(infer.start_time).unwrap(),
            Duration::from_nanos(600)
        );
        assert_eq!(f.open.len(), 1);
        f.expire(100 + 10_000, 1_000);
        assert_eq!((f.open.len(), f.dropped), (0, 1));
    }

    #[test]
    fn sampling_is_per_frame_and_close_to_the_ratio() {
        let mut none = Frames::new(0.0);
        assert!(none
            .call(1, 1, 5, call("frame", 5, 1, 0), true, &[])
            .is_none());
        let mut some = Frames::new(0.25);
        let mut traced = 0;
        for i in 0..4000u64 {
            let start = 1_000_000 + i * 33_333_333;
            // Every call of a frame gets the frame's answer.
            let early = some.call(3, 4, start, call("decode", start + 1, 1, 1), false, &[]);
            assert!(early.is_none());
            if let Some(frame) = some.call(3, 4, start, call("frame", start, 10, 0), true, &[]) {
                assert_eq!(frame.span_count(), 2);
                traced += 1;
            }
        }
        assert!((800..1200).contains(&traced), "{traced} of 4000 at 0.25");
        assert!(some.open.is_empty(), "unsampled frames are never kept");
    }

    #[test]
    fn bounded_frames_and_calls() {
        let mut f = Frames::new(1.0);
        for i in 0..(MAX_CALLS_PER_FRAME + 5) {
            f.call(1, 1, 0, call("x", i as u64, 1, 1), false, &[]);
        }
        assert_eq!(f.dropped, 5);
        for t in 0..(MAX_OPEN_FRAMES as u32 + 3) {
            f.call(2, t, 0, call("x", 1, 1, 1), false, &[]);
        }
        assert_eq!(f.open.len(), MAX_OPEN_FRAMES);
        assert_eq!(f.dropped, 5 + 4);
    }
}
