//! Function symbols of an ELF executable or shared library: demangled names,
//! glob/exact matching, and the file offsets uprobes attach to.

use std::cmp::Ordering;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use globset::{GlobBuilder, GlobMatcher};
use object::{Object, ObjectKind, ObjectSegment, ObjectSymbol, SegmentFlags, SymbolKind};

use super::TargetError;

/// One probeable function of an ELF file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionSymbol {
    /// The symbol name as stored in the file (mangled, without `@VERSION`).
    pub raw: String,
    /// Demangled C++ (full signature) or Rust (no hash) name; `raw` otherwise.
    pub demangled: String,
    /// Link-time virtual address (`st_value`).
    pub address: u64,
    /// Symbol size in bytes (0 when unknown).
    pub size: u64,
    /// Offset in the file, as uprobes expect it.
    pub file_offset: u64,
    /// An `STT_GNU_IFUNC` symbol: its code is the resolver that picks an
    /// implementation at load time, not the function callers run.
    pub ifunc: bool,
}

/// The functions of one ELF executable or shared library.
#[derive(Debug, Clone)]
pub struct ElfFile {
    /// The path the file was opened from.
    pub path: PathBuf,
    /// One entry per function address, in address order.
    pub functions: Vec<FunctionSymbol>,
    /// The file has no `.symtab`: only `.dynsym` functions are known.
    pub stripped: bool,
    /// Every name (canonical and aliases) pointing into `functions`.
    names: Vec<NameEntry>,
    /// GCC's split fragments (`f.cold`, `f.part.0`): (raw name, file
    /// offset, size). Not functions, but their branches can jump back into
    /// their function's body (probe placement scans them).
    pub fragments: Vec<(String, u64, u64)>,
}

/// A name a function can be found by.
#[derive(Debug, Clone)]
struct NameEntry {
    raw: String,
    demangled: String,
    /// C++ demangled name without its final argument list.
    base: Option<String>,
    index: usize,
}

/// A `PT_LOAD` segment, enough to turn virtual addresses into file offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LoadSegment {
    pub vaddr: u64,
    pub memsz: u64,
    pub offset: u64,
    pub filesz: u64,
    pub executable: bool,
}

impl LoadSegment {
    /// File offset of `addr` if it lies in the file-backed part of this segment.
    pub(crate) fn file_offset(&self, addr: u64) -> Option<u64> {
        let delta = addr.checked_sub(self.vaddr)?;
        if delta >= self.filesz.min(self.memsz) {
            return None;
        }
        self.offset.checked_add(delta)
    }
}

/// The `PT_LOAD` segment whose file-backed part holds `addr`.
pub(crate) fn segment_for(segments: &[LoadSegment], addr: u64) -> Option<&LoadSegment> {
    segments.iter().find(|s| s.file_offset(addr).is_some())
}

/// File offset of virtual address `addr`: `addr - p_vaddr + p_offset` of the
/// `PT_LOAD` segment holding it (works for PIE, non-PIE and shared objects).
pub(crate) fn vaddr_to_offset(segments: &[LoadSegment], addr: u64) -> Option<u64> {
    segment_for(segments, addr)?.file_offset(addr)
}

/// Read a whole file after checking that it starts with the ELF magic.
pub(crate) fn read_elf(path: &Path) -> Result<Vec<u8>, TargetError> {
    let meta = std::fs::metadata(path).map_err(|e| TargetError::io(path, e))?;
    if !meta.is_file() {
        return Err(not_elf(path, "not a regular file"));
    }
    let mut file = File::open(path).map_err(|e| TargetError::io(path, e))?;
    let mut data = Vec::with_capacity(meta.len().min(1 << 30) as usize);
    let mut magic = [0u8; 4];
    let got = read_up_to(&mut file, &mut magic).map_err(|e| TargetError::io(path, e))?;
    if &magic[..got] != b"\x7fELF" {
        return Err(not_elf(path, "no ELF magic"));
    }
    data.extend_from_slice(&magic);
    file.read_to_end(&mut data)
        .map_err(|e| TargetError::io(path, e))?;
    Ok(data)
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

fn not_elf(path: &Path, reason: &str) -> TargetError {
    TargetError::NotElf {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Parse `data` as an ELF executable or shared object.
pub(crate) fn parse_elf<'d>(path: &Path, data: &'d [u8]) -> Result<object::File<'d>, TargetError> {
    let obj = object::File::parse(data).map_err(|e| not_elf(path, &e.to_string()))?;
    if obj.format() != object::BinaryFormat::Elf {
        return Err(not_elf(path, "not an ELF file"));
    }
    // The uprobe offsets and the instruction checks are x86-64's; another
    // machine's code would be probed at meaningless places.
    if obj.architecture() != object::Architecture::X86_64 || !obj.is_64() {
        return Err(TargetError::WrongMachine {
            path: path.to_path_buf(),
            machine: format!("{:?}", obj.architecture()).to_lowercase(),
            bits: if obj.is_64() { 64 } else { 32 },
        });
    }
    match obj.kind() {
        ObjectKind::Executable | ObjectKind::Dynamic => Ok(obj),
        ObjectKind::Relocatable => Err(not_elf(path, "relocatable object file, not linked")),
        ObjectKind::Core => Err(not_elf(path, "core dump")),
        _ => Err(not_elf(path, "unknown ELF type")),
    }
}

/// The `PT_LOAD` segments of a parsed ELF file. A segment whose file range
/// runs past the end of the file (a corrupt header) has no file-backed
/// part: no probe or semaphore offset is ever taken from it.
pub(crate) fn load_segments(obj: &object::File<'_>) -> Vec<LoadSegment> {
    obj.segments()
        .map(|seg| {
            let (offset, filesz) = seg.file_range();
            let filesz = if seg.data().is_ok() { filesz } else { 0 };
            let executable = match seg.flags() {
                SegmentFlags::Elf { p_flags } => p_flags & object::elf::PF_X != 0,
                _ => false,
            };
            LoadSegment {
                vaddr: seg.address(),
                memsz: seg.size(),
                offset,
                filesz,
                executable,
            }
        })
        .collect()
}

/// Demangle a C++ (full signature) or Rust (without hash) symbol; other names
/// are returned unchanged.
pub fn demangle(raw: &str) -> String {
    if let Ok(d) = rustc_demangle::try_demangle(raw) {
        return format!("{d:#}");
    }
    cpp_demangle_name(raw).unwrap_or_else(|| raw.to_string())
}

fn cpp_demangle_name(raw: &str) -> Option<String> {
    if !raw.starts_with("_Z") {
        return None;
    }
    let sym = cpp_demangle::Symbol::new(raw).ok()?;
    sym.demangle(&cpp_demangle::DemangleOptions::default()).ok()
}

/// The name a user types for a C++ function: the demangled name without its
/// final argument list and without a leading return type (template functions):
/// `int ns::twice<int>(int)` -> `ns::twice<int>`.
fn cpp_base_name(demangled: &str) -> Option<&str> {
    let base = strip_arguments(demangled)?;
    Some(strip_return_type(base))
}

/// Drop a leading return type, i.e. everything up to the last space outside
/// `<>` and `()`. Names with `operator` are left alone (`operator new`,
/// `operator<`).
fn strip_return_type(base: &str) -> &str {
    if base.contains("operator") {
        return base;
    }
    let mut depth = 0i32;
    let mut cut = None;
    for (i, c) in base.char_indices() {
        match c {
            '<' | '(' => depth += 1,
            '>' | ')' => depth -= 1,
            ' ' if depth == 0 => cut = Some(i + 1),
            _ => {}
        }
    }
    match cut {
        Some(i) if i < base.len() => &base[i..],
        _ => base,
    }
}

/// A C++ demangled name without its final top-level argument list (and any
/// qualifiers after it): `ns::f(int) const` -> `ns::f`,
/// `S::operator()(int)` -> `S::operator()`.
fn strip_arguments(demangled: &str) -> Option<&str> {
    let close = demangled.rfind(')')?;
    let mut depth = 0usize;
    for (i, c) in demangled[..=close].char_indices().rev() {
        match c {
            ')' => depth += 1,
            '(' => {
                depth -= 1;
                if depth == 0 {
                    let base = demangled[..i].trim_end();
                    return (!base.is_empty()).then_some(base);
                }
            }
            _ => {}
        }
    }
    None
}

/// One candidate symbol while collecting.
struct RawSymbol {
    name: String,
    address: u64,
    size: u64,
    /// 0 = global, 1 = weak, 2 = local.
    binding_rank: u8,
    ifunc: bool,
}

impl RawSymbol {
    /// Preference order among names of one address: global first, then fewer
    /// leading underscores, then shorter, then alphabetical.
    fn preference(&self, other: &Self) -> Ordering {
        let underscores = |s: &str| s.len() - s.trim_start_matches('_').len();
        self.binding_rank
            .cmp(&other.binding_rank)
            .then_with(|| underscores(&self.name).cmp(&underscores(&other.name)))
            .then_with(|| self.name.len().cmp(&other.name.len()))
            .then_with(|| self.name.cmp(&other.name))
    }
}

fn raw_symbol<'d>(sym: &impl ObjectSymbol<'d>) -> Option<RawSymbol> {
    if sym.kind() != SymbolKind::Text || sym.address() == 0 {
        return None;
    }
    if !matches!(sym.section(), object::SymbolSection::Section(_)) {
        return None;
    }
    let name = sym.name().ok()?;
    // `.symtab` may carry versioned definitions such as `memcpy@@GLIBC_2.14`.
    let name = match name.find('@') {
        Some(at) if at > 0 => &name[..at],
        _ => name,
    };
    if name.is_empty() || is_split_fragment(name) {
        return None;
    }
    let ifunc = matches!(
        sym.flags(),
        object::SymbolFlags::Elf { st_info, .. } if st_info & 0xf == object::elf::STT_GNU_IFUNC
    );
    let binding_rank = if sym.is_weak() {
        1
    } else if sym.is_global() {
        0
    } else {
        2
    };
    Some(RawSymbol {
        name: name.to_string(),
        address: sym.address(),
        size: sym.size(),
        binding_rank,
        ifunc,
    })
}

/// Whether `name` is a part of a function that GCC split off its body
/// (`f.cold`, `f.cold.3`, `f.part.0`, and the mangled forms
/// `_ZN3app4workEi.cold`): it is jumped into or called from inside the
/// function, so it is not where the function's calls enter. A return probe
/// placed in a `.cold` fragment would overwrite a live stack slot (it is
/// entered by a jump, with no return address on top of the stack).
fn is_split_fragment(name: &str) -> bool {
    name.split('.')
        .skip(1)
        .any(|part| part == "cold" || part == "part")
}

fn collect_symbols(obj: &object::File<'_>) -> Vec<RawSymbol> {
    let mut syms: Vec<RawSymbol> = obj
        .symbols()
        .chain(obj.dynamic_symbols())
        .filter_map(|s| raw_symbol(&s))
        .collect();
    syms.sort_by(|a, b| a.address.cmp(&b.address).then_with(|| a.preference(b)));
    syms
}

fn name_entry(raw: String, index: usize) -> NameEntry {
    let demangled = demangle(&raw);
    let is_cpp = demangled != raw && rustc_demangle::try_demangle(&raw).is_err();
    let base = is_cpp
        .then(|| cpp_base_name(&demangled).map(str::to_string))
        .flatten();
    NameEntry {
        raw,
        demangled,
        base,
        index,
    }
}

/// Group symbols by address: the first (preferred) name of each address becomes
/// the function, the others become aliases.
fn build_tables(
    syms: Vec<RawSymbol>,
    segments: &[LoadSegment],
) -> (Vec<FunctionSymbol>, Vec<NameEntry>) {
    let mut functions: Vec<FunctionSymbol> = Vec::new();
    let mut names: Vec<NameEntry> = Vec::new();
    for sym in syms {
        let same_address = functions.last().is_some_and(|f| f.address == sym.address);
        if same_address {
            let index = functions.len() - 1;
            if !names
                .iter()
                .rev()
                .take_while(|n| n.index == index)
                .any(|n| n.raw == sym.name)
            {
                names.push(name_entry(sym.name, index));
            }
            continue;
        }
        let Some(file_offset) = vaddr_to_offset(segments, sym.address) else {
            continue;
        };
        let entry = name_entry(sym.name, functions.len());
        functions.push(FunctionSymbol {
            raw: entry.raw.clone(),
            demangled: entry.demangled.clone(),
            address: sym.address,
            size: sym.size,
            file_offset,
            ifunc: sym.ifunc,
        });
        names.push(entry);
    }
    (functions, names)
}

fn has_glob_meta(pattern: &str) -> bool {
    pattern.contains(['*', '?', '['])
}

/// Compile a glob where `*` crosses `::` and `/`, and braces are literal (Rust
/// names contain `{{closure}}`).
fn compile_glob(pattern: &str) -> Result<GlobMatcher, TargetError> {
    let escaped = pattern.replace('{', "[{]").replace('}', "[}]");
    GlobBuilder::new(&escaped)
        .literal_separator(false)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| TargetError::BadPattern {
            pattern: pattern.to_string(),
            reason: e.kind().to_string(),
        })
}

impl NameEntry {
    fn matches_exact(&self, pattern: &str) -> bool {
        self.raw == pattern || self.demangled == pattern || self.base.as_deref() == Some(pattern)
    }

    fn matches_glob(&self, glob: &GlobMatcher) -> bool {
        glob.is_match(&self.raw)
            || glob.is_match(&self.demangled)
            || self.base.as_deref().is_some_and(|b| glob.is_match(b))
    }

    /// The name shown to users in suggestions.
    fn display_name(&self) -> &str {
        self.base.as_deref().unwrap_or(&self.demangled)
    }
}

impl ElfFile {
    /// Read the function symbols of the ELF executable or shared library at `path`.
    pub fn open(path: &Path) -> Result<ElfFile, TargetError> {
        ElfFile::parse(path, &read_elf(path)?)
    }

    /// The function symbols of the file contents `data`, as if read from
    /// `path` (which only names the file in errors and in `path`).
    pub fn parse(path: &Path, data: &[u8]) -> Result<ElfFile, TargetError> {
        let obj = parse_elf(path, data)?;
        let segments = load_segments(&obj);
        let stripped = obj.section_by_name(".symtab").is_none();
        let (functions, names) = build_tables(collect_symbols(&obj), &segments);
        let fragments = obj
            .symbols()
            .filter(|s| s.kind() == SymbolKind::Text && s.size() > 0)
            .filter_map(|s| {
                let name = s.name().ok()?;
                let offset = vaddr_to_offset(&segments, s.address())?;
                is_split_fragment(name).then(|| (name.to_string(), offset, s.size()))
            })
            .collect();
        Ok(ElfFile {
            path: path.to_path_buf(),
            functions,
            stripped,
            names,
            fragments,
        })
    }

    /// Indices into `functions` of every function whose name matches `pattern`
    /// (glob over raw and demangled names, or exact raw/demangled/base name).
    fn select(&self, pattern: &str) -> Result<Vec<usize>, TargetError> {
        let mut hits: Vec<usize> = if has_glob_meta(pattern) {
            let glob = compile_glob(pattern)?;
            self.names
                .iter()
                .filter(|n| n.matches_glob(&glob))
                .map(|n| n.index)
                .collect()
        } else {
            self.names
                .iter()
                .filter(|n| n.matches_exact(pattern))
                .map(|n| n.index)
                .collect()
        };
        hits.sort_unstable();
        hits.dedup();
        Ok(hits)
    }

    /// Functions matching `pattern`, sorted by file offset and unique by offset.
    ///
    /// A pattern with `*`, `?` or `[` is a glob over raw, demangled and C++
    /// base names (`*` also matches `::` and `/`). Otherwise it must equal the raw name,
    /// the demangled name, or a C++ demangled name without its argument list
    /// (`vision::scale` matches every overload).
    pub fn matching(&self, pattern: &str) -> Result<Vec<&FunctionSymbol>, TargetError> {
        let mut found: Vec<&FunctionSymbol> = self
            .select(pattern)?
            .into_iter()
            .map(|i| &self.functions[i])
            .collect();
        found.sort_by_key(|f| f.file_offset);
        found.dedup_by_key(|f| f.file_offset);
        if found.is_empty() {
            return Err(self.no_match(pattern));
        }
        Ok(found)
    }

    /// Functions matching `glob` (all when `None`), sorted by demangled name.
    /// An invalid pattern lists nothing; [`ElfFile::matching`] reports why.
    pub fn list(&self, glob: Option<&str>) -> Vec<&FunctionSymbol> {
        let mut found: Vec<&FunctionSymbol> = match glob {
            None => self.functions.iter().collect(),
            Some(p) => self
                .select(p)
                .unwrap_or_default()
                .into_iter()
                .map(|i| &self.functions[i])
                .collect(),
        };
        found.sort_by(|a, b| {
            a.demangled
                .cmp(&b.demangled)
                .then(a.address.cmp(&b.address))
        });
        found
    }

    fn no_match(&self, pattern: &str) -> TargetError {
        TargetError::NoMatch {
            pattern: pattern.to_string(),
            path: self.path.clone(),
            candidates: self.suggestions(pattern, 5),
            stripped: self.stripped,
            probeable: self.functions.len(),
        }
    }

    /// Up to `limit` names close to `pattern`: names containing it first, then
    /// by Jaro-Winkler similarity (of the whole name or its last `::` part).
    fn suggestions(&self, pattern: &str, limit: usize) -> Vec<String> {
        let needle: String = pattern
            .chars()
            .filter(|c| !matches!(c, '*' | '?' | '[' | ']'))
            .collect::<String>()
            .to_lowercase();
        if needle.is_empty() {
            return Vec::new();
        }
        let mut scored: Vec<(bool, f64, &str)> = self
            .names
            .iter()
            .filter_map(|n| {
                score(&needle, n.display_name()).map(|(sub, s)| (sub, s, n.display_name()))
            })
            .collect();
        scored.sort_by(|a, b| {
            b.0.cmp(&a.0)
                .then(b.1.total_cmp(&a.1))
                .then(a.2.len().cmp(&b.2.len()))
                .then(a.2.cmp(b.2))
        });
        let mut out: Vec<String> = Vec::new();
        for (_, _, name) in scored {
            if out.len() == limit {
                break;
            }
            if !out.iter().any(|o| o == name) {
                out.push(name.to_string());
            }
        }
        out
    }
}

/// `(is_substring, similarity)` of `name` to the lowercase `needle`, or `None`
/// when it is not worth suggesting.
fn score(needle: &str, name: &str) -> Option<(bool, f64)> {
    const MIN_SIMILARITY: f64 = 0.8;
    let lower = name.to_lowercase();
    let last = lower.rsplit("::").next().unwrap_or(&lower);
    let sim = strsim::jaro_winkler(needle, &lower).max(strsim::jaro_winkler(needle, last));
    if lower.contains(needle) {
        Some((true, sim))
    } else {
        (sim >= MIN_SIMILARITY).then_some((false, sim))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::symbols::testutil::{compile, run};
    use std::collections::HashMap;

    const CPP_SRC: &str = r#"
struct Frame { int w, h; };
namespace vision {
struct Detector {
    int infer(Frame const& f);
    int infer_layer(int x);
};
__attribute__((noinline)) int Detector::infer(Frame const& f) { return f.w * f.h; }
__attribute__((noinline)) int Detector::infer_layer(int x) { return x + 1; }
__attribute__((noinline)) int scale(int x) { return x * 3; }
__attribute__((noinline)) double scale(double x) { return x * 3.5; }
template <typename T> __attribute__((noinline)) T twice(T x) { return x + x; }
struct Op { __attribute__((noinline)) int operator()(int x) const { return x - 1; } };
}
extern "C" __attribute__((noinline)) int plain_c(int x) { return x ^ 7; }
int main(int argc, char**) {
    vision::Detector d; Frame f{argc, argc};
    vision::Op op;
    return d.infer(f) + d.infer_layer(argc) + vision::scale(argc) + (int)vision::scale(argc * 1.5)
        + vision::twice<int>(argc) + (int)vision::twice<long>(argc) + op(argc) + plain_c(argc);
}
"#;

    const C_SRC: &str = r#"
__attribute__((noinline)) int stage_one(int x) { return x * 5; }
__attribute__((noinline)) static int stage_two(int x) { return x + 9; }
int main(int argc, char **argv) { return stage_one(argc) + stage_two(argc); }
"#;

    /// Function name -> file offset, as `objdump -d -F` prints them.
    fn objdump_offsets(path: &Path) -> HashMap<String, u64> {
        let out = run("objdump", &["-d", "-F", path.to_str().unwrap()]);
        out.lines()
            .filter_map(|l| {
                let (_, rest) = l.split_once(" <")?;
                let (name, rest) = rest.split_once("> (File Offset: 0x")?;
                let off = rest.strip_suffix("):")?;
                Some((name.to_string(), u64::from_str_radix(off, 16).ok()?))
            })
            .collect()
    }

    fn assert_offsets_match_objdump(path: &Path) {
        let elf = ElfFile::open(path).unwrap();
        let expected = objdump_offsets(path);
        let mut checked = 0;
        for f in &elf.functions {
            if let Some(&off) = expected.get(&f.raw) {
                assert_eq!(f.file_offset, off, "{} in {}", f.raw, path.display());
                checked += 1;
            }
        }
        assert!(
            checked >= 2,
            "only {checked} functions cross-checked in {}",
            path.display()
        );
    }

    fn demangled(found: &[&FunctionSymbol]) -> Vec<String> {
        found.iter().map(|f| f.demangled.clone()).collect()
    }

    /// Fuzz finding (elf_symbols): the seed `cpp` with its `PT_LOAD`
    /// p_offset mutated to 0x1d0000000000, far past the end of the
    /// 1840-byte file. The segment's file range was taken as is, so every
    /// function got a file offset outside the file (a uprobe there fails to
    /// attach, or hits another file's code after a rebuild).
    #[test]
    fn segment_past_end_of_file_gives_no_offsets() {
        let data = include_bytes!("../../../fuzz/seeds/elf_symbols/crash-segment-past-eof");
        let path = Path::new("crash.elf");
        let obj = parse_elf(path, data).unwrap();
        let segments = load_segments(&obj);
        assert_eq!(segments.len(), 1);
        assert_eq!(
            (segments[0].offset, segments[0].filesz),
            (0x1d00_0000_0000, 0)
        );
        let elf = ElfFile::parse(path, data).unwrap();
        assert_eq!(elf.functions.len(), 0, "{:?}", elf.functions);
    }

    #[test]
    fn split_fragments_are_recognised() {
        for name in [
            "work.cold",
            "work.cold.3",
            "_ZN3app4workEi.cold",
            "f.part.0",
        ] {
            assert!(is_split_fragment(name), "{name}");
        }
        for name in [
            "work",
            "f.isra.0",
            "f.constprop.1",
            "coldstart",
            "_ZN4cold4partEv",
        ] {
            assert!(!is_split_fragment(name), "{name}");
        }
    }

    #[test]
    fn file_offsets_match_objdump_for_pie_non_pie_and_shared() {
        let dir = tempfile::tempdir().unwrap();
        let pie = compile(dir.path(), "pie", "gcc", C_SRC, &["-O2", "-pie", "-fPIE"]);
        let nopie = compile(dir.path(), "nopie", "gcc", C_SRC, &["-O2", "-no-pie"]);
        let so = compile(
            dir.path(),
            "libstage.so",
            "gcc",
            C_SRC,
            &["-O2", "-shared", "-fPIC"],
        );
        for path in [&pie, &nopie, &so] {
            assert_offsets_match_objdump(path);
        }
        let elf = ElfFile::open(&nopie).unwrap();
        let one = elf.matching("stage_one").unwrap();
        assert_eq!(one.len(), 1);
        assert_ne!(
            one[0].address, one[0].file_offset,
            "non-PIE text is not at vaddr == offset"
        );
        assert!(!elf.stripped);
    }

    #[test]
    fn cpp_names_overloads_templates_and_operators() {
        let dir = tempfile::tempdir().unwrap();
        let bin = compile(dir.path(), "vision", "g++", CPP_SRC, &["-O2"]);
        let elf = ElfFile::open(&bin).unwrap();

        let infer = elf.matching("vision::Detector::infer").unwrap();
        assert_eq!(demangled(&infer), ["vision::Detector::infer(Frame const&)"]);
        assert_eq!(
            elf.matching("vision::Detector::infer(Frame const&)")
                .unwrap()
                .len(),
            1
        );
        assert_eq!(elf.matching("_ZN6vision5scaleEi").unwrap().len(), 1);

        let mut scale = demangled(&elf.matching("vision::scale").unwrap());
        scale.sort();
        assert_eq!(scale, ["vision::scale(double)", "vision::scale(int)"]);

        assert_eq!(elf.matching("vision::twice<int>").unwrap().len(), 1);
        assert_eq!(elf.matching("vision::twice*").unwrap().len(), 2);
        assert_eq!(elf.matching("vision::Op::operator()").unwrap().len(), 1);
        assert_eq!(elf.matching("plain_c").unwrap().len(), 1);

        let globbed = elf.matching("*Detector::infer*").unwrap();
        assert_eq!(globbed.len(), 2);
        assert!(globbed
            .windows(2)
            .all(|w| w[0].file_offset < w[1].file_offset));
        assert_offsets_match_objdump(&bin);
    }

    #[test]
    fn no_match_suggests_close_names() {
        let dir = tempfile::tempdir().unwrap();
        let bin = compile(dir.path(), "vision", "g++", CPP_SRC, &["-O2"]);
        let elf = ElfFile::open(&bin).unwrap();
        let err = elf.matching("infr").unwrap_err();
        let TargetError::NoMatch {
            candidates,
            stripped,
            ..
        } = &err
        else {
            panic!("{err:?}");
        };
        assert!(!stripped);
        assert_eq!(
            candidates.first().map(String::as_str),
            Some("vision::Detector::infer")
        );
        assert!(candidates.len() <= 5);
        let msg = err.to_string();
        assert!(msg.starts_with("no function matching 'infr' in "), "{msg}");
        assert!(
            msg.contains("(did you mean: vision::Detector::infer, "),
            "{msg}"
        );

        // Substring matches rank before merely similar names.
        let err = elf.matching("layer").unwrap_err();
        let TargetError::NoMatch { candidates, .. } = err else {
            panic!()
        };
        assert_eq!(candidates[0], "vision::Detector::infer_layer");

        let err = elf.matching("zzzzqqq").unwrap_err();
        assert!(err.to_string().contains("adeline-trace list"), "{err}");
        assert!(matches!(
            elf.matching("[oops"),
            Err(TargetError::BadPattern { .. })
        ));
    }

    #[test]
    fn list_sorts_by_demangled_name() {
        let dir = tempfile::tempdir().unwrap();
        let bin = compile(dir.path(), "vision", "g++", CPP_SRC, &["-O2"]);
        let elf = ElfFile::open(&bin).unwrap();
        let all = elf.list(None);
        assert_eq!(all.len(), elf.functions.len());
        assert!(all.windows(2).all(|w| w[0].demangled <= w[1].demangled));
        let vision = demangled(&elf.list(Some("vision::*")));
        assert_eq!(vision.len(), 7, "{vision:?}");
        assert!(vision.windows(2).all(|w| w[0] <= w[1]));
        assert!(vision.contains(&"vision::Detector::infer(Frame const&)".to_string()));
        assert_eq!(elf.list(Some("vision::scale")).len(), 2);
        assert!(elf.list(Some("[bad")).is_empty());
    }

    /// A shared library of `n` exported functions, linked stripped (`-s`:
    /// no `.symtab`, only `.dynsym`).
    fn stripped_library(dir: &Path, n: usize) -> PathBuf {
        let src: String = (0..n)
            .map(|i| format!("int lib_fn_{i}(int x) {{ return x * {i} + 1; }}\n"))
            .collect();
        compile(
            dir,
            "libstripped.so",
            "gcc",
            &src,
            &["-O2", "-shared", "-fPIC", "-s"],
        )
    }

    #[test]
    fn stripped_library_uses_dynsym() {
        let dir = tempfile::tempdir().unwrap();
        let lib = stripped_library(dir.path(), 120);
        let elf = ElfFile::open(&lib).unwrap();
        assert!(elf.stripped);
        let nm = run("nm", &["-D", "--defined-only", lib.to_str().unwrap()]);
        let mut checked = 0;
        for line in nm.lines() {
            let mut parts = line.split_whitespace();
            let (Some(addr), Some("T"), Some(name)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let name = name.split('@').next().unwrap();
            let addr = u64::from_str_radix(addr, 16).unwrap();
            let hits = elf.matching(name).unwrap();
            assert!(
                hits.iter().any(|f| f.address == addr),
                "{name} at {addr:#x}"
            );
            checked += usize::from(name.starts_with("lib_fn_"));
        }
        assert_eq!(checked, 120, "{nm}");
        assert_eq!(elf.matching("lib_fn_*").unwrap().len(), 120);
        let err = elf.matching("no_such_function_xyz").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("the file is stripped (no .symtab); only its"),
            "{msg}"
        );
    }

    #[test]
    fn rust_symbols_of_the_test_binary() {
        let exe = std::env::current_exe().unwrap();
        let elf = ElfFile::open(&exe).unwrap();
        let hits = elf
            .matching("adeline_trace::symbols::elf::demangle")
            .unwrap();
        assert_eq!(hits.len(), 1);
        assert!(hits[0].raw.starts_with("_ZN") || hits[0].raw.starts_with("_R"));
        assert!(!elf
            .matching("adeline_trace::symbols::elf::*")
            .unwrap()
            .is_empty());
    }

    #[test]
    fn demangling() {
        assert_eq!(
            demangle("_ZN4core3fmt5write17h0123456789abcdefE"),
            "core::fmt::write"
        );
        assert_eq!(
            demangle("_ZN6vision8Detector5inferERK5Frame"),
            "vision::Detector::infer(Frame const&)"
        );
        assert_eq!(demangle("main"), "main");
        assert_eq!(demangle("_Z"), "_Z");
        assert_eq!(demangle("_ZZZZ garbage"), "_ZZZZ garbage");
    }

    #[test]
    fn base_names() {
        assert_eq!(cpp_base_name("ns::f(int) const"), Some("ns::f"));
        assert_eq!(
            cpp_base_name("S::operator()(int) const"),
            Some("S::operator()")
        );
        assert_eq!(cpp_base_name("S::operator()()"), Some("S::operator()"));
        assert_eq!(
            cpp_base_name("int ns::twice<int>(int)"),
            Some("ns::twice<int>")
        );
        assert_eq!(
            cpp_base_name("std::function<void (int)>::operator()(int) const"),
            Some("std::function<void (int)>::operator()")
        );
        assert_eq!(
            cpp_base_name("(anonymous namespace)::f(int)"),
            Some("(anonymous namespace)::f")
        );
        assert_eq!(cpp_base_name("f(int) [clone .cold]"), Some("f"));
        assert_eq!(cpp_base_name("no_args"), None);
        assert_eq!(cpp_base_name("(x)"), None);
    }

    #[test]
    fn errors_for_missing_and_non_elf_files() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        assert!(matches!(
            ElfFile::open(&missing),
            Err(TargetError::NotFound { .. })
        ));

        let text = dir.path().join("notes.txt");
        std::fs::write(&text, "hello").unwrap();
        let err = ElfFile::open(&text).unwrap_err();
        assert!(matches!(err, TargetError::NotElf { .. }));
        assert!(err
            .to_string()
            .contains("is not an ELF executable or shared library"));
        assert!(matches!(
            ElfFile::open(dir.path()),
            Err(TargetError::NotElf { .. })
        ));

        let empty = dir.path().join("empty");
        std::fs::write(&empty, "").unwrap();
        assert!(matches!(
            ElfFile::open(&empty),
            Err(TargetError::NotElf { .. })
        ));

        let obj = compile(dir.path(), "obj.o", "gcc", C_SRC, &["-c"]);
        assert!(matches!(
            ElfFile::open(&obj),
            Err(TargetError::NotElf { .. })
        ));
    }

    #[test]
    fn malformed_elf_never_panics() {
        let dir = tempfile::tempdir().unwrap();
        let bin = compile(dir.path(), "vision", "g++", CPP_SRC, &["-O2"]);
        let data = std::fs::read(&bin).unwrap();
        let bad = dir.path().join("bad");
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for cut in [
            4usize,
            16,
            63,
            64,
            200,
            1000,
            data.len() / 2,
            data.len() - 1,
        ] {
            std::fs::write(&bad, &data[..cut.min(data.len())]).unwrap();
            let _ = ElfFile::open(&bad);
        }
        for _ in 0..64 {
            let mut copy = data.clone();
            for _ in 0..32 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let i = 4 + (seed as usize) % (copy.len() - 4);
                copy[i] = (seed >> 32) as u8;
            }
            std::fs::write(&bad, &copy).unwrap();
            if let Ok(elf) = ElfFile::open(&bad) {
                let _ = elf.matching("vision::*");
                let _ = elf.matching("infr");
            }
        }
        let mut garbage = b"\x7fELF".to_vec();
        garbage.extend((0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
        std::fs::write(&bad, &garbage).unwrap();
        let _ = ElfFile::open(&bad);
    }
}
