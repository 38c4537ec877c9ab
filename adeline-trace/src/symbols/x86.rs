//! The one place that decodes x86-64 machine code (iced-x86), for every
//! part of the agent that reads a traced function's instructions:
//!
//! - probe placement (placement.rs): a function's entry block;
//! - exit instructions and leaf functions (exits.rs): a function's whole
//!   extent and its GCC `.cold` fragments;
//! - the Python handler sites (python/sites.rs): the eval loop.
//!
//! It holds what they share: reading code from a file ([`read_code`]),
//! decoding one instruction or a linear sweep ([`decode_at`],
//! [`instructions`]), the direct branch targets of a range and its
//! fragments ([`branch_targets`], [`fragments`]), the kernel's table of
//! which instructions its uprobes emulate, single-step or refuse
//! ([`kernel_handling`], [`is_emulated`], [`uprobe_refusal`]; measured in
//! BENCHMARKS.md, "Which instructions the kernel emulates at a uprobe"), and
//! the formatter every listing uses.
use std::{collections::HashSet, fs::File, io, os::unix::fs::FileExt, path::Path};

use iced_x86::{Decoder, DecoderOptions, Formatter, Instruction, IntelFormatter, OpKind};

use super::elf::{ElfFile, FunctionSymbol};

/// A stretch of code and the address (file offset) of its first byte.
#[derive(Debug, Clone, Copy)]
pub struct Code<'a> {
    pub ip: u64,
    pub bytes: &'a [u8],
}

/// Why the kernel would accept a probe at an instruction but never fire it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal(pub &'static str);

/// How the kernel runs an instruction it does not single-step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emulation {
    /// `push reg` (push_setup_xol_ops).
    Push,
    /// `jmp`, `jcc`, `call rel32` (branch_setup_xol_ops).
    Branch,
    /// A nop form the kernel skips (branch_setup_xol_ops).
    Nop,
}

/// How the kernel would treat the instruction `raw`: emulated, single-
/// stepped (`Ok(None)`), or refused. `raw` holds exactly its bytes.
pub fn kernel_handling(raw: &[u8]) -> Result<Option<Emulation>, Refusal> {
    let mut i = 0;
    let (mut opsize, mut rex) = (false, 0u8);
    while let Some(&b) = raw.get(i) {
        match b {
            0xf0 => return Err(Refusal("its first instruction has a LOCK prefix")),
            0x26 | 0x2e | 0x36 | 0x3e => {
                return Err(Refusal(
                    "its first instruction has a segment-override prefix",
                ))
            }
            0x66 => opsize = true,
            0x67 | 0xf2 | 0xf3 | 0x64 | 0x65 => {}
            _ => break,
        }
        i += 1;
    }
    if let Some(&b @ 0x40..=0x4f) = raw.get(i) {
        rex = b;
        i += 1;
    }
    let opcode = &raw[i.min(raw.len())..];
    // The kernel's own nops (x86_nops[len], 64-bit), compared byte for byte.
    if X86_NOPS.get(raw.len()).is_some_and(|n| *n == raw) {
        return Ok(Some(Emulation::Nop));
    }
    let branch = match opcode {
        [0x90] => {
            // "prefix* + nop". With REX.B it is `xchg r8, rax`, which 6.18
            // would wrongly skip: never call it emulated.
            return Ok((rex & 1 == 0).then_some(Emulation::Nop));
        }
        [0xeb, _] | [0xe9, ..] | [0xe8, ..] | [0x70..=0x7f, _] | [0x0f, 0x80..=0x8f, ..] => true,
        [0x50..=0x57] => {
            return Ok(match (i, raw.first()) {
                (0, _) | (1, Some(0x41)) => Some(Emulation::Push),
                _ => None,
            })
        }
        _ => false,
    };
    if branch {
        if opsize {
            return Err(Refusal(
                "its first instruction is a branch with an operand-size (0x66) prefix",
            ));
        }
        return Ok(Some(Emulation::Branch));
    }
    Ok(None)
}

/// The kernel's `x86_nops` table (arch/x86/include/asm/nops.h, 64-bit),
/// indexed by length.
pub(crate) const X86_NOPS: [&[u8]; 9] = [
    &[],
    &[0x90],
    &[0x66, 0x90],
    &[0x0f, 0x1f, 0x00],
    &[0x0f, 0x1f, 0x40, 0x00],
    &[0x0f, 0x1f, 0x44, 0x00, 0x00],
    &[0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00],
    &[0x0f, 0x1f, 0x80, 0x00, 0x00, 0x00, 0x00],
    &[0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00],
];

/// Whether the kernel refuses a probe on the first instruction of `code`
/// (which need not hold more than that instruction).
pub fn uprobe_refusal(code: &[u8]) -> Option<&'static str> {
    let mut decoder = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
    let insn = decoder.decode();
    let len = if insn.is_invalid() {
        code.len().min(15)
    } else {
        insn.len()
    };
    kernel_handling(&code[..len]).err().map(|r| r.0)
}

/// Whether the kernel emulates the instruction `raw` (exactly its bytes)
/// at a uprobe: one trap instead of a trap and a single-step.
pub fn is_emulated(raw: &[u8]) -> bool {
    matches!(kernel_handling(raw), Ok(Some(_)))
}

/// The instruction at `at` in `code` and its bytes (None: outside the
/// code, or it does not decode).
pub fn decode_at<'a>(code: Code<'a>, at: u64) -> Option<(Instruction, &'a [u8])> {
    let start = usize::try_from(at.checked_sub(code.ip)?).ok()?;
    let bytes = code.bytes.get(start..)?;
    let mut decoder = Decoder::with_ip(64, bytes, at, DecoderOptions::NONE);
    let insn = decoder.decode();
    (!insn.is_invalid()).then(|| (insn, &bytes[..insn.len()]))
}

/// Every instruction of `code` in address order (a linear sweep), with its
/// bytes; an undecodable one comes out as an invalid [`Instruction`].
pub fn instructions(code: Code<'_>) -> impl Iterator<Item = (Instruction, &[u8])> {
    let mut decoder = Decoder::with_ip(64, code.bytes, code.ip, DecoderOptions::NONE);
    std::iter::from_fn(move || {
        decoder.can_decode().then(|| {
            let pos = decoder.position();
            let insn = decoder.decode();
            let end = (pos + insn.len().max(1)).min(code.bytes.len());
            (insn, &code.bytes[pos..end])
        })
    })
}

/// Addresses that direct branches in `code` jump to (or call).
pub fn branch_targets<'a>(code: impl Iterator<Item = Code<'a>>) -> HashSet<u64> {
    let mut out = HashSet::new();
    let mut insn = Instruction::default();
    for c in code {
        let mut decoder = Decoder::with_ip(64, c.bytes, c.ip, DecoderOptions::NONE);
        while decoder.can_decode() {
            decoder.decode_out(&mut insn);
            if matches!(
                insn.op0_kind(),
                OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64
            ) {
                out.insert(insn.near_branch_target());
            }
        }
    }
    out
}

/// GCC's split fragments of `func` in `elf` (`f.cold`, `f.part.0`): their
/// file offset and size. `cold_only`: only the `.cold` parts, which are
/// entered by a jump and return for the function (a `.part` is called).
pub fn fragments(elf: &ElfFile, func: &FunctionSymbol, cold_only: bool) -> Vec<(u64, u64)> {
    let prefix = format!("{}.", func.raw);
    elf.fragments
        .iter()
        .filter(|(name, _, _)| {
            name.strip_prefix(&prefix)
                .is_some_and(|rest| !cold_only || rest.split('.').next() == Some("cold"))
        })
        .map(|&(_, offset, size)| (offset, size))
        .collect()
}

/// Code read from a file.
#[derive(Debug)]
pub struct FileCode {
    /// File offset of the first byte.
    pub offset: u64,
    pub bytes: Vec<u8>,
}

/// Largest function read (bigger ones are read this far).
const MAX_FUNCTION_BYTES: u64 = 4 << 20;

/// Reads `len` bytes at `offset` of `path` (fewer at the end of the file).
pub fn read_code(path: &Path, offset: u64, len: u64) -> io::Result<FileCode> {
    let file = File::open(path)?;
    let mut bytes = vec![0u8; len.min(MAX_FUNCTION_BYTES) as usize];
    let mut got = 0;
    while got < bytes.len() {
        match file.read_at(&mut bytes[got..], offset + got as u64)? {
            0 => break,
            n => got += n,
        }
    }
    bytes.truncate(got);
    Ok(FileCode { offset, bytes })
}

/// The Intel-syntax formatter every listing of an instruction uses
/// (`push rbx`, `je 0x98fb8`).
pub fn formatter() -> IntelFormatter {
    let mut f = IntelFormatter::new();
    let o = f.options_mut();
    o.set_hex_prefix("0x");
    o.set_hex_suffix("");
    o.set_uppercase_hex(false);
    o.set_branch_leading_zeros(false);
    o.set_show_branch_size(false);
    o.set_space_after_operand_separator(true);
    o.set_rip_relative_addresses(true);
    f
}

/// `insn` as text.
pub fn format_insn(f: &mut IntelFormatter, insn: &Instruction) -> String {
    let mut s = String::new();
    f.format(insn, &mut s);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_handling_follows_the_measured_table() {
        let emulated = |b: &[u8]| kernel_handling(b).unwrap();
        for nop in &X86_NOPS[1..] {
            assert_eq!(emulated(nop), Some(Emulation::Nop), "{nop:x?}");
        }
        assert_eq!(emulated(&[0xf3, 0x90]), Some(Emulation::Nop)); // pause
        assert_eq!(emulated(&[0x41, 0x90]), None); // xchg r8d, eax
        assert_eq!(emulated(&[0x53]), Some(Emulation::Push));
        assert_eq!(emulated(&[0x41, 0x54]), Some(Emulation::Push));
        assert_eq!(emulated(&[0x48, 0x53]), None); // REX.W push
        assert_eq!(emulated(&[0x6a, 0x01]), None); // push imm8
        assert_eq!(emulated(&[0xeb, 0x00]), Some(Emulation::Branch));
        assert_eq!(emulated(&[0xe9, 0, 0, 0, 0]), Some(Emulation::Branch));
        assert_eq!(emulated(&[0xe8, 0, 0, 0, 0]), Some(Emulation::Branch));
        assert_eq!(emulated(&[0x74, 0x00]), Some(Emulation::Branch));
        assert_eq!(emulated(&[0x0f, 0x84, 0, 0, 0, 0]), Some(Emulation::Branch));
        assert_eq!(emulated(&[0xf3, 0x0f, 0x1e, 0xfa]), None); // endbr64
        assert_eq!(emulated(&[0xc3]), None); // ret
        assert_eq!(emulated(&[0x0f, 0x1f, 0xc0]), None); // nop eax
        assert_eq!(emulated(&[0x66, 0x0f, 0x1f, 0x84, 0, 0, 0, 0, 0]), None);
        assert!(kernel_handling(&[0x66, 0x2e, 0x0f, 0x1f, 0x84, 0, 0, 0, 0, 0]).is_err());
        assert!(kernel_handling(&[0x66, 0xe9, 0, 0]).is_err());
    }

    #[test]
    fn accepts_ordinary_first_instructions() {
        for code in [
            &[0x55][..],                                 // push %rbp
            &[0xf3, 0x0f, 0x1e, 0xfa],                   // endbr64
            &[0x48, 0x89, 0xe5],                         // mov %rsp,%rbp
            &[0x89, 0xf8],                               // mov %edi,%eax
            &[0x66, 0x90],                               // xchg %ax,%ax
            &[0x64, 0x48, 0x8b, 0x04, 0x25, 0, 0, 0, 0], // mov %fs:..,%rax
        ] {
            assert_eq!(uprobe_refusal(code), None, "{code:x?}");
        }
        assert_eq!(uprobe_refusal(&[]), None);
    }

    #[test]
    fn refuses_lock_and_segment_prefixes() {
        // lock addq $1, x(%rip)
        assert_eq!(
            uprobe_refusal(&[0xf0, 0x48, 0x83, 0x05, 0, 0, 0, 0, 1]),
            Some("its first instruction has a LOCK prefix")
        );
        // data16 lock (prefix order varies)
        assert_eq!(
            uprobe_refusal(&[0x66, 0xf0, 0xff, 0x07]),
            Some("its first instruction has a LOCK prefix")
        );
        assert_eq!(
            uprobe_refusal(&[0x2e, 0xff, 0xe0]),
            Some("its first instruction has a segment-override prefix")
        );
    }

    #[test]
    fn a_sweep_and_a_single_decode_agree() {
        // push rbp; test edi,edi; je +2; ret; (bad byte)
        let bytes = [0x55, 0x85, 0xff, 0x74, 0x02, 0xc3, 0x06];
        let code = Code {
            ip: 0x1000,
            bytes: &bytes,
        };
        let sweep: Vec<(u64, usize)> = instructions(code)
            .map(|(i, b)| (if i.is_invalid() { 0 } else { i.ip() }, b.len()))
            .collect();
        assert_eq!(
            sweep,
            [(0x1000, 1), (0x1001, 2), (0x1003, 2), (0x1005, 1), (0, 1)]
        );
        assert_eq!(
            decode_at(code, 0x1003).map(|(i, b)| (i.len(), b)),
            Some((2, &bytes[3..5]))
        );
        assert!(decode_at(code, 0x1006).is_none());
        assert!(decode_at(code, 0x0fff).is_none());
        assert_eq!(
            branch_targets(std::iter::once(code)),
            HashSet::from([0x1007])
        );
        assert!(is_emulated(&[0x74, 0x02]) && !is_emulated(&[0xc3]));
    }
}
