//! The exit instructions of a function: where its frame is torn down and
//! control leaves it, so the stack pointer is its return-address slot.
//! Decoded linearly over the function's symbol extent and its GCC `.cold`
//! fragments (entered by a jump, they return for the function).
//!
//! Exits: `ret` (any prefix, `ret imm16`), a direct `jmp` whose target is
//! outside the function and its fragments (a tail call), and `jmp` through
//! memory without an index register (a tail call through the GOT or a
//! vtable). Not exits: `jmp` through a register or an indexed table (a
//! switch), and conditional jumps (a conditional tail call leaves the call
//! open; the agent counts it as abandoned at the next call at that level).
use std::collections::HashMap;

use iced_x86::{Decoder, DecoderOptions, FlowControl, Mnemonic, OpKind, Register};
use object::{Object, ObjectSegment, ObjectSymbol, SymbolKind};

/// Why a function's exits cannot be found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitError {
    /// No symbol size: the extent of the code is unknown.
    NoSize,
    /// The bytes do not decode as x86-64 code.
    Undecodable { at: u64 },
    /// The file's code is not where its symbols say.
    NotInFile,
}

impl std::fmt::Display for ExitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitError::NoSize => write!(f, "its symbol has no size"),
            ExitError::Undecodable { at } => write!(f, "its code does not decode at {at:#x}"),
            ExitError::NotInFile => write!(f, "its code is not in the file"),
        }
    }
}

/// A code range: virtual address, size, file offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Range {
    addr: u64,
    size: u64,
    offset: u64,
}

/// One ELF file's code, for finding exits of its functions.
pub struct ExitFinder {
    data: Vec<u8>,
    /// (vaddr, filesz, file offset) of PT_LOAD segments.
    segments: Vec<(u64, u64, u64)>,
    /// `.cold` fragments by the raw name of their function.
    fragments: HashMap<String, Vec<(u64, u64)>>,
}

/// The function a GCC fragment belongs to (`f.cold`, `f.cold.3`).
fn fragment_of(name: &str) -> Option<&str> {
    let (base, rest) = name.split_once(".cold")?;
    (rest.is_empty()
        || rest
            .strip_prefix('.')
            .is_some_and(|n| n.parse::<u32>().is_ok()))
    .then_some(base)
}

impl ExitFinder {
    pub fn open(path: &std::path::Path) -> Option<ExitFinder> {
        let data = std::fs::read(path).ok()?;
        let (segments, fragments) = {
            let obj = object::File::parse(&*data).ok()?;
            let segments = obj
                .segments()
                .map(|s| {
                    let (off, size) = s.file_range();
                    (s.address(), size, off)
                })
                .collect();
            let mut fragments: HashMap<String, Vec<(u64, u64)>> = HashMap::new();
            for sym in obj.symbols().chain(obj.dynamic_symbols()) {
                if sym.kind() != SymbolKind::Text || sym.size() == 0 {
                    continue;
                }
                if let Some(base) = sym.name().ok().and_then(fragment_of) {
                    let v = fragments.entry(base.to_string()).or_default();
                    if !v.contains(&(sym.address(), sym.size())) {
                        v.push((sym.address(), sym.size()));
                    }
                }
            }
            (segments, fragments)
        };
        Some(ExitFinder {
            data,
            segments,
            fragments,
        })
    }

    fn range(&self, addr: u64, size: u64) -> Option<Range> {
        self.segments
            .iter()
            .find(|&&(va, filesz, _)| addr >= va && addr + size <= va + filesz)
            .map(|&(va, _, off)| Range {
                addr,
                size,
                offset: off + (addr - va),
            })
    }

    /// File offsets of the exit instructions of the function `raw` at
    /// `addr` with `size` bytes. None for a function that never returns
    /// (it calls a noreturn function, or loops): only an unwind ends it.
    pub fn exits(&self, raw: &str, addr: u64, size: u64) -> Result<Vec<u64>, ExitError> {
        if size == 0 {
            return Err(ExitError::NoSize);
        }
        let mut ranges = vec![self.range(addr, size).ok_or(ExitError::NotInFile)?];
        for &(a, s) in self.fragments.get(raw).into_iter().flatten() {
            ranges.push(self.range(a, s).ok_or(ExitError::NotInFile)?);
        }
        let inside = |t: u64| ranges.iter().any(|r| t >= r.addr && t < r.addr + r.size);
        let mut out = Vec::new();
        for r in &ranges {
            let code = self
                .data
                .get(r.offset as usize..(r.offset + r.size) as usize)
                .ok_or(ExitError::NotInFile)?;
            out.extend(
                exits_in(code, r.addr, &inside)?
                    .into_iter()
                    .map(|a| a - r.addr + r.offset),
            );
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }
}

/// Addresses of the exit instructions in `code` loaded at `addr`.
fn exits_in(code: &[u8], addr: u64, inside: &dyn Fn(u64) -> bool) -> Result<Vec<u64>, ExitError> {
    let mut decoder = Decoder::with_ip(64, code, addr, DecoderOptions::NONE);
    let mut out = Vec::new();
    let mut trailing_padding = false;
    while decoder.can_decode() {
        let insn = decoder.decode();
        if insn.is_invalid() {
            // Padding after the last instruction (int3, zeros) is not code.
            if trailing_padding {
                break;
            }
            return Err(ExitError::Undecodable { at: insn.ip() });
        }
        let exit = match insn.mnemonic() {
            Mnemonic::Ret => true,
            Mnemonic::Jmp => match insn.op0_kind() {
                OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64 => {
                    !inside(insn.near_branch_target())
                }
                OpKind::Memory => insn.memory_index() == Register::None,
                _ => false,
            },
            _ => false,
        };
        if exit {
            out.push(insn.ip());
        }
        trailing_padding = matches!(
            insn.flow_control(),
            FlowControl::Return | FlowControl::UnconditionalBranch | FlowControl::IndirectBranch
        ) || (trailing_padding
            && matches!(insn.mnemonic(), Mnemonic::Int3 | Mnemonic::Nop));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exits(code: &[u8], size_inside: u64) -> Result<Vec<u64>, ExitError> {
        exits_in(code, 0x1000, &|t| {
            (0x1000..0x1000 + size_inside).contains(&t)
        })
    }

    #[test]
    fn finds_rets_and_tail_calls() {
        // push %rbp; test %edi,%edi; je +2; pop %rbp; ret; pop %rbp; jmp far (tail call)
        let code = [
            0x55, 0x85, 0xff, 0x74, 0x02, 0x5d, 0xc3, 0x5d, 0xe9, 0x00, 0x10, 0x00, 0x00,
        ];
        assert_eq!(exits(&code, code.len() as u64), Ok(vec![0x1006, 0x1008]));
        // A jump back inside is a loop, not an exit.
        let code = [0x90, 0xeb, 0xfd, 0xc3];
        assert_eq!(exits(&code, 4), Ok(vec![0x1003]));
        // ret $8, rep ret
        assert_eq!(
            exits(&[0xc2, 0x08, 0x00, 0xf3, 0xc3], 5),
            Ok(vec![0x1000, 0x1003])
        );
    }

    #[test]
    fn indirect_jumps() {
        // jmp *0x10(%rip): GOT tail call
        assert_eq!(exits(&[0xff, 0x25, 0x10, 0, 0, 0], 6), Ok(vec![0x1000]));
        // jmp *(%rax,%rdx,8): switch table; jmp *%rax: switch; then ret
        assert_eq!(
            exits(&[0xff, 0x24, 0xd0, 0xff, 0xe0, 0xc3], 6),
            Ok(vec![0x1005])
        );
        // jmp *0x18(%rax): virtual tail call
        assert_eq!(exits(&[0xff, 0x60, 0x18], 3), Ok(vec![0x1000]));
    }

    #[test]
    fn padding_after_the_end_is_not_code() {
        assert_eq!(exits(&[0xc3, 0xcc, 0xcc, 0x00, 0x00], 5), Ok(vec![0x1000]));
        assert!(matches!(
            exits(&[0x06, 0xc3], 2),
            Err(ExitError::Undecodable { at: 0x1000 })
        ));
    }

    #[test]
    fn fragment_names() {
        assert_eq!(fragment_of("_ZN3app4workEi.cold"), Some("_ZN3app4workEi"));
        assert_eq!(fragment_of("work.cold.3"), Some("work"));
        assert_eq!(fragment_of("coldstart"), None);
        assert_eq!(fragment_of("work.colder"), None);
    }
}
