//! Probe kind `profile` (`run --profile HZ`): a cpu-clock `perf_event`
//! program on every online CPU (on-CPU samples) and the `sched_switch` raw
//! tracepoint (off-CPU intervals), both filtered in the kernel to the traced
//! processes, and the reader of their counters. CPython processes get
//! their Python frames walked once [`ProfileMaps::python_process`] has
//! found their interpreter (`PROFILE_PY`). Kernel side:
//! adeline-trace-ebpf/src/profile.rs; records: adeline-trace-common's
//! `profile` module.
use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use adeline_trace_common::profile::{
    PyProc, PCOUNTERS, PCOUNTER_OFF_CPU, PCOUNTER_OFF_CPU_SEEN, PCOUNTER_OFF_CPU_SHORT,
    PCOUNTER_PY_NO_TSTATE, PCOUNTER_RING_FULL, PCOUNTER_SAMPLES,
};
use aya::{
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray},
    programs::{
        perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
        PerfEvent, RawTracePoint,
    },
    Ebpf, EbpfLoader,
};

use super::site::{chain, ProbeError};
use crate::python::sampling::{Interpreters, Sampled};

/// Highest sampling rate accepted (the kernel's default
/// perf_event_max_sample_rate is higher, but the cost grows with it).
pub const MAX_HZ: u32 = 10_000;

/// Threads whose off-CPU interval in progress is kept (kernel LRU map).
const OFF_CPU_THREADS: u32 = 4096;

/// What `run --profile` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileSpec {
    /// On-CPU samples per second per CPU (cpu-clock).
    pub hz: u32,
    /// Also record off-CPU intervals (sched_switch).
    pub off_cpu: bool,
    /// Off-CPU intervals shorter than this are counted, not recorded.
    pub off_cpu_min: Duration,
}

impl ProfileSpec {
    /// The cpu-clock period in ns.
    pub fn period_ns(&self) -> u64 {
        1_000_000_000 / u64::from(self.hz.max(1))
    }
}

/// The profiler's kernel globals and map sizes; without a spec its big
/// map is created with one entry.
pub struct Globals {
    has_state: u32,
    fsbase_off: u64,
    run_delay_off: u64,
    period_ns: u64,
    off_cpu_min_ns: u64,
    off_cpu_threads: u32,
}

impl Globals {
    pub fn new(spec: Option<&ProfileSpec>) -> Globals {
        match spec {
            Some(s) => {
                // Without them: no Python frames, no split of off-CPU time.
                let (fsbase_off, run_delay_off) = super::btf::task_offsets();
                Globals {
                    has_state: u32::from(kernel_at_least(5, 18)),
                    fsbase_off,
                    run_delay_off,
                    period_ns: s.period_ns(),
                    off_cpu_min_ns: u64::try_from(s.off_cpu_min.as_nanos()).unwrap_or(u64::MAX),
                    off_cpu_threads: if s.off_cpu { OFF_CPU_THREADS } else { 1 },
                }
            }
            None => Globals {
                has_state: 0,
                fsbase_off: 0,
                run_delay_off: 0,
                period_ns: 0,
                off_cpu_min_ns: 0,
                off_cpu_threads: 1,
            },
        }
    }

    /// `task_struct.thread.fsbase`'s offset (0: unknown).
    pub fn fsbase_off(&self) -> u64 {
        self.fsbase_off
    }

    /// Sets them on the loader.
    pub fn configure<'a>(&'a self, loader: &mut EbpfLoader<'a>) {
        loader
            .override_global("PROFILE_PERIOD_NS", &self.period_ns, true)
            .override_global("OFF_CPU_MIN_NS", &self.off_cpu_min_ns, true)
            .override_global("SWITCH_HAS_STATE", &self.has_state, true)
            .override_global("TASK_FSBASE_OFF", &self.fsbase_off, true)
            .override_global("TASK_RUN_DELAY_OFF", &self.run_delay_off, true)
            .map_max_entries("OFF_CPU", self.off_cpu_threads);
    }
}

/// Whether the executable of `pid` is named like a Python interpreter.
fn python_named(pid: u32) -> bool {
    std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| {
        p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("python"))
    })
}

/// Whether the running kernel is at least `major.minor` (uname).
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    let (a, b) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (a, b) >= (major, minor)
}

/// The profiler's counters, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProfileCounters {
    /// On-CPU samples taken of traced threads.
    pub samples: u64,
    /// Off-CPU intervals recorded (sampled).
    pub off_cpu: u64,
    /// Off-CPU intervals of traced threads, recorded or not.
    pub off_cpu_seen: u64,
    /// Samples and intervals lost: the ring buffer was full.
    pub ring_full: u64,
    /// Off-CPU intervals shorter than the minimum.
    pub off_cpu_short: u64,
    /// Samples of a CPython process whose thread had no thread state.
    pub py_no_tstate: u64,
}

/// How often a process that maps no known interpreter (yet: a launched
/// command before it loads one) is looked at again while it is sampled
/// (a read of its /proc/PID/maps): soon when its executable is named like
/// a Python interpreter (its samples lack Python frames until then), else
/// every second (a program that embeds one may load it later).
const PYTHON_RECHECK: Duration = Duration::from_secs(1);
const PYTHON_RECHECK_SOON: Duration = Duration::from_millis(10);

/// The attached profiler: its counters map (the links live in the object).
pub struct ProfileMaps {
    pub spec: ProfileSpec,
    counters: PerCpuArray<MapData, u64>,
    /// Online CPUs sampled.
    pub cpus: usize,
    /// CPython processes the kernel walks (tgid -> where).
    python: BpfHashMap<MapData, u32, PyProc>,
    /// Processes looked at.
    checked: HashMap<u32, Checked>,
    interpreters: Interpreters,
    /// Whether the kernel can find a thread's pthread data (BTF).
    python_frames: bool,
    /// The CPython processes found: pid, version and interpreter file.
    found: Vec<(u32, String)>,
    /// The last look for exited processes (their pids may be reused).
    swept: Instant,
}

/// A process looked at for a CPython.
#[derive(Debug, Clone, Copy)]
struct Checked {
    when: Instant,
    /// It runs a known CPython.
    found: bool,
    /// Its start time (a reused pid is another process).
    start: Option<u64>,
    /// Its executable is named like Python, as seen at `named_at`.
    named: bool,
    named_at: Instant,
}

/// How often the executable's name of a process without a known CPython is
/// looked at again (samples come much more often: no system call each).
const PYTHON_NAME_RECHECK: Duration = Duration::from_millis(100);

/// How often the processes looked at are checked for having exited.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// When `pid` started (clock ticks since boot, /proc/PID/stat field 22):
/// a reused pid is another process, with another start.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count after its ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Loads and attaches the profiler's programs: the cpu-clock program on
/// every online CPU (all processes; the program filters), and the
/// sched_switch program when off-CPU time is asked for.
pub fn attach(
    ebpf: &mut Ebpf,
    spec: &ProfileSpec,
    fsbase_off: u64,
) -> Result<ProfileMaps, ProbeError> {
    let load = |e: &dyn std::error::Error| ProbeError::Load(format!("profiler: {}", chain(e)));
    let cpus = aya::util::online_cpus()
        .map_err(|(what, e)| ProbeError::Load(format!("profiler: reading {what}: {e}")))?;
    let prog: &mut PerfEvent = ebpf
        .program_mut("profile_cpu")
        .ok_or_else(|| ProbeError::Load("program profile_cpu missing from the object".into()))?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| load(&e))?;
    prog.load().map_err(|e| load(&e))?;
    for &cpu in &cpus {
        prog.attach(
            PerfEventConfig::Software(SoftwareEvent::CpuClock),
            PerfEventScope::AllProcessesOneCpu { cpu },
            SamplePolicy::Period(spec.period_ns()),
            false,
        )
        .map_err(|e| {
            ProbeError::Load(format!(
                "profiler: perf_event_open on CPU {cpu}: {}",
                chain(&e)
            ))
        })?;
    }
    if spec.off_cpu {
        let prog: &mut RawTracePoint = ebpf
            .program_mut("profile_switch")
            .ok_or_else(|| {
                ProbeError::Load("program profile_switch missing from the object".into())
            })?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| load(&e))?;
        prog.load().map_err(|e| load(&e))?;
        prog.attach("sched_switch").map_err(|e| load(&e))?;
    }
    let counters = ebpf
        .take_map("PROFILE_COUNTERS")
        .ok_or_else(|| ProbeError::Load("no PROFILE_COUNTERS map".into()))?;
    let python = ebpf
        .take_map("PROFILE_PY")
        .ok_or_else(|| ProbeError::Load("no PROFILE_PY map".into()))?;
    Ok(ProfileMaps {
        spec: spec.clone(),
        counters: PerCpuArray::try_from(counters).map_err(|e| load(&e))?,
        cpus: cpus.len(),
        python: BpfHashMap::try_from(python).map_err(|e| load(&e))?,
        checked: HashMap::new(),
        interpreters: Interpreters::default(),
        python_frames: fsbase_off != 0,
        found: Vec::new(),
        swept: Instant::now(),
    })
}

impl ProfileMaps {
    /// The counters, summed over CPUs.
    pub fn counters(&self) -> Result<ProfileCounters, ProbeError> {
        let mut out = [0u64; PCOUNTERS as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            let values = self
                .counters
                .get(&(i as u32), 0)
                .map_err(|e| ProbeError::Map {
                    map: "PROFILE_COUNTERS",
                    reason: chain(&e),
                })?;
            *slot = values.iter().sum();
        }
        Ok(ProfileCounters {
            samples: out[PCOUNTER_SAMPLES as usize],
            off_cpu: out[PCOUNTER_OFF_CPU as usize],
            off_cpu_seen: out[PCOUNTER_OFF_CPU_SEEN as usize],
            ring_full: out[PCOUNTER_RING_FULL as usize],
            off_cpu_short: out[PCOUNTER_OFF_CPU_SHORT as usize],
            py_no_tstate: out[PCOUNTER_PY_NO_TSTATE as usize],
        })
    }

    /// Called for each sampled pid: the first time (and again every
    /// second while it maps no known interpreter) looks for a CPython in
    /// it; when one is found, the kernel starts walking its Python frames
    /// and the caller gets what names them. None otherwise.
    pub fn python_process(&mut self, pid: u32) -> Option<Sampled> {
        if !self.python_frames {
            return None;
        }
        let now = Instant::now();
        if now.duration_since(self.swept) >= SWEEP_EVERY {
            self.swept = now;
            self.sweep();
        }
        // (Called for every sample: no system call unless it is time.)
        if let Some(c) = self.checked.get_mut(&pid) {
            if c.found {
                return None;
            }
            if !c.named && now.duration_since(c.named_at) >= PYTHON_NAME_RECHECK {
                c.named = python_named(pid);
                c.named_at = now;
            }
            let wait = match c.named {
                true => PYTHON_RECHECK_SOON,
                false => PYTHON_RECHECK,
            };
            if now.duration_since(c.when) < wait {
                return None;
            }
        }
        let found = self.interpreters.process(pid);
        self.checked.insert(
            pid,
            Checked {
                when: now,
                found: found.is_some(),
                start: start_time(pid),
                named: python_named(pid),
                named_at: now,
            },
        );
        let found = found?;
        self.python.insert(pid, found.proc, 0).ok()?;
        self.found.push((
            pid,
            format!(
                "CPython {}, {}; thread data {}",
                found.version,
                found.path.display(),
                match &found.tsd_from {
                    Some(libc) => format!("+{:#x} from {}", found.proc.tsd_off, libc.display()),
                    None => format!("+{:#x} assumed (glibc 2.36)", found.proc.tsd_off),
                }
            ),
        ));
        Some(found)
    }

    /// The CPython processes whose Python frames are walked (pid, what).
    pub fn python_processes(&self) -> &[(u32, String)] {
        &self.found
    }

    /// Forgets the processes that exited: the kernel stops walking a pid
    /// that may be reused by another process.
    fn sweep(&mut self) {
        let gone: Vec<u32> = self
            .checked
            .iter()
            .filter(|(&pid, c)| start_time(pid) != c.start)
            .map(|(&pid, _)| pid)
            .collect();
        for pid in gone {
            if self.checked.remove(&pid).is_some_and(|c| c.found) {
                let _ = self.python.remove(&pid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use adeline_trace_common::profile::{
        off_cpu_probability, off_cpu_weight, OFF_CPU_PI_MIN, OFF_CPU_PI_ONE,
    };

    use super::*;

    #[test]
    fn start_time_tells_a_running_process() {
        let me = start_time(std::process::id());
        assert!(me.is_some());
        assert_eq!(start_time(std::process::id()), me);
        assert_eq!(start_time(u32::MAX), None);
    }

    #[test]
    fn probability_is_the_share_of_a_period() {
        let period = 10_000_000;
        assert_eq!(off_cpu_probability(0, period), OFF_CPU_PI_ONE);
        assert_eq!(off_cpu_probability(period, period), OFF_CPU_PI_ONE);
        assert_eq!(off_cpu_probability(5 * period, period), OFF_CPU_PI_ONE);
        assert_eq!(off_cpu_probability(period / 4, period), OFF_CPU_PI_ONE / 4);
        assert_eq!(off_cpu_probability(1_000, period), OFF_CPU_PI_MIN);
        assert_eq!(off_cpu_probability(1 << 60, 1 << 62), OFF_CPU_PI_ONE / 4);
    }

    #[test]
    fn weight_undoes_the_probability() {
        assert_eq!(off_cpu_weight(1_500_000, OFF_CPU_PI_ONE), 1_500_000);
        assert_eq!(off_cpu_weight(1_500_000, OFF_CPU_PI_ONE / 4), 6_000_000);
        assert_eq!(off_cpu_weight(1_000, OFF_CPU_PI_MIN), 64_000);
        assert_eq!(off_cpu_weight(u64::MAX / 2, 2), u64::MAX);
    }
}
