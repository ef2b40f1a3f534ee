//! Per-thread activity in every sample: on CPU or not, holds the GIL or not.
//!
//! - On CPU: the thread's state at the tick is running or runnable ('R' in
//!   /proc/PID/task/TID/stat: what py-spy calls active; a runnable thread on a loaded
//!   machine wants the CPU as much as a running one). That line costs the kernel 5-30 us
//!   to format (it is the whole task status), so it is read only when a cheaper file
//!   cannot tell. The thread's CPU time (first field of .../schedstat, ~1 us) is read
//!   every tick. If it grew by nearly the whole interval since the thread's previous
//!   sample, the thread is running; if it did not grow and the thread was off CPU at its
//!   previous sample, it still is; otherwise (it ran part of the interval, or stopped
//!   running) the state letter decides, read at most once per millisecond per thread (in
//!   between, the last one read). The kernel adds a running thread's CPU time at its
//!   timer tick (every 4 ms on this VM) or when it is switched out, so a thread the letter
//!   found runnable whose CPU time and switch-in count have not moved since is still
//!   runnable: no letter is read then. So a thread that computes steadily costs one ~1 us
//!   pread per tick; one that changes state, or is often preempted, costs a stat read at
//!   those ticks, at most 1000 per second. A thread asleep at its last read costs nothing
//!   while the GIL proves it has not run Python since (`replays`), and one pread every
//!   10 ms. Files are opened once per thread and kept open; parsing is a byte scan, no
//!   allocation.
//! - Runs: the kernel's count of the times it put the thread on a CPU (the third field
//!   of the same schedstat line, so free). A thread seen asleep in the same frames at
//!   two samples whose count moved in between woke: the timeline's wake proof. A thread
//!   that woke from its C call but now waits for the GIL has not made another call yet;
//!   that is told by the futex it sleeps on (.../syscall, read only when the count
//!   moved, before the tick's memory read: at most once per wake), and such a sample
//!   compares the next count with the one before. Where a thread sleeps (the system
//!   call and its first argument) goes with the count: only a sleep in the same place
//!   again is a new call.
//! - The GIL: its `locked` flag, its holder (a thread state address) and its switch count,
//!   read where the layout's `[model] gil` says the GIL lives (the runtime up to 3.11,
//!   each interpreter from 3.12), as spans of the tick's one batched read: no system call
//!   of its own.
//!
//! The timeline shows both (a counter track per thread in Perfetto, counter events in
//! JSON); `--mode` picks the samples that the sample-count formats count.

use crate::addr_map::AddrMap;
use crate::process::prefetch::Prefetch;
use crate::python::discover::Target;
use crate::python::layout::GilHome;
use std::fs::File;
use std::os::unix::fs::FileExt;

/// What a thread was doing at a sample, each part possibly unknown.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Activity(u8);

impl Activity {
    const CPU_KNOWN: u8 = 1;
    const ON_CPU: u8 = 2;
    const GIL_KNOWN: u8 = 4;
    const HOLDS_GIL: u8 = 8;

    pub fn new(on_cpu: Option<bool>, holds_gil: Option<bool>) -> Activity {
        let mut a = 0;
        if let Some(c) = on_cpu {
            a |= Activity::CPU_KNOWN | if c { Activity::ON_CPU } else { 0 };
        }
        if let Some(g) = holds_gil {
            a |= Activity::GIL_KNOWN | if g { Activity::HOLDS_GIL } else { 0 };
        }
        Activity(a)
    }

    pub fn on_cpu(self) -> Option<bool> {
        (self.0 & Activity::CPU_KNOWN != 0).then_some(self.0 & Activity::ON_CPU != 0)
    }

    pub fn holds_gil(self) -> Option<bool> {
        (self.0 & Activity::GIL_KNOWN != 0).then_some(self.0 & Activity::HOLDS_GIL != 0)
    }
}

/// Where the kernel's count of a thread's runs stood at a sample (src/timeline.rs, the
/// wake proof).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Runs {
    /// not known, or moved by our own stop of the thread: compare nothing across it
    #[default]
    Unknown,
    /// the count, read this tick before the stacks (a thread found on CPU or holding
    /// the GIL)
    Count(u64),
    /// the count of a thread off CPU that sleeps in a system call outside the GIL, and
    /// which one: its number and first argument, folded (src/timeline.rs compares only
    /// sleeps in the same place: a C call may wait on an internal lock on its way)
    Asleep(u64, u64),
    /// the thread ran and is not asleep in a call of its own: it waits for the GIL (the
    /// C call it slept in returned, but its frame has not called again yet), or it runs
    /// again. Compare the next count with the one before.
    Waking,
}

/// What our own stops did to a thread's switch-in count. A stop moves it twice: once
/// when the thread stops, and once when it runs again after we let it go, which on a
/// loaded machine may be milliseconds later, after a tick found it asleep where it was
/// (a stopped thread's .../syscall still names the sleep it was taken from). Counts
/// are compared again only from the tick after the one that proves it ran since.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Touch {
    /// not stopped by us, or proved to have run since
    Clear,
    /// being stopped, stopped, or interrupted and not stopped yet: not let go
    Held,
    /// let go; its CPU time at the next read is the floor
    LetGo,
    /// let go when its CPU time stood at this (read after the detach, which waits for
    /// the thread to be off its CPU): more proves it ran since
    Floor(u64),
}

impl Touch {
    /// At a tick's read of the thread's CPU time: whether this tick's count is ours.
    fn at_read(&mut self, cpu_ns: u64) -> bool {
        match *self {
            Touch::Clear => false,
            Touch::Held => true,
            Touch::LetGo => {
                *self = Touch::Floor(cpu_ns);
                true
            }
            Touch::Floor(floor) => {
                if cpu_ns > floor {
                    *self = Touch::Clear;
                }
                true
            }
        }
    }
}

/// Which samples the sample-count formats (collapsed, flame graph, pprof) count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mode {
    /// every sample: where the time goes, waiting included (py-spy --idle)
    #[default]
    Wall,
    /// samples where the thread was on CPU (py-spy's default, which drops idle threads)
    Cpu,
    /// samples where the thread held the GIL (py-spy --gil)
    Gil,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Wall => "wall",
            Mode::Cpu => "cpu",
            Mode::Gil => "gil",
        }
    }

    pub fn from_name(s: &str) -> Option<Mode> {
        match s {
            "wall" => Some(Mode::Wall),
            "cpu" => Some(Mode::Cpu),
            "gil" => Some(Mode::Gil),
            _ => None,
        }
    }

    /// An unknown state is not counted as CPU or GIL: the filter keeps what it can prove.
    pub fn keeps(self, a: Activity) -> bool {
        match self {
            Mode::Wall => true,
            Mode::Cpu => a.on_cpu() == Some(true),
            Mode::Gil => a.holds_gil() == Some(true),
        }
    }
}

/// Files of threads not sampled for this many ticks are closed.
const PRUNE_EVERY: u64 = 4096;

/// The CPU-time share of an interval above which a thread is taken as running without
/// reading its state (it ran nearly all of it: still running at its end).
const SURELY_RUNNING: f64 = 0.9;
/// The state letter is read at most this often per thread.
const STAT_EVERY_NS: u64 = 1_000_000;
/// A sleeping thread whose schedstat the GIL proof saves is still read this often: the
/// proof says its frames did not move, not that it did not wake into C code without
/// the GIL, which its on-CPU state would show.
const SLEEPER_CHECK_NS: u64 = 10_000_000;

/// The GIL as one batched read found it: (switch_number, last_holder).
type GilMark = (u64, u64);

struct StatFile {
    schedstat: File,
    /// opened the first time the state letter is needed
    stat: Option<File>,
    last_tick: u64,
    /// this tick's schedstat: CPU time and how many times the thread was put on a CPU;
    /// read once per tick (`read_tick`), before the tick's memory read
    read_tick: u64,
    now_cpu_ns: u64,
    now_switch_ins: Option<u64>,
    /// (switch-ins, when): the state letter said off CPU just after the count was read.
    /// While the count stays the same, the thread has not run since `when`.
    asleep: Option<(u64, u64)>,
    /// CPU time and sample time at the previous read (0: none yet), and what it was then
    cpu_ns: u64,
    at_ns: u64,
    was_on: Option<bool>,
    /// `was_on` is Some(true) because the state letter said so just after that read's
    /// count, or because nothing has switched the thread out since such a letter
    was_on_proven: bool,
    /// the switch-in count at the previous read
    prev_switch_ins: Option<u64>,
    /// when the state letter was last read
    stat_at_ns: u64,
    #[cfg(test)]
    letters_read: u32,
    /// what our own stops did to its count
    touch: Touch,
    /// this tick's count moved by our hand
    unknown: bool,
    /// the count at which .../syscall was last read, and where the thread then slept
    /// (Runs::Asleep; None: not in a system call, or in a GIL wait)
    blocked_at: Option<(u64, Option<u64>)>,
    /// the count at which .../syscall last said the thread was on a CPU: not read again
    /// at that count while the thread is still taken for on CPU
    running_at: Option<u64>,
    #[cfg(test)]
    syscall_reads: u32,
    /// .../syscall, opened the first time the count moved while the thread was off CPU
    syscall: Option<File>,
    /// the GIL as read by the last batch before this thread's last real schedstat read,
    /// and when that read was
    gil_mark: Option<GilMark>,
    real_ns: u64,
    /// the tick whose line was replayed
    replayed_tick: u64,
    #[cfg(test)]
    schedstat_reads: u32,
}

/// Reads activity for the sampler: kept-open schedstat files, and the GIL from the tick's
/// copy.
pub struct ActivityReader {
    pid: i32,
    stats: AddrMap<i32, StatFile>,
    tick: u64,
    /// thread states holding a GIL as of this tick's read; None when it could not be read
    holders: Option<Vec<u64>>,
    gil_spans: Vec<(u64, u64)>,
    /// the process's one GIL as the last batch found it (None: unknown, or several GILs)
    gil: Option<GilMark>,
    /// threads whose schedstat this tick replays on the GIL's word, to confirm once the
    /// tick's batch has read the GIL again
    replayed: Vec<i32>,
    /// replays the GIL confirmed
    pub proved_by_gil: u64,
}

impl ActivityReader {
    pub fn new(pid: i32) -> ActivityReader {
        ActivityReader {
            pid,
            stats: AddrMap::default(),
            tick: 0,
            holders: Some(Vec::new()),
            gil_spans: Vec::new(),
            gil: None,
            replayed: Vec::new(),
            proved_by_gil: 0,
        }
    }

    /// Where the GIL's `locked` flag, holder and switch count lie, for the GIL home of
    /// this layout: (address, length, offsets of locked, holder and switch count) per GIL.
    /// False when the layout does not say where the GIL is.
    fn gil_spans(t: &Target, interps: &mut dyn Iterator<Item = u64>, mut f: impl FnMut(u64, usize, GilFields)) -> bool {
        let l = &t.layout;
        let (locked, holder) = match l.model.gil {
            GilHome::Runtime => (l.runtime.gil_locked, l.runtime.gil_holder),
            GilHome::Interp => (l.interp.gil_locked, l.interp.gil_holder),
        };
        let (Some(locked), Some(holder)) = (locked, holder) else {
            return false;
        };
        // (the switch count's place in the GIL's struct, from the holder's)
        let switch = l.gil.switch_number.and_then(|s| (holder + s).checked_sub(l.gil.last_holder));
        let lo = locked.min(holder).min(switch.unwrap_or(u64::MAX));
        let len = (locked.max(holder).max(switch.unwrap_or(0)) - lo + 8) as usize;
        let fields = GilFields { locked: locked - lo, holder: holder - lo, switch: switch.map(|s| s - lo) };
        match l.model.gil {
            GilHome::Runtime => f(t.runtime + lo, len, fields),
            GilHome::Interp => interps.for_each(|i| f(i + lo, len, fields)),
        }
        true
    }

    /// Asks the tick's batched read for the GIL where it lives: `None` asks for the
    /// runtime's (up to 3.11), `Some(interp)` for that interpreter's (3.12+). Asked for
    /// right after other fields of the same structure, it shares their piece of the read.
    pub fn want_gil(pf: &mut Prefetch, t: &Target, interp: Option<u64>) {
        if matches!(t.layout.model.gil, GilHome::Runtime) != interp.is_none() {
            return;
        }
        ActivityReader::gil_spans(t, &mut interp.into_iter(), |addr, len, _| {
            pf.want(addr, len);
        });
    }

    /// Takes the GIL holders from the tick's copy (before any re-read replaces it).
    pub fn note_gil(&mut self, pf: &Prefetch, t: &Target, interps: &mut dyn Iterator<Item = u64>) {
        let mut holders = self.holders.take().unwrap_or_default();
        holders.clear();
        let mut read_ok = true;
        let (mut gils, mut mark) = (0, None);
        let has_gil = ActivityReader::gil_spans(t, interps, |addr, len, f| match pf.get(addr, len) {
            Some(b) => {
                let at = |o: u64, n: usize| b.get(o as usize..o as usize + n);
                let word = |o: u64| at(o, 8).map(|v| u64::from_le_bytes(v.try_into().unwrap_or([0; 8])));
                let is_locked = at(f.locked, 4).is_some_and(|v| v != [0, 0, 0, 0]);
                let who = word(f.holder).unwrap_or(0);
                if is_locked && who != 0 {
                    holders.push(who);
                }
                gils += 1;
                mark = f.switch.and_then(word).map(|n| (n, who));
            }
            None => read_ok = false,
        });
        self.holders = (has_gil && read_ok).then_some(holders);
        self.gil = mark.filter(|_| read_ok && gils == 1);
    }

    /// Whether this tick's schedstat line of the thread is a replay (`replays`).
    pub fn replayed(&self, tid: i32) -> bool {
        self.stats.get(&tid).is_some_and(|s| s.replayed_tick == self.tick)
    }

    /// Call after `note_gil`: checks the schedstat replays of this tick (`asleep_since`)
    /// against the GIL this tick's batch read. Where it moved, the thread's schedstat is
    /// read now; a thread that ran since is put in `woke`: its stack was not in the
    /// batch, and must be read. True when the GIL moved for any of them.
    pub fn confirm_replays(&mut self, woke: &mut Vec<i32>) -> bool {
        let mut moved = false;
        let mut replayed = std::mem::take(&mut self.replayed);
        for &tid in &replayed {
            let Some(s) = self.stats.get_mut(&tid).filter(|s| s.read_tick == self.tick) else {
                continue;
            };
            if s.gil_mark.is_some() && s.gil_mark == self.gil {
                self.proved_by_gil += 1;
                continue;
            }
            // (read after the batch: if the count still stands, the thread did not run
            // before this moment either, and the batch's time is before it)
            moved = true;
            s.read_tick = u64::MAX;
            if self.sched(tid, None).is_none_or(|s| s.asleep.is_none()) {
                woke.push(tid);
            }
        }
        replayed.clear();
        self.replayed = replayed;
        moved
    }

    /// The activity of a thread sampled this tick: `key` its thread state, `tid` its OS
    /// thread id (in our pid namespace), `time_ns` when its stack was read.
    pub fn of(&mut self, key: u64, tid: i32, time_ns: u64) -> Activity {
        let gil = self.holders.as_ref().map(|h| h.contains(&key));
        Activity::new(self.on_cpu(tid, time_ns), gil)
    }

    /// Call once per tick, after the samples: closes files of threads long gone.
    pub fn end_tick(&mut self) {
        self.tick += 1;
        self.replayed.clear();
        if self.tick.is_multiple_of(PRUNE_EVERY) {
            let tick = self.tick;
            self.stats.retain(|_, s| tick - s.last_tick < PRUNE_EVERY);
        }
    }

    /// The thread's schedstat line, read at most once per tick. With `key` (its thread
    /// state) a thread asleep at its last read may be spared the read: see `replays`.
    fn sched(&mut self, tid: i32, key: Option<u64>) -> Option<&mut StatFile> {
        if tid <= 0 {
            return None;
        }
        if !self.stats.contains_key(&tid) {
            // once per thread: the open and its path are off the per-tick path
            let schedstat = File::open(format!("/proc/{}/task/{tid}/schedstat", self.pid)).ok()?;
            let s = StatFile {
                schedstat,
                stat: None,
                last_tick: 0,
                read_tick: u64::MAX,
                now_cpu_ns: 0,
                now_switch_ins: None,
                asleep: None,
                cpu_ns: 0,
                at_ns: 0,
                was_on: None,
                was_on_proven: false,
                prev_switch_ins: None,
                stat_at_ns: 0,
                #[cfg(test)]
                letters_read: 0,
                touch: Touch::Clear,
                unknown: false,
                blocked_at: None,
                running_at: None,
                #[cfg(test)]
                syscall_reads: 0,
                syscall: None,
                gil_mark: None,
                real_ns: 0,
                replayed_tick: u64::MAX,
                #[cfg(test)]
                schedstat_reads: 0,
            };
            self.stats.insert(tid, s);
        }
        let (tick, gil) = (self.tick, self.gil);
        let s = self.stats.get_mut(&tid)?;
        s.last_tick = tick;
        let replay = s.read_tick != tick && key.is_some_and(|key| replays(s, gil, key));
        if replay {
            s.read_tick = tick;
            s.replayed_tick = tick;
            self.replayed.push(tid);
        } else if s.read_tick != tick {
            let mut buf = [0u8; 512];
            let n = s.schedstat.read_at(&mut buf, 0).unwrap_or(0);
            let Some(cpu_ns) = first_number(&buf[..n]) else {
                // the thread is gone (ESRCH) or the file unreadable: forget it
                self.stats.remove(&tid);
                return None;
            };
            let (pid, spans) = (self.pid, &self.gil_spans);
            let s = self.stats.get_mut(&tid)?;
            s.read_tick = tick;
            // (the GIL was read before this line: `replays`)
            s.gil_mark = gil;
            #[cfg(test)]
            {
                s.schedstat_reads += 1;
            }
            s.now_switch_ins = third_number(&buf[..n]);
            s.unknown = s.touch.at_read(cpu_ns);
            // Where it sleeps changes only when it runs: read once per count, and here,
            // before the tick's memory read, so that a stack read after it still sleeps
            // there. (Not for a thread that ran nearly all the interval.)
            let now = crate::clock::now_ns();
            s.real_ns = now;
            let ran = cpu_ns.saturating_sub(s.cpu_ns);
            let running = s.at_ns != 0 && ran as f64 >= now.saturating_sub(s.at_ns) as f64 * SURELY_RUNNING;
            // (a thread on a CPU at the last read at this count, and not found off it
            // since, is not asked again: a computing thread would be asked every tick)
            let still_running = s.running_at.is_some_and(|n| Some(n) == s.now_switch_ins) && s.was_on == Some(true);
            if let Some(n) =
                s.now_switch_ins.filter(|&n| !running && !still_running && s.blocked_at.is_none_or(|(at, _)| at != n))
            {
                if s.syscall.is_none() {
                    // once per thread found not running
                    s.syscall = File::open(format!("/proc/{pid}/task/{tid}/syscall")).ok();
                }
                let len = s.syscall.as_ref().and_then(|f| f.read_at(&mut buf, 0).ok()).unwrap_or(0);
                let line = &buf[..len];
                #[cfg(test)]
                {
                    s.syscall_reads += 1;
                }
                // ("running", or -1: not in a system call; a futex in a GIL: waiting for it)
                let in_gil = |a: u64| spans.iter().any(|&(lo, hi)| (lo..hi).contains(&a));
                let blocked = match syscall_head(line) {
                    Some((nr, arg)) if !(nr == libc::SYS_futex as u64 && in_gil(arg)) => sleep_place(nr, arg),
                    _ => None,
                };
                // The count again: a thread put on a CPU since the count was read may be
                // asleep in a call it made after that count (a stack read now would be
                // taken for one that count describes). Then nothing is stored: the next
                // tick reads again.
                // And a thread on a CPU at the read says nothing of where this run ends:
                // it may go to sleep without being switched in again, so under the same
                // count. Stored, that "not asleep in a call" stood for the whole sleep
                // that followed: waitress' main thread, running on its way into select
                // at the read, then asleep there 30 ms in a new `poll` call taken for
                // the one before (58 merged calls per 10 kHz capture).
                let on_cpu = line.starts_with(b"running");
                s.running_at = on_cpu.then_some(n);
                let again = s.schedstat.read_at(&mut buf, 0).unwrap_or(0);
                if !on_cpu && third_number(&buf[..again]) == Some(n) {
                    s.blocked_at = Some((n, blocked));
                }
            }
            s.now_cpu_ns = cpu_ns;
            if s.asleep.is_some_and(|(n, _)| Some(n) != s.now_switch_ins) {
                s.asleep = None;
            }
            return Some(s);
        }
        self.stats.get_mut(&tid)
    }

    /// Call before the sampler tries to stop the thread (src/pausing.rs): its count
    /// moves by our hand from now on, and this tick's, read before, says nothing of what
    /// the stopped read finds.
    pub fn note_held(&mut self, tid: i32) {
        if let Some(s) = self.stats.get_mut(&tid) {
            s.touch = Touch::Held;
            s.unknown = true;
        }
    }

    /// Call once the sampler has let the thread go (or never stopped it after all).
    pub fn note_let_go(&mut self, tid: i32) {
        if let Some(s) = self.stats.get_mut(&tid) {
            if s.touch == Touch::Held {
                s.touch = Touch::LetGo;
            }
        }
    }

    /// Where each interpreter's GIL lies, [start, end): set before the tick's first
    /// read of a thread (a futex there is a wait for the GIL).
    pub fn set_gil_spans(&mut self, spans: impl Iterator<Item = (u64, u64)>) {
        self.gil_spans.clear();
        self.gil_spans.extend(spans);
    }

    /// The thread's run count at this tick. `off`: the sample found it off CPU and
    /// without the GIL; then the count stands for a sleep only if the thread sleeps in a
    /// system call outside the GIL (as read before the tick's memory read).
    pub fn runs(&mut self, tid: i32, off: bool) -> Runs {
        let tick = self.tick;
        let Some(s) = self.stats.get(&tid) else {
            return Runs::Unknown;
        };
        let Some(n) = s.now_switch_ins.filter(|_| s.read_tick == tick && !s.unknown) else {
            return Runs::Unknown;
        };
        match s.blocked_at {
            _ if !off => Runs::Count(n),
            Some((at, Some(sleep))) if at == n => Runs::Asleep(n, sleep),
            _ => Runs::Waking,
        }
    }

    /// Since when the thread has provably not run (docs/ARCHITECTURE.md, "Sleeping
    /// threads"): its state letter said off CPU at that moment, and the kernel has not put
    /// it on a CPU since. None when that is not known. Read before the tick's memory read:
    /// a stack read after the moment returned still holds.
    /// `key` is the thread's state: see `replays`.
    pub fn asleep_since(&mut self, tid: i32, key: u64) -> Option<u64> {
        self.sched(tid, Some(key))?.asleep.map(|(_, when)| when)
    }

    fn on_cpu(&mut self, tid: i32, time_ns: u64) -> Option<bool> {
        let pid = self.pid;
        let s = self.sched(tid, None)?;
        let mut buf = [0u8; 512];
        let cpu_ns = s.now_cpu_ns;
        let ran = cpu_ns.saturating_sub(s.cpu_ns);
        let elapsed = time_ns.saturating_sub(s.at_ns);
        let known = s.at_ns != 0 && elapsed > 0;
        s.cpu_ns = cpu_ns;
        s.at_ns = time_ns;
        // (a thread we let go is asked its state until it proves it ran since)
        let proving = matches!(s.touch, Touch::LetGo | Touch::Floor(_));
        let same_runs = s.now_switch_ins.is_some() && s.now_switch_ins == s.prev_switch_ins;
        s.prev_switch_ins = s.now_switch_ins;
        let chained = std::mem::take(&mut s.was_on_proven);
        let on = if known && ran as f64 >= elapsed as f64 * SURELY_RUNNING {
            Some(true)
        } else if known && ran == 0 && s.was_on == Some(false) && !proving {
            Some(false)
        } else if known && ran == 0 && same_runs && s.was_on == Some(true) && chained && !proving {
            // Runnable at the last read, and neither switched out since (that would have
            // added its run to the CPU time, which the kernel otherwise adds only at its
            // timer tick: 4 ms here) nor put on a CPU again: still runnable. Saves the
            // state letter (3 us of the kernel's formatting) on 3 ticks in 4 of a thread
            // that computes.
            s.was_on_proven = true;
            Some(true)
        } else if s.was_on.is_some() && time_ns.saturating_sub(s.stat_at_ns) < STAT_EVERY_NS && !proving {
            s.was_on
        } else {
            s.stat_at_ns = time_ns;
            if s.stat.is_none() {
                s.stat = File::open(format!("/proc/{pid}/task/{tid}/stat")).ok();
            }
            let n = s.stat.as_ref().and_then(|f| f.read_at(&mut buf, 0).ok()).unwrap_or(0);
            let letter = state_letter(&buf[..n]);
            #[cfg(test)]
            {
                s.letters_read += 1;
            }
            let running = letter.map(|l| l == b'R');
            // Asleep now, after being let go: it ran since (a thread let go is runnable
            // until it runs). The count read before this letter may predate that run, so
            // this tick's stays unknown; the next one is the thread's own.
            if proving && matches!(letter, Some(b'S' | b'D')) {
                s.touch = Touch::Clear;
            }
            // (the switch count was read before the letter: any run after this moment
            // puts the thread on a CPU and moves the count)
            if let (Some(false), Some(switch_ins)) = (running, s.now_switch_ins) {
                s.asleep = Some((switch_ins, crate::clock::now_ns()));
            }
            s.was_on_proven = running == Some(true);
            running
        };
        s.was_on = on;
        on
    }
}

/// Where the GIL's word spares a thread asleep at its last schedstat read the read at
/// this tick: its line is taken as read again unchanged, to be confirmed by
/// `confirm_replays` once the tick's batch has read the GIL (docs/ARCHITECTURE.md,
/// "Sleeping threads"). The GIL's switch count moves whenever a thread other than its
/// last holder takes it, and a thread runs Python, pushing or popping frames, only
/// holding it. So if the count has not moved since a read of the GIL made before the
/// thread's last schedstat read (which found it asleep, so it did not run up to then),
/// and the holder then was another thread, this thread has not taken the GIL since:
/// its frames are where they were. Only for a thread we did not stop of late, and at
/// most for `SLEEPER_CHECK_NS`.
fn replays(s: &StatFile, gil: Option<GilMark>, key: u64) -> bool {
    let now = crate::clock::now_ns();
    s.asleep.is_some()
        && s.touch == Touch::Clear
        && !s.unknown
        && gil.is_some()
        && s.gil_mark == gil
        && gil.is_some_and(|(_, holder)| holder != key)
        && now.saturating_sub(s.real_ns) < SLEEPER_CHECK_NS
}

/// Where the GIL's fields lie in the span read for it.
#[derive(Clone, Copy)]
struct GilFields {
    locked: u64,
    holder: u64,
    switch: Option<u64>,
}

/// The state letter of a stat line, "pid (comm) S ...": after the last ')', since a
/// thread's name may itself hold parentheses.
fn state_letter(line: &[u8]) -> Option<u8> {
    let close = line.iter().rposition(|&b| b == b')')?;
    line.get(close + 2).copied()
}

/// The system call number and first argument of a .../syscall line, "202 0x7f.. 0x80
/// ..."; None for "running" and "-1 ..." (not in a system call).
fn syscall_head(line: &[u8]) -> Option<(u64, u64)> {
    let mut fields = line.split(|b| b.is_ascii_whitespace()).filter(|f| !f.is_empty());
    let nr = first_number(fields.next()?)?;
    let hex = fields.next()?.strip_prefix(b"0x")?;
    if hex.is_empty() || hex.len() > 16 {
        return None;
    }
    Some((nr, hex.iter().try_fold(0u64, |n, &d| Some(n << 4 | (d as char).to_digit(16)? as u64))?))
}

/// Where a thread sleeps, folded into one number: the system call and, where it names a
/// place, its first argument (a futex's address, a descriptor, a clock). Not for select
/// and pselect6, whose first argument is the highest descriptor waited on plus one, nor
/// for poll and ppoll, whose first is an array the caller may move: a server's next wait
/// in the same loop differs in both as connections come and go (waitress' `poll`, whose
/// calls were all taken for one).
///
/// None for a system call that may sleep more than once before it returns: only a wait
/// for one event (a lock, a timer, descriptors becoming ready, a child, a signal) wakes
/// once per call. A read of a file from disk sleeps at every block it waits for, and an
/// import read at two samples in one `read` call, woken in between, was taken for a new
/// call of every frame above it (CI's record_timeline, trixie 3.13, the fixture's
/// `<module>` split in two).
fn sleep_place(nr: u64, arg: u64) -> Option<u64> {
    #[cfg(target_arch = "x86_64")]
    let sets = [libc::SYS_select, libc::SYS_poll, libc::SYS_pselect6, libc::SYS_ppoll];
    #[cfg(not(target_arch = "x86_64"))]
    let sets = [libc::SYS_pselect6, libc::SYS_ppoll];
    #[cfg(target_arch = "x86_64")]
    let other_waits = [libc::SYS_epoll_wait, libc::SYS_nanosleep, libc::SYS_accept, libc::SYS_pause];
    #[cfg(not(target_arch = "x86_64"))]
    let other_waits = [libc::SYS_nanosleep, libc::SYS_accept];
    let waits = [
        libc::SYS_futex,
        libc::SYS_epoll_pwait,
        libc::SYS_clock_nanosleep,
        libc::SYS_accept4,
        libc::SYS_recvfrom,
        libc::SYS_recvmsg,
        libc::SYS_wait4,
        libc::SYS_waitid,
        libc::SYS_rt_sigtimedwait,
        libc::SYS_rt_sigsuspend,
    ];
    let is = |list: &[libc::c_long]| list.iter().any(|&n| n as u64 == nr);
    if is(&sets) {
        Some(nr.wrapping_mul(0x9e37_79b9_7f4a_7c15))
    } else if is(&waits) || is(&other_waits) {
        Some(nr.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ arg)
    } else {
        None
    }
}

/// The third number of a schedstat line: how many times the thread was put on a CPU.
fn third_number(line: &[u8]) -> Option<u64> {
    let mut fields = line.split(|b| b.is_ascii_whitespace()).filter(|f| !f.is_empty());
    fields.nth(2).and_then(first_number)
}

/// The leading decimal number of a /proc line.
fn first_number(line: &[u8]) -> Option<u64> {
    let digits = line.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 20 {
        return None;
    }
    line[..digits].iter().try_fold(0u64, |n, &d| n.checked_mul(10)?.checked_add((d - b'0') as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_letter_after_the_last_parenthesis() {
        assert_eq!(state_letter(b"12 (python3) R 1 12 12 0"), Some(b'R'));
        assert_eq!(state_letter(b"12 (a) b) S 1 12"), Some(b'S'));
        assert_eq!(state_letter(b"12 (x"), None);
    }

    #[test]
    fn cpu_time_is_the_first_field() {
        assert_eq!(first_number(b"90951588 1426210953 236\n"), Some(90951588));
        assert_eq!(first_number(b""), None);
        assert_eq!(first_number(b"99999999999999999999999 1"), None);
        assert_eq!(third_number(b"90951588 1426210953 236\n"), Some(236));
        assert_eq!(third_number(b"90951588 1426210953\n"), None);
    }

    #[test]
    fn a_sleep_names_its_system_call_and_first_argument() {
        assert_eq!(syscall_head(b"202 0x7f12ab 0x80 0x0 0x0 0x0 0x0 0x7ffd 0x7f00\n"), Some((202, 0x7f12ab)));
        assert_eq!(syscall_head(b"23 0x5 0x7ffd 0x0 0x0 0x0 0x0 0x1 0x2\n"), Some((23, 5)));
        assert_eq!(syscall_head(b"running\n"), None);
        assert_eq!(syscall_head(b"-1 0x7ffd 0x7f00\n"), None);
        assert_eq!(syscall_head(b"202 0xzz\n"), None);
    }

    #[test]
    fn a_sleep_in_select_or_poll_is_one_place_whatever_it_waits_on() {
        let select = libc::SYS_pselect6 as u64;
        assert_eq!(sleep_place(select, 5), sleep_place(select, 9));
        assert!(sleep_place(select, 5).is_some());
        assert_eq!(sleep_place(libc::SYS_read as u64, 3), None, "a read may sleep at every block");
        let futex = libc::SYS_futex as u64;
        assert_ne!(sleep_place(futex, 0x7f00_1000), sleep_place(futex, 0x7f00_2000));
        assert_ne!(sleep_place(select, 0), sleep_place(libc::SYS_ppoll as u64, 0));
    }

    #[test]
    fn modes_keep_what_they_can_prove() {
        let busy = Activity::new(Some(true), Some(true));
        let waiting = Activity::new(Some(false), Some(false));
        let unknown = Activity::new(None, None);
        assert!(Mode::Wall.keeps(waiting) && Mode::Wall.keeps(unknown));
        assert!(Mode::Cpu.keeps(busy) && !Mode::Cpu.keeps(waiting) && !Mode::Cpu.keeps(unknown));
        assert!(Mode::Gil.keeps(busy) && !Mode::Gil.keeps(waiting) && !Mode::Gil.keeps(unknown));
        assert_eq!(busy.on_cpu(), Some(true));
        assert_eq!(unknown.holds_gil(), None);
    }

    #[test]
    fn a_spinning_thread_is_on_cpu_a_sleeping_one_is_not_until_it_runs_again() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        use std::time::Duration;
        let (stop, asleep) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let (tx, rx) = std::sync::mpsc::channel();
        let (wake_tx, wake_rx) = std::sync::mpsc::channel::<()>();
        let (stop2, asleep2) = (stop.clone(), asleep.clone());
        let worker = std::thread::spawn(move || {
            tx.send(unsafe { libc::gettid() }).unwrap();
            while !stop2.load(Ordering::Relaxed) {
                std::hint::spin_loop();
            }
            asleep2.store(true, Ordering::Relaxed);
            let _ = wake_rx.recv();
            let t = std::time::Instant::now();
            while t.elapsed() < Duration::from_millis(100) {
                std::hint::spin_loop();
            }
        });
        let tid = rx.recv().unwrap();
        let mut r = ActivityReader::new(std::process::id() as i32);
        let now = crate::clock::now_ns;
        let tick = |r: &mut ActivityReader| {
            r.end_tick();
            std::thread::sleep(Duration::from_millis(50));
        };
        tick(&mut r);
        assert_eq!(r.on_cpu(tid, now()), Some(true), "spinning (first sight: its state)");
        tick(&mut r);
        assert_eq!(r.on_cpu(tid, now()), Some(true), "spinning");
        assert_eq!(r.asleep_since(tid, 1), None, "spinning");
        stop.store(true, Ordering::Relaxed);
        while !asleep.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(1));
        }
        // (a moment to get from the flag into the wait, even on a loaded machine)
        tick(&mut r);
        let fell_asleep = now();
        assert_eq!(r.on_cpu(tid, now()), Some(false), "gone to sleep");
        let since = r.asleep_since(tid, 1).expect("asleep since its state was read");
        assert!(since >= fell_asleep);
        tick(&mut r);
        assert_eq!(r.on_cpu(tid, now()), Some(false), "still asleep");
        assert_eq!(r.asleep_since(tid, 1), Some(since), "still asleep");
        wake_tx.send(()).unwrap();
        tick(&mut r);
        assert_eq!(r.asleep_since(tid, 1), None, "woken: it was put on a CPU since");
        assert_eq!(r.on_cpu(-1, now()), None);
        worker.join().unwrap();
    }

    #[test]
    fn a_computing_thread_is_not_asked_its_state_at_every_tick_and_its_sleep_is_still_seen() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        use std::time::Duration;
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let (wake_tx, wake_rx) = std::sync::mpsc::channel::<()>();
        let stop2 = stop.clone();
        let worker = std::thread::spawn(move || {
            tx.send(unsafe { libc::gettid() }).unwrap();
            while !stop2.load(Ordering::Relaxed) {
                std::hint::spin_loop();
            }
            let _ = wake_rx.recv();
        });
        let tid = rx.recv().unwrap();
        let mut r = ActivityReader::new(std::process::id() as i32);
        let now = crate::clock::now_ns;
        // 1 kHz: the kernel adds a running thread's CPU time to schedstat at its timer
        // tick only (every 4 ms here), so most reads see no growth
        let reads = 200;
        let mut on = 0;
        for _ in 0..reads {
            r.end_tick();
            std::thread::sleep(Duration::from_millis(1));
            on += (r.on_cpu(tid, now()) == Some(true)) as u32;
        }
        let letters = r.stats.get(&tid).map(|s| s.letters_read).unwrap();
        // (a loaded machine preempts it now and then: each such read asks again)
        assert!(on >= reads * 9 / 10, "{on} of {reads} reads on CPU");
        assert!(letters <= reads / 2, "the state letter was read {letters} times in {reads} reads");
        stop.store(true, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(20));
        r.end_tick();
        r.on_cpu(tid, now());
        std::thread::sleep(Duration::from_millis(2));
        r.end_tick();
        assert_eq!(r.on_cpu(tid, now()), Some(false), "asleep, whatever the reads before said");
        wake_tx.send(()).unwrap();
        worker.join().unwrap();
    }

    #[test]
    fn a_thread_read_while_running_is_asleep_where_its_run_ends() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        use std::time::Duration;
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let stop2 = stop.clone();
        let worker = std::thread::spawn(move || {
            tx.send(unsafe { libc::gettid() }).unwrap();
            while !stop2.load(Ordering::Relaxed) {
                std::hint::spin_loop();
            }
            // Straight from running into a sleep: no switch-in, so the count its reads
            // while running saw is the count of this sleep (ppoll: one on every arch).
            let wait = libc::timespec { tv_sec: 0, tv_nsec: 300_000_000 };
            unsafe { libc::ppoll(std::ptr::null_mut(), 0, &wait, std::ptr::null()) };
        });
        let tid = rx.recv().unwrap();
        let mut r = ActivityReader::new(std::process::id() as i32);
        let now = crate::clock::now_ns;
        // Reads 1 ms apart: schedstat grows at the kernel's timer tick only, so most find
        // the spinning thread not surely running, and read .../syscall ("running").
        for _ in 0..100 {
            r.end_tick();
            std::thread::sleep(Duration::from_millis(1));
            r.on_cpu(tid, now());
        }
        let asked = r.stats.get(&tid).map(|s| s.syscall_reads).unwrap();
        assert!(asked <= 50, "asked where it sleeps {asked} times in 100 reads while it ran");
        stop.store(true, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(30));
        // (the first read finds it off CPU; the next asks where it sleeps)
        for _ in 0..2 {
            r.end_tick();
            assert_eq!(r.on_cpu(tid, now()), Some(false));
        }
        let runs = r.runs(tid, true);
        let ppoll = sleep_place(libc::SYS_ppoll as u64, 0).unwrap();
        assert!(matches!(runs, Runs::Asleep(_, place) if place == ppoll), "asleep in ppoll, not {runs:?}");
        worker.join().unwrap();
    }

    #[test]
    fn a_sleeper_is_spared_its_schedstat_while_the_gil_says_it_did_not_run() {
        use std::time::Duration;
        let (tx, rx) = std::sync::mpsc::channel();
        let (wake_tx, wake_rx) = std::sync::mpsc::channel::<()>();
        let worker = std::thread::spawn(move || {
            tx.send(unsafe { libc::gettid() }).unwrap();
            while wake_rx.recv().is_ok() {}
        });
        let tid = rx.recv().unwrap();
        let (key, other) = (0x7f00_0000_1000, 0x7f00_0000_2000);
        let mut r = ActivityReader::new(std::process::id() as i32);
        let now = crate::clock::now_ns;
        let reads = |r: &ActivityReader| r.stats.get(&tid).map(|s| s.schedstat_reads).unwrap();
        let mut woke = Vec::new();
        // one tick: the sleep check before the batch, the batch's GIL, the confirmation
        let mut tick = |r: &mut ActivityReader, gil: GilMark| {
            r.end_tick();
            std::thread::sleep(Duration::from_millis(1));
            let asleep = r.asleep_since(tid, key).is_some();
            r.gil = Some(gil);
            woke.clear();
            r.confirm_replays(&mut woke);
            r.on_cpu(tid, now());
            (asleep, !woke.is_empty())
        };
        std::thread::sleep(Duration::from_millis(20));
        r.gil = Some((5, other));
        tick(&mut r, (5, other));
        tick(&mut r, (5, other));
        assert_eq!(tick(&mut r, (5, other)), (true, false), "asleep, and proved so");
        let (before, proved) = (reads(&r), r.proved_by_gil);
        for _ in 0..3 {
            assert_eq!(tick(&mut r, (5, other)), (true, false));
        }
        assert_eq!(reads(&r), before, "no switch of the GIL: no schedstat read");
        assert_eq!(r.proved_by_gil, proved + 3);
        // The GIL changed hands during the batch, but not to this thread: read after the
        // batch, it still sleeps.
        assert_eq!(tick(&mut r, (6, other)), (true, false));
        assert_eq!(reads(&r), before + 1);
        // It ran (and the GIL changed hands): taken as asleep before the batch, it must
        // be read after all.
        tick(&mut r, (6, other));
        wake_tx.send(()).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        // (as if the wake came within SLEEPER_CHECK_NS of its last read)
        r.stats.get_mut(&tid).unwrap().real_ns = now();
        assert_eq!(tick(&mut r, (7, other)), (true, true), "woke during the batch");
        // Its last holder may take the GIL again without moving the count: never spared.
        for _ in 0..3 {
            tick(&mut r, (7, key));
        }
        let before = reads(&r);
        tick(&mut r, (7, key));
        assert_eq!(reads(&r), before + 1, "the last holder is read every tick");
        // At most SLEEPER_CHECK_NS without a read, whatever the GIL says.
        tick(&mut r, (8, other));
        tick(&mut r, (8, other));
        let before = reads(&r);
        std::thread::sleep(Duration::from_nanos(SLEEPER_CHECK_NS));
        tick(&mut r, (8, other));
        assert_eq!(reads(&r), before + 1, "read again after {SLEEPER_CHECK_NS} ns");
        drop(wake_tx);
        worker.join().unwrap();
    }
}
