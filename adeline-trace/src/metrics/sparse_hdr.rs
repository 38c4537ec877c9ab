//! The bins of an HDR histogram with 3 significant digits, stored sparsely:
//! values below 2048 one bin per nanosecond, then every octave
//! `[2^k, 2^(k+1))` (k >= 11) in 1024 bins of width `2^(k-10)`, so a bin's
//! width is at most 1/1024 of its values (0.1%).
//!
//! An HDR histogram holds a counter for every bin up to its largest value:
//! one 10 ms outlier makes a stage's histogram 120 KiB however narrow its
//! other durations. Here counters come in blocks of 64 bins (512 bytes),
//! allocated the first time a value falls in the block: a stage costs the
//! blocks its durations cover (a dense 2x range: 16 blocks, 8 KiB) plus one
//! per outlier's block, and an index of 2 bytes per block up to the
//! largest (at most 1.8 KiB).

/// Bins below this are 1 ns wide.
const EXACT: u64 = 2048;
/// Bins per octave above [`EXACT`].
const PER_OCTAVE: u64 = 1024;
/// Bins per block.
const BLOCK: usize = 64;
/// Bins over `u64`: 2048 exact, then 1024 for each octave from 2^11 to 2^63.
const BINS: u64 = EXACT + (64 - 11) * PER_OCTAVE;

/// Bin of `v`.
#[inline]
fn bin(v: u64) -> u64 {
    if v < EXACT {
        return v;
    }
    let k = u64::from(63 - v.leading_zeros());
    EXACT + (k - 11) * PER_OCTAVE + ((v >> (k - 10)) - PER_OCTAVE)
}

/// Highest value of bin `b` (HDR's `highest_equivalent`).
fn highest(b: u64) -> u64 {
    if b < EXACT {
        return b;
    }
    let (octave, i) = ((b - EXACT) / PER_OCTAVE, (b - EXACT) % PER_OCTAVE);
    let shift = octave + 1;
    let low = (PER_OCTAVE + i) << shift;
    low + ((1u64 << shift) - 1)
}

/// Counters of the bins that were ever used, in blocks.
#[derive(Debug, Clone, Default)]
pub struct SparseHdr {
    /// Per block up to the highest used: 1 + its position in `blocks`,
    /// 0 when absent.
    index: Vec<u16>,
    /// In the order they were first used; each an allocation of its own,
    /// all of one size (one growing array would leave holes in the heap).
    #[allow(clippy::vec_box)] // the point: one allocation per block
    blocks: Vec<Box<[u64; BLOCK]>>,
}

impl SparseHdr {
    /// Adds `n` values `v`.
    #[inline]
    pub fn record_n(&mut self, v: u64, n: u64) {
        let b = bin(v);
        let (block, i) = ((b / BLOCK as u64) as usize, (b % BLOCK as u64) as usize);
        if block >= self.index.len() {
            self.index.reserve_exact(block + 1 - self.index.len());
            self.index.resize(block + 1, 0);
        }
        let pos = match self.index[block] {
            0 => {
                // Exact growth: a new block is rare, memory is not.
                self.blocks.reserve_exact(1);
                self.blocks.push(Box::new([0; BLOCK]));
                self.index[block] = self.blocks.len() as u16;
                self.blocks.len() - 1
            }
            p => usize::from(p) - 1,
        };
        let c = &mut self.blocks[pos][i];
        *c = c.saturating_add(n);
    }

    /// (highest value of the bin, count) of every non-empty bin, increasing.
    pub fn recorded(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.index
            .iter()
            .enumerate()
            .filter(|(_, &p)| p != 0)
            .flat_map(move |(block, &p)| {
                let first = (block * BLOCK) as u64;
                self.blocks[usize::from(p) - 1]
                    .iter()
                    .enumerate()
                    .filter(|(_, &n)| n != 0)
                    .map(move |(i, &n)| (highest(first + i as u64), n))
            })
    }

    /// The highest value of the bin holding the `rank`-th value (1-based,
    /// increasing); None past the last.
    pub fn at_rank(&self, rank: u64) -> Option<u64> {
        let mut seen = 0u64;
        self.recorded().find_map(|(v, n)| {
            seen = seen.saturating_add(n);
            (seen >= rank).then_some(v)
        })
    }

    /// Forgets every value and frees the blocks.
    pub fn clear(&mut self) {
        *self = SparseHdr::default();
    }

    /// Bytes held on the heap.
    pub fn heap_bytes(&self) -> usize {
        self.index.capacity() * std::mem::size_of::<u16>()
            + self.blocks.capacity() * std::mem::size_of::<Box<[u64; BLOCK]>>()
            + self.blocks.len() * std::mem::size_of::<[u64; BLOCK]>()
    }

    /// Upper bound of [`SparseHdr::heap_bytes`]: every block of `u64`.
    pub const MAX_HEAP_BYTES: usize =
        (BINS as usize).div_ceil(BLOCK) * (2 + 8 + std::mem::size_of::<[u64; BLOCK]>());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_are_hdr_3_significant_digits() {
        assert_eq!(
            (bin(0), bin(2047), bin(2048), bin(2049)),
            (0, 2047, 2048, 2048)
        );
        assert_eq!((bin(4095), bin(4096)), (3071, 3072));
        assert_eq!(bin(u64::MAX), BINS - 1);
        // Highest values as hdrhistogram's highest_equivalent gives them.
        assert_eq!((highest(5), highest(2048), highest(3071)), (5, 2049, 4095));
        assert_eq!(highest(bin(1_000_000)), 1_000_447);
        assert_eq!(highest(BINS - 1), u64::MAX);
        for v in [1u64, 100, 2047, 2048, 5_000, 999_999, 1 << 40, u64::MAX / 3] {
            let h = highest(bin(v));
            assert!(h >= v && bin(h) == bin(v), "{v}");
            // Width at most 1/1024 of the value.
            assert!((h - v) as f64 <= v as f64 / 1024.0, "{v}");
        }
    }

    #[test]
    fn an_outlier_costs_one_block() {
        let mut h = SparseHdr::default();
        for v in 1_000..3_000 {
            h.record_n(v, 1);
        }
        let dense = h.heap_bytes();
        h.record_n(10_000_000, 1);
        let blocks = std::mem::size_of::<[u64; BLOCK]>();
        // One block, and the index grown to it (2 bytes a block).
        assert!(
            h.heap_bytes() <= dense + blocks + 8 + 2 * 700,
            "{}",
            h.heap_bytes()
        );
        assert_eq!(h.recorded().map(|(_, n)| n).sum::<u64>(), 2_001);
        assert_eq!(h.at_rank(2_001), Some(highest(bin(10_000_000))));
        assert_eq!(h.at_rank(1), Some(1_000));
        assert_eq!(h.at_rank(2_002), None);
        h.record_n(u64::MAX, 2);
        assert!(h.heap_bytes() <= SparseHdr::MAX_HEAP_BYTES);
        h.clear();
        assert_eq!((h.heap_bytes(), h.at_rank(1)), (0, None));
    }

    #[test]
    fn recorded_is_in_value_order() {
        let mut h = SparseHdr::default();
        for v in [9_000_000, 5, 70_000, 5, 2_048] {
            h.record_n(v, 1);
        }
        let got: Vec<(u64, u64)> = h.recorded().collect();
        assert_eq!(
            got,
            [
                (5, 2),
                (2_049, 1),
                (70_015, 1),
                (highest(bin(9_000_000)), 1)
            ]
        );
    }
}
