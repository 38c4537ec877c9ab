//! Names for the profiler's addresses, with blazesym.
//!
//! User addresses are only meaningful while their process lives, so they
//! are resolved at ingest (the drain loop, for each address seen for the
//! first time): the bytes before a return address tell whether it follows
//! a call instruction (a frame-pointer walk through code without frame
//! pointers reads garbage, and such a frame is never shown), and blazesym's
//! normalizer turns the address into (ELF file, file offset). Names come
//! later, when a profile is rendered: ELF symbols and DWARF (with inlined
//! functions), demangled, cached per (file, offset). Kernel addresses are
//! named from kallsyms. Python frames (code objects of a CPython process)
//! are read at ingest too: `co_qualname`, `co_filename`, `co_firstlineno`
//! and the line table, which gives the line of the instruction each frame
//! was at (the `def` line when the kernel could not tell).
use std::{collections::HashMap, path::PathBuf, sync::Arc};

use blazesym::{
    normalize::{NormalizeOpts, Normalizer, UserMeta},
    symbolize::{
        source::{Elf, Kernel, Source},
        Input, Symbolized, Symbolizer,
    },
    Pid,
};

use adeline_trace_common::profile::{py_code, py_instr};

use crate::python::{
    lines::line_at,
    memory::Mem,
    sampling::{CodeNames, LINE_TABLE_MAX},
};

/// What is known of one user address of one process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddrInfo {
    /// The instruction before it is a call (only meaningful for return
    /// addresses; false when the bytes could not be read).
    pub after_call: bool,
    /// The ELF file and the file offset of the address, if it is in one.
    pub file: Option<(Arc<PathBuf>, u64)>,
    /// The address is in the kernel's uretprobe trampoline page
    /// (`[uprobes]`): a return address a uretprobe replaced.
    pub uretprobe: bool,
}

/// One frame of a symbolized stack.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Frame {
    pub name: String,
    pub file: Option<String>,
    pub line: Option<u32>,
    pub kind: FrameKind,
}

/// Where a frame comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameKind {
    /// Native code of the process.
    User,
    Kernel,
    /// A Python function.
    Python,
    /// Not code: the stage, `[off-cpu]`, `[truncated]`, ...
    Marker,
}

impl Frame {
    pub fn marker(name: &str) -> Frame {
        Frame {
            name: name.to_string(),
            file: None,
            line: None,
            kind: FrameKind::Marker,
        }
    }

    /// The frame in folded stacks and flame graphs: the function name;
    /// kernel functions end in `_[k]`; Python ones read `qualname (file:line)`.
    pub fn label(&self) -> String {
        let base = match self.kind {
            FrameKind::Kernel => format!("{}_[k]", self.name),
            // The file's last component: the full name is in pprof.
            FrameKind::Python => match (self.file.as_deref().map(base_name), self.line) {
                (Some(f), Some(l)) => format!("{} ({f}:{l})", self.name),
                (Some(f), None) => format!("{} ({f})", self.name),
                _ => self.name.clone(),
            },
            _ => self.name.clone(),
        };
        // ';' separates frames and a space the count in folded stacks.
        base.replace(';', ":").replace(['\n', '\r'], " ")
    }
}

fn base_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Whether the bytes just before a return address end with a call
/// instruction (x86-64): `call rel32` (e8), or `call r/m64` (ff /2, with
/// an optional REX prefix, any addressing form).
pub fn ends_with_call(before: &[u8]) -> bool {
    let n = before.len();
    if n >= 5 && before[n - 5] == 0xe8 {
        return true;
    }
    // ff /2 forms are 2 to 7 bytes long (+1 with REX): try every start.
    (2..=n.min(8)).any(|len| {
        let insn = &before[n - len..];
        let insn = match insn[0] {
            0x40..=0x4f => &insn[1..],
            _ => insn,
        };
        insn.len() >= 2
            && insn[0] == 0xff
            && (insn[1] >> 3) & 7 == 2
            && modrm_len(&insn[1..]) == Some(insn.len() - 1)
    })
}

/// Length of a ModRM operand (the ModRM byte, SIB and displacement).
fn modrm_len(b: &[u8]) -> Option<usize> {
    let modrm = *b.first()?;
    let (md, rm) = (modrm >> 6, modrm & 7);
    let mut len = 1;
    if md == 3 {
        return Some(1);
    }
    let mut base_no_disp = false;
    if rm == 4 {
        let sib = *b.get(1)?;
        len += 1;
        base_no_disp = md == 0 && sib & 7 == 5;
    }
    len += match md {
        0 if rm == 5 || base_no_disp => 4,
        0 => 0,
        1 => 1,
        _ => 4,
    };
    Some(len)
}

/// A file's (device, inode).
type FileId = (u64, u64);

/// (device, inode) of the executable `pid` runs.
fn exe_id(pid: u32) -> Option<FileId> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(format!("/proc/{pid}/exe")).ok()?;
    Some((m.dev(), m.ino()))
}

/// The `[uprobes]` area of `pid` (where uretprobes send returns).
fn uprobes_area(pid: u32) -> Option<(u64, u64)> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    let line = maps.lines().find(|l| l.ends_with("[uprobes]"))?;
    let (lo, rest) = line.split_once('-')?;
    let hi = rest.split_whitespace().next()?;
    Some((
        u64::from_str_radix(lo, 16).ok()?,
        u64::from_str_radix(hi, 16).ok()?,
    ))
}

/// A code object as read.
struct ReadCode {
    /// Its (qualname, filename) pointers.
    ptrs: (u64, u64),
    /// Its frame, at its first line (None: unreadable).
    frame: Option<Frame>,
    /// Its line table (empty: unread).
    lines: Vec<u8>,
    first: i32,
    format: crate::python::lines::LineTable,
}

/// The address names of a run. blazesym's objects are not `Send`: they
/// are made per batch ([`Namer::resolve`], [`Naming`]), while the answers
/// are kept here.
#[derive(Default)]
pub struct Namer {
    /// (pid, address) -> what is known of it.
    addrs: HashMap<(u32, u64), AddrInfo>,
    /// Open /proc/PID/mem files, with the executable (device, inode) the
    /// process ran when each was opened.
    mems: HashMap<u32, (Option<Mem>, Option<FileId>)>,
    /// CPython processes: where their code objects keep their names.
    python: HashMap<u32, CodeNames>,
    /// (pid, code object) -> what was read of it.
    codes: HashMap<(u32, u64), ReadCode>,
    /// (file, offset) -> frames, outermost first (inlined functions after
    /// the function they are inlined into).
    names: HashMap<(Arc<PathBuf>, u64), Vec<Frame>>,
    kernel: HashMap<u64, Frame>,
    paths: HashMap<PathBuf, Arc<PathBuf>>,
}

/// A naming batch: the symbolizer (ELF, DWARF, kallsyms) over the
/// cached answers of a [`Namer`].
pub struct Naming<'a> {
    namer: &'a mut Namer,
    symbolizer: Symbolizer,
}

impl Namer {
    /// Whether `(pid, addr)` was resolved already.
    pub fn knows(&self, pid: u32, addr: u64) -> bool {
        self.addrs.contains_key(&(pid, addr))
    }

    /// What is known of a user address (None: never resolved).
    pub fn addr(&self, pid: u32, addr: u64) -> Option<&AddrInfo> {
        self.addrs.get(&(pid, addr))
    }

    /// Resolves new user addresses of `pid` while it runs: call-site check
    /// and (file, offset). Addresses of a process that is gone stay unknown.
    pub fn resolve(&mut self, pid: u32, addrs: &[u64]) {
        let new: Vec<u64> = {
            let mut v: Vec<u64> = addrs
                .iter()
                .copied()
                .filter(|&a| !self.knows(pid, a))
                .collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        if new.is_empty() {
            return;
        }
        let files: Vec<Option<(Arc<PathBuf>, u64)>> = {
            let opts = NormalizeOpts {
                sorted_addrs: true,
                ..Default::default()
            };
            let normalizer = Normalizer::builder().enable_build_ids(false).build();
            match normalizer.normalize_user_addrs_opts(Pid::from(pid), &new, &opts) {
                Ok(out) => out
                    .outputs
                    .iter()
                    .map(|&(off, meta)| match out.meta.get(meta) {
                        Some(UserMeta::Elf(elf)) => Some((elf.path.clone(), off)),
                        _ => None,
                    })
                    .collect::<Vec<_>>()
                    .into_iter()
                    .map(|f| f.map(|(p, off)| (self.intern(p), off)))
                    .collect(),
                Err(_) => vec![None; new.len()],
            }
        };
        let uprobes = uprobes_area(pid);
        for (addr, file) in new.into_iter().zip(files) {
            let after_call = addr >= 8
                && self
                    .read_mem(pid, |m| m.bytes(addr - 8, 8))
                    .is_some_and(|b| ends_with_call(&b));
            let uretprobe = uprobes.is_some_and(|(lo, hi)| (lo..hi).contains(&addr));
            self.addrs.insert(
                (pid, addr),
                AddrInfo {
                    after_call,
                    file,
                    uretprobe,
                },
            );
        }
    }

    /// Reads `pid`'s memory through its open memory file; when that fails,
    /// once more through a new one (a file opened before the process
    /// called exec, as a launched command's first samples can make it,
    /// reads the old address space: nothing).
    fn read_mem<T>(&mut self, pid: u32, read: impl Fn(&Mem) -> Option<T>) -> Option<T> {
        let mem = self.mem(pid);
        if let Some(v) = mem.and_then(&read) {
            return Some(v);
        }
        let fresh = Mem::open(pid).ok();
        let v = fresh.as_ref().and_then(&read);
        if v.is_some() {
            self.mems.insert(pid, (fresh, exe_id(pid)));
        }
        v
    }

    /// The memory file of `pid`, opened again when the process has
    /// executed another program since: a file opened before a launched
    /// command's exec reads the old address space, which a vfork-style
    /// spawn shares with the agent itself (reads succeed, wrongly).
    fn mem(&mut self, pid: u32) -> Option<&Mem> {
        let exe = exe_id(pid);
        let entry = self
            .mems
            .entry(pid)
            .or_insert_with(|| (Mem::open(pid).ok(), exe));
        if entry.1 != exe {
            *entry = (Mem::open(pid).ok(), exe);
        }
        entry.0.as_ref()
    }

    /// Forgets a process that exited (its open memory file).
    pub fn forget_process(&mut self, pid: u32) {
        self.mems.remove(&pid);
    }

    /// A CPython process: where its code objects keep their names.
    pub fn set_python(&mut self, pid: u32, names: CodeNames) {
        self.python.insert(pid, names);
    }

    /// Reads the names of a code object of `pid` while it runs: again when
    /// its name pointers changed since (a code object freed, and another
    /// allocated at its address; the stacks that named the old one take
    /// the new name).
    pub fn resolve_python(&mut self, pid: u32, code: u64) {
        let Some(&names) = self.python.get(&pid) else {
            return;
        };
        // The kernel read `code` from the process: it may be stale.
        let at = |off: u64| code.checked_add(off);
        let ptrs = self
            .read_mem(pid, |m| {
                Some((
                    m.u64(at(names.qualname)?)?,
                    m.u64(at(names.filename)?).unwrap_or(0),
                ))
            })
            .unwrap_or((0, 0));
        let Some((Some(mem), _)) = self.mems.get(&pid) else {
            return;
        };
        if self.codes.get(&(pid, code)).is_some_and(|c| c.ptrs == ptrs) {
            return;
        }
        let first = at(names.firstlineno).and_then(|a| mem.i32(a));
        let frame = (ptrs.0 != 0).then_some(()).and_then(|()| {
            let name = mem.ascii(ptrs.0, names.ascii_data)?;
            let file = mem.ascii(ptrs.1, names.ascii_data);
            let line = first.and_then(|l| u32::try_from(l).ok());
            Some(Frame {
                name,
                file,
                line,
                kind: FrameKind::Python,
            })
        });
        // The line table: a bytes object (size at +16, data at +32).
        let lines = at(names.linetable)
            .and_then(|a| mem.u64(a))
            .filter(|_| frame.is_some())
            .and_then(|b| {
                let len = usize::try_from(mem.u64(b.checked_add(16)?)?).ok()?;
                (len <= LINE_TABLE_MAX).then_some(())?;
                mem.bytes(b.checked_add(32)?, len)
            })
            .unwrap_or_default();
        self.codes.insert(
            (pid, code),
            ReadCode {
                ptrs,
                frame,
                lines,
                first: first.unwrap_or(0),
                format: names.lines,
            },
        );
    }

    fn intern(&mut self, p: PathBuf) -> Arc<PathBuf> {
        self.paths
            .entry(p.clone())
            .or_insert_with(|| Arc::new(p))
            .clone()
    }

    /// Starts a naming batch.
    pub fn naming(&mut self) -> Naming<'_> {
        Naming {
            namer: self,
            symbolizer: Symbolizer::builder()
                .enable_code_info(true)
                .enable_inlined_fns(true)
                .enable_demangling(true)
                .build(),
        }
    }
}

impl Naming<'_> {
    /// What is known of a user address (None: never resolved).
    pub fn addr(&self, pid: u32, addr: u64) -> Option<&AddrInfo> {
        self.namer.addr(pid, addr)
    }

    /// The frames of user address `addr` of `pid` (the instruction at
    /// `addr`, or the call before it when `ret`), outermost first; an
    /// address in no file is `[unknown]`, one in a file without a symbol
    /// for it is `file+0xOFFSET`.
    pub fn user_frames(&mut self, pid: u32, addr: u64, ret: bool) -> Vec<Frame> {
        let Some(AddrInfo {
            file: Some((path, off)),
            ..
        }) = self.namer.addrs.get(&(pid, addr)).cloned()
        else {
            return vec![Frame {
                name: "[unknown]".into(),
                file: None,
                line: None,
                kind: FrameKind::User,
            }];
        };
        let off = if ret { off.saturating_sub(1) } else { off };
        let key = (path.clone(), off);
        if let Some(hit) = self.namer.names.get(&key) {
            return hit.clone();
        }
        let src = Source::Elf(Elf::new(path.as_path()));
        let frames = match self
            .symbolizer
            .symbolize_single(&src, Input::FileOffset(off))
        {
            Ok(Symbolized::Sym(sym)) => {
                let loc = |ci: Option<&blazesym::symbolize::CodeInfo<'_>>| {
                    ci.map(|c| (c.file.to_string_lossy().into_owned(), c.line))
                };
                let (file, line) = loc(sym.code_info.as_deref()).unzip();
                let mut v = vec![Frame {
                    name: sym.name.to_string(),
                    file,
                    line: line.flatten(),
                    kind: FrameKind::User,
                }];
                for f in sym.inlined.iter() {
                    let (file, line) = loc(f.code_info.as_ref()).unzip();
                    v.push(Frame {
                        name: f.name.to_string(),
                        file,
                        line: line.flatten(),
                        kind: FrameKind::User,
                    });
                }
                v
            }
            _ => {
                let module = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                vec![Frame {
                    name: format!("{module}+{off:#x}"),
                    file: None,
                    line: None,
                    kind: FrameKind::User,
                }]
            }
        };
        self.namer.names.insert(key, frames.clone());
        frames
    }

    /// The Python frame of Python frame value `frame` of `pid` (its code
    /// object and instruction), at the line of the instruction (the
    /// function's first line when that is unknown). None: the code object
    /// was not read, or could not be.
    pub fn python_frame(&self, pid: u32, frame: u64) -> Option<Frame> {
        let c = self.namer.codes.get(&(pid, py_code(frame)))?;
        let mut f = c.frame.clone()?;
        if let Some(line) = py_instr(frame).and_then(|i| line_at(c.format, &c.lines, c.first, i)) {
            f.line = Some(line);
        }
        Some(f)
    }

    /// The kernel function at `addr` (kallsyms).
    pub fn kernel_frame(&mut self, addr: u64) -> Frame {
        if let Some(hit) = self.namer.kernel.get(&addr) {
            return hit.clone();
        }
        let src = Source::Kernel(Kernel::default());
        let name = match self.symbolizer.symbolize_single(&src, Input::AbsAddr(addr)) {
            Ok(Symbolized::Sym(sym)) => sym.name.to_string(),
            _ => format!("{addr:#x}"),
        };
        let frame = Frame {
            name,
            file: None,
            line: None,
            kind: FrameKind::Kernel,
        };
        self.namer.kernel.insert(addr, frame.clone());
        frame
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_call_instructions_before_a_return_address() {
        // call rel32
        assert!(ends_with_call(&[0, 0, 0, 0xe8, 1, 2, 3, 4]));
        // call rax (ff d0), call r8 (41 ff d0)
        assert!(ends_with_call(&[0, 0, 0, 0, 0, 0, 0xff, 0xd0]));
        assert!(ends_with_call(&[0, 0, 0, 0, 0, 0x41, 0xff, 0xd0]));
        // call [rip+disp32] (ff 15 xx xx xx xx)
        assert!(ends_with_call(&[0, 0, 0xff, 0x15, 1, 2, 3, 4]));
        // call [rax+8] (ff 50 08), call [rsp+8] (ff 54 24 08)
        assert!(ends_with_call(&[0, 0, 0, 0, 0, 0xff, 0x50, 0x08]));
        assert!(ends_with_call(&[0, 0, 0, 0, 0xff, 0x54, 0x24, 0x08]));
        // Not calls: jmp rax (ff e0), a mov, zeros.
        assert!(!ends_with_call(&[0, 0, 0, 0, 0, 0, 0xff, 0xe0]));
        assert!(!ends_with_call(&[
            0x48, 0x89, 0xe5, 0x48, 0x89, 0xe5, 0x90, 0x90
        ]));
        assert!(!ends_with_call(&[0; 8]));
    }

    #[inline(never)]
    fn here() -> u64 {
        here as *const () as u64
    }

    #[test]
    fn names_a_function_of_this_process() {
        let mut n = Namer::default();
        let pid = std::process::id();
        let addr = here();
        n.resolve(pid, &[addr, 8]);
        assert!(n.addr(pid, addr).and_then(|a| a.file.as_ref()).is_some());
        let mut naming = n.naming();
        let frames = naming.user_frames(pid, addr, false);
        assert!(
            frames.iter().any(|f| f.name.contains("names::tests::here")),
            "{frames:?}"
        );
        assert_eq!(naming.user_frames(pid, 8, true)[0].name, "[unknown]");
    }
}
