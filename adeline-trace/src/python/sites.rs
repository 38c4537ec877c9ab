//! Where to probe inside CPython's eval loop, per version (see
//! docs/python.md). Everything is found by decoding the eval function
//! (iced-x86): the opcode handlers come from the computed-goto table
//! `opcode_targets`, and a handler's probe goes on the first instruction
//! the kernel emulates on its straight-line path ("site rule", below).
//!
//! The decoding, the kernel's emulation table and the site rule itself
//! are shared with function probes: symbols/x86.rs and
//! symbols/placement.rs (`place_among`, with the handlers added to the
//! branch targets the decoder sees).
use std::collections::HashSet;

use adeline_trace_common::python::{
    PY_FRAME_CHAIN, PY_FRAME_RSI, PY_FRAME_TOP_DETACHED, PY_FRAME_TOP_POPPED, PY_ROLE_ENTRY,
    PY_ROLE_ENTRY_310, PY_ROLE_EXIT_310, PY_ROLE_POP, PY_ROLE_RETURN, PY_ROLE_UNWIND,
    PY_ROLE_YIELD,
};
use iced_x86::{Code, FlowControl, Instruction};

use crate::symbols::{
    placement::{place_among, Needs, Reason},
    x86::{self, branch_targets, decode_at, instructions},
};

use super::{image::Image, PythonError, Version};

/// One probe to place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    /// Virtual address of the probed instruction.
    pub vaddr: u64,
    /// `PY_ROLE_*`.
    pub role: u32,
    /// `PY_FRAME_*`.
    pub frame_src: u32,
    /// Pop sites: return addresses of the exception path's calls, minus
    /// the probed function's address.
    pub unwind_ret: Vec<i64>,
    /// What it is, for messages and `list`.
    pub what: String,
    /// Whether the kernel emulates the probed instruction (else it is
    /// single-stepped: ~10x the cost per hit).
    pub emulated: bool,
}

impl Site {
    /// Whether a call starts or resumes here (else it returns, raises or
    /// suspends).
    pub fn is_entry(&self) -> bool {
        matches!(self.role, PY_ROLE_ENTRY | PY_ROLE_ENTRY_310)
    }
}

/// Opcode numbers of one version (`opcode.h` / `dis.opmap`).
struct Ops {
    resume: u8,
    resume_quick: Option<u8>,
    resume_check: Option<u8>,
    instrumented_resume: Option<u8>,
    return_value: u8,
    return_const: Option<u8>,
    instrumented_return_value: Option<u8>,
    instrumented_return_const: Option<u8>,
    return_generator: Option<u8>,
    yield_value: u8,
    instrumented_yield_value: Option<u8>,
}

fn ops(v: Version) -> Option<Ops> {
    Some(match v.minor {
        11 => Ops {
            resume: 151,
            resume_quick: Some(150),
            resume_check: None,
            instrumented_resume: None,
            return_value: 83,
            return_const: None,
            instrumented_return_value: None,
            instrumented_return_const: None,
            return_generator: Some(75),
            yield_value: 86,
            instrumented_yield_value: None,
        },
        12 => Ops {
            resume: 151,
            resume_quick: None,
            resume_check: None,
            instrumented_resume: Some(240),
            return_value: 83,
            return_const: Some(121),
            instrumented_return_value: Some(242),
            instrumented_return_const: Some(247),
            return_generator: Some(75),
            yield_value: 150,
            instrumented_yield_value: Some(243),
        },
        13 => Ops {
            resume: 149,
            resume_quick: None,
            resume_check: Some(207),
            instrumented_resume: Some(236),
            return_value: 36,
            return_const: Some(103),
            instrumented_return_value: Some(239),
            instrumented_return_const: Some(240),
            return_generator: Some(33),
            yield_value: 118,
            instrumented_yield_value: Some(241),
        },
        _ => return None,
    })
}

/// The RESUME-family opcodes of a version, packed one per byte (for
/// `PyLayout::resume_ops`).
pub fn resume_ops(v: Version) -> u32 {
    let Some(o) = ops(v) else { return 0 };
    let list = [
        Some(o.resume),
        o.resume_quick,
        o.resume_check,
        o.instrumented_resume,
    ];
    list.iter()
        .flatten()
        .enumerate()
        .fold(0u32, |acc, (i, &op)| acc | (u32::from(op) << (8 * i)))
}

/// Whether the kernel's x86-64 uprobes emulate this instruction (exactly
/// its bytes) instead of single-stepping it (symbols/x86.rs).
pub fn is_emulated(bytes: &[u8]) -> bool {
    x86::is_emulated(bytes)
}

/// The decoded eval function.
pub struct Eval<'a> {
    image: &'a Image,
    pub start: u64,
    pub end: u64,
    /// Addresses jumped to from inside the function, and the handlers.
    targets: HashSet<u64>,
}

impl<'a> Eval<'a> {
    pub fn new(image: &'a Image, start: u64, size: u64, handlers: &[u64]) -> Option<Eval<'a>> {
        let bytes = image.bytes(start, size as usize)?;
        let mut targets = branch_targets(std::iter::once(x86::Code { ip: start, bytes }));
        // The computed-goto handlers are targets the decoder cannot see.
        targets.extend(handlers.iter().copied());
        Some(Eval {
            image,
            start,
            end: start + size,
            targets,
        })
    }

    /// The eval function's code.
    fn code(&self) -> x86::Code<'a> {
        x86::Code {
            ip: self.start,
            bytes: self
                .image
                .bytes(self.start, (self.end - self.start) as usize)
                .unwrap_or(&[]),
        }
    }

    /// The instruction at `at`, anywhere in the image (the frame pop
    /// function lies outside eval).
    fn decode_at(&self, at: u64) -> Option<(Instruction, &'a [u8])> {
        let bytes = self.image.bytes(at, 16)?;
        decode_at(x86::Code { ip: at, bytes }, at)
    }

    /// Site rule: the first emulated instruction on the straight-line path
    /// from `label`, with no branch target between the label and it: the
    /// placement rule of function probes (symbols/placement.rs) without a
    /// stack or register to protect.
    pub fn site_rule(&self, label: u64) -> Option<u64> {
        let needs = Needs {
            stack: false,
            registers: &[],
        };
        let p = place_among(self.code(), label, &self.targets, &needs).ok()?;
        matches!(p.reason, Reason::Emulated(_)).then_some(label + p.offset)
    }

    /// Walks the path from `label` (following jumps, falling through
    /// conditional branches) and returns the addresses of its direct calls
    /// in order, up to `max` calls.
    fn path_calls(&self, label: u64, max: usize) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut at = label;
        for _ in 0..400 {
            let Some((insn, _)) = self.decode_at(at) else {
                break;
            };
            match insn.flow_control() {
                FlowControl::Call if insn.code() == Code::Call_rel32_64 => {
                    out.push((at, insn.near_branch_target()));
                    if out.len() >= max {
                        break;
                    }
                    at = insn.next_ip();
                }
                FlowControl::UnconditionalBranch if insn.near_branch_target() != 0 => {
                    at = insn.near_branch_target();
                }
                FlowControl::Next | FlowControl::ConditionalBranch | FlowControl::Call => {
                    at = insn.next_ip();
                }
                _ => break,
            }
        }
        out
    }

    /// The call of `target` nearest to `label` (breadth-first over both
    /// directions of conditional branches): on a return handler, its own
    /// frame pop rather than the exception path's, which is much further.
    fn nearest_call(&self, label: u64, target: u64) -> Option<u64> {
        let mut seen: HashSet<u64> = HashSet::new();
        let mut queue = std::collections::VecDeque::from([label]);
        while let Some(at) = queue.pop_front() {
            if seen.len() > 4000 || !seen.insert(at) || at < self.start || at >= self.end {
                continue;
            }
            let Some((insn, _)) = self.decode_at(at) else {
                continue;
            };
            if insn.code() == Code::Call_rel32_64 && insn.near_branch_target() == target {
                return Some(at);
            }
            match insn.flow_control() {
                FlowControl::UnconditionalBranch if insn.near_branch_target() != 0 => {
                    queue.push_back(insn.near_branch_target());
                }
                FlowControl::ConditionalBranch => {
                    queue.push_back(insn.next_ip());
                    queue.push_back(insn.near_branch_target());
                }
                FlowControl::Next | FlowControl::Call => queue.push_back(insn.next_ip()),
                _ => {}
            }
        }
        None
    }

    /// The addresses of the path from `label` (as [`Eval::path_calls`]
    /// walks it), up to `limit` instructions.
    fn path(&self, label: u64, limit: usize) -> Vec<u64> {
        let mut out = Vec::new();
        let mut at = label;
        for _ in 0..limit {
            let Some((insn, _)) = self.decode_at(at) else {
                break;
            };
            out.push(at);
            match insn.flow_control() {
                FlowControl::UnconditionalBranch if insn.near_branch_target() != 0 => {
                    at = insn.near_branch_target();
                }
                FlowControl::Next | FlowControl::ConditionalBranch | FlowControl::Call => {
                    at = insn.next_ip();
                }
                _ => break,
            }
        }
        out
    }

    /// Every instruction of the function, in address order.
    fn instructions(&self) -> Vec<(Instruction, &'a [u8])> {
        instructions(self.code()).collect()
    }
}

/// The computed-goto table: the local symbol `opcode_targets.N` when the
/// file has it, else the 256-slot run of code pointers with the most slots
/// inside the eval function.
pub fn opcode_table(image: &Image, eval: u64, eval_size: u64) -> Option<(u64, Vec<u64>)> {
    let by_symbol = image
        .symbols_with_prefix("opcode_targets")
        .find(|&(_, _, size)| size == 256 * 8)
        .map(|(_, a, _)| a);
    let start = match by_symbol {
        Some(a) => a,
        None => table_heuristic(image, eval, eval_size)?,
    };
    let slots: Option<Vec<u64>> = (0..256).map(|i| image.pointer(start + 8 * i)).collect();
    Some((start, slots?))
}

fn table_heuristic(image: &Image, eval: u64, eval_size: u64) -> Option<u64> {
    let slots = image.pointer_slots();
    let inside = |v: u64| v >= eval && v < eval + eval_size;
    // Addresses of slots pointing into eval, sorted.
    let hits: Vec<u64> = slots
        .iter()
        .filter(|&&(_, v)| inside(v))
        .map(|&(a, _)| a)
        .collect();
    let mut best = (0usize, 0u64);
    let mut j = 0;
    for i in 0..hits.len() {
        while j < hits.len() && hits[j] < hits[i] + 256 * 8 {
            j += 1;
        }
        if j - i > best.0 {
            best = (j - i, hits[i]);
        }
    }
    if best.0 < 64 {
        return None;
    }
    // The table is the run of code pointers around that window: walk back
    // to its first slot.
    let code: HashSet<u64> = slots
        .iter()
        .filter(|&&(_, v)| image.is_code(v))
        .map(|&(a, _)| a)
        .collect();
    let mut start = best.1;
    while code.contains(&(start - 8)) && best.1 - (start - 8) < 256 * 8 {
        start -= 8;
    }
    // Slot 0 of a CPython table is never an opcode that runs; if the run
    // is longer than 256, prefer the start that keeps the window inside.
    Some(start)
}

/// Finds every probe site of one interpreter.
pub fn find_sites(image: &Image, v: Version) -> Result<Vec<Site>, PythonError> {
    let missing = |what: &str| PythonError::Sites {
        path: image.path.clone(),
        version: v,
        reason: what.to_string(),
    };
    let (eval, eval_size) = image
        .symbol("_PyEval_EvalFrameDefault")
        .ok_or_else(|| missing("no _PyEval_EvalFrameDefault symbol"))?;
    if v.minor == 10 {
        return sites_310(image, v, eval, eval_size);
    }
    let o = ops(v).ok_or_else(|| missing("unsupported version"))?;
    let (_, table) = opcode_table(image, eval, eval_size)
        .ok_or_else(|| missing("the opcode_targets table was not found"))?;
    let ev = Eval::new(image, eval, eval_size, &table)
        .ok_or_else(|| missing("cannot read _PyEval_EvalFrameDefault"))?;
    let label = |op: u8| table[op as usize];
    let mut sites = Vec::new();
    let add = |sites: &mut Vec<Site>,
               op: u8,
               name: &str,
               role: u32,
               frame_src: u32|
     -> Result<(), PythonError> {
        let at = ev
            .site_rule(label(op))
            .ok_or_else(|| missing(&format!("no probe site in the {name} handler")))?;
        sites.push(Site {
            vaddr: at,
            role,
            frame_src,
            unwind_ret: Vec::new(),
            what: name.to_string(),
            emulated: true,
        });
        Ok(())
    };
    match v.minor {
        11 => {
            add(
                &mut sites,
                o.resume,
                "RESUME",
                PY_ROLE_ENTRY,
                PY_FRAME_CHAIN,
            )?;
            if let Some(q) = o.resume_quick {
                add(&mut sites, q, "RESUME_QUICK", PY_ROLE_ENTRY, PY_FRAME_CHAIN)?;
            }
            add(
                &mut sites,
                o.return_value,
                "RETURN_VALUE",
                PY_ROLE_RETURN,
                PY_FRAME_CHAIN,
            )?;
            add(
                &mut sites,
                o.yield_value,
                "YIELD_VALUE",
                PY_ROLE_YIELD,
                PY_FRAME_CHAIN,
            )?;
            let unwind = unwind_311(&ev, &o, &label).ok_or_else(|| {
                missing("the exception-unwind exit (is_entry test) was not found")
            })?;
            sites.push(Site {
                vaddr: unwind,
                role: PY_ROLE_UNWIND,
                frame_src: PY_FRAME_CHAIN,
                unwind_ret: Vec::new(),
                what: "exit_unwind".into(),
                emulated: true,
            });
        }
        12 | 13 => {
            if v.minor == 13 {
                let check = o.resume_check.unwrap_or(o.resume);
                add(
                    &mut sites,
                    check,
                    "RESUME_CHECK",
                    PY_ROLE_ENTRY,
                    PY_FRAME_CHAIN,
                )?;
                // The deopt from RESUME_CHECK enters RESUME past its label,
                // so the label itself (single-stepped) counts only RESUME's
                // own executions (first run, after instrumentation changes).
                sites.push(Site {
                    vaddr: label(o.resume),
                    role: PY_ROLE_ENTRY,
                    frame_src: PY_FRAME_CHAIN,
                    unwind_ret: Vec::new(),
                    what: "RESUME (handler start)".into(),
                    emulated: ev
                        .decode_at(label(o.resume))
                        .is_some_and(|(_, b)| is_emulated(b)),
                });
            } else {
                add(
                    &mut sites,
                    o.resume,
                    "RESUME",
                    PY_ROLE_ENTRY,
                    PY_FRAME_CHAIN,
                )?;
            }
            if let Some(op) = o.instrumented_resume {
                add(
                    &mut sites,
                    op,
                    "INSTRUMENTED_RESUME",
                    PY_ROLE_ENTRY,
                    PY_FRAME_CHAIN,
                )?;
            }
            // The frame pop: the first call on RETURN_VALUE's path.
            let (_, pop_target) = *ev
                .path_calls(label(o.return_value), 1)
                .first()
                .ok_or_else(|| missing("no call on RETURN_VALUE's path"))?;
            let pop_fn = ["_PyEval_FrameClearAndPop", "_PyEvalFrameClearAndPop"]
                .iter()
                .find_map(|n| image.symbol(n).map(|s| s.0))
                .unwrap_or(pop_target);
            if !image.is_code(pop_fn) || ev.decode_at(pop_fn).is_none() {
                return Err(missing("the frame pop function cannot be read"));
            }
            // Calls of it on the return paths; every other call of it in
            // eval is the exception path.
            let mut returns: HashSet<u64> = HashSet::new();
            for op in [
                Some(o.return_value),
                o.return_const,
                o.instrumented_return_value,
                o.instrumented_return_const,
            ]
            .into_iter()
            .flatten()
            {
                if let Some(at) = ev.nearest_call(label(op), pop_target) {
                    returns.insert(at);
                }
            }
            let unwind_ret: Vec<i64> = ev
                .instructions()
                .iter()
                .filter(|(i, _)| {
                    i.code() == Code::Call_rel32_64
                        && i.near_branch_target() == pop_target
                        && !returns.contains(&i.ip())
                })
                .map(|(i, _)| i.next_ip() as i64 - pop_fn as i64)
                .collect();
            if unwind_ret.is_empty() || unwind_ret.len() > 2 {
                return Err(missing(&format!(
                    "{} calls of the frame pop outside the return paths (expected 1 or 2)",
                    unwind_ret.len()
                )));
            }
            let pop_emulated = ev.decode_at(pop_fn).is_some_and(|(_, b)| is_emulated(b));
            sites.push(Site {
                vaddr: pop_fn,
                role: PY_ROLE_POP,
                frame_src: PY_FRAME_RSI,
                unwind_ret,
                what: "frame pop (ClearAndPop)".into(),
                emulated: pop_emulated,
            });
            if v.minor == 12 {
                add(
                    &mut sites,
                    o.yield_value,
                    "YIELD_VALUE",
                    PY_ROLE_YIELD,
                    PY_FRAME_TOP_DETACHED,
                )?;
            } else {
                // No emulated instruction before its indirect jump.
                let at = label(o.yield_value);
                let emulated = ev.site_rule(at);
                sites.push(Site {
                    vaddr: emulated.unwrap_or(at),
                    role: PY_ROLE_YIELD,
                    frame_src: PY_FRAME_CHAIN,
                    unwind_ret: Vec::new(),
                    what: "YIELD_VALUE".into(),
                    emulated: emulated.is_some(),
                });
            }
            if let Some(op) = o.instrumented_yield_value {
                add(
                    &mut sites,
                    op,
                    "INSTRUMENTED_YIELD_VALUE",
                    PY_ROLE_YIELD,
                    PY_FRAME_CHAIN,
                )?;
            }
        }
        _ => return Err(missing("unsupported version")),
    }
    Ok(sites)
}

/// 3.11's exception exit: the `is_entry` test (`cmp byte [frame+0x44],0`)
/// that is on neither RETURN_VALUE's nor RETURN_GENERATOR's path; the
/// site is the first emulated instruction after it.
fn unwind_311(ev: &Eval, o: &Ops, label: &dyn Fn(u8) -> u64) -> Option<u64> {
    let mut exclude: HashSet<u64> = HashSet::new();
    for op in [Some(o.return_value), o.return_generator]
        .into_iter()
        .flatten()
    {
        exclude.extend(ev.path(label(op), 80));
    }
    let insns = ev.instructions();
    let mut found = Vec::new();
    for (i, (insn, bytes)) in insns.iter().enumerate() {
        // cmp byte ptr [reg+0x44], 0: 80 7x 44 00
        let is_entry_test = bytes.len() == 4
            && bytes[0] == 0x80
            && (bytes[1] & 0xf8) == 0x78
            && bytes[2] == 0x44
            && bytes[3] == 0;
        if !is_entry_test || exclude.contains(&insn.ip()) {
            continue;
        }
        // The first emulated instruction after it, no branch target between.
        for (next, nbytes) in insns.iter().skip(i + 1).take(8) {
            if ev.targets.contains(&next.ip()) {
                break;
            }
            if is_emulated(nbytes) {
                found.push(next.ip());
                break;
            }
        }
    }
    (found.len() == 1).then(|| found[0])
}

/// 3.10: the eval function's entry (one C call per activation) and its
/// exit: the call followed by the epilogue (`call _Py_CheckFunctionResult;
/// add rsp, N; pop ...; ret`).
fn sites_310(image: &Image, v: Version, eval: u64, size: u64) -> Result<Vec<Site>, PythonError> {
    let missing = |what: &str| PythonError::Sites {
        path: image.path.clone(),
        version: v,
        reason: what.to_string(),
    };
    let ev = Eval::new(image, eval, size, &[]).ok_or_else(|| missing("cannot read eval"))?;
    let insns = ev.instructions();
    let entry_emulated = insns.first().is_some_and(|(_, b)| is_emulated(b));
    let mut exits = Vec::new();
    for (i, (insn, _)) in insns.iter().enumerate() {
        if insn.code() != Code::Call_rel32_64 {
            continue;
        }
        let rest = &insns[i + 1..insns.len().min(i + 12)];
        let Some((first, _)) = rest.first() else {
            continue;
        };
        let adds_rsp = matches!(first.code(), Code::Add_rm64_imm32 | Code::Add_rm64_imm8)
            && first.op0_register() == iced_x86::Register::RSP;
        if !adds_rsp {
            continue;
        }
        let mut ok = false;
        for (x, _) in &rest[1..] {
            match x.code() {
                Code::Pop_r64 => continue,
                Code::Retnq => {
                    ok = true;
                    break;
                }
                _ => break,
            }
        }
        if ok {
            exits.push(insn.ip());
        }
    }
    if exits.len() != 1 {
        return Err(missing(&format!(
            "{} calls followed by the epilogue (expected 1: exit_eval_frame)",
            exits.len()
        )));
    }
    Ok(vec![
        Site {
            vaddr: eval,
            role: PY_ROLE_ENTRY_310,
            frame_src: PY_FRAME_RSI,
            unwind_ret: Vec::new(),
            what: "_PyEval_EvalFrameDefault entry".into(),
            emulated: entry_emulated,
        },
        Site {
            vaddr: exits[0],
            role: PY_ROLE_EXIT_310,
            frame_src: PY_FRAME_TOP_POPPED,
            unwind_ret: Vec::new(),
            what: "exit_eval_frame".into(),
            emulated: true,
        },
    ])
}

#[cfg(test)]
mod tests {
    //! Checked against the addresses verified by counts on this machine's
    //! interpreters (shared/PYTHON.md); each build is identified by its
    //! build-id, so another build of the same version is not compared.
    use super::*;
    use crate::python::{image::Image, version_of};

    fn interpreter(path: &str, build_id: &str) -> Option<Image> {
        let path = if path.starts_with('/') {
            path.to_string()
        } else {
            let root = std::env::var("PYENV_ROOT").unwrap_or_else(|_| {
                format!("{}/.pyenv", std::env::var("HOME").unwrap_or_default())
            });
            format!("{root}/versions/{path}")
        };
        let image = match Image::open(Path::new(&path)) {
            Ok(i) => i,
            Err(e) => {
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "CI=true: interpreter {path} missing ({e}); run `cargo xtask setup`"
                );
                eprintln!("skipped: {path} missing ({e})");
                return None;
            }
        };
        if image.build_id.as_deref() != Some(build_id) {
            eprintln!("skipped: {path} is another build ({:?})", image.build_id);
            return None;
        }
        Some(image)
    }

    use std::path::Path;

    fn by_what(sites: &[Site]) -> Vec<(String, u64, bool)> {
        sites
            .iter()
            .map(|s| (s.what.clone(), s.vaddr, s.emulated))
            .collect()
    }

    #[test]
    fn sites_310() {
        let Some(img) = interpreter(
            "3.10.13/lib/libpython3.10.so.1.0",
            "ece57af647dd10ee274f46d757d62a5eab42c418",
        ) else {
            return;
        };
        let v = version_of(&img).unwrap();
        assert_eq!(v.to_string(), "3.10");
        let s = find_sites(&img, v).unwrap();
        assert_eq!(
            by_what(&s),
            [
                ("_PyEval_EvalFrameDefault entry".into(), 0x65540, true),
                ("exit_eval_frame".into(), 0x6566e, true),
            ]
        );
    }

    #[test]
    fn sites_311_pyenv() {
        let Some(img) = interpreter(
            "3.11.7/lib/libpython3.11.so.1.0",
            "49daf84ed369fe589b73ea876f2591cd4c3588bb",
        ) else {
            return;
        };
        let v = version_of(&img).unwrap();
        let (eval, size) = img.symbol("_PyEval_EvalFrameDefault").unwrap();
        assert_eq!(opcode_table(&img, eval, size).unwrap().0, 0x4174e0);
        assert_eq!(table_heuristic(&img, eval, size), Some(0x4174e0));
        let s = find_sites(&img, v).unwrap();
        assert_eq!(
            by_what(&s),
            [
                ("RESUME".into(), 0x100f56, true),
                ("RESUME_QUICK".into(), 0x101987, true),
                ("RETURN_VALUE".into(), 0x100566, true),
                ("YIELD_VALUE".into(), 0x1013ac, true),
                ("exit_unwind".into(), 0xfaf75, true),
            ]
        );
    }

    #[test]
    fn sites_311_debian_stripped() {
        let Some(img) = interpreter(
            "/usr/bin/python3.11",
            "571d98e01096d5c1c32420d229a6731a0a50d2a0",
        ) else {
            return;
        };
        assert!(!img.has_symtab);
        let v = version_of(&img).unwrap();
        assert_eq!(v.to_string(), "3.11");
        let (eval, size) = img.symbol("_PyEval_EvalFrameDefault").unwrap();
        assert_eq!(opcode_table(&img, eval, size).unwrap().0, 0x73af00);
        let s = find_sites(&img, v).unwrap();
        assert_eq!(
            by_what(&s),
            [
                ("RESUME".into(), 0x52f5e4, true),
                ("RESUME_QUICK".into(), 0x52b2b1, true),
                ("RETURN_VALUE".into(), 0x52b394, true),
                ("YIELD_VALUE".into(), 0x52cf62, true),
                ("exit_unwind".into(), 0x53089d, true),
            ]
        );
        // uprobe offsets are file offsets: vaddr - 0x400000 here.
        assert_eq!(img.file_offset(0x52f5e4), Some(0x12f5e4));
    }

    #[test]
    fn sites_312() {
        let Some(img) = interpreter(
            "3.12.1/lib/libpython3.12.so.1.0",
            "f9d5c82f5f2c22df68c1d49c944ef3dee5103dcc",
        ) else {
            return;
        };
        let v = version_of(&img).unwrap();
        let (eval, size) = img.symbol("_PyEval_EvalFrameDefault").unwrap();
        assert_eq!(table_heuristic(&img, eval, size), Some(0x4cef20));
        let s = find_sites(&img, v).unwrap();
        assert_eq!(
            by_what(&s),
            [
                ("RESUME".into(), 0x114400, true),
                ("INSTRUMENTED_RESUME".into(), 0x114718, true),
                ("frame pop (ClearAndPop)".into(), 0x280d00, true),
                ("YIELD_VALUE".into(), 0x10e17d, true),
                ("INSTRUMENTED_YIELD_VALUE".into(), 0x10cd20, true),
            ]
        );
        assert_eq!(s[2].unwind_ret, [0x10c44b - 0x280d00]);
    }

    #[test]
    fn sites_313() {
        let Some(img) = interpreter(
            "3.13.0/lib/libpython3.13.so.1.0",
            "d11d13fb0f82d32f3da1221ffd551ab179afb423",
        ) else {
            return;
        };
        let v = version_of(&img).unwrap();
        assert_eq!(v.to_string(), "3.13");
        let (eval, size) = img.symbol("_PyEval_EvalFrameDefault").unwrap();
        assert_eq!(table_heuristic(&img, eval, size), Some(0x4a0d20));
        let s = find_sites(&img, v).unwrap();
        assert_eq!(
            by_what(&s),
            [
                ("RESUME_CHECK".into(), 0x90aa2, true),
                ("RESUME (handler start)".into(), 0x90a49, false),
                ("INSTRUMENTED_RESUME".into(), 0x8f2dc, true),
                ("frame pop (ClearAndPop)".into(), 0x230010, true),
                ("YIELD_VALUE".into(), 0x91c75, false),
                ("INSTRUMENTED_YIELD_VALUE".into(), 0x8ed68, true),
            ]
        );
        assert_eq!(s[3].unwind_ret, [0x8bf1a - 0x230010]);
    }

    #[test]
    fn older_versions_are_refused_by_name() {
        for (dir, lib) in [
            ("3.9.18", "libpython3.9.so.1.0"),
            ("2.7.18", "libpython2.7.so.1.0"),
        ] {
            let root = format!(
                "{}/.pyenv/versions/{dir}/lib/{lib}",
                std::env::var("HOME").unwrap_or_default()
            );
            let Ok(img) = Image::open(Path::new(&root)) else {
                continue;
            };
            let e = version_of(&img).unwrap_err().to_string();
            assert!(e.contains("which Python stages do not support"), "{e}");
            assert!(!e.contains('\n'));
        }
    }

    #[test]
    fn emulated_instructions() {
        assert!(is_emulated(&[0x74, 0x05]));
        assert!(is_emulated(&[0x0f, 0x85, 0, 0, 0, 0]));
        assert!(is_emulated(&[0xe8, 0, 0, 0, 0]));
        assert!(is_emulated(&[0x41, 0x57]));
        assert!(!is_emulated(&[0x48, 0x89, 0xe5]));
        assert!(!is_emulated(&[0xff, 0xe0]));
        assert!(!is_emulated(&[0x80, 0x7d, 0x44, 0x00]));
    }
}
