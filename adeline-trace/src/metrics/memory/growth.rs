//! RSS growth rate: the least-squares slope of (time, rss) samples.
use crate::metrics::snapshot::Window;

/// The shortest span the growth rate is fitted over. With one sample a
/// second, a 1 s window would hold one or two points and report allocator
/// noise; so the 1 s window uses the last 10 s too (docs/api.md).
pub const MIN_GROWTH_WINDOW_NS: u64 = 10_000_000_000;

/// The span of samples the growth of `window` is fitted over: the window,
/// but at least [`MIN_GROWTH_WINDOW_NS`]; None = every sample kept.
pub fn growth_window_ns(window: Window) -> Option<u64> {
    window.nanos().map(|n| n.max(MIN_GROWTH_WINDOW_NS))
}

/// Least-squares slope in bytes per second of `(monotonic ns, bytes)`
/// samples; None with fewer than two samples or no time spread.
pub fn slope_per_s(samples: impl Iterator<Item = (u64, i64)> + Clone) -> Option<f64> {
    let (mut n, mut t0) = (0usize, None);
    let (mut sum_t, mut sum_y) = (0.0f64, 0.0f64);
    for (t, y) in samples.clone() {
        let t0 = *t0.get_or_insert(t);
        n += 1;
        sum_t += (t.saturating_sub(t0)) as f64 / 1e9;
        sum_y += y as f64;
    }
    let t0 = t0?;
    if n < 2 {
        return None;
    }
    let (mean_t, mean_y) = (sum_t / n as f64, sum_y / n as f64);
    let (mut sxy, mut sxx) = (0.0f64, 0.0f64);
    for (t, y) in samples {
        let dt = (t.saturating_sub(t0)) as f64 / 1e9 - mean_t;
        sxy += dt * (y as f64 - mean_y);
        sxx += dt * dt;
    }
    (sxx > 0.0).then(|| sxy / sxx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_slope_of_a_line() {
        // 3 MiB/s, sampled every 0.5 s from 100 MiB.
        let pts: Vec<(u64, i64)> = (0..20i64)
            .map(|i| {
                (
                    1_000 + i as u64 * 500_000_000,
                    (100 << 20) + i * (3 << 20) / 2,
                )
            })
            .collect();
        let s = slope_per_s(pts.iter().copied()).unwrap();
        assert!((s - (3u64 << 20) as f64).abs() < 1e-3, "{s}");
    }

    #[test]
    fn flat_and_degenerate() {
        let flat = [(0, 5), (1_000_000_000, 5), (2_000_000_000, 5)];
        assert_eq!(slope_per_s(flat.iter().copied()), Some(0.0));
        assert_eq!(slope_per_s([(0u64, 1i64)].iter().copied()), None);
        assert_eq!(slope_per_s([(7u64, 1i64), (7, 9)].iter().copied()), None);
        let shrinking = [(0, 10_000), (2_000_000_000, 6_000)];
        assert_eq!(slope_per_s(shrinking.iter().copied()), Some(-2_000.0));
    }

    #[test]
    fn windows_are_at_least_ten_seconds() {
        assert_eq!(growth_window_ns(Window::S1), Some(MIN_GROWTH_WINDOW_NS));
        assert_eq!(growth_window_ns(Window::S10), Some(MIN_GROWTH_WINDOW_NS));
        assert_eq!(growth_window_ns(Window::S60), Some(60_000_000_000));
        assert_eq!(growth_window_ns(Window::All), None);
    }
}
