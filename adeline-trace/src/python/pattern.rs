//! Python stage patterns: `[FILE_OR_MODULE:]QUALNAME`, compiled into the
//! hashed globs the kernel matches (adeline-trace-common `PyPattern`).
//!
//! - QUALNAME is a glob over `co_qualname` (`Tracker.update`, `Tracker.*`,
//!   `*.run_inference`, `*infer*`): at most two `*`, no `?` or `[`.
//! - FILE (has a `/` or ends in `.py`) narrows by `co_filename`: an
//!   absolute path or one starting with `*` is a glob over the whole name
//!   (one `*`); a relative one (`pipeline.py`, `app/pipeline.py`) matches
//!   at a path-component boundary (`*/pipeline.py`).
//! - MODULE (dotted, `app.tracker`) narrows to that module's file:
//!   `*/app/tracker.py` or `*/app/tracker/__init__.py`.
use adeline_trace_common::python::{py_hash, PyGlob, PyLit, PyPattern, PY_FILE_MAX, PY_QUAL_MAX};

use super::{PythonError, Version};

/// A parsed pattern, before compilation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    /// File-name globs (any of them); empty = any file.
    pub files: Vec<String>,
    pub qualname: String,
}

fn bad(pattern: &str, reason: impl Into<String>) -> PythonError {
    PythonError::Pattern {
        pattern: pattern.to_string(),
        reason: reason.into(),
    }
}

/// Parses `[FILE_OR_MODULE:]QUALNAME`.
pub fn parse(text: &str) -> Result<Pattern, PythonError> {
    let (scope, qual) = match text.rsplit_once(':') {
        Some((s, q)) => (Some(s.trim()), q.trim()),
        None => (None, text.trim()),
    };
    if qual.is_empty() {
        return Err(bad(text, "empty function name"));
    }
    check_glob(text, qual, 2, PY_QUAL_MAX)?;
    let files = match scope {
        None => Vec::new(),
        Some("") => return Err(bad(text, "empty file or module before ':'")),
        Some(s) if s.contains('/') || s.ends_with(".py") || s.contains('*') => {
            if s.starts_with('/') || s.starts_with('*') {
                vec![s.to_string()]
            } else {
                vec![s.to_string(), format!("*/{s}")]
            }
        }
        Some(m) => {
            let ok = m.split('.').all(|part| {
                !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            });
            if !ok {
                return Err(bad(
                    text,
                    format!("'{m}' is neither a file (with '/' or '.py') nor a dotted module name"),
                ));
            }
            let path = m.replace('.', "/");
            vec![format!("*/{path}.py"), format!("*/{path}/__init__.py")]
        }
    };
    for f in &files {
        check_glob(text, f, 1, PY_FILE_MAX)?;
    }
    Ok(Pattern {
        files,
        qualname: qual.to_string(),
    })
}

fn check_glob(text: &str, glob: &str, max_stars: usize, max_len: usize) -> Result<(), PythonError> {
    if glob.contains(['?', '[', ']']) {
        return Err(bad(text, "only '*' wildcards are supported"));
    }
    if !glob.is_ascii() {
        return Err(bad(text, "only ASCII names can be matched"));
    }
    let stars = glob.matches('*').count();
    if stars > max_stars {
        return Err(bad(text, format!("at most {max_stars} '*' in '{glob}'")));
    }
    if glob.len() - stars > max_len {
        return Err(bad(
            text,
            format!("'{glob}' is longer than {max_len} characters"),
        ));
    }
    Ok(())
}

fn lit(s: &str) -> PyLit {
    PyLit {
        len: s.len() as u32,
        _pad: 0,
        hash: py_hash(s.as_bytes()),
    }
}

/// Compiles one glob (already checked) for the kernel.
pub fn compile_glob(glob: &str) -> PyGlob {
    let parts: Vec<&str> = glob.split('*').collect();
    if parts.len() == 1 {
        return PyGlob {
            star: 0,
            any: 0,
            pre: lit(glob),
            ..PyGlob::default()
        };
    }
    let any = u32::from(parts.iter().all(|p| p.is_empty()));
    PyGlob {
        star: 1,
        any,
        pre: lit(parts[0]),
        mid: if parts.len() == 3 {
            lit(parts[1])
        } else {
            PyLit::default()
        },
        suf: lit(parts[parts.len() - 1]),
    }
}

/// The kernel patterns of one stage (one per file alternative), and a
/// warning when the version cannot match the whole qualified name.
pub fn compile(p: &Pattern, stage: u32, v: Version) -> (Vec<PyPattern>, Option<String>) {
    let mut warning = None;
    let qual = if v.minor == 10 && p.qualname.contains('.') {
        // 3.10 code objects have co_name only.
        let last = p.qualname.rsplit('.').next().unwrap_or(&p.qualname);
        warning = Some(format!(
            "Python 3.10 code objects carry no qualified name: '{}' is matched as '{last}' against function names{}",
            p.qualname,
            if p.files.is_empty() { " in every file (narrow it with FILE:)" } else { "" }
        ));
        last.to_string()
    } else {
        p.qualname.clone()
    };
    let qual = compile_glob(&qual);
    let any_file = PyGlob {
        star: 1,
        any: 1,
        ..PyGlob::default()
    };
    let files: Vec<PyGlob> = if p.files.is_empty() {
        vec![any_file]
    } else {
        p.files.iter().map(|f| compile_glob(f)).collect()
    };
    let out = files
        .into_iter()
        .map(|file| PyPattern {
            stage,
            _pad: 0,
            qual,
            file,
        })
        .collect();
    (out, warning)
}

/// The same match in Rust (the kernel's rule), for tests and `list`.
pub fn glob_matches(glob: &str, s: &str) -> bool {
    let parts: Vec<&str> = glob.split('*').collect();
    if parts.len() == 1 {
        return glob == s;
    }
    let (pre, suf) = (parts[0], parts[parts.len() - 1]);
    let mid = if parts.len() == 3 { parts[1] } else { "" };
    if s.len() < pre.len() + mid.len() + suf.len() || !s.starts_with(pre) || !s.ends_with(suf) {
        return false;
    }
    mid.is_empty() || s[pre.len()..s.len() - suf.len()].contains(mid)
}

impl Pattern {
    /// Whether a function (qualified name, file name) matches.
    pub fn matches(&self, qualname: &str, filename: &str) -> bool {
        glob_matches(&self.qualname, qualname)
            && (self.files.is_empty() || self.files.iter().any(|f| glob_matches(f, filename)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_files_modules_and_globs() {
        let p = parse("Tracker.*").unwrap();
        assert!(p.files.is_empty());
        assert!(p.matches("Tracker.update", "/x/a.py"));
        assert!(!p.matches("Other.update", "/x/a.py"));
        let p = parse("pipeline.py:StandardInferenceHandler.run_inference").unwrap();
        assert_eq!(p.files, ["pipeline.py", "*/pipeline.py"]);
        assert!(p.matches("StandardInferenceHandler.run_inference", "/app/pipeline.py"));
        assert!(!p.matches(
            "StandardInferenceHandler.run_inference",
            "/app/xpipeline.py"
        ));
        let p = parse("app.tracker:Tracker.update").unwrap();
        assert!(p.matches("Tracker.update", "/srv/app/tracker.py"));
        assert!(p.matches("Tracker.update", "/srv/app/tracker/__init__.py"));
        assert!(!p.matches("Tracker.update", "/srv/app/other.py"));
        let p = parse("/opt/*.py:*infer*").unwrap();
        assert!(p.matches("Model.run_inference", "/opt/m.py"));
        assert!(!p.matches("Model.run", "/opt/m.py"));
    }

    #[test]
    fn rejects_what_the_kernel_cannot_match() {
        for (text, reason) in [
            ("a?b", "only '*' wildcards are supported"),
            ("*a*b*c", "at most 2 '*' in '*a*b*c'"),
            (":f", "empty file or module before ':'"),
            ("x.py:", "empty function name"),
            (
                "a-b:f",
                "'a-b' is neither a file (with '/' or '.py') nor a dotted module name",
            ),
            ("/a/*/b*.py:f", "at most 1 '*' in '/a/*/b*.py'"),
        ] {
            match parse(text) {
                Err(PythonError::Pattern { reason: r, .. }) => assert_eq!(r, reason, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn compiles_hashes_the_kernel_compares() {
        let g = compile_glob("Tracker.*");
        assert_eq!((g.star, g.any), (1, 0));
        assert_eq!(g.pre.len, 8);
        assert_eq!(g.pre.hash, py_hash(b"Tracker."));
        assert_eq!(g.suf.len, 0);
        let g = compile_glob("*");
        assert_eq!(g.any, 1);
        let g = compile_glob("a*mid*z");
        assert_eq!((g.pre.len, g.mid.len, g.suf.len), (1, 3, 1));
        let v310 = Version {
            major: 3,
            minor: 10,
        };
        let (pats, warn) = compile(&parse("Tracker.update").unwrap(), 4, v310);
        assert_eq!(pats.len(), 1);
        assert_eq!(pats[0].stage, 4);
        assert_eq!(pats[0].qual.pre.hash, py_hash(b"update"));
        assert!(warn.unwrap().contains("matched as 'update'"));
    }
}
