//! Interpreters and their thread states, read from the runtime.

use super::discover::Target;
use super::layout::Layout;
use crate::process::memory::{ReadError, ReadMem, ReadResult};

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

/// How much of a thread state anyone reads: up to the last field used (a thread state
/// is up to 900 bytes; what we need sits in its first ~260). The list walk and the
/// sampler read the same prefix, so the list can be walked in a tick's copy.
pub fn tstate_read_len(l: &Layout) -> usize {
    let ts = &l.tstate;
    let last = [
        Some(ts.next),
        Some(ts.interp),
        Some(ts.frame),
        Some(ts.thread_id),
        ts.native_thread_id,
        ts.datastack_chunk,
        ts.datastack_top,
    ]
    .into_iter()
    .flatten()
    .max()
    .unwrap_or(0);
    last as usize + 8
}

/// Calls `f` with each interpreter in list order, until it returns false.
pub fn for_each_interpreter(mem: &dyn ReadMem, t: &Target, mut f: impl FnMut(u64) -> bool) -> ReadResult<()> {
    let mut interp = mem.read_u64(t.runtime + t.layout.runtime.interpreters_head)?;
    let mut n = 0;
    while interp != 0 {
        n += 1;
        if n > MAX_INTERPRETERS {
            return Err(ReadError::Fault); // a loop: the list changed under us
        }
        if !f(interp) {
            return Ok(());
        }
        interp = mem.read_u64(interp + t.layout.interp.next)?;
    }
    Ok(())
}

pub fn interpreters(mem: &dyn ReadMem, t: &Target) -> ReadResult<Vec<u64>> {
    let mut out = Vec::new();
    for_each_interpreter(mem, t, |i| {
        out.push(i);
        true
    })?;
    Ok(out)
}

/// Calls `f` with each thread state of `interp` in list order (raw: duplicates of a
/// thread being created included), until it returns false. Without allocating, so the
/// sampler can check a tick's copy of the list with it.
pub fn for_each_state(
    mem: &dyn ReadMem,
    t: &Target,
    interp: u64,
    mut f: impl FnMut(ThreadState) -> bool,
) -> ReadResult<()> {
    use crate::process::memory::Fields;
    let l = &t.layout.tstate;
    let mut buf = [0u8; 1024];
    let buf = &mut buf[..tstate_read_len(&t.layout).min(1024)];
    let mut addr = mem.read_u64(interp + t.layout.interp.threads_head)?;
    let mut n = 0;
    while addr != 0 {
        n += 1;
        if n > MAX_THREADS {
            return Err(ReadError::Fault);
        }
        mem.read(addr, buf)?;
        if buf.u64_at(l.interp) != interp {
            return Err(ReadError::Fault); // a thread state that is not ours: list changed under us
        }
        let state = ThreadState {
            addr,
            interp,
            thread_id: buf.u64_at(l.thread_id),
            native_id: l.native_thread_id.map(|o| buf.i32_at(o)),
        };
        if !f(state) {
            return Ok(());
        }
        addr = buf.u64_at(l.next);
    }
    Ok(())
}

/// The threads of `interp`, one state per thread.
pub fn thread_states(mem: &dyn ReadMem, t: &Target, interp: u64) -> ReadResult<Vec<ThreadState>> {
    Ok(one_per_thread(thread_states_raw(mem, t, interp)?))
}

/// Every state linked, in list order.
pub fn thread_states_raw(mem: &dyn ReadMem, t: &Target, interp: u64) -> ReadResult<Vec<ThreadState>> {
    let mut out = Vec::new();
    for_each_state(mem, t, interp, |s| {
        out.push(s);
        true
    })?;
    Ok(out)
}

/// A thread state is created by the thread that starts the new thread and carries the
/// creator's ids until the new thread runs (3.8-3.11). New states are linked at the
/// head, so of several states with one thread id the last in the list is the real one.
pub fn one_per_thread(raw: Vec<ThreadState>) -> Vec<ThreadState> {
    let mut seen = std::collections::HashSet::new();
    let mut keep: Vec<ThreadState> =
        raw.into_iter().rev().filter(|s| s.thread_id == 0 || seen.insert(s.thread_id)).collect();
    keep.reverse();
    keep
}

/// The thread state holding the GIL of `interp`, if it is held.
pub fn gil_holder(mem: &dyn ReadMem, t: &Target, interp: u64) -> ReadResult<Option<u64>> {
    use super::layout::GilHome;
    let (base, locked, holder) = match t.layout.model.gil {
        GilHome::Runtime => (t.runtime, t.layout.runtime.gil_locked, t.layout.runtime.gil_holder),
        GilHome::Interp => (interp, t.layout.interp.gil_locked, t.layout.interp.gil_holder),
    };
    let (Some(locked), Some(holder)) = (locked, holder) else {
        return Ok(None);
    };
    if mem.read_u32(base + locked)? == 0 {
        return Ok(None);
    }
    Ok(Some(mem.read_u64(base + holder)?))
}

/// Where the GIL of `interp` lies, [start, end): its mutex and condition variables are
/// inside, so a thread sleeping on a futex there waits for the GIL.
pub fn gil_span(t: &Target, interp: u64) -> Option<(u64, u64)> {
    use super::layout::GilHome;
    let l = &t.layout;
    let (base, holder) = match l.model.gil {
        GilHome::Runtime => (t.runtime, l.runtime.gil_holder),
        GilHome::Interp => (interp, l.interp.gil_holder),
    };
    if l.gil.size == 0 {
        return None;
    }
    let start = (base + holder?).wrapping_sub(l.gil.last_holder);
    Some((start, start + l.gil.size))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sampler reads this prefix of every thread state once per tick and takes the
    /// data stack's extent from it: every field it uses must lie inside.
    #[test]
    fn the_read_prefix_holds_every_field_the_sampler_uses() {
        for (n, l) in crate::python::layout::all().into_iter().enumerate() {
            let len = tstate_read_len(&l) as u64;
            let ts = &l.tstate;
            for off in [Some(ts.frame), Some(ts.thread_id), ts.native_thread_id, ts.datastack_chunk, ts.datastack_top] {
                assert!(off.is_none_or(|o| o + 8 <= len), "table {n}: field at {off:?} beyond {len}");
            }
        }
    }
}
