//! `dump --native`: every thread's C stack, with its Python frames spliced in where the
//! interpreter evaluates them. Threads are paused one at a time only to copy their
//! registers and stack (pause.rs); unwinding (unwind.rs) and naming (modules.rs) run on
//! the copies while the target runs.

pub mod core;
pub mod modules;
pub mod pause;
pub mod unwind;

use crate::error::Result;
use crate::process::memory::ReadMem;
use crate::process::Process;
use crate::python::discover::Target;
use crate::python::snapshot::Frame;
use std::collections::HashMap;
pub use unwind::NativeFrame;

/// The C function that evaluates Python frames (one call per frame before 3.11, one per
/// run of frames entered from C from 3.11).
const EVAL_FUNCTION: &str = "_PyEval_EvalFrameDefault";

/// Per OS thread id: its C stack innermost first, or why there is none.
pub type NativeStacks = HashMap<i32, std::result::Result<Vec<NativeFrame>, String>>;

pub fn capture(process: &Process, tids: &[i32]) -> Result<NativeStacks> {
    // read again: libraries loaded since the attach are on the stacks too
    let maps = crate::process::maps::read(process.pid)?;
    let stack_end = |sp: u64| maps.iter().find(|m| sp >= m.start && sp < m.end).map(|m| m.end);
    let (captured, missed) = pause::capture_all(process.pid, tids, stack_end)?;
    let debug_root = std::path::PathBuf::from(format!("/proc/{}/root", process.pid));
    let modules = modules::load(&maps, &|m| process.file_path(m), &debug_root);
    let mut out: NativeStacks = HashMap::new();
    for c in &captured {
        out.insert(c.tid, Ok(unwind::unwind(&process.memory, &modules, c)));
    }
    for m in missed {
        out.insert(m.tid, Err(m.why));
    }
    Ok(out)
}

/// One entry of a spliced stack.
pub enum Mixed<'a> {
    Python(&'a Frame),
    Native(&'a NativeFrame),
}

/// The thread's stack innermost first, C and Python frames in the order they were
/// entered: each evaluation-loop call is preceded by the Python frames it runs. When the
/// evaluation loop cannot be found (no symbols), the Python frames come first.
pub fn splice<'a>(mem: &dyn ReadMem, t: &Target, python: &'a [Frame], native: &'a [NativeFrame]) -> Vec<Mixed<'a>> {
    let is_eval = |f: &NativeFrame| !f.inlined && f.function.as_deref() == Some(EVAL_FUNCTION);
    let evals = native.iter().filter(|f| is_eval(f)).count();
    let mut out = Vec::new();
    let mut py = python.iter();
    if evals == 0 {
        out.extend(py.map(Mixed::Python));
        out.extend(native.iter().map(Mixed::Native));
        return out;
    }
    for n in native {
        if is_eval(n) {
            // this call runs Python frames up to and including the first it entered
            for f in py.by_ref() {
                out.push(Mixed::Python(f));
                if first_of_its_call(mem, t, f) {
                    break;
                }
            }
        }
        out.push(Mixed::Native(n));
    }
    out.extend(py.map(Mixed::Python));
    out
}

/// Whether `f` is the first frame its evaluation-loop call entered: always before 3.11;
/// 3.11 marks it (is_entry); 3.12+ link it to an entry frame the interpreter owns.
fn first_of_its_call(mem: &dyn ReadMem, t: &Target, f: &Frame) -> bool {
    let l = &t.layout;
    if let Some(off) = l.frame.is_entry {
        return mem.read_vec(f.addr + off, 1).map(|b| b[0] != 0).unwrap_or(true);
    }
    let (Some(owner), Some(first_non_python)) = (l.frame.owner, l.model.owner_first_non_python) else {
        return true; // one call per frame (3.8-3.10)
    };
    match mem.read_u64(f.addr + l.frame.previous) {
        Ok(0) | Err(_) => true,
        Ok(prev) => mem.read_vec(prev + owner, 1).map(|b| b[0] >= first_non_python).unwrap_or(true),
    }
}
