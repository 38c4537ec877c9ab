//! Struct layouts from the kernel's BTF (`/sys/kernel/btf/vmlinux`).
//! aya-ebpf programs have no CO-RE field access, so the agent reads the
//! offsets the kernel programs need and passes them as load-time
//! constants: the profiler's `task_struct.thread.fsbase` (x86-64; a
//! thread's pthread data, for Python frames) and
//! `task_struct.sched_info.run_delay` (a thread's total wait for a CPU,
//! which splits its off-CPU time), the memory mode's `mm_struct.rss_stat`
//! and `percpu_counter` fields (memory.rs). A small reader of the BTF type
//! section: the few kinds' record sizes, structs' members,
//! typedef/qualifier chains.
use std::collections::HashMap;

const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_TYPE_TAG: u32 = 18;

/// One type record: its kind, name, the `size/type` word, and for
/// structs and unions their members (name, type id, bit offset).
struct Type {
    kind: u32,
    name: u32,
    size_or_type: u32,
    members: Vec<(u32, u32, u32)>,
}

/// The parsed type section and its strings.
pub struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
    by_name: HashMap<Vec<u8>, Vec<u32>>,
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

impl Btf {
    /// The running kernel's BTF.
    pub fn vmlinux() -> Option<Btf> {
        Btf::parse(&std::fs::read("/sys/kernel/btf/vmlinux").ok()?)
    }

    pub fn parse(data: &[u8]) -> Option<Btf> {
        if data.get(..2)? != [0x9f, 0xeb] {
            return None;
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let (type_off, type_len) = (u32_at(data, 8)? as usize, u32_at(data, 12)? as usize);
        let (str_off, str_len) = (u32_at(data, 16)? as usize, u32_at(data, 20)? as usize);
        let types_b = data.get(hdr_len + type_off..hdr_len + type_off + type_len)?;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)?
            .to_vec();
        // Type id 0 is void.
        let mut types = vec![Type {
            kind: 0,
            name: 0,
            size_or_type: 0,
            members: Vec::new(),
        }];
        let mut at = 0usize;
        while at + 12 <= types_b.len() {
            let name = u32_at(types_b, at)?;
            let info = u32_at(types_b, at + 4)?;
            let size_or_type = u32_at(types_b, at + 8)?;
            let (kind, vlen, kflag) = ((info >> 24) & 0x1f, (info & 0xffff) as usize, info >> 31);
            at += 12;
            let mut members = Vec::new();
            let extra = match kind {
                1 | 14 | 17 => 4,     // int, var, decl_tag
                3 => 12,              // array
                6 | 13 => 8 * vlen,   // enum, func_proto
                15 | 19 => 12 * vlen, // datasec, enum64
                KIND_STRUCT | KIND_UNION => {
                    for m in 0..vlen {
                        let o = at + 12 * m;
                        let off = u32_at(types_b, o + 8)?;
                        let bits = if kflag != 0 { off & 0xff_ffff } else { off };
                        members.push((u32_at(types_b, o)?, u32_at(types_b, o + 4)?, bits));
                    }
                    12 * vlen
                }
                _ => 0,
            };
            at += extra;
            types.push(Type {
                kind,
                name,
                size_or_type,
                members,
            });
        }
        let mut btf = Btf {
            types,
            strings,
            by_name: HashMap::new(),
        };
        for (id, t) in btf.types.iter().enumerate() {
            if matches!(t.kind, KIND_STRUCT | KIND_UNION) && t.name != 0 {
                let n = btf.name(t.name).to_vec();
                btf.by_name.entry(n).or_default().push(id as u32);
            }
        }
        Some(btf)
    }

    fn name(&self, off: u32) -> &[u8] {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        &rest[..rest.iter().position(|&c| c == 0).unwrap_or(rest.len())]
    }

    /// Follows typedefs and qualifiers.
    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..16 {
            let t = self.types.get(id as usize)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type
                }
                _ => return Some(t),
            }
        }
        None
    }

    /// Byte offset of `member` in struct `ty` (searching anonymous struct
    /// and union members too), and the member's type id.
    fn member(&self, ty: &Type, member: &[u8]) -> Option<(u32, u32)> {
        for &(name, mty, bits) in &ty.members {
            if name != 0 {
                if self.name(name) == member {
                    return Some((bits / 8, mty));
                }
                continue;
            }
            let inner = self.resolve(mty)?;
            if let Some((off, t)) = self.member(inner, member) {
                return Some((bits / 8 + off, t));
            }
        }
        None
    }

    /// Struct (or union) `name`: a forward-declared or duplicated name
    /// gives the one with members.
    fn named(&self, name: &str) -> Option<&Type> {
        let ids = self.by_name.get(name.as_bytes())?;
        ids.iter()
            .filter_map(|&id| self.types.get(id as usize))
            .find(|t| !t.members.is_empty())
    }

    /// `sizeof(struct name)`.
    pub fn size_of(&self, name: &str) -> Option<u64> {
        self.named(name).map(|t| u64::from(t.size_or_type))
    }

    /// Byte offset of `path` (member names) from the start of struct `root`.
    pub fn offset_of(&self, root: &str, path: &[&str]) -> Option<u64> {
        let mut ty = self.named(root)?;
        let mut total = 0u64;
        for (i, m) in path.iter().enumerate() {
            let (off, mty) = self.member(ty, m.as_bytes())?;
            total += u64::from(off);
            if i + 1 < path.len() {
                ty = self.resolve(mty)?;
            }
        }
        Some(total)
    }
}

/// `offsetof(struct task_struct, thread.fsbase)` and
/// `sched_info.run_delay` of the running kernel (0: not found).
pub fn task_offsets() -> (u64, u64) {
    match Btf::vmlinux() {
        Some(btf) => (
            btf.offset_of("task_struct", &["thread", "fsbase"])
                .unwrap_or(0),
            btf.offset_of("task_struct", &["sched_info", "run_delay"])
                .unwrap_or(0),
        ),
        None => (0, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_fsbase_in_the_running_kernel() {
        let Some(btf) = Btf::vmlinux() else {
            return; // no BTF on this kernel
        };
        let thread = btf.offset_of("task_struct", &["thread"]).unwrap();
        let fs = btf.offset_of("thread_struct", &["fsbase"]).unwrap();
        let info = btf.offset_of("task_struct", &["sched_info"]).unwrap();
        let delay = btf.offset_of("sched_info", &["run_delay"]).unwrap();
        assert_eq!(task_offsets(), (thread + fs, info + delay));
        // sched_info is early, thread is the last big member.
        assert!(
            info > 0 && info < thread,
            "sched_info {info} thread {thread}"
        );
    }
}
