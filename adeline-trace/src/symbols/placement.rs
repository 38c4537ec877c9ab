//! Where in a function its uprobes go, decided by decoding its entry block.
//!
//! The kernel's x86-64 uprobes replace the probed instruction with `int3`
//! and then either emulate the original instruction in the trap handler or
//! copy it out of line and single-step it (a second trap). On this kind of
//! machine (Linux 6.18, VM) a hit costs about 1 us when emulated and 9-15 us
//! when single-stepped; BENCHMARKS.md ("Which instructions the kernel
//! emulates at a uprobe") has the measured table and the command. The kernel
//! emulates (arch/x86/kernel/uprobes.c, 6.18):
//!
//! - `branch_setup_xol_ops`: `jmp rel8/rel32`, `call rel32`, `jcc
//!   rel8/rel32` (refused with a 0x66 prefix), any `0x90` opcode with
//!   prefixes (`nop`, `xchg ax,ax`, `pause`), and the kernel's own nop
//!   patterns of 1-8 bytes (`x86_nops[len]`: `nopl (%rax)`, `nopl
//!   0(%rax)`, `nopl 0(%rax,%rax,1)`, `nopw 0(%rax,%rax,1)`, the 7- and
//!   8-byte `nopl`); the 5-byte nops are further "optimized" into a call to
//!   a trampoline (`can_optimize`), which costs the same here;
//! - `push_setup_xol_ops`: `push reg` (0x50-0x57, alone or after REX 0x41).
//!
//! Everything else, `endbr64`, `push imm`, `mov`, `sub rsp`, `test`, `cmp`,
//! `ret`, longer or register-form `nop`s, is single-stepped, and an
//! instruction with a LOCK or ES/CS/SS/DS segment prefix is refused
//! (`is_prefix_bad`): the probe would never fire.
//!
//! A function's entry probe and its return probe (a uretprobe is installed
//! as a uprobe at the same place, which replaces the return address at
//! `[rsp]` when hit) may sit on any instruction that
//!
//! 1. comes before the stack pointer moves (a `push` or `call` moves it
//!    only after it executes, so it may itself be the site),
//! 2. runs on every call: straight-line from the entry, with no branch
//!    before it (a `jmp`/`jcc`/`call` may itself be the site),
//! 3. is, like every instruction between the entry and it, not the target
//!    of a direct branch inside the function (or its `.cold` part), so it
//!    runs once per call,
//! 4. comes before any instruction that overwrites a register the probe's
//!    program reads (argument registers for gauges and the allocator probes).
//!
//! [`place`] picks the first emulated instruction that satisfies them, and
//! otherwise the entry itself. [`place_symbol`] does it for a function of an
//! ELF file (what stages, gauges and alloc mode use); [`place_in_file`] for
//! any code address inside any range of a file. The Python handler probes
//! place a site inside the interpreter loop this way: for a handler label
//! at file offset `label` inside `_PyEval_EvalFrameDefault` (file offset
//! `eval`, `size` bytes from its symbol), an entry-only probe that reads
//! the frame from `rbx`:
//!
//! ```no_run
//! # use adeline_trace::symbols::placement::{place_in_file, Needs, Register};
//! # let (path, eval, size, label) = (std::path::Path::new("libpython3.12.so"), 0, 0, 0);
//! let needs = Needs { stack: false, registers: &[Register::RBX] };
//! let site = place_in_file(path, eval, size, label, &[], &needs)?.expect("refused");
//! let probe_at = label + site.offset; // site.insn, site.reason say why
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! (`stack: false` because a mid-function entry probe has no return address
//! to protect; every branch of the whole range counts for rule 3.)
use std::collections::HashSet;
use std::fmt;
use std::io;
use std::path::Path;

use iced_x86::{
    Decoder, DecoderOptions, FlowControl, Instruction, InstructionInfoFactory, OpAccess,
};
use serde::Serialize;

use super::x86::{
    branch_targets, format_insn, formatter, fragments, kernel_handling, read_code, FileCode,
};
pub use super::x86::{Code, Emulation, Refusal};

/// x86 registers, for [`Needs::registers`].
pub use iced_x86::Register;

/// What the programs attached at a site need to find there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Needs {
    /// The stack pointer must not have moved: a return probe replaces the
    /// return address at `[rsp]`. Every function probe asks for this.
    pub stack: bool,
    /// Registers whose values at the entry the programs read at the site.
    pub registers: &'static [Register],
}

/// The System V x86-64 integer argument registers, in order.
pub const ARG_REGISTERS: [Register; 6] = [
    Register::RDI,
    Register::RSI,
    Register::RDX,
    Register::RCX,
    Register::R8,
    Register::R9,
];

impl Needs {
    /// A stage (entry + return timing) or a return-value gauge.
    pub const CALL: Needs = Needs {
        stack: true,
        registers: &[],
    };
    /// Alloc mode's allocator entry (reads the first three arguments).
    pub const ALLOC_ARGS: Needs = Needs {
        stack: true,
        registers: &[Register::RDI, Register::RSI, Register::RDX],
    };
    /// Alloc mode's `free`/`munmap` entry (reads the first argument).
    pub const FIRST_ARG: Needs = Needs {
        stack: true,
        registers: &[Register::RDI],
    };

    /// A gauge that reads argument `n` (0-5) at the entry.
    pub fn arg(n: u8) -> Needs {
        Needs {
            stack: true,
            registers: ARG_REGISTERS
                .get(usize::from(n)..=usize::from(n))
                .unwrap_or(&[]),
        }
    }
}

/// Where the probe goes, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Placement {
    /// Bytes from the entry (the function's first byte) to the probe.
    pub offset: u64,
    /// The probed instruction, Intel syntax (`push rbx`).
    pub insn: String,
    /// The kernel emulates it (no single-step trap).
    pub emulated: bool,
    /// Why this instruction.
    #[serde(serialize_with = "as_text")]
    pub reason: Reason,
}

impl Placement {
    /// `+4 push rbx`, as `list` shows it.
    pub fn short(&self) -> String {
        format!("+{} {}", self.offset, self.insn)
    }
}

/// Why a placement sits where it does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// The first instruction the kernel emulates on the entry path.
    Emulated(Emulation),
    /// No usable emulated instruction: the probe stays at the entry.
    Fallback(Fallback),
    /// An exit instruction of the function (`ret`, a tail-call jump),
    /// probed where the function's frame is gone (probes/unwind.rs).
    Exit,
    /// A site inside an interpreter's eval loop (python/sites.rs picks the
    /// first emulated instruction of a handler by the same rules).
    Interpreter,
}

/// Why the entry itself was kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fallback {
    /// An instruction moves the stack pointer before any emulated one.
    StackMoves { at: u64, insn: String },
    /// The straight-line path ends (indirect branch, `ret`, `syscall`,
    /// string instruction) before any emulated instruction.
    PathEnds { at: u64, insn: String },
    /// An instruction before any emulated one is a branch target.
    BranchTarget { at: u64 },
    /// An instruction overwrites a register the programs read.
    Clobbers {
        at: u64,
        insn: String,
        register: Register,
    },
    /// The code ends (or stops decoding) before any emulated instruction.
    NoEmulated,
    /// The function's size is unknown, so its branches cannot be checked.
    SizeUnknown,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Emulated(Emulation::Push) => write!(f, "emulated push"),
            Reason::Emulated(Emulation::Branch) => write!(f, "emulated branch"),
            Reason::Emulated(Emulation::Nop) => write!(f, "emulated nop"),
            Reason::Fallback(why) => write!(f, "entry (single-stepped): {why}"),
            Reason::Exit => write!(f, "exit instruction"),
            Reason::Interpreter => write!(f, "interpreter site"),
        }
    }
}

impl fmt::Display for Fallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fallback::StackMoves { at, insn } => {
                write!(f, "`{insn}` at +{at} moves the stack pointer first")
            }
            Fallback::PathEnds { at, insn } => {
                write!(f, "`{insn}` at +{at} leaves the straight-line path first")
            }
            Fallback::BranchTarget { at } => {
                write!(f, "+{at} is a branch target inside the function")
            }
            Fallback::Clobbers { at, insn, register } => write!(
                f,
                "`{insn}` at +{at} overwrites {}, which the probe reads",
                format!("{register:?}").to_lowercase()
            ),
            Fallback::NoEmulated => write!(f, "no emulated instruction before the code ends"),
            Fallback::SizeUnknown => write!(f, "the function's size is unknown"),
        }
    }
}

fn as_text<S: serde::Serializer>(r: &Reason, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(r)
}

/// Chooses the probe site for code entered at `entry` (an address inside
/// `func`): the first instruction the kernel emulates that satisfies the
/// rules in this module's documentation, or `entry`. `func` is the whole
/// function (or range) whose direct branches may target the entry path;
/// `others` holds more code whose branches count too (a `.cold` part).
/// Errs when the kernel would refuse a probe at `entry` itself.
pub fn place(
    func: Code<'_>,
    entry: u64,
    others: &[Code<'_>],
    needs: &Needs,
) -> Result<Placement, Refusal> {
    let targets = branch_targets(std::iter::once(func).chain(others.iter().copied()));
    place_among(func, entry, &targets, needs)
}

/// [`place`] with the branch targets given: computed once for many sites
/// in one range, plus any the decoder cannot see (the Python eval loop's
/// computed-goto handlers, python/sites.rs).
pub fn place_among(
    func: Code<'_>,
    entry: u64,
    targets: &HashSet<u64>,
    needs: &Needs,
) -> Result<Placement, Refusal> {
    let start = entry.checked_sub(func.ip).unwrap_or(u64::MAX) as usize;
    let bytes = func.bytes.get(start..).unwrap_or(&[]);
    let mut decoder = Decoder::with_ip(64, bytes, entry, DecoderOptions::NONE);
    let mut formatter = formatter();
    let mut info = InstructionInfoFactory::new();
    let mut first: Option<(String, bool)> = None;
    let mut insn = Instruction::default();
    let fallback = loop {
        if !decoder.can_decode() {
            break Fallback::NoEmulated;
        }
        decoder.decode_out(&mut insn);
        if insn.is_invalid() {
            break Fallback::NoEmulated;
        }
        let at = insn.ip() - entry;
        let raw = &bytes[at as usize..at as usize + insn.len()];
        let text = format_insn(&mut formatter, &insn);
        let handling = kernel_handling(raw);
        if at == 0 {
            handling?;
            first = Some((text.clone(), matches!(handling, Ok(Some(_)))));
        } else if targets.contains(&insn.ip()) {
            break Fallback::BranchTarget { at };
        }
        if let Ok(Some(how)) = handling {
            return Ok(Placement {
                offset: at,
                insn: text,
                emulated: true,
                reason: Reason::Emulated(how),
            });
        }
        if insn.flow_control() != FlowControl::Next || is_string(&insn) {
            break Fallback::PathEnds { at, insn: text };
        }
        let used = info.info(&insn).used_registers();
        let writes = |reg: Register| {
            used.iter().any(|u| {
                u.register().full_register() == reg
                    && matches!(
                        u.access(),
                        OpAccess::Write
                            | OpAccess::CondWrite
                            | OpAccess::ReadWrite
                            | OpAccess::ReadCondWrite
                    )
            })
        };
        if needs.stack && writes(Register::RSP) {
            break Fallback::StackMoves { at, insn: text };
        }
        if let Some(&register) = needs.registers.iter().find(|&&r| writes(r)) {
            break Fallback::Clobbers {
                at,
                insn: text,
                register,
            };
        }
    };
    let (insn, emulated) = first.unwrap_or_default();
    Ok(Placement {
        offset: 0,
        insn,
        emulated,
        reason: Reason::Fallback(fallback),
    })
}

/// [`place`] for a whole function: `code` holds its bytes from the entry.
pub fn place_function(code: &[u8], needs: &Needs) -> Result<Placement, Refusal> {
    place(Code { ip: 0, bytes: code }, 0, &[], needs)
}

/// `movs`, `stos`, `cmps`...: may run long (with `rep`) before the site.
fn is_string(insn: &Instruction) -> bool {
    insn.is_string_instruction()
}

/// Places a probe for the code at file offset `entry` of `path`, inside
/// the function (or range) at `range_offset` of `range_len` bytes (0:
/// unknown, then only an emulated instruction at `entry` itself is used).
/// `others` are more (offset, length) ranges whose branches count (the
/// function's `.cold` part). Errors: the file cannot be read (`Err(Err)`),
/// or the kernel refuses `entry` (`Ok(Err)`).
pub fn place_in_file(
    path: &Path,
    range_offset: u64,
    range_len: u64,
    entry: u64,
    others: &[(u64, u64)],
    needs: &Needs,
) -> io::Result<Result<Placement, Refusal>> {
    if range_len == 0 {
        let code = read_code(path, entry, 16)?;
        let mut p = match place_function(&code.bytes[..code.bytes.len().min(16)], needs) {
            Ok(p) => p,
            Err(r) => return Ok(Err(r)),
        };
        if p.offset != 0 || !p.emulated {
            p = Placement {
                offset: 0,
                insn: first_insn_text(&code.bytes, entry),
                emulated: false,
                reason: Reason::Fallback(Fallback::SizeUnknown),
            };
        }
        return Ok(Ok(p));
    }
    let func = read_code(path, range_offset, range_len)?;
    let others: Vec<FileCode> = others
        .iter()
        .map(|&(o, l)| read_code(path, o, l))
        .collect::<io::Result<_>>()?;
    let others: Vec<Code> = others
        .iter()
        .map(|c| Code {
            ip: c.offset,
            bytes: &c.bytes,
        })
        .collect();
    Ok(place(
        Code {
            ip: func.offset,
            bytes: &func.bytes,
        },
        entry,
        &others,
        needs,
    ))
}

/// The placement of a probe on the instruction at file offset `at` of
/// `path` itself, chosen for `reason` (an exit instruction, an interpreter
/// site), or why the kernel refuses it.
pub fn on_instruction(
    path: &Path,
    at: u64,
    reason: Reason,
) -> io::Result<Result<Placement, Refusal>> {
    let code = read_code(path, at, 16)?;
    let mut decoder = Decoder::with_ip(64, &code.bytes, at, DecoderOptions::NONE);
    let insn = decoder.decode();
    let len = if insn.is_invalid() {
        code.bytes.len().min(15)
    } else {
        insn.len()
    };
    Ok(
        kernel_handling(&code.bytes[..len]).map(|emulation| Placement {
            offset: 0,
            insn: format_insn(&mut formatter(), &insn),
            emulated: emulation.is_some(),
            reason,
        }),
    )
}

fn first_insn_text(code: &[u8], ip: u64) -> String {
    let mut decoder = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let insn = decoder.decode();
    format_insn(&mut formatter(), &insn)
}

/// Places the probes of `func`, a function of `elf` (read from `path`, the
/// file attached to), counting the branches of its split fragments
/// (`.cold`, `.part.N`) too.
/// `Ok(Err)` when the kernel would refuse a probe at its entry.
pub fn place_symbol(
    path: &Path,
    elf: &super::ElfFile,
    func: &super::FunctionSymbol,
    needs: &Needs,
) -> Result<Result<Placement, Refusal>, super::TargetError> {
    let others = fragments(elf, func, false);
    place_in_file(
        path,
        func.file_offset,
        func.size,
        func.file_offset,
        &others,
        needs,
    )
    .map_err(|e| super::TargetError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::symbols::{testutil, ElfFile};

    /// Functions with the prologues the rules distinguish, as gcc -O2
    /// emits them (the tests check the prologue before the placement).
    const FIXTURE: &str = r#"
extern long ext(long);
extern char g_flag;
extern long g_total;
/* endbr64; push rbx */
long push_first(long x) { long y = ext(x); return y + x; }
/* endbr64; test rdi,rdi; je */
long test_first(long *p) { if (!p) return 0; return ext(*p) + 1; }
/* endbr64; mov rax,[rip+g_flag]; push rbx */
long mov_then_push(long a, long b) { long r; if (g_flag) r = ext(a); else r = ext(b); return r + a; }
/* endbr64; mov edi,edi; push rbx: the mov rewrites the first argument */
long widen(unsigned n) { long s = (long)n * 7; return ext(s) + s; }
/* endbr64; lea; ret: nothing emulated */
long leaf(long a) { return a * 3 + 1; }
/* endbr64; mov; mov; jmp ext: a tail call */
long tail(long a) { g_total = a; return ext(a); }
/* endbr64; nop [rax]; L: mov rax,[rdi]; test; je L: the loop is aligned */
long spin(volatile long *p) { while (*p == 0) {} return *p; }
/* endbr64; L: mov rax,[rdi]; test; je L: the back edge targets +4 */
__attribute__((optimize("align-loops=1")))
long spin_tight(volatile long *p) { while (*p == 0) {} return *p; }
/* a call to a cold function goes to the split fragment cold_user.cold */
extern void fail(long) __attribute__((cold, noreturn));
long cold_user(long x) { if (x == 42) fail(x); return x * 3; }
"#;

    struct Fixture {
        _dir: tempfile::TempDir,
        path: std::path::PathBuf,
        elf: ElfFile,
    }

    fn build(name: &str, args: &[&str]) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let mut all = vec!["-O2", "-fPIC", "-shared"];
        all.extend_from_slice(args);
        let path = testutil::compile(dir.path(), name, "gcc", FIXTURE, &all);
        let elf = ElfFile::open(&path).unwrap();
        Fixture {
            _dir: dir,
            path,
            elf,
        }
    }

    fn cet() -> &'static Fixture {
        static F: std::sync::OnceLock<Fixture> = std::sync::OnceLock::new();
        F.get_or_init(|| build("cet.so", &["-fcf-protection=full"]))
    }

    impl Fixture {
        fn place(&self, func: &str, needs: &Needs) -> Placement {
            let f = self.elf.matching(func).unwrap()[0];
            place_symbol(&self.path, &self.elf, f, needs)
                .unwrap()
                .unwrap()
        }

        /// The function's first instructions, as the decoder prints them.
        fn prologue(&self, func: &str, n: usize) -> Vec<String> {
            let f = self.elf.matching(func).unwrap()[0];
            let code = read_code(&self.path, f.file_offset, f.size).unwrap();
            let mut decoder = Decoder::new(64, &code.bytes, DecoderOptions::NONE);
            let mut fmt = formatter();
            (0..n)
                .map(|_| format_insn(&mut fmt, &decoder.decode()))
                .collect()
        }
    }

    fn starts(p: &[String], want: &[&str]) -> bool {
        p.iter()
            .zip(want)
            .all(|(have, want)| have.starts_with(want))
    }

    #[test]
    fn cet_push_first_probes_the_push() {
        let fx = cet();
        assert!(starts(
            &fx.prologue("push_first", 2),
            &["endbr64", "push rbx"]
        ));
        let p = fx.place("push_first", &Needs::CALL);
        assert_eq!(
            (p.offset, p.insn.as_str(), p.emulated),
            (4, "push rbx", true)
        );
        assert_eq!(p.reason, Reason::Emulated(Emulation::Push));
        assert_eq!(p.short(), "+4 push rbx");
    }

    #[test]
    fn cet_test_then_je_probes_the_je() {
        let fx = cet();
        assert!(starts(
            &fx.prologue("test_first", 3),
            &["endbr64", "test rdi, rdi", "je "]
        ));
        let p = fx.place("test_first", &Needs::CALL);
        assert_eq!((p.offset, p.emulated), (7, true));
        assert!(p.insn.starts_with("je 0x"), "{}", p.insn);
        assert_eq!(p.reason, Reason::Emulated(Emulation::Branch));
        // An entry-only probe reading the first argument: rdi is intact.
        assert_eq!(fx.place("test_first", &Needs::FIRST_ARG).offset, 7);
    }

    #[test]
    fn cet_mov_then_push_probes_the_push() {
        let fx = cet();
        let prologue = fx.prologue("mov_then_push", 3);
        assert!(
            starts(&prologue, &["endbr64", "mov rax, ", "push rbx"]),
            "{prologue:?}"
        );
        let p = fx.place("mov_then_push", &Needs::CALL);
        assert_eq!((p.offset, p.insn.as_str()), (11, "push rbx"));
        // Both arguments survive the mov.
        assert_eq!(fx.place("mov_then_push", &Needs::arg(1)).offset, 11);
    }

    #[test]
    fn a_rewritten_argument_keeps_its_gauge_at_the_entry() {
        let fx = cet();
        assert!(starts(
            &fx.prologue("widen", 3),
            &["endbr64", "mov edi, edi", "push rbx"]
        ));
        assert_eq!(fx.place("widen", &Needs::CALL).short(), "+6 push rbx");
        let p = fx.place("widen", &Needs::arg(0));
        assert_eq!(
            (p.offset, p.insn.as_str(), p.emulated),
            (0, "endbr64", false)
        );
        assert_eq!(
            p.reason.to_string(),
            "entry (single-stepped): `mov edi, edi` at +4 overwrites rdi, which the probe reads"
        );
        // The second argument is untouched.
        assert_eq!(fx.place("widen", &Needs::arg(1)).offset, 6);
    }

    #[test]
    fn nothing_emulated_falls_back_to_the_entry() {
        let p = cet().place("leaf", &Needs::CALL);
        assert_eq!(
            (p.offset, p.insn.as_str(), p.emulated),
            (0, "endbr64", false)
        );
        assert!(
            matches!(&p.reason, Reason::Fallback(Fallback::PathEnds { insn, .. }) if insn == "ret"),
            "{:?}",
            p.reason
        );
    }

    #[test]
    fn a_tail_call_jmp_is_a_site() {
        let fx = cet();
        let p = fx.place("tail", &Needs::CALL);
        assert!(p.insn.starts_with("jmp 0x"), "{p:?}");
        assert_eq!(p.reason, Reason::Emulated(Emulation::Branch));
        assert!(p.offset > 4);
    }

    #[test]
    fn a_loop_back_to_the_second_instruction_falls_back_to_the_entry() {
        let fx = cet();
        let f = fx.elf.matching("spin_tight").unwrap()[0];
        let code = read_code(&fx.path, f.file_offset, f.size).unwrap();
        // The back edge: a je to +4, right after endbr64.
        let targets = branch_targets(std::iter::once(Code {
            ip: 0,
            bytes: &code.bytes,
        }));
        assert!(targets.contains(&4), "{:?}", fx.prologue("spin_tight", 4));
        let p = fx.place("spin_tight", &Needs::CALL);
        assert_eq!(p.offset, 0);
        assert_eq!(p.reason, Reason::Fallback(Fallback::BranchTarget { at: 4 }));
        // With the loop aligned, the alignment nop before the loop head
        // runs once per call: it is the site.
        assert!(starts(
            &fx.prologue("spin", 3),
            &["endbr64", "nop [rax]", "mov rax, [rdi]"]
        ));
        let p = fx.place("spin", &Needs::CALL);
        assert_eq!(
            (p.short(), p.reason),
            ("+4 nop [rax]".to_string(), Reason::Emulated(Emulation::Nop))
        );
    }

    #[test]
    fn split_fragments_are_scanned_with_their_function() {
        let fx = cet();
        let cold = fx
            .elf
            .fragments
            .iter()
            .find(|(name, _, _)| name == "cold_user.cold")
            .unwrap_or_else(|| panic!("no cold_user.cold in {:?}", fx.elf.fragments));
        assert!(cold.2 > 0);
        // Its branches are read (none jumps back into the entry block).
        let p = fx.place("cold_user", &Needs::CALL);
        assert!(p.emulated && p.offset > 0, "{p:?}");
    }

    #[test]
    fn non_cet_push_rbp_stays_at_the_entry() {
        let fx = build(
            "plain.so",
            &["-fcf-protection=none", "-fno-omit-frame-pointer"],
        );
        assert!(starts(
            &fx.prologue("push_first", 2),
            &["push rbp", "mov rbp, rsp"]
        ));
        let p = fx.place("push_first", &Needs::CALL);
        assert_eq!(
            (p.offset, p.insn.as_str(), p.emulated),
            (0, "push rbp", true)
        );
        assert_eq!(p.reason, Reason::Emulated(Emulation::Push));
    }

    #[test]
    fn a_refused_entry_refuses_the_whole_placement() {
        let code = [0xf0, 0xff, 0x07, 0xc3]; // lock incl (%rdi); ret
        assert!(place_function(&code, &Needs::CALL).is_err());
    }

    #[test]
    fn inside_a_range_only_its_own_branches_count() {
        // 0: jmp +2 (to 4) | 2: nop; nop | 4: mov eax, 1 | 9: push rbx
        let code = [0xeb, 0x02, 0x90, 0x90, 0xb8, 1, 0, 0, 0, 0x53, 0x5b, 0xc3];
        let func = Code {
            ip: 0x1000,
            bytes: &code,
        };
        // From 4 the push at 9 is the site: nothing targets 5..=9.
        let p = place(func, 0x1004, &[], &Needs::CALL).unwrap();
        assert_eq!(p.short(), "+5 push rbx");
        // A branch in other code (a .cold part) to 9 rules it out.
        let cold = [0xe9, 0, 0, 0, 0];
        let rel = (0x1009i64 - (0x2000 + 5)) as i32;
        let mut cold = cold;
        cold[1..].copy_from_slice(&rel.to_le_bytes());
        let other = Code {
            ip: 0x2000,
            bytes: &cold,
        };
        let p = place(func, 0x1004, &[other], &Needs::CALL).unwrap();
        assert_eq!(p.reason, Reason::Fallback(Fallback::BranchTarget { at: 5 }));
        // Without the stack rule (a mid-function entry probe) a `sub rsp`
        // is walked past like any other instruction.
        let code = [0x48, 0x83, 0xec, 0x08, 0x90, 0xc3];
        let mid = Needs {
            stack: false,
            registers: &[],
        };
        assert_eq!(place_function(&code, &mid).unwrap().short(), "+4 nop");
        let p = place_function(&code, &Needs::CALL).unwrap();
        assert_eq!(
            p.reason.to_string(),
            "entry (single-stepped): `sub rsp, 8` at +0 moves the stack pointer first"
        );
    }
}
