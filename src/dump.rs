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
                "interpreter": f.interp,
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
        // Where a stack runs in a subinterpreter, each run of its frames is headed by the
        // interpreter's id; a stack only in the main interpreter has no headings.
        let marked = th.frames.iter().any(|f| f.interp != 0);
        for (i, f) in th.frames.iter().enumerate() {
            if marked && (i == 0 || th.frames[i - 1].interp != f.interp) {
                let _ = writeln!(s, "  [interpreter {}]", f.interp);
            }
            let _ = writeln!(s, "    {} ({}:{})", f.code.name, f.code.filename, f.line);
        }
    }
    s
}
