//! Loads uprobe programs with `expected_attach_type = BPF_TRACE_UPROBE_MULTI`.
//!
//! The kernel refuses a uprobe-multi link to a program loaded without that
//! attach type (and picks `bpf_get_attach_cookie`'s implementation from it).
//! aya 0.14 always loads a uprobe with none (`UProbe::load` passes no attach
//! type and aya-obj 0.3 does not know `uprobe.multi` sections), and keeps the
//! relocated instructions private. So the object is parsed a second time with
//! aya-obj's public API, its map references are relocated to the maps the
//! `Ebpf` already created (same maps, so both copies of a program share every
//! map and global), its calls are linked, and the program is loaded with a
//! raw `BPF_PROG_LOAD`. The programs' sections stay `uprobe`/`uretprobe`, so
//! aya still loads them the ordinary way for the perf-event path.
use std::{
    collections::HashSet,
    os::fd::{AsFd, AsRawFd, OwnedFd, RawFd},
};

use aya::{maps::Map, Ebpf};
use aya_obj::{
    btf::{Btf, BtfFeatures},
    generated::{bpf_attach_type, bpf_prog_type},
    Object, ProgramSection,
};

use super::{
    sys::{self, BtfInfo, ProgLoad},
    AttachError, Direction,
};

/// The eBPF object parsed and relocated against a loaded [`Ebpf`]'s maps,
/// ready to load its uprobe programs for uprobe-multi links.
pub struct MultiLoader {
    obj: Object,
    /// The object's BTF, loaded into the kernel (None: the object has none,
    /// or the kernel refused it; programs without subprograms load without).
    btf: Option<OwnedFd>,
}

fn load_err(program: &str, reason: impl std::fmt::Display) -> AttachError {
    AttachError::Load {
        program: program.to_string(),
        reason: reason.to_string(),
    }
}

impl MultiLoader {
    /// `object` must be the bytes `ebpf` was loaded from, with every map
    /// still in `ebpf` (take maps out only after loading the programs).
    pub fn new(object: &[u8], ebpf: &Ebpf) -> Result<MultiLoader, AttachError> {
        let err = |e: &dyn std::fmt::Display| load_err("(object)", e);
        let mut obj = Object::parse(object).map_err(|e| err(&e))?;
        if obj.has_btf_relocations() {
            let btf = Btf::from_sys_fs().map_err(|e| err(&e))?;
            obj.relocate_btf(&btf).map_err(|e| err(&e))?;
        }
        let maps = std::mem::take(&mut obj.maps);
        let mut with_fds = Vec::with_capacity(maps.len());
        for (name, map) in &maps {
            let fd = ebpf
                .map(name)
                .map(map_fd)
                .ok_or_else(|| err(&format!("map {name} is not in the loaded object")))?;
            with_fds.push((name.as_str(), fd, map));
        }
        let text_sections: HashSet<usize> = obj.functions.keys().map(|&(s, _)| s).collect();
        obj.relocate_maps(with_fds.into_iter(), &text_sections)
            .map_err(|e| err(&e))?;
        obj.relocate_calls(&text_sections).map_err(|e| err(&e))?;
        // A program with BPF-to-BPF calls or callbacks (bpf_loop) needs
        // its BTF func_info, and so the object's BTF loaded, as aya does
        // (every BTF feature: the kernels with uprobe-multi have them all).
        let features = BtfFeatures::new(true, true, true, true, true, true, true, true);
        let btf = match obj.fixup_and_sanitize_btf(&features) {
            Ok(Some(btf)) => sys::btf_load(&btf.to_bytes()).ok(),
            _ => None,
        };
        Ok(MultiLoader { obj, btf })
    }

    /// Loads program `name` (a `uprobe` or `uretprobe` section) for
    /// uprobe-multi links; its direction comes from its section.
    pub fn load(&self, name: &str) -> Result<(OwnedFd, Direction), AttachError> {
        let prog = self
            .obj
            .programs
            .get(name)
            .ok_or_else(|| load_err(name, "no such program in the object"))?;
        let direction = match prog.section {
            ProgramSection::UProbe { sleepable: false } => Direction::Entry,
            ProgramSection::URetProbe { sleepable: false } => Direction::Return,
            ref other => return Err(load_err(name, format!("not a uprobe program: {other:?}"))),
        };
        let func = self
            .obj
            .functions
            .get(&prog.function_key())
            .ok_or_else(|| load_err(name, "its code is missing from the object"))?;
        let (func_info, line_info) = (
            func.func_info.func_info_bytes(),
            func.line_info.line_info_bytes(),
        );
        let btf = self.btf.as_ref().map(|fd| BtfInfo {
            fd: fd.as_fd(),
            func_info: &func_info,
            func_info_rec_size: func.func_info_rec_size as u32,
            line_info: &line_info,
            line_info_rec_size: func.line_info_rec_size as u32,
        });
        let fd = sys::prog_load(&ProgLoad {
            name,
            prog_type: bpf_prog_type::BPF_PROG_TYPE_KPROBE,
            expected_attach_type: Some(bpf_attach_type::BPF_TRACE_UPROBE_MULTI),
            insns: &func.instructions,
            license: &prog.license,
            btf,
        })
        .map_err(|f| {
            load_err(
                name,
                match f.log.is_empty() {
                    true => f.error.to_string(),
                    false => format!("{}; verifier: {}", f.error, f.log),
                },
            )
        })?;
        Ok((fd, direction))
    }
}

/// The descriptor of any kind of map.
fn map_fd(map: &Map) -> RawFd {
    let data = match map {
        Map::Array(d)
        | Map::ArrayOfMaps(d)
        | Map::BloomFilter(d)
        | Map::CgroupArray(d)
        | Map::CgroupStorage(d)
        | Map::CgrpStorage(d)
        | Map::CpuMap(d)
        | Map::DevMap(d)
        | Map::DevMapHash(d)
        | Map::HashMap(d)
        | Map::HashOfMaps(d)
        | Map::InodeStorage(d)
        | Map::LpmTrie(d)
        | Map::LruHashMap(d)
        | Map::PerCpuArray(d)
        | Map::PerCpuCgroupStorage(d)
        | Map::PerCpuHashMap(d)
        | Map::PerCpuLruHashMap(d)
        | Map::PerfEventArray(d)
        | Map::ProgramArray(d)
        | Map::Queue(d)
        | Map::ReusePortSockArray(d)
        | Map::RingBuf(d)
        | Map::SockHash(d)
        | Map::SockMap(d)
        | Map::SkStorage(d)
        | Map::Stack(d)
        | Map::StackTraceMap(d)
        | Map::Unsupported(d)
        | Map::XskMap(d) => d,
    };
    data.fd().as_fd().as_raw_fd()
}
