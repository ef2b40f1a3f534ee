//! When the sampler may stop a thread to read its stack, and for how long in all.
//!
//! Most stacks are read without stopping anything: one batched copy, checked for
//! consistency (docs/ARCHITECTURE.md, "Torn reads"). A thread that changed its stack
//! under every quick re-read of a tick (a CPU-bound thread churning short-lived
//! generators, most often) would otherwise be a lost sample. Such a thread is stopped
//! for the one read that follows (process/stop.rs), which cannot tear, and let go at
//! once. The time threads spend stopped is kept under a share of the capture's wall
//! time (`--pause-budget`); past it, the sample is counted lost instead. Where ptrace is
//! refused (no right, or the target is already traced), sampling goes on without it and
//! the summary says why.

use crate::clock::now_ns;
use crate::process::stop::{self, Pending, PendingState, StopError, Stopped, Watchdog};
use std::time::Duration;

/// The longest one stop may last, vizattach stopped or stuck included: the watchdog
/// ends vizattach past it (and the kernel then lets the thread go).
pub const STOP_BOUND: Duration = Duration::from_millis(250);
/// Wait this long for a thread to stop (it runs, so it stops within tens of
/// microseconds); one that has not stopped by then is let go when it does.
const STOP_WAIT_US: u64 = 2000;
/// Spin this long of the wait before sleeping between looks: 90 % of stops on black at
/// 10 kHz came within 33-50 µs of the seize (the interrupt reaches a running thread on the
/// other CPU in about 20 µs).
const STOP_SPIN: Duration = Duration::from_micros(60);
/// Stop time allowed before the budget's share has anything to be a share of.
const BUDGET_HEADROOM_NS: u64 = 2_000_000;

/// Tests only (the hidden `--pause-hold-ms`): keep every stopped thread stopped this
/// long, to prove the watchdog and the kernel resume it whatever happens to vizattach.
pub static HOLD_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// Tests only (the hidden `--pause-every N`): every Nth tick, read every thread stopped
/// (0: never; 1: every tick).
pub static EVERY: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// Tests only (the hidden `--pause-wait-us`): give up waiting for a stop this soon, so
/// that threads are let go a tick later (src/activity.rs, `Touch`).
pub static WAIT_US: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(STOP_WAIT_US);

pub struct Pauser {
    /// share of wall time threads may spend stopped (0: never stop one)
    budget: f64,
    started_ns: u64,
    stopped_ns: u64,
    pub stops: u64,
    /// stops that caught a signal on its way to the thread, handed back on detach
    pub signals_handed_back: u64,
    watchdog: Option<Watchdog>,
    /// threads interrupted that had not stopped when we gave up waiting
    pending: Vec<Pending>,
    /// threads of `pending` let go since the caller last took them (their switch-in
    /// counts move by our hand until they run: src/activity.rs)
    pub let_go: Vec<i32>,
    /// why stopping is off for this capture, once it is
    pub refused: Option<String>,
    /// ticks seen by `read_all_stopped`
    ticks: u64,
}

/// A thread stopped for a read; give it back with `Pauser::resume`.
pub struct Stop {
    thread: Stopped,
    since: u64,
}

impl Pauser {
    pub fn new(budget_percent: f64) -> Pauser {
        Pauser {
            budget: budget_percent / 100.0,
            started_ns: now_ns(),
            stopped_ns: 0,
            stops: 0,
            signals_handed_back: 0,
            watchdog: None,
            pending: Vec::new(),
            let_go: Vec::new(),
            refused: (budget_percent <= 0.0).then(|| "off (--pause-budget 0)".into()),
            ticks: 0,
        }
    }

    /// Call once per tick: whether this tick reads every thread stopped (tests only).
    pub fn read_all_stopped(&mut self) -> bool {
        let every = EVERY.load(std::sync::atomic::Ordering::Relaxed);
        self.ticks += 1;
        every > 0 && self.refused.is_none() && self.ticks.is_multiple_of(every)
    }

    /// Whether a thread may be stopped now.
    pub fn allowed(&self) -> bool {
        let spent = self.stopped_ns as f64;
        let allowed = self.budget * now_ns().saturating_sub(self.started_ns) as f64 + BUDGET_HEADROOM_NS as f64;
        self.refused.is_none() && spent < allowed
    }

    /// Time threads have spent stopped so far.
    pub fn stopped_ns(&self) -> u64 {
        self.stopped_ns
    }

    /// Stops thread `tid`; None when it could not be (gone, not stopped in time, or
    /// refused: then stopping is off from now on).
    pub fn stop(&mut self, tid: i32) -> Option<Stop> {
        // A thread still seized from a stop we gave up waiting for cannot be seized again.
        self.tend();
        if self.holds(tid) {
            return None;
        }
        if self.watchdog.is_none() {
            match Watchdog::start(STOP_BOUND) {
                Ok(w) => self.watchdog = Some(w),
                Err(e) => {
                    self.refused = Some(format!("off (no watchdog: {e})"));
                    return None;
                }
            }
        }
        let watchdog = self.watchdog.as_ref()?;
        watchdog.arm();
        let since = now_ns();
        let wait = Duration::from_micros(WAIT_US.load(std::sync::atomic::Ordering::Relaxed));
        let stopped = stop::stop_thread(tid, wait, STOP_SPIN.min(wait));
        match stopped {
            Ok(thread) => {
                let hold = HOLD_MS.load(std::sync::atomic::Ordering::Relaxed);
                if hold > 0 {
                    std::thread::sleep(Duration::from_millis(hold));
                }
                Some(Stop { thread, since })
            }
            Err(e) => {
                watchdog.disarm();
                self.stopped_ns += now_ns() - since;
                match e {
                    // (refused after stops have worked: traced by someone else for now)
                    StopError::Denied(_) if self.stops > 0 => {}
                    StopError::Denied(e) => {
                        self.refused = Some(format!("refused by ptrace ({e}): stacks torn by a busy thread are lost"))
                    }
                    StopError::NotStopped(p) => self.pending.push(p),
                    StopError::Other(_) => {}
                }
                None
            }
        }
    }

    /// Lets a stopped thread go.
    pub fn resume(&mut self, s: Stop) {
        self.signals_handed_back += (s.thread.signal() != 0) as u64;
        drop(s.thread);
        if let Some(w) = &self.watchdog {
            w.disarm();
        }
        self.stopped_ns += now_ns() - s.since;
        self.stops += 1;
    }

    /// Lets go threads that stopped after we gave up waiting for them.
    pub fn tend(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let let_go = &mut self.let_go;
        self.pending.retain(|p| match p.poll() {
            PendingState::Running => true,
            PendingState::Stopped(_) | PendingState::Gone => {
                let_go.push(p.tid());
                false
            }
        });
    }

    /// Whether `tid` was interrupted and has not been let go yet.
    pub fn holds(&self, tid: i32) -> bool {
        self.pending.iter().any(|p| p.tid() == tid)
    }
}
