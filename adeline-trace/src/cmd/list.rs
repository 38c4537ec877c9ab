//! `adeline-trace list TARGET [GLOB]`: what can be probed in a file.
use anyhow::Result;
use serde::Serialize;

use crate::{
    cli::ListArgs,
    symbols::{
        elf::ElfFile,
        placement::{place_symbol, Needs, Placement},
        process, usdt,
    },
};

#[derive(Serialize)]
struct Listing<'a> {
    path: String,
    stripped: bool,
    functions: Vec<Function<'a>>,
    usdt: Vec<Usdt<'a>>,
}

#[derive(Serialize)]
struct Function<'a> {
    name: &'a str,
    raw: &'a str,
    offset: u64,
    size: u64,
    /// Where a stage's probes would sit (None: the kernel refuses it).
    placement: Option<Placement>,
    /// Why the kernel refuses a probe on it.
    #[serde(skip_serializing_if = "Option::is_none")]
    unprobeable: Option<&'static str>,
}

#[derive(Serialize)]
struct Usdt<'a> {
    provider: &'a str,
    name: &'a str,
    offset: u64,
    semaphore_offset: u64,
    args: &'a str,
}

pub fn list(args: &ListArgs) -> Result<()> {
    if let Some(pid) = args.pid {
        process::ensure_running(pid)?;
    }
    let pids: Vec<u32> = args.pid.into_iter().collect();
    let path = process::resolve_target(&args.target, &pids)?;
    let elf = ElfFile::open(&path)?;
    let probes = usdt::usdt_probes(&path)?;
    let functions: Vec<Function> = elf
        .list(args.glob.as_deref())
        .into_iter()
        .map(|f| {
            let (placement, unprobeable) = match place_symbol(&path, &elf, f, &Needs::CALL)? {
                Ok(p) => (Some(p), None),
                Err(refusal) => (None, Some(refusal.0)),
            };
            Ok(Function {
                name: &f.demangled,
                raw: &f.raw,
                offset: f.file_offset,
                size: f.size,
                placement,
                unprobeable,
            })
        })
        .collect::<Result<_>>()?;
    let usdt: Vec<Usdt> = probes
        .iter()
        .filter(|p| {
            args.glob.as_deref().is_none_or(|g| {
                globset::Glob::new(g)
                    .map(|g| {
                        g.compile_matcher()
                            .is_match(format!("{}:{}", p.provider, p.name))
                    })
                    .unwrap_or(false)
            })
        })
        .map(|p| Usdt {
            provider: &p.provider,
            name: &p.name,
            offset: p.file_offset,
            semaphore_offset: p.semaphore_offset,
            args: &p.args_raw,
        })
        .collect();
    if args.json {
        let listing = Listing {
            path: path.display().to_string(),
            stripped: elf.stripped,
            functions,
            usdt,
        };
        println!("{}", serde_json::to_string_pretty(&listing)?);
        return Ok(());
    }
    let mut out = String::new();
    for f in &functions {
        let raw = if f.raw == f.name {
            String::new()
        } else {
            format!("  [{}]", f.raw)
        };
        let site = match (&f.placement, f.unprobeable) {
            (Some(p), _) if p.emulated => p.short(),
            (Some(p), _) => format!("{} (stepped)", p.short()),
            (None, why) => format!("refused: {}", why.unwrap_or("?")),
        };
        out.push_str(&format!(
            "{:#010x}  {site:<28}  {}{}\n",
            f.offset, f.name, raw
        ));
    }
    for u in &usdt {
        out.push_str(&format!(
            "{:#010x}  usdt:{}:{}  args: {}{}\n",
            u.offset,
            u.provider,
            u.name,
            u.args,
            if u.semaphore_offset != 0 {
                "  (semaphore)"
            } else {
                ""
            }
        ));
    }
    print!("{out}");
    eprintln!(
        "{} functions ({} probed on an emulated instruction), {} USDT probes in {}{}",
        functions.len(),
        functions
            .iter()
            .filter(|f| f.placement.as_ref().is_some_and(|p| p.emulated))
            .count(),
        usdt.len(),
        path.display(),
        if elf.stripped {
            " (stripped: dynamic symbols only)"
        } else {
            ""
        }
    );
    Ok(())
}
