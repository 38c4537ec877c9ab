//! Per-pid rings of RSS samples read from procfs.
use std::collections::BTreeMap;

use crate::metrics::snapshot::{ProcessMemory, RssSource, Window};

use super::series::SeriesSet;

/// One reading of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcSample {
    pub rss_bytes: u64,
    pub threads: u32,
}

/// Reads RSS (`/proc/PID/statm` resident pages x page size) and threads
/// (`Threads:` of `/proc/PID/status`); None when the process is gone.
pub fn read_proc(pid: u32) -> Option<ProcSample> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    Some(ProcSample {
        rss_bytes: pages * page_size(),
        threads,
    })
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 {
        size as u64
    } else {
        4096
    }
}

/// RSS history of the traced processes.
#[derive(Debug, Default)]
pub struct MemorySampler {
    rss: SeriesSet<u32>,
    /// Threads and the RSS's source at the latest sample.
    threads: BTreeMap<u32, (u32, RssSource)>,
}

impl MemorySampler {
    pub fn new() -> MemorySampler {
        MemorySampler::default()
    }

    /// Reads every pid in `pids` from procfs at `now_ns` (monotonic); the
    /// RSS is `kernel_rss(pid)` (kmem:rss_stat) when it has a value.
    pub fn sample(
        &mut self,
        now_ns: u64,
        pids: impl IntoIterator<Item = u32>,
        kernel_rss: &dyn Fn(u32) -> Option<u64>,
    ) {
        for pid in pids {
            if let Some(mut s) = read_proc(pid) {
                let mut source = RssSource::Procfs;
                if let Some(rss) = kernel_rss(pid) {
                    s.rss_bytes = rss;
                    source = RssSource::RssStat;
                }
                self.record(pid, now_ns, s, source);
            }
        }
        self.forget(now_ns);
    }

    /// Adds one sample (what [`Self::sample`] does per pid).
    pub fn record(&mut self, pid: u32, now_ns: u64, sample: ProcSample, source: RssSource) {
        self.rss.record(pid, now_ns, sample.rss_bytes as i64);
        self.threads.insert(pid, (sample.threads, source));
    }

    /// Drops pids not seen for a while (exited, or no longer traced).
    pub fn forget(&mut self, now_ns: u64) {
        self.rss.forget(now_ns);
        let rss = &self.rss;
        self.threads.retain(|pid, _| rss.get(pid).is_some());
    }

    /// Per pid (ascending): latest RSS and the growth over `window` (at
    /// least the last 10 s, see [`super::growth_window_ns`]) ending at `now_ns`.
    pub fn report(&self, window: Window, now_ns: u64) -> Vec<ProcessMemory> {
        self.rss
            .iter()
            .filter_map(|(&pid, series)| {
                let rss_bytes = series.latest()? as u64;
                let (growth_bytes_per_s, samples) = series.growth(window, now_ns);
                Some(ProcessMemory {
                    pid,
                    rss_bytes,
                    growth_bytes_per_s,
                    samples,
                    threads: self.threads.get(&pid).map_or(0, |t| t.0),
                    cpu_percent: None,
                    rss_source: self.threads.get(&pid).map_or(RssSource::Procfs, |t| t.1),
                })
            })
            .collect()
    }

    /// Samples held, all pids (for tests of the bound).
    pub fn samples_held(&self) -> usize {
        self.rss.samples_held()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::memory::MAX_SAMPLES;

    const S: u64 = 1_000_000_000;

    fn s(rss: u64) -> ProcSample {
        ProcSample {
            rss_bytes: rss,
            threads: 3,
        }
    }

    #[test]
    fn growth_over_the_window_is_exact() {
        let mut m = MemorySampler::new();
        // 60 s flat at 50 MB, then 1 MB/s for 20 s.
        for i in 0..=80u64 {
            let rss = 50_000_000 + i.saturating_sub(60) * 1_000_000;
            m.record(7, i * S, s(rss), RssSource::Procfs);
        }
        let now = 80 * S;
        let r10 = m.report(Window::S10, now);
        assert_eq!(r10.len(), 1);
        assert_eq!(r10[0].pid, 7);
        assert_eq!(r10[0].rss_bytes, 70_000_000);
        assert_eq!(r10[0].threads, 3);
        assert_eq!(r10[0].samples, 11);
        assert!((r10[0].growth_bytes_per_s.unwrap() - 1e6).abs() < 1e-3);
        // 1 s uses the same 10 s as the 10 s window.
        assert_eq!(m.report(Window::S1, now), r10);
        // 60 s mixes flat and growth: positive, below 1 MB/s.
        let g60 = m.report(Window::S60, now)[0].growth_bytes_per_s.unwrap();
        assert!(g60 > 0.0 && g60 < 1e6, "{g60}");
    }

    #[test]
    fn memory_is_bounded_and_vanished_pids_are_dropped() {
        let mut m = MemorySampler::new();
        for i in 0..10_000u64 {
            m.record(1, i * S, s(i), RssSource::Procfs);
            if i < 5 {
                m.record(2, i * S, s(i), RssSource::RssStat);
            }
            m.forget(i * S);
        }
        assert_eq!(m.samples_held(), MAX_SAMPLES);
        let r = m.report(Window::All, 9_999 * S);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].samples as usize, MAX_SAMPLES);
        assert!((r[0].growth_bytes_per_s.unwrap() - 1.0).abs() < 1e-9);
    }

    #[test]
    fn one_sample_has_no_growth_and_own_process_reads() {
        let mut m = MemorySampler::new();
        m.sample(S, [std::process::id()], &|_| None);
        let r = m.report(Window::S10, S);
        assert_eq!(r.len(), 1);
        assert!(r[0].rss_bytes > 0);
        assert!(r[0].threads >= 1);
        assert_eq!(r[0].growth_bytes_per_s, None);
        assert_eq!(read_proc(u32::MAX), None);
    }
}
