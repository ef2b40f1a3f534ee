//! Stopping one thread of the target for a moment (PTRACE_SEIZE, PTRACE_INTERRUPT) and
//! letting it go (PTRACE_DETACH), and the watchdog that bounds every such stop whatever
//! happens to vizattach. Used by `dump --native` (registers and C stack) and by the
//! sampler (a stack the thread kept changing while it was read: src/sampler.rs).
//!
//! The target is resumed whatever happens to vizattach:
//! - the kernel detaches (and so resumes) every tracee the moment its tracer exits, for
//!   whatever reason, SIGKILL included; PTRACE_O_EXITKILL is never set;
//! - a watchdog process forked at the start SIGKILLs vizattach if one stop has lasted
//!   longer than its bound (vizattach stopped with SIGSTOP or Ctrl-Z, or stuck): its exit
//!   then detaches the thread. The watchdog has its own process group, so a terminal's
//!   Ctrl-Z does not stop it with vizattach, and it leaves as soon as vizattach closes
//!   its end of a pipe, which also happens when vizattach dies.
//!
//! Nothing the thread receives meanwhile is lost: a signal that arrives while it is
//! seized stops it in a signal-delivery stop, and that signal is handed back when it is
//! detached (PTRACE_DETACH's data). A thread in a group stop (someone sent the process
//! SIGSTOP) stays stopped when detached, as it would have without us.

use crate::clock::now_ns;
use std::time::{Duration, Instant};

/// A seized thread, detached (resumed) on drop. Only a stopped tracee can be detached:
/// one that has not stopped yet is a `Pending`.
pub struct Stopped {
    tid: i32,
    /// the signal it was stopped on the way to, handed back on detach (0: none)
    signal: i32,
}

impl Stopped {
    /// The signal it was stopped on the way to (0: none), which detaching hands back.
    pub fn signal(&self) -> i32 {
        self.signal
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = ptrace(libc::PTRACE_DETACH, self.tid, 0, self.signal as usize);
    }
}

/// Seized and interrupted but not stopped yet (in an uninterruptible sleep, most
/// often): it must be waited for and detached once it stops (`Pending::poll`). Dropped
/// unstopped, it stays seized until vizattach exits, when the kernel lets it go.
pub struct Pending(i32);

impl Pending {
    pub fn tid(&self) -> i32 {
        self.0
    }

    /// What became of the thread: stopped by now (detach it to let it go), not yet, or
    /// gone.
    pub fn poll(&self) -> PendingState {
        match wait_status(self.0, true) {
            Ok(Some(status)) => PendingState::Stopped(Stopped { tid: self.0, signal: signal_to_hand_back(status) }),
            Ok(None) => PendingState::Running,
            Err(_) => PendingState::Gone,
        }
    }
}

pub enum PendingState {
    Stopped(Stopped),
    Running,
    Gone,
}

pub enum StopError {
    /// ptrace refused: no right to trace the target (the remedy is in README)
    Denied(std::io::Error),
    /// the thread is gone, or the kernel said why not
    Other(String),
    /// seized and interrupted, not stopped within the wait
    NotStopped(Pending),
}

/// Stops thread `tid`: seizes it, interrupts it and waits up to `wait` for the stop:
/// spinning on the CPU for the first `spin` of it if the thread runs on another CPU (it
/// stops within tens of microseconds there), sleeping between looks otherwise (a thread
/// asleep, or waiting for this very CPU, needs this CPU to get to its stop).
///
/// Never `sched_yield` while waiting: under EEVDF a yield pushes the caller's deadline
/// past the other runnable tasks of its CPU, and vizattach's timeline thread, busy at 10
/// kHz, then ran 0.5-1.3 ms before the sampler got its CPU back, though the thread had
/// stopped 20-30 µs after the interrupt (perf's sched_switch on black 3.13 at 10 kHz: 7 %
/// of stops, 100-180 ms per 8 s capture without a sample). A short sleep leaves the CPU
/// to a thread the interrupt woke here as a yield did, and the sampler's wake-up
/// preempts whatever ran meanwhile.
pub fn stop_thread(tid: i32, wait: Duration, spin: Duration) -> Result<Stopped, StopError> {
    let spin = if runs_on_another_cpu(tid) { spin } else { Duration::ZERO };
    match ptrace(libc::PTRACE_SEIZE, tid, 0, 0) {
        Ok(_) => {}
        Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES)) => {
            return Err(StopError::Denied(e))
        }
        Err(e) => return Err(StopError::Other(format!("not paused: {e}"))),
    }
    if let Err(e) = ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0) {
        // (a seized thread that has not stopped cannot be detached: it is gone, or will
        // be let go when vizattach exits)
        return Err(StopError::Other(format!("not paused: {e}")));
    }
    let start = Instant::now();
    loop {
        match wait_status(tid, true) {
            Ok(Some(status)) => return Ok(Stopped { tid, signal: signal_to_hand_back(status) }),
            Ok(None) => {}
            Err(why) => return Err(StopError::Other(why)),
        }
        let waited = start.elapsed();
        if waited > wait {
            return Err(StopError::NotStopped(Pending(tid)));
        }
        if waited < spin {
            std::hint::spin_loop();
        } else {
            std::thread::sleep(STOP_NAP);
        }
    }
}

/// How long a stop's wait sleeps between looks once it is past its spin.
const STOP_NAP: Duration = Duration::from_micros(20);

/// Whether thread `tid` is running right now on a CPU other than the caller's, by its
/// /proc stat (state `R` and the CPU it last ran on; about a microsecond to read, and
/// nothing allocated: the sampler stops threads hundreds of times a second).
/// Unknown counts as no: sleeping between looks is never wrong, only slower.
fn runs_on_another_cpu(tid: i32) -> bool {
    let mut path = [0u8; 32];
    let _ = std::io::Write::write_fmt(&mut &mut path[..], format_args!("/proc/{tid}/stat\0"));
    let mut buf = [0u8; 1024];
    // SAFETY: a NUL-terminated path in a local buffer; read into a local buffer of its
    // length; the descriptor is closed before returning.
    let n = unsafe {
        let fd = libc::open(path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return false;
        }
        let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
        libc::close(fd);
        n
    };
    let Ok(n) = usize::try_from(n) else { return false };
    let stat = &buf[..n];
    // (the command name may hold spaces and parentheses: fields count from the last ')')
    let Some(close) = stat.iter().rposition(|&b| b == b')') else { return false };
    let mut fields = stat[close + 1..].split(|b| b.is_ascii_whitespace()).filter(|f| !f.is_empty());
    let running = fields.next() == Some(&b"R"[..]);
    // `processor` is field 39 of the whole line, the 37th after the name
    let cpu = fields.nth(35).and_then(|c| std::str::from_utf8(c).ok()?.parse::<i32>().ok());
    // SAFETY: no arguments; returns the caller's CPU or -1.
    let mine = unsafe { libc::sched_getcpu() };
    running && mine >= 0 && cpu.is_some_and(|c| c != mine)
}

/// The wait status of a stop of `tid`, if it has stopped (None: not yet).
fn wait_status(tid: i32, nohang: bool) -> Result<Option<i32>, String> {
    let mut status = 0;
    let flags = libc::__WALL | if nohang { libc::WNOHANG } else { 0 };
    // SAFETY: waitpid on a thread we trace, with a valid status pointer.
    let r = unsafe { libc::waitpid(tid, &mut status, flags) };
    if r == tid {
        return if libc::WIFSTOPPED(status) { Ok(Some(status)) } else { Err("exited while being paused".into()) };
    }
    if r < 0 {
        return Err(format!("not paused: {}", std::io::Error::last_os_error()));
    }
    Ok(None)
}

/// The signal a stop was a delivery of (to be handed back on detach), or 0 for the
/// stops ptrace makes itself: the interrupt stop and a group stop (PTRACE_EVENT_STOP).
fn signal_to_hand_back(status: i32) -> i32 {
    if (status >> 16) == libc::PTRACE_EVENT_STOP {
        0
    } else {
        libc::WSTOPSIG(status)
    }
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

/// Registers of a stopped thread.
pub fn registers(s: &Stopped) -> std::io::Result<libc::user_regs_struct> {
    // SAFETY: user_regs_struct is plain data, filled by the kernel.
    let mut regs: libc::user_regs_struct = unsafe { std::mem::zeroed() };
    ptrace(libc::PTRACE_GETREGS, s.tid, 0, &mut regs as *mut _ as usize)?;
    Ok(regs)
}

/// A forked process that SIGKILLs vizattach when one stop outlives `bound`: vizattach
/// marks when a stop begins (`arm`) and when it ends (`disarm`) in a page it shares with
/// the watchdog, which looks every `bound / 8` or so.
pub struct Watchdog {
    write_end: i32,
    child: i32,
    /// the shared page: when the current stop began (CLOCK_MONOTONIC ns; 0: none)
    since: *mut std::sync::atomic::AtomicU64,
}

impl Watchdog {
    pub fn start(bound: Duration) -> std::io::Result<Watchdog> {
        // SAFETY: an anonymous shared mapping of one page, checked below.
        let page = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if page == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let since = page as *mut std::sync::atomic::AtomicU64;
        let mut fds = [0i32; 2];
        // SAFETY: pipe2 fills two descriptors.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let parent = std::process::id() as i32;
        let bound_ns = bound.as_nanos() as u64;
        let look_ms = (bound.as_millis() / 8).clamp(1, 500) as i32;
        // SAFETY: the child only calls async-signal-safe functions (setpgid, close, poll,
        // clock_gettime, kill, _exit) and reads the shared page.
        match unsafe { libc::fork() } {
            -1 => Err(std::io::Error::last_os_error()),
            0 => unsafe {
                libc::setpgid(0, 0);
                libc::close(fds[1]);
                let mut p = libc::pollfd { fd: fds[0], events: libc::POLLIN, revents: 0 };
                loop {
                    // EOF (vizattach finished or died) wakes us
                    if libc::poll(&mut p, 1, look_ms) != 0 {
                        libc::_exit(0);
                    }
                    let began = (*since).load(std::sync::atomic::Ordering::Acquire);
                    if began != 0 && now_ns().saturating_sub(began) > bound_ns {
                        libc::kill(parent, libc::SIGKILL);
                        libc::_exit(0);
                    }
                }
            },
            child => {
                // SAFETY: closing our copy of the read end.
                unsafe { libc::close(fds[0]) };
                Ok(Watchdog { write_end: fds[1], child, since })
            }
        }
    }

    /// A stop begins now.
    pub fn arm(&self) {
        // SAFETY: the page stays mapped for the watchdog's life.
        unsafe { (*self.since).store(now_ns().max(1), std::sync::atomic::Ordering::Release) };
    }

    /// No stop is in progress.
    pub fn disarm(&self) {
        // SAFETY: as in arm.
        unsafe { (*self.since).store(0, std::sync::atomic::Ordering::Release) };
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // SAFETY: our own descriptor, child and mapping.
        unsafe {
            libc::close(self.write_end);
            let mut status = 0;
            libc::waitpid(self.child, &mut status, 0);
            libc::munmap(self.since as *mut libc::c_void, 4096);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::runs_on_another_cpu;
    use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
    use std::sync::Arc;

    fn pin_to(cpu: usize) {
        // SAFETY: a zeroed cpu_set_t with one CPU set, for the calling thread.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        }
    }

    fn gettid() -> i32 {
        // SAFETY: no arguments.
        unsafe { libc::gettid() }
    }

    #[test]
    fn a_thread_is_running_elsewhere_only_when_it_spins_on_the_other_cpu() {
        if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
            return;
        }
        // (on a thread of its own: the harness may run the next test on this one)
        std::thread::spawn(running_elsewhere_by_cpu_and_state).join().unwrap();
    }

    fn running_elsewhere_by_cpu_and_state() {
        pin_to(0);
        // the caller itself runs, but here
        assert!(!runs_on_another_cpu(gettid()));
        let (stop, tid) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicI32::new(0)));
        let spinner = {
            let (stop, tid) = (stop.clone(), tid.clone());
            std::thread::spawn(move || {
                pin_to(1);
                tid.store(gettid(), Ordering::SeqCst);
                while !stop.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        };
        while tid.load(Ordering::SeqCst) == 0 {
            std::thread::yield_now();
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(runs_on_another_cpu(tid.load(Ordering::SeqCst)));
        stop.store(true, Ordering::Relaxed);
        spinner.join().unwrap();
        // asleep, wherever it last ran
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let sleeper_tid = Arc::new(AtomicI32::new(0));
        let sleeper = {
            let t = sleeper_tid.clone();
            std::thread::spawn(move || {
                pin_to(1);
                t.store(gettid(), Ordering::SeqCst);
                let _ = rx.recv();
            })
        };
        while sleeper_tid.load(Ordering::SeqCst) == 0 {
            std::thread::yield_now();
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(!runs_on_another_cpu(sleeper_tid.load(Ordering::SeqCst)));
        tx.send(()).unwrap();
        sleeper.join().unwrap();
        // gone
        assert!(!runs_on_another_cpu(i32::MAX));
    }
}
