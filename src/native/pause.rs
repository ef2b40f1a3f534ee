//! Pausing threads just long enough to copy their registers and the top of their stack,
//! for `dump --native`. Each thread is stopped on its own (PTRACE_SEIZE, then
//! PTRACE_INTERRUPT), its registers and up to STACK_COPY bytes of its stack are copied,
//! and it is detached (which resumes it) before the next one is touched. Unwinding
//! happens afterwards, on the copies, while the target runs.
//!
//! The target is resumed whatever happens to vizattach:
//! - the kernel detaches (and so resumes) every tracee the moment its tracer exits, for
//!   whatever reason, SIGKILL included; PTRACE_O_EXITKILL is never set;
//! - a watchdog process forked before the first pause SIGKILLs vizattach if the pausing
//!   phase has not ended within WATCHDOG (vizattach stopped with SIGSTOP, or stuck): its
//!   exit then detaches the threads. The watchdog leaves as soon as vizattach closes its
//!   end of a pipe, which also happens when vizattach dies.
//!
//! So no thread of the target stays paused longer than WATCHDOG (documented in README).

use crate::error::{Error, Result};
use std::time::{Duration, Instant};

/// The longest the pausing phase may last before the watchdog ends vizattach.
pub const WATCHDOG: Duration = Duration::from_secs(3);
/// Stop waiting for one thread to stop after this (it is left alone and reported).
const STOP_WAIT: Duration = Duration::from_millis(500);
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
    let watchdog = Watchdog::start()?;
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
    for s in pending {
        let left = WATCHDOG.saturating_sub(started.elapsed()).saturating_sub(Duration::from_millis(200));
        if wait_stopped(s.0, left).is_err() {
            std::mem::forget(s); // not stopped: PTRACE_DETACH would fail anyway
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
    NotStopped(Seized),
}

fn ptrace(req: libc::c_uint, tid: i32, addr: usize, data: usize) -> std::io::Result<libc::c_long> {
    // SAFETY: plain ptrace requests on a thread id; the kernel checks everything.
    let r = unsafe { libc::ptrace(req, tid, addr as *mut libc::c_void, data as *mut libc::c_void) };
    if r == -1 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Detaches on drop: every path out of `capture_one` after a successful seize resumes
/// the thread.
struct Seized(i32);

impl Drop for Seized {
    fn drop(&mut self) {
        // Only a stopped tracee can be detached; one that never stopped is detached by
        // the kernel when vizattach exits (moments later: a dump ends right after).
        let _ = ptrace(libc::PTRACE_DETACH, self.0, 0, 0);
    }
}

fn capture_one(
    tid: i32,
    stack_end: &impl Fn(u64) -> Option<u64>,
    hold_ms: u64,
) -> std::result::Result<Captured, CaptureError> {
    match ptrace(libc::PTRACE_SEIZE, tid, 0, 0) {
        Ok(_) => {}
        Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES)) => {
            return Err(CaptureError::Denied(e))
        }
        Err(e) => return Err(CaptureError::Other(format!("not paused: {e}"))), // gone meanwhile
    }
    let seized = Seized(tid);
    ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0).map_err(|e| CaptureError::Other(format!("not paused: {e}")))?;
    if let Err(e) = wait_stopped(tid, STOP_WAIT) {
        return Err(match e {
            CaptureError::Other(why) if why.starts_with("did not stop") => CaptureError::NotStopped(seized),
            e => e,
        });
    }
    let mut regs: libc::user_regs_struct = unsafe { std::mem::zeroed() };
    ptrace(libc::PTRACE_GETREGS, tid, 0, &mut regs as *mut _ as usize)
        .map_err(|e| CaptureError::Other(format!("no registers: {e}")))?;
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
    drop(seized); // resume before anything else happens
    Ok(Captured { tid, regs, stack_start: start, stack })
}

/// Waits (polling, never blocking without bound) for the interrupt stop.
fn wait_stopped(tid: i32, wait: Duration) -> std::result::Result<(), CaptureError> {
    let deadline = Instant::now() + wait;
    loop {
        let mut status = 0;
        // SAFETY: waitpid on a thread we trace, with a valid status pointer.
        let r = unsafe { libc::waitpid(tid, &mut status, libc::__WALL | libc::WNOHANG) };
        if r == tid {
            if libc::WIFSTOPPED(status) {
                return Ok(());
            }
            return Err(CaptureError::Other("exited while being paused".into()));
        }
        if r < 0 {
            return Err(CaptureError::Other(format!("not paused: {}", std::io::Error::last_os_error())));
        }
        if Instant::now() > deadline {
            return Err(CaptureError::Other(format!("did not stop within {wait:?}")));
        }
        std::thread::sleep(Duration::from_micros(50));
    }
}

/// A forked process that SIGKILLs vizattach if the pausing phase outlives WATCHDOG.
struct Watchdog {
    write_end: i32,
    child: i32,
}

impl Watchdog {
    fn start() -> Result<Watchdog> {
        let mut fds = [0i32; 2];
        // SAFETY: pipe2 fills two descriptors.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(Error::Io(format!("watchdog pipe: {}", std::io::Error::last_os_error())));
        }
        let parent = std::process::id() as i32;
        let timeout_ms = WATCHDOG.as_millis() as i32;
        // SAFETY: the child only calls async-signal-safe functions (close, poll, kill, _exit).
        match unsafe { libc::fork() } {
            -1 => Err(Error::Io(format!("watchdog fork: {}", std::io::Error::last_os_error()))),
            0 => unsafe {
                libc::close(fds[1]);
                let mut p = libc::pollfd { fd: fds[0], events: libc::POLLIN, revents: 0 };
                // EOF (vizattach finished or died) wakes us; a timeout means it is stuck
                let r = libc::poll(&mut p, 1, timeout_ms);
                if r == 0 {
                    libc::kill(parent, libc::SIGKILL);
                }
                libc::_exit(0);
            },
            child => {
                // SAFETY: closing our copy of the read end.
                unsafe { libc::close(fds[0]) };
                Ok(Watchdog { write_end: fds[1], child })
            }
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // SAFETY: our own descriptor and child.
        unsafe {
            libc::close(self.write_end);
            let mut status = 0;
            libc::waitpid(self.child, &mut status, 0);
        }
    }
}
