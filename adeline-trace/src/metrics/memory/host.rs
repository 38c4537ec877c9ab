//! CPU use of the traced processes and of the host (each core and in
//! total), the host's memory, and its GPUs (memory/gpu.rs), read through
//! sysinfo about once a second from the same path as the RSS sampler.
//!
//! Each sample refreshes only what is reported: `/proc/stat` (cores),
//! `/proc/meminfo` (RAM), and `/proc/PID/stat` of the given pids only (no
//! walk of `/proc`, no per-thread reads), so its cost does not grow with
//! the number of processes on the host. CPU use is a difference between two
//! samples: a pid's first sample, and the host's, report none. A process's
//! is its CPU time (utime + stime of all threads) over the wall time between
//! its two readings, so it is exact at any sampling interval and a process
//! started just before its first sample reads right at its second.
use std::{
    collections::{BTreeMap, BTreeSet},
    time::Instant,
};

use sysinfo::{MemoryRefreshKind, Pid, ProcessRefreshKind, ProcessesToUpdate, System};

use crate::metrics::snapshot::HostStats;

use super::gpu::Gpus;

/// Processes no longer sampled that sysinfo may keep before its process
/// table is rebuilt (it only drops dead pids among those refreshed).
const STALE_PROCESSES: usize = 256;

/// A process's CPU time read at `at`.
#[derive(Debug, Clone, Copy)]
struct CpuTime {
    /// Seconds since boot the process started at (tells a reused pid).
    start_time: u64,
    /// User + system time of all its threads (10 ms ticks, in ms).
    cpu_ms: u64,
    at: Instant,
}

impl CpuTime {
    /// Percent of one core used since `before` (None for another process
    /// under the same pid, or no time elapsed).
    fn percent_since(&self, before: &CpuTime) -> Option<f64> {
        let wall = self.at.checked_duration_since(before.at)?.as_secs_f64();
        if self.start_time != before.start_time || wall <= 0.0 {
            return None;
        }
        let cpu = self.cpu_ms.saturating_sub(before.cpu_ms) as f64 / 1e3;
        Some(100.0 * cpu / wall)
    }
}

/// Process and host CPU use between the last two samples.
#[derive(Debug, Default)]
pub struct HostSampler {
    /// Cores and memory (None when sysinfo cannot read this system).
    host: Option<System>,
    /// The sampled pids only.
    processes: Option<System>,
    /// Opened at the first sample (NVML initialised once).
    gpus: Option<Gpus>,
    /// Pids read at the previous sample: the next one gives their CPU use.
    previous: BTreeMap<u32, CpuTime>,
    /// Percent of one core per pid, over the last interval.
    cpu: BTreeMap<u32, f64>,
    /// The host over the last interval (None before the second sample).
    stats: Option<HostStats>,
}

impl HostSampler {
    pub fn new() -> HostSampler {
        HostSampler::default()
    }

    /// Reads the host and the CPU time of `pids` (call about once a second;
    /// sysinfo ignores CPU refreshes less than 200 ms apart).
    pub fn sample(&mut self, pids: impl IntoIterator<Item = u32>) {
        let pids: BTreeSet<u32> = pids.into_iter().collect();
        self.sample_host();
        self.sample_processes(&pids);
    }

    fn sample_host(&mut self) {
        let first = self.host.is_none();
        if first {
            self.host = System::new().ok();
        }
        let Some(system) = self.host.as_mut() else {
            return;
        };
        system.refresh_cpu_usage();
        system.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
        if first {
            return; // usage needs a second reading of /proc/stat
        }
        let gpus = self.gpus.get_or_insert_with(Gpus::open);
        self.stats = Some(HostStats {
            cpu_percent: f64::from(system.global_cpu_usage()),
            cores: system.cpus().iter().map(|c| f64::from(c.usage())).collect(),
            memory_total_bytes: system.total_memory(),
            memory_used_bytes: system.used_memory(),
            gpus: gpus.report(),
        });
    }

    fn sample_processes(&mut self, pids: &BTreeSet<u32>) {
        let stale = self
            .processes
            .as_ref()
            .is_some_and(|s| s.processes().len() > pids.len() + STALE_PROCESSES);
        if stale || self.processes.is_none() {
            self.processes = System::new().ok();
        }
        let Some(system) = self.processes.as_mut() else {
            return;
        };
        let wanted: Vec<Pid> = pids.iter().map(|&p| Pid::from_u32(p)).collect();
        system.refresh_processes_specifics(
            ProcessesToUpdate::Some(&wanted),
            true,
            ProcessRefreshKind::nothing().with_cpu().without_tasks(),
        );
        let now = Instant::now();
        self.cpu.clear();
        let mut read = BTreeMap::new();
        for &pid in pids {
            let Some(process) = system.process(Pid::from_u32(pid)) else {
                continue;
            };
            let this = CpuTime {
                start_time: process.start_time(),
                cpu_ms: process.accumulated_cpu_time(),
                at: now,
            };
            if let Some(before) = self.previous.get(&pid) {
                if let Some(percent) = this.percent_since(before) {
                    self.cpu.insert(pid, percent);
                }
            }
            read.insert(pid, this);
        }
        self.previous = read;
    }

    /// `pid`'s CPU use over the last interval, percent of one core.
    pub fn cpu_percent(&self, pid: u32) -> Option<f64> {
        self.cpu.get(&pid).copied()
    }

    /// The host over the last interval (None before two samples).
    pub fn report(&self) -> Option<HostStats> {
        self.stats.clone()
    }
}

#[cfg(test)]
mod tests {
    use std::{
        process::{Child, Command},
        time::{Duration, Instant},
    };

    use super::*;

    /// Kills the child when dropped (a failed assert leaves no busy loop).
    struct Reaped(Child);
    impl Drop for Reaped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn sh(script: &str) -> Reaped {
        Reaped(
            Command::new("sh")
                .args(["-c", script])
                .spawn()
                .expect("sh runs"),
        )
    }

    /// utime + stime of `pid` in clock ticks (/proc/PID/stat fields 14, 15).
    fn cpu_ticks(pid: u32) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let rest = &stat[stat.rfind(')').unwrap() + 1..];
        let f: Vec<u64> = rest
            .split_whitespace()
            .skip(11)
            .take(2)
            .map(|v| v.parse().unwrap())
            .collect();
        f[0] + f[1]
    }

    /// Nanoseconds `pid` ran on a CPU and waited runnable for one
    /// (/proc/PID/schedstat).
    fn sched_ns(pid: u32) -> (u64, u64) {
        let text = std::fs::read_to_string(format!("/proc/{pid}/schedstat")).unwrap();
        let f: Vec<u64> = text
            .split_whitespace()
            .map(|v| v.parse().unwrap())
            .collect();
        (f[0], f[1])
    }

    fn ticks_per_s() -> f64 {
        // SAFETY: sysconf has no preconditions.
        unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
    }

    /// CPUs listed in /proc/stat (`cpuN` lines).
    fn proc_stat_cpus() -> usize {
        std::fs::read_to_string("/proc/stat")
            .unwrap()
            .lines()
            .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
            .count()
    }

    /// A child spinning in a shell loop (one thread) reads about one core, a
    /// sleeping one about nothing; the host has one entry per CPU. The busy
    /// value is checked against the child's own CPU ticks over the same
    /// second (exact whatever the load), and against 70..=130 % of a core
    /// unless the child waited for a CPU more than 20% of that second (a
    /// host kept busy by others cannot give it a core; schedstat tells).
    #[test]
    fn host_cpu_of_a_busy_and_a_sleeping_process() {
        let busy = sh("while :; do :; done");
        let idle = sh("sleep 30");
        let (busy_pid, idle_pid) = (busy.0.id(), idle.0.id());
        let mut h = HostSampler::new();
        h.sample([busy_pid, idle_pid]);
        assert_eq!(
            h.cpu_percent(busy_pid),
            None,
            "no usage at the first sample"
        );
        assert_eq!(h.report(), None, "no host usage at the first sample");
        let (t0, ticks0, (_, wait0)) = (Instant::now(), cpu_ticks(busy_pid), sched_ns(busy_pid));
        std::thread::sleep(Duration::from_millis(1000));
        h.sample([busy_pid, idle_pid]);
        let elapsed = t0.elapsed().as_secs_f64();
        let (ticks1, (_, wait1)) = (cpu_ticks(busy_pid), sched_ns(busy_pid));
        let measured = 100.0 * (ticks1 - ticks0) as f64 / ticks_per_s() / elapsed;
        let waited = (wait1 - wait0) as f64 / 1e9 / elapsed;
        let cpu = h.cpu_percent(busy_pid).expect("busy pid sampled twice");
        eprintln!(
            "busy loop: {cpu:.1}% (/proc/PID/stat {measured:.1}%, waited for a CPU {:.0}% of the time)",
            100.0 * waited
        );
        // Tick granularity (10 ms of 1 s) and the few ms between the reads.
        assert!((cpu - measured).abs() <= 10.0, "{cpu} vs {measured}");
        if waited <= 0.2 {
            // One thread busy: one core, give or take a noisy 2-core VM.
            assert!((70.0..=130.0).contains(&cpu), "busy loop at {cpu}%");
        } else {
            eprintln!("the host is busy: 70..=130% not checked");
        }
        let idle_cpu = h.cpu_percent(idle_pid).expect("sleeping pid sampled twice");
        assert!(idle_cpu <= 2.0, "sleeping process at {idle_cpu}%");

        let host = h.report().expect("host usage after two samples");
        assert_eq!(host.cores.len(), proc_stat_cpus(), "{host:?}");
        assert!(
            host.cores.iter().all(|c| (0.0..=100.0).contains(c)),
            "{host:?}"
        );
        // The busy loop alone keeps (what it got of) one core of N busy.
        let floor = cpu / host.cores.len() as f64 * 0.6;
        assert!(
            (floor..=100.0).contains(&host.cpu_percent),
            "host at {}% with a busy loop",
            host.cpu_percent
        );
        assert!(host.memory_total_bytes > 0, "{host:?}");
        assert!(
            host.memory_used_bytes <= host.memory_total_bytes,
            "{host:?}"
        );

        // A pid that is gone reads nothing (and is not an error).
        drop(busy);
        std::thread::sleep(Duration::from_millis(250));
        h.sample([busy_pid, idle_pid]);
        assert_eq!(h.cpu_percent(busy_pid), None);
        assert!(h.cpu_percent(idle_pid).is_some());
    }

    /// One sample of 64 pids (the most the tracer samples) stays cheap:
    /// only their /proc/PID/stat is read, whatever else runs on the host.
    #[test]
    fn host_sample_of_many_pids_is_cheap() {
        let children: Vec<Reaped> = (0..64).map(|_| sh("sleep 30")).collect();
        let pids: Vec<u32> = children.iter().map(|c| c.0.id()).collect();
        let mut h = HostSampler::new();
        h.sample(pids.iter().copied());
        std::thread::sleep(Duration::from_millis(250));
        let started = Instant::now();
        h.sample(pids.iter().copied());
        let took = started.elapsed();
        eprintln!("one sample of 64 pids: {took:?}");
        assert!(pids.iter().all(|&p| h.cpu_percent(p).is_some()));
        assert!(took < Duration::from_millis(50), "{took:?}");
    }
}
