//! The agent's own resource use, from procfs: CPU time (`/proc/self/stat`)
//! and resident memory (`/proc/self/statm`).

/// CPU and memory used by this process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AgentUsage {
    /// User + system CPU time since start.
    pub cpu_seconds: f64,
    /// Resident set size.
    pub resident_bytes: u64,
}

/// This process's usage now; None if procfs cannot be read.
pub fn agent_usage() -> Option<AgentUsage> {
    // SAFETY: sysconf has no preconditions.
    let (ticks, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    Some(AgentUsage {
        cpu_seconds: cpu_seconds(&stat, u64::try_from(ticks).ok()?)?,
        resident_bytes: resident_bytes(&statm, u64::try_from(page).ok()?)?,
    })
}

/// utime + stime (fields 14 and 15 of proc_pid_stat(5), in clock ticks) in
/// seconds. The command name (field 2) may hold spaces and parentheses, so
/// fields are counted after its last `)`.
fn cpu_seconds(stat: &str, ticks_per_s: u64) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11); // field 3 is index 0
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    (ticks_per_s > 0).then(|| (utime + stime) as f64 / ticks_per_s as f64)
}

/// Resident pages (field 2 of proc_pid_statm(5)) in bytes.
fn resident_bytes(statm: &str, page_bytes: u64) -> Option<u64> {
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    pages.checked_mul(page_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_awkward_command_names() {
        let stat = "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 500 0 0 0 \
                    250 125 0 0 20 0 3 0 100 0 0";
        assert_eq!(cpu_seconds(stat, 100), Some(3.75));
        assert_eq!(cpu_seconds("1 (x) S 1", 100), None);
        assert_eq!(cpu_seconds(stat, 0), None);
        assert_eq!(
            resident_bytes("2000 300 100 1 0 50 0\n", 4096),
            Some(1_228_800)
        );
        assert_eq!(resident_bytes("", 4096), None);
    }

    #[test]
    fn reads_this_process() {
        let u = agent_usage().expect("procfs");
        assert!(u.resident_bytes > 1 << 20, "{u:?}");
        assert!(u.cpu_seconds >= 0.0, "{u:?}");
    }
}
