//! USDT probes (SystemTap SDT notes in `.note.stapsdt`) and their x86_64
//! argument specs.
//!
//! Each note (owner `stapsdt`, type 3) holds the probe address, the link-time
//! address of `.stapsdt.base` and the semaphore address (one machine word
//! each), then NUL-terminated provider, name and argument spec strings.

use std::cell::OnceCell;
use std::collections::HashMap;
use std::path::Path;

use object::{Object, ObjectSection, ObjectSymbol, SymbolSection};

use super::elf::{load_segments, parse_elf, read_elf, segment_for, vaddr_to_offset, LoadSegment};
use super::TargetError;

const NOTE_SECTION: &str = ".note.stapsdt";
const BASE_SECTION: &str = ".stapsdt.base";
const NOTE_OWNER: &[u8] = b"stapsdt";
const NOTE_TYPE: u32 = 3;

/// One USDT probe site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsdtProbe {
    /// Provider, e.g. `python`.
    pub provider: String,
    /// Probe name, e.g. `function__entry`.
    pub name: String,
    /// Virtual address of the probe's nop (after the prelink adjustment).
    pub pc: u64,
    /// File offset of `pc`, as uprobes expect it.
    pub file_offset: u64,
    /// Virtual address of the semaphore, 0 if none.
    pub semaphore: u64,
    /// File offset of the semaphore (uprobe `ref_ctr_offset`), 0 if none.
    pub semaphore_offset: u64,
    /// Parsed arguments; empty when `args_error` is set.
    pub args: Vec<UsdtArg>,
    /// The argument spec as stored in the note, e.g. `-4@%edi 8@-8(%rbp)`.
    pub args_raw: String,
    /// Why `args_raw` could not be parsed (the probe can still be attached,
    /// only its arguments are unavailable).
    pub args_error: Option<String>,
}

/// One USDT argument: its size, signedness and where to read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsdtArg {
    /// Size in bytes: 1, 2, 4 or 8.
    pub size: u8,
    /// Sign-extend the value (negative size in the spec).
    pub signed: bool,
    /// Where the value lives at the probe.
    pub loc: UsdtArgLoc,
}

/// Where a USDT argument lives when the probe fires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UsdtArgLoc {
    /// An immediate value (`$42`).
    Const(i64),
    /// The value of a register, named as in the spec without `%` (`edi`).
    Reg(String),
    /// Memory at register + offset (`-8(%rbp)`). For `rip` the offset is
    /// relative to the probe address, which is what `pt_regs->ip` holds when
    /// the uprobe fires; `sym(%rip)` is resolved to `sym - pc`.
    Deref {
        /// Base register, without `%`.
        reg: String,
        /// Byte offset added to the register value.
        offset: i64,
    },
}

/// Byte offset of an x86_64 register (any width alias: `rax`, `eax`, `ax`,
/// `al`, `r8d`, ...) in the kernel's `struct pt_regs`; `None` for unknown
/// names and for the high-byte registers `ah`..`dh`.
pub fn x86_64_pt_regs_offset(reg: &str) -> Option<usize> {
    const TABLE: &[(usize, &[&str])] = &[
        (0, &["r15", "r15d", "r15w", "r15b"]),
        (8, &["r14", "r14d", "r14w", "r14b"]),
        (16, &["r13", "r13d", "r13w", "r13b"]),
        (24, &["r12", "r12d", "r12w", "r12b"]),
        (32, &["rbp", "ebp", "bp", "bpl"]),
        (40, &["rbx", "ebx", "bx", "bl"]),
        (48, &["r11", "r11d", "r11w", "r11b"]),
        (56, &["r10", "r10d", "r10w", "r10b"]),
        (64, &["r9", "r9d", "r9w", "r9b"]),
        (72, &["r8", "r8d", "r8w", "r8b"]),
        (80, &["rax", "eax", "ax", "al"]),
        (88, &["rcx", "ecx", "cx", "cl"]),
        (96, &["rdx", "edx", "dx", "dl"]),
        (104, &["rsi", "esi", "si", "sil"]),
        (112, &["rdi", "edi", "di", "dil"]),
        (120, &["orig_ax", "orig_rax"]),
        (128, &["rip", "eip", "ip"]),
        (136, &["cs"]),
        (144, &["flags", "eflags", "rflags"]),
        (152, &["rsp", "esp", "sp", "spl"]),
        (160, &["ss"]),
    ];
    TABLE
        .iter()
        .find(|(_, names)| names.contains(&reg))
        .map(|&(off, _)| off)
}

/// Parse a whole x86_64 argument spec (`-4@%edi 8@-8(%rbp) 4@$5`).
///
/// `pc` is the probe address and `symbol` resolves names used as
/// displacements (`counter(%rip)`); both only matter for `rip`-relative args.
pub fn parse_args(
    spec: &str,
    pc: u64,
    symbol: &dyn Fn(&str) -> Option<u64>,
) -> Result<Vec<UsdtArg>, String> {
    spec.split_whitespace()
        .map(|arg| parse_arg(arg, pc, symbol).map_err(|e| format!("argument '{arg}': {e}")))
        .collect()
}

fn parse_arg(arg: &str, pc: u64, symbol: &dyn Fn(&str) -> Option<u64>) -> Result<UsdtArg, String> {
    let (size, op) = arg.split_once('@').ok_or("expected SIZE@LOCATION")?;
    let size: i8 = size.parse().map_err(|_| format!("bad size '{size}'"))?;
    let signed = size < 0;
    let size = size.unsigned_abs();
    if !matches!(size, 1 | 2 | 4 | 8) {
        return Err(format!("unsupported size {size}"));
    }
    let loc = parse_location(op, pc, symbol)?;
    Ok(UsdtArg { size, signed, loc })
}

fn parse_location(
    op: &str,
    pc: u64,
    symbol: &dyn Fn(&str) -> Option<u64>,
) -> Result<UsdtArgLoc, String> {
    if let Some(imm) = op.strip_prefix('$') {
        return parse_int(imm)
            .map(UsdtArgLoc::Const)
            .ok_or_else(|| format!("bad constant '{imm}'"));
    }
    if op.starts_with('%') {
        return register(op).map(UsdtArgLoc::Reg);
    }
    let (disp, rest) = op
        .split_once('(')
        .ok_or_else(|| format!("unsupported location '{op}'"))?;
    let inner = rest
        .strip_suffix(')')
        .ok_or_else(|| format!("unbalanced parenthesis in '{op}'"))?;
    if inner.contains(',') {
        return Err(format!("indexed addressing '{op}' is not supported"));
    }
    let reg = register(inner)?;
    let offset = displacement(disp, &reg, pc, symbol)?;
    Ok(UsdtArgLoc::Deref { reg, offset })
}

/// A `%reg` operand as a known register name without `%`.
fn register(op: &str) -> Result<String, String> {
    let name = op
        .strip_prefix('%')
        .ok_or_else(|| format!("expected a register, got '{op}'"))?;
    match x86_64_pt_regs_offset(name) {
        Some(_) => Ok(name.to_string()),
        None => Err(format!("unknown register '%{name}'")),
    }
}

/// The offset of a `disp(%reg)` operand: a number, or for `rip` a symbol with
/// an optional `+N`/`-N` addend, turned into an offset from the probe address.
fn displacement(
    disp: &str,
    reg: &str,
    pc: u64,
    symbol: &dyn Fn(&str) -> Option<u64>,
) -> Result<i64, String> {
    if disp.is_empty() {
        return Ok(0);
    }
    if let Some(n) = parse_int(disp) {
        return Ok(n);
    }
    if reg != "rip" {
        return Err(format!("symbolic displacement '{disp}' needs %rip"));
    }
    let (name, addend) = split_addend(disp).ok_or_else(|| format!("bad displacement '{disp}'"))?;
    let addr = symbol(name).ok_or_else(|| format!("symbol '{name}' not found"))?;
    Ok((addr as i64).wrapping_add(addend).wrapping_sub(pc as i64))
}

/// `sym+8` -> (`sym`, 8); `sym-8` -> (`sym`, -8); `sym` -> (`sym`, 0).
fn split_addend(disp: &str) -> Option<(&str, i64)> {
    match disp.rfind(['+', '-']) {
        Some(i) if i > 0 => {
            let n = parse_int(disp[i + 1..].trim())?;
            let n = if disp.as_bytes()[i] == b'-' {
                n.checked_neg()?
            } else {
                n
            };
            Some((&disp[..i], n))
        }
        _ => Some((disp, 0)),
    }
}

/// Decimal or `0x` hex, optionally negative.
fn parse_int(s: &str) -> Option<i64> {
    let (neg, digits) = match s.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, s),
    };
    let value = match digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        Some(hex) => u64::from_str_radix(hex, 16).ok()? as i64,
        None => digits.parse::<u64>().ok()? as i64,
    };
    Some(if neg { value.wrapping_neg() } else { value })
}

/// One raw ELF note.
struct Note<'a> {
    owner: &'a [u8],
    kind: u32,
    desc: &'a [u8],
}

/// Iterate the notes of a section, failing (not panicking) on truncation.
struct Notes<'a> {
    data: &'a [u8],
    little_endian: bool,
    align: usize,
}

impl<'a> Notes<'a> {
    fn u32_at(&self, pos: usize) -> Option<u32> {
        let bytes: [u8; 4] = self.data.get(pos..pos.checked_add(4)?)?.try_into().ok()?;
        Some(if self.little_endian {
            u32::from_le_bytes(bytes)
        } else {
            u32::from_be_bytes(bytes)
        })
    }

    fn aligned(&self, n: usize) -> Option<usize> {
        n.checked_add(self.align - 1).map(|v| v & !(self.align - 1))
    }

    /// The note at `pos` and the position of the next one.
    fn note_at(&self, pos: usize) -> Result<(Note<'a>, usize), String> {
        let truncated = || format!("truncated note header at byte {pos}");
        let namesz = self.u32_at(pos).ok_or_else(truncated)? as usize;
        let descsz = self.u32_at(pos + 4).ok_or_else(truncated)? as usize;
        let kind = self.u32_at(pos + 8).ok_or_else(truncated)?;
        let name_start = pos + 12;
        let desc_start = self
            .aligned(name_start.saturating_add(namesz))
            .ok_or("note name size overflows")?;
        let desc_end = desc_start.saturating_add(descsz);
        let owner = self.data.get(name_start..name_start + namesz);
        let desc = self.data.get(desc_start..desc_end);
        let (Some(owner), Some(desc)) = (owner, desc) else {
            return Err(format!(
                "note at byte {pos} runs past the end of the section"
            ));
        };
        let owner = owner.strip_suffix(b"\0").unwrap_or(owner);
        let next = self.aligned(desc_end).unwrap_or(usize::MAX);
        Ok((Note { owner, kind, desc }, next))
    }
}

/// The fixed fields and strings of one `stapsdt` note descriptor.
struct RawProbe {
    pc: u64,
    base: u64,
    semaphore: u64,
    provider: String,
    name: String,
    args: String,
}

fn parse_descriptor(desc: &[u8], word: usize, little_endian: bool) -> Result<RawProbe, String> {
    let read_word = |i: usize| -> Option<u64> {
        let bytes = desc.get(i * word..(i + 1) * word)?;
        let mut buf = [0u8; 8];
        if little_endian {
            buf[..word].copy_from_slice(bytes);
            Some(u64::from_le_bytes(buf))
        } else {
            buf[8 - word..].copy_from_slice(bytes);
            Some(u64::from_be_bytes(buf))
        }
    };
    let (Some(pc), Some(base), Some(semaphore)) = (read_word(0), read_word(1), read_word(2)) else {
        return Err(format!("descriptor of {} bytes is too short", desc.len()));
    };
    let rest = &desc[3 * word..];
    let (provider, rest) = take_cstr(rest, "provider")?;
    let (name, rest) = take_cstr(rest, "probe name")?;
    let args = if rest.is_empty() {
        String::new()
    } else {
        take_cstr(rest, "argument spec")?.0
    };
    if provider.is_empty() || name.is_empty() {
        return Err("empty provider or probe name".to_string());
    }
    // A lone ":" is how some toolchains spell "no arguments".
    let args = if args == ":" { String::new() } else { args };
    Ok(RawProbe {
        pc,
        base,
        semaphore,
        provider,
        name,
        args,
    })
}

/// A NUL-terminated UTF-8 string at the start of `bytes`, and what follows it.
fn take_cstr<'a>(bytes: &'a [u8], what: &str) -> Result<(String, &'a [u8]), String> {
    let nul = bytes
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| format!("{what} is not NUL-terminated"))?;
    let s = std::str::from_utf8(&bytes[..nul]).map_err(|_| format!("{what} is not UTF-8"))?;
    Ok((s.to_string(), &bytes[nul + 1..]))
}

/// Everything needed to turn raw notes into probes.
struct Context<'d, 'o> {
    obj: &'o object::File<'d>,
    segments: Vec<LoadSegment>,
    base_section: Option<u64>,
    symbols: OnceCell<HashMap<String, u64>>,
}

impl Context<'_, '_> {
    /// Apply the prelink adjustment: shift by how far `.stapsdt.base` moved.
    fn adjust(&self, addr: u64, note_base: u64) -> u64 {
        match self.base_section {
            Some(actual) if addr != 0 && note_base != 0 => {
                addr.wrapping_add(actual.wrapping_sub(note_base))
            }
            _ => addr,
        }
    }

    fn symbol(&self, name: &str) -> Option<u64> {
        let table = self.symbols.get_or_init(|| {
            self.obj
                .symbols()
                .chain(self.obj.dynamic_symbols())
                .filter(|s| matches!(s.section(), SymbolSection::Section(_)))
                .filter_map(|s| Some((s.name().ok()?.to_string(), s.address())))
                .collect()
        });
        table.get(name).copied()
    }

    fn probe(&self, raw: RawProbe) -> Result<UsdtProbe, String> {
        let pc = self.adjust(raw.pc, raw.base);
        let seg = segment_for(&self.segments, pc)
            .ok_or_else(|| format!("probe address {pc:#x} is outside every loadable segment"))?;
        if !seg.executable {
            return Err(format!(
                "probe address {pc:#x} is not in an executable segment"
            ));
        }
        let file_offset = seg.file_offset(pc).unwrap_or_default();
        let semaphore = self.adjust(raw.semaphore, raw.base);
        let semaphore_offset = match semaphore {
            0 => 0,
            sem => vaddr_to_offset(&self.segments, sem).ok_or_else(|| {
                format!("semaphore address {sem:#x} is outside every loadable segment")
            })?,
        };
        let (args, args_error) = match parse_args(&raw.args, pc, &|s| self.symbol(s)) {
            Ok(args) => (args, None),
            Err(e) => (Vec::new(), Some(e)),
        };
        Ok(UsdtProbe {
            provider: raw.provider,
            name: raw.name,
            pc,
            file_offset,
            semaphore,
            semaphore_offset,
            args,
            args_raw: raw.args,
            args_error,
        })
    }
}

/// Every USDT probe in the ELF file at `path`, in note order; empty when the
/// file has no `.note.stapsdt` section.
pub fn usdt_probes(path: &Path) -> Result<Vec<UsdtProbe>, TargetError> {
    usdt_probes_in(path, &read_elf(path)?)
}

/// The USDT probes of the ELF file contents `data`, as if read from `path`
/// (which only names the file in errors).
pub fn usdt_probes_in(path: &Path, data: &[u8]) -> Result<Vec<UsdtProbe>, TargetError> {
    let obj = parse_elf(path, data)?;
    let Some(section) = obj.section_by_name(NOTE_SECTION) else {
        return Ok(Vec::new());
    };
    let bad_note = |index: usize, reason: String| TargetError::BadUsdtNote {
        path: path.to_path_buf(),
        index,
        reason,
    };
    let notes_data = section.data().map_err(|e| bad_note(0, e.to_string()))?;
    let notes = Notes {
        data: notes_data,
        little_endian: obj.is_little_endian(),
        align: if section.align() == 8 { 8 } else { 4 },
    };
    let ctx = Context {
        obj: &obj,
        segments: load_segments(&obj),
        base_section: obj.section_by_name(BASE_SECTION).map(|s| s.address()),
        symbols: OnceCell::new(),
    };
    let word = if obj.is_64() { 8 } else { 4 };
    let mut probes = Vec::new();
    let mut pos = 0;
    let mut index = 0;
    while pos < notes_data.len() {
        let (note, next) = notes.note_at(pos).map_err(|e| bad_note(index, e))?;
        if note.owner == NOTE_OWNER && note.kind == NOTE_TYPE {
            let raw = parse_descriptor(note.desc, word, notes.little_endian)
                .map_err(|e| bad_note(index, e))?;
            probes.push(ctx.probe(raw).map_err(|e| bad_note(index, e))?);
        }
        pos = next;
        index += 1;
    }
    Ok(probes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::symbols::testutil::{compile, run, system_file};
    use std::path::PathBuf;

    const MAIN_SRC: &str = r#"
#include <sys/sdt.h>
int counter = 3;
void with_semaphore(int x);
__attribute__((noinline)) int work(int x, long y) {
    DTRACE_PROBE2(demo, frame_done, x, y);
    STAP_PROBE1(demo, global_arg, counter);
    STAP_PROBE1(demo, const_arg, 42);
    with_semaphore(x);
    return x + (int)y;
}
int main(int argc, char **argv) { return work(argc, (long)argv); }
"#;

    const SEMAPHORE_SRC: &str = r#"
#define _SDT_HAS_SEMAPHORES 1
#include <sys/sdt.h>
__extension__ unsigned short demo_frame_start_semaphore
    __attribute__((unused, section(".probes")));
__attribute__((noinline)) void with_semaphore(int x) {
    if (demo_frame_start_semaphore) STAP_PROBE1(demo, frame_start, x);
}
"#;

    /// One probe as `readelf -n` prints it.
    #[derive(Debug, Default)]
    struct Expected {
        provider: String,
        name: String,
        pc: u64,
        semaphore: u64,
        args: String,
    }

    fn hex(s: &str) -> u64 {
        u64::from_str_radix(s.trim().trim_start_matches("0x"), 16).unwrap()
    }

    fn readelf_notes(path: &Path) -> Vec<Expected> {
        let out = run("readelf", &["-n", path.to_str().unwrap()]);
        let mut probes: Vec<Expected> = Vec::new();
        for line in out.lines().map(str::trim) {
            if let Some(p) = line.strip_prefix("Provider: ") {
                probes.push(Expected {
                    provider: p.to_string(),
                    ..Default::default()
                });
            }
            let Some(cur) = probes.last_mut() else {
                continue;
            };
            if let Some(n) = line.strip_prefix("Name: ") {
                cur.name = n.to_string();
            } else if let Some(loc) = line.strip_prefix("Location: ") {
                let fields: Vec<&str> = loc.split(", ").collect();
                cur.pc = hex(fields[0]);
                cur.semaphore = hex(fields[2].trim_start_matches("Semaphore: "));
            } else if let Some(a) = line.strip_prefix("Arguments: ") {
                cur.args = a.to_string();
            }
        }
        probes
    }

    /// File offset of `addr` computed from the section table (independent
    /// of the segment-based computation under test).
    fn section_offset(path: &Path, addr: u64) -> u64 {
        let out = run("readelf", &["-S", "-W", path.to_str().unwrap()]);
        for line in out.lines() {
            let line = line.trim_start();
            let Some(rest) = line.strip_prefix('[') else {
                continue;
            };
            let fields: Vec<&str> = rest.split_once(']').unwrap().1.split_whitespace().collect();
            let (Ok(start), Ok(off), Ok(size)) = (
                u64::from_str_radix(fields.get(2).unwrap_or(&""), 16),
                u64::from_str_radix(fields.get(3).unwrap_or(&""), 16),
                u64::from_str_radix(fields.get(4).unwrap_or(&""), 16),
            ) else {
                continue;
            };
            if fields[1] != "NOBITS" && start != 0 && (start..start + size).contains(&addr) {
                return addr - start + off;
            }
        }
        panic!("{addr:#x} not in any section of {}", path.display());
    }

    fn assert_matches_readelf(path: &Path) -> Vec<UsdtProbe> {
        let probes = usdt_probes(path).unwrap();
        let expected = readelf_notes(path);
        assert_eq!(probes.len(), expected.len(), "{}", path.display());
        for (p, e) in probes.iter().zip(&expected) {
            assert_eq!((&p.provider, &p.name), (&e.provider, &e.name));
            assert_eq!(p.pc, e.pc, "{}:{}", p.provider, p.name);
            assert_eq!(p.semaphore, e.semaphore, "{}:{}", p.provider, p.name);
            assert_eq!(p.args_raw, e.args, "{}:{}", p.provider, p.name);
            assert_eq!(p.file_offset, section_offset(path, p.pc));
            if p.semaphore != 0 {
                assert_eq!(p.semaphore_offset, section_offset(path, p.semaphore));
            } else {
                assert_eq!(p.semaphore_offset, 0);
            }
            assert_eq!(
                p.args_error, None,
                "{}:{} {}",
                p.provider, p.name, p.args_raw
            );
            assert_eq!(p.args.len(), p.args_raw.split_whitespace().count());
        }
        probes
    }

    fn build_demo(dir: &Path, name: &str, extra: &[&str]) -> PathBuf {
        let sem = dir.join("semaphore.c");
        std::fs::write(&sem, SEMAPHORE_SRC).unwrap();
        let mut args = vec!["-O2", sem.to_str().unwrap()];
        args.extend_from_slice(extra);
        compile(dir, name, "gcc", MAIN_SRC, &args)
    }

    fn find<'a>(probes: &'a [UsdtProbe], name: &str) -> &'a UsdtProbe {
        probes.iter().find(|p| p.name == name).unwrap()
    }

    /// Fuzz finding (usdt_notes): the seed `static` with the p_offset of
    /// its text segment mutated to 0x7b99eb0c89, past the end of the
    /// 2632-byte file. The probe got a file offset outside the file; the
    /// segment now has no file-backed part, so the first note is refused.
    #[test]
    fn probe_in_segment_past_end_of_file_is_refused() {
        let data = include_bytes!("../../../fuzz/seeds/usdt_notes/crash-segment-past-eof");
        let err = usdt_probes_in(Path::new("crash.elf"), data).unwrap_err();
        let TargetError::BadUsdtNote { index, reason, .. } = &err else {
            panic!("{err:?}");
        };
        assert_eq!(*index, 0);
        assert_eq!(
            reason,
            "probe address 0x40017c is outside every loadable segment"
        );
    }

    #[test]
    fn demo_program_matches_readelf() {
        let dir = tempfile::tempdir().unwrap();
        let bin = build_demo(dir.path(), "demo", &["-no-pie"]);
        let probes = assert_matches_readelf(&bin);
        assert_eq!(probes.len(), 4);

        let done = find(&probes, "frame_done");
        assert_eq!(done.provider, "demo");
        assert_eq!(done.semaphore, 0);
        assert_eq!(done.args.len(), 2);
        assert_eq!((done.args[0].size, done.args[0].signed), (4, true));
        assert_eq!((done.args[1].size, done.args[1].signed), (8, true));

        let start = find(&probes, "frame_start");
        assert_ne!(start.semaphore, 0);
        assert_ne!(start.semaphore_offset, 0);

        let konst = find(&probes, "const_arg");
        assert_eq!(konst.args[0].loc, UsdtArgLoc::Const(42));

        // `counter(%rip)` resolves to the address of `counter`.
        let global = find(&probes, "global_arg");
        let counter = global_address(&bin, "counter");
        match &global.args[0].loc {
            UsdtArgLoc::Deref { reg, offset } if reg == "rip" => {
                assert_eq!(global.pc.wrapping_add(*offset as u64), counter);
            }
            other => panic!("global_arg compiled to {other:?}, expected counter(%rip)"),
        }
    }

    fn global_address(bin: &Path, name: &str) -> u64 {
        let nm = run("nm", &[bin.to_str().unwrap()]);
        let line = nm
            .lines()
            .find(|l| l.ends_with(&format!(" {name}")))
            .unwrap();
        hex(line.split_whitespace().next().unwrap())
    }

    #[test]
    fn pie_and_shared_library_match_readelf() {
        let dir = tempfile::tempdir().unwrap();
        let pie = build_demo(dir.path(), "demo_pie", &["-pie", "-fPIE"]);
        let so = build_demo(dir.path(), "libdemo.so", &["-shared", "-fPIC"]);
        assert_eq!(assert_matches_readelf(&pie).len(), 4);
        assert_eq!(assert_matches_readelf(&so).len(), 4);
    }

    #[test]
    fn python_probes() {
        // Debian's own build: stripped, with its USDT notes and semaphores.
        let Some(python) = system_file("/usr/bin/python3.11", "python3.11") else {
            return;
        };
        let probes = assert_matches_readelf(python);
        let entry = probes
            .iter()
            .find(|p| p.provider == "python" && p.name == "function__entry")
            .expect("python:function__entry");
        assert_eq!(entry.args.len(), 3);
        assert_ne!(entry.semaphore_offset, 0);
    }

    #[test]
    fn files_without_notes_have_no_probes() {
        let dir = tempfile::tempdir().unwrap();
        let bin = compile(dir.path(), "plain", "gcc", "int main(void){return 0;}", &[]);
        assert!(usdt_probes(&bin).unwrap().is_empty());
        assert!(matches!(
            usdt_probes(&dir.path().join("missing")),
            Err(TargetError::NotFound { .. })
        ));
        let text = dir.path().join("t.txt");
        std::fs::write(&text, "not elf").unwrap();
        assert!(matches!(
            usdt_probes(&text),
            Err(TargetError::NotElf { .. })
        ));
    }

    fn no_symbols(_: &str) -> Option<u64> {
        None
    }

    #[test]
    fn arg_specs() {
        let args = parse_args(
            "-4@%edi 8@%rax -4@$-9 2@$0x10 8@-1204(%rbp) 1@(%rsp) -8@%r8 4@%r10d 1@%sil",
            0,
            &no_symbols,
        )
        .unwrap();
        let locs: Vec<_> = args
            .iter()
            .map(|a| (a.size, a.signed, a.loc.clone()))
            .collect();
        let reg = |r: &str| UsdtArgLoc::Reg(r.to_string());
        let deref = |r: &str, offset| UsdtArgLoc::Deref {
            reg: r.to_string(),
            offset,
        };
        assert_eq!(
            locs,
            [
                (4, true, reg("edi")),
                (8, false, reg("rax")),
                (4, true, UsdtArgLoc::Const(-9)),
                (2, false, UsdtArgLoc::Const(16)),
                (8, false, deref("rbp", -1204)),
                (1, false, deref("rsp", 0)),
                (8, true, reg("r8")),
                (4, false, reg("r10d")),
                (1, false, reg("sil")),
            ]
        );
        let symbols = |s: &str| (s == "counter").then_some(0x4000u64);
        let rip = parse_args(
            "4@counter(%rip) 8@counter+8(%rip) 4@16(%rip)",
            0x1000,
            &symbols,
        )
        .unwrap();
        let offsets: Vec<_> = rip.iter().map(|a| a.loc.clone()).collect();
        assert_eq!(
            offsets,
            [deref("rip", 0x3000), deref("rip", 0x3008), deref("rip", 16)]
        );
        assert!(parse_args("", 0, &no_symbols).unwrap().is_empty());
    }

    #[test]
    fn bad_arg_specs_are_errors() {
        for spec in [
            "4",
            "3@%eax",
            "4@%xyz",
            "4@%ah",
            "4@$abc",
            "4@-8(%rbp",
            "4@(%rbp,%rax,8)",
            "4@sym(%rbx)",
            "4@missing(%rip)",
            "x@%eax",
            "4@",
            "4@8",
            "-128@%eax",
        ] {
            assert!(parse_args(spec, 0, &no_symbols).is_err(), "{spec}");
        }
    }

    #[test]
    fn pt_regs_offsets_match_kernel_layout() {
        let expected = [
            ("r15", 0),
            ("r14", 8),
            ("r13", 16),
            ("r12", 24),
            ("rbp", 32),
            ("rbx", 40),
            ("r11", 48),
            ("r10", 56),
            ("r9", 64),
            ("r8", 72),
            ("rax", 80),
            ("rcx", 88),
            ("rdx", 96),
            ("rsi", 104),
            ("rdi", 112),
            ("orig_ax", 120),
            ("rip", 128),
            ("cs", 136),
            ("flags", 144),
            ("rsp", 152),
            ("ss", 160),
        ];
        for (reg, off) in expected {
            assert_eq!(x86_64_pt_regs_offset(reg), Some(off), "{reg}");
        }
        for (alias, full) in [
            ("eax", "rax"),
            ("ax", "rax"),
            ("al", "rax"),
            ("r9d", "r9"),
            ("r9w", "r9"),
            ("r9b", "r9"),
            ("dil", "rdi"),
            ("spl", "rsp"),
            ("bpl", "rbp"),
            ("edx", "rdx"),
        ] {
            assert_eq!(
                x86_64_pt_regs_offset(alias),
                x86_64_pt_regs_offset(full),
                "{alias}"
            );
        }
        assert_eq!(x86_64_pt_regs_offset("ah"), None);
        assert_eq!(x86_64_pt_regs_offset("xmm0"), None);
    }

    /// A `.note.stapsdt` section as bytes: (namesz, descsz, type, name, desc).
    fn note(owner: &[u8], kind: u32, desc: &[u8]) -> Vec<u8> {
        let pad = |v: &mut Vec<u8>| v.resize(v.len().div_ceil(4) * 4, 0);
        let mut out = Vec::new();
        out.extend((owner.len() as u32 + 1).to_le_bytes());
        out.extend((desc.len() as u32).to_le_bytes());
        out.extend(kind.to_le_bytes());
        out.extend(owner);
        out.push(0);
        pad(&mut out);
        out.extend(desc);
        pad(&mut out);
        out
    }

    fn notes(data: &[u8]) -> Notes<'_> {
        Notes {
            data,
            little_endian: true,
            align: 4,
        }
    }

    #[test]
    fn note_parsing_rejects_truncation_without_panicking() {
        let mut desc = Vec::new();
        for word in [0x1130u64, 0x2000, 0] {
            desc.extend(word.to_le_bytes());
        }
        desc.extend(b"demo\0frame_done\0-4@%edi\0");
        let bytes = note(b"stapsdt", 3, &desc);
        let (n, next) = notes(&bytes).note_at(0).unwrap();
        assert_eq!((n.owner, n.kind, next), (&b"stapsdt"[..], 3, bytes.len()));
        let raw = parse_descriptor(n.desc, 8, true).unwrap();
        assert_eq!((raw.pc, raw.base, raw.semaphore), (0x1130, 0x2000, 0));
        assert_eq!(
            (raw.provider.as_str(), raw.name.as_str(), raw.args.as_str()),
            ("demo", "frame_done", "-4@%edi")
        );

        for cut in 0..bytes.len() {
            let truncated = &bytes[..cut];
            if let Ok((n, _)) = notes(truncated).note_at(0) {
                let _ = parse_descriptor(n.desc, 8, true);
            }
        }
        for cut in 0..desc.len() {
            let _ = parse_descriptor(&desc[..cut], 8, true);
        }
        assert!(parse_descriptor(&desc[..30], 8, true).is_err());
        assert!(parse_descriptor(&desc[..24], 8, true).is_err());

        let mut huge = bytes.clone();
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(notes(&huge).note_at(0).is_err());
        huge[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(notes(&huge).note_at(0).is_err());
    }

    #[test]
    fn corrupted_note_sections_error_instead_of_panicking() {
        let dir = tempfile::tempdir().unwrap();
        let bin = build_demo(dir.path(), "demo", &[]);
        let data = std::fs::read(&bin).unwrap();
        let obj = object::File::parse(&*data).unwrap();
        let section = obj.section_by_name(NOTE_SECTION).unwrap();
        let (start, size) = section.file_range().unwrap();
        let (start, size) = (start as usize, size as usize);
        let bad = dir.path().join("bad");
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for round in 0..200 {
            let mut copy = data.clone();
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let i = start + (seed as usize) % size;
            copy[i] = if round % 2 == 0 {
                0xff
            } else {
                (seed >> 40) as u8
            };
            std::fs::write(&bad, &copy).unwrap();
            let _ = usdt_probes(&bad);
        }
        // A note section cut short by a shrunken section header.
        let mut copy = data.clone();
        for cut in [1usize, 13, 40] {
            copy[start..start + size].copy_from_slice(&data[start..start + size]);
            copy[start + size - cut..start + size].fill(0xee);
            std::fs::write(&bad, &copy).unwrap();
            let _ = usdt_probes(&bad);
        }
    }
}
