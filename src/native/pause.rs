//! Pausing threads just long enough to copy their registers and the top of their stack,
//! for `dump --native`. Each thread is stopped on its own (PTRACE_SEIZE, then
//! PTRACE_INTERRUPT), its registers and up to STACK_COPY bytes of its stack are copied,
//! and it is detached (which resumes it) before the next one is touched. Unwinding
//! happens afterwards, on the copies, while the target runs.
//!
//! The target is resumed whatever happens to vizattach (process/stop.rs); here the
//! watchdog bounds the whole pausing phase, so no thread of the target stays paused
//! longer than WATCHDOG (documented in README).

use crate::error::{Error, Result};
use crate::process::stop::{self, Pending, StopError, Watchdog};
use std::time::{Duration, Instant};

/// The longest the pausing phase may last before the watchdog ends vizattach.
pub const WATCHDOG: Duration = Duration::from_secs(3);
/// Stop waiting for one thread to stop after this (it is left alone and reported).
const STOP_WAIT: Duration = Duration::from_millis(500);
/// Spin this long for a thread to stop before sleeping between looks (process/stop.rs).
const STOP_SPIN: Duration = Duration::from_micros(60);
/// Bytes of stack copied above the stack pointer: deep enough for hundreds of C frames.
pub const STACK_COPY: u64 = 512 * 1024;
/// The x86-64 red zone below the stack pointer, copied too.
pub const RED_ZONE: u64 = 128;

/// Tests only (the hidden `--native-hold-ms`): keep the first thread paused this long,
/// to prove the watchdog and the kernel resume it whatever happens to vizattach.
pub static HOLD_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// One thread's registers and the copy of its stack, taken while it was stopped.
pub struct Captured {
    pub tid: i32,
    pub regs: Regs,
    /// the copy starts at this address
    pub stack_start: u64,
    pub stack: Vec<u8>,
}

/// The registers an unwind starts from.
#[derive(Debug, Clone, Copy)]
pub struct Regs {
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
}

/// What happened to a thread that could not be captured.
pub struct Missed {
    pub tid: i32,
    pub why: String,
}

/// Captures every thread in `tids`, one at a time. Fails as a whole only when ptrace
/// itself is refused (no permission), with the remedy named.
pub fn capture_all(
    pid: i32,
    tids: &[i32],
    stack_end: impl Fn(u64) -> Option<u64>,
) -> Result<(Vec<Captured>, Vec<Missed>)> {
    if !cfg!(target_arch = "x86_64") {
        return Err(Error::Usage("--native unwinds x86-64 processes only".into()));
    }
    let watchdog = Watchdog::start(WATCHDOG).map_err(|e| Error::Io(format!("watchdog: {e}")))?;
    watchdog.arm();
    let started = Instant::now();
    let mut pending = Vec::new();
    let mut done = Vec::new();
    let mut missed = Vec::new();
    for (i, &tid) in tids.iter().enumerate() {
        if started.elapsed() > WATCHDOG / 2 && i > 0 {
            missed.push(Missed { tid, why: "not paused: the pausing phase ran out of time".into() });
            continue;
        }
        let hold = if i == 0 { HOLD_MS.load(std::sync::atomic::Ordering::Relaxed) } else { 0 };
        match capture_one(tid, &stack_end, hold) {
            Ok(c) => done.push(c),
            Err(CaptureError::Denied(e)) => {
                drop(watchdog);
                return Err(Error::PermissionDenied {
                    pid,
                    what: format!("threads for --native (ptrace: {e}; the dump without --native needs no ptrace)"),
                });
            }
            Err(CaptureError::Other(why)) => missed.push(Missed { tid, why }),
            Err(CaptureError::NotStopped(s)) => {
                missed.push(Missed { tid, why: format!("did not stop within {STOP_WAIT:?}") });
                pending.push(s);
            }
        }
    }
    // A thread still to stop would stay stopped once it does: wait for it (within the
    // watchdog's bound) and let it go. One that never stops is released by the kernel
    // when vizattach exits, right after the dump.
    for p in pending {
        let left = WATCHDOG.saturating_sub(started.elapsed()).saturating_sub(Duration::from_millis(200));
        let give_up = Instant::now() + left;
        // (once stopped, dropping it detaches it; one that never stops is let go by the
        // kernel when vizattach exits)
        while Instant::now() < give_up && matches!(p.poll(), stop::PendingState::Running) {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    drop(watchdog);
    Ok((done, missed))
}

enum CaptureError {
    Denied(std::io::Error),
    Other(String),
    /// seized and interrupted, but not stopped yet (in an uninterruptible sleep): it can
    /// be detached only once it stops
    NotStopped(Pending),
}

fn capture_one(
    tid: i32,
    stack_end: &impl Fn(u64) -> Option<u64>,
    hold_ms: u64,
) -> std::result::Result<Captured, CaptureError> {
    let stopped = match stop::stop_thread(tid, STOP_WAIT, STOP_SPIN) {
        Ok(s) => s,
        Err(StopError::Denied(e)) => return Err(CaptureError::Denied(e)),
        Err(StopError::Other(why)) => return Err(CaptureError::Other(why)),
        Err(StopError::NotStopped(p)) => return Err(CaptureError::NotStopped(p)),
    };
    let regs = stop::registers(&stopped).map_err(|e| CaptureError::Other(format!("no registers: {e}")))?;
    let regs = Regs { ip: regs.rip, sp: regs.rsp, bp: regs.rbp };
    let start = regs.sp.saturating_sub(RED_ZONE);
    let end = stack_end(regs.sp).unwrap_or(regs.sp).min(regs.sp.saturating_add(STACK_COPY));
    let mut stack = vec![0u8; end.saturating_sub(start) as usize];
    let mem = crate::process::memory::Memory::new(tid);
    use crate::process::memory::ReadMem;
    if mem.read(start, &mut stack).is_err() {
        stack.clear();
    }
    if hold_ms > 0 {
        std::thread::sleep(Duration::from_millis(hold_ms));
    }
    drop(stopped); // resume before anything else happens
    Ok(Captured { tid, regs, stack_start: start, stack })
}
