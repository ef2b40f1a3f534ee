//! Naming the caller of a generator whose frame was read too late.
//!
//! A sampler copies a thread's data stack in one read, but a generator's frame lives in
//! its generator object on the heap, where the copy only has it if an earlier walk saw
//! it. Real programs make new generators all the time, so the walk often reaches one
//! the copy lacks and reads it from the process: by then the generator has usually
//! yielded, and a suspended generator's frame links to nothing. The stack is cut short
//! there (a "truncated" loss) although the copy proves the generator was running: the
//! frame above it, copied, called from it.
//!
//! The copy also holds the generator's caller. Frames on the data stack are pushed and
//! popped in order and lie back to back (each takes its code's `co_framesize` words),
//! and every live one is on the thread's chain. So the data-stack frame directly below
//! the generator's callee is the nearest data-stack frame below the generator in the
//! chain; between the two there can only be generator frames and C-stack entry frames
//! (which a stack does not show). Which generator each frame of that chain resumed is
//! on its saved value stack: SEND_GEN and FOR_ITER_GEN (3.12+) save the resuming
//! frame's stack pointer with the generator object on top (under the sent value on
//! 3.12, under the loop index on 3.14+), and a delegating generator (`yield from`,
//! `await`, a `for` loop over another generator) keeps the one it resumes there for as
//! long as it delegates, even while suspended.
//!
//! From the caller, the search follows generator objects in the two top slots of each
//! saved stack to generator frames that have started and not finished (one that still
//! runs must link to its resumer), down to ours, which must have yielded (not be one
//! made since at its address: gi_frame_state). It is believed only if it arrives at
//! exactly the generator the copy showed running; where several paths arrive, only if
//! the others skip some generators of the longest (a generator also held lower on a
//! stack) and never disagree with it. A frame that saved no stack pointer (3.12-3.13
//! in a call into C: `next(g)`, `list(g)`, an unspecialised `for`) proves nothing: its
//! slots above the real top still hold earlier calls' arguments, and a path through
//! one of them would skip generators (tests/record_generators.rs caught exactly that).
//! Such samples stay lost. 3.11 resumes every generator through a C call: it has no
//! saved stack pointer field, and keeps the loss.

use super::layout::{Layout, FRAME_LEAD};
use super::stack::{self, CodeLookup, HeadBuf, RawFrame, Walk, UNKNOWN_OFFSET};
use crate::process::memory::{Fields, ReadMem};

/// Generators followed between a caller and the generator it runs, at most.
const MAX_DELEGATION: usize = 16;
/// Frames whose slots are searched, at most (each costs two reads of the process at most).
const MAX_SEARCHED: usize = 12;
const USER_SPACE_END: u64 = 0x8000_0000_0000;

/// Completes a walk that ended at a generator frame the copy lacks: the generators that
/// delegate to it, its caller and the caller's chain follow it. `copy` is the tick's copy,
/// `process` the process (for generator frames the copy lacks). False (the walk
/// untouched) when the copy does not prove who resumed the generator.
pub fn complete(
    copy: &dyn ReadMem,
    process: &dyn ReadMem,
    l: &Layout,
    stack_top: u64,
    codes: &mut dyn CodeLookup,
    w: &mut Walk,
) -> bool {
    let saves_stack = l.frame.stacktop.is_some() || l.frame.stackpointer.is_some();
    let (Some(iframe), Some(&gen_frame), true) = (l.gen.iframe, w.visited.last(), saves_stack) else {
        return false;
    };
    // The walk read the generator (its code) from the process; the copy lacked it.
    let mut head = [0u8; 128];
    let frame_len = (l.frame.size as usize).clamp(8, head.len());
    if w.frames.last().is_none_or(|f| f.frame != gen_frame) || copy.read(gen_frame, &mut head[..frame_len]).is_ok() {
        return false;
    }
    // The generator's callee nearest to it on the data stack; none when the generator's
    // chain is the top of the stack, which then ends where the thread state says.
    let (lo, hi) = w.chunk;
    let end = match w.visited[..w.visited.len() - 1].iter().rev().find(|&&f| (lo..hi).contains(&f)) {
        Some(&f) => f,
        None => stack_top,
    };
    let Some(caller) = frame_below(copy, l, lo, end, codes) else {
        return false;
    };
    let mut search = Search {
        copy,
        process,
        l,
        iframe,
        target: gen_frame,
        searched: 0,
        path: [RawFrame::default(); MAX_DELEGATION],
        best: [RawFrame::default(); MAX_DELEGATION],
        best_len: None,
        ambiguous: false,
    };
    // The generator must be one that yielded, not one made since at its address.
    let Some(state) = search.state_of(gen_frame) else {
        return false;
    };
    let (created, executing) = (l.model.frame_created.unwrap_or(-3), l.model.frame_executing.unwrap_or(0));
    if !(created < state && state < executing) {
        return false;
    }
    let Some(top) = search.saved_top(caller, codes) else {
        return false;
    };
    search.visit(top, caller, 0, codes);
    let (Some(n), false) = (search.best_len, search.ambiguous) else {
        return false;
    };
    let mark = (w.frames.len(), w.visited.len());
    w.inferred.clear();
    // The generator's instruction was read after it moved on: not the one at the
    // sample's moment.
    if let Some(g) = w.frames.last_mut() {
        g.offset = UNKNOWN_OFFSET;
    }
    w.inferred.push(gen_frame);
    for f in search.best[..n].iter().rev() {
        w.frames.push(*f);
        w.visited.push(f.frame);
        w.inferred.push(f.frame);
    }
    if stack::continue_walk(copy, copy, l, caller, codes, w).is_err() {
        w.frames.truncate(mark.0);
        w.visited.truncate(mark.1);
        w.inferred.clear();
        w.truncated = true;
        return false;
    }
    true
}

/// The frame directly below the one starting at `end` (or the top frame, if `end` is the
/// top of the data stack) in the chunk at `chunk`, found by stepping from the chunk's
/// first frame by each frame's size.
fn frame_below(copy: &dyn ReadMem, l: &Layout, chunk: u64, end: u64, codes: &mut dyn CodeLookup) -> Option<u64> {
    // The first chunk of a thread keeps its first word free (CPython's push_chunk).
    let previous_chunk = copy.read_u64(chunk + l.chunk.previous).ok()?;
    let mut at = chunk + l.chunk.data + if previous_chunk == 0 { 8 } else { 0 };
    for _ in 0..stack::MAX_DEPTH {
        let code = copy.read_u64(at + l.frame.code).ok()? & !l.model.stackref_tag_mask;
        let size = codes.facts(code).ok()?.frame_bytes;
        let next = at.checked_add(size).filter(|_| size > 0)?;
        if next == end {
            return Some(at);
        }
        if next > end {
            return None;
        }
        at = next;
    }
    None
}

/// A frame's saved value stack: where it starts and where its top is.
#[derive(Clone, Copy)]
struct SavedTop {
    base: u64,
    top: u64,
}

/// A depth-first search for the generator frames between a caller and `target`.
struct Search<'a> {
    copy: &'a dyn ReadMem,
    process: &'a dyn ReadMem,
    l: &'a Layout,
    iframe: u64,
    target: u64,
    searched: usize,
    path: [RawFrame; MAX_DELEGATION],
    best: [RawFrame; MAX_DELEGATION],
    best_len: Option<usize>,
    ambiguous: bool,
}

impl Search<'_> {
    /// Reads from the copy, else from the process; whether it came from the copy.
    fn read(&self, at: u64, buf: &mut [u8]) -> Option<bool> {
        if self.copy.read(at, buf).is_ok() {
            return Some(true);
        }
        self.process.read(at, buf).ok().map(|()| false)
    }

    /// Where `frame`'s saved value stack is, from its header `head`. None where it saved
    /// no stack pointer (running, or, on 3.12-3.13, in a call into C): its slots above
    /// the real top then still hold earlier calls' arguments, among them generators
    /// further down the chain, and a path through one would skip those in between.
    fn saved_top_of(&self, frame: u64, head: &[u8], codes: &mut dyn CodeLookup) -> Option<SavedTop> {
        let l = self.l;
        let slots = frame + l.frame.localsplus?;
        let facts = codes.facts(head.u64_at(l.frame.code) & !l.model.stackref_tag_mask).ok()?;
        let (base, end) = (slots + facts.stack_base, frame + facts.frame_bytes);
        let top = match (l.frame.stacktop, l.frame.stackpointer) {
            (Some(o), _) => slots.wrapping_add((head.i32_at(o) as i64 * 8) as u64),
            (None, Some(o)) => head.u64_at(o),
            (None, None) => return None,
        };
        (top > base && top <= end && top & 7 == 0).then_some(SavedTop { base, top })
    }

    /// The caller's saved stack (it is in the copy: a data-stack frame).
    fn saved_top(&self, frame: u64, codes: &mut dyn CodeLookup) -> Option<SavedTop> {
        let mut head = [0u8; 128];
        let len = (self.l.frame.size as usize).clamp(8, head.len());
        self.copy.read(frame, &mut head[..len]).ok()?;
        self.saved_top_of(frame, &head[..len], codes)
    }

    /// A generator frame's gi_frame_state, read from the process now.
    fn state_of(&self, f: u64) -> Option<i64> {
        let before = self.l.frame_state_before()?;
        let mut b = [0u8; 1];
        self.process.read(f - before, &mut b).ok()?;
        Some(b[0] as i8 as i64)
    }

    /// Follows the generator objects on top of `resumer`'s saved stack.
    fn visit(&mut self, saved: SavedTop, resumer: u64, depth: usize, codes: &mut dyn CodeLookup) {
        if self.searched == MAX_SEARCHED || self.ambiguous {
            return;
        }
        self.searched += 1;
        let lo = saved.top.saturating_sub(16).max(saved.base);
        let mut buf = [0u8; 16];
        let bytes = &mut buf[..(saved.top - lo) as usize];
        if self.read(lo, bytes).is_none() {
            return;
        }
        let mut objects = [0u64; 2];
        let mut n = 0;
        for word in bytes.chunks_exact(8).rev() {
            let o = word.u64_at(0) & !self.l.model.stackref_tag_mask;
            if o > 0x10000 && o < USER_SPACE_END && o & 7 == 0 && !objects[..n].contains(&o) {
                objects[n] = o;
                n += 1;
            }
        }
        for &o in &objects[..n] {
            let f = o + self.iframe;
            if f == self.target {
                self.found(depth);
            } else if depth + 1 < MAX_DELEGATION && !self.path[..depth].iter().any(|p| p.frame == f) {
                if let Some((frame, saved)) = self.running_generator(f, resumer, codes) {
                    self.path[depth] = frame;
                    self.visit(saved, f, depth + 1, codes);
                }
            }
        }
    }

    /// The generator frame at `f` if it is one that has started and not finished, with
    /// its saved stack, from one read (its instruction only if the copy holds it: a later
    /// read may have moved on). Read after the copy, a delegating generator has usually
    /// yielded too (the value its delegate yielded passes through it); one that still
    /// runs must link to `resumer` (an inline resume links it there).
    fn running_generator(&self, f: u64, resumer: u64, codes: &mut dyn CodeLookup) -> Option<(RawFrame, SavedTop)> {
        let l = self.l;
        let mut buf: HeadBuf = [0; 128 + FRAME_LEAD as usize];
        // (from the copy if it holds the frame: a second look at it there costs nothing)
        let copied = stack::read_head(self.copy, l, f, &mut buf).is_ok();
        let (head, state) = stack::read_head(if copied { self.copy } else { self.process }, l, f, &mut buf).ok()?;
        let state = state?;
        let (created, executing) = (l.model.frame_created?, l.model.frame_executing?);
        let alive = created < state && state <= executing;
        let linked = state != executing || head.u64_at(l.frame.previous) == resumer;
        if !alive || !linked || Some(head.u8_at(l.frame.owner?)) != l.model.owner_generator {
            return None;
        }
        let code = head.u64_at(l.frame.code) & !l.model.stackref_tag_mask;
        let facts = codes.facts(code).ok()?;
        let offset = match l.frame.instr {
            Some(o) if copied => head.u64_at(o).wrapping_sub(facts.bytecode_start) as i64,
            _ => UNKNOWN_OFFSET,
        };
        let saved = self.saved_top_of(f, head, codes)?;
        Some((RawFrame { code, frame: f, offset, locals: Default::default() }, saved))
    }

    /// A path of `depth` generators arrived at the target. A path that skips some of
    /// another's generators (one also held lower on a saved stack) is part of it; two
    /// that disagree leave the resumer unknown.
    fn found(&mut self, depth: usize) {
        let new = &self.path[..depth];
        match self.best_len {
            None => {
                self.best[..depth].copy_from_slice(new);
                self.best_len = Some(depth);
            }
            Some(b) => {
                let old = &self.best[..b];
                if is_subsequence(new, old) {
                    // nothing the known path lacks
                } else if is_subsequence(old, new) {
                    self.best[..depth].copy_from_slice(new);
                    self.best_len = Some(depth);
                } else {
                    self.ambiguous = true;
                }
            }
        }
    }
}

/// Whether every frame of `a` is in `b`, in the same order.
fn is_subsequence(a: &[RawFrame], b: &[RawFrame]) -> bool {
    let mut rest = b.iter();
    a.iter().all(|x| rest.any(|y| y.frame == x.frame))
}
