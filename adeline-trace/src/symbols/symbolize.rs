//! Allocation-site stacks -> function names and source lines of the traced
//! process, with blazesym (ELF symbols and DWARF through the process's own
//! mappings). Results are cached per (pid, stack id): a stack id always
//! names the same stack while the kernel map holds it.
use std::collections::HashMap;

use blazesym::{
    symbolize::{
        source::{Process, Source},
        Input, Symbolized, Symbolizer,
    },
    Pid,
};

pub struct StackSymbolizer {
    symbolizer: Symbolizer,
    cache: HashMap<(u32, u32), Vec<String>>,
}

impl Default for StackSymbolizer {
    fn default() -> Self {
        StackSymbolizer {
            symbolizer: Symbolizer::new(),
            cache: HashMap::new(),
        }
    }
}

impl StackSymbolizer {
    /// The frames of stack `id` of `pid` (return addresses, innermost
    /// first), each as `function (file:line)`, or `0xADDR` when unknown.
    pub fn frames(&mut self, pid: u32, id: u32, addrs: &[u64]) -> Vec<String> {
        if let Some(hit) = self.cache.get(&(pid, id)) {
            return hit.clone();
        }
        let frames = self.symbolize(pid, addrs);
        // Only keep answers from a live process (a gone one gives all unknown).
        if frames.iter().any(|f| !f.starts_with("0x")) {
            self.cache.insert((pid, id), frames.clone());
        }
        frames
    }

    fn symbolize(&self, pid: u32, addrs: &[u64]) -> Vec<String> {
        // Return addresses point after the call: look up the call itself.
        let calls: Vec<u64> = addrs.iter().map(|&a| a.saturating_sub(1)).collect();
        let src = Source::Process(Process::new(Pid::from(pid)));
        // A process that is gone symbolizes nothing: addresses only.
        let Ok(syms) = self.symbolizer.symbolize(&src, Input::AbsAddr(&calls)) else {
            return addrs.iter().map(|a| format!("{a:#x}")).collect();
        };
        syms.iter()
            .zip(addrs)
            .map(|(s, &addr)| match s {
                Symbolized::Sym(sym) => match sym.code_info.as_deref() {
                    Some(ci) => match ci.line {
                        Some(line) => {
                            format!("{} ({}:{line})", sym.name, ci.file.to_string_lossy())
                        }
                        None => format!("{} ({})", sym.name, ci.file.to_string_lossy()),
                    },
                    None => sym.name.to_string(),
                },
                Symbolized::Unknown(_) => format!("{addr:#x}"),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn here() -> u64 {
        here as *const () as u64
    }

    #[test]
    fn names_a_function_of_this_process() {
        let mut s = StackSymbolizer::default();
        // +1: frames are return addresses (the symbolizer looks at addr-1).
        let addr = here() + 1;
        let frames = s.frames(std::process::id(), 7, &[addr, 8]);
        assert_eq!(frames.len(), 2);
        assert!(frames[0].contains("symbolize::tests::here"), "{frames:?}");
        assert!(frames[0].contains("symbolize.rs:"), "{frames:?}");
        assert_eq!(frames[1], "0x8");
        // Cached by (pid, id).
        assert_eq!(s.frames(std::process::id(), 7, &[]), frames);
    }
}
