//! The profiler's data: every sample of the last minutes (time, stage,
//! frame, thread, stack), the whole-run totals, and the stacks they share;
//! [`ProfileStore::profile`] answers a query (a stage, a time range, a
//! frame) with symbolized stacks and their wall-clock time, on- and
//! off-CPU in one unit. Names come from [`names`] (blazesym).
//!
//! A stack's frames, root first: the stage (or `(no stage)`), then
//! `[truncated]` when the user stack does not reach the thread's
//! outermost frame (frame pointers missing somewhere: nothing is guessed
//! beyond the last frame that checks out), the user frames, the kernel
//! frames, and for off-CPU time `[off-cpu]` (after `[runqueue]` for time
//! spent runnable, waiting for a CPU).
//!
//! In a CPython process the Python frames take the place of the
//! interpreter's eval loop (`_PyEval_EvalFrameDefault`) in the user
//! frames, as py-spy's `--native` does: each eval-loop native frame is
//! replaced by the Python frames that one call of it runs (innermost eval
//! frame by the innermost group). Groups without a native eval frame to
//! replace (the native walk stopped short: interpreters built without
//! frame pointers) go at the root, before the native frames, so native
//! code called from Python (numpy, OpenCV, onnxruntime) stays under its
//! Python caller.
use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, PoisonError},
};

use adeline_trace_common::{
    profile::{
        py_code, PY_CSTACK_ENTRY, PY_LAST_OF_EVAL, SAMPLE_OFF_CPU, SAMPLE_PREEMPTED,
        SAMPLE_USER_COMPLETE,
    },
    NO_STAGE,
};
use serde::Serialize;

use crate::{events::Sample, python::sampling::CodeNames};

pub mod names;

use names::{Frame, FrameKind, Namer, Naming};

/// The first frame of samples taken outside every traced stage.
pub const NO_STAGE_FRAME: &str = "(no stage)";
/// The last frame of off-CPU time.
pub const OFF_CPU_FRAME: &str = "[off-cpu]";
/// Before `[off-cpu]`: the thread was runnable, waiting for a CPU.
pub const RUNQUEUE_FRAME: &str = "[runqueue]";
/// After the stage: the user stack does not reach the thread's outermost
/// frame (a function without a frame pointer cut the walk).
pub const TRUNCATED_FRAME: &str = "[truncated]";

/// In place of a return address that a uretprobe replaced (the traced
/// function's caller: the kernel keeps the real address, the walk does
/// not see it).
pub const URETPROBE_FRAME: &str = "[uretprobe]";

/// Samples kept for time-range queries (the oldest go first).
pub const MAX_RECENT: usize = 500_000;
/// How long samples are kept for time-range queries.
pub const RETENTION_NS: u64 = 15 * 60 * 1_000_000_000;

/// Id of an interned stack.
type StackId = u32;

/// A stack as the kernel took it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct RawStack {
    pid: u32,
    /// The user walk reached the outermost frame.
    complete: bool,
    user: Vec<u64>,
    kernel: Vec<u64>,
    /// Python frames (code objects and instructions), innermost first
    /// (`PY_LAST_OF_EVAL`).
    python: Vec<u64>,
}

/// How a sample's time was spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TimeKind {
    OnCpu,
    /// Blocked (sleep, lock, I/O).
    OffCpu,
    /// Runnable, waiting for a CPU.
    Runqueue,
}

/// One kept sample.
#[derive(Debug, Clone, Copy)]
struct Kept {
    /// Monotonic ns (off-CPU: when it left the CPU).
    ts_ns: u64,
    stage: u32,
    stack: StackId,
    frame_ns: u64,
    /// On-CPU or blocked time, ns.
    weight_ns: u64,
    /// Runnable time, ns.
    wait_ns: u64,
    on_cpu: bool,
}

/// Time of one (stage, stack, kind).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Weight {
    ns: u64,
    samples: u64,
}

/// What a profile is asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProfileQuery {
    /// Only this stage's samples (by name); None: every stage and none.
    pub stage: Option<String>,
    /// Monotonic ns range [since, until); None: the whole run.
    pub range: Option<(u64, u64)>,
    /// Only samples of the frame that started at this monotonic ns.
    pub frame_ns: Option<u64>,
}

/// One symbolized stack of a profile and its time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileStack {
    /// Root first; the first frame is the stage or `(no stage)`.
    pub frames: Vec<Frame>,
    pub kind: TimeKind,
    pub ns: u64,
    pub samples: u64,
}

/// A profile: symbolized stacks with their time (µs in every output).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Profile {
    pub stacks: Vec<ProfileStack>,
    /// The cpu-clock period, ns.
    pub period_ns: u64,
    /// The range covered (monotonic ns), when one was asked for.
    pub range: Option<(u64, u64)>,
    /// Stacks of it that are `[truncated]`.
    pub truncated: u64,
}

impl Profile {
    pub fn total_ns(&self) -> u64 {
        self.stacks.iter().map(|s| s.ns).sum()
    }
}

/// The API path of alert profile `id` (its differential flame graph).
pub fn alert_profile_path(id: u32) -> String {
    format!("/api/alerts/{id}/profile")
}

/// A stage's profile around an alert: the capture after it fired and the
/// same length of time before (for the differential flame graph).
pub struct AlertCapture {
    /// 1, 2, ... in firing order.
    pub id: u32,
    pub rule: String,
    pub stage: String,
    /// Wall-clock ns the alert fired.
    pub fired_ns: u64,
    /// Length of each capture, ns.
    pub capture_ns: u64,
    pub before: Unnamed,
    pub after: Unnamed,
}

/// Counts the API and the end of the run report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ProfileTotals {
    pub on_cpu_samples: u64,
    pub off_cpu_intervals: u64,
    pub on_cpu_ns: u64,
    pub off_cpu_ns: u64,
    pub runqueue_ns: u64,
}

/// Every sample of the run.
pub struct ProfileStore {
    period_ns: u64,
    stages: Vec<String>,
    stacks: HashMap<RawStack, StackId>,
    by_id: Vec<RawStack>,
    recent: VecDeque<Kept>,
    /// Whole run: (stage, stack, kind) -> time.
    total: HashMap<(u32, StackId, TimeKind), Weight>,
    totals: ProfileTotals,
    namer: Arc<Mutex<Namer>>,
    /// (pid, address) seen since the last [`Self::resolve_new`].
    pending: Vec<(u32, u64)>,
    /// (pid, code object) seen since then.
    pending_py: Vec<(u32, u64)>,
}

impl ProfileStore {
    pub fn new(period_ns: u64, stages: Vec<String>) -> ProfileStore {
        ProfileStore {
            period_ns,
            stages,
            stacks: HashMap::new(),
            by_id: Vec::new(),
            recent: VecDeque::new(),
            total: HashMap::new(),
            totals: ProfileTotals::default(),
            namer: Arc::new(Mutex::new(Namer::default())),
            pending: Vec::new(),
            pending_py: Vec::new(),
        }
    }

    pub fn period_ns(&self) -> u64 {
        self.period_ns
    }

    pub fn totals(&self) -> ProfileTotals {
        self.totals
    }

    /// Stage names, by id.
    pub fn stage_names(&self) -> &[String] {
        &self.stages
    }

    /// Records one sample (the drain loop).
    pub fn record(&mut self, s: &Sample) {
        let h = &s.header;
        let raw = RawStack {
            pid: h.pid,
            complete: h.flags & SAMPLE_USER_COMPLETE != 0,
            user: s.user.clone(),
            kernel: s.kernel.clone(),
            python: s.python.clone(),
        };
        let stack = match self.stacks.get(&raw) {
            Some(&id) => id,
            None => {
                let id = self.by_id.len() as StackId;
                self.pending.extend(raw.user.iter().map(|&a| (raw.pid, a)));
                self.pending_py.extend(
                    raw.python
                        .iter()
                        .filter(|&&c| c & PY_CSTACK_ENTRY == 0)
                        .map(|&c| (raw.pid, py_code(c))),
                );
                self.stacks.insert(raw.clone(), id);
                self.by_id.push(raw);
                id
            }
        };
        let on_cpu = h.what != SAMPLE_OFF_CPU;
        let (weight_ns, wait_ns) = match (on_cpu, h.flags & SAMPLE_PREEMPTED != 0) {
            (true, _) => (h.weight_ns, 0),
            (false, true) => (0, h.wait_ns),
            (false, false) => (h.weight_ns, h.wait_ns),
        };
        let kept = Kept {
            ts_ns: h.ts_ns,
            stage: h.stage,
            stack,
            frame_ns: h.frame_ns,
            weight_ns,
            wait_ns,
            on_cpu,
        };
        self.add_total(&kept);
        if on_cpu {
            self.totals.on_cpu_samples += 1;
            self.totals.on_cpu_ns += weight_ns;
        } else {
            self.totals.off_cpu_intervals += 1;
            self.totals.off_cpu_ns += weight_ns;
            self.totals.runqueue_ns += wait_ns;
        }
        self.recent.push_back(kept);
        let cutoff = h.ts_ns.saturating_sub(RETENTION_NS);
        while self
            .recent
            .front()
            .is_some_and(|k| k.ts_ns < cutoff || self.recent.len() > MAX_RECENT)
        {
            self.recent.pop_front();
        }
    }

    fn add_total(&mut self, k: &Kept) {
        for (kind, ns) in kinds(k) {
            let w = self.total.entry((k.stage, k.stack, kind)).or_default();
            w.ns += ns;
            w.samples += 1;
        }
    }

    /// A CPython process whose Python frames the kernel walks: where its
    /// code objects keep their names.
    pub fn set_python(&mut self, pid: u32, names: CodeNames) {
        self.namer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .set_python(pid, names);
    }

    /// Resolves the user addresses and code objects of stacks seen for the
    /// first time while their processes still run (call after each drain).
    pub fn resolve_new(&mut self) {
        if self.pending.is_empty() && self.pending_py.is_empty() {
            return;
        }
        let mut by_pid: HashMap<u32, Vec<u64>> = HashMap::new();
        for (pid, a) in self.pending.drain(..) {
            by_pid.entry(pid).or_default().push(a);
        }
        let mut namer = self.namer.lock().unwrap_or_else(PoisonError::into_inner);
        for (pid, addrs) in by_pid {
            namer.resolve(pid, &addrs);
        }
        for (pid, code) in self.pending_py.drain(..) {
            namer.resolve_python(pid, code);
        }
    }

    /// The samples `q` asks for, aggregated, with what naming them needs
    /// (cheap: call under the store's lock, then [`Unnamed::name`] without it).
    pub fn query(&self, q: &ProfileQuery) -> Result<Unnamed, String> {
        let stage = match &q.stage {
            None => None,
            Some(name) if name == NO_STAGE_FRAME => Some(NO_STAGE),
            Some(name) => Some(
                self.stages
                    .iter()
                    .position(|s| s == name)
                    .map(|i| i as u32)
                    .ok_or_else(|| {
                        format!(
                            "no stage '{name}': the stages are {}",
                            self.stages.join(", ")
                        )
                    })?,
            ),
        };
        let mut agg: HashMap<(u32, StackId, TimeKind), Weight> = HashMap::new();
        let wanted = |st: u32| stage.is_none_or(|s| s == st);
        match (q.range, q.frame_ns) {
            (None, None) => {
                for (&(st, id, kind), w) in &self.total {
                    if wanted(st) {
                        *agg.entry((st, id, kind)).or_default() = *w;
                    }
                }
            }
            _ => {
                let (since, until) = q.range.unwrap_or((0, u64::MAX));
                for k in &self.recent {
                    if k.ts_ns < since || k.ts_ns >= until || !wanted(k.stage) {
                        continue;
                    }
                    if q.frame_ns.is_some_and(|f| f != k.frame_ns) {
                        continue;
                    }
                    for (kind, ns) in kinds(k) {
                        let w = agg.entry((k.stage, k.stack, kind)).or_default();
                        w.ns += ns;
                        w.samples += 1;
                    }
                }
            }
        }
        let stacks = agg
            .into_iter()
            .map(|((st, id, kind), w)| UnnamedStack {
                stage: match self.stages.get(st as usize) {
                    Some(s) => s.clone(),
                    None => NO_STAGE_FRAME.to_string(),
                },
                raw: self.by_id[id as usize].clone(),
                kind,
                weight: w,
            })
            .collect();
        Ok(Unnamed {
            stacks,
            period_ns: self.period_ns,
            range: q.range,
            namer: self.namer.clone(),
        })
    }
}

/// The time kinds of a kept sample and their ns.
fn kinds(k: &Kept) -> impl Iterator<Item = (TimeKind, u64)> {
    let list = if k.on_cpu {
        [(TimeKind::OnCpu, k.weight_ns), (TimeKind::OnCpu, 0)]
    } else {
        [
            (TimeKind::OffCpu, k.weight_ns),
            (TimeKind::Runqueue, k.wait_ns),
        ]
    };
    let n = if k.on_cpu { 1 } else { 2 };
    list.into_iter().take(n).filter(|&(_, ns)| ns > 0)
}

struct UnnamedStack {
    stage: String,
    raw: RawStack,
    kind: TimeKind,
    weight: Weight,
}

/// An aggregated query result whose stacks are not named yet.
pub struct Unnamed {
    stacks: Vec<UnnamedStack>,
    period_ns: u64,
    range: Option<(u64, u64)>,
    namer: Arc<Mutex<Namer>>,
}

impl Unnamed {
    /// Names every stack (blazesym; slow the first time a file is read)
    /// and merges the stacks that name alike.
    pub fn name(&self) -> Profile {
        let mut namer = self.namer.lock().unwrap_or_else(PoisonError::into_inner);
        let mut namer = namer.naming();
        let mut merged: HashMap<(Vec<Frame>, TimeKind), Weight> = HashMap::new();
        let mut truncated = 0;
        for s in &self.stacks {
            let (frames, cut) = frames_of(&mut namer, &s.stage, &s.raw, s.kind);
            if cut {
                truncated += s.weight.samples;
            }
            let w = merged.entry((frames, s.kind)).or_default();
            w.ns += s.weight.ns;
            w.samples += s.weight.samples;
        }
        let mut stacks: Vec<ProfileStack> = merged
            .into_iter()
            .map(|((frames, kind), w)| ProfileStack {
                frames,
                kind,
                ns: w.ns,
                samples: w.samples,
            })
            .collect();
        stacks.sort_by(|a, b| a.frames.cmp_names(&b.frames).then(a.kind.cmp(&b.kind)));
        Profile {
            stacks,
            period_ns: self.period_ns,
            range: self.range,
            truncated,
        }
    }
}

/// Orders stacks by their frame names.
trait CmpNames {
    fn cmp_names(&self, other: &Self) -> std::cmp::Ordering;
}

impl CmpNames for Vec<Frame> {
    fn cmp_names(&self, other: &Self) -> std::cmp::Ordering {
        self.iter()
            .map(|f| &f.name)
            .cmp(other.iter().map(|f| &f.name))
    }
}

/// The native frame of one call of CPython's eval loop.
const EVAL_FRAME: &str = "_PyEval_EvalFrameDefault";

/// The Python frames of a stack, named, in groups (one per eval-loop
/// call), innermost group first, each group's frames root first. Code
/// objects that could not be read are left out.
fn python_groups(namer: &mut Naming<'_>, raw: &RawStack) -> Vec<Vec<Frame>> {
    let mut groups: Vec<Vec<Frame>> = Vec::new();
    let mut group: Vec<Frame> = Vec::new();
    for &c in &raw.python {
        let end = if c & PY_CSTACK_ENTRY != 0 {
            true
        } else {
            if let Some(f) = namer.python_frame(raw.pid, c) {
                group.push(f);
            }
            c & PY_LAST_OF_EVAL != 0
        };
        if end && !group.is_empty() {
            group.reverse();
            groups.push(std::mem::take(&mut group));
        }
    }
    if !group.is_empty() {
        group.reverse();
        groups.push(group);
    }
    groups.retain(|g| !g.is_empty());
    groups
}

/// Puts the Python groups (innermost first) in place of the eval-loop
/// frames of `user` (root first): the innermost eval frame gets the
/// innermost group. Returns the groups left over (outer ones, for the
/// root end, root first) and the merged user frames.
fn merge_python(user: Vec<Frame>, groups: Vec<Vec<Frame>>) -> (Vec<Frame>, Vec<Frame>) {
    if groups.is_empty() {
        return (Vec::new(), user);
    }
    let evals: Vec<usize> = user
        .iter()
        .enumerate()
        .filter(|(_, f)| f.kind == FrameKind::User && f.name == EVAL_FRAME)
        .map(|(i, _)| i)
        .collect();
    // Innermost eval frame <-> innermost group.
    let mut by_eval: HashMap<usize, Vec<Frame>> = HashMap::new();
    let mut groups = groups.into_iter();
    for &i in evals.iter().rev() {
        match groups.next() {
            Some(g) => {
                by_eval.insert(i, g);
            }
            None => break,
        }
    }
    let mut outer: Vec<Frame> = Vec::new();
    for g in groups.rev() {
        outer.extend(g);
    }
    let mut merged = Vec::with_capacity(user.len());
    for (i, f) in user.into_iter().enumerate() {
        match by_eval.remove(&i) {
            Some(g) => merged.extend(g),
            None => merged.push(f),
        }
    }
    (outer, merged)
}

/// Functions a thread's outermost frame can be in (the C library's start
/// routines, which are built without frame pointers, so a walk through
/// them ends without a zero frame pointer although nothing is missing).
const THREAD_ROOTS: [&str; 8] = [
    "__libc_start_call_main",
    "__libc_start_main",
    "__libc_start_main_impl",
    "_start",
    "start_thread",
    "clone3",
    "__clone3",
    "__clone",
];

/// Kernel functions of the tracing machinery itself (the BPF programs and
/// the tracepoint that ran them): left out at the top of kernel stacks.
fn tracing_machinery(name: &str) -> bool {
    name.starts_with("bpf_prog_")
        || name.starts_with("bpf_trace_run")
        || name.starts_with("__bpf_trace_")
        || name.starts_with("__traceiter_")
        || name.starts_with("perf_trace_")
}

/// What a user address of a stack is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UserAddr {
    /// The sampled instruction.
    Ip,
    /// A return address.
    Return,
    /// A return address a uretprobe replaced.
    Uretprobe,
}

/// The frames of one stack, root first, and whether it is truncated.
fn frames_of(
    namer: &mut Naming<'_>,
    stage: &str,
    raw: &RawStack,
    kind: TimeKind,
) -> (Vec<Frame>, bool) {
    // User frames that check out: the sampled instruction, then return
    // addresses that follow a call, up to the first that does not.
    let mut user: Vec<(u64, UserAddr)> = Vec::new();
    let mut cut = !raw.complete;
    for (i, &a) in raw.user.iter().enumerate() {
        if i > 0 {
            let info = namer.addr(raw.pid, a);
            if info.is_some_and(|info| info.uretprobe) {
                user.push((a, UserAddr::Uretprobe));
                continue;
            }
            if !info.is_some_and(|info| info.after_call) {
                cut = true;
                break;
            }
        }
        user.push((
            a,
            if i > 0 {
                UserAddr::Return
            } else {
                UserAddr::Ip
            },
        ));
    }
    let mut user_frames: Vec<Frame> = Vec::new();
    for &(a, what) in user.iter().rev() {
        match what {
            UserAddr::Uretprobe => user_frames.push(Frame::marker(URETPROBE_FRAME)),
            _ => user_frames.extend(namer.user_frames(raw.pid, a, what == UserAddr::Return)),
        }
    }
    if cut
        && user.len() == raw.user.len()
        && user_frames
            .first()
            .is_some_and(|f| THREAD_ROOTS.contains(&f.name.as_str()))
    {
        cut = false;
    }
    let groups = python_groups(namer, raw);
    let (outer, user_frames) = merge_python(user_frames, groups);
    let cut = cut && !raw.user.is_empty();
    let mut frames = vec![Frame::marker(stage)];
    // Python frames above the native walk's end: the gap is after them.
    frames.extend(outer);
    if cut {
        frames.push(Frame::marker(TRUNCATED_FRAME));
    }
    frames.extend(user_frames);
    let mut kernel: Vec<Frame> = raw.kernel.iter().map(|&a| namer.kernel_frame(a)).collect();
    let machinery = kernel
        .iter()
        .take_while(|f| tracing_machinery(&f.name))
        .count();
    kernel.drain(..machinery);
    frames.extend(kernel.into_iter().rev());
    match kind {
        TimeKind::OnCpu => {}
        TimeKind::OffCpu => frames.push(Frame::marker(OFF_CPU_FRAME)),
        TimeKind::Runqueue => {
            frames.push(Frame::marker(RUNQUEUE_FRAME));
            frames.push(Frame::marker(OFF_CPU_FRAME));
        }
    }
    (frames, cut)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn native(name: &str) -> Frame {
        Frame {
            name: name.into(),
            file: None,
            line: None,
            kind: FrameKind::User,
        }
    }

    fn py(name: &str) -> Frame {
        Frame {
            name: name.into(),
            file: Some("/app/x.py".into()),
            line: Some(1),
            kind: FrameKind::Python,
        }
    }

    fn names(frames: &[Frame]) -> Vec<&str> {
        frames.iter().map(|f| f.name.as_str()).collect()
    }

    #[test]
    fn python_groups_replace_eval_frames_innermost_first() {
        // main -> eval(a, b) -> C call -> eval(c) -> leaf C code.
        let user = ["main", EVAL_FRAME, "PyObject_Call", EVAL_FRAME, "leaf"]
            .map(native)
            .to_vec();
        let groups = vec![vec![py("c")], vec![py("a"), py("b")]];
        let (outer, merged) = merge_python(user, groups);
        assert!(outer.is_empty());
        assert_eq!(
            names(&merged),
            ["main", "a", "b", "PyObject_Call", "c", "leaf"]
        );
    }

    #[test]
    fn python_groups_without_an_eval_frame_go_to_the_root() {
        // The native walk stopped in the eval loop's caller-less code.
        let user = [EVAL_FRAME, "leaf"].map(native).to_vec();
        let groups = vec![vec![py("c")], vec![py("a"), py("b")], vec![py("m")]];
        let (outer, merged) = merge_python(user, groups);
        assert_eq!(names(&outer), ["m", "a", "b"]);
        assert_eq!(names(&merged), ["c", "leaf"]);
        // No native eval frame at all (sampled in a C library).
        let (outer, merged) = merge_python(vec![native("numpy_op")], vec![vec![py("f")]]);
        assert_eq!(names(&outer), ["f"]);
        assert_eq!(names(&merged), ["numpy_op"]);
        // More eval frames than groups: the outer ones stay native.
        let user = [EVAL_FRAME, EVAL_FRAME].map(native).to_vec();
        let (outer, merged) = merge_python(user, vec![vec![py("f")]]);
        assert!(outer.is_empty());
        assert_eq!(names(&merged), [EVAL_FRAME, "f"]);
    }

    #[test]
    fn python_frames_are_labelled_qualname_file_line() {
        let mut f = py("Tracker.update");
        f.file = Some("/srv/app/pipeline.py".into());
        f.line = Some(373);
        assert_eq!(f.label(), "Tracker.update (pipeline.py:373)");
    }
}
