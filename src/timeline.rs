//! Stack deltas -> entry/exit slices, per thread (docs/ARCHITECTURE.md, "Timeline semantics").
//!
//! Two consecutive samples share the frames that are the same call: same code object,
//! same frame address, same call site in the parent. Frames that left are closed and
//! frames that appeared are opened at the midpoint between the two samples (or of a read
//! in between that kept no stack but found them gone, or not there yet: `StackEnd`).
//! Slices nest strictly by construction: a thread's open slices are a stack.

use crate::activity::{Activity, Runs};
use crate::addr_map::AddrMap;
use crate::output::Sink;
use crate::python::code::CodeInfo;
use crate::python::stack::UNKNOWN_OFFSET;
use crate::sampler::{Message, StackEnd, StackFrame, ThreadSample};
use std::collections::BTreeSet;
use std::io;
use std::sync::Arc;

struct Track {
    tid: i32,
    /// the last sample's stack, root first; open slice i is frames[i]
    frames: Vec<StackFrame>,
    starts: Vec<u64>,
    last_ns: u64,
    /// frames[opened..] were first seen in the last sample
    opened: usize,
    /// the last sample was read at one moment (ThreadSample::settled)
    settled: bool,
    /// the kernel's run count at the last sample that found the thread asleep (off CPU,
    /// without the GIL) in the frames it shows, and what it slept in (src/activity.rs,
    /// Runs)
    runs: Option<(u64, u64)>,
    /// what reads since the last sample that kept no stack found had ended (data-stack
    /// ends, generators not running)
    ends: Vec<StackEnd>,
}

impl Track {
    /// The first read since the last sample that found `frame` gone: its call had ended
    /// by then.
    fn gone_by(&self, frame: u64) -> Option<u64> {
        self.ends.iter().filter(|e| e.excludes(frame)).map(|e| e.to_ns).min()
    }

    /// The last such read: a frame there now began after it.
    fn absent_since(&self, frame: u64) -> Option<u64> {
        self.ends.iter().filter(|e| e.excludes(frame)).map(|e| e.from_ns).max()
    }

    fn note_ends(&mut self, t: &ThreadSample) {
        self.ends.extend(t.ends.iter().filter(|e| e.is_set()));
    }
}

/// Code objects by id, as the sampler announced them.
#[derive(Default)]
pub struct CodeTable(Vec<Option<Arc<CodeInfo>>>);

impl CodeTable {
    pub fn get(&self, id: u32) -> Option<&Arc<CodeInfo>> {
        self.0.get(id as usize).and_then(|c| c.as_ref())
    }
    fn insert(&mut self, c: Arc<CodeInfo>) {
        let i = c.id as usize;
        if self.0.len() <= i {
            self.0.resize(i + 1, None);
        }
        self.0[i] = Some(c);
    }
}

#[derive(Default)]
pub struct Timeline {
    codes: CodeTable,
    tracks: AddrMap<u64, Track>,
    pub slices: u64,
    pub samples: u64,
    pub first_ns: Option<u64>,
    pub last_ns: u64,
    /// the latest time any thread was sampled at
    latest_sample_ns: Option<u64>,
    tids: BTreeSet<i32>,
    named: BTreeSet<i32>,
    pub told_apart: ToldApart,
    /// scratch: when each slice `close_from` closes ends, outermost first
    ends_at: Vec<u64>,
}

impl Timeline {
    pub fn threads_seen(&self) -> usize {
        self.tids.len()
    }

    pub fn handle(&mut self, msg: &Message, sink: &mut dyn Sink) -> io::Result<()> {
        match msg {
            Message::Codes(codes) => {
                for c in codes {
                    sink.code(c)?;
                    self.codes.insert(c.clone());
                }
            }
            Message::ThreadName { tid, name, .. } => {
                if self.named.insert(*tid) {
                    sink.thread(*tid, name)?;
                }
            }
            Message::ThreadEnded { key, time_ns } => {
                // Ends halfway between its last sample and the read that found it gone.
                if let Some(mut track) = self.tracks.remove(key) {
                    let at = midpoint(track.last_ns, *time_ns);
                    self.close_from(&mut track, 0, at, sink)?;
                }
            }
            Message::Sample(batch) => {
                // A thread first seen now was not listed at the previous tick's read,
                // which came before every sample taken so far; and it was started by a
                // call of another thread, which opens no later than halfway to this
                // batch's sample of that thread.
                let calls_opened_by = batch
                    .threads
                    .iter()
                    .filter_map(|t| self.tracks.get(&t.key).map(|k| midpoint(k.last_ns, t.time_ns)))
                    .max();
                let previous_tick = self.latest_sample_ns;
                self.samples += 1;
                self.first_ns.get_or_insert(batch.time_ns);
                self.last_ns = batch.time_ns;
                // A thread missing from a batch, or without a stack in it, keeps its last
                // view: threads end only by ThreadEnded.
                for (i, t) in batch.threads.iter().enumerate() {
                    if t.same_as_last {
                        self.same_as_last(t, batch.activity_of(i), sink)?;
                        continue;
                    }
                    let Some(frames) = batch.stack(t) else {
                        if let Some(track) = self.tracks.get_mut(&t.key) {
                            track.note_ends(t);
                        }
                        continue;
                    };
                    self.tids.insert(t.tid);
                    sink.activity(t.tid, t.time_ns, batch.activity_of(i))?;
                    sink.sample(t.tid, frames, &self.codes)?;
                    let (mut track, at) = match self.tracks.remove(&t.key) {
                        Some(track) => {
                            let at = midpoint(track.last_ns, t.time_ns);
                            (track, at)
                        }
                        // First sight. A thread listed from the first tick on: nothing is
                        // known before this moment. One that appeared later began after
                        // the previous tick's read, which did not list it: its frames
                        // open halfway from there (but not before a call this batch
                        // opens on another thread: the one that may have started it), as
                        // a thread's end is put halfway to the read that found it gone.
                        // Opening them at this read made every new thread's calls start
                        // late: http.server at 10 kHz, a median 1.5 intervals.
                        None => (
                            Track {
                                tid: t.tid,
                                frames: Vec::new(),
                                starts: Vec::new(),
                                last_ns: t.time_ns,
                                opened: 0,
                                settled: false,
                                runs: None,
                                ends: Vec::new(),
                            },
                            previous_tick.map_or(t.time_ns, |p| {
                                midpoint(p.min(t.time_ns), t.time_ns).max(calls_opened_by.unwrap_or(0)).min(t.time_ns)
                            }),
                        ),
                    };
                    // (callees the caller proof may split: all in a settled sample)
                    let trusted = if track.settled { track.frames.len() } else { track.opened };
                    let mut keep = common_calls(&track.frames, frames, trusted, &self.codes, &mut self.told_apart);
                    track.note_ends(t);
                    // A call whose frame a read in between found gone had ended: one
                    // there now is another.
                    if let Some(d) = track.frames[..keep].iter().position(|f| track.gone_by(f.frame).is_some()) {
                        self.told_apart.by_stack_end += 1;
                        keep = d;
                    }
                    let a = batch.activity_of(i);
                    let asleep = off_and_without_gil(a);
                    let same = keep == frames.len() && keep == track.frames.len();
                    if let (Runs::Asleep(now, sleep), Some((before, slept)), true) =
                        (t.runs, track.runs, same && asleep)
                    {
                        // (the walk down the stack only for a thread that woke)
                        if now != before && sleep == slept {
                            let stay = woken_calls(frames, &self.codes);
                            if stay < keep {
                                self.told_apart.by_wake += 1;
                                keep = stay;
                            }
                        }
                    }
                    track.runs = runs_to_compare(t.runs, asleep, same, track.runs);
                    self.close_from(&mut track, keep, at, sink)?;
                    // A frame a read in between found absent began after that read (its
                    // callees with it).
                    let mut start = at;
                    for f in &frames[keep..] {
                        if let Some(since) = track.absent_since(f.frame) {
                            start = start.max(midpoint(since.min(t.time_ns), t.time_ns));
                        }
                        if let Some(code) = self.code(f.code_id) {
                            sink.open(track.tid, &code, start)?;
                        }
                        track.starts.push(start);
                    }
                    track.ends.clear();
                    track.frames.clear();
                    track.frames.extend_from_slice(frames);
                    track.last_ns = t.time_ns;
                    track.opened = keep;
                    track.settled = t.settled;
                    self.tracks.insert(t.key, track);
                }
                let latest = batch.threads.iter().map(|t| t.time_ns).max();
                self.latest_sample_ns = self.latest_sample_ns.max(latest);
            }
        }
        Ok(())
    }

    /// A thread that has not run since its last sample: the same calls, still open. (Its
    /// switch-in count cannot have moved, so the wake proof has nothing to split.)
    fn same_as_last(&mut self, t: &ThreadSample, a: Activity, sink: &mut dyn Sink) -> io::Result<()> {
        // (a track the sampler thinks we hold and we do not: nothing to show until a read)
        let Some(track) = self.tracks.get_mut(&t.key) else {
            return Ok(());
        };
        sink.activity(t.tid, t.time_ns, a)?;
        sink.sample(t.tid, &track.frames, &self.codes)?;
        track.runs = runs_to_compare(t.runs, off_and_without_gil(a), true, track.runs);
        track.last_ns = t.time_ns;
        track.opened = track.frames.len();
        track.settled = t.settled;
        Ok(())
    }

    /// Closes everything still open at each thread's last sample, and names threads that
    /// never got a name from Python.
    pub fn finish(&mut self, sink: &mut dyn Sink, fallback_name: &dyn Fn(i32) -> String) -> io::Result<()> {
        let keys: Vec<u64> = self.tracks.keys().copied().collect();
        for key in keys {
            let mut track = self.tracks.remove(&key).unwrap();
            let at = track.last_ns;
            self.close_from(&mut track, 0, at, sink)?;
        }
        for tid in self.tids.clone() {
            if !self.named.contains(&tid) {
                sink.thread(tid, &fallback_name(tid))?;
                self.named.insert(tid);
            }
        }
        Ok(())
    }

    fn code(&self, id: u32) -> Option<Arc<CodeInfo>> {
        self.codes.get(id).cloned()
    }

    /// Closes open slices from depth `keep` inward, innermost first, at `at`, or halfway
    /// to a read in between that found the frame (or its caller's) gone.
    fn close_from(&mut self, track: &mut Track, keep: usize, at: u64, sink: &mut dyn Sink) -> io::Result<()> {
        self.ends_at.clear();
        let mut end = at;
        for f in track.frames.iter().skip(keep) {
            if let Some(by) = track.gone_by(f.frame) {
                end = end.min(midpoint(track.last_ns, by.max(track.last_ns)));
            }
            self.ends_at.push(end);
        }
        while track.frames.len() > keep {
            let f = track.frames.pop().unwrap();
            let at = self.ends_at.pop().unwrap_or(at);
            let start = track.starts.pop().unwrap_or(at);
            if let Some(code) = self.code(f.code_id) {
                sink.close(track.tid, &code, start, at.max(start))?;
                self.slices += 1;
            }
        }
        Ok(())
    }
}

/// How many frames, from the root, are the same calls after a thread asleep in the same
/// frames at two samples was put on a CPU in between: it woke in the C call its top frame
/// made, which returned. A frame that can come back to its offset (a loop around the
/// call) may have called again; one that cannot returned, and so did every frame above
/// it (python/paths.rs).
fn woken_calls(frames: &[StackFrame], codes: &CodeTable) -> usize {
    let mut k = frames.len();
    while let Some(f) = k.checked_sub(1).map(|i| &frames[i]) {
        let returned =
            f.offset != UNKNOWN_OFFSET && codes.get(f.code_id).is_some_and(|c| !c.proofs.may_come_back(f.offset));
        if !returned {
            break;
        }
        k -= 1;
    }
    k
}

/// A sample that found the thread off CPU and without the GIL: asleep in a call.
fn off_and_without_gil(a: Activity) -> bool {
    a.on_cpu() == Some(false) && a.holds_gil() == Some(false)
}

/// The count (and sleep place) a track's next sample is compared with: that of the last
/// sleep in these frames. Samples in between that found the thread running, or waiting
/// for the GIL, in the same frames keep it.
fn runs_to_compare(runs: Runs, asleep: bool, same: bool, before: Option<(u64, u64)>) -> Option<(u64, u64)> {
    match runs {
        Runs::Unknown => None,
        Runs::Asleep(n, sleep) if asleep => Some((n, sleep)),
        _ if same => before,
        _ => None,
    }
}

fn midpoint(a: u64, b: u64) -> u64 {
    a + (b.saturating_sub(a)) / 2
}

/// Why two samples of one frame were taken for two calls although code, frame address
/// and call site agree (a merge a plain sampler makes): counted per capture.
#[derive(Default, Debug, Clone, Copy)]
pub struct ToldApart {
    /// an argument or cell slot holds another object, or a local became unbound
    pub by_locals: u64,
    /// the instruction offset moved where no path of the function's code leads
    pub by_offset: u64,
    /// the caller's slots changed: it ran, so what it had called returned (or yielded)
    pub by_caller: u64,
    /// a generator's offsets are not on one path between yields (python/paths.rs)
    pub by_yield: u64,
    /// the thread woke in its C call, and the frames above the innermost one that can
    /// loop back to its call site cannot have called again (python/paths.rs)
    pub by_wake: u64,
    /// a read in between (one that kept no stack) found the frame gone: off the data
    /// stack, or a generator not running
    pub by_stack_end: u64,
}

impl std::ops::AddAssign for ToldApart {
    fn add_assign(&mut self, o: ToldApart) {
        self.by_locals += o.by_locals;
        self.by_offset += o.by_offset;
        self.by_caller += o.by_caller;
        self.by_yield += o.by_yield;
        self.by_wake += o.by_wake;
        self.by_stack_end += o.by_stack_end;
    }
}

/// Offsets of one frame in two samples that may be the same instruction (an unknown one
/// may be any).
fn same_offset(a: i64, b: i64) -> bool {
    a == b || a == UNKNOWN_OFFSET || b == UNKNOWN_OFFSET
}

/// How many frames, from the root, are the same calls in both stacks. The caller proof
/// splits only callees `old[..trusted]`: in a sample not read at one moment, those seen
/// before it (its newest frames are trusted when it was).
pub fn common_calls(
    old: &[StackFrame],
    new: &[StackFrame],
    trusted: usize,
    codes: &CodeTable,
    told: &mut ToldApart,
) -> usize {
    let mut n = 0;
    while n < old.len() && n < new.len() {
        let (a, b) = (&old[n], &new[n]);
        let same_site = n == 0 || same_offset(old[n - 1].offset, new[n - 1].offset);
        if a.code_id != b.code_id || a.frame != b.frame || !same_site {
            break;
        }
        // A caller copied a moment before its callee (a copy is not atomic, and the
        // thread may come back to the caller, run it and call again in between) can
        // show slots older than the callee's call: a callee first seen in a sample not
        // read at one moment is not split by its caller's slots (tests/record_timeline.rs
        // caught such a tear).
        if n > 0 && n < trusted && old[n - 1].locals.proves_it_ran(&new[n - 1].locals) {
            told.by_caller += 1;
            break;
        }
        // The frame itself may prove a new call began (python/bytecode.rs): a slot it
        // never writes, or (python/paths.rs) one it does not write on any way from its
        // offset back to it, holds another object at the same offset.
        if a.locals.proves_new_call(&b.locals)
            || (a.offset == b.offset
                && a.offset != UNKNOWN_OFFSET
                && codes.get(b.code_id).is_some_and(|c| a.locals.changed_in(&b.locals, c.proofs.kept_at(a.offset))))
        {
            told.by_locals += 1;
            break;
        }
        // Or its offset moved where no path of its code goes (python/paths.rs; before
        // 3.11, or where the paths cannot tell: down where no jump goes down).
        if b.offset != a.offset
            && a.offset != UNKNOWN_OFFSET
            && b.offset != UNKNOWN_OFFSET
            && codes.get(b.code_id).is_some_and(|c| !c.proofs.one_call(a.offset, b.offset))
        {
            told.by_offset += 1;
            break;
        }
        if yielded_between(old, new, n, codes) {
            told.by_yield += 1;
            break;
        }
        n += 1;
    }
    n
}

/// Whether the frame at depth `n` of both stacks, a generator's, yielded between them:
/// its own offsets are on no path between yields (python/paths.rs), or it delegates at
/// one SEND (yield from, await) to the generator above it, which yielded, and so
/// yielded too. A frame's own slots are copied after its offset, so slots that changed
/// at one offset mean the frame really came back around to it.
fn yielded_between(old: &[StackFrame], new: &[StackFrame], n: usize, codes: &CodeTable) -> bool {
    let mut k = n;
    loop {
        let (a, b) = (&old[k], &new[k]);
        let Some(code) = codes.get(b.code_id) else {
            return false;
        };
        if a.offset == UNKNOWN_OFFSET || b.offset == UNKNOWN_OFFSET {
            return false;
        }
        // A delegate that is another call is another generator made where a finished one
        // lay (its memory reused): the delegator moved on to it, which is no proof that
        // the delegator yielded. Its own slots prove it (pylint's recursive
        // `nodes_of_class`, whose `for child in ...: yield from child.nodes_of_class(...)`
        // was split at its outermost frame 6-7 times per 10 kHz capture), or its offsets,
        // which no path of its code joins, through yields too (black's `Visitor.visit`
        // seen at its second `yield from` and then at its first, whose branches exclude
        // each other: a new visit of the same node; before, 40-300 false splits of its
        // whole chain per 10 kHz capture). The delegate itself is split at its own depth.
        if k > n && (a.locals.proves_new_call(&b.locals) || !code.proofs.one_call(a.offset, b.offset)) {
            return false;
        }
        if !code.proofs.one_resumption(a.offset, b.offset, a.locals.proves_it_ran(&b.locals)) {
            return true;
        }
        let (Some(c), Some(d)) = (old.get(k + 1), new.get(k + 1)) else {
            return false;
        };
        let delegates = a.offset == b.offset && code.proofs.delegating(a.offset);
        if !delegates || c.code_id != d.code_id || c.frame != d.frame {
            return false;
        }
        k += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::CaptureInfo;
    use crate::sampler::{SampleBatch, ThreadSample};

    fn f(code_id: u32, frame: u64, offset: i64) -> StackFrame {
        StackFrame { code_id, code: code_id as u64 * 16, frame, offset, locals: Default::default() }
    }

    /// Records what the timeline emits: (tid, code id, start, end).
    #[derive(Default)]
    struct Recorder {
        slices: Vec<(i32, u32, u64, u64)>,
        threads: Vec<(i32, String)>,
        /// each sample's thread and stack, as code ids root first
        samples: Vec<(i32, Vec<u32>)>,
    }
    impl Sink for Recorder {
        fn sample(&mut self, tid: i32, stack: &[StackFrame], _: &CodeTable) -> io::Result<()> {
            self.samples.push((tid, stack.iter().map(|f| f.code_id).collect()));
            Ok(())
        }
        fn thread(&mut self, tid: i32, name: &str) -> io::Result<()> {
            self.threads.push((tid, name.to_string()));
            Ok(())
        }
        fn close(&mut self, tid: i32, code: &CodeInfo, start_ns: u64, end_ns: u64) -> io::Result<()> {
            self.slices.push((tid, code.id, start_ns, end_ns));
            Ok(())
        }
        fn finish(&mut self, _: &CaptureInfo) -> io::Result<u64> {
            Ok(0)
        }
    }

    fn codes(n: u32) -> Message {
        Message::Codes((0..n).map(|id| Arc::new(CodeInfo::for_test(id, &format!("f{id}")))).collect())
    }

    /// A batch with one stack per (key, tid) thread, all stamped at `t`.
    fn sample(t: u64, threads: &[(u64, i32, &[StackFrame])]) -> Message {
        let mut b = SampleBatch { time_ns: t, ..Default::default() };
        for (key, tid, stack) in threads {
            let a = b.frames.len() as u32;
            b.frames.extend_from_slice(stack);
            b.threads.push(ThreadSample::new(*key, *tid, t, Some((a, b.frames.len() as u32)), true));
        }
        Message::Sample(b)
    }

    /// A batch of (key, tid) threads without frames, all at `t`: unread (a torn read), or
    /// the same stack as their last sample.
    fn frameless(t: u64, threads: &[(u64, i32)], same_as_last: bool) -> Message {
        let mut b = SampleBatch { time_ns: t, ..Default::default() };
        for &(key, tid) in threads {
            b.threads.push(ThreadSample { same_as_last, ..ThreadSample::new(key, tid, t, None, same_as_last) });
        }
        Message::Sample(b)
    }

    #[test]
    fn a_read_that_found_frames_off_the_data_stack_bounds_their_calls() {
        // f1 at 0x200 and its callee f2 at 0x300, in the chunk 0x0..0x10000. A read at
        // 1090-1100 that kept no stack found the data stack ending at 0x200: f1's call (and
        // f2's) had ended by then; a read at 1780-1800 found it ending at 0x300: f3 there at
        // 2000 began after 1780. The sample at 2000 shows f1 at 0x200 again, same call site:
        // another call.
        let mut tl = Timeline::default();
        let mut r = Recorder::default();
        tl.handle(&codes(4), &mut r).unwrap();
        let main = f(0, 0x100, 10);
        tl.handle(&sample(1000, &[(1, 7, &[main, f(1, 0x200, 4), f(2, 0x300, 6)])]), &mut r).unwrap();
        let end = |from_ns, to_ns, top| StackEnd { from_ns, to_ns, lo: 0, hi: 0x10000, top, idle: 0 };
        let Message::Sample(mut b) = frameless(1100, &[(1, 7)], false) else { unreachable!() };
        b.threads[0].ends = [end(1090, 1100, 0x200), end(1780, 1800, 0x300)];
        tl.handle(&Message::Sample(b), &mut r).unwrap();
        tl.handle(&sample(2000, &[(1, 7, &[main, f(1, 0x200, 4), f(3, 0x300, 2)])]), &mut r).unwrap();
        tl.finish(&mut r, &|t| format!("t{t}")).unwrap();
        // f2 and f1 end halfway to 1100; the new f1 opens halfway from 1090 (1545), f3
        // halfway from 1780 (1890); without the reads: one f1 from 1000 to the end, f2
        // 1000-1500.
        assert_eq!(
            r.slices,
            vec![(7, 2, 1000, 1050), (7, 1, 1000, 1050), (7, 3, 1890, 2000), (7, 1, 1545, 2000), (7, 0, 1000, 2000)]
        );
        assert_eq!(tl.told_apart.by_stack_end, 1);
        // a top outside the chunk (a read between two chunks) proves nothing
        assert!(!end(1, 2, 0x20000).excludes(0x300));
        assert!(!StackEnd { lo: 0x1000, ..end(1, 2, 0x800) }.excludes(0x900));
    }

    #[test]
    fn boundaries_fall_halfway_between_samples_and_slices_nest() {
        let mut tl = Timeline::default();
        let mut r = Recorder::default();
        tl.handle(&codes(4), &mut r).unwrap();
        let main = f(0, 100, 10);
        tl.handle(&sample(1000, &[(1, 7, &[main, f(1, 200, 4)])]), &mut r).unwrap();
        tl.handle(&sample(2000, &[(1, 7, &[main, f(1, 200, 8)])]), &mut r).unwrap(); // line change
        tl.handle(&sample(3000, &[(1, 7, &[f(0, 100, 12), f(1, 200, 4)])]), &mut r).unwrap(); // new call site
        tl.handle(&sample(4000, &[(1, 7, &[f(0, 100, 12)])]), &mut r).unwrap();
        tl.finish(&mut r, &|t| format!("t{t}")).unwrap();
        // f1 from the first call site: first seen at 1000 (first sight opens at the sample),
        // left between 2000 and 3000; the second call: 2500..3500; main until the end.
        assert_eq!(r.slices, vec![(7, 1, 1000, 2500), (7, 1, 2500, 3500), (7, 0, 1000, 4000)]);
        assert_eq!(r.threads, vec![(7, "t7".to_string())]);
        assert_eq!(tl.slices, 3);
    }

    #[test]
    fn a_thread_ends_halfway_to_the_read_that_found_it_gone_and_opens_halfway_from_the_tick_before() {
        let mut tl = Timeline::default();
        let mut r = Recorder::default();
        tl.handle(&codes(3), &mut r).unwrap();
        let a: &[StackFrame] = &[f(0, 100, 2)];
        let b: &[StackFrame] = &[f(1, 300, 2), f(2, 400, 6)];
        tl.handle(&sample(1000, &[(1, 7, a)]), &mut r).unwrap();
        tl.handle(&sample(2000, &[(1, 7, a), (2, 8, b)]), &mut r).unwrap();
        // missing from a batch is not gone: its last view holds
        tl.handle(&sample(3000, &[(1, 7, a)]), &mut r).unwrap();
        assert!(r.slices.is_empty());
        tl.handle(&Message::ThreadEnded { key: 2, time_ns: 4000 }, &mut r).unwrap();
        tl.handle(&sample(5000, &[(1, 7, a)]), &mut r).unwrap();
        tl.finish(&mut r, &|t| format!("t{t}")).unwrap();
        // (thread 7, there from the first tick, opens at it; 8 appeared after 1000)
        assert_eq!(r.slices, vec![(8, 2, 1500, 3000), (8, 1, 1500, 3000), (7, 0, 1000, 5000)]);
    }

    /// A thread asleep since its last sample comes without frames: the timeline holds
    /// them, keeps its calls open, and the sample-count writers still get its stack.
    #[test]
    fn a_thread_asleep_since_its_last_sample_keeps_its_calls_and_counts_its_stack() {
        let mut tl = Timeline::default();
        let mut r = Recorder::default();
        tl.handle(&codes(2), &mut r).unwrap();
        let s: &[StackFrame] = &[f(0, 100, 2), f(1, 200, 2)];
        tl.handle(&sample(1000, &[(1, 7, s)]), &mut r).unwrap();
        for t in [2000, 3000] {
            // (and one the timeline never saw: nothing to show for it)
            tl.handle(&frameless(t, &[(1, 7), (2, 8)], true), &mut r).unwrap();
        }
        tl.handle(&sample(4000, &[(1, 7, &s[..1])]), &mut r).unwrap();
        tl.finish(&mut r, &|t| format!("t{t}")).unwrap();
        assert_eq!(r.slices, vec![(7, 1, 1000, 3500), (7, 0, 1000, 4000)]);
        assert_eq!(r.samples, vec![(7, vec![0, 1]), (7, vec![0, 1]), (7, vec![0, 1]), (7, vec![0])]);
    }

    #[test]
    fn a_torn_read_keeps_the_previous_view() {
        let mut tl = Timeline::default();
        let mut r = Recorder::default();
        tl.handle(&codes(2), &mut r).unwrap();
        let s: &[StackFrame] = &[f(0, 100, 2), f(1, 200, 2)];
        tl.handle(&sample(1000, &[(1, 7, s)]), &mut r).unwrap();
        tl.handle(&frameless(2000, &[(1, 7)], false), &mut r).unwrap();
        tl.handle(&sample(3000, &[(1, 7, s)]), &mut r).unwrap();
        tl.finish(&mut r, &|t| format!("t{t}")).unwrap();
        assert_eq!(r.slices, vec![(7, 1, 1000, 3000), (7, 0, 1000, 3000)]);
    }
    #[test]
    fn an_unknown_offset_neither_moves_a_call_site_nor_proves_a_new_call() {
        // A generator whose instruction was not known at one sample (python/resume.rs):
        // its callee stays the same call, and it is not split by an "offset went back".
        let mut tl = Timeline::default();
        let mut r = Recorder::default();
        tl.handle(&codes(3), &mut r).unwrap();
        let unknown = crate::python::stack::UNKNOWN_OFFSET;
        let stacks = [
            [f(0, 100, 10), f(1, 200, 30), f(2, 300, 4)],
            [f(0, 100, 10), f(1, 200, unknown), f(2, 300, 6)],
            [f(0, 100, 10), f(1, 200, 30), f(2, 300, 8)],
        ];
        for (i, s) in stacks.iter().enumerate() {
            tl.handle(&sample(1000 * (i as u64 + 1), &[(1, 7, s)]), &mut r).unwrap();
        }
        tl.finish(&mut r, &|t| format!("t{t}")).unwrap();
        assert_eq!(r.slices, vec![(7, 2, 1000, 3000), (7, 1, 1000, 3000), (7, 0, 1000, 3000)]);
        assert_eq!(tl.told_apart.by_offset, 0);
    }

    #[test]
    fn back_to_back_calls_from_one_site_are_told_apart_when_the_frame_proves_it() {
        // f1 loops from offset 40 back to 10 (and nowhere else)
        let mut looping = CodeInfo::for_test(1, "f1");
        looping.proofs.back_jumps = vec![(10, 40)];
        let (mut tl, mut r) = timeline_with(vec![looping]);
        let main = f(0, 100, 10);
        let with = |offset, fixed, bound| {
            let mut c = f(1, 200, offset);
            c.locals = crate::python::stack::Locals { read: true, fixed, bound, slots: 0, sig: 0 };
            c
        };
        let samples = [
            with(20, 7, 0b1), // call 1
            with(30, 7, 0b1), // same call, later
            with(12, 7, 0b1), // back to 12: the loop explains it
            with(8, 7, 0b1),  // back to 8, below every jump target: call 2
            with(20, 9, 0b1), // another argument object: call 3
            with(24, 9, 0b0), // a local became unbound: call 4
            with(28, 9, 0b0), // call 4 goes on
        ];
        for (i, c) in samples.iter().enumerate() {
            tl.handle(&sample(1000 * (i as u64 + 1), &[(1, 7, &[main, *c])]), &mut r).unwrap();
        }
        tl.finish(&mut r, &|t| format!("t{t}")).unwrap();
        let f1: Vec<(u64, u64)> = r.slices.iter().filter(|s| s.1 == 1).map(|s| (s.2, s.3)).collect();
        assert_eq!(f1, vec![(1000, 3500), (3500, 4500), (4500, 5500), (5500, 7000)]);
        assert_eq!((tl.told_apart.by_offset, tl.told_apart.by_locals), (1, 2));
    }

    /// A code object of CPython 3.12 (its bytecode and exception table in hex), analysed;
    /// `resumable`: a generator's.
    fn analysed(id: u32, name: &str, code: &str, table: &str, resumable: bool) -> CodeInfo {
        let hex = |s: &str| {
            (0..s.len() / 2).map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap()).collect::<Vec<u8>>()
        };
        let (code, table) = (hex(code), hex(table));
        let shape = crate::python::bytecode::CodeShape {
            bytecode: &code,
            exception_table: &table,
            resumable,
            argcount: 2,
            nlocals: 3,
            ..Default::default()
        };
        let mut c = CodeInfo::for_test(id, name);
        c.proofs =
            crate::python::bytecode::analyze(crate::python::bytecode::Opcodes::for_minor("3.12").unwrap(), &shape);
        c
    }

    /// 3.12: `def step(x, n): y = [x]; work(y)` (the call at 20, on no loop) and
    /// `def looper(x, n): for y in range(n): work(y)` (the call at 42, in the loop that
    /// writes `y`). Two samples at one call site whose `y` holds another object: two
    /// calls of `step`, one call of `looper`.
    #[test]
    fn a_slot_no_way_back_to_the_offset_writes_tells_calls_apart_where_it_changed() {
        let step = analysed(1, "step", "97007c0067017d02740100000000000000007c02ab0100000000000001007900", "", false);
        let looper = analysed(
            2,
            "looper",
            "9700740100000000000000007c01ab0100000000000044005d0d00007d02740300000000000000007c02ab0100000000000001008c0f04007900",
            "",
            false,
        );
        assert_eq!((step.proofs.kept_at(20) & 0b111, looper.proofs.kept_at(42) & 0b111), (0b111, 0b011));
        let (mut tl, mut r) = timeline_with(vec![step, looper]);
        // slot 2 (`y`) holds objects whose 4 bits are 1, 1, 2, 2, 3
        for (i, y) in [1u64, 1, 2, 2, 3].into_iter().enumerate() {
            let at = |code: u32, frame: u64, offset: i64| {
                let mut c = f(code, frame, offset);
                c.locals = crate::python::stack::Locals { read: true, fixed: 5, bound: 0b111, slots: 0, sig: y << 8 };
                c
            };
            let (a, b) = ([f(0, 100, 10), at(1, 200, 20)], [f(0, 300, 10), at(2, 400, 42)]);
            tl.handle(&sample(1000 * (i as u64 + 1), &[(1, 7, &a), (2, 8, &b)]), &mut r).unwrap();
        }
        tl.finish(&mut r, &|t| format!("t{t}")).unwrap();
        let of = |id: u32| r.slices.iter().filter(|s| s.1 == id).map(|s| (s.2, s.3)).collect::<Vec<_>>();
        assert_eq!(of(1), vec![(1000, 2500), (2500, 4500), (4500, 5000)]);
        assert_eq!(of(2), vec![(1000, 5000)]);
        assert_eq!(tl.told_apart.by_locals, 2);
    }

    /// A timeline that knows `main` (code 0) and `codes`.
    fn timeline_with(codes: Vec<CodeInfo>) -> (Timeline, Recorder) {
        let mut tl = Timeline::default();
        let mut r = Recorder::default();
        let all = std::iter::once(CodeInfo::for_test(0, "main")).chain(codes).map(Arc::new).collect();
        tl.handle(&Message::Codes(all), &mut r).unwrap();
        (tl, r)
    }

    /// 3.12: `def gen(xs, out): for x in xs: yield x; out(x)` (code 2) and
    /// `def outer(xs, out): yield from gen(xs, out)` (code 1, its SEND at 32).
    fn outer_and_gen() -> (CodeInfo, CodeInfo) {
        let gen = analysed(
            2,
            "gen",
            "4b00010097007c0044005d0e00007d027c0296019701010002007c017c02ab0100000000000001008c1004007900ad037701",
            "82151701",
            true,
        );
        let outer = analysed(
            1,
            "outer",
            "4b0001009700740100000000000000007c007c01ab02000000000000450064007b03000096029702860505000100790037008c05ad037701",
            "82101a019201180493061a01",
            true,
        );
        (outer, gen)
    }

    #[test]
    fn a_generator_seen_past_a_yield_and_the_generators_delegating_to_it_are_resumed_anew() {
        let (outer, gen) = outer_and_gen();
        assert!(gen.proofs.paths.is_some() && outer.proofs.delegating(32));
        let (mut tl, mut r) = timeline_with(vec![outer, gen]);
        // outer waits at its SEND (32) while gen runs: 16 is before gen's yield, 30
        // (the call of out) after it, and 16 again is around gen's loop.
        for (i, offset) in [16, 30, 30, 16].into_iter().enumerate() {
            let stack = [f(0, 100, 10), f(1, 200, 32), f(2, 300, offset)];
            tl.handle(&sample(1000 * (i as u64 + 1), &[(1, 7, &stack)]), &mut r).unwrap();
        }
        tl.finish(&mut r, &|t| format!("t{t}")).unwrap();
        let of = |id: u32| r.slices.iter().filter(|s| s.1 == id).map(|s| (s.2, s.3)).collect::<Vec<_>>();
        assert_eq!(of(2), vec![(1000, 1500), (1500, 4000)]);
        assert_eq!(of(1), vec![(1000, 1500), (1500, 4000)]);
        assert_eq!(of(0), vec![(1000, 4000)]);
        assert_eq!(tl.told_apart.by_yield, 1);
    }

    /// The two generators of the test above: `outer` waits at its SEND (32) while `gen`
    /// runs, and between two samples `gen`'s offset crossed its yield, but `gen`'s fixed
    /// slots changed too: another generator object at the same address, not the same one
    /// resumed. `outer` is not proven to have yielded; `gen` is a new call.
    #[test]
    fn a_delegate_replaced_by_a_new_generator_at_its_address_does_not_split_the_delegator() {
        let (outer, gen) = outer_and_gen();
        let (mut tl, mut r) = timeline_with(vec![outer, gen]);
        for (i, (offset, object)) in [(16, 5), (16, 5), (30, 6), (30, 6)].into_iter().enumerate() {
            let mut g = f(2, 300, offset);
            g.locals = crate::python::stack::Locals { read: true, fixed: object, bound: 0b11, slots: 0, sig: 0 };
            let stack = [f(0, 100, 10), f(1, 200, 32), g];
            tl.handle(&sample(1000 * (i as u64 + 1), &[(1, 7, &stack)]), &mut r).unwrap();
        }
        tl.finish(&mut r, &|t| format!("t{t}")).unwrap();
        let of = |id: u32| r.slices.iter().filter(|s| s.1 == id).map(|s| (s.2, s.3)).collect::<Vec<_>>();
        assert_eq!(of(1), vec![(1000, 4000)]);
        assert_eq!(of(2), vec![(1000, 2500), (2500, 4000)]);
        assert_eq!((tl.told_apart.by_yield, tl.told_apart.by_locals), (0, 1));
    }

    /// As above, but the new generator's slots are the old one's (the same arguments):
    /// its offset went from inside `gen`'s loop (30) back to before it (6), where no path
    /// of `gen`'s code leads, through its yield or not. Another call, not a yield of the
    /// one before: `outer` keeps its call.
    #[test]
    fn a_delegate_that_moved_where_no_path_of_one_call_goes_does_not_split_the_delegator() {
        let (outer, gen) = outer_and_gen();
        assert!(!gen.proofs.one_call(30, 6) && gen.proofs.one_call(6, 30) && gen.proofs.one_call(30, 16));
        let (mut tl, mut r) = timeline_with(vec![outer, gen]);
        for (i, offset) in [30, 30, 6, 6].into_iter().enumerate() {
            let stack = [f(0, 100, 10), f(1, 200, 32), f(2, 300, offset)];
            tl.handle(&sample(1000 * (i as u64 + 1), &[(1, 7, &stack)]), &mut r).unwrap();
        }
        tl.finish(&mut r, &|t| format!("t{t}")).unwrap();
        let of = |id: u32| r.slices.iter().filter(|s| s.1 == id).map(|s| (s.2, s.3)).collect::<Vec<_>>();
        assert_eq!(of(1), vec![(1000, 4000)]);
        assert_eq!(of(2), vec![(1000, 2500), (2500, 4000)]);
        assert_eq!((tl.told_apart.by_yield, tl.told_apart.by_offset), (0, 1));
    }

    /// A thread asleep in `wait` (3.12: `got = lock.acquire(); return got`, the call at
    /// 24 on no loop), called from `worker` (`while True: wait(lock)`, the call at 16 in
    /// the loop); a second thread asleep in `worker` itself.
    #[test]
    fn a_thread_that_woke_in_the_same_frames_made_new_calls_above_its_innermost_loop() {
        use crate::activity::Activity;
        let wait = analysed(
            2,
            "wait",
            "97007c006a01000000000000000000000000000000000000ab000000000000007d017c015300",
            "",
            false,
        );
        let worker = analysed(1, "worker", "97000900740100000000000000007c00ab0100000000000001008c0c", "", false);
        assert!(!wait.proofs.may_come_back(24) && worker.proofs.may_come_back(16));
        let (mut tl, mut r) = timeline_with(vec![worker, wait]);
        let asleep = Activity::new(Some(false), Some(false));
        let running = Activity::new(Some(true), Some(true));
        let steps = [
            (asleep, Runs::Asleep(5, 1)),
            (asleep, Runs::Asleep(5, 1)),
            (asleep, Runs::Asleep(7, 1)),  // woke: wait returned, worker called it again
            (asleep, Runs::Waking),        // woke again, now waits for the GIL in the same call
            (asleep, Runs::Asleep(9, 1)),  // ... and called again
            (running, Runs::Count(10)),    // seen running in the same frames: 9 stands
            (asleep, Runs::Asleep(11, 1)), // ... so this woke it too
            (asleep, Runs::Unknown),       // (moved by our own stop: compare nothing across it)
            (asleep, Runs::Asleep(13, 1)),
            (asleep, Runs::Asleep(14, 2)), // asleep elsewhere (an internal lock): not a new call
            (asleep, Runs::Asleep(15, 1)), // ... nor back where it was first
        ];
        for (i, (activity, runs)) in steps.into_iter().enumerate() {
            let t = 1000 * (i as u64 + 1);
            let mut b = SampleBatch { time_ns: t, ..Default::default() };
            let stacks: [(i32, Vec<StackFrame>); 2] =
                [(7, vec![f(0, 50, 2), f(1, 100, 16), f(2, 200, 24)]), (8, vec![f(0, 60, 2), f(1, 300, 16)])];
            for (tid, stack) in stacks {
                let a = b.frames.len() as u32;
                b.frames.extend_from_slice(&stack);
                let frames = Some((a, b.frames.len() as u32));
                b.threads.push(ThreadSample { runs, ..ThreadSample::new(tid as u64, tid, t, frames, true) });
                b.activity.push(activity);
            }
            tl.handle(&Message::Sample(b), &mut r).unwrap();
        }
        tl.finish(&mut r, &|t| format!("t{t}")).unwrap();
        let of = |tid: i32, id: u32| {
            r.slices.iter().filter(|s| s.0 == tid && s.1 == id).map(|s| (s.2, s.3)).collect::<Vec<_>>()
        };
        assert_eq!(of(7, 2), vec![(1000, 2500), (2500, 4500), (4500, 6500), (6500, 11000)]);
        assert_eq!(of(7, 1), vec![(1000, 11000)]);
        assert_eq!(of(8, 1), vec![(1000, 11000)], "a frame that loops around its call stays one call");
        assert_eq!(tl.told_apart.by_wake, 3);
    }

    /// A generator resumed again and again by one `for` loop, or a function called from
    /// one site in a loop: only the caller's slots (its loop variable) tell the calls
    /// apart, and only where the caller had a callee in the earlier sample.
    #[test]
    fn a_caller_whose_slots_changed_ran_so_its_callee_is_a_new_call() {
        let with_slots = |mut frame: StackFrame, slots| {
            frame.locals = crate::python::stack::Locals { read: true, fixed: 0, bound: 0, slots, sig: 0 };
            frame
        };
        let (codes, mut told) = (CodeTable::default(), ToldApart::default());
        let (caller, callee) = (f(1, 100, 10), f(2, 200, 4));
        let before = [with_slots(caller, 5), callee];
        // the caller's loop variable moved on: a new call (or resumption) of the callee
        assert_eq!(common_calls(&before, &[with_slots(caller, 6), callee], 2, &codes, &mut told), 1);
        assert_eq!(told.by_caller, 1);
        // the same slots: nothing proves it ran
        assert_eq!(common_calls(&before, &[with_slots(caller, 5), callee], 2, &codes, &mut told), 2);
        // slots not read in one sample prove nothing
        assert_eq!(common_calls(&before, &[caller, callee], 2, &codes, &mut told), 2);
        // the innermost frame runs: its own slots changing says nothing of a callee
        let top = [with_slots(caller, 5)];
        assert_eq!(common_calls(&top, &[with_slots(caller, 6), callee], 1, &codes, &mut told), 1);
        // a callee first seen in the earlier sample: its caller's slots may be a tear's
        assert_eq!(common_calls(&before, &[with_slots(caller, 6), callee], 1, &codes, &mut told), 2);
        assert_eq!(told.by_caller, 1);
    }

    /// The caller proof through the timeline: a callee first seen in a sample read at one
    /// moment is split when its caller's locals change; first seen in a sample whose top
    /// moved while it was copied (the caller may be older than the callee), it is not.
    #[test]
    fn a_callee_first_seen_in_a_torn_sample_is_not_split_by_its_callers_locals() {
        let slots = |s| crate::python::stack::Locals { read: true, fixed: 0, bound: 0, slots: s, sig: 0 };
        let mut caller = f(1, 100, 10);
        for settled in [true, false] {
            let mut tl = Timeline::default();
            let mut r = Recorder::default();
            tl.handle(&codes(3), &mut r).unwrap();
            let mut at = |t: u64, caller_slots, with_callee: bool, settled: bool| {
                caller.locals = slots(caller_slots);
                let stack: Vec<StackFrame> =
                    if with_callee { vec![f(0, 50, 2), caller, f(2, 200, 4)] } else { vec![f(0, 50, 2), caller] };
                let mut b = SampleBatch { time_ns: t, ..Default::default() };
                b.frames.extend_from_slice(&stack);
                b.threads.push(ThreadSample::new(1, 7, t, Some((0, stack.len() as u32)), settled));
                Message::Sample(b)
            };
            tl.handle(&at(1000, 5, false, true), &mut r).unwrap();
            tl.handle(&at(2000, 5, true, settled), &mut r).unwrap(); // f2 first seen
            tl.handle(&at(3000, 6, true, true), &mut r).unwrap(); // the caller's locals moved on
            tl.finish(&mut r, &|t| format!("t{t}")).unwrap();
            let f2 = r.slices.iter().filter(|s| s.1 == 2).count();
            assert_eq!(f2, if settled { 2 } else { 1 }, "settled first sample: {settled}");
        }
    }

    #[test]
    fn a_line_change_keeps_the_call_a_new_call_site_does_not() {
        let a = [f(1, 100, 10), f(2, 200, 4)];
        // same child, parent moved on and called it again from elsewhere
        let (codes, mut told) = (CodeTable::default(), ToldApart::default());
        assert_eq!(common_calls(&a, &[f(1, 100, 12), f(2, 200, 4)], 2, &codes, &mut told), 1);
        // the child moved lines: still the same call
        assert_eq!(common_calls(&a, &[f(1, 100, 10), f(2, 200, 8)], 2, &codes, &mut told), 2);
        // a different frame address is a different call
        assert_eq!(common_calls(&a, &[f(1, 100, 10), f(2, 208, 4)], 2, &codes, &mut told), 1);
    }
}
