//! The sampler against a simulated 3.12 interpreter whose memory changes in the middle
//! of a read: each way a read of a running program can tear, pinned.

use super::*;
use crate::process::memory::Span;
use crate::process::simmem::{Regions, SimMem};
use crate::python::layout::Layout;
use crate::python::version::Version;
use std::rc::Rc;

const RUNTIME: u64 = 0x10_000;
const INTERP: u64 = 0x20_000;
const TSTATE: u64 = 0x30_000;
const TSTATE2: u64 = 0x31_000;
const CFRAME: u64 = 0x38_000;
const CFRAME2: u64 = 0x39_000;
const CHUNK: u64 = 0x40_000;
const CHUNK_SIZE: usize = 16 << 10;
const CODES: u64 = 0x50_000;
const STRINGS: u64 = 0x60_000;
const CODE_TYPE: u64 = 0x70_000;
const HEAP: u64 = 0x80_000;
/// frame slots in the chunk: header, then one slot per depth
const SLOT: u64 = 160;

fn layout() -> Layout {
    Layout::for_minor(3, 12).unwrap()
}

/// (a thread's first chunk keeps its first word free, as CPython's does)
fn slot(depth: u64) -> u64 {
    CHUNK + 32 + depth * SLOT
}

fn code(n: u64) -> u64 {
    CODES + n * 0x400
}

/// The simulated process: one interpreter, threads with a stack each in a data chunk.
struct Sim {
    mem: Rc<SimMem>,
    l: Layout,
}

/// Lets the sampler own a handle on memory the test keeps changing.
struct Shared(Rc<SimMem>);
impl ReadMem for Shared {
    fn read_spans(&self, spans: &[Span], buf: &mut [u8]) -> ReadResult<usize> {
        self.0.read_spans(spans, buf)
    }
}

/// The simulated thread is this test's own OS thread: it runs while it ticks, so the
/// kernel never says it slept (a sleeping one is not read again: that has its own test).
fn my_tid() -> i32 {
    unsafe { libc::gettid() }
}

impl Sim {
    fn new() -> Sim {
        let l = layout();
        let mem = Rc::new(SimMem::default());
        mem.with(|r| {
            r.map(RUNTIME, 4096);
            r.map(INTERP, 4096);
            r.map(CFRAME, 0x2000); // the C stack: CFRAME2 lies in it, 4 KiB deeper in
            r.map(CHUNK, CHUNK_SIZE);
            r.map(CODES, 0x4000);
            r.map(STRINGS, 0x4000);
            r.map(CODE_TYPE, 0x400);
            r.map(HEAP, 0x4000);
            r.u64(RUNTIME + l.runtime.interpreters_head, INTERP);
            r.u64(RUNTIME + l.runtime.interpreters_main, INTERP);
            r.u64(CHUNK + l.chunk.size, CHUNK_SIZE as u64);
            for n in 0..16 {
                write_code(r, &l, n);
            }
        });
        let sim = Sim { mem, l };
        sim.add_thread(TSTATE, CFRAME, 0x1111, my_tid(), 0);
        sim
    }

    /// A thread state linked at the head of the list.
    fn add_thread(&self, ts: u64, cframe: u64, thread_id: u64, native: i32, next: u64) {
        let l = &self.l;
        let l2 = l.clone();
        self.mem.with(|r| {
            r.map(ts, 1024);
            r.u64(ts + l2.tstate.next, next);
            r.u64(ts + l2.tstate.interp, INTERP);
            r.u64(ts + l2.tstate.frame, cframe);
            r.u64(ts + l2.tstate.thread_id, thread_id);
            r.u32(ts + l2.tstate.native_thread_id.unwrap(), native as u32);
            r.u64(ts + l2.tstate.datastack_chunk.unwrap(), CHUNK);
            r.u64(INTERP + l2.interp.threads_head, ts);
        });
        let _ = l;
    }

    fn sampler(&self) -> Sampler<Shared> {
        let target = Target {
            version: Version::from_hex(0x030c01f0),
            layout: self.l.clone(),
            runtime: RUNTIME,
            code_type: CODE_TYPE,
            executable: "/sim/python3.12".into(),
            libpython: None,
            notes: Vec::new(),
        };
        let pid = std::process::id() as i32;
        Sampler::new(pid, Shared(self.mem.clone()), target, CodeCache::default(), ThreadIds::new(pid))
    }
}

fn write_code(r: &mut Regions, l: &Layout, n: u64) {
    let c = code(n);
    let name = STRINGS + n * 0x100;
    let file = STRINGS + 0x3000;
    let lines = STRINGS + 0x3800;
    r.u64(c + l.object.ob_type, CODE_TYPE);
    r.u64(c + l.code.filename, file);
    r.u64(c + l.code.name, name);
    r.u64(c + l.code.qualname.unwrap(), name);
    r.u32(c + l.code.firstlineno, 10 * n as u32 + 1);
    r.u64(c + l.code.linetable, lines);
    r.u32(c + l.code.firsttraceable.unwrap(), 0);
    r.u32(c + l.code.framesize.unwrap(), (SLOT / 8) as u32);
    unicode(r, l, name, &format!("f{n}"));
    unicode(r, l, file, "/sim/app.py");
    r.u64(lines + l.bytes.size, 0);
}

fn unicode(r: &mut Regions, l: &Layout, at: u64, s: &str) {
    r.u64(at + l.unicode.length, s.len() as u64);
    r.u32(at + l.unicode.state, (1 << 2) | (1 << 5) | (1 << 6));
    r.write(at + l.unicode.ascii_data, s.as_bytes());
}

/// Writes a frame running code `n` at `at`, called from `previous`, at offset `offset`.
fn frame(r: &mut Regions, l: &Layout, at: u64, n: u64, previous: u64, offset: u64) {
    r.u64(at + l.frame.previous, previous);
    r.u64(at + l.frame.code, code(n));
    r.u64(at + l.frame.instr.unwrap(), code(n) + l.code.code_adaptive.unwrap() + offset);
    r.u8(at + l.frame.owner.unwrap(), 0);
}

/// The C-stack entry frame every 3.12+ evaluation starts from: a thread's outermost.
const ENTRY: u64 = CFRAME + 0x1800;

/// Sets a thread's stack to the codes `stack` (root first) in consecutive chunk slots
/// from `first`, above the entry frame, and points its CFrame at the innermost.
fn stack(r: &mut Regions, l: &Layout, cframe: u64, first: u64, stack: &[u64]) {
    r.u64(ENTRY + l.frame.previous, 0);
    r.u64(ENTRY + l.frame.code, 0);
    r.u8(ENTRY + l.frame.owner.unwrap(), l.model.owner_first_non_python.unwrap());
    let mut prev = ENTRY;
    for (i, &n) in stack.iter().enumerate() {
        let at = slot(first + i as u64);
        frame(r, l, at, n, prev, 2 * (i as u64 + 1));
        prev = at;
    }
    r.u64(cframe + l.tstate.cframe_current_frame.unwrap(), prev);
}

/// A simulated thread running the codes `st` (root first), and a sampler that has read it
/// once (its plan is warm).
fn warm(st: &[u64]) -> (Sim, Layout, Sampler<Shared>, Stats) {
    let sim = Sim::new();
    let l = sim.l.clone();
    sim.mem.with(|r| stack(r, &l, CFRAME, 0, st));
    let mut s = sim.sampler();
    let stats = Stats::default();
    tick(&mut s, &stats);
    (sim, l, s, stats)
}

/// One tick; the messages it sent, and its batch.
fn tick(s: &mut Sampler<Shared>, stats: &Stats) -> (Vec<Message>, SampleBatch) {
    let (tx, rx) = crossbeam_channel::unbounded();
    assert!(s.tick(&tx, stats).unwrap());
    let mut msgs: Vec<Message> = rx.try_iter().collect();
    let i = msgs.iter().rposition(|m| matches!(m, Message::Sample(_))).expect("a sample");
    let Message::Sample(b) = msgs.remove(i) else { unreachable!() };
    (msgs, b)
}

/// Each thread's stack in the batch as code numbers, root first (None: no sample).
fn stacks(b: &SampleBatch) -> Vec<(u64, Option<Vec<u64>>)> {
    let mut v: Vec<_> = b
        .threads
        .iter()
        .map(|t| (t.key, b.stack(t).map(|s| s.iter().map(|f| (f.code - CODES) / 0x400).collect())))
        .collect();
    v.sort_by_key(|(k, _)| *k);
    v
}

fn lost(stats: &Stats) -> u64 {
    stats.lost_total()
}

fn ended(msgs: &[Message]) -> Vec<u64> {
    msgs.iter().filter_map(|m| if let Message::ThreadEnded { key, .. } = m { Some(*key) } else { None }).collect()
}

#[test]
fn a_steady_stack_is_read_whole() {
    let sim = Sim::new();
    let l = sim.l.clone();
    sim.mem.with(|r| stack(r, &l, CFRAME, 0, &[0, 1, 2, 3]));
    let mut s = sim.sampler();
    let stats = Stats::default();
    for _ in 0..3 {
        let (_, b) = tick(&mut s, &stats);
        assert_eq!(stacks(&b), vec![(TSTATE, Some(vec![0, 1, 2, 3]))]);
    }
    assert_eq!(lost(&stats), 0);
}

#[test]
fn a_return_while_the_group_is_copied_gives_the_stack_at_the_end_not_a_mix() {
    // The thread returns from f3 and f2 and calls f5 from f1 into f2's old slot while its
    // group is being copied: the copy holds f5 at slot 2 and f3's stale frame at slot 3,
    // which still links to slot 2. Walking from the first top alone would show f3 called
    // by f5; the second top (slot 2) lies on that chain, so the stack at the end of the
    // read is the chain from there.
    let (sim, l, mut s, stats) = warm(&[0, 1, 2, 3]);
    let l2 = l.clone();
    sim.mem.when_reading(CHUNK, move |r| {
        frame(r, &l2, slot(2), 5, slot(1), 40);
        r.u64(CFRAME + l2.tstate.cframe_current_frame.unwrap(), slot(2));
    });
    let (_, b) = tick(&mut s, &stats);
    assert_eq!(sim.mem.pending_changes(), 0);
    assert_eq!(stacks(&b), vec![(TSTATE, Some(vec![0, 1, 5]))]);
    assert_eq!(lost(&stats), 0);
    // stamped with the end of the read: the moment it describes
    assert!(b.threads[0].time_ns > b.time_ns);
}

#[test]
fn a_call_while_the_group_is_copied_gives_the_stack_at_the_start() {
    let (sim, l, mut s, stats) = warm(&[0, 1, 2]);
    // f2 calls f6 while the group is copied: f6's frame is written just before the
    // chunk is copied, and becomes the top before the top pointer is read again
    let l2 = l.clone();
    sim.mem.when_reading(CHUNK, move |r| frame(r, &l2, slot(3), 6, slot(2), 2));
    let l3 = l.clone();
    sim.mem.when_reading(TSTATE + l.tstate.frame, move |r| {
        r.u64(CFRAME + l3.tstate.cframe_current_frame.unwrap(), slot(3));
    });
    let (_, b) = tick(&mut s, &stats);
    assert_eq!(stacks(&b), vec![(TSTATE, Some(vec![0, 1, 2]))]);
    assert_eq!(lost(&stats), 0);
    assert!(b.threads[0].time_ns < b.time_ns);
}

#[test]
fn a_call_written_after_its_slot_was_copied_is_followed_in_the_process() {
    let (sim, l, mut s, stats) = warm(&[0, 1, 2]);
    let retried = stats.retried.load(Ordering::Relaxed);
    // f2 calls f6 after the chunk was copied: the copy's slot 3 is stale, so only the
    // process shows that the second top's chain reaches the first top
    let l2 = l.clone();
    sim.mem.when_reading(TSTATE + l.tstate.frame, move |r| {
        frame(r, &l2, slot(3), 6, slot(2), 2);
        r.u64(CFRAME + l2.tstate.cframe_current_frame.unwrap(), slot(3));
    });
    let (_, b) = tick(&mut s, &stats);
    assert_eq!(stacks(&b), vec![(TSTATE, Some(vec![0, 1, 2]))]);
    assert_eq!(lost(&stats), 0);
    assert_eq!(stats.retried.load(Ordering::Relaxed), retried, "kept from the first read");
    assert!(b.threads[0].time_ns < b.time_ns);
}

#[test]
fn a_stale_copy_whose_top_now_runs_other_code_is_not_believed() {
    let (sim, l, mut s, stats) = warm(&[0, 1, 2]);
    // the thread left f2 and called f7 from f1 into f2's slot, then f6 from there: the
    // process's chain from the second top reaches slot 2, but slot 2 runs f7 now
    let l2 = l.clone();
    sim.mem.when_reading(TSTATE + l.tstate.frame, move |r| {
        frame(r, &l2, slot(2), 7, slot(1), 2);
        frame(r, &l2, slot(3), 6, slot(2), 2);
        r.u64(CFRAME + l2.tstate.cframe_current_frame.unwrap(), slot(3));
    });
    let (_, b) = tick(&mut s, &stats);
    assert_ne!(stacks(&b), vec![(TSTATE, Some(vec![0, 1, 2]))], "f2 is gone: the first read's stack is not the truth");
}

#[test]
fn a_caller_that_ran_while_its_callee_slot_was_reused_is_read_again() {
    // f2 (slot 2) returns to f1 while the chunk is copied, after f1's bytes were copied
    // and before slot 2's: f1 moves on and calls f7 into slot 2. The top pointer names
    // slot 2 at both ends of the read, and the copy holds f1 as it was under f7 as it is:
    // f1's older call site or locals would split f7 at the next sample. Either f1 calls
    // from another site, or from the same one with a new loop variable.
    for moves_on in [true, false] {
        let sim = Sim::new();
        let l = sim.l.clone();
        let (instr, slots) = (l.frame.instr.unwrap(), l.frame.localsplus.unwrap());
        sim.mem.with(|r| {
            r.u32(code(1) + l.code.nlocalsplus.unwrap(), 2);
            stack(r, &l, CFRAME, 0, &[0, 1, 2]);
            r.u64(slot(1) + slots, HEAP + 0x10);
        });
        let mut s = sim.sampler();
        let stats = Stats::default();
        tick(&mut s, &stats);
        let l2 = l.clone();
        sim.mem.when_copying(slot(2), move |r| {
            let site = if moves_on { 30 } else { 4 };
            r.u64(slot(1) + instr, code(1) + l2.code.code_adaptive.unwrap() + site);
            r.u64(slot(1) + slots, HEAP + 0x20);
            frame(r, &l2, slot(2), 7, slot(1), 2);
        });
        let retried = stats.retried.load(Ordering::Relaxed);
        let (_, torn) = tick(&mut s, &stats);
        assert_eq!(sim.mem.pending_changes(), 0);
        assert_eq!(stacks(&torn), vec![(TSTATE, Some(vec![0, 1, 7]))]);
        assert!(stats.retried.load(Ordering::Relaxed) > retried, "read again (moves on: {moves_on})");
        let (_, steady) = tick(&mut s, &stats);
        let caller = |b: &SampleBatch| {
            let f = &b.stack(&b.threads[0]).unwrap()[1];
            (f.offset, f.locals)
        };
        assert!(caller(&torn) == caller(&steady), "f1 as it is under f7 (moves on: {moves_on})");
        assert_eq!(lost(&stats), 0);
    }
}

#[test]
fn a_frame_whose_code_object_replaced_a_cached_one_proves_nothing_by_its_slots() {
    // f2's code object is freed and another one made at its address (other arguments,
    // other stores): the walk reads the new frame with the cached entry's facts, and only
    // the check at the end of the tick finds the entry stale. The sample names the new
    // code, and its slots, hashed with the old facts, must not be compared.
    let sim = Sim::new();
    let l = sim.l.clone();
    sim.mem.with(|r| {
        for n in [1, 2, 3] {
            r.u32(code(n) + l.code.nlocalsplus.unwrap(), 2);
        }
        stack(r, &l, CFRAME, 0, &[0, 1, 2]);
    });
    let mut s = sim.sampler();
    let stats = Stats::default();
    let (_, before) = tick(&mut s, &stats);
    let old_id = before.stack(&before.threads[0]).unwrap()[2].code_id;
    // f2 returned; a new code object at its address (another first line) runs in a new
    // frame one deeper, called by f3
    sim.mem.with(|r| {
        r.u32(code(2) + l.code.firstlineno, 777);
        stack(r, &l, CFRAME, 0, &[0, 1, 3, 2]);
        r.u64(slot(3) + l.frame.localsplus.unwrap(), HEAP + 0x40);
    });
    let (_, b) = tick(&mut s, &stats);
    let frames = b.stack(&b.threads[0]).unwrap();
    assert_eq!(frames.len(), 4);
    assert_ne!(frames[3].code_id, old_id, "the new code object has an id of its own");
    assert!(frames[2].locals.read, "f3's slots were read");
    assert!(!frames[3].locals.read, "slots hashed with the stale entry's facts are dropped");
}

/// Between the two reads of its top pointer in every attempt of the next tick, the
/// thread moves from frame `a` to frame `b` and back.
fn never_holds_still(sim: &Sim, l: &Layout, a: u64, b: u64) {
    for k in 0..2 * ATTEMPTS as u64 {
        let l2 = l.clone();
        sim.mem.when_reading(TSTATE + l.tstate.frame, move |r| {
            let top = if k % 2 == 0 { a } else { b };
            r.u64(CFRAME + l2.tstate.cframe_current_frame.unwrap(), top);
        });
    }
}

#[test]
fn a_thread_that_never_holds_still_is_lost_and_counted_as_moved() {
    // Between the two reads of its top pointer the thread leaves f3 (slot 3) for a
    // generator f9 resumed by f1, and back, every time: neither top lies on the other's
    // chain, so no read shows one real stack.
    let sim = Sim::new();
    let l = sim.l.clone();
    let gen_frame = HEAP + 0x200;
    sim.mem.with(|r| {
        stack(r, &l, CFRAME, 0, &[0, 1, 2, 3]);
        frame(r, &l, gen_frame, 9, slot(1), 6);
        r.u8(gen_frame + l.frame.owner.unwrap(), l.model.owner_generator.unwrap());
    });
    let mut s = sim.sampler();
    let stats = Stats::default();
    tick(&mut s, &stats);
    never_holds_still(&sim, &l, gen_frame, slot(3));
    let (_, b) = tick(&mut s, &stats);
    assert_eq!(stacks(&b), vec![(TSTATE, None)]);
    assert_eq!(stats.lost[Loss::Moved as usize].load(Ordering::Relaxed), 1);
}

#[test]
fn a_read_that_keeps_nothing_still_says_which_generator_stopped_running() {
    // f0 -> f1 -> generator g (f7) -> f8, kept. Then g yields and the thread never holds
    // still (between two tops on neither's chain): no stack is kept, but the copy showed
    // g suspended, so the timeline can end g's resumption before that read.
    let sim = Sim::new();
    let l = sim.l.clone();
    let (g, other) = (HEAP + 0x200, HEAP + 0x800);
    sim.mem.with(|r| {
        stack(r, &l, CFRAME, 0, &[0, 1]);
        gen_frame(r, &l, g, 7, slot(1));
        frame(r, &l, slot(2), 8, g, 4);
        gen_frame(r, &l, other, 9, slot(1));
        r.u64(CFRAME + l.tstate.cframe_current_frame.unwrap(), slot(2));
    });
    let mut s = sim.sampler();
    let stats = Stats::default();
    let (_, b) = tick(&mut s, &stats);
    assert_eq!(stacks(&b), vec![(TSTATE, Some(vec![0, 1, 7, 8]))]);
    sim.mem.with(|r| {
        suspend(r, &l, g);
        frame(r, &l, slot(2), 8, slot(1), 4);
    });
    never_holds_still(&sim, &l, other, slot(2));
    let (_, b) = tick(&mut s, &stats);
    assert_eq!(stacks(&b), vec![(TSTATE, None)]);
    let ends = b.threads[0].ends;
    assert!(ends[0].is_set() && ends[0].idle == g, "{ends:?}");
    assert!(ends[0].excludes(g) && !ends[0].excludes(slot(1)));
}

#[test]
fn a_stack_deeper_than_last_tick_is_read_whole() {
    // 40 more frames than the last walk saw: past the part of the chunk that was copied.
    let (sim, l, mut s, stats) = warm(&[0, 1]);
    let deep: Vec<u64> = (0..42).map(|i| i % 16).collect();
    sim.mem.with(|r| stack(r, &l, CFRAME, 0, &deep));
    let (_, b) = tick(&mut s, &stats);
    assert_eq!(stacks(&b), vec![(TSTATE, Some(deep.clone()))]);
    assert_eq!(lost(&stats), 0);
}

#[test]
fn a_deep_stack_the_copy_lacks_is_copied_not_read_frame_by_frame() {
    // The thread moved to a new data-stack chunk holding 3000 frames: the tick's copy has
    // none of them. A walk that read them from the process one by one made single ticks
    // of pylint at 10 kHz last 57-184 ms; the walk gives up after PROCESS_READS reads,
    // and the next read copies the chunk whole.
    const CHUNK2: u64 = 0x100_000;
    const DEPTH: u64 = 3000;
    let (sim, l, mut s, stats) = warm(&[0, 1]);
    let size = 32 + (DEPTH + 1) * SLOT;
    sim.mem.with(|r| {
        r.map(CHUNK2, size as usize);
        r.u64(CHUNK2 + l.chunk.size, size);
        let mut prev = ENTRY;
        for i in 0..DEPTH {
            let at = CHUNK2 + 32 + i * SLOT;
            frame(r, &l, at, i % 16, prev, 2);
            prev = at;
        }
        r.u64(CFRAME + l.tstate.cframe_current_frame.unwrap(), prev);
        r.u64(TSTATE + l.tstate.datastack_chunk.unwrap(), CHUNK2);
        r.u64(TSTATE + l.tstate.datastack_top.unwrap(), prev + SLOT);
    });
    let before = *sim.mem.reads.borrow();
    let (_, b) = tick(&mut s, &stats);
    let reads = *sim.mem.reads.borrow() - before;
    let want: Vec<u64> = (0..DEPTH).map(|i| i % 16).collect();
    assert_eq!(stacks(&b), vec![(TSTATE, Some(want))]);
    assert!(reads < 500, "{reads} reads of the process for one tick of a {DEPTH}-deep stack");
    assert_eq!(lost(&stats), 0);
}

#[test]
fn a_generator_frame_at_the_root_is_a_stale_copy() {
    // A generator's frame read while it was suspended links to nothing: a chain ending
    // there is cut short, and is read again rather than shown with the generator as root.
    let sim = Sim::new();
    let l = sim.l.clone();
    let gen_frame = HEAP + 0x100;
    sim.mem.with(|r| {
        stack(r, &l, CFRAME, 0, &[0, 1]);
        frame(r, &l, gen_frame, 7, slot(1), 8);
        r.u8(gen_frame + l.frame.owner.unwrap(), l.model.owner_generator.unwrap());
        frame(r, &l, slot(2), 8, gen_frame, 4);
        r.u64(CFRAME + l.tstate.cframe_current_frame.unwrap(), slot(2));
    });
    let mut s = sim.sampler();
    let stats = Stats::default();
    let (_, b) = tick(&mut s, &stats);
    assert_eq!(stacks(&b), vec![(TSTATE, Some(vec![0, 1, 7, 8]))]);
    // this time the generator's frame is copied while it is (seemingly) suspended
    let l2 = l.clone();
    sim.mem.when_reading(gen_frame - FRAME_LEAD, move |r| r.u64(gen_frame + l2.frame.previous, 0));
    let l3 = l.clone();
    sim.mem.when_reading(TSTATE + l.tstate.frame, move |r| r.u64(gen_frame + l3.frame.previous, slot(1)));
    let retried = stats.retried.load(Ordering::Relaxed);
    let (_, b) = tick(&mut s, &stats);
    assert_eq!(stacks(&b), vec![(TSTATE, Some(vec![0, 1, 7, 8]))]);
    assert_eq!((lost(&stats), stats.retried.load(Ordering::Relaxed) - retried), (0, 1));
}

#[test]
fn a_new_evaluation_loop_is_followed_to_its_cframe() {
    // 3.12 keeps the top pointer in the CFrame of the innermost evaluation loop: a call
    // through C moves the thread state to a new CFrame the copy did not include.
    let (sim, l, mut s, stats) = warm(&[0, 1]);
    sim.mem.with(|r| {
        stack(r, &l, CFRAME2, 0, &[0, 1, 2]);
        r.u64(TSTATE + l.tstate.frame, CFRAME2);
    });
    let (_, b) = tick(&mut s, &stats);
    assert_eq!(stacks(&b), vec![(TSTATE, Some(vec![0, 1, 2]))]);
    assert_eq!(lost(&stats), 0);
}

#[test]
fn churn_in_the_thread_list_never_ends_a_living_thread() {
    let (sim, l, mut s, stats) = warm(&[0, 1]);
    // A thread is being linked in while the list is copied: the head changes under the
    // read, and the direct re-read that follows finds the list changed again. (The
    // interpreter's next and threads_head fields are one piece of the read.)
    let l2 = l.clone();
    sim.mem.when_reading(INTERP + l.interp.next, move |r| {
        r.map(TSTATE2, 1024);
        r.u64(TSTATE2 + l2.tstate.interp, 0xdead_0000); // half-built: not ours yet
        r.u64(INTERP + l2.interp.threads_head, TSTATE2);
    });
    for _ in 0..3 {
        let (msgs, b) = tick(&mut s, &stats);
        assert!(ended(&msgs).is_empty(), "a living thread was ended");
        assert!(stacks(&b).iter().all(|(k, st)| *k != TSTATE || st.as_deref() == Some(&[0, 1][..])));
    }
    // The new thread settles; a while later it finishes and is unlinked: only it ends.
    sim.mem.with(|r| {
        r.u64(TSTATE2 + l.tstate.interp, INTERP);
        r.u64(TSTATE2 + l.tstate.next, TSTATE);
        r.u64(TSTATE2 + l.tstate.frame, CFRAME2);
        r.u64(TSTATE2 + l.tstate.thread_id, 0x2222);
        r.u32(TSTATE2 + l.tstate.native_thread_id.unwrap(), my_tid() as u32 + 1);
        r.u64(TSTATE2 + l.tstate.datastack_chunk.unwrap(), CHUNK);
        stack(r, &l, CFRAME2, 20, &[9, 10]);
    });
    let (msgs, b) = tick(&mut s, &stats);
    assert!(ended(&msgs).is_empty());
    assert_eq!(stacks(&b), vec![(TSTATE, Some(vec![0, 1])), (TSTATE2, Some(vec![9, 10]))]);
    sim.mem.with(|r| r.u64(INTERP + l.interp.threads_head, TSTATE));
    let (msgs, b) = tick(&mut s, &stats);
    assert_eq!(ended(&msgs), vec![TSTATE2]);
    assert_eq!(stacks(&b), vec![(TSTATE, Some(vec![0, 1]))]);
}

#[test]
fn a_thread_state_reused_by_another_thread_ends_the_first() {
    let sim = Sim::new();
    let l = sim.l.clone();
    sim.mem.with(|r| stack(r, &l, CFRAME, 0, &[0, 1]));
    let mut s = sim.sampler();
    let stats = Stats::default();
    let (_, b) = tick(&mut s, &stats);
    assert_eq!(b.threads[0].tid, my_tid());
    // freed and allocated again for a new thread at the same address
    sim.mem.with(|r| {
        r.u64(TSTATE + l.tstate.thread_id, 0x3333);
        r.u32(TSTATE + l.tstate.native_thread_id.unwrap(), my_tid() as u32 + 2);
        stack(r, &l, CFRAME, 0, &[4]);
    });
    let (msgs, _) = tick(&mut s, &stats);
    assert_eq!(ended(&msgs), vec![TSTATE]);
    let (msgs, b) = tick(&mut s, &stats);
    assert!(ended(&msgs).is_empty());
    assert_eq!(stacks(&b), vec![(TSTATE, Some(vec![4]))]);
    assert_eq!(b.threads[0].tid, my_tid() + 2);
}

#[test]
fn a_chain_cut_short_by_a_stale_link_is_not_believed() {
    // The copy of f2's slot still holds an older frame's link to nothing: walking it ends
    // at a Python frame, not at the entry frame every 3.12+ evaluation starts from.
    let (sim, l, mut s, stats) = warm(&[0, 1, 2, 3]);
    let l2 = l.clone();
    sim.mem.when_reading(CHUNK, move |r| r.u64(slot(2) + l2.frame.previous, 0));
    let l3 = l.clone();
    sim.mem.when_reading(TSTATE + l.tstate.frame, move |r| r.u64(slot(2) + l3.frame.previous, slot(1)));
    let (_, b) = tick(&mut s, &stats);
    assert_eq!(stacks(&b), vec![(TSTATE, Some(vec![0, 1, 2, 3]))]);
    assert_eq!(lost(&stats), 0);
}

#[test]
fn a_frame_linking_to_a_newer_one_in_its_chunk_is_torn() {
    // Within one data-stack chunk a caller lies below its callee; a copy where f3 links
    // to a frame above it is a stale slot, never shown.
    let (sim, l, mut s, stats) = warm(&[0, 1, 2, 3]);
    for _ in 0..ATTEMPTS {
        let l2 = l.clone();
        sim.mem.when_reading(CHUNK, move |r| {
            frame(r, &l2, slot(5), 6, slot(1), 2);
            r.u64(slot(3) + l2.frame.previous, slot(5));
        });
    }
    let (_, b) = tick(&mut s, &stats);
    assert_eq!(stacks(&b), vec![(TSTATE, None)]);
    assert_eq!(stats.lost[Loss::Torn as usize].load(Ordering::Relaxed), 1);
}

/// A real OS thread blocked on a channel: its id, the channel (each message wakes it
/// once; dropping it ends the thread) and its handle.
fn blocked_thread() -> (i32, std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>) {
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let (wake_tx, wake_rx) = std::sync::mpsc::channel::<()>();
    let sleeper = std::thread::spawn(move || {
        tid_tx.send(unsafe { libc::gettid() }).unwrap();
        while wake_rx.recv().is_ok() {}
    });
    (tid_rx.recv().unwrap(), wake_tx, sleeper)
}

#[test]
fn a_thread_that_has_not_run_keeps_its_stack_unread_until_it_runs() {
    // The simulated thread is a real OS thread blocked on a channel. While the kernel
    // says it has not run since its stack was read, that stack is taken again without
    // reading (so a change to the simulated memory stays unseen: only a running thread
    // changes its own stack); once it has run, it is read again.
    let (tid, wake_tx, sleeper) = blocked_thread();
    let waiting = || {
        let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap_or_default();
        stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('S'))
    };
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !waiting() && std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let sim = Sim::new();
    let l = sim.l.clone();
    sim.mem.with(|r| {
        r.u32(TSTATE + l.tstate.native_thread_id.unwrap(), tid as u32);
        stack(r, &l, CFRAME, 0, &[0, 1, 2, 3]);
    });
    let mut s = sim.sampler();
    let stats = Stats::default();
    // the first read sees it asleep (its state letter), the second is read after that
    for _ in 0..2 {
        let (_, b) = tick(&mut s, &stats);
        assert_eq!(stacks(&b), vec![(TSTATE, Some(vec![0, 1, 2, 3]))]);
    }
    assert_eq!(stats.asleep.load(Ordering::Relaxed), 0);
    sim.mem.with(|r| stack(r, &l, CFRAME, 0, &[0, 1, 5]));
    let (_, b) = tick(&mut s, &stats);
    // not read: it has not run; the consumer holds that stack already
    assert_eq!(stacks(&b), vec![(TSTATE, None)]);
    assert!(b.threads[0].same_as_last && b.threads[0].settled);
    assert_eq!(stats.asleep.load(Ordering::Relaxed), 1);
    // A batch the consumer never got may have held its last stack: after a dropped
    // batch, the next one that gets through carries every stack.
    let (full_tx, full_rx) = crossbeam_channel::bounded(1);
    full_tx.send(Message::Codes(Vec::new())).unwrap();
    assert!(s.tick(&full_tx, &stats).unwrap());
    assert_eq!(stats.dropped.load(Ordering::Relaxed), 1);
    drop(full_rx);
    let (_, b) = tick(&mut s, &stats);
    assert_eq!(stacks(&b), vec![(TSTATE, Some(vec![0, 1, 2, 3]))], "not read, but sent whole");
    assert!(!b.threads[0].same_as_last);
    let (_, b) = tick(&mut s, &stats);
    assert_eq!(stacks(&b), vec![(TSTATE, None)]);
    assert_eq!(stats.asleep.load(Ordering::Relaxed), 4);
    wake_tx.send(()).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20)); // (it runs, and waits again)
    while !waiting() && std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let (_, b) = tick(&mut s, &stats);
    assert_eq!(stacks(&b), vec![(TSTATE, Some(vec![0, 1, 5]))], "read again: it ran");
    assert_eq!(stats.asleep.load(Ordering::Relaxed), 4);
    drop(wake_tx);
    sleeper.join().unwrap();
}

#[test]
fn a_thread_the_gil_proves_asleep_is_not_read_at_all_until_the_gil_moves() {
    // As above, a real OS thread blocked on a channel; the GIL is held by another thread
    // and its switch count stands. Once the sleep is proved, not even the thread's state
    // is read (src/activity.rs, `replays`); when the GIL has moved by the time of the
    // tick's read, everything is read again, the state too.
    let (tid, wake_tx, sleeper) = blocked_thread();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let sim = Sim::new();
    let l = sim.l.clone();
    let holder = INTERP + l.interp.gil_holder.unwrap();
    let switches = holder - l.gil.last_holder + l.gil.switch_number.unwrap();
    sim.mem.with(|r| {
        r.u32(TSTATE + l.tstate.native_thread_id.unwrap(), tid as u32);
        stack(r, &l, CFRAME, 0, &[0, 1, 2, 3]);
        r.u64(holder, 0x99_000);
        r.u32(INTERP + l.interp.gil_locked.unwrap(), 1);
        r.u64(switches, 5);
    });
    let mut s = sim.sampler();
    let stats = Stats::default();
    // (a tick late by SLEEPER_CHECK_NS on a loaded machine reads for real: try a few)
    let mut unread = 0;
    for _ in 0..50 {
        sim.mem.when_reading(TSTATE, |_| {});
        let (_, b) = tick(&mut s, &stats);
        assert_eq!(stacks(&b).len(), 1);
        if sim.mem.pending_changes() == 1 {
            unread += 1;
            assert_eq!(stacks(&b), vec![(TSTATE, None)], "its last stack stands");
            if unread == 3 {
                break;
            }
        }
        sim.mem.forget_changes();
    }
    assert_eq!(unread, 3, "the state of a thread the GIL proves asleep is not read");
    assert!(stats.asleep_by_gil.load(Ordering::Relaxed) >= 3);
    // The GIL changed hands before the tick's read: the state is read after all.
    sim.mem.forget_changes();
    sim.mem.with(|r| r.u64(switches, 6));
    sim.mem.when_reading(TSTATE, |_| {});
    let (_, b) = tick(&mut s, &stats);
    assert_eq!(sim.mem.pending_changes(), 0, "read again once the GIL moved");
    assert_eq!(stacks(&b), vec![(TSTATE, None)], "still asleep: the kernel says so");
    drop(wake_tx);
    sleeper.join().unwrap();
}

/// Where the generator objects of the generator tests live: a frame is inside its
/// generator object, `gen.iframe` bytes in.
fn gen_object(l: &Layout, frame: u64) -> u64 {
    frame - l.gen.iframe.unwrap()
}

/// Writes a generator's frame at `at` running code `n`, resumed by `previous` (0:
/// suspended), and gives a frame a saved value stack whose top slots are `top`.
fn gen_frame(r: &mut Regions, l: &Layout, at: u64, n: u64, previous: u64) {
    frame(r, l, at, n, previous, 6);
    r.u8(at + l.frame.owner.unwrap(), l.model.owner_generator.unwrap());
}

/// A generator yields: its frame links to nothing, its state says suspended.
fn suspend(r: &mut Regions, l: &Layout, at: u64) {
    r.u64(at + l.frame.previous, 0);
    let executing = l.model.frame_executing.unwrap() as i8;
    r.u8(at - l.frame_state_before().unwrap(), (executing - 1) as u8);
}

fn saved_stack(r: &mut Regions, l: &Layout, frame: u64, top: &[u64]) {
    let slots = frame + l.frame.localsplus.unwrap(); // (the codes here have no locals)
    for (i, &v) in top.iter().enumerate() {
        r.u64(slots + 8 * i as u64, v);
    }
    r.u32(frame + l.frame.stacktop.unwrap(), top.len() as u32);
}

/// A thread in f0 -> f1 -> (generator frames `gens`, outermost first, each resumed by
/// the one before) -> f8 at the top, after a tick that saw an older generator there:
/// the generators are at addresses the plan does not copy. Each generator has yielded
/// (its frame links to nothing) by the time it is read directly, after the copy, as
/// happens when a generator runs for less than a read takes.
fn generators_read_too_late(gens: &[(u64, u64)], resumer_top: Vec<u64>) -> (Sim, Layout, Sampler<Shared>, Stats) {
    let (sim, l, mut s, stats) = warm(&[0, 1, 2]);
    let _ = tick(&mut s, &stats);
    let l2 = l.clone();
    let gens: Vec<(u64, u64)> = gens.to_vec();
    sim.mem.with(|r| {
        let mut previous = slot(1);
        for &(at, n) in &gens {
            gen_frame(r, &l2, at, n, previous);
            previous = at;
        }
        frame(r, &l2, slot(2), 8, previous, 4);
        saved_stack(r, &l2, slot(1), &resumer_top);
        r.u64(CFRAME + l2.tstate.cframe_current_frame.unwrap(), slot(2));
    });
    for &(at, _) in &gens {
        let l3 = l.clone();
        sim.mem.when_reading_over(at - FRAME_LEAD, move |r| suspend(r, &l3, at));
    }
    (sim, l, s, stats)
}

#[test]
fn a_generator_read_after_it_yielded_is_placed_by_its_callers_saved_stack() {
    // f1 resumed the generator (FOR_ITER_GEN / SEND_GEN save f1's stack pointer with the
    // generator object on top), so the chain under the generator is f1's.
    let g = HEAP + 0x400;
    let l = layout();
    let (_sim, _l, mut s, stats) = generators_read_too_late(&[(g, 7)], vec![gen_object(&l, g)]);
    let (_, b) = tick(&mut s, &stats);
    assert_eq!(stacks(&b), vec![(TSTATE, Some(vec![0, 1, 7, 8]))]);
    assert_eq!(lost(&stats), 0);
    // the generator's instruction was read after it moved on: not shown as known
    let frames = b.stack(&b.threads[0]).unwrap();
    assert_eq!(frames[2].offset, stack::UNKNOWN_OFFSET);
    assert_eq!(frames[1].offset, 4);
    assert_eq!(stats.inferred.load(Ordering::Relaxed), 1);
}

#[test]
fn a_generator_whose_resumer_is_not_proven_stays_a_loss() {
    // f1's saved stack holds something else on top (here: f1's own code object): the
    // generator may have been resumed by another generator the copy does not show.
    let g = HEAP + 0x400;
    let (_sim, _l, mut s, stats) = generators_read_too_late(&[(g, 7)], vec![code(3), code(4)]);
    let (_, b) = tick(&mut s, &stats);
    assert_eq!(stacks(&b), vec![(TSTATE, None)]);
    assert_eq!(stats.lost[Loss::Truncated as usize].load(Ordering::Relaxed), 1);
}

#[test]
fn delegating_generators_are_followed_to_the_one_that_runs() {
    // f1 resumed generator 5, which delegates (`yield from`) to generator 7: each keeps
    // the generator it resumes on top of its saved stack, even while suspended.
    let (outer, inner) = (HEAP + 0x400, HEAP + 0x800);
    let l = layout();
    let (sim, l2, mut s, stats) = generators_read_too_late(&[(outer, 5), (inner, 7)], vec![gen_object(&l, outer)]);
    sim.mem.with(|r| saved_stack(r, &l2, outer, &[gen_object(&l2, inner), 0x1230]));
    let (_, b) = tick(&mut s, &stats);
    assert_eq!(stacks(&b), vec![(TSTATE, Some(vec![0, 1, 5, 7, 8]))]);
    assert_eq!(lost(&stats), 0);
}

#[test]
fn a_generator_resumed_through_c_stays_a_loss() {
    // next(g) / list(g): f1 is in a call into C, and 3.12 saves no stack pointer for it
    // (-1). Its slots above the real top hold earlier calls' arguments: a generator
    // found there may lie further down the chain than the one f1 resumed.
    let g = HEAP + 0x800;
    let (sim, l2, mut s, stats) = generators_read_too_late(&[(g, 7)], vec![]);
    sim.mem.with(|r| {
        saved_stack(r, &l2, slot(1), &[gen_object(&l2, g)]);
        r.u32(slot(1) + l2.frame.stacktop.unwrap(), u32::MAX);
    });
    let (_, b) = tick(&mut s, &stats);
    assert_eq!(stacks(&b), vec![(TSTATE, None)]);
    assert_eq!(stats.lost[Loss::Truncated as usize].load(Ordering::Relaxed), 1);
}

#[test]
fn a_generator_also_held_under_its_resumer_is_shown_under_it() {
    // f1's stack holds the running generator under the wrapper that runs it (`for x in
    // wrapper(g)` with g still on the stack): both paths arrive, and the one that skips
    // the wrapper is part of the other, which is shown.
    let (wrapper, g) = (HEAP + 0x400, HEAP + 0x800);
    let (sim, l2, mut s, stats) = generators_read_too_late(&[(wrapper, 5), (g, 7)], vec![]);
    sim.mem.with(|r| {
        saved_stack(r, &l2, slot(1), &[gen_object(&l2, g), gen_object(&l2, wrapper)]);
        saved_stack(r, &l2, wrapper, &[gen_object(&l2, g)]);
    });
    let (_, b) = tick(&mut s, &stats);
    assert_eq!(stacks(&b), vec![(TSTATE, Some(vec![0, 1, 5, 7, 8]))]);
    assert_eq!(lost(&stats), 0);
}

#[test]
fn two_generators_both_leading_to_the_running_one_is_not_believed() {
    // f1's two top slots hold two generators that each claim the running one: which of
    // them runs it is unknown, so the sample is lost rather than guessed.
    let (a, b_gen, g) = (HEAP + 0x400, HEAP + 0x800, HEAP + 0xc00);
    let (sim, l2, mut s, stats) = generators_read_too_late(&[(a, 5), (g, 7)], vec![]);
    sim.mem.with(|r| {
        gen_frame(r, &l2, b_gen, 6, 0);
        suspend(r, &l2, b_gen);
        saved_stack(r, &l2, slot(1), &[gen_object(&l2, a), gen_object(&l2, b_gen)]);
        saved_stack(r, &l2, a, &[gen_object(&l2, g)]);
        saved_stack(r, &l2, b_gen, &[gen_object(&l2, g)]);
    });
    let (_, b) = tick(&mut s, &stats);
    assert_eq!(stacks(&b), vec![(TSTATE, None)]);
    assert_eq!(stats.lost[Loss::Truncated as usize].load(Ordering::Relaxed), 1);
}

#[test]
fn a_generator_on_top_of_the_stack_is_placed_over_the_top_data_stack_frame() {
    // The running generator is the innermost frame: its caller is the frame that ends
    // where the thread state says the data stack ends.
    let (sim, l, mut s, stats) = warm(&[0, 1, 2]);
    let g = HEAP + 0x400;
    let l2 = l.clone();
    sim.mem.with(|r| {
        gen_frame(r, &l2, g, 7, slot(1));
        saved_stack(r, &l2, slot(1), &[gen_object(&l2, g)]);
        r.u64(TSTATE + l2.tstate.datastack_top.unwrap(), slot(2));
        r.u64(CFRAME + l2.tstate.cframe_current_frame.unwrap(), g);
    });
    let l3 = l.clone();
    sim.mem.when_reading(g - FRAME_LEAD, move |r| suspend(r, &l3, g));
    let (_, b) = tick(&mut s, &stats);
    assert_eq!(stacks(&b), vec![(TSTATE, Some(vec![0, 1, 7]))]);
    assert_eq!(lost(&stats), 0);
}

#[test]
fn a_copied_generator_frame_that_does_not_run_is_torn() {
    // A generator freed and another made at its address links to a caller too, but its
    // state is not "running": a copy showing it under a running callee mixes moments.
    let sim = Sim::new();
    let l = sim.l.clone();
    let g = HEAP + 0x400;
    sim.mem.with(|r| {
        stack(r, &l, CFRAME, 0, &[0, 1]);
        gen_frame(r, &l, g, 7, slot(1));
        frame(r, &l, slot(2), 8, g, 4);
        r.u64(CFRAME + l.tstate.cframe_current_frame.unwrap(), slot(2));
    });
    let mut s = sim.sampler();
    let stats = Stats::default();
    let (_, b) = tick(&mut s, &stats);
    assert_eq!(stacks(&b), vec![(TSTATE, Some(vec![0, 1, 7, 8]))]);
    let state = g - l.frame_state_before().unwrap();
    let created = l.model.frame_created.unwrap() as i8 as u8;
    sim.mem.with(|r| r.u8(state, created));
    let (_, b) = tick(&mut s, &stats);
    assert_eq!(stacks(&b), vec![(TSTATE, None)]);
    assert_eq!(stats.lost[Loss::Torn as usize].load(Ordering::Relaxed), 1);
    sim.mem.with(|r| r.u8(state, l.model.frame_executing.unwrap() as i8 as u8));
    let (_, b) = tick(&mut s, &stats);
    assert_eq!(stacks(&b), vec![(TSTATE, Some(vec![0, 1, 7, 8]))]);
}

#[test]
fn a_deep_stack_outside_the_copy_is_read_whole() {
    // More frames outside the data-stack window than a plan names (an older chunk's,
    // say), read one by one after the copy when the plan lacks them: every link is
    // checked again afterwards (stack::still_linked, in batches, however many there
    // are), and the stack is read whole on every tick.
    let sim = Sim::new();
    let l = sim.l.clone();
    const DEEP: u64 = 0x100_0000;
    let n = MAX_PLANNED_FRAMES + 100;
    let codes: Vec<u64> = (0..n as u64).map(|i| i % 16).collect();
    sim.mem.with(|r| {
        r.map(DEEP, n * SLOT as usize + 0x100);
        stack(r, &l, CFRAME, 0, &[]);
        let mut prev = ENTRY;
        for (i, &c) in codes.iter().enumerate() {
            let at = DEEP + 0x40 + i as u64 * SLOT;
            frame(r, &l, at, c, prev, 2);
            prev = at;
        }
        r.u64(CFRAME + l.tstate.cframe_current_frame.unwrap(), prev);
    });
    let mut s = sim.sampler();
    let stats = Stats::default();
    for _ in 0..3 {
        let (_, b) = tick(&mut s, &stats);
        assert_eq!(stacks(&b), vec![(TSTATE, Some(codes.clone()))]);
    }
    assert_eq!(lost(&stats), 0);
}

#[test]
fn new_generator_frames_next_to_each_other_are_read_in_one_block() {
    // A walk meets a chain of generators started since the plan was made (black's tree
    // walks: a new generator per node, each from the same allocator pool as the last):
    // the first one read from the process brings the block around it, and the others
    // in that block are taken from it, not read one system call each.
    // (every code object met once, so the tick reads none)
    let (sim, l, mut s, stats) = warm(&[0, 1, 3, 4, 5, 6, 7, 8, 12]);
    sim.mem.with(|r| stack(r, &l, CFRAME, 0, &[0, 1, 2]));
    let _ = tick(&mut s, &stats);
    let gens: Vec<u64> = (0..6).map(|i| HEAP + 0x80 + i * 0x200).collect();
    sim.mem.with(|r| {
        let mut previous = slot(1);
        for (i, &at) in gens.iter().enumerate() {
            gen_frame(r, &l, at, 3 + i as u64, previous);
            previous = at;
        }
        frame(r, &l, slot(2), 12, previous, 4);
        r.u64(CFRAME + l.tstate.cframe_current_frame.unwrap(), slot(2));
    });
    let before = *sim.mem.reads.borrow();
    let (_, b) = tick(&mut s, &stats);
    let reads = *sim.mem.reads.borrow() - before;
    assert_eq!(stacks(&b), vec![(TSTATE, Some(vec![0, 1, 3, 4, 5, 6, 7, 8, 12]))]);
    assert_eq!(lost(&stats), 0);
    // (6: the copy, the new top's check, the block, the links checked again, the code
    // checks; 11 when each generator frame was read on its own)
    assert!(reads <= 6, "{reads} reads of the process for one tick");
}

/// 3.12+ C-stack entry frames run the interpreter's trampoline code. A C-stack slot that
/// held one and was reused by other C code can keep that code pointer and lose the
/// owner byte: a chain through it is torn, never a Python frame named
/// `<interpreter trampoline>` (pyenv 3.12.1 showed it in tests/record_generators.rs).
#[test]
fn a_trampoline_frame_not_owned_by_the_c_stack_is_torn() {
    let (sim, l, mut s, stats) = warm(&[1, 2]);
    let entry2 = CFRAME + 0x1000;
    let cstack = l.model.owner_first_non_python.unwrap();
    sim.mem.with(|r| {
        unicode(r, &l, STRINGS + 15 * 0x100, "<interpreter trampoline>");
        // f2 now runs in an evaluation entered from f1 through C
        frame(r, &l, entry2, 15, slot(0), 0);
        r.u8(entry2 + l.frame.owner.unwrap(), cstack);
        r.u64(slot(1) + l.frame.previous, entry2);
    });
    let (_, b) = tick(&mut s, &stats);
    assert_eq!(stacks(&b)[0].1, Some(vec![1, 2]), "an entry frame is not shown");
    assert_eq!(lost(&stats), 0);
    sim.mem.with(|r| r.u8(entry2 + l.frame.owner.unwrap(), 0));
    s.pf.clear();
    let (_, b) = tick(&mut s, &stats);
    assert_eq!(stacks(&b)[0].1, None, "a stale entry frame's slot is not a Python frame");
    assert!(stats.lost[Loss::Torn as usize].load(Ordering::Relaxed) >= 1);
}

#[test]
fn no_top_frame_while_the_data_stack_holds_frames_is_not_believed() {
    // The top pointer reads NULL through a live CFrame while the data stack still holds
    // the thread's frames (3.12 under pylint, up to 300 us at a time): not an empty
    // stack, which would end every call of the thread and begin them all again.
    let (sim, l, mut s, stats) = warm(&[0, 1, 2]);
    let top = TSTATE + l.tstate.datastack_top.unwrap();
    let current = CFRAME + l.tstate.cframe_current_frame.unwrap();
    sim.mem.with(|r| {
        r.u64(top, slot(3));
        r.u64(current, 0);
    });
    let (msgs, b) = tick(&mut s, &stats);
    assert_eq!(stacks(&b), vec![(TSTATE, None)]);
    assert_eq!(stats.lost[Loss::Truncated as usize].load(Ordering::Relaxed), 1);
    assert!(ended(&msgs).is_empty());
    // Its stack back: the same calls.
    sim.mem.with(|r| r.u64(current, slot(2)));
    let (_, b) = tick(&mut s, &stats);
    assert_eq!(stacks(&b), vec![(TSTATE, Some(vec![0, 1, 2]))]);
    // Every frame popped (the data stack back at its first free slot): the thread runs
    // no Python code, and that is what its sample says.
    sim.mem.with(|r| {
        r.u64(top, slot(0));
        r.u64(current, 0);
    });
    let (_, b) = tick(&mut s, &stats);
    assert_eq!(stacks(&b), vec![(TSTATE, Some(vec![]))]);
    assert_eq!(lost(&stats), 1);
}

/// Gives code `n` real bytecode (3.12 opcode numbers, one (opcode, oparg) pair per code
/// unit, no locals, no exception table), so that its proofs are read and analysed.
fn bytecode(r: &mut Regions, l: &Layout, n: u64, units: &[(u8, u8)]) {
    let c = code(n);
    let empty = STRINGS + 0x3800; // the line table: a bytes object of size 0
    r.u64(c + l.code.ob_size.unwrap(), units.len() as u64);
    for (i, &(op, arg)) in units.iter().enumerate() {
        r.write(c + l.code.code_adaptive.unwrap() + 2 * i as u64, &[op, arg]);
    }
    r.u64(c + l.code.localspluskinds.unwrap(), empty);
    r.u64(c + l.code.exceptiontable.unwrap(), empty);
}

#[test]
fn an_innermost_frame_at_its_return_or_resume_is_not_shown() {
    // f12: RESUME, NOP, RETURN_CONST. At its return it has finished its code; a frame
    // that stays there was read after it returned (the top pointer named its slot at
    // both ends of the read, a new call into the slot not written yet), and showing it
    // under a caller that moved on made a new call of the callee that had ended. At its
    // RESUME it waits to start, which tracers count as part of the call only where the
    // version says so (3.12's instrumented RESUME reports the call before the wait).
    const RESUME: u8 = 151;
    const NOP: u8 = 9;
    const RETURN_CONST: u8 = 121;
    for resume_in_call in [false, true] {
        let mut sim = Sim::new();
        sim.l.model.resume_wait_in_call = resume_in_call;
        let l = sim.l.clone();
        sim.mem.with(|r| stack(r, &l, CFRAME, 0, &[0, 1, 2]));
        let mut s = sim.sampler();
        let stats = Stats::default();
        tick(&mut s, &stats);
        sim.mem.with(|r| bytecode(r, &l, 12, &[(RESUME, 0), (NOP, 0), (RETURN_CONST, 0)]));
        let at_resume = if resume_in_call { vec![0, 1, 12] } else { vec![0, 1] };
        for (offset, shown) in [(2, vec![0, 1, 12]), (4, vec![0, 1]), (0, at_resume), (2, vec![0, 1, 12])] {
            sim.mem.with(|r| frame(r, &l, slot(2), 12, slot(1), offset));
            let (_, b) = tick(&mut s, &stats);
            assert_eq!(
                stacks(&b),
                vec![(TSTATE, Some(shown))],
                "f12 at offset {offset}, resume_in_call {resume_in_call}"
            );
        }
        assert_eq!(lost(&stats), 0);
    }
}

#[test]
fn on_3_11_a_frame_at_its_first_resume_with_a_frame_object_is_shown() {
    // 3.11 checks the eval breaker at a RESUME, then reports the call to a tracer (which
    // makes the frame's object), then RESUME checks again: a wait at the second check is
    // inside the tracer's call. The frame object tells the two apart at the first RESUME;
    // a later RESUME (a generator resumed) proves nothing by it.
    const RESUME: u8 = 151;
    const NOP: u8 = 9;
    const RETURN_CONST: u8 = 121;
    let mut sim = Sim::new();
    sim.l.model.resume_wait_in_call = false;
    sim.l.model.resume_call_between_checks = true;
    // (the simulated header's f_locals word, unused by the sampler)
    sim.l.frame.frame_object = Some(40);
    let l = sim.l.clone();
    sim.mem.with(|r| stack(r, &l, CFRAME, 0, &[0, 1, 2]));
    let mut s = sim.sampler();
    let stats = Stats::default();
    tick(&mut s, &stats);
    sim.mem.with(|r| bytecode(r, &l, 12, &[(RESUME, 0), (NOP, 0), (RESUME, 1), (RETURN_CONST, 0)]));
    for (offset, object, shown) in [
        (2, 0, vec![0, 1, 12]),
        (0, 0, vec![0, 1]),
        (0, 0x7f00_0000_1000, vec![0, 1, 12]),
        (4, 0x7f00_0000_1000, vec![0, 1]),
        (2, 0x7f00_0000_1000, vec![0, 1, 12]),
    ] {
        sim.mem.with(|r| {
            frame(r, &l, slot(2), 12, slot(1), offset);
            r.u64(slot(2) + 40, object);
        });
        let (_, b) = tick(&mut s, &stats);
        assert_eq!(stacks(&b), vec![(TSTATE, Some(shown))], "f12 at offset {offset}, frame object {object:#x}");
    }
    assert_eq!(lost(&stats), 0);
}

#[test]
fn a_new_thread_is_read_whole_in_the_first_copy() {
    // Its state is read directly when it is first listed, so the tick's one copy already
    // holds its CFrame and data stack: no round of re-reads for every new thread.
    let sim = Sim::new();
    let l = sim.l.clone();
    sim.mem.with(|r| {
        stack(r, &l, CFRAME, 0, &[0, 1, 2]);
        r.u64(TSTATE + l.tstate.datastack_top.unwrap(), slot(3));
    });
    let mut s = sim.sampler();
    let stats = Stats::default();
    let (_, b) = tick(&mut s, &stats);
    assert_eq!(stacks(&b), vec![(TSTATE, Some(vec![0, 1, 2]))]);
    assert_eq!(stats.retried.load(Ordering::Relaxed), 0, "kept from the first copy");
    assert_eq!(lost(&stats), 0);
}

#[test]
fn a_code_object_made_again_where_one_was_freed_is_read_again() {
    // Code compiled from strings shares its name and file objects (`<module>`,
    // `<string>`), and the allocator hands a new one the address an old one just freed.
    let (sim, l, mut s, stats) = warm(&[0, 1]);
    let (_, b) = tick(&mut s, &stats);
    let old = b.stack(&b.threads[0]).unwrap()[1].code_id;
    sim.mem.with(|r| stack(r, &l, CFRAME, 0, &[0]));
    tick(&mut s, &stats);
    sim.mem.with(|r| {
        r.u32(code(1) + l.code.firstlineno, 500);
        stack(r, &l, CFRAME, 0, &[0, 1]);
    });
    let (_, b) = tick(&mut s, &stats);
    assert_ne!(b.stack(&b.threads[0]).unwrap()[1].code_id, old, "the freed code's entry was kept");
    assert_eq!(s.codes.cached(code(1)).map(|c| c.first_line), Some(500));
    assert_eq!(lost(&stats), 0);
}

#[test]
fn primed_the_first_tick_reads_no_code_object_of_its_own() {
    // Cold, the first tick's walks read each code object as they meet it (4-6 ms on a
    // flask worker pool), and a thread read again after that round is stamped as much
    // later than the others. `prime` reads them before the capture's clock starts.
    for primed in [false, true] {
        let sim = Sim::new();
        let l = sim.l.clone();
        sim.add_thread(TSTATE2, CFRAME2, 0x2222, my_tid() + 1, TSTATE);
        sim.mem.with(|r| {
            stack(r, &l, CFRAME, 0, &[0, 1, 2, 3]);
            stack(r, &l, CFRAME2, 20, &[4, 5, 6]);
        });
        let mut s = sim.sampler();
        if primed {
            s.prime();
        }
        // (a code object read afresh reads its name)
        for n in 0..7 {
            sim.mem.when_reading(STRINGS + n * 0x100, |_| {});
        }
        let stats = Stats::default();
        let (_, b) = tick(&mut s, &stats);
        assert_eq!(stacks(&b), vec![(TSTATE, Some(vec![0, 1, 2, 3])), (TSTATE2, Some(vec![4, 5, 6]))]);
        let names_read = 7 - sim.mem.pending_changes();
        if primed {
            assert_eq!(names_read, 0, "the first tick read code objects prime had read");
        } else {
            assert_eq!(names_read, 7, "cold, the first tick reads every code object");
        }
    }
}
