//! The clock: every tick reads every thread's stack and stamps it with the time of the
//! read. It only reads memory and hands compact samples on; naming, timelines and
//! writing happen on the consumer's side of the channel.
//!
//! Once warm, a tick is one process_vm_readv: the thread states, the used part of each
//! thread's newest data-stack chunk (3.11+) and last tick's frames that live elsewhere
//! (frame objects before 3.11, generators) are read together, and the walk runs on that
//! copy. Only what moved since last tick costs more reads. Sample buffers come back from
//! the consumer to be reused, so the loop does not allocate.

use crate::clock::{now_ns, sleep_until_ns};
use crate::process::memory::{Fields, Memory, ReadError, ReadResult};
use crate::process::prefetch::Prefetch;
use crate::python::code::{CodeCache, CodeInfo};
use crate::python::discover::Target;
use crate::python::layout::FrameModel;
use crate::python::stack::{self, RawFrame};
use crate::python::thread_ids::ThreadIds;
use crate::python::{thread_names, threads};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StackFrame {
    pub code_id: u32,
    pub code: u64,
    pub frame: u64,
    /// the bytecode offset in this frame (for its children: the call site)
    pub offset: i64,
}

pub struct ThreadSample {
    /// thread state address: identifies the thread for the life of the thread
    pub key: u64,
    pub tid: i32,
    pub time_ns: u64,
    /// range of this thread's stack (root first) in the batch's frames; None when the
    /// read tore this tick (keep the previous view)
    pub frames: Option<(u32, u32)>,
}

/// One tick: every thread's stack, frames of all threads in one flat vector.
#[derive(Default)]
pub struct SampleBatch {
    pub time_ns: u64,
    pub threads: Vec<ThreadSample>,
    pub frames: Vec<StackFrame>,
}

impl SampleBatch {
    pub fn stack(&self, t: &ThreadSample) -> Option<&[StackFrame]> {
        t.frames.and_then(|(a, b)| self.frames.get(a as usize..b as usize))
    }
}

pub enum Message {
    Sample(SampleBatch),
    Codes(Vec<Arc<CodeInfo>>),
    ThreadName { key: u64, tid: i32, name: String },
}

/// Counters shared with the progress line and the summary.
#[derive(Default)]
pub struct Stats {
    pub ticks: AtomicU64,
    pub missed_ticks: AtomicU64,
    pub longest_lag_ns: AtomicU64,
    pub read_errors: AtomicU64,
    /// samples the consumer could not take in time (the channel was full)
    pub dropped: AtomicU64,
    pub started_ns: AtomicU64,
    pub last_sample_ns: AtomicU64,
}

/// What we remember of a thread between ticks.
#[derive(Default)]
struct ThreadCache {
    tid: Option<i32>,
    ids: (u64, i32),
    named: bool,
    /// last stack, root first
    prev: Vec<StackFrame>,
    /// every frame the last walk read (C-stack entry frames too)
    visited: Vec<u64>,
    cframe: u64,
    chunk: u64,
    chunk_len: usize,
}

/// Below this interval sleeping costs more than it saves: spin to the deadline.
const SPIN_BELOW_NS: u64 = 60_000;
/// Bytes of a data-stack chunk to read beyond the deepest frame seen last tick.
const CHUNK_SLACK: usize = 1024;
const CHUNK_FIRST_READ: usize = 4096;
/// Frames this close together are read as one piece (cheaper than two iovecs).
const MERGE_GAP: u64 = 512;
const MAX_SPAN: u64 = 64 << 10;

pub struct Sampler {
    pub pid: i32,
    mem: Memory,
    target: Target,
    codes: CodeCache,
    ids: ThreadIds,
    /// thread states per interpreter, in list order, as of last tick
    interps: Vec<(u64, Vec<u64>)>,
    threads: HashMap<u64, ThreadCache>,
    pf: Prefetch,
    /// how much of each thread state a tick reads: up to the last field it uses (a
    /// thread state is up to 900 bytes; the fields we need sit in its first ~260)
    tstate_len: usize,
    /// scratch for prefetch(): frame addresses to read
    spans: Vec<u64>,
    /// scratch for the walk: frames it read
    visited: Vec<u64>,
    /// cached code objects met in new frames this tick: (index in batch.frames, address),
    /// checked together in one read at the end of the tick
    unchecked: Vec<(usize, u64)>,
    pf_codes: Prefetch,
    /// threads whose stack changed this tick: (index in batch.threads, where the top
    /// frame pointer lives, the value the walk started from)
    recheck: Vec<(usize, u64, u64)>,
    pf_tops: Prefetch,
    raw: Vec<RawFrame>,
    last_name_scan_ns: u64,
    /// set when a thread's ids changed: the lists are read afresh next tick
    stale_list: bool,
    recycled: Option<Receiver<SampleBatch>>,
}

fn spin_until(deadline: u64) {
    while now_ns() < deadline {
        std::hint::spin_loop();
    }
}

pub enum StopReason {
    Requested,
    TargetExited,
    Failed(String),
}

impl Sampler {
    pub fn new(pid: i32, mem: Memory, target: Target, codes: CodeCache, ids: ThreadIds) -> Sampler {
        let ts = &target.layout.tstate;
        let tstate_len = [Some(ts.next), Some(ts.interp), Some(ts.frame), Some(ts.thread_id), ts.native_thread_id, ts.datastack_chunk]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(0) as usize
            + 8;
        Sampler {
            tstate_len,
            pid,
            mem,
            target,
            codes,
            ids,
            interps: Vec::new(),
            threads: HashMap::new(),
            pf: Prefetch::default(),
            spans: Vec::new(),
            visited: Vec::new(),
            unchecked: Vec::new(),
            pf_codes: Prefetch::default(),
            recheck: Vec::new(),
            pf_tops: Prefetch::default(),
            raw: Vec::with_capacity(256),
            last_name_scan_ns: 0,
            stale_list: true,
            recycled: None,
        }
    }

    /// Batches the consumer is done with, to be filled again.
    pub fn recycle_from(&mut self, rx: Receiver<SampleBatch>) {
        self.recycled = Some(rx);
    }

    /// Samples until `stop` is set, the deadline passes or the target exits.
    /// `interval_ns` 0 means as fast as possible.
    pub fn run(
        &mut self,
        tx: &Sender<Message>,
        interval_ns: u64,
        end_ns: Option<u64>,
        stop: &AtomicBool,
        stats: &Stats,
    ) -> StopReason {
        // Sleeps wake on time, not up to 50 us late (the default timer slack).
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1, 0, 0, 0) };
        let start = now_ns();
        stats.started_ns.store(start, Ordering::Relaxed);
        let mut deadline = start;
        loop {
            if stop.load(Ordering::Relaxed) {
                return StopReason::Requested;
            }
            if end_ns.is_some_and(|e| now_ns() >= e) {
                return StopReason::Requested;
            }
            match self.tick(tx, stats) {
                Ok(()) => {}
                // The kernel refuses reads for a moment while the target execs, too: only
                // a target that is really gone (or a zombie) ends the capture.
                Err(ReadError::Gone | ReadError::Fault) => {
                    stats.read_errors.fetch_add(1, Ordering::Relaxed);
                    if !crate::process::is_alive(self.pid) {
                        return StopReason::TargetExited;
                    }
                }
                Err(ReadError::Other(libc::EPIPE)) => return StopReason::Requested,
                Err(e) => return StopReason::Failed(e.into_error(self.pid).to_string()),
            }
            stats.ticks.fetch_add(1, Ordering::Relaxed);
            if interval_ns == 0 {
                continue;
            }
            deadline += interval_ns;
            let after = now_ns();
            if after > deadline {
                // Behind: count the ticks that cannot be taken on time and skip them,
                // rather than bursting to catch up.
                let lag = after - deadline;
                stats.longest_lag_ns.fetch_max(lag, Ordering::Relaxed);
                let missed = lag / interval_ns;
                if missed > 0 {
                    stats.missed_ticks.fetch_add(missed, Ordering::Relaxed);
                    deadline += missed * interval_ns;
                }
            }
            if let Some(e) = end_ns {
                deadline = deadline.min(e);
            }
            if interval_ns < SPIN_BELOW_NS {
                spin_until(deadline);
            } else {
                // An absolute deadline: late wake-ups do not accumulate, and an idle
                // sampler costs nothing. (Each sample is stamped when it is read, so a
                // late wake-up moves a sample, it does not mislabel it.)
                sleep_until_ns(deadline);
            }
        }
    }

    fn tick(&mut self, tx: &Sender<Message>, stats: &Stats) -> ReadResult<()> {
        let t0 = now_ns();
        self.prefetch()?;
        if self.stale_list || !self.list_still_valid() {
            self.relist()?;
            self.stale_list = false;
            self.prefetch()?;
        }
        let t1 = now_ns();
        let time_ns = t0 + (t1 - t0) / 2;
        let mut batch = self.recycled.as_ref().and_then(|r| r.try_recv().ok()).unwrap_or_default();
        batch.time_ns = time_ns;
        batch.threads.clear();
        batch.frames.clear();
        let mut new_threads = false;
        for i in 0..self.interps.len() {
            for j in 0..self.interps[i].1.len() {
                let tstate = self.interps[i].1[j];
                new_threads |= self.sample_thread(tstate, time_ns, &mut batch, stats)?;
            }
        }
        self.recheck_tops(&mut batch, stats)?;
        self.check_codes(&mut batch)?;
        // What this tick saw is what the next one compares with.
        for t in &batch.threads {
            if let (Some(stack), Some(c)) = (batch.stack(t), self.threads.get_mut(&t.key)) {
                c.prev.clear();
                c.prev.extend_from_slice(stack);
            }
        }
        let fresh = self.codes.take_new();
        if !fresh.is_empty() {
            // Names must reach the consumer before the samples that use them: block.
            let _ = tx.send(Message::Codes(fresh));
        }
        self.scan_names(tx, new_threads, t1);
        stats.last_sample_ns.store(time_ns, Ordering::Relaxed);
        match tx.try_send(Message::Sample(batch)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                stats.dropped.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(TrySendError::Disconnected(_)) => Err(ReadError::Other(libc::EPIPE)),
        }
    }

    /// Asks for everything this tick is expected to need, in one read.
    fn prefetch(&mut self) -> ReadResult<()> {
        let l = &self.target.layout;
        let frame_len = l.frame.size as usize;
        self.pf.clear();
        self.pf.want(self.target.runtime + l.runtime.interpreters_head, 8);
        for (interp, states) in &self.interps {
            self.pf.want(interp + l.interp.threads_head, 8);
            for tstate in states {
                self.pf.want(*tstate, self.tstate_len);
                let Some(c) = self.threads.get(tstate) else { continue };
                if c.cframe != 0 {
                    self.pf.want(c.cframe, l.tstate.cframe_current_frame.unwrap_or(0) as usize + 8);
                }
                if c.chunk != 0 {
                    self.pf.want(c.chunk, c.chunk_len);
                }
                // Frames outside the chunk window (older chunks, generators, C-stack entry
                // frames), merged where they are close: one piece per region, not per frame.
                self.spans.clear();
                let window = c.chunk..c.chunk + c.chunk_len as u64;
                self.spans.extend(c.visited.iter().filter(|&&f| !(window.contains(&f) && window.contains(&(f + frame_len as u64)))));
                self.spans.sort_unstable();
                let mut i = 0;
                while i < self.spans.len() {
                    let start = self.spans[i];
                    let mut end = start + frame_len as u64;
                    i += 1;
                    while i < self.spans.len() && self.spans[i] <= end + MERGE_GAP && self.spans[i] + (frame_len as u64) - start <= MAX_SPAN {
                        end = end.max(self.spans[i] + frame_len as u64);
                        i += 1;
                    }
                    self.pf.want(start, (end - start) as usize);
                }
            }
        }
        self.pf.read(&self.mem)
    }

    /// Whether the interpreters and thread lists are what they were last tick.
    fn list_still_valid(&self) -> bool {
        let l = &self.target.layout;
        let head = self.pf.get(self.target.runtime + l.runtime.interpreters_head, 8).map(|b| b.u64_at(0));
        if self.interps.is_empty() || head != Some(self.interps[0].0) {
            return false;
        }
        self.interps.iter().all(|(interp, states)| {
            let mut next = match self.pf.get(interp + l.interp.threads_head, 8) {
                Some(b) => b.u64_at(0),
                None => return false,
            };
            for &s in states {
                if next != s {
                    return false;
                }
                next = match self.pf.get(s, self.tstate_len) {
                    Some(b) if b.u64_at(l.tstate.interp) == *interp => b.u64_at(l.tstate.next),
                    _ => return false,
                };
            }
            next == 0
        })
    }

    /// Reads the interpreters and thread lists afresh (threads came or went).
    fn relist(&mut self) -> ReadResult<()> {
        let mut interps = Vec::new();
        for interp in threads::interpreters(&self.mem, &self.target)? {
            let states = threads::thread_states(&self.mem, &self.target, interp)?;
            // OS tids for threads we have not seen (or whose ids changed as they started)
            let unknown = states.iter().any(|s| {
                self.threads.get(&s.addr).is_none_or(|c| c.ids != (s.thread_id, s.native_id.unwrap_or(0)) || c.tid.is_none())
            });
            if unknown {
                let tids = self.ids.resolve(&self.mem, &states, false);
                for (s, tid) in states.iter().zip(tids) {
                    let c = self.threads.entry(s.addr).or_default();
                    let ids = (s.thread_id, s.native_id.unwrap_or(0));
                    if c.ids != ids || c.tid != tid {
                        // a new thread, or a state reused for another thread
                        *c = ThreadCache { tid, ids, ..Default::default() };
                    }
                }
            }
            interps.push((interp, states.iter().map(|s| s.addr).collect::<Vec<_>>()));
        }
        let live: std::collections::HashSet<u64> = interps.iter().flat_map(|(_, s)| s.iter().copied()).collect();
        self.threads.retain(|k, _| live.contains(k));
        self.interps = interps;
        Ok(())
    }

    /// Reads one thread from the prefetched copy; true when it is new since last tick.
    fn sample_thread(&mut self, tstate: u64, time_ns: u64, batch: &mut SampleBatch, stats: &Stats) -> ReadResult<bool> {
        let t = &self.target;
        let l = &t.layout;
        let mem = self.mem;
        let Some(ts) = self.pf.get(tstate, self.tstate_len) else { return Ok(false) };
        let ids = (ts.u64_at(l.tstate.thread_id), l.tstate.native_thread_id.map(|o| ts.i32_at(o)).unwrap_or(0));
        let mut top = ts.u64_at(l.tstate.frame);
        let mut top_at = tstate + l.tstate.frame;
        let chunk = l.tstate.datastack_chunk.map(|o| ts.u64_at(o)).unwrap_or(0);
        let cache = self.threads.entry(tstate).or_default();
        if cache.ids != ids {
            // the thread's ids changed under us (it just started): resolve next tick
            *cache = ThreadCache { ids, ..Default::default() };
            self.stale_list = true;
            return Ok(false);
        }
        let Some(tid) = cache.tid else { return Ok(false) };
        let is_new = cache.prev.is_empty() && !cache.named;
        if let (true, Some(off)) = (l.model.frame_via_cframe, l.tstate.cframe_current_frame) {
            let cframe = top;
            top_at = cframe + off;
            top = if cframe == 0 {
                0
            } else {
                match self.pf.get(cframe + off, 8).filter(|_| cframe == cache.cframe) {
                    Some(b) => b.u64_at(0),
                    None => mem.read_u64(cframe + off)?,
                }
            };
            cache.cframe = cframe;
        }
        if chunk != cache.chunk {
            cache.chunk = chunk;
            cache.chunk_len = CHUNK_FIRST_READ;
        }
        let codes = &mut self.codes;
        let mut raw = std::mem::take(&mut self.raw);
        let mut code_start = |code| {
            let info = match codes.cached(code) {
                Some(i) => i.clone(),
                None => codes.get(&mem, &t.layout, t.code_type, code)?,
            };
            Ok((info.bytecode_start, info.first_traceable))
        };
        let visited = &mut self.visited;
        let mut walked = stack::walk(&mem, t, top, &mut raw, visited, &self.pf, &mut code_start);
        // A stack whose root changed is either a thread that really finished its outer
        // call, or a read that tore and stopped early (a frame being freed or pushed while
        // we copied): read that thread again, directly, before believing it.
        let root = |r: &[RawFrame]| r.last().map(|f| (f.code, f.frame));
        if walked.is_ok() && !cache.prev.is_empty() && root(&raw) != cache.prev.first().map(|f| (f.code, f.frame)) {
            walked = stack::walk_consistent(&mem, t, tstate, &mut raw, visited, &mut code_start);
        }
        let start = batch.frames.len();
        let result = walked.and_then(|()| {
            let prev = &cache.prev;
            let mut same_so_far = true;
            for (depth, f) in raw.iter().rev().enumerate() {
                // The same call as last tick (same code, same frame, same call site in
                // the parent) keeps its code id without touching the target again: the
                // live frame holds its code object.
                let known = same_so_far
                    .then(|| prev.get(depth))
                    .flatten()
                    .filter(|p| {
                        p.code == f.code
                            && p.frame == f.frame
                            && (depth == 0 || prev[depth - 1].offset == batch.frames[start + depth - 1].offset)
                    })
                    .map(|p| p.code_id);
                let code_id = match known {
                    Some(id) => id,
                    None => {
                        same_so_far = false;
                        match codes.cached(f.code) {
                            // a code object met before: check it is still the same one
                            // with the others at the end of the tick
                            Some(c) => {
                                self.unchecked.push((batch.frames.len(), f.code));
                                c.id
                            }
                            // it was a code object during the walk: anything else now is a tear
                            None => codes.get(&mem, &t.layout, t.code_type, f.code).map_err(stack::torn)?.id,
                        }
                    }
                };
                batch.frames.push(StackFrame { code_id, code: f.code, frame: f.frame, offset: f.offset });
            }
            Ok(same_so_far && raw.len() == prev.len())
        });
        self.raw = raw;
        match result {
            Ok(unchanged) => {
                let end = batch.frames.len();
                if !unchanged && top != 0 {
                    // A changed stack may be a tear: the thread state said one frame was on
                    // top, and by the time the frames were copied a call had returned. Check
                    // the top pointer once more, with the other changed threads, at the end.
                    self.recheck.push((batch.threads.len(), top_at, top));
                }
                cache.visited.clear();
                cache.visited.extend_from_slice(&self.visited);
                // Read next time as much of the chunk as this stack used, and a little more.
                if chunk != 0 && l.model.frames == FrameModel::InterpreterFrame {
                    let chunk_size = self.pf.get(chunk + l.chunk.size, 8).map(|b| b.u64_at(0) as usize).unwrap_or(0);
                    let used = batch.frames[start..end]
                        .iter()
                        .filter(|f| f.frame >= chunk && f.frame < chunk + chunk_size as u64)
                        .map(|f| (f.frame - chunk) as usize + l.frame.size as usize)
                        .max()
                        .unwrap_or(0);
                    cache.chunk_len = (used + CHUNK_SLACK).min(chunk_size.max(CHUNK_FIRST_READ));
                }
                batch.threads.push(ThreadSample { key: tstate, tid, time_ns, frames: Some((start as u32, end as u32)) });
            }
            Err(ReadError::Fault) => {
                batch.frames.truncate(start);
                stats.read_errors.fetch_add(1, Ordering::Relaxed);
                batch.threads.push(ThreadSample { key: tstate, tid, time_ns, frames: None });
            }
            Err(e) => return Err(e),
        }
        Ok(is_new)
    }

    /// One read of the top frame pointer of every thread whose stack changed: if it moved
    /// while the stack was being copied, that sample is torn and the last view is kept.
    fn recheck_tops(&mut self, batch: &mut SampleBatch, stats: &Stats) -> ReadResult<()> {
        if self.recheck.is_empty() {
            return Ok(());
        }
        self.pf_tops.clear();
        for &(_, at, _) in &self.recheck {
            self.pf_tops.want(at, 8);
        }
        self.pf_tops.read(&self.mem)?;
        for &(i, at, top) in &self.recheck {
            if self.pf_tops.get(at, 8).map(|b| b.u64_at(0)) != Some(top) {
                if let Some(t) = batch.threads.get_mut(i) {
                    t.frames = None;
                    stats.read_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        self.recheck.clear();
        Ok(())
    }

    /// One read for every cached code object that new frames used this tick; any that
    /// changed identity (freed, address reused) is read afresh and gets a new id.
    fn check_codes(&mut self, batch: &mut SampleBatch) -> ReadResult<()> {
        if self.unchecked.is_empty() {
            return Ok(());
        }
        let l = &self.target.layout;
        let (off, len) = crate::python::code::identity_span(l);
        self.pf_codes.clear();
        for &(_, addr) in &self.unchecked {
            self.pf_codes.want(addr + off, len);
        }
        self.pf_codes.read(&self.mem)?;
        for &(i, addr) in &self.unchecked {
            let same = match (self.codes.cached(addr), self.pf_codes.get(addr + off, len)) {
                (Some(c), Some(b)) => c.identity_matches(l, b),
                _ => false,
            };
            if !same {
                let id = match self.codes.get(&self.mem, l, self.target.code_type, addr) {
                    Ok(c) => c.id,
                    Err(ReadError::Fault | ReadError::NotCode) => continue, // gone again: keep what we had
                    Err(e) => return Err(e),
                };
                if let Some(f) = batch.frames.get_mut(i) {
                    f.code_id = id;
                }
            }
        }
        self.unchecked.clear();
        Ok(())
    }

    /// Thread names come from Python objects; read them when threads appear and, for
    /// threads still unnamed (not yet registered by threading), every 100 ms.
    fn scan_names(&mut self, tx: &Sender<Message>, new: bool, now: u64) {
        let unnamed = self.threads.values().any(|c| c.tid.is_some() && !c.named);
        if !(new || (unnamed && now.saturating_sub(self.last_name_scan_ns) > 100_000_000)) {
            return;
        }
        self.last_name_scan_ns = now;
        for (interp, states) in &self.interps {
            let names = thread_names::read(&self.mem, &self.target, *interp).unwrap_or_default();
            for s in states {
                let Some(c) = self.threads.get_mut(s) else { continue };
                let (Some(tid), false) = (c.tid, c.named) else { continue };
                if let Some(name) = names.get(&c.ids.0) {
                    c.named = true;
                    let _ = tx.send(Message::ThreadName { key: *s, tid, name: name.clone() });
                }
            }
        }
    }
}
