//! The clock: every tick reads every thread's stack and stamps it with the time of the
//! read. It only reads memory and hands compact samples on; naming, timelines and
//! writing happen on the consumer's side of the channel.
//!
//! A tick copies, in one batched read, the thread lists and, per thread, one group: its
//! thread state, the used part of its newest data-stack chunk (3.11+), the frames the
//! last walk read elsewhere, and finally its top frame pointer a second time. The walk
//! runs on that copy only. A thread whose top pointer moved while its group was copied
//! (a few microseconds), or whose walk needs a frame the copy lacks, is read again at
//! once, alone with the others that need it, up to `ATTEMPTS` times; what is kept is
//! stamped with the time of the read it came from. docs/ARCHITECTURE.md ("Torn reads")
//! gives the reasoning. Sample buffers come back from the consumer to be reused, so a
//! warm loop does not allocate.

use crate::activity::{Activity, ActivityReader, Runs};
use crate::addr_map::AddrMap;
use crate::clock::{now_ns, sleep_until_ns};
use crate::pausing::Pauser;
use crate::process::copy_then_process::{CopyThenProcess, LateBlocks};
use crate::process::memory::{Fields, Memory, ReadBudget, ReadError, ReadMem, ReadResult};
use crate::process::prefetch::Prefetch;
use crate::python::code::{CodeCache, CodeInfo};
use crate::python::discover::Target;
use crate::python::layout::{FrameModel, Layout, FRAME_LEAD};
use crate::python::stack::{self, CodeFacts, Locals, Top, Walk};
use crate::python::thread_ids::ThreadIds;
use crate::python::thread_names::{is_bootstrap, thread_object_name, ActiveDict};
use crate::python::{resume, threads};
use crate::subinterpreters::{Joiner, Rank};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use std::cell::RefCell;
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
    pub locals: Locals,
}

pub struct ThreadSample {
    /// thread state address: identifies the thread until a `ThreadEnded` for it
    pub key: u64,
    pub tid: i32,
    /// when the read this stack came from was made
    pub time_ns: u64,
    /// range of this thread's stack (root first) in the batch's frames; None when no
    /// consistent read of it could be made this tick (keep the previous view)
    pub frames: Option<(u32, u32)>,
    /// every frame was read at one moment: the thread stayed in its top frame through
    /// the read (or was stopped, or asleep). Otherwise a frame below the top may have
    /// been copied a moment before its callee (the timeline's caller proof minds that)
    pub settled: bool,
    /// the kernel's count of the thread's runs (src/activity.rs)
    pub runs: Runs,
    /// the thread has not run since its last sample: its stack is that sample's, which
    /// the consumer holds (`frames` is None). Copying 80 frames of each of 32 idle
    /// threads every tick, and comparing them again, was a quarter of vizattach's CPU
    /// on an idle pool (docs/ARCHITECTURE.md, "Sleeping threads").
    pub same_as_last: bool,
    /// what the first and the last read of this tick that kept no stack of it found had
    /// ended (unset: none)
    pub ends: [StackEnd; 2],
}

/// Where a thread's data stack ended (3.11+), from a copy of its state made between
/// `from_ns` and `to_ns`: no frame in the chunk `lo..hi` at or above `top` was live then.
/// A frame is pushed above the top after the top moves past it, and popped (the top
/// moved down to it) after its call ended, so such a frame's call had ended by `to_ns`
/// and one there later began after `from_ns`. Likewise the generator frame at `idle`
/// (0: none), a frame of the thread's last stack, was not running. Reads that tore say
/// this much.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StackEnd {
    pub from_ns: u64,
    pub to_ns: u64,
    pub lo: u64,
    pub hi: u64,
    pub top: u64,
    pub idle: u64,
}

impl StackEnd {
    pub fn is_set(&self) -> bool {
        self.to_ns != 0
    }

    /// The frame at `frame` was not on the stack then.
    pub fn excludes(&self, frame: u64) -> bool {
        self.is_set() && ((self.lo <= self.top && self.top <= frame && frame < self.hi) || frame == self.idle)
    }
}

impl ThreadSample {
    /// A thread's sample, its stack at `frames` of the batch (None: no consistent read),
    /// its run count not read yet.
    pub fn new(key: u64, tid: i32, time_ns: u64, frames: Option<(u32, u32)>, settled: bool) -> ThreadSample {
        ThreadSample {
            key,
            tid,
            time_ns,
            frames,
            settled,
            runs: Runs::Unknown,
            same_as_last: false,
            ends: [StackEnd::default(); 2],
        }
    }
}

/// One tick: every thread's stack, frames of all threads in one flat vector.
#[derive(Default)]
pub struct SampleBatch {
    pub time_ns: u64,
    pub threads: Vec<ThreadSample>,
    pub frames: Vec<StackFrame>,
    /// what each thread of `threads` was doing (same order; src/activity.rs)
    pub activity: Vec<Activity>,
}

impl SampleBatch {
    pub fn stack(&self, t: &ThreadSample) -> Option<&[StackFrame]> {
        t.frames.and_then(|(a, b)| self.frames.get(a as usize..b as usize))
    }

    /// Records that `frames[start..]` is the stack of thread `key` at `time_ns`.
    fn push_stack(&mut self, key: u64, tid: i32, time_ns: u64, start: usize, settled: bool) {
        let frames = Some((start as u32, self.frames.len() as u32));
        self.threads.push(ThreadSample::new(key, tid, time_ns, frames, settled));
    }

    /// Records that thread `key` still has the stack of its last sample, at `time_ns`.
    fn push_same(&mut self, key: u64, tid: i32, time_ns: u64) {
        self.threads.push(ThreadSample { same_as_last: true, ..ThreadSample::new(key, tid, time_ns, None, true) });
    }

    /// The activity of `threads[i]` (unknown if it was not read).
    pub fn activity_of(&self, i: usize) -> Activity {
        self.activity.get(i).copied().unwrap_or_default()
    }
}

pub enum Message {
    Sample(SampleBatch),
    Codes(Vec<Arc<CodeInfo>>),
    ThreadName {
        key: u64,
        tid: i32,
        name: String,
    },
    /// The thread is gone (a confirmed thread list lacks it, or its thread state now
    /// belongs to another thread); `time_ns` is when that was read.
    ThreadEnded {
        key: u64,
        time_ns: u64,
    },
}

/// Why a thread sample could not be kept: every loss is counted under one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loss {
    /// the top frame pointer changed while the thread's group was copied, every attempt
    Moved = 0,
    /// the walk needed frames the copy did not hold, every attempt
    Incomplete = 1,
    /// what was copied is not a stack (a frame freed or reused while it was read)
    Torn = 2,
    /// the chain ended at a frame that cannot be a thread's outermost one
    Truncated = 3,
}

pub const LOSS_NAMES: [&str; 4] = ["moved", "incomplete", "torn", "truncated"];

/// Counters shared with the progress line and the summary.
#[derive(Default)]
pub struct Stats {
    pub ticks: AtomicU64,
    pub missed_ticks: AtomicU64,
    pub longest_lag_ns: AtomicU64,
    /// ticks whose batched read failed as a whole (the target exec'ing or exiting)
    pub failed_ticks: AtomicU64,
    /// samples the consumer could not take in time (the channel was full)
    pub dropped: AtomicU64,
    pub started_ns: AtomicU64,
    pub last_sample_ns: AtomicU64,
    /// one per live thread per tick
    pub thread_samples: AtomicU64,
    /// thread samples kept after one or more immediate re-reads
    pub retried: AtomicU64,
    /// thread samples of threads that had not run since their last stack was read
    pub asleep: AtomicU64,
    /// of those, the ones the GIL's switch count proved, sparing their schedstat read
    pub asleep_by_gil: AtomicU64,
    /// thread samples whose generator frames' callers were named from the copy
    /// (python/resume.rs)
    pub inferred: AtomicU64,
    /// ticks where the thread list changed while it was read twice in a row
    pub list_raced: AtomicU64,
    pub lost: [AtomicU64; 4],
    /// thread samples read with the thread stopped, after every quick re-read tore
    /// (src/pausing.rs), and the time threads spent stopped in all
    pub paused: AtomicU64,
    pub stopped_ns: AtomicU64,
    /// thread samples lost because the stop budget was spent: every quick re-read tore,
    /// and no stop was allowed
    pub over_budget: AtomicU64,
    pub signals_handed_back: AtomicU64,
    /// whether threads may be stopped, and why not (set once the sampler knows)
    pub pausing: std::sync::Mutex<String>,
    /// the sampling thread's priority, as src/sampling_thread.rs set it
    pub sampler_priority: std::sync::Mutex<String>,
}

impl Stats {
    pub fn lost_total(&self) -> u64 {
        self.lost.iter().map(|l| l.load(Ordering::Relaxed)).sum()
    }

    pub fn set_sampler_priority(&self, described: String) {
        *self.sampler_priority.lock().unwrap_or_else(|e| e.into_inner()) = described;
    }
}

/// (thread_id, native_thread_id): what a thread state says about whose it is.
type Ids = (u64, i32);

/// What we remember of a thread between ticks.
enum Thread {
    /// Listed, but not (yet) known as an OS thread: not started, or ids not settled.
    Unresolved {
        ids: Ids,
    },
    Live(Box<Live>),
}

struct Live {
    ids: Ids,
    tid: i32,
    named: bool,
    /// last stack, root first
    prev: Vec<StackFrame>,
    plan: Plan,
    /// the outermost frame of the last stack kept, and a different one seen once since
    root: u64,
    new_root: u64,
    /// when the copy the last stack kept came from began (0: none yet)
    read_ns: u64,
    /// this tick: the thread has not run since before that copy, so `prev` is still its
    /// stack and nothing of it is read
    asleep: bool,
    /// its state as last read while it was asleep (empty: none), and whether this tick's
    /// first read takes the state from it instead of the process (the GIL proves the
    /// thread has not run since: src/activity.rs, `replays`)
    state_copy: Vec<u8>,
    given: bool,
    /// the Thread object `Thread._bootstrap` runs for, from the copy of its outermost
    /// frame while it has no name (0: none seen), and the outermost frame looked at for it
    bootstrap_self: u64,
    bootstrap_root: u64,
    /// what this tick's first and last read that failed found had ended
    ends: [StackEnd; 2],
}

/// One interpreter's thread list.
struct Listed {
    interp: u64,
    /// every state linked, in list order: what a tick's copy is compared with
    /// (and whose thread each says it is: a state made for a new thread carries its
    /// creator's id until the thread runs, and is only sampled from then on)
    raw: Vec<(u64, u64)>,
    /// one state per thread (threads::one_per_thread): what is sampled
    states: Vec<u64>,
}

impl Plan {
    fn see_cframe(&mut self, c: u64) {
        if c == 0 {
            return;
        }
        let (lo, hi) = self.cframes;
        self.cframes =
            if lo == 0 || c.abs_diff(lo).max(c.abs_diff(hi)) > CFRAME_WINDOW { (c, c) } else { (lo.min(c), hi.max(c)) };
    }
}

/// What to copy for a thread next time.
#[derive(Default)]
struct Plan {
    /// the C stack around the CFrames that held the top frame pointer lately (3.11-3.12:
    /// a call through C enters a new evaluation loop with a CFrame of its own, so the
    /// thread state's CFrame changes many times a millisecond in real programs)
    cframes: (u64, u64),
    /// the newest data-stack chunk and how much of it to read (3.11+)
    chunk: u64,
    chunk_len: usize,
    /// the chunk's size, from its header (0: not read yet)
    chunk_size: usize,
    /// how far the data stack reached at the last walk, and how much more to read beyond
    /// it: twice the latest growth, decaying, so a thread sleeping in one place costs
    /// little and a deepening recursion is read whole
    used: usize,
    slack: usize,
    /// frames outside that window: older chunks, generators, C-stack entry frames,
    /// frame objects (before 3.11)
    frames: Vec<u64>,
    /// the frame under the top at the last walk, and this tick's second read of what
    /// only its own code writes (`stack::own_state_span`): a caller that ran while the
    /// group was copied, with the top pointer back where it was, is a stack torn across
    /// two calls at one address
    caller: u64,
    check_caller: Option<usize>,
    /// this tick's second reads of the top frame pointer (Prefetch checks)
    check_top: Option<usize>,
    check_cframe: Option<usize>,
}

enum Attempt {
    /// kept; `inferred`: generator frames' callers were named from the copy
    Kept {
        inferred: bool,
    },
    /// kept: the thread had not run since its last stack was read
    Asleep,
    /// not sampled this tick: not resolved yet, or just ended
    Skipped,
    Retry(Loss),
}

/// Below this interval sleeping costs more than it saves: spin to the deadline.
const SPIN_BELOW_NS: u64 = 60_000;
/// Bytes of a data-stack chunk to read beyond the deepest frame seen last time.
const CHUNK_SLACK_FIRST: usize = 4096;
const CHUNK_SLACK_MIN: usize = 512;
const CHUNK_SLACK_MAX: usize = 16 << 10;
const CHUNK_FIRST_READ: usize = 4096;
/// Bytes read after a frame outside the data-stack window: its first local slots (32),
/// which the call proofs read.
const LOCALS_READ: u64 = 256;
/// Frames this close together are read as one piece (cheaper than two iovecs).
const MERGE_GAP: u64 = 512;
const MAX_SPAN: u64 = 64 << 10;
/// How many frames a thread may have pushed while its group was copied, for the
/// sampler to follow them from the process to where the copy's stack began.
const CALLED_HOPS: usize = 6;
/// The most frames outside the chunk a plan names (a walk cut short adds what it
/// learnt to what the plan held).
const MAX_PLANNED_FRAMES: usize = 1024;
/// Threads without a name are looked up again this long after a lookup that named some
/// (or after a new thread), doubling up to the maximum while none gets named.
const NAME_RETRY_MIN_NS: u64 = 1_000_000;
const NAME_RETRY_MAX_NS: u64 = 100_000_000;
/// Reads one name lookup may make (finding `_active` in a program of ~3000 modules takes
/// about as many; a torn table claiming a million entries would take a read each).
const NAME_READS: u32 = 8192;
/// How often threads listed but not yet matched to an OS thread are looked up again.
const RESOLVE_EVERY_NS: u64 = 10_000_000;
/// The most C stack read to catch a thread's CFrame wherever it is next.
const CFRAME_WINDOW: u64 = 12 << 10;
/// Reads of one thread per tick (the first included) before it is stopped for a read
/// (src/pausing.rs) or its sample is given up: all of them, at any rate. A re-read costs
/// the sampler's time, a stop the target's. (Up to 2026-11-30 only 4 were certain and
/// the rest had to fit in half an interval: pylint at 10 kHz, where 13 % of the threads'
/// samples tore 4 times, lost 5.7-7.0 % of them with the stop budget spent; with all 8,
/// 0.1-0.2 %, in half the time stopped, for 5-8 % more ticks missed.)
const ATTEMPTS: usize = 8;
/// Reads `prime` may make before the first tick (a few ms; a stack it cannot finish
/// within them, 1000 threads or a recursion 50,000 deep, is read as before, by the ticks).
const PRIME_READS: u32 = 20_000;
/// A thread asleep since its stack was read is read anyway this often (its stack cannot
/// have changed; the read is a check that costs nothing at this rate).
const ASLEEP_REREAD_NS: u64 = 100_000_000;

pub struct Sampler<M: ReadMem = Memory> {
    pub pid: i32,
    mem: M,
    target: Target,
    codes: CodeCache,
    ids: ThreadIds,
    /// the interpreters and their threads, as last read
    interps: Vec<Listed>,
    threads: AddrMap<u64, Thread>,
    /// threads we know that the current list lacks, waiting for a confirmed list to end them
    orphans: bool,
    pf: Prefetch,
    tstate_len: usize,
    walk: Walk,
    /// scratch: threads to read this round, and those to read again
    pending: Vec<u64>,
    failed: Vec<(u64, Loss)>,
    /// scratch for planning: frame addresses to read, sorted
    spans: Vec<u64>,
    /// cached code objects met in new frames this tick: (index in batch.frames, address),
    /// checked together in one read at the end of the tick
    unchecked: Vec<(usize, u64)>,
    pf_codes: Prefetch,
    /// when the last fetch started and ended
    read_span: (u64, u64),
    /// a plan's frames while `learn` makes the next one
    kept_frames: Vec<u64>,
    /// blocks of the target the current walk read beside its copy
    late_blocks: RefCell<LateBlocks>,
    /// scratch for the walk from the second top pointer
    walk_after: Walk,
    /// when threads still without a name are looked up again, and how long after the
    /// last lookup that found none
    next_name_scan_ns: u64,
    name_retry_ns: u64,
    /// each interpreter's `threading._active`, once found, and scratch for the idents of
    /// threads without a name yet
    active_dicts: Vec<(u64, ActiveDict)>,
    unnamed_idents: Vec<u64>,
    /// threads whose `Thread._bootstrap` frame gave their Thread object this tick
    to_name: Vec<u64>,
    /// set when a thread's ids changed: the lists are read afresh next tick
    stale_list: bool,
    /// when the lists were last read afresh (threads not resolved yet are tried again
    /// every RESOLVE_EVERY_NS)
    last_list_ns: u64,
    new_threads: bool,
    recycled: Option<Receiver<SampleBatch>>,
    /// with subinterpreters: each thread state's interpreter rank, and the joiner that
    /// makes one stack of the states one OS thread has in several interpreters
    ranks: HashMap<u64, Rank>,
    joiner: Joiner,
    activity: ActivityReader,
    /// stops threads whose quick re-reads all tore (None: never)
    pauser: Option<Pauser>,
    /// a batch was dropped (the consumer fell behind): it may lack the last stack of a
    /// thread now asleep, so the next batch that gets through carries every stack
    resend_stacks: bool,
    /// this tick, a thread asleep since its last sample is sent as `same_as_last`
    /// (never with subinterpreters: the joiner needs every stack)
    send_same: bool,
    /// threads taken as asleep before the batch whose sleep the GIL did not confirm and
    /// which ran: their stacks are read in the re-read of this tick (OS ids, then states)
    woke_tids: Vec<i32>,
    woke: Vec<u64>,
    /// the read under way may take the states of threads the GIL proves asleep from
    /// their copies (only a tick's first read: the proof is checked against it)
    give_states: bool,
}

/// Waits for the next tick of a clock at a fixed rate (`interval_ns` > 0).
pub(crate) fn wait_for_next_tick(deadline: &mut u64, interval_ns: u64, end_ns: Option<u64>, stats: &Stats) {
    *deadline += interval_ns;
    let after = now_ns();
    if after > *deadline {
        // Behind: count the ticks that cannot be taken on time and skip them, rather
        // than bursting to catch up.
        let lag = after - *deadline;
        stats.longest_lag_ns.fetch_max(lag, Ordering::Relaxed);
        let missed = lag / interval_ns;
        if missed > 0 {
            stats.missed_ticks.fetch_add(missed, Ordering::Relaxed);
            *deadline += missed * interval_ns;
        }
    }
    if let Some(e) = end_ns {
        *deadline = (*deadline).min(e);
    }
    if interval_ns < SPIN_BELOW_NS {
        while now_ns() < *deadline {
            std::hint::spin_loop();
        }
    } else {
        // An absolute deadline: late wake-ups do not accumulate, and an idle sampler
        // costs nothing. (Each sample is stamped when it is read, so a late wake-up
        // moves a sample, it does not mislabel it.)
        sleep_until_ns(*deadline);
    }
}

pub enum StopReason {
    Requested,
    TargetExited,
    ConsumerGone,
    Failed(String),
}

/// Reads of the process one walk may make for frames its copy lacks.
const PROCESS_READS: u32 = 64;
/// ... and one walk that only learns where they are. Pylint's chains alternate data-stack
/// frames, generator frames on the heap and C-stack entry frames: its learning walks read
/// 100-220 frames from the process. A deeper stack outside the copy is planned over
/// several rounds.
const LEARNING_READS: u32 = 256;

/// The reads a walk that may be kept makes, of the thread `plan` is of. A stack with more
/// frames outside its data-stack chunk than a plan names (older chunks of a deep
/// recursion) has the rest read from the process at every tick: that walk is not cut short.
fn sample_budget(plan: &Plan) -> u32 {
    let full = plan.frames.len() >= MAX_PLANNED_FRAMES;
    if full {
        stack::MAX_DEPTH as u32
    } else {
        PROCESS_READS
    }
}

/// Code objects for the walk: the cache, or a read of the process for a new one.
fn lookup<'a>(
    codes: &'a mut CodeCache,
    mem: &'a dyn ReadMem,
    t: &'a Target,
) -> impl FnMut(u64) -> ReadResult<CodeFacts> + 'a {
    move |code| match codes.cached(code) {
        Some(info) => Ok(info.facts()),
        None => Ok(codes.get(mem, &t.layout, t.code_type, code)?.facts()),
    }
}

impl<M: ReadMem> Sampler<M> {
    pub fn new(pid: i32, mem: M, target: Target, codes: CodeCache, ids: ThreadIds) -> Sampler<M> {
        Sampler {
            tstate_len: threads::tstate_read_len(&target.layout),
            pid,
            mem,
            target,
            codes,
            ids,
            interps: Vec::new(),
            threads: AddrMap::default(),
            orphans: false,
            pf: Prefetch::default(),
            walk: Walk::default(),
            pending: Vec::new(),
            failed: Vec::new(),
            spans: Vec::new(),
            unchecked: Vec::new(),
            pf_codes: Prefetch::default(),
            read_span: (0, 0),
            kept_frames: Vec::new(),
            late_blocks: RefCell::default(),
            walk_after: Walk::default(),
            next_name_scan_ns: 0,
            name_retry_ns: NAME_RETRY_MIN_NS,
            active_dicts: Vec::new(),
            unnamed_idents: Vec::new(),
            to_name: Vec::new(),
            stale_list: true,
            last_list_ns: 0,
            new_threads: false,
            recycled: None,
            ranks: HashMap::new(),
            joiner: Joiner::default(),
            activity: ActivityReader::new(pid),
            pauser: None,
            resend_stacks: false,
            send_same: false,
            woke_tids: Vec::new(),
            woke: Vec::new(),
            give_states: false,
        }
    }

    /// Lets the sampler stop a thread whose quick re-reads all tore (src/pausing.rs).
    pub fn pause_with(&mut self, pauser: Pauser) {
        self.pauser = Some(pauser);
    }

    /// Batches the consumer is done with, to be filled again.
    pub fn recycle_from(&mut self, rx: Receiver<SampleBatch>) {
        self.recycled = Some(rx);
    }

    /// Reads every thread's code objects once, before the first tick. Cold, the first
    /// tick's walks read each code object from the process as they meet it (4-6 ms for
    /// a flask worker pool): the threads it then had to read again had moved on, and
    /// their first samples came that much later than the others', so the calls they
    /// were in seemed to begin there.
    pub fn prime(&mut self) {
        let budget = ReadBudget::new(&self.mem, PRIME_READS);
        let mem: &dyn ReadMem = &budget;
        let t = &self.target;
        let Ok(interps) = threads::interpreters(mem, t) else {
            return;
        };
        let mut walk = Walk::default();
        for interp in interps {
            let Ok(states) = threads::thread_states(mem, t, interp) else {
                continue;
            };
            for s in states {
                if let Ok(top) = stack::top_frame(mem, &t.layout, s.addr) {
                    let _ = stack::walk(mem, &t.layout, top.frame, &mut lookup(&mut self.codes, mem, t), &mut walk);
                }
            }
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
        self.prime();
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
                Ok(true) => {}
                Ok(false) => return StopReason::ConsumerGone,
                // The kernel refuses reads for a moment while the target execs, too: only
                // a target that is really gone (or a zombie) ends the capture.
                Err(ReadError::Gone | ReadError::Fault | ReadError::Missing) => {
                    stats.failed_ticks.fetch_add(1, Ordering::Relaxed);
                    if !crate::process::is_alive(self.pid) {
                        return StopReason::TargetExited;
                    }
                }
                Err(e) => return StopReason::Failed(e.into_error(self.pid).to_string()),
            }
            stats.ticks.fetch_add(1, Ordering::Relaxed);
            if interval_ns == 0 {
                continue;
            }
            wait_for_next_tick(&mut deadline, interval_ns, end_ns, stats);
        }
    }

    /// One tick (also for a clock that drives several samplers: src/fleet/clock.rs); false
    /// when the consumer has gone away.
    pub fn tick(&mut self, tx: &Sender<Message>, stats: &Stats) -> ReadResult<bool> {
        let mut batch = self.recycled.as_ref().and_then(|r| r.try_recv().ok()).unwrap_or_default();
        batch.threads.clear();
        batch.frames.clear();
        self.new_threads = false;
        let given = self.note_asleep();
        self.give_states = given;
        let mut time = self.read_everything()?;
        self.give_states = false;
        // (the GIL was read in the same batched read as the stacks' first attempt)
        self.note_gil();
        if self.confirm_asleep(stats) && given {
            // A state taken from its copy may be stale (a thread next to it in the list
            // may have gone): read them all, and keep what this read finds.
            for th in self.threads.values_mut() {
                if let Thread::Live(live) = th {
                    live.given = false;
                }
            }
            time = self.read_everything()?;
            self.note_gil();
        }
        if time.saturating_sub(self.last_list_ns) > RESOLVE_EVERY_NS
            && self.threads.values().any(|t| matches!(t, Thread::Unresolved { .. }))
        {
            self.stale_list = true;
        }
        let listed = !self.stale_list && self.list_matches();
        if !listed || self.orphans {
            if !listed {
                self.relist(tx, time)?;
                self.last_list_ns = time;
                time = self.read_everything()?;
                self.note_gil();
            }
            // A list read directly and then found again in a fresh copy is the truth:
            // only then do threads missing from it end.
            if self.list_matches() {
                self.end_orphans(tx, time);
            } else {
                stats.list_raced.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.stale_list = false;
        self.send_same = !self.resend_stacks && self.interps.len() <= 1;
        batch.time_ns = time;

        let mut pending = std::mem::take(&mut self.pending);
        pending.clear();
        pending.extend(self.interps.iter().flat_map(|li| li.states.iter().copied()));
        let live = pending.iter().filter(|k| matches!(self.threads.get(k), Some(Thread::Live(_)))).count();
        stats.thread_samples.fetch_add(live as u64, Ordering::Relaxed);
        let mut failed = std::mem::take(&mut self.failed);
        failed.clear();
        // (tests of what stopping does to a target: every thread read stopped)
        let quick = if self.pauser.as_mut().is_some_and(|p| p.read_all_stopped()) {
            failed.extend(pending.iter().map(|&k| (k, Loss::Moved)));
            0
        } else {
            ATTEMPTS
        };
        for attempt in 0..quick {
            failed.clear();
            for &key in &pending {
                if attempt == 0 && !self.woke.is_empty() && self.woke.contains(&key) {
                    failed.push((key, Loss::Incomplete));
                    continue;
                }
                match self.attempt(key, time, &mut batch, tx, false)? {
                    Attempt::Kept { inferred } => {
                        if attempt > 0 {
                            stats.retried.fetch_add(1, Ordering::Relaxed);
                        }
                        if inferred {
                            stats.inferred.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Attempt::Asleep => {
                        stats.asleep.fetch_add(1, Ordering::Relaxed);
                    }
                    Attempt::Skipped => {}
                    Attempt::Retry(why) => {
                        self.note_stack_end(key);
                        failed.push((key, why));
                    }
                }
            }
            if failed.is_empty() || attempt + 1 == ATTEMPTS {
                break;
            }
            // Read again at once, only the threads that need it: first their states, to
            // know where their top pointer and data stack are now, then their groups.
            pending.clear();
            pending.extend(failed.iter().map(|f| f.0));
            self.pf.clear();
            for &key in &pending {
                self.want_thread(key);
            }
            self.fetch()?;
            for &key in &pending {
                self.learn(key);
            }
            self.pf.clear();
            for &key in &pending {
                self.want_thread(key);
            }
            time = self.fetch()?;
        }
        self.read_stopped(&mut failed, &mut batch, tx, stats)?;
        for &(key, why) in &failed {
            stats.lost[why as usize].fetch_add(1, Ordering::Relaxed);
            if let Some(Thread::Live(l)) = self.threads.get(&key) {
                batch.threads.push(ThreadSample::new(key, l.tid, time, None, false));
            }
        }
        self.pending = pending;
        self.failed = failed;

        self.check_codes(&mut batch)?;
        for t in batch.threads.iter_mut() {
            if let Some(Thread::Live(l)) = self.threads.get_mut(&t.key) {
                t.ends = std::mem::take(&mut l.ends);
            }
        }
        // What this tick saw is what the next one compares with.
        for t in &batch.threads {
            if let (Some(stack), Some(Thread::Live(l))) = (batch.stack(t), self.threads.get_mut(&t.key)) {
                l.prev.clear();
                l.prev.extend_from_slice(stack);
            }
        }
        if self.interps.len() > 1 {
            let ranks = &self.ranks;
            self.joiner.join(&mut batch, |key| ranks.get(&key).copied().unwrap_or(0));
        }
        batch.activity.clear();
        for t in batch.threads.iter_mut() {
            let read = t.frames.is_some() || t.same_as_last;
            let a = if read { self.activity.of(t.key, t.tid, t.time_ns) } else { Activity::default() };
            if read {
                let off = a.on_cpu() == Some(false) && a.holds_gil() == Some(false);
                t.runs = self.activity.runs(t.tid, off);
            }
            batch.activity.push(a);
        }
        self.activity.end_tick();
        let fresh = self.codes.take_new();
        if !fresh.is_empty() {
            // Names must reach the consumer before the samples that use them: block.
            let _ = tx.send(Message::Codes(fresh));
        }
        self.scan_names(tx, now_ns());
        stats.last_sample_ns.store(batch.time_ns, Ordering::Relaxed);
        match tx.try_send(Message::Sample(batch)) {
            Ok(()) => {
                self.resend_stacks = false;
                Ok(true)
            }
            Err(TrySendError::Full(_)) => {
                self.resend_stacks = true;
                stats.dropped.fetch_add(1, Ordering::Relaxed);
                Ok(true)
            }
            Err(TrySendError::Disconnected(_)) => Ok(false),
        }
    }

    /// Reads again, each stopped for the moment of the read, the threads whose every
    /// quick re-read tore (src/pausing.rs); those kept leave `failed`.
    fn read_stopped(
        &mut self,
        failed: &mut Vec<(u64, Loss)>,
        batch: &mut SampleBatch,
        tx: &Sender<Message>,
        stats: &Stats,
    ) -> ReadResult<()> {
        let Some(mut pauser) = self.pauser.take() else {
            return Ok(());
        };
        pauser.tend();
        let (stopped_before, signals_before) = (pauser.stopped_ns(), pauser.signals_handed_back);
        let mut i = 0;
        while i < failed.len() {
            let key = failed[i].0;
            let tid = match self.threads.get(&key) {
                Some(Thread::Live(l)) if l.tid > 0 => l.tid,
                _ => {
                    i += 1;
                    continue;
                }
            };
            if !pauser.allowed() {
                // (the rest of `failed` is lost for want of budget)
                stats.over_budget.fetch_add((failed.len() - i) as u64, Ordering::Relaxed);
                break;
            }
            self.activity.note_held(tid);
            let Some(stop) = pauser.stop(tid) else {
                if !pauser.holds(tid) {
                    self.activity.note_let_go(tid);
                }
                i += 1;
                continue;
            };
            // Where its stack is now, then the stack, while it cannot move.
            // Read with the plan the last quick re-read made: the stack is most often
            // where it was then. Only if the copy lacks part of it (the thread moved to
            // another chunk or evaluation loop since) learn where it is and read again.
            // (One read instead of two: stops went from 74 to 65 us on average, pylint
            // under VizTracer at 10 kHz, so 14 % more of them fit in the budget.)
            let read = (|| {
                self.pf.clear();
                self.want_thread(key);
                let time = self.fetch()?;
                match self.attempt(key, time, batch, tx, true)? {
                    Attempt::Retry(Loss::Incomplete) => {}
                    done => return Ok(done),
                }
                self.learn(key);
                self.pf.clear();
                self.want_thread(key);
                let time = self.fetch()?;
                self.attempt(key, time, batch, tx, true)
            })();
            pauser.resume(stop);
            self.activity.note_let_go(tid);
            let read = match read {
                Ok(r) => r,
                Err(e) => {
                    // (the pauser still holds threads that have not stopped yet)
                    self.pauser = Some(pauser);
                    return Err(e);
                }
            };
            match read {
                Attempt::Kept { inferred } => {
                    stats.paused.fetch_add(1, Ordering::Relaxed);
                    if inferred {
                        stats.inferred.fetch_add(1, Ordering::Relaxed);
                    }
                    failed.swap_remove(i);
                }
                Attempt::Asleep | Attempt::Skipped => {
                    failed.swap_remove(i);
                }
                Attempt::Retry(why) => {
                    failed[i].1 = why;
                    i += 1;
                }
            }
        }
        for tid in pauser.let_go.drain(..) {
            self.activity.note_let_go(tid);
        }
        // (several samplers may share the counters: src/fleet/)
        stats.stopped_ns.fetch_add(pauser.stopped_ns() - stopped_before, Ordering::Relaxed);
        stats.signals_handed_back.fetch_add(pauser.signals_handed_back - signals_before, Ordering::Relaxed);
        if let Some(why) = &pauser.refused {
            if let Ok(mut p) = stats.pausing.lock() {
                if p.as_str() != why {
                    *p = why.clone();
                }
            }
        }
        self.pauser = Some(pauser);
        Ok(())
    }

    /// Which threads have not run since their last stack was read: those are not read
    /// again (docs/ARCHITECTURE.md, "Sleeping threads"). At least every
    /// `ASLEEP_REREAD_NS` a sleeping thread is read anyway. True when the state of any
    /// is to be taken from its copy (`Live::given`).
    fn note_asleep(&mut self) -> bool {
        let (target, interps) = (&self.target, &self.interps);
        self.activity
            .set_gil_spans(interps.iter().filter_map(|li| crate::python::threads::gil_span(target, li.interp)));
        let now = now_ns();
        let mut given = false;
        for (&key, th) in self.threads.iter_mut() {
            if let Thread::Live(live) = th {
                live.asleep = live.read_ns != 0
                    && now.saturating_sub(live.read_ns) < ASLEEP_REREAD_NS
                    && self.activity.asleep_since(live.tid, key).is_some_and(|since| since < live.read_ns);
                live.given = live.asleep && !live.state_copy.is_empty() && self.activity.replayed(live.tid);
                given |= live.given;
            }
        }
        given
    }

    fn note_gil(&mut self) {
        self.activity.note_gil(&self.pf, &self.target, &mut self.interps.iter().map(|li| li.interp));
    }

    /// Checks the sleeps taken on the GIL's word before the batch (src/activity.rs,
    /// `replays`) against the GIL the batch read. A thread that ran after all was not in
    /// the batch: it is read in the tick's re-read. True when the GIL moved for any.
    fn confirm_asleep(&mut self, stats: &Stats) -> bool {
        let proved = self.activity.proved_by_gil;
        self.woke.clear();
        self.woke_tids.clear();
        let moved = self.activity.confirm_replays(&mut self.woke_tids);
        stats.asleep_by_gil.fetch_add(self.activity.proved_by_gil - proved, Ordering::Relaxed);
        if self.woke_tids.is_empty() {
            return moved;
        }
        for (&key, th) in self.threads.iter_mut() {
            if let Thread::Live(live) = th {
                if live.asleep && self.woke_tids.contains(&live.tid) {
                    live.asleep = false;
                    self.woke.push(key);
                }
            }
        }
        moved
    }

    /// One batched read of the thread lists and every listed thread; returns its time.
    fn read_everything(&mut self) -> ReadResult<u64> {
        self.pf.clear();
        let l = &self.target.layout;
        self.pf.want(self.target.runtime + l.runtime.interpreters_head, 8);
        ActivityReader::want_gil(&mut self.pf, &self.target, None);
        for li in &self.interps {
            self.pf.want(li.interp + l.interp.next, 8);
            self.pf.want(li.interp + l.interp.threads_head, 8);
            ActivityReader::want_gil(&mut self.pf, &self.target, Some(li.interp));
        }
        for i in 0..self.interps.len() {
            for j in 0..self.interps[i].raw.len() {
                // (a duplicate state of a thread being created is read for the list check)
                self.want_thread(self.interps[i].raw[j].0);
            }
        }
        self.fetch()
    }

    /// Reads what was asked for; the time the read describes (its midpoint). Its start
    /// and end are kept for stacks known to describe one end of it.
    fn fetch(&mut self) -> ReadResult<u64> {
        let t0 = now_ns();
        self.pf.fetch(&self.mem)?;
        let t1 = now_ns();
        self.read_span = (t0, t1);
        Ok(t0 + (t1 - t0) / 2)
    }

    /// Asks for one thread's group: its state, its frames, then its top pointer again.
    fn want_thread(&mut self, key: u64) {
        let l = &self.target.layout;
        let Some(Thread::Live(live)) = self.threads.get_mut(&key) else {
            self.pf.want(key, self.tstate_len);
            return;
        };
        if live.asleep && live.given && self.give_states {
            self.pf.give(key, &live.state_copy);
            return;
        }
        self.pf.want(key, self.tstate_len);
        if live.asleep {
            return; // its stack is not read this tick
        }
        let plan = &mut live.plan;
        let cframe_field = l.tstate.cframe_current_frame.filter(|_| l.model.frame_via_cframe);
        let (lo, hi) = plan.cframes;
        let cframes_len = (hi - lo) as usize + cframe_field.unwrap_or(0) as usize + 8;
        if cframe_field.is_some() {
            self.pf.want(lo, cframes_len);
        }
        if plan.chunk != 0 {
            self.pf.want(plan.chunk, plan.chunk_len);
        }
        // Frames outside the chunk window, merged where they are close: one piece per
        // region, not per frame.
        let frame_len = l.frame.localsplus.unwrap_or(l.frame.size).max(l.frame.size) + LOCALS_READ;
        self.spans.clear();
        self.spans.extend_from_slice(&plan.frames);
        self.spans.sort_unstable();
        // (and the bytes before a frame: a generator's state, python/stack.rs)
        let lead = if l.frame_state_before().is_some() { FRAME_LEAD } else { 0 };
        let mut i = 0;
        while i < self.spans.len() {
            let start = self.spans[i];
            let mut end = start + frame_len;
            i += 1;
            while i < self.spans.len()
                && self.spans[i] <= end + MERGE_GAP
                && self.spans[i] + frame_len - start <= MAX_SPAN
            {
                end = end.max(self.spans[i] + frame_len);
                i += 1;
            }
            self.pf.want(start - lead, (end - start + lead) as usize);
        }
        plan.check_caller = match stack::own_state_span(l) {
            Some((at, len)) if plan.caller != 0 => self.pf.want_check(plan.caller + at, len),
            _ => None,
        };
        plan.check_top = self.pf.want_check(key + l.tstate.frame, 8);
        plan.check_cframe = match cframe_field {
            Some(_) => self.pf.want_check(lo, cframes_len),
            None => None,
        };
    }

    /// Notes what the copy an attempt that kept nothing read says had ended: where the
    /// thread's data stack ended (its state is copied whole, so its chunk and top are of
    /// one moment), and the outermost generator of its last stack that was not running.
    fn note_stack_end(&mut self, key: u64) {
        let l = &self.target.layout;
        let (Some(ts), Some(Thread::Live(live))) = (self.pf.get(key, self.tstate_len), self.threads.get_mut(&key))
        else {
            return;
        };
        // (a state served from an earlier copy is of an earlier moment)
        if live.asleep {
            return;
        }
        let (chunk, top) = data_stack(l, ts);
        let sized = chunk != 0 && chunk == live.plan.chunk && live.plan.chunk_size != 0;
        let (lo, hi) = if sized { (chunk, chunk + live.plan.chunk_size as u64) } else { (0, 0) };
        // A generator's frame on the stack is running: one the copy shows otherwise had
        // ended that resumption (or the generator: its memory was reused), and its
        // callees with it.
        let mut head: stack::HeadBuf = [0; 128 + FRAME_LEAD as usize];
        let idle = live.prev.iter().filter(|f| f.frame < lo || f.frame >= hi).find_map(|f| {
            let (b, state) = stack::read_head(&self.pf, l, f.frame, &mut head).ok()?;
            stack::generator_not_running(l, l.frame.owner.map(|o| b.u8_at(o)), state).then_some(f.frame)
        });
        if !sized && idle.is_none() {
            return;
        }
        let end = StackEnd {
            from_ns: self.read_span.0,
            to_ns: self.read_span.1.max(1),
            lo,
            hi,
            top: if sized { top } else { 0 },
            idle: idle.unwrap_or(0),
        };
        if !live.ends[0].is_set() {
            live.ends[0] = end;
        } else {
            live.ends[1] = end;
        }
    }

    /// Learns where a thread's stack is now from a fresh copy of its group, reading what
    /// the copy lacks directly (the result is not kept: it only plans the next read).
    fn learn(&mut self, key: u64) {
        let Sampler { pf, threads, target: t, codes, walk, mem, tstate_len, kept_frames, late_blocks, .. } = self;
        let (mem, l): (&dyn ReadMem, _) = (mem, &t.layout);
        let (Some(ts), Some(Thread::Live(live))) = (pf.get(key, *tstate_len), threads.get_mut(&key)) else {
            return;
        };
        let (chunk, stack_top) = plan_state(&mut live.plan, l, ts);
        let behind = CopyThenProcess::new(pf, mem, LEARNING_READS, late_blocks);
        walk.visited.clear();
        // A data-stack chunk the copy did not hold (the thread moved to a new one): the
        // thread state says where its frames end, so the next read copies it whole; a
        // walk now would read each of its frames from the process.
        let new_chunk = chunk != 0 && chunk != live.plan.chunk;
        let walked = if new_chunk {
            Err(ReadError::Missing)
        } else {
            stack::top_frame(&behind, l, key)
                .and_then(|top| stack::walk(&behind, l, top.frame, &mut lookup(codes, mem, t), walk))
        };
        // A walk cut short (the thread moved while it read) knows only the top of the
        // stack: what the plan held for the rest stays in it.
        kept_frames.clear();
        if walked.is_err() {
            kept_frames.extend_from_slice(&live.plan.frames);
        }
        replan(&mut live.plan, l, &behind, chunk, stack_top, walk);
        if walked.is_err() {
            let plan = &mut live.plan;
            plan.frames.extend_from_slice(kept_frames);
            plan.frames.sort_unstable();
            plan.frames.dedup();
            plan.frames.truncate(MAX_PLANNED_FRAMES);
        }
    }

    /// Whether the copy holds the same interpreters and thread lists as last read.
    fn list_matches(&self) -> bool {
        let t = &self.target;
        let mut n = 0;
        let mut same = true;
        let walked = threads::for_each_interpreter(&self.pf, t, |interp| {
            let Some(known) = self.interps.get(n).filter(|k| k.interp == interp) else {
                same = false;
                return false;
            };
            n += 1;
            let mut k = 0;
            let states = threads::for_each_state(&self.pf, t, interp, |s| {
                same &= known.raw.get(k) == Some(&(s.addr, s.thread_id));
                k += 1;
                same
            });
            same &= states.is_ok() && k == known.raw.len();
            same
        });
        walked.is_ok() && same && n == self.interps.len()
    }

    /// Reads the interpreters and thread lists afresh (threads came or went). Threads
    /// the new list lacks become orphans: they end once a confirmed list lacks them too.
    fn relist(&mut self, tx: &Sender<Message>, time: u64) -> ReadResult<()> {
        let mem: &dyn ReadMem = &self.mem;
        let t = &self.target;
        let mut interps = Vec::new();
        let Ok(found) = threads::interpreters(mem, t) else {
            return Ok(());
        };
        for interp in found {
            // A list torn by a thread coming or going: keep last tick's list for now.
            let Ok(raw) = threads::thread_states_raw(mem, t, interp) else {
                return Ok(());
            };
            let raw_addrs: Vec<(u64, u64)> = raw.iter().map(|s| (s.addr, s.thread_id)).collect();
            let states = threads::one_per_thread(raw);
            let unsettled = states.iter().any(|s| match self.threads.get(&s.addr) {
                Some(Thread::Live(l)) => l.ids != (s.thread_id, s.native_id.unwrap_or(0)),
                _ => true,
            });
            if unsettled {
                let tids = self.ids.resolve(mem, &states, false);
                for (s, tid) in states.iter().zip(tids) {
                    let ids = (s.thread_id, s.native_id.unwrap_or(0));
                    if let Some(Thread::Live(l)) = self.threads.get(&s.addr) {
                        if l.ids == ids {
                            continue;
                        }
                        // its state now belongs to another thread: the old one is gone
                        let _ = tx.send(Message::ThreadEnded { key: s.addr, time_ns: time });
                    }
                    let entry = match tid {
                        Some(tid) => {
                            self.new_threads = true;
                            Thread::Live(Box::new(Live {
                                ids,
                                tid,
                                named: false,
                                prev: Vec::new(),
                                plan: first_plan(mem, &t.layout, s.addr, self.tstate_len),
                                root: 0,
                                new_root: 0,
                                read_ns: 0,
                                asleep: false,
                                state_copy: Vec::new(),
                                given: false,
                                bootstrap_self: 0,
                                bootstrap_root: 0,
                                ends: Default::default(),
                            }))
                        }
                        None => Thread::Unresolved { ids },
                    };
                    self.threads.insert(s.addr, entry);
                }
            }
            interps.push(Listed { interp, raw: raw_addrs, states: states.iter().map(|s| s.addr).collect() });
        }
        self.interps = interps;
        self.ranks.clear();
        if self.interps.len() > 1 {
            // listed newest first, the main interpreter last
            let n = self.interps.len();
            for (i, li) in self.interps.iter().enumerate() {
                self.ranks.extend(li.states.iter().map(|&k| (k, (n - 1 - i) as Rank)));
            }
        }
        self.orphans = self.threads.len() > self.interps.iter().map(|li| li.states.len()).sum::<usize>();
        Ok(())
    }

    fn end_orphans(&mut self, tx: &Sender<Message>, time: u64) {
        if !self.orphans {
            return;
        }
        let listed: std::collections::HashSet<u64> =
            self.interps.iter().flat_map(|li| li.states.iter().copied()).collect();
        self.threads.retain(|key, th| {
            let keep = listed.contains(key);
            if !keep && matches!(th, Thread::Live(_)) {
                let _ = tx.send(Message::ThreadEnded { key: *key, time_ns: time });
            }
            keep
        });
        self.orphans = false;
    }

    /// One thread from the current copy. `stopped`: the thread is stopped for this read,
    /// so what the copy lacks, read from the process, is of the same moment, and nothing
    /// needs reading again to prove it.
    fn attempt(
        &mut self,
        key: u64,
        time: u64,
        batch: &mut SampleBatch,
        tx: &Sender<Message>,
        stopped: bool,
    ) -> ReadResult<Attempt> {
        let Sampler {
            pf,
            threads,
            target: t,
            codes,
            walk,
            walk_after,
            mem,
            unchecked,
            stale_list,
            tstate_len,
            read_span,
            send_same,
            to_name,
            late_blocks,
            ..
        } = self;
        let mem: &dyn ReadMem = mem;
        let l = &t.layout;
        let Some(ts) = pf.get(key, *tstate_len) else {
            return Ok(Attempt::Retry(Loss::Incomplete));
        };
        let ids = (ts.u64_at(l.tstate.thread_id), l.tstate.native_thread_id.map(|o| ts.i32_at(o)).unwrap_or(0));
        let (chunk, stack_top) = data_stack(l, ts);
        let Some(thread) = threads.get_mut(&key) else {
            return Ok(Attempt::Skipped);
        };
        let live = match thread {
            Thread::Unresolved { ids: known } => {
                if *known != ids {
                    *known = ids;
                    *stale_list = true; // its ids settled: resolve its tid
                }
                return Ok(Attempt::Skipped);
            }
            Thread::Live(live) if live.ids != ids => {
                // The state was freed and reused by another thread: this one is gone.
                let _ = tx.send(Message::ThreadEnded { key, time_ns: time });
                *thread = Thread::Unresolved { ids };
                *stale_list = true;
                return Ok(Attempt::Skipped);
            }
            Thread::Live(live) => live,
        };
        if live.asleep {
            // it has not run since its stack was read: that stack still holds
            if !live.given {
                // (what a later tick may take instead of reading it, while it sleeps)
                live.state_copy.clear();
                live.state_copy.extend_from_slice(ts);
            }
            if *send_same {
                batch.push_same(key, live.tid, time);
            } else {
                let start = batch.frames.len();
                batch.frames.extend_from_slice(&live.prev);
                batch.push_stack(key, live.tid, time, start, true);
            }
            return Ok(Attempt::Asleep);
        }
        // (what this tick's group read again of the caller; the walk may replan it)
        let (check_caller, planned_caller) = (live.plan.check_caller, live.plan.caller);
        let top = match stack::top_frame(pf, l, key) {
            Ok(top) => top,
            Err(ReadError::Missing) => {
                // a CFrame we did not ask for: the thread entered or left an evaluation loop
                live.plan.see_cframe(ts.u64_at(l.tstate.frame));
                return Ok(Attempt::Retry(Loss::Incomplete));
            }
            Err(_) => return Ok(Attempt::Retry(Loss::Torn)),
        };
        // The same pointer read again at the end of the group.
        let check = |id: Option<usize>| id.and_then(|c| pf.checked(c)).map(|b| b.u64_at(0));
        let after = match check(live.plan.check_top) {
            Some(p) if !l.model.frame_via_cframe || p == 0 => Some(Top { frame: p, cframe: 0 }),
            Some(p) => {
                // the CFrame it names, wherever it is in the copied window of C stack
                let off = p.wrapping_sub(live.plan.cframes.0).wrapping_add(l.tstate.cframe_current_frame.unwrap_or(0));
                let bytes = live.plan.check_cframe.and_then(|c| pf.checked(c));
                bytes
                    .filter(|b| off.saturating_add(8) <= b.len() as u64)
                    .map(|b| Top { frame: b.u64_at(off), cframe: p })
            }
            None => None,
        };
        let Some(after) = after else {
            if l.model.frame_via_cframe {
                live.plan.see_cframe(check(live.plan.check_top).unwrap_or(0));
            }
            return Ok(Attempt::Retry(Loss::Incomplete));
        };
        // No frame on top while frames still sit on the data stack: no stack describes
        // that (3.12 under pylint showed a NULL top through a live CFrame for up to 300 us
        // at a time, the whole stack still on the data stack, and before this check the
        // timeline ended every call of the thread and began them all again). A thread
        // whose last call returned has popped its frames first.
        if top.frame == 0 && after.frame == 0 && data_stack_holds_frames(l, chunk, stack_top) {
            return Ok(Attempt::Retry(Loss::Truncated));
        }
        // The walk takes frames from the copy and, where a frame is not in it (a generator
        // started since the plan was made, most often), from the process itself.
        let behind = CopyThenProcess::new(pf, mem, sample_budget(&live.plan), late_blocks);
        // (the chunk's extent is known once its header was copied, i.e. a tick after a
        // thread moved to a new chunk)
        let size = if live.plan.chunk == chunk { live.plan.chunk_size as u64 } else { 0 };
        walk.chunk = (chunk, chunk + size);
        walk_after.chunk = walk.chunk;
        let mut walked = stack::walk_with_locals_from(&behind, pf, l, top.frame, &mut lookup(codes, mem, t), walk);
        if walked.is_err()
            && walk.truncated
            && resume::complete(pf, mem, l, stack_top, &mut lookup(codes, mem, t), walk)
        {
            walked = Ok(()); // a generator read too late, its caller named from the copy
        }
        let frame_len = l.frame.size as usize;
        // (generator frames named from the copy count as copied: the walk took nothing
        // from them but their code, which a generator keeps for life)
        let copied_from = |k: usize, w: &Walk| {
            w.visited[k..].iter().all(|&f| w.inferred.contains(&f) || pf.get(f, frame_len).is_some())
        };
        match walked {
            Ok(()) => {}
            Err(ReadError::Fault | ReadError::NotCode) => {
                return Ok(Attempt::Retry(if walk.truncated { Loss::Truncated } else { Loss::Torn }));
            }
            Err(ReadError::Missing) => return Ok(Attempt::Retry(Loss::Incomplete)),
            Err(e) => return Err(e),
        }
        let whole_copy = copied_from(0, walk);
        if !whole_copy {
            replan(&mut live.plan, l, &behind, chunk, stack_top, walk);
        }
        // The top pointer names the same frame at both ends, but its caller ran in
        // between: the callee returned and a new call took its slot while the group was
        // copied, and the copy may hold the caller as it was before (an older call site
        // and locals, under the new callee: a phantom split at the next sample).
        if after == top && !stopped && caller_ran(pf, l, codes, check_caller, planned_caller, top, walk) {
            return Ok(Attempt::Retry(Loss::Moved));
        }
        // Which moment the stack describes, if any (docs/ARCHITECTURE.md, "Torn reads").
        let mut time = time;
        if after == top && (whole_copy || stopped) {
            // the thread stayed in its frame while the group was copied (or could not
            // move: the frames read after the copy are of the same moment)
        } else if after == top {
            // Frames read after the copy (a generator started since the plan was made, a
            // stack deeper than planned): believable only if the thread is still in the
            // same frame after they were read. A frame that stayed on top all along kept
            // its callers.
            if stack::top_frame(mem, l, key)? != top || !stack::still_linked(mem, pf, l, walk)? {
                return Ok(Attempt::Retry(Loss::Moved));
            }
            time = now_ns();
        } else if let Some(k) = walk.visited.iter().position(|&f| f == after.frame) {
            // It only returned while the group was copied: the stack at the end is this
            // walk from the second top on, if the copy holds all of that part.
            if !copied_from(k, walk) {
                return Ok(Attempt::Retry(Loss::Moved));
            }
            let cut = &walk.visited[..k];
            let gone = walk.frames.iter().take_while(|f| cut.contains(&f.frame)).count();
            walk.frames.drain(..gone);
            walk.visited.drain(..k);
            time = read_span.1;
        } else {
            // It only called: the walk from the first top holds as of the start, if the
            // second top's chain reaches the first top. In the copy, if the frames it
            // pushed were copied after they were written; otherwise from the process, a
            // few frames up at most, with the first top still running the same code.
            let top_code = walk.frames.first().filter(|f| f.frame == top.frame).map(|f| f.code);
            let reaches = whole_copy
                && ((stack::walk(pf, l, after.frame, &mut lookup(codes, mem, t), walk_after).is_ok()
                    && walk_after.visited.contains(&top.frame))
                    || top_code.is_some_and(|code| stack::reaches(mem, l, after.frame, top.frame, code, CALLED_HOPS)));
            if !reaches {
                return Ok(Attempt::Retry(Loss::Moved));
            }
            time = read_span.0;
        }
        // A thread's outermost frame lives as long as its outermost call: a stack that
        // ends elsewhere is believed once a second read shows the same (a chain cut short
        // by a stale link shows a new root, different each time).
        let root = walk.visited.last().copied().unwrap_or(0);
        if live.root != 0 && root != live.root && root != live.new_root {
            live.new_root = root;
            return Ok(Attempt::Retry(Loss::Truncated));
        }
        live.root = root;
        live.new_root = 0;
        // The innermost frame at a RESUME instruction was entered or resumed but runs
        // none of its own code yet (it waits for the GIL, most often, for up to the
        // switch interval): not shown, as a frame still in its prologue is not, where
        // tracers are told of the call only after that wait (all but 3.12:
        // docs/ARCHITECTURE.md, "Frames that have not started"). Nor one at a return
        // instruction: its code is done, and a frame that stays there was read after it
        // returned, from a slot whose next call was not written yet while the top
        // pointer named that slot at both ends of the read ("Frames that have finished").
        let idle = walk.frames.first().is_some_and(|f| {
            codes.cached(f.code).is_some_and(|c| {
                (c.proofs.at_resume(f.offset) && !stack::resume_wait_reported(l, pf, f, c.first_traceable))
                    || c.proofs.at_return(f.offset)
            })
        });
        let shown = &walk.frames[idle as usize..];
        let start = batch.frames.len();
        let prev = &live.prev;
        let mut same_so_far = true;
        for (depth, f) in shown.iter().rev().enumerate() {
            // The same call as last tick (same code, same frame, same call site in the
            // parent) keeps its code id without touching the target again: the live
            // frame holds its code object.
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
                        // a code object met before: check it is still the same one with
                        // the others at the end of the tick
                        Some(c) => {
                            unchecked.push((batch.frames.len(), f.code));
                            c.id
                        }
                        None => match codes.get(mem, l, t.code_type, f.code) {
                            Ok(c) => c.id,
                            Err(ReadError::Fault | ReadError::NotCode) => {
                                // (the walk cached every code it ran through, so only an
                                // entry dropped since gets here) This sample's pending
                                // code checks go with its frames: left behind, a check
                                // would give its id to whichever frame takes its index.
                                batch.frames.truncate(start);
                                unchecked.retain(|&(i, _)| i < start);
                                return Ok(Attempt::Retry(Loss::Torn));
                            }
                            Err(e) => return Err(e),
                        },
                    }
                }
            };
            batch.frames.push(StackFrame { code_id, code: f.code, frame: f.frame, offset: f.offset, locals: f.locals });
        }
        // A thread `threading` started carries its Thread object in its outermost
        // frame: kept from this copy, it names the thread at the end of the tick even if
        // the thread has exited by then (`name_by_bootstrap`).
        if !live.named && live.bootstrap_self == 0 {
            if let (Some(root), Some(slots)) = (shown.last(), l.frame.localsplus) {
                let unseen = std::mem::replace(&mut live.bootstrap_root, root.frame) != root.frame;
                if unseen && codes.cached(root.code).is_some_and(|c| is_bootstrap(&c.name, &c.filename)) {
                    // (before 3.11 the frame is an object the copy may not hold yet:
                    // one read of the process, once per thread)
                    let at = root.frame + slots;
                    let word = pf.read_u64(at).or_else(|_| mem.read_u64(at)).unwrap_or(0);
                    live.bootstrap_self = word & !l.model.stackref_tag_mask;
                    to_name.push(key);
                }
            }
        }
        replan(&mut live.plan, l, pf, chunk, stack_top, walk);
        live.read_ns = read_span.0;
        batch.push_stack(key, live.tid, time, start, after == top);
        Ok(Attempt::Kept { inferred: !walk.inferred.is_empty() })
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
        self.pf_codes.fetch(&self.mem)?;
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
                // The walk took this frame's slots with the facts of the code object
                // that was at this address before (which slots are arguments, which
                // are never unbound): compared with the next sample's, they would prove
                // a new call that never was (record_timeline on 3.15 in launch mode: a
                // start-up function's entry at the address of `same_line_burst`'s code,
                // once in 150 runs). Its slots prove nothing this once.
                if let Some(f) = batch.frames.get_mut(i) {
                    f.code_id = id;
                    f.locals = Locals::default();
                }
            }
        }
        self.unchecked.clear();
        Ok(())
    }

    /// Threads whose outermost frame is `Thread._bootstrap` are named by its `self`, their
    /// Thread object, read at the end of the tick that kept that frame: a few reads, and
    /// no wait for `_active` (a thread that lives a millisecond is gone before a lookup
    /// there is retried).
    fn name_by_bootstrap(
        to_name: &mut Vec<u64>,
        threads: &mut AddrMap<u64, Thread>,
        mem: &dyn ReadMem,
        t: &Target,
        tx: &Sender<Message>,
    ) {
        for key in to_name.drain(..) {
            let Some(Thread::Live(l)) = threads.get_mut(&key) else {
                continue;
            };
            if !l.named && l.bootstrap_self != 0 {
                if let Ok(Some(name)) = thread_object_name(mem, t, l.bootstrap_self) {
                    l.named = true;
                    let _ = tx.send(Message::ThreadName { key, tid: l.tid, name });
                }
            }
            l.bootstrap_self = 0;
        }
    }

    /// Thread names come from Python objects: the Thread object a thread's first frame
    /// holds (`name_by_bootstrap`), else `threading._active`, read when threads appear
    /// and, for threads still unnamed (not yet registered by threading), again 1 ms
    /// later, backing off to every 100 ms. One budget of reads bounds both.
    fn scan_names(&mut self, tx: &Sender<Message>, now: u64) {
        let budget = ReadBudget::new(&self.mem, NAME_READS);
        let (mem, t): (&dyn ReadMem, _) = (&budget, &self.target);
        Self::name_by_bootstrap(&mut self.to_name, &mut self.threads, mem, t, tx);
        let unnamed = self.threads.values().any(|c| matches!(c, Thread::Live(l) if !l.named));
        if !(self.new_threads || (unnamed && now >= self.next_name_scan_ns)) {
            return;
        }
        let mut named = false;
        for li in &self.interps {
            let mut wanted = std::mem::take(&mut self.unnamed_idents);
            wanted.clear();
            wanted.extend(li.states.iter().filter_map(|s| match self.threads.get(s) {
                Some(Thread::Live(l)) if !l.named => Some(l.ids.0),
                _ => None,
            }));
            if wanted.is_empty() {
                self.unnamed_idents = wanted;
                continue;
            }
            // (where `_active` is, found once per interpreter: thread_names.rs)
            let known = self.active_dicts.iter().find(|(i, _)| *i == li.interp).map(|&(_, a)| a);
            let active = match known {
                Some(a) if a.still_there(mem, t) => Some(a),
                _ => {
                    let found = ActiveDict::find(mem, t, li.interp).ok().flatten();
                    self.active_dicts.retain(|(i, _)| *i != li.interp);
                    self.active_dicts.extend(found.map(|a| (li.interp, a)));
                    found
                }
            };
            let names = active.and_then(|a| a.names(mem, t, Some(&wanted)).ok()).unwrap_or_default();
            self.unnamed_idents = wanted;
            for s in &li.states {
                let Some(Thread::Live(l)) = self.threads.get_mut(s) else {
                    continue;
                };
                if l.named {
                    continue;
                }
                if let Some(name) = names.get(&l.ids.0) {
                    l.named = true;
                    named = true;
                    let _ = tx.send(Message::ThreadName { key: *s, tid: l.tid, name: name.clone() });
                }
            }
        }
        // A thread runs Python before it enters `_active` (Thread._bootstrap_inner adds
        // it): a lookup right after its first sample often misses it, and a short-lived
        // thread is gone by the next one. Look again soon, then less and less often while
        // nothing new is named (threads made outside `threading` never are).
        self.name_retry_ns =
            if self.new_threads || named { NAME_RETRY_MIN_NS } else { (self.name_retry_ns * 2).min(NAME_RETRY_MAX_NS) };
        self.next_name_scan_ns = now + self.name_retry_ns;
    }
}

/// The thread's newest data-stack chunk and the top of its data stack (3.11+), as the
/// copy of its thread state holds them; zeros before 3.11.
fn data_stack(l: &Layout, ts: &[u8]) -> (u64, u64) {
    let at = |o: Option<u64>| o.map(|o| ts.u64_at(o)).unwrap_or(0);
    (at(l.tstate.datastack_chunk), at(l.tstate.datastack_top))
}

/// Whether a thread's data stack holds a frame (3.11+): its top is above the first slot
/// of the chunk (a thread's first chunk keeps its first word free; a later chunk is
/// freed when its last frame is popped).
fn data_stack_holds_frames(l: &Layout, chunk: u64, stack_top: u64) -> bool {
    chunk != 0 && stack_top > chunk + l.chunk.data + 8
}

/// A new thread's first plan, from its state read directly: where its CFrame and data
/// stack are, so that the tick's read copies its stack. (With an empty plan the first
/// read of every new thread lacked its stack and cost a round of re-reads: the thread
/// per request of `http.server` makes dozens a second.)
fn first_plan(mem: &dyn ReadMem, l: &Layout, tstate: u64, len: usize) -> Plan {
    let mut plan = Plan::default();
    let Ok(ts) = mem.read_vec(tstate, len) else {
        return plan;
    };
    let (chunk, stack_top) = plan_state(&mut plan, l, &ts);
    plan_from(&mut plan, l, mem, chunk, stack_top, &[]);
    plan
}

/// What a thread state says of where its stack is: its CFrame goes into the plan
/// (3.11-3.12); returns its newest data-stack chunk and the top of its data stack.
fn plan_state(plan: &mut Plan, l: &Layout, ts: &[u8]) -> (u64, u64) {
    if l.model.frame_via_cframe {
        plan.see_cframe(ts.u64_at(l.tstate.frame));
    }
    data_stack(l, ts)
}

/// Whether the frame under `top`, as the walk found it, is the frame planned as its
/// caller (`planned`, read again after the copy by `check`) and differs where only its
/// own code writes between the copy and that second read.
fn caller_ran(
    pf: &Prefetch,
    l: &Layout,
    codes: &CodeCache,
    check: Option<usize>,
    planned: u64,
    top: Top,
    walk: &Walk,
) -> bool {
    let (Some(id), Some((at, len))) = (check, stack::own_state_span(l)) else {
        return false;
    };
    let (Some(callee), Some(caller)) = (walk.frames.first(), walk.frames.get(1)) else {
        return false;
    };
    if callee.frame != top.frame || caller.frame != planned {
        return false;
    }
    let (Some(again), Some(copy)) = (pf.checked(id), pf.get(caller.frame + at, len)) else {
        return false;
    };
    codes.cached(caller.code).is_some_and(|c| stack::own_state_differs(l, &c.facts(), copy, again))
}

/// `plan_from` a walk, which also names the frame under its top as the caller to read
/// again after the next copy.
fn replan(plan: &mut Plan, l: &Layout, mem: &dyn ReadMem, chunk: u64, stack_top: u64, walk: &Walk) {
    plan_from(plan, l, mem, chunk, stack_top, &walk.visited);
    plan.caller = walk.frames.get(1).map_or(0, |f| f.frame);
}

/// What to copy next time for a thread whose walk read `visited`: the newest chunk
/// as far as its frames reach (and a little more: calls push frames above), and every
/// frame outside it.
fn plan_from(plan: &mut Plan, l: &Layout, mem: &dyn ReadMem, chunk: u64, stack_top: u64, visited: &[u64]) {
    let frame_len = l.frame.size;
    if l.model.frames == FrameModel::InterpreterFrame && chunk != 0 {
        // (a chunk whose header we have not read yet: its first bytes, for a start)
        let size = mem
            .read_u64(chunk + l.chunk.size)
            .ok()
            .filter(|&s| s > 0 && s <= 64 << 20)
            .unwrap_or(CHUNK_FIRST_READ as u64);
        let window = chunk..chunk + size;
        let used = visited
            .iter()
            .filter(|&&f| window.contains(&f) && f + frame_len <= window.end)
            .map(|&f| (f - chunk + frame_len) as usize)
            .max()
            .unwrap_or(0);
        // the data stack's top, where the thread state says it is, if that is in this chunk
        let used = match stack_top.checked_sub(chunk) {
            Some(n) if n <= size => used.max(n as usize),
            _ => used,
        };
        let grew = used.saturating_sub(plan.used);
        plan.slack = match plan.slack {
            0 => CHUNK_SLACK_FIRST,
            s => (s - s / 8).max(2 * grew).clamp(CHUNK_SLACK_MIN, CHUNK_SLACK_MAX),
        };
        plan.used = used;
        plan.chunk = chunk;
        plan.chunk_size = size as usize;
        plan.chunk_len = (used + plan.slack).min(size as usize);
        plan.frames.clear();
        plan.frames.extend(visited.iter().filter(|&&f| !(window.contains(&f) && f + frame_len <= window.end)));
    } else {
        plan.chunk = 0;
        plan.frames.clear();
        plan.frames.extend_from_slice(visited);
    }
}

#[cfg(test)]
#[path = "sampler_tests.rs"]
mod tests;
