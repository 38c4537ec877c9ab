//! One interpreter ELF file loaded whole: symbols (local ones included),
//! bytes at virtual addresses, relocated pointers, file offsets, needed
//! libraries and run paths.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use object::{
    elf, read::elf::ElfFile64, Endianness, Object, ObjectSection, ObjectSegment, ObjectSymbol,
    RelocationFlags, SymbolKind,
};

use super::PythonError;

/// A loaded ELF file.
pub struct Image {
    pub path: PathBuf,
    pub data: Vec<u8>,
    /// ET_DYN (a shared library or PIE): data pointers are relocations.
    pub pie: bool,
    /// (vaddr, memsz, file offset, filesz, executable)
    segments: Vec<(u64, u64, u64, u64, bool)>,
    /// name -> (vaddr, size): .symtab and .dynsym, without `@VERSION`.
    symbols: HashMap<String, (u64, u64)>,
    /// R_X86_64_RELATIVE: slot vaddr -> addend.
    relative: HashMap<u64, u64>,
    /// Section name -> (vaddr, size).
    sections: HashMap<String, (u64, u64)>,
    pub needed: Vec<String>,
    pub runpath: Vec<String>,
    pub build_id: Option<String>,
    pub has_symtab: bool,
}

impl Image {
    pub fn open(path: &Path) -> Result<Image, PythonError> {
        let data = std::fs::read(path).map_err(|e| PythonError::Read {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let not_elf = |reason: String| PythonError::Read {
            path: path.to_path_buf(),
            reason: format!("not an x86-64 ELF file: {reason}"),
        };
        let file = ElfFile64::<Endianness>::parse(&*data).map_err(|e| not_elf(e.to_string()))?;
        let pie = file.kind() == object::ObjectKind::Dynamic;
        let segments = file
            .segments()
            .map(|s| {
                let (off, size) = s.file_range();
                let exec = match s.flags() {
                    object::SegmentFlags::Elf { p_flags } => p_flags & elf::PF_X != 0,
                    _ => false,
                };
                (s.address(), s.size(), off, size, exec)
            })
            .collect();
        let mut symbols = HashMap::new();
        for sym in file.dynamic_symbols().chain(file.symbols()) {
            if !matches!(sym.kind(), SymbolKind::Text | SymbolKind::Data) || sym.address() == 0 {
                continue;
            }
            let Ok(name) = sym.name() else { continue };
            let name = name.split('@').next().unwrap_or(name);
            symbols
                .entry(name.to_string())
                .or_insert((sym.address(), sym.size()));
        }
        let mut relative = HashMap::new();
        if let Some(relocs) = file.dynamic_relocations() {
            for (at, r) in relocs {
                if let RelocationFlags::Elf { r_type } = r.flags() {
                    if r_type == elf::R_X86_64_RELATIVE {
                        relative.insert(at, r.addend() as u64);
                    }
                }
            }
        }
        let sections = file
            .sections()
            .filter_map(|s| Some((s.name().ok()?.to_string(), (s.address(), s.size()))))
            .collect();
        let (needed, runpath) = dynamic_strings(&file, &data);
        let build_id = file
            .build_id()
            .ok()
            .flatten()
            .map(|b| b.iter().map(|x| format!("{x:02x}")).collect());
        let has_symtab = file.section_by_name(".symtab").is_some();
        Ok(Image {
            path: path.to_path_buf(),
            data,
            pie,
            segments,
            symbols,
            relative,
            sections,
            needed,
            runpath,
            build_id,
            has_symtab,
        })
    }

    /// (vaddr, size) of a symbol.
    pub fn symbol(&self, name: &str) -> Option<(u64, u64)> {
        self.symbols.get(name).copied()
    }

    /// Symbols whose name starts with `prefix` (local statics like
    /// `opcode_targets.3`).
    pub fn symbols_with_prefix<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = (&'a str, u64, u64)> + 'a {
        self.symbols
            .iter()
            .filter(move |(n, _)| n.starts_with(prefix))
            .map(|(n, &(a, s))| (n.as_str(), a, s))
    }

    pub fn section(&self, name: &str) -> Option<(u64, u64)> {
        self.sections.get(name).copied()
    }

    /// File offset of a virtual address backed by file bytes.
    pub fn file_offset(&self, vaddr: u64) -> Option<u64> {
        self.segments
            .iter()
            .find(|&&(va, _, _, fsz, _)| vaddr >= va && vaddr < va + fsz)
            .map(|&(va, _, off, _, _)| vaddr - va + off)
    }

    /// Whether `vaddr` is in an executable segment.
    pub fn is_code(&self, vaddr: u64) -> bool {
        self.segments
            .iter()
            .any(|&(va, msz, _, _, x)| x && vaddr >= va && vaddr < va + msz)
    }

    /// File bytes at `vaddr` (at most `len`, fewer at the segment's end).
    pub fn bytes(&self, vaddr: u64, len: usize) -> Option<&[u8]> {
        let &(va, _, off, fsz, _) = self
            .segments
            .iter()
            .find(|&&(va, _, _, fsz, _)| vaddr >= va && vaddr < va + fsz)?;
        let start = (vaddr - va + off) as usize;
        let end = (off + fsz) as usize;
        let end = end.min(start + len).min(self.data.len());
        self.data.get(start..end)
    }

    /// The pointer stored at `vaddr` as the loader leaves it (relative to
    /// the load base): the RELATIVE relocation's addend in a PIE/.so, the
    /// stored value in a fixed-address executable.
    pub fn pointer(&self, vaddr: u64) -> Option<u64> {
        if self.pie {
            return self.relative.get(&vaddr).copied();
        }
        let b = self.bytes(vaddr, 8)?;
        Some(u64::from_le_bytes(b.try_into().ok()?))
    }

    /// Every 8-byte slot holding a pointer: RELATIVE relocations (PIE) or
    /// aligned words of the non-executable file-backed segments.
    pub fn pointer_slots(&self) -> Vec<(u64, u64)> {
        if self.pie {
            let mut v: Vec<(u64, u64)> = self.relative.iter().map(|(&a, &v)| (a, v)).collect();
            v.sort_unstable();
            return v;
        }
        let mut out = Vec::new();
        for &(va, _, off, fsz, exec) in &self.segments {
            if exec {
                continue;
            }
            let base = va.next_multiple_of(8);
            let mut a = base;
            while a + 8 <= va + fsz {
                let s = (a - va + off) as usize;
                if let Some(b) = self.data.get(s..s + 8) {
                    out.push((a, u64::from_le_bytes(b.try_into().unwrap_or_default())));
                }
                a += 8;
            }
        }
        out
    }

    /// The first virtual address of the executable segment minus its file
    /// offset (0 for a shared library, 0x400000 for a classic executable).
    pub fn text_delta(&self) -> u64 {
        self.segments
            .iter()
            .find(|s| s.4)
            .map(|&(va, _, off, _, _)| va - off)
            .unwrap_or(0)
    }
}

/// DT_NEEDED names and DT_RUNPATH/DT_RPATH directories.
fn dynamic_strings(file: &ElfFile64<Endianness>, data: &[u8]) -> (Vec<String>, Vec<String>) {
    use object::read::elf::{Dyn as _, FileHeader as _, SectionHeader as _};
    let (mut needed, mut runpath) = (Vec::new(), Vec::new());
    let endian = file.endian();
    let header = file.elf_header();
    let Ok(sections) = header.sections(endian, data) else {
        return (needed, runpath);
    };
    for section in sections.iter() {
        if section.sh_type(endian) != elf::SHT_DYNAMIC {
            continue;
        }
        let Ok(Some((dyns, link))) = section.dynamic(endian, data) else {
            continue;
        };
        let Ok(strings) = sections.strings(endian, data, link) else {
            continue;
        };
        for d in dyns {
            let tag = d.d_tag(endian) as u32;
            if tag != elf::DT_NEEDED && tag != elf::DT_RUNPATH && tag != elf::DT_RPATH {
                continue;
            }
            let Ok(s) = d.string(endian, strings) else {
                continue;
            };
            let s = String::from_utf8_lossy(s).into_owned();
            if tag == elf::DT_NEEDED {
                needed.push(s);
            } else {
                runpath.extend(s.split(':').map(str::to_string));
            }
        }
    }
    (needed, runpath)
}
