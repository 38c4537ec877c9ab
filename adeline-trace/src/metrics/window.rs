//! Sliding windows: a ring of time slots, merged on demand.
//!
//! A window of length `W` is kept as slots of `W / 10`; slot `e` (its
//! *epoch*) holds the events whose time `t` has `t / (W / 10) == e`. The ring
//! has 20 slots: the current window and the one before it.
//!
//! The rule, with `e_now = now / (W / 10)`:
//! - the **current** window is slots `e_now - 9 ..= e_now`: the slot holding
//!   `now` plus the 9 before it. It covers `[(e_now - 9) * W / 10, now]`,
//!   between `0.9 W` and `W` long, and never contains an event older than
//!   `now - W` (the partial oldest slot is dropped, not included);
//! - the **earlier** window is slots `e_now - 19 ..= e_now - 10`: exactly `W`
//!   long, ending where the current window starts;
//! - an event lands in the slot of its own time, whatever order events come
//!   in. One whose slot has since been reused for a later period (it is more
//!   than 20 slots older than a later event) is refused: the caller keeps it
//!   in its whole-run figures only. An old event never displaces newer data,
//!   and windows pick slots by epoch, so a stale slot is never read.
//!
//! Memory: the ring holds exactly 20 slots, whatever the run length.

/// Slots per window length.
pub const SLOTS_PER_WINDOW: u64 = 10;
/// Slots in a ring: the current window and the earlier one.
pub const RING_SLOTS: usize = 2 * SLOTS_PER_WINDOW as usize;

/// What a slot holds: it can be emptied for reuse.
pub trait SlotData: Clone {
    fn clear(&mut self);
}

/// A ring of [`RING_SLOTS`] time slots of one width.
#[derive(Debug, Clone)]
pub struct Ring<T> {
    width_ns: u64,
    /// (start, epoch) of the slot last written: most events fall in it, and
    /// this saves a division.
    recent: (u64, u64),
    /// (epoch, data); data is empty until the slot is first used.
    slots: Vec<(u64, T)>,
}

/// The slots of a window and the time they start at.
pub struct Selection<'a, T> {
    /// Start of the oldest slot of the window (monotonic ns).
    pub start_ns: u64,
    /// The window's slots that hold data, in no particular order.
    pub slots: Vec<&'a T>,
}

impl<T: SlotData> Ring<T> {
    /// A ring for windows of `window_ns` (at least 10 ns) whose slots start
    /// as copies of `empty`.
    pub fn new(window_ns: u64, empty: T) -> Ring<T> {
        Ring {
            width_ns: (window_ns / SLOTS_PER_WINDOW).max(1),
            recent: (0, 0),
            slots: vec![(0, empty); RING_SLOTS],
        }
    }

    /// Width of one slot in nanoseconds.
    /// Applies `f` to every slot's value (e.g. to grow them all).
    pub fn for_each_mut(&mut self, f: impl FnMut(&mut T)) {
        self.slots.iter_mut().map(|(_, v)| v).for_each(f);
    }

    pub fn width_ns(&self) -> u64 {
        self.width_ns
    }

    /// The slot for an event at `t_ns`, emptied first if it held an older
    /// period; None when it already holds a newer period, i.e. the event is
    /// older than the ring reaches.
    #[inline]
    pub fn slot_mut(&mut self, t_ns: u64) -> Option<&mut T> {
        let epoch = if t_ns.wrapping_sub(self.recent.0) < self.width_ns {
            self.recent.1
        } else {
            let epoch = t_ns / self.width_ns;
            self.recent = (epoch * self.width_ns, epoch);
            epoch
        };
        let (held, data) = &mut self.slots[(epoch % RING_SLOTS as u64) as usize];
        if *held > epoch {
            return None;
        }
        if *held < epoch {
            data.clear();
            *held = epoch;
        }
        Some(data)
    }

    /// The current window ending at `now_ns`.
    pub fn current(&self, now_ns: u64) -> Selection<'_, T> {
        let e_now = now_ns / self.width_ns;
        let first = e_now.saturating_sub(SLOTS_PER_WINDOW - 1);
        self.select(first, Some(e_now))
    }

    /// The window of the same length just before [`Ring::current`]'s.
    pub fn earlier(&self, now_ns: u64) -> Selection<'_, T> {
        let e_now = now_ns / self.width_ns;
        let first = e_now.saturating_sub(2 * SLOTS_PER_WINDOW - 1);
        self.select(first, e_now.checked_sub(SLOTS_PER_WINDOW))
    }

    fn select(&self, first: u64, last: Option<u64>) -> Selection<'_, T> {
        let slots = match last {
            Some(last) => self
                .slots
                .iter()
                .filter(|(e, _)| (first..=last).contains(e))
                .map(|(_, d)| d)
                .collect(),
            None => Vec::new(),
        };
        Selection {
            start_ns: first.saturating_mul(self.width_ns),
            slots,
        }
    }

    /// Every slot, for memory accounting.
    pub fn all(&self) -> impl Iterator<Item = &T> {
        self.slots.iter().map(|(_, d)| d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A slot that remembers the times put in it.
    #[derive(Debug, Clone, Default)]
    struct Times(Vec<u64>);

    impl SlotData for Times {
        fn clear(&mut self) {
            self.0.clear();
        }
    }

    fn put(r: &mut Ring<Times>, t: u64) -> bool {
        r.slot_mut(t).map(|s| s.0.push(t)).is_some()
    }

    fn times(sel: &Selection<'_, Times>) -> Vec<u64> {
        let mut v: Vec<u64> = sel.slots.iter().flat_map(|s| s.0.iter().copied()).collect();
        v.sort_unstable();
        v
    }

    const MS: u64 = 1_000_000;

    #[test]
    fn current_window_never_reaches_past_w() {
        // 1 s window, 100 ms slots.
        let mut r = Ring::new(1_000 * MS, Times::default());
        for t in [8_950, 9_000, 9_050, 9_100, 9_999, 10_040] {
            assert!(put(&mut r, t * MS));
        }
        // now = 10.05 s: slots 9.1 ..= 10.0 s (+ the partial one at 10.0).
        let sel = r.current(10_050 * MS);
        assert_eq!(sel.start_ns, 9_100 * MS);
        assert_eq!(times(&sel), [9_100, 9_999, 10_040].map(|t| t * MS));
        // now = 10.0 s exactly: covers [9.1, 10.0], 0.9 W.
        let sel = r.current(10_000 * MS);
        assert_eq!(sel.start_ns, 9_100 * MS);
        // now = 10.099 s: covers [9.1, 10.099], just under W.
        assert_eq!(r.current(10_099 * MS).start_ns, 9_100 * MS);
        // An event at now - 1.05 s is never in; one at now - 0.85 s always is.
        for now in (10_000..10_100).step_by(7).map(|t| t * MS) {
            let cur = times(&r.current(now));
            assert!(cur.iter().all(|&t| t + 1_000 * MS > now), "{now}");
        }
    }

    #[test]
    fn earlier_window_is_the_w_before() {
        let mut r = Ring::new(1_000 * MS, Times::default());
        for t in (8_000..=10_000).step_by(50) {
            assert!(put(&mut r, t * MS));
        }
        let sel = r.earlier(10_000 * MS);
        assert_eq!(sel.start_ns, 8_100 * MS);
        let t = times(&sel);
        assert_eq!((t[0], *t.last().unwrap()), (8_100 * MS, 9_050 * MS));
        assert_eq!(t.len(), 20);
        // Early in a run there is no earlier window.
        assert!(r.earlier(900 * MS).slots.is_empty());
    }

    #[test]
    fn out_of_order_events_land_by_time_and_stale_ones_are_refused() {
        let mut r = Ring::new(1_000 * MS, Times::default());
        assert!(put(&mut r, 5_000 * MS));
        assert!(put(&mut r, 4_990 * MS)); // 10 ms late, previous slot
        assert!(put(&mut r, 3_100 * MS)); // 1.9 s late: still within the ring
        assert_eq!(times(&r.earlier(5_000 * MS)), [3_100 * MS]);
        assert!(put(&mut r, 7_100 * MS)); // reuses 3.1 s's slot: 3.1 s is gone
        assert!(!put(&mut r, 3_050 * MS)); // its slot holds 5.0 s: refused
        assert_eq!(times(&r.current(5_000 * MS)), [4_990 * MS, 5_000 * MS]);
        assert_eq!(times(&r.earlier(5_000 * MS)), Vec::<u64>::new());
        assert_eq!(times(&r.current(7_100 * MS)), [7_100 * MS]);
    }

    #[test]
    fn extreme_times_do_not_panic() {
        let mut r = Ring::new(0, Times::default());
        assert!(put(&mut r, u64::MAX));
        assert_eq!(r.current(u64::MAX).slots.len(), 1);
        assert_eq!(r.earlier(0).slots.len(), 0);
        assert_eq!(r.all().count(), RING_SLOTS);
    }
}
