//! Where a thread's first block of thread-specific data is, from its
//! thread pointer, in the C library a process maps: the kernel reads each
//! thread's own Python thread state there (`PyProc::tsd_off`).
//!
//! glibc keeps it in `struct pthread` (`specific_1stblock`: 32 entries of
//! 16 bytes, `seq` then `data`), at an offset that depends on the glibc
//! build. It is read from the code of `pthread_getspecific`, whose fast
//! path (key < 32) computes the entry's address from the key and the
//! thread pointer (`%fs:0x10`, the thread's own `struct pthread`) and
//! loads both fields of the entry, e.g. glibc 2.36:
//!
//! ```text
//! mov eax, edi ; add rax, 0x31 ; shl rax, 4 ; add rax, fs:[0x10]
//! mov rdx, [rax+8] ; ... ; mov rsi, [rax]
//! ```
//!
//! A small symbolic evaluation follows each register as
//! `k * key + c (+ thread pointer)` through `mov`, `add`, `shl` and `lea`;
//! the loads through an address of `16 * key + c + thread pointer` must be
//! exactly the entry's two fields (offsets x and x + 8), and x is the
//! answer. Anything else (another C library, another shape of code) gives
//! no answer rather than a guess.
use std::{collections::HashMap, path::Path};

use iced_x86::{Instruction, Mnemonic, OpKind, Register};

use super::image::Image;
use crate::symbols::x86::{instructions, Code};

/// Instructions of `pthread_getspecific` looked at.
const MAX_INSNS: usize = 40;

/// A register's value as a function of the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Lin {
    k: i64,
    c: i64,
    /// Plus the thread pointer.
    tp: bool,
}

impl Lin {
    fn add(self, o: Lin) -> Option<Lin> {
        if self.tp && o.tp {
            return None;
        }
        Some(Lin {
            k: self.k.checked_add(o.k)?,
            c: self.c.checked_add(o.c)?,
            tp: self.tp || o.tp,
        })
    }

    fn scale(self, by: i64) -> Option<Lin> {
        if self.tp {
            return None;
        }
        Some(Lin {
            k: self.k.checked_mul(by)?,
            c: self.c.checked_mul(by)?,
            tp: false,
        })
    }

    fn constant(c: i64) -> Lin {
        Lin { k: 0, c, tp: false }
    }
}

/// The offset of the first block of thread-specific data from the thread
/// pointer, read from the C library at `libc` (None: not found).
pub fn offset_in(libc: &Path) -> Option<u32> {
    let image = Image::open(libc).ok()?;
    let (addr, size) = image
        .symbol("pthread_getspecific")
        .or_else(|| image.symbol("__pthread_getspecific"))?;
    let len = usize::try_from(size.clamp(16, 512)).ok()?;
    let bytes = image.bytes(addr, len)?;
    offset_from_code(Code { ip: addr, bytes })
}

/// The same, from the code of `pthread_getspecific`.
pub fn offset_from_code(code: Code<'_>) -> Option<u32> {
    let mut regs: HashMap<Register, Lin> = HashMap::new();
    regs.insert(
        Register::RDI,
        Lin {
            k: 1,
            c: 0,
            tp: false,
        },
    );
    let mut loads: Vec<i64> = Vec::new();
    for (insn, _) in instructions(code).take(MAX_INSNS) {
        if insn.is_invalid() {
            break;
        }
        match insn.mnemonic() {
            Mnemonic::Ret | Mnemonic::Jmp | Mnemonic::Call => break,
            Mnemonic::Mov | Mnemonic::Add | Mnemonic::Shl | Mnemonic::Lea => {
                step(&insn, &mut regs, &mut loads);
            }
            // Compares, tests and conditional branches change no register
            // the fast path uses (the key < 32 check comes first).
            Mnemonic::Cmp | Mnemonic::Test | Mnemonic::Nop => {}
            m if is_jcc(m) => {}
            _ => {
                if let Some(dst) = written(&insn) {
                    regs.remove(&dst);
                }
            }
        }
    }
    loads.sort_unstable();
    loads.dedup();
    match loads[..] {
        [x, y] if y == x + 8 && x > 0 && x % 16 == 0 => u32::try_from(x).ok(),
        _ => None,
    }
}

fn is_jcc(m: Mnemonic) -> bool {
    matches!(
        m,
        Mnemonic::Ja
            | Mnemonic::Jae
            | Mnemonic::Jb
            | Mnemonic::Jbe
            | Mnemonic::Je
            | Mnemonic::Jne
            | Mnemonic::Jg
            | Mnemonic::Jge
            | Mnemonic::Jl
            | Mnemonic::Jle
            | Mnemonic::Js
            | Mnemonic::Jns
    )
}

/// The full register an instruction's first operand writes, if one.
fn written(insn: &Instruction) -> Option<Register> {
    (insn.op_count() > 0 && insn.op0_kind() == OpKind::Register)
        .then(|| insn.op0_register().full_register())
}

/// The value of operand `i`: a register, an immediate, or a load (whose
/// address is noted when it is an entry of the block).
fn operand(
    insn: &Instruction,
    i: u32,
    regs: &HashMap<Register, Lin>,
    loads: &mut Vec<i64>,
) -> Option<Lin> {
    match insn.op_kind(i) {
        OpKind::Register => regs.get(&insn.op_register(i).full_register()).copied(),
        OpKind::Immediate8
        | OpKind::Immediate8to32
        | OpKind::Immediate8to64
        | OpKind::Immediate32
        | OpKind::Immediate32to64
        | OpKind::Immediate64 => Some(Lin::constant(insn.immediate(i) as i64)),
        OpKind::Memory => {
            // %fs:0x10: the thread's own `struct pthread` (header.self).
            if insn.segment_prefix() == Register::FS {
                return (insn.memory_base() == Register::None
                    && insn.memory_index() == Register::None
                    && insn.memory_displacement64() == 0x10)
                    .then_some(Lin {
                        k: 0,
                        c: 0,
                        tp: true,
                    });
            }
            let at = address(insn, regs)?;
            if at.tp && at.k == 16 {
                loads.push(at.c);
            }
            None
        }
        _ => None,
    }
}

/// The address a memory operand computes.
fn address(insn: &Instruction, regs: &HashMap<Register, Lin>) -> Option<Lin> {
    let reg = |r: Register| match r {
        Register::None => Some(Lin::constant(0)),
        r => regs.get(&r.full_register()).copied(),
    };
    let base = reg(insn.memory_base())?;
    let index = reg(insn.memory_index())?.scale(i64::from(insn.memory_index_scale()))?;
    base.add(index)?
        .add(Lin::constant(insn.memory_displacement64() as i64))
}

fn step(insn: &Instruction, regs: &mut HashMap<Register, Lin>, loads: &mut Vec<i64>) {
    let Some(dst) = written(insn) else {
        // A store, or a compare-like form: still note its load.
        if insn.op_count() > 1 {
            let _ = operand(insn, 1, regs, loads);
        }
        return;
    };
    let value = match insn.mnemonic() {
        Mnemonic::Mov => operand(insn, 1, regs, loads),
        Mnemonic::Lea => address(insn, regs),
        Mnemonic::Add => {
            let src = operand(insn, 1, regs, loads);
            regs.get(&dst).copied().zip(src).and_then(|(a, b)| a.add(b))
        }
        Mnemonic::Shl => match insn.op1_kind() {
            OpKind::Immediate8 => regs
                .get(&dst)
                .copied()
                .and_then(|a| a.scale(1i64.checked_shl(u32::from(insn.immediate8()))?)),
            _ => None,
        },
        _ => None,
    };
    match value {
        Some(v) => regs.insert(dst, v),
        None => regs.remove(&dst),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_glibc_2_36() {
        // pthread_getspecific of Debian 12's glibc 2.36 (libc.so.6).
        let bytes = [
            0x83, 0xff, 0x1f, // cmp edi, 0x1f
            0x77, 0x3b, // ja
            0x89, 0xf8, // mov eax, edi
            0x48, 0x83, 0xc0, 0x31, // add rax, 0x31
            0x48, 0xc1, 0xe0, 0x04, // shl rax, 4
            0x64, 0x48, 0x03, 0x04, 0x25, 0x10, 0, 0, 0, // add rax, fs:[0x10]
            0x48, 0x8b, 0x50, 0x08, // mov rdx, [rax+8]
            0x48, 0x85, 0xd2, // test rdx, rdx
            0x74, 0x57, // je
            0x89, 0xff, // mov edi, edi
            0x48, 0x8d, 0x0d, 0x56, 0xaf, 0x14, 0x00, // lea rcx, [rip+...]
            0x48, 0x8b, 0x30, // mov rsi, [rax]
            0x48, 0xc1, 0xe7, 0x04, // shl rdi, 4
            0x48, 0x39, 0x34, 0x39, // cmp [rcx+rdi], rsi
            0x75, 0x39, // jne
            0x48, 0x89, 0xd0, // mov rax, rdx
            0xc3, // ret
        ];
        let code = Code {
            ip: 0x8ab00,
            bytes: &bytes,
        };
        assert_eq!(offset_from_code(code), Some(0x310));
    }

    #[test]
    fn another_shape_of_the_same_computation() {
        // shl first, then the offset in the load: mov eax, edi;
        // shl rax, 4; add rax, fs:[0x10]; mov rdx, [rax+0x208];
        // mov rsi, [rax+0x200]; ret.
        let bytes = [
            0x89, 0xf8, 0x48, 0xc1, 0xe0, 0x04, 0x64, 0x48, 0x03, 0x04, 0x25, 0x10, 0, 0, 0, 0x48,
            0x8b, 0x90, 0x08, 0x02, 0, 0, 0x48, 0x8b, 0xb0, 0x00, 0x02, 0, 0, 0xc3,
        ];
        assert_eq!(
            offset_from_code(Code {
                ip: 0,
                bytes: &bytes
            }),
            Some(0x200)
        );
    }

    #[test]
    fn no_answer_without_both_fields() {
        // Only `data` loaded: [rax+8] alone could be seq or data.
        let bytes = [
            0x89, 0xf8, 0x48, 0x83, 0xc0, 0x31, 0x48, 0xc1, 0xe0, 0x04, 0x64, 0x48, 0x03, 0x04,
            0x25, 0x10, 0, 0, 0, 0x48, 0x8b, 0x40, 0x08, 0xc3,
        ];
        assert_eq!(
            offset_from_code(Code {
                ip: 0,
                bytes: &bytes
            }),
            None
        );
        assert_eq!(offset_from_code(Code { ip: 0, bytes: &[] }), None);
    }

    #[test]
    fn reads_this_machines_libc() {
        let libc = ["/lib/x86_64-linux-gnu/libc.so.6", "/usr/lib64/libc.so.6"]
            .iter()
            .map(Path::new)
            .find(|p| p.exists());
        if let Some(libc) = libc {
            let off = offset_in(libc).expect("pthread_getspecific read");
            assert!((0x100..0x1000).contains(&off), "{off:#x}");
        }
    }
}
