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
    let mut strings = desc[3 * word..].split(|&b| b == 0);
    let mut next_string = |what: &str| -> Result<String, String> {
        let s = strings.next().ok_or_else(|| format!("missing {what}"))?;
        String::from_utf8(s.to_vec()).map_err(|_| format!("{what} is not UTF-8"))
    };
    let provider = next_string("provider")?;
    let name = next_string("probe name")?;
    let args = next_string("argument spec").unwrap_or_default();
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
    let data = read_elf(path)?;
    let obj = parse_elf(path, &data)?;
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
mod tests {}
