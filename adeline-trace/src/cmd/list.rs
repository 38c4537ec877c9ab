//! `adeline-trace list TARGET [GLOB]`: what can be probed in a file;
//! `list --python -p PID [TARGET [GLOB]]`: the Python functions a running
//! interpreter has (python/list.rs).
use anyhow::Result;
use serde::Serialize;

use crate::{
    cli::ListArgs,
    python::{list::PyFunction, Interpreter},
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
    if args.python {
        return python(args);
    }
    let Some(target) = &args.target else {
        anyhow::bail!("list needs a TARGET (an executable or library), or --python -p PID");
    };
    let pids: Vec<u32> = args.pid.into_iter().collect();
    let path = process::resolve_target(target, &pids)?;
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

#[derive(Serialize)]
struct PythonListing<'a> {
    interpreter: String,
    version: String,
    layout: &'static str,
    /// The eval-loop probe sites a Python stage attaches to.
    sites: Vec<PySiteRow>,
    /// None without a process: functions exist only in a running one.
    pid: Option<u32>,
    functions: Option<Vec<&'a PyFunction>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    objects: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    threads: Option<u32>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    incomplete: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
}

/// One eval-loop probe site, as `list --python` shows it.
#[derive(Serialize)]
struct PySiteRow {
    /// Virtual address in the interpreter's file (hex).
    address: String,
    /// Its offset in the file (hex), what a uprobe is placed by.
    offset: Option<String>,
    /// "entry" (a call starts or resumes) or "exit" (it returns, raises
    /// or suspends).
    role: &'static str,
    what: String,
    /// Whether the kernel emulates the probed instruction (else it is
    /// single-stepped, ~10x the cost per hit).
    emulated: bool,
}

impl PySiteRow {
    fn new(interp: &Interpreter, s: &crate::python::sites::Site) -> PySiteRow {
        PySiteRow {
            address: format!("{:#x}", s.vaddr),
            offset: interp.image.file_offset(s.vaddr).map(|o| format!("{o:#x}")),
            role: if s.is_entry() { "entry" } else { "exit" },
            what: s.what.clone(),
            emulated: s.emulated,
        }
    }
}

/// `list --python`: the functions of process `-p` (TARGET: its
/// interpreter, by default its own executable), or without a process what
/// the interpreter offers.
fn python(args: &ListArgs) -> Result<()> {
    let pids: Vec<u32> = args.pid.into_iter().collect();
    let target = match (&args.target, args.pid) {
        (Some(t), _) => t.clone(),
        (None, Some(pid)) => std::fs::read_link(format!("/proc/{pid}/exe"))
            .map_err(|e| anyhow::anyhow!("cannot read /proc/{pid}/exe: {e}"))?
            .display()
            .to_string(),
        (None, None) => anyhow::bail!(
            "list --python needs -p PID (a running interpreter) or a TARGET interpreter"
        ),
    };
    let interp = Interpreter::open(&target, &pids)?;
    let glob = match &args.glob {
        Some(g) => Some(globset::Glob::new(g)?.compile_matcher()),
        None => None,
    };
    let listing = match args.pid {
        Some(pid) => Some(crate::python::list::list(pid, &interp)?),
        None => None,
    };
    let functions: Option<Vec<&PyFunction>> = listing.as_ref().map(|l| {
        l.functions
            .iter()
            .filter(|f| glob.as_ref().is_none_or(|g| g.is_match(&f.qualname)))
            .collect()
    });
    let note = listing.is_none().then(|| {
        format!(
            "Python functions exist only in a running interpreter: give -p PID of a process running {} to list them; a stage names them as python:{target}:[FILE.py:|MODULE:]QUALNAME",
            interp.path.display()
        )
    });
    if args.json {
        let out = PythonListing {
            interpreter: interp.path.display().to_string(),
            version: interp.version.to_string(),
            layout: interp.layout_source,
            sites: interp
                .sites
                .iter()
                .map(|s| PySiteRow::new(&interp, s))
                .collect(),
            pid: args.pid,
            functions: functions.clone(),
            objects: listing.as_ref().map(|l| l.objects),
            threads: listing.as_ref().map(|l| l.threads),
            incomplete: listing.as_ref().map_or(&[], |l| &l.incomplete),
            note,
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let what = format!(
        "CPython {} ({}, {} offsets)",
        interp.version,
        interp.path.display(),
        interp.layout_source
    );
    let (Some(listing), Some(functions)) = (&listing, functions) else {
        println!("{what}: {} eval-loop probe sites", interp.sites.len());
        for s in interp.sites.iter().map(|s| PySiteRow::new(&interp, s)) {
            let stepped = if s.emulated { "" } else { " (single-stepped)" };
            println!("  {:<12} {:<5}  {}{stepped}", s.address, s.role, s.what);
        }
        eprintln!("{}", note.unwrap_or_default());
        return Ok(());
    };
    let width = functions
        .iter()
        .map(|f| f.qualname.len())
        .max()
        .unwrap_or(0)
        .min(60);
    let mut out = String::new();
    for f in &functions {
        let stack = if f.source == "stack" { "  (stack)" } else { "" };
        out.push_str(&format!(
            "{:<width$}  {}:{}{stack}\n",
            f.qualname, f.file, f.line
        ));
    }
    print!("{out}");
    eprintln!(
        "{} Python functions in pid {} ({} GC objects, {} threads read), {what}{}",
        functions.len(),
        args.pid.unwrap_or_default(),
        listing.objects,
        listing.threads,
        match listing.incomplete.is_empty() {
            true => String::new(),
            false => format!("; incomplete: {}", listing.incomplete.join("; ")),
        }
    );
    Ok(())
}
