//! Probe kind `memory`: kernel tracepoints on the traced processes' memory
//! (mmap, munmap, mremap and brk system calls; rss_stat), charged in
//! the kernel to the stage running on the thread; and the readers of what
//! they keep (exact RSS per process, resident bytes per stage). Kernel
//! side: adeline-trace-ebpf/src/memory.rs and, for rss_stat as a BTF raw
//! tracepoint (the default when the kernel's BTF allows), rss_btf.rs.
use std::path::Path;

use adeline_trace_common::{stage_slots, RssState, RSS_MAX_CPUS};
use aya::{
    maps::{HashMap, MapData, PerCpuArray},
    programs::{BtfTracePoint, TracePoint},
    Btf as AyaBtf, Ebpf, EbpfLoader, Endianness,
};

use super::{
    btf::Btf,
    site::{chain, ProbeError, Tracepoint},
};

/// Which kernel memory tracepoints `run` attaches (`--memory`): `Full`
/// the mapping syscalls and kmem:rss_stat, `Maps` the syscalls only, `Off`
/// none (the flag's help, in cli.rs, says so to users).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum MemoryMode {
    #[default]
    Full,
    Maps,
    Off,
}

/// The mapping syscalls' tracepoints (`--memory maps` and `full`).
const TRACEPOINTS: [Tracepoint; 4] = [
    Tracepoint::new("mem_mmap", "syscalls", "sys_enter_mmap"),
    Tracepoint::new("mem_munmap", "syscalls", "sys_enter_munmap"),
    Tracepoint::new("mem_mremap", "syscalls", "sys_enter_mremap"),
    Tracepoint::new("mem_brk", "syscalls", "sys_exit_brk"),
];

/// rss_stat as a classic tracepoint (the fallback).
const RSS_CLASSIC: Tracepoint = Tracepoint::new("mem_rss", "kmem", "rss_stat");
/// rss_stat as a BTF raw tracepoint.
const RSS_BTF_PROGRAM: &str = "mem_rss_btf";
/// Most CPUs the BTF program handles (adeline-trace-ebpf/src/rss_btf.rs).
const RSS_BTF_MAX_CPUS: u32 = RSS_MAX_CPUS as u32;
/// `ADELINE_TRACE_RSS_HOOK=tp_btf` asks for the BTF raw tracepoint (the
/// default is the classic one: measured cheaper on the benchmark VM, see
/// docs/memory.md).
const HOOK_ENV: &str = "ADELINE_TRACE_RSS_HOOK";
/// Where the kernel's BTF is read; the environment variable names another
/// file (a missing one: the fallback, as on a kernel without BTF).
const BTF_ENV: &str = "ADELINE_TRACE_RSS_BTF";
const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// How rss_stat is attached: the `start` event's `rss_hook`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RssHook {
    /// `tp_btf/rss_stat`: the program reads the mm's counters itself.
    Btf,
    /// `kmem:rss_stat`: the classic tracepoint and its record.
    Classic,
}

impl RssHook {
    pub fn name(self) -> &'static str {
        match self {
            RssHook::Btf => "tp_btf/rss_stat",
            RssHook::Classic => "kmem:rss_stat",
        }
    }
}

/// What the memory tracepoints attached: how many, rss_stat's hook
/// (None in `maps` mode) and, when the BTF one could not be used, why.
#[derive(Debug, Default)]
pub struct Attached {
    pub count: usize,
    pub rss_hook: Option<RssHook>,
    pub fallback: Option<String>,
}

/// Attaches the tracepoints of `mode` for `pids`, or says why none are.
/// Syscall tracepoints fire for every process, so they are attached only
/// when the kernel pid filter is on.
pub fn attach(
    ebpf: &mut Ebpf,
    mode: MemoryMode,
    pids: &[u32],
    layout: &Layout,
    attach_tracepoints: impl Fn(&mut Ebpf, &[Tracepoint]) -> Result<usize, String>,
) -> Result<Attached, String> {
    match mode {
        MemoryMode::Off => return Err("--memory off".into()),
        _ if pids.is_empty() => {
            return Err(
                "tracing every process: memory mappings are traced only with -p or a command"
                    .into(),
            )
        }
        _ => {}
    }
    let mut done = Attached {
        count: attach_tracepoints(ebpf, &TRACEPOINTS)?,
        ..Attached::default()
    };
    if mode == MemoryMode::Maps {
        return Ok(done);
    }
    let btf = match (layout.requested, &layout.why_not) {
        (false, _) => Err(None),
        (true, Some(why)) => Err(Some(why.clone())),
        (true, None) => attach_btf(ebpf, &layout.btf_path).map_err(Some),
    };
    match btf {
        Ok(()) => done.rss_hook = Some(RssHook::Btf),
        Err(why) => {
            let prog: &mut TracePoint = program(ebpf, RSS_CLASSIC.program)?;
            prog.load().map_err(|e| chain(&e))?;
            prog.attach(RSS_CLASSIC.category, RSS_CLASSIC.event)
                .map_err(|e| chain(&e))?;
            done.rss_hook = Some(RssHook::Classic);
            done.fallback = why;
        }
    }
    done.count += 1;
    Ok(done)
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, String>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| format!("program {name} missing"))?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| chain(&e))
}

fn attach_btf(ebpf: &mut Ebpf, btf_path: &Path) -> Result<(), String> {
    let btf = AyaBtf::parse_file(btf_path, Endianness::default()).map_err(|e| chain(&e))?;
    let prog: &mut BtfTracePoint = program(ebpf, RSS_BTF_PROGRAM)?;
    prog.load("rss_stat", &btf).map_err(|e| chain(&e))?;
    prog.attach().map_err(|e| chain(&e))?;
    Ok(())
}

/// The layouts `mem_rss_btf` reads, from the kernel's BTF, or why the
/// BTF raw tracepoint cannot be used.
#[derive(Debug, Clone, Default)]
pub struct Layout {
    /// Whether the BTF raw tracepoint is asked for.
    requested: bool,
    btf_path: std::path::PathBuf,
    mm_rss_stat: u64,
    counter_size: u64,
    /// `rss_stat[member]` for the file, anon and shmem members.
    counter_offs: [u64; 3],
    lock: u64,
    count: u64,
    counters: u64,
    array_pptrs: u64,
    task_mm: u64,
    nr_cpus: u32,
    page_shift: u64,
    why_not: Option<String>,
}

impl Layout {
    /// Reads the layouts when `mode` attaches rss_stat.
    pub fn new(mode: MemoryMode) -> Layout {
        let btf_path = std::env::var_os(BTF_ENV)
            .map(Into::into)
            .unwrap_or_else(|| VMLINUX_BTF.into());
        let requested = std::env::var(HOOK_ENV).is_ok_and(|v| v == "tp_btf");
        if mode != MemoryMode::Full || !requested {
            return Layout {
                btf_path,
                why_not: Some("not used".into()),
                ..Layout::default()
            };
        }
        let mut layout = Layout {
            requested: true,
            page_shift: u64::from(page_size().trailing_zeros()),
            nr_cpus: possible_cpus(),
            ..Layout::default()
        };
        layout.why_not = layout.read(&btf_path).err();
        layout.btf_path = btf_path;
        layout
    }

    fn read(&mut self, path: &Path) -> Result<(), String> {
        let data =
            std::fs::read(path).map_err(|e| format!("no kernel BTF ({}: {e})", path.display()))?;
        let btf = Btf::parse(&data).ok_or_else(|| format!("{}: not BTF", path.display()))?;
        let find = |root: &str, path: &[&str]| {
            btf.offset_of(root, path)
                .ok_or_else(|| format!("the kernel's BTF has no {root}.{}", path.join(".")))
        };
        self.mm_rss_stat = find("mm_struct", &["rss_stat"])?;
        self.lock = find("percpu_counter", &["lock"])?;
        self.count = find("percpu_counter", &["count"])?;
        self.counters = find("percpu_counter", &["counters"])?;
        self.array_pptrs = find("bpf_array", &["pptrs"])?;
        self.task_mm = find("task_struct", &["mm"])?;
        self.counter_size = btf
            .size_of("percpu_counter")
            .ok_or("the kernel's BTF has no struct percpu_counter")?;
        self.counter_offs = [0, 1, 3].map(|m| self.mm_rss_stat + m * self.counter_size);
        if self.nr_cpus == 0 || self.nr_cpus > RSS_BTF_MAX_CPUS {
            return Err(format!(
                "{} possible CPUs (the program handles at most {RSS_BTF_MAX_CPUS})",
                self.nr_cpus
            ));
        }
        Ok(())
    }

    /// Sets the load-time constants.
    pub fn configure<'a>(&'a self, loader: &mut EbpfLoader<'a>) {
        loader
            .override_global("RSS_FILE_OFF", &self.counter_offs[0], true)
            .override_global("RSS_ANON_OFF", &self.counter_offs[1], true)
            .override_global("RSS_SHMEM_OFF", &self.counter_offs[2], true)
            .override_global("PCPU_LOCK_OFF", &self.lock, true)
            .override_global("PCPU_COUNT_OFF", &self.count, true)
            .override_global("PCPU_COUNTERS_OFF", &self.counters, true)
            .override_global("BPF_ARRAY_PPTRS_OFF", &self.array_pptrs, true)
            .override_global("TASK_MM_OFF", &self.task_mm, true)
            .override_global("NR_CPUS", &self.nr_cpus, true)
            .override_global("PAGE_SHIFT", &self.page_shift, true);
    }
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096)
}

/// `nr_cpu_ids`: one more than the last CPU in /sys/devices/system/cpu/possible
/// ("0-1", "0-3,8-11"; 0: unknown).
fn possible_cpus() -> u32 {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible").unwrap_or_default();
    last_cpu(&text).map_or(0, |c| c + 1)
}

fn last_cpu(list: &str) -> Option<u32> {
    list.trim()
        .split([',', '-'])
        .filter_map(|n| n.parse::<u32>().ok())
        .max()
}

/// The resident set of `pid` as rss_stat last reported it (None before
/// its first event, or when memory is not traced).
pub fn kernel_rss(ebpf: &Ebpf, pid: u32) -> Option<u64> {
    let mm_ids: HashMap<&MapData, u32, u64> = HashMap::try_from(ebpf.map("MM_IDS")?).ok()?;
    let rss: HashMap<&MapData, u64, RssState> = HashMap::try_from(ebpf.map("RSS")?).ok()?;
    let mm = mm_ids.get(&pid, 0).ok()?;
    Some(rss.get(&mm, 0).ok()?.rss_bytes())
}

/// Resident bytes charged to stage ids `0..stages`, then to "(no stage)"
/// (summed over CPUs; kmem:rss_stat).
pub fn stage_resident(ebpf: &Ebpf, stages: usize) -> Result<Vec<i64>, ProbeError> {
    let err = |reason: String| ProbeError::Map {
        map: "STAGE_RSS",
        reason,
    };
    let map = ebpf.map("STAGE_RSS").ok_or_else(|| err("missing".into()))?;
    let map: PerCpuArray<&MapData, i64> = PerCpuArray::try_from(map).map_err(|e| err(chain(&e)))?;
    stage_slots(stages)
        .map(|i| {
            map.get(&i, 0)
                .map(|per_cpu| per_cpu.iter().sum())
                .map_err(|e| err(chain(&e)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_possible_cpu() {
        assert_eq!(last_cpu("0-1\n"), Some(1));
        assert_eq!(last_cpu("0\n"), Some(0));
        assert_eq!(last_cpu("0-3,8-11\n"), Some(11));
        assert_eq!(last_cpu(""), None);
    }

    #[test]
    fn reads_the_running_kernels_layout() {
        let mut layout = Layout {
            nr_cpus: possible_cpus(),
            ..Layout::default()
        };
        layout.why_not = layout.read(Path::new(VMLINUX_BTF)).err();
        if !Path::new(VMLINUX_BTF).exists() {
            assert!(layout.why_not.unwrap().starts_with("no kernel BTF"));
            return;
        }
        assert_eq!(layout.why_not, None);
        // x86-64 without lock debugging: lock, count, list, counters.
        assert_eq!((layout.lock, layout.count, layout.counters), (0, 8, 32));
        assert_eq!(layout.counter_size, 40);
        assert!(layout.mm_rss_stat > 0 && layout.task_mm > 0);
    }

    #[test]
    fn missing_btf_is_said() {
        let mut layout = Layout::default();
        let why = layout.read(Path::new("/nonexistent/vmlinux")).unwrap_err();
        assert!(
            why.starts_with("no kernel BTF (/nonexistent/vmlinux: "),
            "{why}"
        );
    }
}
