//! Probe kind `memory`: kernel tracepoints on the traced processes' memory
//! (mmap, munmap, mremap and brk system calls; kmem:rss_stat), charged in
//! the kernel to the stage running on the thread; and the readers of what
//! they keep (exact RSS per process, resident bytes per stage). Kernel
//! side: adeline-trace-ebpf/src/memory.rs.
use adeline_trace_common::{stage_slots, RssState};
use aya::{
    maps::{HashMap, MapData, PerCpuArray},
    Ebpf,
};

use super::site::{chain, ProbeError, Tracepoint};

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

/// Every memory tracepoint; `--memory maps` takes the first four.
const TRACEPOINTS: [Tracepoint; 5] = [
    Tracepoint::new("mem_mmap", "syscalls", "sys_enter_mmap"),
    Tracepoint::new("mem_munmap", "syscalls", "sys_enter_munmap"),
    Tracepoint::new("mem_mremap", "syscalls", "sys_enter_mremap"),
    Tracepoint::new("mem_brk", "syscalls", "sys_exit_brk"),
    Tracepoint::new("mem_rss", "kmem", "rss_stat"),
];

/// The tracepoints to attach in `mode` for `pids`, or why none are.
/// Syscall tracepoints fire for every process, so they are attached only
/// when the kernel pid filter is on.
pub fn tracepoints(mode: MemoryMode, pids: &[u32]) -> Result<&'static [Tracepoint], String> {
    match mode {
        MemoryMode::Off => Err("--memory off".into()),
        _ if pids.is_empty() => Err(
            "tracing every process: memory mappings are traced only with -p or a command".into(),
        ),
        MemoryMode::Full => Ok(&TRACEPOINTS),
        MemoryMode::Maps => Ok(&TRACEPOINTS[..4]),
    }
}

/// The resident set of `pid` as `kmem:rss_stat` last reported it (None
/// before its first event, or when memory is not traced).
pub fn kernel_rss(ebpf: &Ebpf, pid: u32) -> Option<u64> {
    let mm_ids: HashMap<&MapData, u32, u32> = HashMap::try_from(ebpf.map("MM_IDS")?).ok()?;
    let rss: HashMap<&MapData, u32, RssState> = HashMap::try_from(ebpf.map("RSS")?).ok()?;
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
