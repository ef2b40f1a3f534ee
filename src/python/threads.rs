//! Interpreters and their thread states, read from the runtime.

use super::discover::Target;
use crate::process::memory::{Memory, ReadError, ReadResult};

/// More thread states than this in one interpreter means we are following garbage.
const MAX_THREADS: usize = 100_000;
const MAX_INTERPRETERS: usize = 1024;

#[derive(Debug, Clone)]
pub struct ThreadState {
    pub addr: u64,
    pub interp: u64,
    /// pthread_t of the thread (threading.get_ident())
    pub thread_id: u64,
    /// OS tid in the target's pid namespace, where the version records it (3.11+)
    pub native_id: Option<i32>,
}

pub fn interpreters(mem: &Memory, t: &Target) -> ReadResult<Vec<u64>> {
    let mut out = Vec::new();
    let mut interp = mem.read_u64(t.runtime + t.layout.runtime.interpreters_head)?;
    while interp != 0 && out.len() < MAX_INTERPRETERS {
        if out.contains(&interp) {
            return Err(ReadError::Fault);
        }
        out.push(interp);
        interp = mem.read_u64(interp + t.layout.interp.next)?;
    }
    Ok(out)
}

pub fn thread_states(mem: &Memory, t: &Target, interp: u64) -> ReadResult<Vec<ThreadState>> {
    let l = &t.layout.tstate;
    let mut out = Vec::new();
    let mut addr = mem.read_u64(interp + t.layout.interp.threads_head)?;
    let mut buf = vec![0u8; l.size.max(l.next + 8) as usize];
    use crate::process::memory::Fields;
    while addr != 0 {
        if out.len() >= MAX_THREADS {
            return Err(ReadError::Fault);
        }
        mem.read(addr, &mut buf)?;
        if buf.u64_at(l.interp) != interp {
            return Err(ReadError::Fault); // a thread state that is not ours: list changed under us
        }
        out.push(ThreadState {
            addr,
            interp,
            thread_id: buf.u64_at(l.thread_id),
            native_id: l.native_thread_id.map(|o| buf.i32_at(o)),
        });
        addr = buf.u64_at(l.next);
    }
    // A thread state is created by the thread that starts the new thread and carries the
    // creator's ids until the new thread runs (3.8-3.11). New states are linked at the
    // head, so of several states with one thread id the last in the list is the real one.
    let mut seen = std::collections::HashSet::new();
    let mut keep: Vec<ThreadState> = out.into_iter().rev().filter(|s| s.thread_id == 0 || seen.insert(s.thread_id)).collect();
    keep.reverse();
    Ok(keep)
}

/// The thread state holding the GIL of `interp`, if it is held.
pub fn gil_holder(mem: &Memory, t: &Target, interp: u64) -> ReadResult<Option<u64>> {
    use super::layout::GilHome;
    let (base, locked, holder) = match t.layout.model.gil {
        GilHome::Runtime => (t.runtime, t.layout.runtime.gil_locked, t.layout.runtime.gil_holder),
        GilHome::Interp => (interp, t.layout.interp.gil_locked, t.layout.interp.gil_holder),
    };
    let (Some(locked), Some(holder)) = (locked, holder) else { return Ok(None) };
    if mem.read_u32(base + locked)? == 0 {
        return Ok(None);
    }
    Ok(Some(mem.read_u64(base + holder)?))
}
