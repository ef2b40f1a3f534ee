//! The clock: every tick reads every thread's stack and stamps it with the time of the
//! read. It only reads memory and hands compact samples on; naming, timelines and
//! writing happen on the consumer's side of the channel.

use crate::clock::{now_ns, sleep_until_ns};
use crate::python::code::{CodeCache, CodeInfo};
use crate::python::discover::Target;
use crate::python::stack::{self, RawFrame};
use crate::python::thread_ids::ThreadIds;
use crate::python::{thread_names, threads};
use crate::process::memory::{Memory, ReadError, ReadResult};
use crossbeam_channel::{Sender, TrySendError};
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
    /// root first; None when the read tore twice this tick (keep the previous view)
    pub frames: Option<Vec<StackFrame>>,
}

pub enum Message {
    Sample { time_ns: u64, threads: Vec<ThreadSample> },
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

pub struct Sampler {
    pub pid: i32,
    mem: Memory,
    target: Target,
    codes: CodeCache,
    ids: ThreadIds,
    /// (tstate, pthread id, native id) -> our tid, resolved once per thread (the native
    /// id is part of the key: a starting thread's state shows its creator's for a moment)
    tids: HashMap<(u64, u64, i32), i32>,
    /// last stack seen per thread (root first): frames found there again need no lookup
    previous: HashMap<u64, Vec<StackFrame>>,
    named: HashMap<u64, bool>,
    last_name_scan_ns: u64,
    raw: Vec<RawFrame>,
}

pub enum StopReason {
    Requested,
    TargetExited,
    Failed(String),
}

impl Sampler {
    pub fn new(pid: i32, mem: Memory, target: Target, codes: CodeCache, ids: ThreadIds) -> Sampler {
        Sampler {
            pid,
            mem,
            target,
            codes,
            ids,
            tids: HashMap::new(),
            previous: HashMap::new(),
            named: HashMap::new(),
            last_name_scan_ns: 0,
            raw: Vec::with_capacity(256),
        }
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
        let start = now_ns();
        stats.started_ns.store(start, Ordering::Relaxed);
        let mut deadline = start;
        loop {
            if stop.load(Ordering::Relaxed) {
                return StopReason::Requested;
            }
            let now = now_ns();
            if end_ns.is_some_and(|e| now >= e) {
                return StopReason::Requested;
            }
            match self.tick(tx, stats) {
                Ok(()) => {}
                Err(ReadError::Gone) => return StopReason::TargetExited,
                Err(ReadError::Fault) => {
                    stats.read_errors.fetch_add(1, Ordering::Relaxed);
                    if !std::path::Path::new(&format!("/proc/{}/stat", self.pid)).exists() {
                        return StopReason::TargetExited;
                    }
                }
                Err(e) => return StopReason::Failed(e.into_error(self.pid).to_string()),
            }
            stats.ticks.fetch_add(1, Ordering::Relaxed);
            if interval_ns > 0 {
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
                sleep_until_ns(deadline);
            }
        }
    }

    fn tick(&mut self, tx: &Sender<Message>, stats: &Stats) -> ReadResult<()> {
        let mem = self.mem;
        let tick_ns = now_ns();
        let mut samples = Vec::new();
        let mut new_threads = false;
        for interp in threads::interpreters(&mem, &self.target)? {
            let states = threads::thread_states(&mem, &self.target, interp)?;
            let key = |s: &threads::ThreadState| (s.addr, s.thread_id, s.native_id.unwrap_or(0));
            if states.iter().any(|s| !self.tids.contains_key(&key(s))) {
                self.ids.refresh(self.pid);
                let tids = self.ids.resolve(&mem, &states);
                self.tids.clear();
                for (s, tid) in states.iter().zip(tids) {
                    if let Some(tid) = tid {
                        self.tids.insert(key(s), tid);
                    }
                }
                new_threads = true;
            }
            for s in &states {
                // A thread without an OS tid has not started or has finished: nothing to show.
                let Some(&tid) = self.tids.get(&key(s)) else { continue };
                let time_ns = now_ns();
                let frames = match self.read_thread(s.addr) {
                    Ok(f) => Some(f),
                    Err(ReadError::Fault) => match self.read_thread(s.addr) {
                        Ok(f) => Some(f),
                        Err(ReadError::Fault) => {
                            stats.read_errors.fetch_add(1, Ordering::Relaxed);
                            None
                        }
                        Err(e) => return Err(e),
                    },
                    Err(e) => return Err(e),
                };
                if let Some(f) = &frames {
                    self.previous.insert(s.addr, f.clone());
                }
                samples.push(ThreadSample { key: s.addr, tid, time_ns, frames });
            }
            self.scan_names(tx, interp, &states, new_threads, tick_ns);
        }
        let fresh = self.codes.take_new();
        if !fresh.is_empty() {
            // Names must reach the consumer before the samples that use them: block.
            let _ = tx.send(Message::Codes(fresh));
        }
        self.previous.retain(|k, _| samples.iter().any(|s| s.key == *k));
        stats.last_sample_ns.store(tick_ns, Ordering::Relaxed);
        match tx.try_send(Message::Sample { time_ns: tick_ns, threads: samples }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => return Err(ReadError::Other(libc::EPIPE)),
        }
        Ok(())
    }

    /// Thread names come from Python objects; read them when threads appear and, for
    /// threads still unnamed (not yet registered by threading), every 100 ms.
    fn scan_names(&mut self, tx: &Sender<Message>, interp: u64, states: &[threads::ThreadState], new: bool, now: u64) {
        let unnamed = states.iter().any(|s| !self.named.get(&s.addr).copied().unwrap_or(false));
        if !(new || (unnamed && now.saturating_sub(self.last_name_scan_ns) > 100_000_000)) {
            return;
        }
        self.last_name_scan_ns = now;
        let names = thread_names::read(&self.mem, &self.target, interp).unwrap_or_default();
        for s in states {
            if self.named.get(&s.addr).copied().unwrap_or(false) {
                continue;
            }
            let Some(&tid) = self.tids.get(&(s.addr, s.thread_id, s.native_id.unwrap_or(0))) else { continue };
            if let Some(name) = names.get(&s.thread_id) {
                self.named.insert(s.addr, true);
                let _ = tx.send(Message::ThreadName { key: s.addr, tid, name: name.clone() });
            }
        }
        self.named.retain(|k, _| states.iter().any(|s| s.addr == *k));
    }

    /// One thread's stack, root first, with code ids; Fault if it tore.
    fn read_thread(&mut self, tstate: u64) -> ReadResult<Vec<StackFrame>> {
        let t = &self.target;
        let mem = self.mem;
        let top = stack::top_frame(&mem, t, tstate)?;
        let codes = &mut self.codes;
        let mut raw = std::mem::take(&mut self.raw);
        let walked = stack::walk(&mem, t, top, &mut raw, |code| {
            let info = match codes.cached(code) {
                Some(i) => i.clone(),
                None => codes.get(&mem, &t.layout, t.code_type, code)?,
            };
            Ok((info.bytecode_start, info.first_traceable))
        });
        let result = walked.and_then(|()| {
            if stack::top_frame(&mem, t, tstate)? != top {
                return Err(ReadError::Fault);
            }
            let prev = self.previous.get(&tstate).map(|p| p.as_slice()).unwrap_or(&[]);
            let mut out: Vec<StackFrame> = Vec::with_capacity(raw.len());
            let mut same_so_far = true;
            for (depth, f) in raw.iter().rev().enumerate() {
                // The same call as last tick (same code, same frame, same call site in
                // the parent) keeps its code id without touching the target again: the
                // live frame holds its code object.
                let known = same_so_far
                    .then(|| prev.get(depth))
                    .flatten()
                    .filter(|p| {
                        p.code == f.code && p.frame == f.frame && (depth == 0 || prev[depth - 1].offset == out[depth - 1].offset)
                    })
                    .map(|p| p.code_id);
                let code_id = match known {
                    Some(id) => id,
                    None => {
                        same_so_far = false;
                        self.codes.get(&mem, &t.layout, t.code_type, f.code)?.id
                    }
                };
                out.push(StackFrame { code_id, code: f.code, frame: f.frame, offset: f.offset });
            }
            Ok(out)
        });
        self.raw = raw;
        result
    }
}
