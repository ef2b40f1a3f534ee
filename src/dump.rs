//! `vizattach dump`: every thread's stack now, as text or JSON, with each thread's status
//! (python/diagnose.rs) and, with `--locals`, every frame's arguments and locals.

use crate::native::{self, Mixed, NativeStacks};
use crate::process::image::Image;
use crate::python::diagnose::{Diagnosis, OwnerKnown, Status, Wait};
use crate::python::snapshot::{Frame, Reader, ThreadStack};
use serde_json::json;

/// What one dump read: the stacks, what was read on top of them, and with --native the
/// threads' C stacks.
pub struct Dumped {
    pub threads: Vec<ThreadStack>,
    pub diagnosis: Diagnosis,
    pub native: Option<NativeStacks>,
}

fn python_frame_json(f: &Frame, locals: Option<&crate::python::diagnose::FrameLocals>) -> serde_json::Value {
    let mut v = json!({
        "kind": "python",
        "function": f.code.name,
        "file": f.code.filename,
        "line": f.line,
        "interpreter": f.interp,
    });
    if let Some(locals) = locals {
        let map: serde_json::Map<String, serde_json::Value> =
            locals.iter().map(|(k, r)| (k.clone(), json!(r))).collect();
        v["locals"] = serde_json::Value::Object(map);
    }
    v
}

fn native_frame_json(n: &native::NativeFrame) -> serde_json::Value {
    json!({
        "kind": "native",
        "function": n.function,
        "library": n.library,
        "address": format!("{:#x}", n.address),
        "file": n.file,
        "line": n.line,
        "inlined": n.inlined,
    })
}

/// A thread's frames as JSON: Python frames, or with --native both kinds spliced.
fn frames_json<S: Image>(reader: &Reader<S>, dumped: &Dumped, i: usize) -> Vec<serde_json::Value> {
    let t = &dumped.threads[i];
    let locals = |fi: usize| dumped.diagnosis.locals.as_ref().and_then(|l| l.get(i)).and_then(|l| l.get(fi));
    let index = |f: &Frame| t.frames.iter().position(|g| std::ptr::eq(g, f)).unwrap_or(0);
    match native_of(dumped, t) {
        Some(Ok(stack)) => native::splice(reader.source.memory(), &reader.target, &t.frames, stack)
            .into_iter()
            .map(|m| match m {
                Mixed::Python(f) => python_frame_json(f, locals(index(f))),
                Mixed::Native(n) => native_frame_json(n),
            })
            .collect(),
        _ => t.frames.iter().enumerate().map(|(fi, f)| python_frame_json(f, locals(fi))).collect(),
    }
}

fn native_of<'a>(dumped: &'a Dumped, t: &ThreadStack) -> Option<&'a Result<Vec<native::NativeFrame>, String>> {
    dumped.native.as_ref()?.get(&t.tid?)
}

pub fn to_json<S: Image>(reader: &Reader<S>, dumped: &Dumped) -> serde_json::Value {
    let (threads, d) = (&dumped.threads, &dumped.diagnosis);
    json!({
        "pid": reader.source.pid(),
        "core": reader.source.core_path(),
        "python": {
            "version": reader.target.version.to_string(),
            "executable": reader.target.executable,
            "libpython": reader.target.libpython,
        },
        "threads": threads.iter().enumerate().map(|(i, t)| json!({
            "tid": t.tid,
            "thread_id": t.thread_id,
            "name": t.name,
            "holds_gil": t.holds_gil,
            "status": status_json(threads, &d.status[i]),
            "native_error": native_of(dumped, t).and_then(|r| r.as_ref().err()),
            "error": t.error,
            "frames": frames_json(reader, dumped, i),
        })).collect::<Vec<_>>(),
        "deadlocks": d.deadlocks.iter().map(|c| json!({
            "tids": c.iter().map(|&i| threads[i].tid).collect::<Vec<_>>(),
            "description": deadlock_text(threads, d, c),
        })).collect::<Vec<_>>(),
    })
}

fn status_json(threads: &[ThreadStack], s: &Status) -> serde_json::Value {
    json!({
        "on_cpu": s.on_cpu,
        "gil": s.gil.as_str(),
        "syscall": s.syscall,
        "waiting_on": s.waiting_on.as_ref().map(|w| json!({
            "kind": w.kind,
            "lock": w.lock_repr,
            "address": format!("{:#x}", w.lock),
            "object": w.object,
            "via": w.via,
            "function": w.function,
            "owner": w.owner.map(|(o, how)| json!({
                "tid": threads[o].tid,
                "thread_id": threads[o].thread_id,
                "name": threads[o].name,
                "certain": how == OwnerKnown::Recorded,
            })),
        })),
    })
}

fn thread_label(t: &ThreadStack) -> String {
    let tid = t.tid.map(|t| t.to_string()).unwrap_or_else(|| "?".into());
    match &t.name {
        Some(n) => format!("{tid} \"{n}\""),
        None => tid,
    }
}

fn wait_text(threads: &[ThreadStack], w: &Wait) -> String {
    let mut s = format!("waiting for {} `{}` in {}", w.kind, w.via, w.function);
    match &w.object {
        Some(o) => s += &format!(" ({o}, lock {})", w.lock_repr),
        None => s += &format!(" ({})", w.lock_repr),
    }
    match w.owner {
        Some((o, OwnerKnown::Recorded)) => s += &format!(", owned by thread {}", thread_label(&threads[o])),
        Some((o, OwnerKnown::Likely)) => s += &format!(", likely held by thread {}", thread_label(&threads[o])),
        None => {}
    }
    s
}

fn deadlock_text(threads: &[ThreadStack], d: &Diagnosis, cycle: &[usize]) -> String {
    cycle
        .iter()
        .map(|&i| {
            let w = d.status[i].waiting_on.as_ref();
            format!(
                "thread {} waits for {} `{}` held by thread {}",
                thread_label(&threads[i]),
                w.map(|w| w.kind.as_str()).unwrap_or("?"),
                w.map(|w| w.via.as_str()).unwrap_or("?"),
                w.and_then(|w| w.owner).map(|(o, _)| thread_label(&threads[o])).unwrap_or_else(|| "?".into())
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn status_text(s: &Status) -> String {
    let mut parts = Vec::new();
    match s.gil {
        crate::python::diagnose::Gil::Held => parts.push("holds the GIL".to_string()),
        crate::python::diagnose::Gil::Waiting => parts.push("waits for the GIL".to_string()),
        crate::python::diagnose::Gil::No => {}
    }
    if s.on_cpu {
        parts.push("on CPU".to_string());
    } else if let Some(sc) = &s.syscall {
        parts.push(format!("sleeping in {sc}"));
    } else {
        parts.push("sleeping".to_string());
    }
    parts.join(", ")
}

fn python_frame_text(s: &mut String, f: &Frame, locals: Option<&crate::python::diagnose::FrameLocals>) {
    use std::fmt::Write;
    let _ = writeln!(s, "    {} ({}:{})", f.code.name, f.code.filename, f.line);
    for (k, r) in locals.into_iter().flatten() {
        let _ = writeln!(s, "        {k} = {r}");
    }
}

/// `[interpreter N]` before the first frame of each run of one interpreter's frames, in
/// a stack that leaves the main interpreter (none for a stack only in the main one).
fn interpreter_heading(s: &mut String, th: &ThreadStack, f: &Frame) {
    use std::fmt::Write;
    if !th.frames.iter().any(|g| g.interp != 0) {
        return;
    }
    let i = th.frames.iter().position(|g| std::ptr::eq(g, f)).unwrap_or(0);
    if i == 0 || th.frames[i - 1].interp != f.interp {
        let _ = writeln!(s, "  [interpreter {}]", f.interp);
    }
}

fn native_frame_text(s: &mut String, n: &native::NativeFrame) {
    use std::fmt::Write;
    let at = match (&n.file, n.line) {
        (Some(f), Some(l)) => format!("{f}:{l}"),
        _ => format!("{:#x}", n.address),
    };
    let _ = writeln!(
        s,
        "    [C] {}{} ({} {at})",
        n.function.as_deref().unwrap_or("??"),
        if n.inlined { " (inlined)" } else { "" },
        n.library.as_deref().unwrap_or("?"),
    );
}

pub fn to_text<S: Image>(reader: &Reader<S>, dumped: &Dumped) -> String {
    let (threads, d) = (&dumped.threads, &dumped.diagnosis);
    use std::fmt::Write;
    let mut s = String::new();
    let t = &reader.target;
    let _ = writeln!(s, "{}", reader.source.heading());
    let _ = write!(s, "Python {} ({}", t.version, t.executable);
    if let Some(lib) = &t.libpython {
        let _ = write!(s, ", runtime in {lib}");
    }
    let _ = writeln!(s, ")");
    for (i, th) in threads.iter().enumerate() {
        let _ = writeln!(s);
        let _ = writeln!(s, "Thread {} ({})", thread_label(th), status_text(&d.status[i]));
        if let Some(w) = &d.status[i].waiting_on {
            let _ = writeln!(s, "    {}", wait_text(threads, w));
        }
        let locals = |fi: usize| d.locals.as_ref().and_then(|l| l.get(i)).and_then(|l| l.get(fi));
        if let Some(e) = &th.error {
            let _ = writeln!(s, "    (Python stack unreadable: {e})");
        }
        match native_of(dumped, th) {
            Some(Ok(stack)) => {
                for m in native::splice(reader.source.memory(), &reader.target, &th.frames, stack) {
                    match m {
                        Mixed::Python(f) => {
                            let fi = th.frames.iter().position(|g| std::ptr::eq(g, f)).unwrap_or(0);
                            interpreter_heading(&mut s, th, f);
                            python_frame_text(&mut s, f, locals(fi));
                        }
                        Mixed::Native(n) => native_frame_text(&mut s, n),
                    }
                }
                continue;
            }
            Some(Err(why)) => {
                let _ = writeln!(s, "    (no C stack: {why})");
            }
            None => {}
        }
        if th.frames.is_empty() && th.error.is_none() {
            let _ = writeln!(s, "    (no Python frames: running C code or idle)");
        }
        // Where a stack runs in a subinterpreter, each run of its frames is headed by the
        // interpreter's id; a stack only in the main interpreter has no headings.
        for (fi, f) in th.frames.iter().enumerate() {
            interpreter_heading(&mut s, th, f);
            python_frame_text(&mut s, f, locals(fi));
        }
    }
    for c in &d.deadlocks {
        let _ = writeln!(s);
        let _ = writeln!(s, "Likely deadlock: {}", deadlock_text(threads, d, c));
    }
    s
}

/// How many times the stacks are read again when one moved while its locals were read.
const LOCALS_ATTEMPTS: usize = 10;

/// A snapshot and what `diagnose` reads on top of it. Locals and lock waits are read
/// after the stacks; they are believed when every thread's stack is still the same
/// afterwards, and read again otherwise (a thread that never holds still keeps the last
/// read: each value in it was read safely, but they may come from different moments).
pub fn read(reader: &mut Reader, with_locals: bool, with_native: bool) -> crate::error::Result<Dumped> {
    let mut dumped = read_python(reader, with_locals)?;
    // C stacks last: the only step that pauses the target, after every read that does not
    if with_native {
        let tids: Vec<i32> = dumped.threads.iter().filter_map(|t| t.tid).collect();
        dumped.native = Some(native::capture(&reader.source, &tids)?);
    }
    Ok(dumped)
}

/// A dump of a core: its Python side, and with `with_native` each thread's C stack
/// unwound from the registers and stack the core recorded.
pub fn read_core(
    reader: &mut Reader<crate::process::core::Core>,
    with_locals: bool,
    with_native: bool,
) -> crate::error::Result<Dumped> {
    let mut dumped = read_python(reader, with_locals)?;
    if with_native {
        let tids: Vec<i32> = dumped.threads.iter().filter_map(|t| t.tid).collect();
        dumped.native = Some(native::core::capture(&reader.source, &tids));
    }
    Ok(dumped)
}

/// The Python side of a dump, for a live process or a core: stacks, statuses, locals.
pub fn read_python<S: Image>(reader: &mut Reader<S>, with_locals: bool) -> crate::error::Result<Dumped> {
    let mut attempt = 0;
    loop {
        let threads = reader.snapshot()?;
        let os = reader.source.os_threads(&threads.iter().map(|t| t.tid).collect::<Vec<_>>());
        let d = crate::python::diagnose::diagnose(reader.source.memory(), &reader.target, &os, &threads, with_locals);
        attempt += 1;
        // a core holds still by itself
        if !reader.source.live() || attempt >= LOCALS_ATTEMPTS || still(reader, &threads) {
            return Ok(Dumped { threads, diagnosis: d, native: None });
        }
    }
}

fn still<S: Image>(reader: &mut Reader<S>, threads: &[ThreadStack]) -> bool {
    // a fresh snapshot, not a re-walk of each thread state: a thread in several
    // interpreters is joined from several states
    let Ok(now) = reader.snapshot() else { return false };
    threads.iter().all(|th| {
        now.iter().find(|n| n.tid == th.tid && n.thread_id == th.thread_id).is_some_and(|n| {
            n.frames.len() == th.frames.len()
                && n.frames.iter().zip(&th.frames).all(|(a, b)| {
                    a.addr == b.addr && a.line == b.line && a.code_addr == b.code_addr && a.interp == b.interp
                })
        })
    })
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
    pub dumps: Vec<(Reader, Dumped)>,
    pub skipped: Vec<Skipped>,
}

fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).map(|s| s.trim_end().to_string()).unwrap_or_default()
}

/// Dumps `pids` (each must be a readable Python process: an error otherwise, as for one
/// pid) and, with `subprocesses`, every descendant that is one. A descendant that is not
/// Python (a shell, a C helper), or exits while it is read, is skipped and listed.
pub fn many(
    pids: &[i32],
    subprocesses: bool,
    how: crate::python::discover::Discovery,
    with_locals: bool,
    with_native: bool,
) -> crate::error::Result<Many> {
    use crate::error::Error;
    let mut out = Many { dumps: Vec::new(), skipped: Vec::new() };
    for &pid in pids {
        let mut reader = Reader::attach_with(pid, how)?;
        let dumped = read(&mut reader, with_locals, with_native)?;
        out.dumps.push((reader, dumped));
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
            let attempt = Reader::attach_with(child, how)
                .and_then(|mut r| read(&mut r, with_locals, with_native).map(|d| (r, d)));
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
