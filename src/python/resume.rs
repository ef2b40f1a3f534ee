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
//! (which a stack does not show). Which generator each frame of that chain resumed
//! is in its slots:
//! - SEND_GEN and FOR_ITER_GEN (3.12+) save the resuming frame's stack pointer with the
//!   generator object on top (under the sent value, or 3.14's loop index), and 3.14+
//!   save it before every call that can run other code. A delegating generator (`yield
//!   from`, `await`, a `for` loop over another generator) keeps the one it resumes there
//!   for as long as it delegates, even while suspended.
//! - A frame that resumed a generator through C (`next(g)`, `list(g)`, a `for` loop not
//!   yet specialised) holds it as an argument on its value stack, but 3.12-3.13 do not
//!   save the stack pointer for such calls (it reads -1): there every slot of the frame
//!   is a candidate.
//!
//! From the caller, the search follows generator objects in those slots to generator
//! frames, down to ours. It is believed only if it arrives at exactly the generator the
//! copy showed running, and, where several paths arrive (a generator also held in a
//! local), only if each is the tail of the longest (the longest names every delegating
//! generator). Anything else stays a loss. 3.11 resumes every generator through a C
//! call and saves no stack pointer for it: it has no fields for this, and keeps the loss.

use super::layout::Layout;
use super::stack::{self, CodeLookup, RawFrame, Walk, UNKNOWN_OFFSET};
use crate::process::memory::{Fields, ReadMem, Span};

/// Generators followed between a caller and the generator it runs, at most.
const MAX_DELEGATION: usize = 16;
/// Frames whose slots are searched, at most (each costs one read of the process at most).
const MAX_SEARCHED: usize = 12;
/// Slots of one frame taken as candidates, at most.
const MAX_SLOTS: usize = 48;
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
    let (Some(iframe), Some(&gen_frame)) = (l.gen.iframe, w.visited.last()) else {
        return false;
    };
    let mut head = [0u8; 128];
    let frame_len = (l.frame.size as usize).clamp(8, head.len());
    if copy.read(gen_frame, &mut head[..frame_len]).is_ok() {
        return false; // copied suspended while a copied frame called from it: torn
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
        path: [0; MAX_DELEGATION],
        best: [0; MAX_DELEGATION],
        best_len: None,
        ambiguous: false,
    };
    search.visit(caller, 0, codes);
    let (Some(n), false) = (search.best_len, search.ambiguous) else {
        return false;
    };
    let chain = search.best;
    let mark = (w.frames.len(), w.visited.len());
    w.inferred.clear();
    // The generator's instruction was read after it moved on: not the one at the
    // sample's moment.
    if let Some(g) = w.frames.last_mut().filter(|g| g.frame == gen_frame) {
        g.offset = UNKNOWN_OFFSET;
    }
    w.inferred.push(gen_frame);
    for &f in chain[..n].iter().rev() {
        let Some(frame) = generator_frame(copy, process, l, f, codes) else {
            w.frames.truncate(mark.0);
            w.inferred.clear();
            return false;
        };
        w.frames.push(frame);
        w.visited.push(f);
        w.inferred.push(f);
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

/// A depth-first search for the generator frames between a caller and `target`.
struct Search<'a> {
    copy: &'a dyn ReadMem,
    process: &'a dyn ReadMem,
    l: &'a Layout,
    iframe: u64,
    target: u64,
    searched: usize,
    path: [u64; MAX_DELEGATION],
    best: [u64; MAX_DELEGATION],
    best_len: Option<usize>,
    ambiguous: bool,
}

impl Search<'_> {
    /// Reads `len` bytes at `at`: from the copy, else from the process.
    fn read(&self, at: u64, buf: &mut [u8]) -> bool {
        self.copy.read(at, buf).is_ok() || self.process.read(at, buf).is_ok()
    }

    fn visit(&mut self, frame: u64, depth: usize, codes: &mut dyn CodeLookup) {
        if self.searched == MAX_SEARCHED || self.ambiguous {
            return;
        }
        self.searched += 1;
        let mut objects = [0u64; MAX_SLOTS];
        let n = self.candidates(frame, codes, &mut objects);
        for &o in &objects[..n] {
            if o + self.iframe == self.target {
                self.found(depth);
            }
        }
        if depth + 1 == MAX_DELEGATION {
            return;
        }
        let mut frames = [0u64; MAX_SLOTS];
        let m = self.generator_frames(&objects[..n], codes, &mut frames);
        for &f in &frames[..m] {
            if f == self.target || self.path[..depth].contains(&f) {
                continue;
            }
            self.path[depth] = f;
            self.visit(f, depth + 1, codes);
        }
    }

    /// A path of `depth` generators arrived at the target.
    fn found(&mut self, depth: usize) {
        let new = &self.path[..depth];
        match self.best_len {
            None => {
                self.best[..depth].copy_from_slice(new);
                self.best_len = Some(depth);
            }
            Some(b) => {
                let old = &self.best[..b];
                if b >= depth && old.ends_with(new) {
                    // a shorter path inside the known one
                } else if depth > b && new.ends_with(old) {
                    self.best[..depth].copy_from_slice(new);
                    self.best_len = Some(depth);
                } else {
                    self.ambiguous = true;
                }
            }
        }
    }

    /// The objects in `frame`'s slots that may be what it resumed: the two top ones if
    /// its stack pointer is saved, else every slot.
    fn candidates(&self, frame: u64, codes: &mut dyn CodeLookup, out: &mut [u64; MAX_SLOTS]) -> usize {
        let l = self.l;
        let mut head = [0u8; 128];
        let len = (l.frame.size as usize).clamp(8, head.len());
        let Some(slots) = l.frame.localsplus.map(|o| frame + o) else { return 0 };
        if !self.read(frame, &mut head[..len]) {
            return 0;
        }
        let Ok(facts) = codes.facts(head.u64_at(l.frame.code) & !l.model.stackref_tag_mask) else {
            return 0;
        };
        let end = frame + facts.frame_bytes;
        let top = match (l.frame.stacktop, l.frame.stackpointer) {
            (Some(o), _) => {
                let n = head.i32_at(o);
                if n > 0 {
                    slots + 8 * n as u64
                } else {
                    0
                }
            }
            (None, Some(o)) => head.u64_at(o),
            (None, None) => return 0,
        };
        let (lo, hi) = if top > slots && top <= end && top & 7 == 0 {
            (top.saturating_sub(16).max(slots), top)
        } else {
            (slots, end.min(slots + 8 * MAX_SLOTS as u64))
        };
        let mut buf = [0u8; MAX_SLOTS * 8];
        let bytes = &mut buf[..(hi.saturating_sub(lo)) as usize];
        if bytes.is_empty() || !self.read(lo, bytes) {
            return 0;
        }
        let mut n = 0;
        // top first
        for word in bytes.chunks_exact(8).rev() {
            let o = word.u64_at(0) & !l.model.stackref_tag_mask;
            if o > 0x10000 && o < USER_SPACE_END && o & 7 == 0 && !out[..n].contains(&o) {
                out[n] = o;
                n += 1;
            }
        }
        n
    }

    /// Which of `objects` hold a generator's frame (read in one go: from the copy where
    /// it has them, the rest in one read of the process).
    fn generator_frames(&self, objects: &[u64], codes: &mut dyn CodeLookup, out: &mut [u64; MAX_SLOTS]) -> usize {
        let l = self.l;
        let (Some(owner), Some(generator)) = (l.frame.owner, l.model.owner_generator) else {
            return 0;
        };
        let len = (owner + 1).max(l.frame.code + 8) as usize;
        let mut buf = [0u8; MAX_SLOTS * 128];
        if len > 128 {
            return 0;
        }
        let mut spans = [Span { addr: 0, len: 0, at: 0 }; MAX_SLOTS];
        let mut k = 0;
        for (i, &o) in objects.iter().enumerate() {
            let at = i * 128;
            let f = o + self.iframe;
            if self.copy.read(f, &mut buf[at..at + len]).is_err() {
                spans[k] = Span { addr: f, len, at };
                k += 1;
            }
        }
        // A span the process does not map ends its read: the rest are read again alone.
        let mut done = 0;
        while done < k {
            match self.process.read_spans(&spans[done..k], &mut buf) {
                Ok(filled) if filled > 0 => done += filled,
                _ => {
                    buf[spans[done].at..spans[done].at + len].fill(0);
                    done += 1;
                }
            }
        }
        let mut m = 0;
        for (i, &o) in objects.iter().enumerate() {
            let b = &buf[i * 128..i * 128 + len];
            if b.u8_at(owner) == generator && codes.facts(b.u64_at(l.frame.code) & !l.model.stackref_tag_mask).is_ok() {
                out[m] = o + self.iframe;
                m += 1;
            }
        }
        m
    }
}

/// A delegating generator's frame as the walk shows it: its instruction only if the copy
/// holds the frame (else it was read later, when it may have moved on).
fn generator_frame(
    copy: &dyn ReadMem,
    process: &dyn ReadMem,
    l: &Layout,
    f: u64,
    codes: &mut dyn CodeLookup,
) -> Option<RawFrame> {
    let mut b = [0u8; 128];
    let len = (l.frame.size as usize).clamp(8, b.len());
    let copied = copy.read(f, &mut b[..len]).is_ok();
    if !copied {
        process.read(f, &mut b[..len]).ok()?;
    }
    let code = b.u64_at(l.frame.code) & !l.model.stackref_tag_mask;
    let facts = codes.facts(code).ok()?;
    let offset = match l.frame.instr {
        Some(o) if copied => b.u64_at(o).wrapping_sub(facts.bytecode_start) as i64,
        _ => UNKNOWN_OFFSET,
    };
    Some(RawFrame { code, frame: f, offset, locals: Default::default() })
}
