//! Bounded rings of (time, bytes) samples, one per key, with the growth
//! rate of each over a window (least squares, see growth.rs).
use std::collections::{BTreeMap, VecDeque};

use crate::metrics::snapshot::Window;

use super::growth::{growth_window_ns, slope_per_s};

/// Samples kept per key (two minutes at one a second): memory stays bounded
/// however long the run.
pub const MAX_SAMPLES: usize = 120;
/// A key not sampled for this long is dropped.
const FORGET_AFTER_NS: u64 = 30_000_000_000;

/// One key's samples, oldest first.
#[derive(Debug, Default, Clone)]
pub struct Series {
    samples: VecDeque<(u64, i64)>,
}

impl Series {
    pub fn push(&mut self, now_ns: u64, value: i64) {
        if self.samples.len() == MAX_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back((now_ns, value));
    }

    pub fn latest(&self) -> Option<i64> {
        self.samples.back().map(|&(_, v)| v)
    }

    fn last_ns(&self) -> u64 {
        self.samples.back().map_or(0, |&(t, _)| t)
    }

    /// Slope (bytes/s) over `window` ending at `now_ns` (at least the last
    /// 10 s, see [`growth_window_ns`]) and the samples it was fitted over.
    pub fn growth(&self, window: Window, now_ns: u64) -> (Option<f64>, u32) {
        let since = growth_window_ns(window).map_or(0, |w| now_ns.saturating_sub(w));
        let used = self.samples.iter().copied().filter(|&(t, _)| t >= since);
        (slope_per_s(used.clone()), used.count() as u32)
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}

/// A [`Series`] per key; keys not sampled for 30 s are dropped.
#[derive(Debug, Clone)]
pub struct SeriesSet<K: Ord> {
    map: BTreeMap<K, Series>,
}

impl<K: Ord> Default for SeriesSet<K> {
    fn default() -> Self {
        SeriesSet {
            map: BTreeMap::new(),
        }
    }
}

impl<K: Ord + Clone> SeriesSet<K> {
    pub fn record(&mut self, key: K, now_ns: u64, value: i64) {
        self.map.entry(key).or_default().push(now_ns, value);
    }

    pub fn forget(&mut self, now_ns: u64) {
        self.map
            .retain(|_, s| now_ns.saturating_sub(s.last_ns()) < FORGET_AFTER_NS);
    }

    pub fn get<Q: Ord + ?Sized>(&self, key: &Q) -> Option<&Series>
    where
        K: std::borrow::Borrow<Q>,
    {
        self.map.get(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &Series)> {
        self.map.iter()
    }

    /// Samples held over all keys (for tests of the bound).
    pub fn samples_held(&self) -> usize {
        self.map.values().map(Series::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn bounded_and_forgetting() {
        let mut set: SeriesSet<u32> = SeriesSet::default();
        for i in 0..1_000u64 {
            set.record(1, i * S, i as i64 * 10);
            if i < 3 {
                set.record(2, i * S, 0);
            }
            set.forget(i * S);
        }
        assert_eq!(set.samples_held(), MAX_SAMPLES);
        assert!(set.get(&2).is_none());
        let s = set.get(&1).unwrap();
        assert_eq!(s.latest(), Some(9_990));
        let (g, n) = s.growth(Window::S10, 999 * S);
        assert_eq!(n, 11);
        assert!((g.unwrap() - 10.0).abs() < 1e-9);
    }
}
