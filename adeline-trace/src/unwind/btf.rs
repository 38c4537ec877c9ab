//! The few kernel structure offsets unwind support needs, read from the
//! running kernel's BTF (/sys/kernel/btf/vmlinux): enough of the format to
//! find a struct by name and a member's byte offset, looking through
//! anonymous struct/union members (mm_struct keeps its fields in one).
use std::collections::HashMap;

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum BtfError {
    #[error("cannot read the kernel's BTF ({path}): {reason}")]
    Read { path: String, reason: String },
    #[error("the kernel's BTF is malformed: {0}")]
    Malformed(&'static str),
    #[error("the kernel's BTF has no {0}")]
    Missing(String),
}

const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

struct Member {
    name: String,
    type_id: u32,
    bit_offset: u32,
}

struct Type {
    kind: u32,
    name: String,
    /// `type` of modifiers and typedefs.
    target: u32,
    members: Vec<Member>,
}

/// Parsed BTF: types by id (1-based), structs by name.
pub struct Btf {
    types: Vec<Type>,
    structs: HashMap<String, u32>,
}

fn u32_at(b: &[u8], off: usize) -> Result<u32, BtfError> {
    b.get(off..off + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or(BtfError::Malformed("truncated"))
}

impl Btf {
    /// The running kernel's BTF.
    pub fn kernel() -> Result<Btf, BtfError> {
        let path = "/sys/kernel/btf/vmlinux";
        let data = std::fs::read(path).map_err(|e| BtfError::Read {
            path: path.into(),
            reason: e.to_string(),
        })?;
        Btf::parse(&data)
    }

    /// Parses a little-endian BTF blob.
    pub fn parse(b: &[u8]) -> Result<Btf, BtfError> {
        if b.len() < 24 || b[0..2] != [0x9f, 0xeb] {
            return Err(BtfError::Malformed("bad magic"));
        }
        let hdr_len = u32_at(b, 4)? as usize;
        let (type_off, type_len) = (u32_at(b, 8)? as usize, u32_at(b, 12)? as usize);
        let (str_off, str_len) = (u32_at(b, 16)? as usize, u32_at(b, 20)? as usize);
        let strs = b
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or(BtfError::Malformed("string section out of bounds"))?;
        let name = |off: u32| -> String {
            let s = strs.get(off as usize..).unwrap_or_default();
            let end = s.iter().position(|&c| c == 0).unwrap_or(s.len());
            String::from_utf8_lossy(&s[..end]).into_owned()
        };
        let types_b = b
            .get(hdr_len + type_off..hdr_len + type_off + type_len)
            .ok_or(BtfError::Malformed("type section out of bounds"))?;
        let mut types = vec![Type {
            kind: 0,
            name: String::new(),
            target: 0,
            members: Vec::new(),
        }];
        let mut structs = HashMap::new();
        let mut pos = 0;
        while pos + 12 <= types_b.len() {
            let name_off = u32_at(types_b, pos)?;
            let info = u32_at(types_b, pos + 4)?;
            let target = u32_at(types_b, pos + 8)?;
            pos += 12;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let kind_flag = info >> 31 != 0;
            let mut members = Vec::new();
            let extra = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let m = pos + 12 * i;
                        let off = u32_at(types_b, m + 8)?;
                        members.push(Member {
                            name: name(u32_at(types_b, m)?),
                            type_id: u32_at(types_b, m + 4)?,
                            bit_offset: if kind_flag { off & 0x00ff_ffff } else { off },
                        });
                    }
                    12 * vlen
                }
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
                KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
                0..=19 => 0,
                _ => return Err(BtfError::Malformed("unknown type kind")),
            };
            pos += extra;
            let ty = Type {
                kind,
                name: name(name_off),
                target,
                members,
            };
            if kind == KIND_STRUCT && !ty.name.is_empty() && !ty.members.is_empty() {
                structs.entry(ty.name.clone()).or_insert(types.len() as u32);
            }
            types.push(ty);
        }
        Ok(Btf { types, structs })
    }

    /// Follows typedefs and qualifiers.
    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..32 {
            let t = self.types.get(id as usize)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.target
                }
                _ => return Some(t),
            }
        }
        None
    }

    /// Bit offset of `member` inside the struct/union `t`, searching
    /// anonymous members too.
    fn find(&self, t: &Type, member: &str, depth: u32) -> Option<u32> {
        for m in &t.members {
            if m.name == member {
                return Some(m.bit_offset);
            }
        }
        if depth > 8 {
            return None;
        }
        for m in t.members.iter().filter(|m| m.name.is_empty()) {
            if let Some(inner) = self.resolve(m.type_id) {
                if matches!(inner.kind, KIND_STRUCT | KIND_UNION) {
                    if let Some(off) = self.find(inner, member, depth + 1) {
                        return Some(m.bit_offset + off);
                    }
                }
            }
        }
        None
    }

    /// Byte offset of `member` in `struct name`.
    pub fn offset(&self, name: &str, member: &str) -> Result<u32, BtfError> {
        let missing = || BtfError::Missing(format!("struct {name} member {member}"));
        let id = *self.structs.get(name).ok_or_else(missing)?;
        let t = &self.types[id as usize];
        let bits = self.find(t, member, 0).ok_or_else(missing)?;
        if bits % 8 != 0 {
            return Err(missing());
        }
        Ok(bits / 8)
    }
}

/// The offsets the unwind programs read the kernel's uprobe state with
/// (globals `UW_*` of adeline-trace-ebpf/src/unwind.rs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelOffsets {
    pub task_mm: u32,
    pub mm_xol_area: u32,
    pub xol_vaddr: u32,
    pub task_utask: u32,
    pub utask_ri: u32,
    pub ri_stack: u32,
    pub ri_orig: u32,
    pub ri_next: u32,
}

impl KernelOffsets {
    pub fn from_btf(btf: &Btf) -> Result<KernelOffsets, BtfError> {
        Ok(KernelOffsets {
            task_mm: btf.offset("task_struct", "mm")?,
            mm_xol_area: btf.offset("mm_struct", "uprobes_state")?
                + btf.offset("uprobes_state", "xol_area")?,
            xol_vaddr: btf.offset("xol_area", "vaddr")?,
            task_utask: btf.offset("task_struct", "utask")?,
            utask_ri: btf.offset("uprobe_task", "return_instances")?,
            ri_stack: btf.offset("return_instance", "stack")?,
            ri_orig: btf.offset("return_instance", "orig_ret_vaddr")?,
            ri_next: btf.offset("return_instance", "next")?,
        })
    }

    /// The running kernel's.
    pub fn kernel() -> Result<KernelOffsets, BtfError> {
        KernelOffsets::from_btf(&Btf::kernel()?)
    }

    /// (global name, value) pairs for the loader.
    pub fn globals(&self) -> [(&'static str, u32); 8] {
        [
            ("UW_TASK_MM", self.task_mm),
            ("UW_MM_XOL_AREA", self.mm_xol_area),
            ("UW_XOL_VADDR", self.xol_vaddr),
            ("UW_TASK_UTASK", self.task_utask),
            ("UW_UTASK_RI", self.utask_ri),
            ("UW_RI_STACK", self.ri_stack),
            ("UW_RI_ORIG", self.ri_orig),
            ("UW_RI_NEXT", self.ri_next),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob: `struct s { int a; union { long b; struct { int c; }; }; }`.
    fn blob() -> Vec<u8> {
        let strs = b"\0int\0s\0a\0b\0c\0long\0".to_vec();
        // offsets: int=1 s=5 a=7 b=9 c=11 long=13
        let mut t: Vec<u32> = Vec::new();
        // [1] INT int size 4
        t.extend([1, KIND_INT << 24, 4, 32]);
        // [2] INT long size 8
        t.extend([13, KIND_INT << 24, 8, 64]);
        // [3] STRUCT (anon) { int c @0 }
        t.extend([0, KIND_STRUCT << 24 | 1, 4, 11, 1, 0]);
        // [4] UNION (anon) { long b @0; struct [3] @0 }
        t.extend([0, KIND_UNION << 24 | 2, 8, 9, 2, 0, 0, 3, 0]);
        // [5] STRUCT s { int a @0; union [4] @64 }
        t.extend([5, KIND_STRUCT << 24 | 2, 16, 7, 1, 0, 0, 4, 64]);
        let types: Vec<u8> = t.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut b = vec![0x9f, 0xeb, 1, 0];
        for v in [24u32, 0, types.len() as u32, types.len() as u32, strs.len() as u32] {
            b.extend(v.to_le_bytes());
        }
        b.extend(types);
        b.extend(strs);
        b
    }

    #[test]
    fn finds_members_through_anonymous_unions_and_structs() {
        let btf = Btf::parse(&blob()).unwrap();
        assert_eq!(btf.offset("s", "a"), Ok(0));
        assert_eq!(btf.offset("s", "b"), Ok(8));
        assert_eq!(btf.offset("s", "c"), Ok(8));
        assert!(matches!(btf.offset("s", "d"), Err(BtfError::Missing(_))));
        assert!(matches!(btf.offset("t", "a"), Err(BtfError::Missing(_))));
    }

    #[test]
    fn rejects_garbage() {
        assert!(Btf::parse(b"not btf at all, not at all").is_err());
        let mut b = blob();
        b.truncate(40);
        assert!(Btf::parse(&b).is_err());
    }

    #[test]
    fn reads_this_kernels_offsets() {
        // Only where the kernel exposes BTF (every kernel this agent needs).
        if std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
            let o = KernelOffsets::kernel().expect("uprobe structures in BTF");
            assert!(o.ri_stack != o.ri_orig && o.ri_next != o.ri_stack);
        }
    }
}
