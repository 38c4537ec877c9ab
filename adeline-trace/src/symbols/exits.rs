//! What leaves a function: its exit instructions, where its frame is torn
//! down and control leaves it (so the stack pointer is its return-address
//! slot), and whether anything it runs could throw through it. Decoded
//! linearly (symbols/x86.rs) over the function's symbol extent and its GCC
//! `.cold` fragments (entered by a jump, they return for the function).
//!
//! Exits: `ret` (any prefix, `ret imm16`), a direct `jmp` whose target is
//! outside the function and its fragments (a tail call), and `jmp` through
//! memory without an index register (a tail call through the GOT or a
//! vtable). Not exits: `jmp` through a register or an indexed table (a
//! switch), and conditional jumps (a conditional tail call leaves the call
//! open; the agent counts it as abandoned at the next call at that level).
//!
//! A leaf runs no `call` (direct or indirect), no indirect `jmp`, no tail
//! call and no `syscall`/`sysenter`/`int`: no exception or forced unwind
//! can start below it, so none can cross it (probes/unwind.rs keeps such
//! a function on its cheap uretprobe under `--exit-probes auto`).
use std::path::Path;

use iced_x86::{FlowControl, Mnemonic, OpKind, Register};

use super::{
    elf::{ElfFile, FunctionSymbol},
    x86::{fragments, instructions, read_code, Code},
};

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

/// A function's exit instructions (file offsets, sorted; empty for a
/// function that never returns: it calls a noreturn function, or loops)
/// and whether it is a leaf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exits {
    pub offsets: Vec<u64>,
    pub leaf: bool,
}

/// The exits of `func`, a function of `elf` read from `path`.
pub fn function_exits(
    path: &Path,
    elf: &ElfFile,
    func: &FunctionSymbol,
) -> Result<Exits, ExitError> {
    if func.size == 0 {
        return Err(ExitError::NoSize);
    }
    let mut ranges = vec![(func.file_offset, func.size)];
    ranges.extend(fragments(elf, func, true));
    let mut code = Vec::new();
    for &(offset, size) in &ranges {
        let c = read_code(path, offset, size).map_err(|_| ExitError::NotInFile)?;
        if c.bytes.len() as u64 != size {
            return Err(ExitError::NotInFile);
        }
        code.push(c);
    }
    let inside = |t: u64| ranges.iter().any(|&(o, s)| t >= o && t < o + s);
    let mut out = Exits {
        offsets: Vec::new(),
        leaf: true,
    };
    for c in &code {
        let found = exits_in(
            Code {
                ip: c.offset,
                bytes: &c.bytes,
            },
            &inside,
        )?;
        out.offsets.extend(found.offsets);
        out.leaf &= found.leaf;
    }
    out.offsets.sort_unstable();
    out.offsets.dedup();
    Ok(out)
}

/// The exit instructions in `code` (addresses in its `ip` space), and
/// whether it is a leaf; `inside` tells the function's own addresses.
fn exits_in(code: Code<'_>, inside: &dyn Fn(u64) -> bool) -> Result<Exits, ExitError> {
    let mut out = Exits {
        offsets: Vec::new(),
        leaf: true,
    };
    let mut trailing_padding = false;
    for (insn, _) in instructions(code) {
        if insn.is_invalid() {
            // Padding after the last instruction (int3, zeros) is not code.
            if trailing_padding {
                break;
            }
            return Err(ExitError::Undecodable { at: insn.ip() });
        }
        let direct = matches!(
            insn.op0_kind(),
            OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64
        );
        let exit = match insn.mnemonic() {
            Mnemonic::Ret => true,
            Mnemonic::Jmp if direct => !inside(insn.near_branch_target()),
            Mnemonic::Jmp => {
                insn.op0_kind() == OpKind::Memory && insn.memory_index() == Register::None
            }
            _ => false,
        };
        if exit {
            out.offsets.push(insn.ip());
        }
        let calls_out = match insn.flow_control() {
            FlowControl::Call | FlowControl::IndirectCall | FlowControl::IndirectBranch => true,
            FlowControl::Interrupt => true,
            FlowControl::UnconditionalBranch | FlowControl::ConditionalBranch => {
                direct && !inside(insn.near_branch_target())
            }
            _ => matches!(
                insn.mnemonic(),
                Mnemonic::Syscall | Mnemonic::Sysenter | Mnemonic::Int
            ),
        };
        out.leaf &= !calls_out;
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
        leaf_and_exits(code, size_inside).map(|e| e.offsets)
    }

    fn leaf_and_exits(code: &[u8], size_inside: u64) -> Result<Exits, ExitError> {
        let code = Code {
            ip: 0x1000,
            bytes: code,
        };
        exits_in(code, &|t| (0x1000..0x1000 + size_inside).contains(&t))
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
    fn leaves_call_nothing() {
        // lea (%rdi,%rdi,2),%rax; test; je +1; ret; ret: a leaf
        let leaf = [0x48, 0x8d, 0x04, 0x7f, 0x85, 0xff, 0x74, 0x01, 0xc3, 0xc3];
        assert!(leaf_and_exits(&leaf, 10).unwrap().leaf);
        // call rel32; ret
        assert!(!leaf_and_exits(&[0xe8, 0, 0, 0, 0, 0xc3], 6).unwrap().leaf);
        // call *%rax; ret
        assert!(!leaf_and_exits(&[0xff, 0xd0, 0xc3], 3).unwrap().leaf);
        // jmp *%rax (a switch: conservatively not a leaf)
        assert!(!leaf_and_exits(&[0xff, 0xe0], 2).unwrap().leaf);
        // syscall; ret
        assert!(!leaf_and_exits(&[0x0f, 0x05, 0xc3], 3).unwrap().leaf);
        // a tail call: jmp rel32 outside
        assert!(!leaf_and_exits(&[0xe9, 0, 0x10, 0, 0], 5).unwrap().leaf);
        // a conditional tail call: jne rel32 outside; ret
        let cond = [0x0f, 0x85, 0, 0x10, 0, 0, 0xc3];
        assert!(!leaf_and_exits(&cond, 7).unwrap().leaf);
    }
}
