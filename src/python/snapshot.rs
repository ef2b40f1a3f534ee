//! A consistent picture of every thread's stack at one moment: what `vizattach dump`
//! prints. Reads run while the target runs; a read that tears (the stack changed under
//! us) is detected and retried, never shown.

use super::code::{CodeCache, CodeInfo};
use super::discover::{discover, Discovery, Target};
use super::stack;
use super::thread_ids::ThreadIds;
use super::{thread_names, threads};
use crate::error::{Error, Result};
use crate::process::core::{Core, Files};
use crate::process::image::Image;
use crate::process::memory::{ReadError, ReadMem, ReadResult};
use crate::process::Process;
use std::sync::Arc;

pub struct Frame {
    pub code: Arc<CodeInfo>,
    pub line: i32,
    /// the id of the interpreter running this frame (0: the main one)
    pub interp: i64,
    /// where the frame and its code object are in the target (for --locals)
    pub addr: u64,
    pub code_addr: u64,
}

pub struct ThreadStack {
    /// the thread state and its interpreter in the target (for a thread in several
    /// interpreters, those of the one it runs in now)
    pub tstate: u64,
    pub interp: u64,
    pub tid: Option<i32>,
    pub thread_id: u64,
    pub name: Option<String>,
    pub holds_gil: bool,
    /// innermost first
    pub frames: Vec<Frame>,
    /// Why the stack could not be read (a core only: a live process's stack is read
    /// again until it can be; a core's stays as it is, and the other threads are still
    /// worth showing).
    pub error: Option<String>,
}

/// A target (a live process, or a core file: `S`) and what was learnt of its interpreter.
pub struct Reader<S: Image = Process> {
    pub source: S,
    pub target: Target,
    pub codes: CodeCache,
    pub ids: ThreadIds,
}

const ATTEMPTS: usize = 200;

impl Reader {
    pub fn attach(pid: i32) -> Result<Reader> {
        Self::attach_with(pid, Discovery::Symbols)
    }

    pub fn attach_with(pid: i32, how: Discovery) -> Result<Reader> {
        let process = Process::open(pid)?;
        let target = discover(&process, how)?;
        let ids = ThreadIds::new(pid);
        Ok(Reader { source: process, target, codes: CodeCache::default(), ids })
    }
}

impl Reader<Core> {
    /// A process dumped to a core file, its files found as `files` says.
    pub fn open_core(path: &std::path::Path, files: &Files, how: Discovery) -> Result<Reader<Core>> {
        let core = Core::open(path, files)?;
        let target = discover(&core, how)?;
        let ids = ThreadIds::recorded(core.pid, core.threads.iter().map(|t| t.tid).collect());
        Ok(Reader { source: core, target, codes: CodeCache::default(), ids })
    }
}

impl<S: Image> Reader<S> {
    /// Whether the interpreter is up: a main interpreter with a thread of its own.
    pub fn initialized(&self) -> bool {
        let (mem, t) = (self.source.memory(), &self.target);
        let main = match mem.read_u64(t.runtime + t.layout.runtime.interpreters_main) {
            Ok(m) if m != 0 => m,
            _ => return false,
        };
        threads::thread_states(mem, t, main).is_ok_and(|s| !s.is_empty())
    }

    pub fn snapshot(&mut self) -> Result<Vec<ThreadStack>> {
        let mut last = ReadError::Fault;
        for attempt in 0..ATTEMPTS {
            match self.try_snapshot() {
                Ok(s) => return Ok(s),
                Err(ReadError::Fault) if self.source.live() => {
                    last = ReadError::Fault;
                    if !crate::process::is_alive(self.source.pid()) {
                        return Err(Error::TargetExited(self.source.pid()));
                    }
                    // Back off a little more each time: a stack changing this often will
                    // hold still between two of its own steps sooner or later.
                    std::thread::sleep(std::time::Duration::from_micros(50 * attempt as u64));
                }
                Err(e) => return Err(self.source.read_error(e)),
            }
        }
        Err(match last {
            ReadError::Fault => Error::Inconsistent(format!(
                "process {}: the thread list or a stack changed during each of {ATTEMPTS} reads; try again",
                self.source.pid()
            )),
            e => self.source.read_error(e),
        })
    }

    fn try_snapshot(&mut self) -> ReadResult<Vec<ThreadStack>> {
        let mem = self.source.memory();
        let t: &Target = &self.target;
        let mut out = Vec::new();
        self.ids.refresh();
        let interps = threads::interpreters(mem, t)?;
        // A thread in a subinterpreter has a state (and part of its stack) in each
        // interpreter it entered: ranked by entry order, joined below.
        let mut ranked: Vec<(usize, ThreadStack)> = Vec::new();
        let mut unreadable: Option<ReadError> = None;
        for (i, &interp) in interps.iter().enumerate() {
            let rank = interps.len() - 1 - i; // listed newest first
            let interp_id = mem.read_u64(interp + t.layout.interp.id)? as i64;
            let states = threads::thread_states(mem, t, interp)?;
            let holder = threads::gil_holder(mem, t, interp)?;
            // threading._active changes as threads come and go: a torn read of it makes
            // the whole snapshot try again rather than show threads unnamed.
            let names = thread_names::read(mem, t, interp)?;
            let tids = self.ids.resolve(mem, &states, true);
            let tids_reliable = self.ids.can_resolve(&states);
            if tids_reliable && !states.is_empty() && tids.iter().all(|t| t.is_none()) {
                return Err(ReadError::Fault); // every thread gone at once: a torn read, not the truth
            }
            for (ts, tid) in states.iter().zip(tids) {
                if tid.is_none() && tids_reliable {
                    continue; // no live OS thread: not started yet, or already ended
                }
                self.source.begin_read();
                let (frames, error) = match read_stack(mem, t, &mut self.codes, ts.addr, interp_id) {
                    Ok(f) => (f, None),
                    Err(e) if !self.source.live() => {
                        unreadable = Some(e);
                        (Vec::new(), Some(self.source.unreadable(e)))
                    }
                    Err(e) => return Err(e),
                };
                let name = names.get(&ts.thread_id).cloned().or_else(|| {
                    let tid = tid?;
                    if tid == self.source.pid() {
                        return Some("MainThread".to_string());
                    }
                    self.source.thread_name(tid)
                });
                ranked.push((
                    rank,
                    ThreadStack {
                        tstate: ts.addr,
                        interp,
                        tid,
                        thread_id: ts.thread_id,
                        name,
                        holds_gil: holder == Some(ts.addr),
                        frames,
                        error,
                    },
                ));
            }
        }
        // a core in which no stack can be followed is not one to show thread by thread
        if let Some(e) = unreadable.filter(|_| ranked.iter().all(|(_, t)| t.error.is_some())) {
            return Err(e);
        }
        join_interpreters(ranked, &mut out);
        Ok(out)
    }
}

/// One entry per OS thread: the stacks of one thread's states in several interpreters
/// are stacked, the latest-entered interpreter's frames innermost (docs/ARCHITECTURE.md,
/// "Subinterpreters"). States without a known tid stay entries of their own. Keeps the
/// order in which threads were first listed.
fn join_interpreters(mut ranked: Vec<(usize, ThreadStack)>, out: &mut Vec<ThreadStack>) {
    let mut order: Vec<usize> = (0..ranked.len()).collect();
    // innermost part first within a thread
    order.sort_by_key(|&i| (ranked[i].1.tid.is_none(), ranked[i].1.tid, std::cmp::Reverse(ranked[i].0)));
    let mut joined: Vec<Option<ThreadStack>> = Vec::new();
    joined.resize_with(ranked.len(), || None);
    let mut k = 0;
    while k < order.len() {
        let tid = ranked[order[k]].1.tid;
        let end =
            if tid.is_none() { k + 1 } else { k + order[k..].iter().take_while(|&&i| ranked[i].1.tid == tid).count() };
        let group = &order[k..end];
        let at = *group.iter().min().unwrap();
        let outer = *group.last().unwrap();
        let mut frames = Vec::new();
        let mut holds_gil = false;
        let mut error = None;
        // the name the thread has where it started (the outermost part), else any
        let mut name = ranked[outer].1.name.take();
        for &i in group {
            let part = &mut ranked[i].1;
            frames.append(&mut part.frames);
            holds_gil |= part.holds_gil;
            error = error.or(part.error.take());
            name = name.or(part.name.take());
        }
        let thread_id = ranked[outer].1.thread_id;
        // the state of the interpreter the thread runs in now (its innermost part)
        let (tstate, interp) = (ranked[group[0]].1.tstate, ranked[group[0]].1.interp);
        joined[at] = Some(ThreadStack { tstate, interp, tid, thread_id, name, holds_gil, frames, error });
        k = end;
    }
    out.extend(joined.into_iter().flatten());
}

/// One thread's stack, resolved; Fault if it changed while we read it.
pub fn read_stack(
    mem: &dyn ReadMem,
    t: &Target,
    codes: &mut CodeCache,
    tstate: u64,
    interp: i64,
) -> ReadResult<Vec<Frame>> {
    let mut w = stack::Walk::default();
    let mut lookup = |code| {
        let info = codes.get(mem, &t.layout, t.code_type, code)?;
        Ok(info.facts())
    };
    stack::walk_consistent(mem, &t.layout, tstate, &mut lookup, &mut w)?;
    w.frames
        .iter()
        .map(|f| {
            // it was a code object during the walk
            let code = codes.get(mem, &t.layout, t.code_type, f.code).map_err(stack::torn)?;
            let line = code.line(&t.layout, f.offset);
            Ok(Frame { code, line, interp, addr: f.frame, code_addr: f.code })
        })
        .collect()
}
