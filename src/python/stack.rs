//! Walking one thread's Python frames, innermost first. The walk yields raw frames
//! (code address, frame address, bytecode offset); names and lines are resolved
//! separately, through the code cache, so a sampler can keep raw frames only.
//!
//! Everything here reads through `ReadMem`: the live process for dumps, the tick's copy
//! for the sampler (where a frame outside the copy is `Missing`, never read behind the
//! copy's back), a simulated memory in tests. The rules for telling a real stack from a
//! torn read are in docs/ARCHITECTURE.md ("Torn reads").

use super::layout::{FrameModel, Layout, FRAME_LEAD};
use crate::process::memory::{Fields, ReadError, ReadMem, ReadResult, Span};

/// Deeper than this is a loop in what we read, not a real stack (CPython's own C stack
/// limits keep real Python stacks far shallower).
pub const MAX_DEPTH: usize = 50_000;

const USER_SPACE_END: u64 = 0x8000_0000_0000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct RawFrame {
    pub code: u64,
    pub frame: u64,
    /// byte offset of the current instruction in the bytecode
    pub offset: i64,
    /// what the frame's local slots say about which call this is (bytecode.rs proofs)
    pub locals: Locals,
}

/// A fingerprint of one frame's local slots, for telling two calls of one function at
/// one frame address apart: the objects in the slots a call never rebinds (its
/// arguments, its cells), and which of the locals it never unbinds are bound. And a
/// hash of all its first local slots (locals, cells, free variables): nothing but the
/// frame's own code writes those, so a frame whose locals changed between two samples
/// ran in between, and whatever it had called then has returned (or, a generator,
/// yielded).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Locals {
    pub read: bool,
    pub fixed: u64,
    pub bound: u64,
    pub slots: u64,
    /// 4 bits of each of the first 16 local slots' objects, slot i at bits 4i..4i+4: a
    /// slot whose bits differ holds another object (`changed_in`)
    pub sig: u64,
}

impl Locals {
    /// Whether `self` (an earlier sample) and `now` cannot be the same call.
    pub fn proves_new_call(&self, now: &Locals) -> bool {
        self.read && now.read && (self.fixed != now.fixed || self.bound & !now.bound != 0)
    }

    /// Whether some slot of `kept` (a mask) holds another object in `now` than in `self`
    /// (an earlier sample): at one offset where those slots keep their objects, two
    /// calls (python/paths.rs, `kept_at`). A slot whose object changed shows it in 15
    /// cases of 16; slots from 16 on are not looked at.
    pub fn changed_in(&self, now: &Locals, kept: u64) -> bool {
        self.read && now.read && (self.sig ^ now.sig) & nibbles(kept) != 0
    }

    /// Whether the frame ran between `self` (an earlier sample, where it had called
    /// another frame) and `now`: its callee then is not the one above it now.
    pub fn proves_it_ran(&self, now: &Locals) -> bool {
        self.read && now.read && self.slots != now.slots
    }
}

/// What the walk needs to know of a code object: where its bytecode starts (3.11+, to
/// turn an instruction pointer into an offset) and before which offset a frame has not
/// started running.
#[derive(Debug, Clone, Copy, Default)]
pub struct CodeFacts {
    pub bytecode_start: u64,
    pub first_traceable: i64,
    /// bytes a frame of this code takes on the data stack (3.12+; 0 unknown)
    pub frame_bytes: u64,
    /// where the value stack starts in a frame of this code, in bytes from localsplus
    /// (after the locals, cells and free variables; 3.11+)
    pub stack_base: u64,
    /// local slots never rebound within a call, and locals never unbound (masks < 64)
    pub fixed_slots: u64,
    pub undeletable: u64,
    /// only C-stack entry frames run this code (3.12+'s `<interpreter trampoline>`)
    pub entry_only: bool,
}

/// Looks code objects up for the walk: `NotCode` when the address holds something else.
pub trait CodeLookup {
    fn facts(&mut self, code: u64) -> ReadResult<CodeFacts>;
}

impl<F: FnMut(u64) -> ReadResult<CodeFacts>> CodeLookup for F {
    fn facts(&mut self, code: u64) -> ReadResult<CodeFacts> {
        self(code)
    }
}

/// The walk's inputs and outputs, kept between walks so nothing is allocated once warm.
#[derive(Default)]
pub struct Walk {
    /// innermost first
    pub frames: Vec<RawFrame>,
    /// every frame read, Python or not (C-stack entry frames included), innermost first:
    /// what a sampler asks for next time
    pub visited: Vec<u64>,
    /// the last walk ended at a frame that cannot be a thread's outermost one
    pub truncated: bool,
    /// input: the thread's newest data-stack chunk, [start, end), when known. Within one
    /// chunk a caller's frame always lies below its callee's.
    pub chunk: (u64, u64),
    /// generator frames whose callers were named from the copy, not read from the frames
    /// (python/resume.rs)
    pub inferred: Vec<u64>,
}

/// The offset of a frame whose instruction at the sample's moment is not known (a
/// generator's frame read after it moved on): it matches any offset in the timeline.
pub const UNKNOWN_OFFSET: i64 = i64::MIN;

/// Where a thread's innermost frame pointer is and what it holds. 3.11-3.12 keep it in
/// the CFrame of the innermost running evaluation loop (on the C stack), which the
/// thread state points to: two hops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Top {
    /// the innermost frame (0: no Python frame)
    pub frame: u64,
    /// the CFrame the pointer was read from (3.11-3.12), else 0
    pub cframe: u64,
}

/// The thread's innermost frame, as `mem` holds it.
pub fn top_frame(mem: &dyn ReadMem, l: &Layout, tstate: u64) -> ReadResult<Top> {
    let p = mem.read_u64(tstate + l.tstate.frame)?;
    match l.tstate.cframe_current_frame {
        Some(off) if l.model.frame_via_cframe => {
            let frame = if p == 0 { 0 } else { mem.read_u64(p + off)? };
            Ok(Top { frame, cframe: p })
        }
        _ => Ok(Top { frame: p, cframe: 0 }),
    }
}

/// Reads the stack starting at `frame`. Errors mean the memory changed under us
/// (`Fault`), or, reading a tick's copy, that a frame is not in it (`Missing`).
pub fn walk(mem: &dyn ReadMem, l: &Layout, frame: u64, codes: &mut dyn CodeLookup, w: &mut Walk) -> ReadResult<()> {
    walk_with_locals_from(mem, mem, l, frame, codes, w)
}

/// `walk`, taking the frames' local slots (call proofs only) from `locals`: a sampler
/// passes its copy, so a frame whose slots it did not copy keeps no proof rather than
/// costing a read of its own.
pub fn walk_with_locals_from(
    mem: &dyn ReadMem,
    locals: &dyn ReadMem,
    l: &Layout,
    frame: u64,
    codes: &mut dyn CodeLookup,
    w: &mut Walk,
) -> ReadResult<()> {
    w.frames.clear();
    w.visited.clear();
    w.inferred.clear();
    continue_walk(mem, locals, l, frame, codes, w)
}

/// The walk from `frame` on, appended to what `w` holds already.
pub fn continue_walk(
    mem: &dyn ReadMem,
    locals: &dyn ReadMem,
    l: &Layout,
    mut frame: u64,
    codes: &mut dyn CodeLookup,
    w: &mut Walk,
) -> ReadResult<()> {
    w.truncated = false;
    let f = &l.frame;
    let mut head: HeadBuf = [0; 128 + FRAME_LEAD as usize];
    let mut root_owner = None;
    // A chain read while frames are freed and reused can loop back on itself (3.8's
    // heap frame objects during start-up, seen once in 70 launches). Walking that to
    // MAX_DEPTH cost 50,000 reads per attempt: a 55 ms stall in which a 50 ms program
    // ran unseen. Brent's check finds any loop within twice its length, at one
    // comparison per frame: `mark` is the frame reached after each power of two.
    let (mut mark, mut since_mark, mut next_mark) = (0u64, 0usize, 1usize);
    while frame != 0 {
        // Frames are aligned user-space addresses: anything else is a torn read, and
        // following it would only read more garbage.
        if w.visited.len() >= MAX_DEPTH || frame & 7 != 0 || frame >= USER_SPACE_END || frame == mark {
            return Err(ReadError::Fault);
        }
        since_mark += 1;
        if since_mark == next_mark {
            (mark, since_mark, next_mark) = (frame, 0, next_mark * 2);
        }
        w.visited.push(frame);
        let (b, state) = read_head(mem, l, frame, &mut head)?;
        let previous = b.u64_at(f.previous);
        let code = b.u64_at(f.code) & !l.model.stackref_tag_mask;
        let in_chunk = |a: u64| a >= w.chunk.0 && a < w.chunk.1;
        if in_chunk(frame) && in_chunk(previous) && previous >= frame {
            return Err(ReadError::Fault); // a stale frame linking to a newer one
        }
        match l.model.frames {
            FrameModel::FrameObject => {
                let lasti = b.i32_at(f.lasti.unwrap_or(0)) as i64;
                let locals = match codes.facts(code) {
                    Ok(c) => read_locals(locals, l, frame, &c),
                    Err(_) => Locals::default(), // (names are resolved later, with their own checks)
                };
                w.frames.push(RawFrame { code, frame, offset: lasti * l.model.lasti_unit as i64, locals });
            }
            FrameModel::InterpreterFrame => {
                let owner = b.u8_at(f.owner.unwrap_or(0));
                root_owner = Some(owner);
                // A generator frame that links to a caller is running, or it is a stale
                // copy: a generator freed and another made at its address, not started
                // or suspended (one that links to nothing was read suspended: below).
                if previous != 0 && generator_not_running(l, Some(owner), state) {
                    return Err(ReadError::Fault);
                }
                let non_python = l.model.owner_first_non_python.is_some_and(|first| owner >= first);
                if !non_python && code != 0 {
                    match codes.facts(code) {
                        // A C-stack slot that held an entry frame and was reused by other
                        // C code: its stale code pointer outlived the owner byte.
                        Ok(c) if c.entry_only => return Err(ReadError::Fault),
                        Ok(c) => {
                            let offset = b.u64_at(f.instr.unwrap_or(0)).wrapping_sub(c.bytecode_start) as i64;
                            let incomplete = Some(owner) != l.model.owner_generator && offset < c.first_traceable;
                            if !incomplete {
                                let slots = read_locals(locals, l, frame, &c);
                                w.frames.push(RawFrame { code, frame, offset, locals: slots });
                            }
                        }
                        // 3.13+ frames may execute something that is not a code object;
                        // before, a frame whose code is not a code object is a torn read.
                        Err(ReadError::NotCode) if l.model.debug_offsets => {}
                        Err(ReadError::NotCode) => return Err(ReadError::Fault),
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        frame = previous;
    }
    // A thread's outermost frame is never a generator's: a generator runs because some
    // frame resumed it, and its frame links back to that one while it runs. A chain
    // that ends in one was read while the generator was suspended: a stale copy. From
    // 3.12 on every evaluation starts from an entry frame the interpreter owns, so a
    // chain must end at one.
    let truncated = match (root_owner, l.model.owner_first_non_python) {
        (Some(owner), Some(first)) => owner < first,
        (Some(owner), None) => Some(owner) == l.model.owner_generator,
        (None, _) => false,
    };
    if truncated {
        w.truncated = true;
        return Err(ReadError::Fault);
    }
    Ok(())
}

/// Whether a frame whose owner byte is `owner` and whose state (`read_head`) is `state`
/// is a generator's that is not executing: created, suspended or finished, so not on any
/// thread's stack now.
pub fn generator_not_running(l: &Layout, owner: Option<u8>, state: Option<i64>) -> bool {
    let executing = l.model.frame_executing.unwrap_or(0);
    owner.is_some() && owner == l.model.owner_generator && state.is_some_and(|s| s != executing)
}

/// Whether a frame sitting at a RESUME instruction has been reported to tracers as
/// called, so that its wait there (for the GIL, mostly) belongs to the call: always on
/// 3.12, never on 3.13+ (docs/ARCHITECTURE.md, "Frames that have not started"), and on
/// 3.11 when it sits at its first RESUME with a frame object, which the tracer's call
/// event made between the two checks. `mem` is the tick's copy: a frame it does not hold
/// counts as not reported (nothing read from the process for a frame that is not shown).
pub fn resume_wait_reported(l: &Layout, mem: &dyn ReadMem, f: &RawFrame, first_traceable: i64) -> bool {
    if l.model.resume_wait_in_call {
        return true;
    }
    let Some(at) = l.frame.frame_object.filter(|_| l.model.resume_call_between_checks) else {
        return false;
    };
    f.offset == first_traceable && mem.read_u64(f.frame + at).is_ok_and(|obj| obj != 0)
}

/// Room for one frame header read with `read_head`.
pub type HeadBuf = [u8; 128 + FRAME_LEAD as usize];

/// One read of a frame's header (at most 128 bytes) and, where the layout places a
/// generator's gi_frame_state just before its frame (3.11+), that state byte with it
/// (meaningful for a generator's frame only).
pub fn read_head<'a>(
    mem: &dyn ReadMem,
    l: &Layout,
    frame: u64,
    buf: &'a mut HeadBuf,
) -> ReadResult<(&'a [u8], Option<i64>)> {
    let len = (l.frame.size as usize).clamp(8, 128);
    let before = l.frame_state_before();
    let lead = if before.is_some() { FRAME_LEAD as usize } else { 0 };
    mem.read(frame - lead as u64, &mut buf[..lead + len])?;
    let state = before.map(|d| buf[lead - d as usize] as i8 as i64);
    Ok((&buf[lead..lead + len], state))
}

/// Whether the links a walk followed into frames it read after the copy (`copy` lacks
/// them) still hold, in one read of the process: each such frame's caller pointer and
/// code, and its callee's pointer to it. Frames read one by one are read at different
/// moments, and the thread's top pointer coming back to the same frame does not prove
/// the rest stayed: a callee at the same data-stack address may now be called from a
/// generator allocated where a freed one was (tests/record_generators.rs).
pub fn still_linked(process: &dyn ReadMem, copy: &dyn ReadMem, l: &Layout, w: &Walk) -> ReadResult<bool> {
    let mut batch = LinkBatch::default();
    let mut probe = [0u8; 128];
    let len = (l.frame.size as usize).clamp(8, probe.len());
    // (the walk's frames are the Python ones among those it visited, in the same order)
    let mut python = w.frames.iter().peekable();
    for (i, &f) in w.visited.iter().enumerate() {
        let frame = python.next_if(|r| r.frame == f);
        if w.inferred.contains(&f) || copy.read(f, &mut probe[..len]).is_ok() {
            continue;
        }
        let mut links = [(f + l.frame.previous, w.visited.get(i + 1).copied().unwrap_or(0)); 3];
        let mut n = 1;
        if i > 0 {
            links[n] = (w.visited[i - 1] + l.frame.previous, f);
            n += 1;
        }
        if let Some(r) = frame {
            links[n] = (f + l.frame.code, r.code);
            n += 1;
        }
        for &(addr, value) in &links[..n] {
            if !batch.expect(process, l, addr, value)? {
                return Ok(false);
            }
        }
    }
    batch.check(process, l)
}

/// Words expected at addresses of the process, checked in batches of one read each.
struct LinkBatch {
    spans: [Span; LinkBatch::MAX],
    want: [u64; LinkBatch::MAX],
    n: usize,
}

impl Default for LinkBatch {
    fn default() -> Self {
        LinkBatch { spans: [Span { addr: 0, len: 8, at: 0 }; LinkBatch::MAX], want: [0; LinkBatch::MAX], n: 0 }
    }
}

impl LinkBatch {
    const MAX: usize = 48;

    /// Adds one expected word; false if a full batch, read now, did not hold.
    fn expect(&mut self, process: &dyn ReadMem, l: &Layout, addr: u64, value: u64) -> ReadResult<bool> {
        if self.n == Self::MAX && !self.check(process, l)? {
            return Ok(false);
        }
        self.spans[self.n] = Span { addr, len: 8, at: self.n * 8 };
        self.want[self.n] = value;
        self.n += 1;
        Ok(true)
    }

    /// Reads the batch; whether every word is as expected. Empties it.
    fn check(&mut self, process: &dyn ReadMem, l: &Layout) -> ReadResult<bool> {
        let k = std::mem::take(&mut self.n);
        if k == 0 {
            return Ok(true);
        }
        let mut buf = [0u8; Self::MAX * 8];
        if process.read_spans(&self.spans[..k], &mut buf[..k * 8])? != k {
            return Ok(false);
        }
        // (a code pointer may carry a reference tag, 3.14+; frame pointers are aligned,
        // so masking the tag bits leaves them as they are)
        Ok((0..k).all(|j| buf.u64_at(j as u64 * 8) & !l.model.stackref_tag_mask == self.want[j]))
    }
}

/// Whether `to`, running `code`, lies on the chain from `from` within `hops` links, as
/// the process holds it now (one read per frame: for the rare case a copy cannot
/// settle).
pub fn reaches(mem: &dyn ReadMem, l: &Layout, from: u64, to: u64, code: u64, hops: usize) -> bool {
    let f = &l.frame;
    let mut buf = [0u8; 128];
    let len = (f.size as usize).clamp(8, buf.len());
    let mut frame = from;
    for _ in 0..=hops {
        if frame == 0 || frame & 7 != 0 || frame >= USER_SPACE_END || mem.read(frame, &mut buf[..len]).is_err() {
            return false;
        }
        if frame == to {
            return buf.u64_at(f.code) & !l.model.stackref_tag_mask == code;
        }
        frame = buf.u64_at(f.previous);
    }
    false
}

/// The frame's local slots that can prove a new call; not `read` where they are not in
/// `mem` (a frame outside a tick's copy keeps no proof, it is never a reason to re-read).
fn read_locals(mem: &dyn ReadMem, l: &Layout, frame: u64, c: &CodeFacts) -> Locals {
    let Some(at) = l.frame.localsplus else { return Locals::default() };
    // Its locals, cells and free variables (at most SLOTS_HASHED), not its value stack:
    // 3.15 once showed a caller's stack change under a callee that ran on
    // (tests/record_timeline.rs), and only the frame's own stores write its locals.
    let all = c.stack_base / 8;
    let n = hashed_slots(c);
    if n == 0 {
        return Locals::default();
    }
    let mut buf = [0u8; 64 * 8];
    if mem.read(frame + at, &mut buf[..n * 8]).is_err() {
        return Locals::default();
    }
    let mut locals = Locals { read: true, fixed: 0, bound: 0, slots: 0, sig: 0 };
    let mix = |h: u64, v: u64| (h.rotate_left(5) ^ v).wrapping_mul(0x517c_c1b7_2722_0a95);
    for i in 0..n {
        // 3.14+ slots are tagged references: the tag says how the reference is owned, the
        // rest is the object (and a NULL reference may carry a tag)
        let v = buf.u64_at(i as u64 * 8) & !l.model.stackref_tag_mask;
        if c.fixed_slots >> i & 1 == 1 {
            locals.fixed = mix(locals.fixed, v);
        }
        if c.undeletable >> i & 1 == 1 && v != 0 {
            locals.bound |= 1 << i;
        }
        if (i as u64) < all {
            locals.slots = mix(locals.slots, v);
            if i < 16 {
                locals.sig |= (v.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 60) << (4 * i);
            }
        }
    }
    locals
}

/// The low 16 bits of `mask`, each widened to the 4 bits of `Locals::sig` it stands for.
fn nibbles(mask: u64) -> u64 {
    let mut x = mask & 0xffff;
    x = (x | x << 24) & 0x0000_00ff_0000_00ff;
    x = (x | x << 12) & 0x000f_000f_000f_000f;
    x = (x | x << 6) & 0x0303_0303_0303_0303;
    x = (x | x << 3) & 0x1111_1111_1111_1111;
    x * 0xf
}

/// Local slots of a frame hashed for `Locals::slots` (loop variables are locals).
const SLOTS_HASHED: usize = 32;

/// Where a frame keeps its instruction (its offset, width in bytes).
fn instr_field(l: &Layout) -> Option<(u64, usize)> {
    match l.model.frames {
        FrameModel::FrameObject => l.frame.lasti.map(|o| (o, 4)),
        FrameModel::InterpreterFrame => l.frame.instr.map(|o| (o, 8)),
    }
}

/// The bytes of a frame that only its own code writes, its instruction and the local
/// slots `Locals` hashes, as one span (offset from the frame, length): while a frame
/// has a callee those bytes hold still, so two reads that differ there prove it ran in
/// between (sampler.rs: a caller copied before its callee returned and a new call took
/// the callee's slot).
pub fn own_state_span(l: &Layout) -> Option<(u64, usize)> {
    let (instr, width) = instr_field(l)?;
    let slots = l.frame.localsplus?;
    let start = instr.min(slots);
    let end = (instr + width as u64).max(slots + SLOTS_HASHED as u64 * 8);
    Some((start, (end - start) as usize))
}

/// Whether two reads of one frame's `own_state_span`, running code `c`, show another
/// instruction or other local slots (its value stack and header are left out: the
/// callee may write those, a frame object say).
pub fn own_state_differs(l: &Layout, c: &CodeFacts, a: &[u8], b: &[u8]) -> bool {
    let (Some((start, len)), Some((instr, width)), Some(slots)) =
        (own_state_span(l), instr_field(l), l.frame.localsplus)
    else {
        return false;
    };
    if a.len() < len || b.len() < len {
        return false;
    }
    let i = (instr - start) as usize;
    let s = (slots - start) as usize;
    let n = hashed_slots(c).min(SLOTS_HASHED) * 8;
    a[i..i + width] != b[i..i + width] || a[s..s + n] != b[s..s + n]
}

/// How many of a frame's first slots `read_locals` looks at.
fn hashed_slots(c: &CodeFacts) -> usize {
    let wanted = c.fixed_slots | c.undeletable;
    (64 - wanted.leading_zeros() as usize).max(((c.stack_base / 8) as usize).min(SLOTS_HASHED))
}

/// The thread's stack read directly, frame by frame, believed only if the thread state
/// still points at the same innermost frame afterwards (Fault if it moved). For dumps,
/// which retry; the sampler reads a copy instead (sampler.rs).
pub fn walk_consistent(
    mem: &dyn ReadMem,
    l: &Layout,
    tstate: u64,
    codes: &mut dyn CodeLookup,
    w: &mut Walk,
) -> ReadResult<()> {
    let top = top_frame(mem, l, tstate)?;
    walk(mem, l, top.frame, codes, w)?;
    if top_frame(mem, l, tstate)? != top {
        return Err(ReadError::Fault);
    }
    Ok(())
}

/// Read where a code object was a moment ago, anything but a vanished process means the
/// stack changed under us.
pub fn torn(e: ReadError) -> ReadError {
    match e {
        ReadError::NotCode => ReadError::Fault,
        e => e,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_kept_slot_that_changed_shows_and_other_slots_do_not() {
        assert_eq!(nibbles(0b1), 0xf);
        assert_eq!(nibbles(0b101), 0xf0f);
        assert_eq!(nibbles(1 << 15), 0xf << 60);
        assert_eq!(nibbles(1 << 16), 0, "slots from 16 on are not looked at");
        let at = |sig| Locals { read: true, sig, ..Locals::default() };
        let (a, b) = (at(0x0000_0000_0000_5a00), at(0x0000_0000_0000_5b00));
        assert!(a.changed_in(&b, 0b100), "slot 2 holds another object");
        assert!(!a.changed_in(&b, 0b011), "slots 0 and 1 kept theirs");
        assert!(!Locals::default().changed_in(&b, !0), "not read: proves nothing");
    }
    use super::*;
    use crate::process::simmem::SimMem;

    /// A chain read while frame objects were freed and reused, looping back on itself
    /// (f0 -> f1 -> f2 -> f3 -> f1 ...): torn, and found so after a few reads, not after
    /// MAX_DEPTH of them.
    #[test]
    fn a_chain_that_loops_is_torn_at_once() {
        let l = Layout::for_minor(3, 8).unwrap();
        let mem = SimMem::default();
        let frames: Vec<u64> = (0..4).map(|i| 0x10_0000 + i * 0x1000).collect();
        mem.with(|r| {
            r.map(0x10_0000 - 0x100, 0x5000);
            for (i, &f) in frames.iter().enumerate() {
                let back = if i == 3 { frames[1] } else { frames[i + 1] };
                r.u64(f + l.frame.previous, back);
                r.u64(f + l.frame.code, 0x40_0000);
            }
        });
        let mut codes = |_: u64| Ok(CodeFacts::default());
        let mut w = Walk::default();
        let torn = walk_with_locals_from(&mem, &mem, &l, frames[0], &mut codes, &mut w);
        assert_eq!(torn, Err(ReadError::Fault));
        assert!(w.visited.len() <= 16, "{} frames followed", w.visited.len());
        assert!(*mem.spans_read.borrow() <= 32, "{} reads", mem.spans_read.borrow());
    }

    /// Brent's check never rejects a real chain, however deep.
    #[test]
    fn a_deep_chain_without_a_loop_is_read_whole() {
        let l = Layout::for_minor(3, 8).unwrap();
        let mem = SimMem::default();
        let n = 3000u64;
        mem.with(|r| {
            r.map(0x10_0000 - 0x100, (n as usize + 1) * 0x100);
            for i in 0..n {
                let f = 0x10_0000 + i * 0x100;
                r.u64(f + l.frame.previous, if i + 1 == n { 0 } else { f + 0x100 });
                r.u64(f + l.frame.code, 0x40_0000);
            }
        });
        let mut codes = |_: u64| Ok(CodeFacts::default());
        let mut w = Walk::default();
        walk_with_locals_from(&mem, &mem, &l, 0x10_0000, &mut codes, &mut w).unwrap();
        assert_eq!(w.frames.len(), n as usize);
    }
}
