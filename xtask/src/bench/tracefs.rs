//! Kernel uprobe trace events (tracefs `uprobe_events`, no BPF program) in
//! a private group and instance: the floor any uprobe tracer pays at a
//! site. Only the bench's own events are created and removed
//! (`-:GROUP/EVENT`), never the whole uprobe_events file.
use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};

/// Where tracefs is mounted.
pub(crate) fn root() -> Result<PathBuf> {
    for p in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
        let p = PathBuf::from(p);
        if p.join("uprobe_events").exists() {
            return Ok(p);
        }
    }
    bail!("tracefs is not mounted (mount -t tracefs nodev /sys/kernel/tracing), or not root")
}

/// Enabled `p:` / `r:` events on file offsets of one file, removed again
/// on drop.
pub(crate) struct Events {
    tracefs: PathBuf,
    group: String,
    events: Vec<String>,
}

impl Events {
    /// One event per (kind, file offset); kind is "p" or "r".
    pub(crate) fn new(tracefs: &Path, bin: &Path, sites: &[(&str, u64)]) -> Result<Events> {
        let group = format!("adeline_bench_{}", std::process::id());
        let mut events = Events {
            tracefs: tracefs.to_path_buf(),
            group: group.clone(),
            events: Vec::new(),
        };
        for (i, (kind, offset)) in sites.iter().enumerate() {
            let event = format!("{kind}{i}");
            events.write(
                "uprobe_events",
                &format!("{kind}:{group}/{event} {}:{offset:#x}\n", bin.display()),
            )?;
            events.events.push(event);
        }
        let instance = tracefs.join("instances").join(&group);
        if !instance.exists() {
            std::fs::create_dir(&instance).context("creating a tracefs instance")?;
        }
        events.write(&format!("instances/{group}/events/{group}/enable"), "1\n")?;
        Ok(events)
    }

    fn write(&self, file: &str, line: &str) -> Result<()> {
        let path = self.tracefs.join(file);
        let mut f = OpenOptions::new()
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        f.write_all(line.as_bytes())
            .with_context(|| format!("writing '{}' to {}", line.trim(), path.display()))
    }

    /// Hits of each event, in the order given (uprobe_profile).
    pub(crate) fn hits(&self) -> Result<Vec<u64>> {
        let text = std::fs::read_to_string(self.tracefs.join("uprobe_profile"))?;
        Ok(self
            .events
            .iter()
            .map(|e| {
                text.lines()
                    .find_map(|l| {
                        let f: Vec<&str> = l.split_whitespace().collect();
                        (f.len() == 3 && f[1] == e).then(|| f[2].parse().ok())?
                    })
                    .unwrap_or(0)
            })
            .collect())
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let group = self.group.clone();
        let _ = self.write(&format!("instances/{group}/events/{group}/enable"), "0\n");
        for e in std::mem::take(&mut self.events) {
            let _ = self.write("uprobe_events", &format!("-:{group}/{e}\n"));
        }
        let _ = std::fs::remove_dir(self.tracefs.join("instances").join(&group));
    }
}
