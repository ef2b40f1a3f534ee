//! `vizattach dump`: every thread's stack now, as text or JSON.

use crate::python::snapshot::{Reader, ThreadStack};
use serde_json::json;

pub fn to_json(reader: &Reader, threads: &[ThreadStack]) -> serde_json::Value {
    json!({
        "pid": reader.process.pid,
        "python": {
            "version": reader.target.version.to_string(),
            "executable": reader.target.executable,
            "libpython": reader.target.libpython,
        },
        "threads": threads.iter().map(|t| json!({
            "tid": t.tid,
            "thread_id": t.thread_id,
            "name": t.name,
            "holds_gil": t.holds_gil,
            "frames": t.frames.iter().map(|f| json!({
                "function": f.code.name,
                "file": f.code.filename,
                "line": f.line,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

pub fn to_text(reader: &Reader, threads: &[ThreadStack]) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let t = &reader.target;
    let _ = writeln!(s, "Process {}: {}", reader.process.pid, reader.process.cmdline());
    let _ = write!(s, "Python {} ({}", t.version, t.executable);
    if let Some(lib) = &t.libpython {
        let _ = write!(s, ", runtime in {lib}");
    }
    let _ = writeln!(s, ")");
    for th in threads {
        let _ = writeln!(s);
        let tid = th.tid.map(|t| t.to_string()).unwrap_or_else(|| "?".into());
        let _ = write!(s, "Thread {tid}");
        if let Some(n) = &th.name {
            let _ = write!(s, " \"{n}\"");
        }
        let _ = writeln!(s, "{}", if th.holds_gil { " (holds the GIL)" } else { "" });
        if th.frames.is_empty() {
            let _ = writeln!(s, "    (no Python frames: running C code or idle)");
        }
        for f in &th.frames {
            let _ = writeln!(s, "    {} ({}:{})", f.code.name, f.code.filename, f.line);
        }
    }
    s
}

/// A child process that was not dumped, and why.
pub struct Skipped {
    pub pid: i32,
    pub comm: String,
    /// "not Python", "exited", or the error
    pub why: String,
}

/// What `dump` prints for several processes (`--pid` given more than once, or
/// `--subprocesses`): every process's stacks, and the children skipped.
pub struct Many {
    pub dumps: Vec<(Reader, Vec<ThreadStack>)>,
    pub skipped: Vec<Skipped>,
}

fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).map(|s| s.trim_end().to_string()).unwrap_or_default()
}

/// Dumps `pids` (each must be a readable Python process: an error otherwise, as for one
/// pid) and, with `subprocesses`, every descendant that is one. A descendant that is not
/// Python (a shell, a C helper), or exits while it is read, is skipped and listed.
pub fn many(pids: &[i32], subprocesses: bool, how: crate::python::discover::Discovery) -> crate::error::Result<Many> {
    use crate::error::Error;
    let mut out = Many { dumps: Vec::new(), skipped: Vec::new() };
    for &pid in pids {
        let mut reader = Reader::attach_with(pid, how)?;
        let threads = reader.snapshot()?;
        out.dumps.push((reader, threads));
    }
    if !subprocesses {
        return Ok(out);
    }
    let mut seen: Vec<i32> = pids.to_vec();
    for &pid in pids {
        for child in crate::process::tree::descendants(pid) {
            if seen.contains(&child) {
                continue;
            }
            seen.push(child);
            let name = comm(child);
            let attempt = Reader::attach_with(child, how).and_then(|mut r| r.snapshot().map(|t| (r, t)));
            match attempt {
                Ok(d) => out.dumps.push(d),
                Err(e) => {
                    let why = match e {
                        Error::NotPython { .. } => "not Python".to_string(),
                        Error::NoSuchProcess(_) | Error::TargetExited(_) => "exited".to_string(),
                        // a child we may not read, or an interpreter we cannot: say which
                        e => e.to_string(),
                    };
                    out.skipped.push(Skipped { pid: child, comm: name, why });
                }
            }
        }
    }
    Ok(out)
}

impl Many {
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "processes": self.dumps.iter().map(|(r, t)| to_json(r, t)).collect::<Vec<_>>(),
            "skipped": self.skipped.iter().map(|s| json!({"pid": s.pid, "comm": s.comm, "why": s.why})).collect::<Vec<_>>(),
        })
    }

    pub fn to_text(&self) -> String {
        let parts: Vec<String> = self.dumps.iter().map(|(r, t)| to_text(r, t)).collect();
        parts.join("\n")
    }

    /// "3 processes; 1 child skipped: 4242 (sleep, not Python)"
    pub fn summary(&self) -> String {
        let mut s = format!("{} Python process{}", self.dumps.len(), if self.dumps.len() == 1 { "" } else { "es" });
        if !self.skipped.is_empty() {
            let what: Vec<String> = self.skipped.iter().map(|k| format!("{} ({}, {})", k.pid, k.comm, k.why)).collect();
            let n = self.skipped.len();
            s += &format!("; {n} child process{} skipped: {}", if n == 1 { "" } else { "es" }, what.join(", "));
        }
        s
    }
}
