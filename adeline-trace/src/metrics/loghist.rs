//! A compact log-linear histogram for the sliding-window slots.
//!
//! Values are binned as in an HDR histogram: 0..64 exactly, then every
//! power-of-two octave `[2^k, 2^(k+1))` (k >= 6) in 64 equal bins of width
//! `2^(k-6)`. A quantile is reported as the middle of its bin, clamped to the
//! exact min and max, so it is within `1/128` (0.78%) of the exact sample at
//! that rank.
//!
//! Storage is sparse by octave: a 64-counter chunk (256 bytes) is added the
//! first time a value falls in its octave. [`LogHist::clear`] keeps (zeroed)
//! the chunks that held values, so a slot reused every period does not
//! allocate again, and frees the others: a slot holds the octaves of its
//! last period, not every octave it ever saw.
//! Memory: 64 bytes inline plus 256 bytes per octave seen in the last period, at most
//! 64 + [`LogHist::MAX_HEAP_BYTES`] (15.2 KiB, all 59 octaves of `u64`);
//! 1.3 KiB for durations within a 16x range (5 octaves).
use super::snapshot::Percentiles;

const SUB_BITS: u32 = 6;
const SUB: usize = 1 << SUB_BITS;
/// Chunk 0 holds 0..64 exactly; chunk c >= 1 holds the octave `2^(c+5)`.
const CHUNKS: u32 = 64 - SUB_BITS + 1;

/// Quantiles reported in [`Percentiles`], in field order.
pub const QUANTILES: [f64; 5] = [0.50, 0.90, 0.95, 0.99, 0.999];

/// Values in log-linear bins (see the module doc).
#[derive(Debug, Clone, Default)]
pub struct LogHist {
    /// Bit c set when chunk c is allocated.
    present: u64,
    /// Allocated chunks in increasing c (= increasing value) order. Each
    /// is an allocation of its own, all of one size: the chunks freed and
    /// allocated as slots are reused fit each other's places, where one
    /// growing array would leave holes of every size in the heap.
    #[allow(clippy::vec_box)] // the point: one allocation per chunk
    chunks: Vec<Box<[u32; SUB]>>,
    count: u64,
    sum: u64,
    min: u64,
    max: u64,
}

/// (chunk, index in chunk) of a value.
#[inline]
fn bin(v: u64) -> (u32, usize) {
    if v < SUB as u64 {
        return (0, v as usize);
    }
    let k = 63 - v.leading_zeros();
    (k - SUB_BITS + 1, ((v >> (k - SUB_BITS)) as usize) - SUB)
}

/// Middle of a bin (its value for exact bins).
fn mid(c: u32, i: usize) -> u64 {
    if c == 0 {
        return i as u64;
    }
    let shift = c - 1;
    let low = ((SUB + i) as u64) << shift;
    low + ((1u64 << shift) >> 1)
}

/// Middle of bin `b` numbered as in-kernel aggregation numbers them
/// (`adeline_trace_common::agg_bin`: chunk `b / 64`, index `b % 64`).
pub fn bin_mid(b: usize) -> u64 {
    mid((b / SUB) as u32, b % SUB)
}

impl LogHist {
    /// Upper bound of [`LogHist::heap_bytes`].
    pub const MAX_HEAP_BYTES: usize = CHUNKS as usize
        * (std::mem::size_of::<[u32; SUB]>() + std::mem::size_of::<Box<[u32; SUB]>>());

    /// Empty, holding no chunk.
    pub fn new() -> LogHist {
        LogHist::default()
    }

    #[inline]
    fn chunk_mut(&mut self, c: u32) -> &mut [u32; SUB] {
        let bit = 1u64 << c;
        let pos = (self.present & (bit - 1)).count_ones() as usize;
        if self.present & bit == 0 {
            // Exact growth: a new octave is rare, memory is not.
            self.chunks.reserve_exact(1);
            self.chunks.insert(pos, Box::new([0; SUB]));
            self.present |= bit;
        }
        &mut self.chunks[pos]
    }

    /// Adds one value.
    #[inline]
    pub fn record(&mut self, v: u64) {
        self.record_n(v, 1);
        self.sum = self.sum.saturating_add(v);
    }

    /// Adds `n` values `v` (a bin's middle) to the counts, min and max,
    /// not to the sum (see [`LogHist::add_sum`]).
    #[inline]
    pub fn record_n(&mut self, v: u64, n: u64) {
        if n == 0 {
            return;
        }
        let (c, i) = bin(v);
        let slot = &mut self.chunk_mut(c)[i];
        *slot = slot.saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
        if self.count == 0 {
            self.min = v;
            self.max = v;
        } else {
            self.min = self.min.min(v);
            self.max = self.max.max(v);
        }
        self.count += n;
    }

    /// Adds to the sum (of values added by [`LogHist::record_n`]).
    pub fn add_sum(&mut self, s: u64) {
        self.sum = self.sum.saturating_add(s);
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &LogHist) {
        if other.count == 0 {
            return;
        }
        let mut bits = other.present;
        for chunk in &other.chunks {
            let c = bits.trailing_zeros();
            bits &= bits - 1;
            if chunk.iter().all(|&n| n == 0) {
                continue;
            }
            let mine = self.chunk_mut(c);
            for (m, &n) in mine.iter_mut().zip(chunk.iter()) {
                *m = m.saturating_add(n);
            }
        }
        if self.count == 0 {
            self.min = other.min;
            self.max = other.max;
        } else {
            self.min = self.min.min(other.min);
            self.max = self.max.max(other.max);
        }
        self.count += other.count;
        self.sum = self.sum.saturating_add(other.sum);
    }

    /// Forgets every value. The chunks of octaves that held values are
    /// kept (zeroed) for reuse: the next period most likely sees the same
    /// octaves; the others are freed, so a rare outlier's octave does not
    /// stay allocated in every slot it ever landed in.
    pub fn clear(&mut self) {
        let (mut bits, mut kept) = (self.present, 0u64);
        self.chunks.retain_mut(|chunk| {
            let c = bits.trailing_zeros();
            bits &= bits - 1;
            let used = chunk.iter().any(|&n| n != 0);
            if used {
                chunk.fill(0);
                kept |= 1 << c;
            }
            used
        });
        self.present = kept;
        self.count = 0;
        self.sum = 0;
        self.min = 0;
        self.max = 0;
    }

    /// Number of values.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Sum of the values (saturating).
    pub fn sum(&self) -> u64 {
        self.sum
    }

    /// Bytes held on the heap.
    pub fn heap_bytes(&self) -> usize {
        self.chunks.capacity() * std::mem::size_of::<Box<[u32; SUB]>>()
            + self.chunks.len() * std::mem::size_of::<[u32; SUB]>()
    }

    /// Value at each quantile of `qs` (ascending, in 0..=1); 0 when empty.
    /// Rank of q is `max(1, ceil(q * count))`, as in HDR histograms.
    pub fn quantiles<const N: usize>(&self, qs: [f64; N]) -> [u64; N] {
        let mut out = [0; N];
        if self.count == 0 {
            return out;
        }
        let mut next = 0;
        let mut seen = 0u64;
        let mut bits = self.present;
        'walk: for chunk in &self.chunks {
            let c = bits.trailing_zeros();
            bits &= bits - 1;
            for (i, &n) in chunk.iter().enumerate() {
                if n == 0 {
                    continue;
                }
                seen += u64::from(n);
                while seen >= rank(qs[next], self.count) {
                    out[next] = mid(c, i).clamp(self.min, self.max);
                    next += 1;
                    if next == N {
                        break 'walk;
                    }
                }
            }
        }
        // Saturated counters can leave ranks unreached: report the max.
        out[next..].fill(self.max);
        out
    }

    /// Count, exact min/mean/max, and the [`QUANTILES`].
    pub fn percentiles(&self) -> Percentiles {
        if self.count == 0 {
            return Percentiles::default();
        }
        let [p50_ns, p90_ns, p95_ns, p99_ns, p999_ns] = self.quantiles(QUANTILES);
        Percentiles {
            count: self.count,
            min_ns: self.min,
            mean_ns: self.sum / self.count,
            p50_ns,
            p90_ns,
            p95_ns,
            p99_ns,
            p999_ns,
            max_ns: self.max,
        }
    }
}

/// 1-based rank of quantile `q` among `count` values.
fn rank(q: f64, count: u64) -> u64 {
    ((q.clamp(0.0, 1.0) * count as f64).ceil() as u64).clamp(1, count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact(sorted: &[u64], q: f64) -> u64 {
        sorted[rank(q, sorted.len() as u64) as usize - 1]
    }

    #[test]
    fn bins_cover_u64_in_order() {
        assert_eq!(bin(0), (0, 0));
        assert_eq!(bin(63), (0, 63));
        assert_eq!(bin(64), (1, 0));
        assert_eq!(bin(127), (1, 63));
        assert_eq!(bin(128), (2, 0));
        assert_eq!(bin(u64::MAX), (CHUNKS - 1, SUB - 1));
        let mut last = (0, 0);
        for v in (0..20).map(|s| 1u64 << (3 * s)).chain([u64::MAX]) {
            assert!(bin(v) >= last);
            last = bin(v);
        }
        // Every bin's middle falls back in that bin.
        for v in [5, 64, 100, 1_000, 123_456_789, u64::MAX / 3] {
            let (c, i) = bin(v);
            assert_eq!(bin(mid(c, i)), (c, i), "{v}");
        }
    }

    #[test]
    fn quantiles_within_one_percent_of_exact() {
        // A skewed spread over 5 decades.
        let mut values: Vec<u64> = (1..=20_000u64).map(|i| i * i / 7 + 50).collect();
        let mut h = LogHist::new();
        for &v in values.iter().rev() {
            h.record(v);
        }
        values.sort_unstable();
        let got = h.quantiles([0.0, 0.25, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0]);
        for (q, g) in [0.0, 0.25, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0]
            .iter()
            .zip(got)
        {
            let want = exact(&values, *q);
            let err = (g as f64 - want as f64).abs() / want as f64;
            assert!(err <= 0.01, "q{q}: {g} vs {want}");
        }
        let p = h.percentiles();
        assert_eq!(p.count, 20_000);
        assert_eq!(p.min_ns, values[0]);
        assert_eq!(p.max_ns, *values.last().unwrap());
        assert_eq!(p.mean_ns, values.iter().sum::<u64>() / 20_000);
    }

    #[test]
    fn small_values_are_exact() {
        let mut h = LogHist::new();
        for v in [0, 1, 2, 3, 63] {
            h.record(v);
        }
        assert_eq!(h.quantiles([0.2, 0.4, 0.6, 0.8, 1.0]), [0, 1, 2, 3, 63]);
    }

    #[test]
    fn merge_equals_recording_both() {
        let (mut a, mut b, mut both) = (LogHist::new(), LogHist::new(), LogHist::new());
        for v in 0..5_000u64 {
            let v = v * 977 % 1_000_003;
            if v % 3 == 0 {
                a.record(v);
            } else {
                b.record(v);
            }
            both.record(v);
        }
        a.merge(&b);
        assert_eq!(a.percentiles(), both.percentiles());
        assert_eq!(a.sum(), both.sum());
    }

    #[test]
    fn clear_keeps_chunks_and_forgets_values() {
        let mut h = LogHist::new();
        h.record(1_000);
        h.record(1_000_000);
        let bytes = h.heap_bytes();
        h.clear();
        assert_eq!(h.percentiles(), Percentiles::default());
        assert_eq!(h.heap_bytes(), bytes);
        h.record(1_010); // same octave as 1 000
        assert_eq!(h.heap_bytes(), bytes);
        assert_eq!(h.percentiles().p50_ns, 1_010);
    }

    #[test]
    fn clear_frees_the_chunks_a_period_left_empty() {
        let mut h = LogHist::new();
        h.record(1_000);
        let (chunk, pointer) = (256, 8);
        assert_eq!(h.heap_bytes(), chunk + pointer);
        h.record(50_000_000); // an outlier's octave
        assert_eq!(h.heap_bytes(), 2 * (chunk + pointer));
        h.clear();
        h.record(1_000);
        h.clear(); // the outlier's octave saw nothing this period
        assert_eq!(h.heap_bytes(), chunk + 2 * pointer);
        h.clear(); // nor did 1 000's
        assert_eq!(h.heap_bytes(), 2 * pointer);
        h.record(1_000);
        assert_eq!(h.percentiles().p50_ns, 1_000);
    }

    #[test]
    fn extremes_do_not_panic() {
        let mut h = LogHist::new();
        for v in [0, u64::MAX, u64::MAX, 1] {
            h.record(v);
        }
        let p = h.percentiles();
        assert_eq!((p.min_ns, p.max_ns, p.p50_ns), (0, u64::MAX, 1));
        assert!(p.p999_ns >= u64::MAX - u64::MAX / 128);
        assert_eq!(h.sum(), u64::MAX);
        assert!(h.heap_bytes() <= LogHist::MAX_HEAP_BYTES);
    }
}
