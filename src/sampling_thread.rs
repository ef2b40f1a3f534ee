//! What the thread that samples asks of the scheduler before its first tick: wake-ups on
//! time (timer slack), and a priority and a slice that get it the CPU when it wakes.
//!
//! Timer slack: the kernel may delay a sleeper's wake-up by up to its slack (50 us by
//! default) to batch timers; a sampler's deadlines are its samples' timestamps, so its
//! slack is 1 ns.
//!
//! Priority:
//! A sample is stamped when it is read, so a tick that comes late moves every slice edge
//! it finds by as much. On a machine whose CPUs the target keeps busy, a sampler at the
//! default priority competes for them as one task among many: the kernel lets it wake
//! late, and it skips ticks (flask under load on 2 CPUs at 10 kHz: a quarter of the ticks
//! missed, slice durations off by 1.2 ms at p90, 12 intervals). With a higher weight
//! (nice -10) it runs when it wakes (the same cell: 0.17 ms, 1.7 intervals), and takes no
//! more CPU per tick than before: it only gets the CPU on time. Only the thread that
//! samples is raised; the timeline and the writers keep vizattach's own priority.
//!
//! Slice: since Linux 6.6 the fair scheduler (EEVDF) lets a waking task preempt the one
//! running only if its virtual deadline comes first, and a task keeps the CPU for its
//! whole slice once picked (1.4 ms on this 2-CPU VM: 0.7 ms times 1 + log2 of the CPUs). A
//! sampler at nice -10 still woke up to 5 ms late behind the target's own threads: flask
//! under load on 2 CPUs, a bare C sleep loop at nice -10 beside it woke more than 0.4 ms
//! late 220-300 times in 5-6 s (450-650 ms in all), and vizattach's flask cells at 10 kHz
//! came out bimodal (3 of 8: 15 % of ticks missed, p90 slice error 3.5-7.4 intervals,
//! 95 % of calls found). Linux 6.12 lets a thread ask for its own slice (sched_setattr's
//! sched_runtime, no privilege needed), and a waking task whose slice is shorter than the
//! running one's preempts it. The same loop with 0.5 ms: 29 late wake-ups (45 ms); 0.1 ms
//! did no better (47), and cost 1-1.3 points of CPU on the 32-thread benchmarks at 1 kHz:
//! a tick over 0.1 ms was preempted in its middle. 0.5 ms covers nearly every tick.
//! (SCHED_FIFO did better still, 3 late wake-ups, but a real-time thread that spins
//! starves the target on its CPU: not for a tool attached to production processes.)
//! Older kernels ignore the request; the metadata says what the thread got.

/// The nice value the sampling thread asks for when vizattach runs at nice 0.
pub const DEFAULT_NICE: i32 = -10;

/// The scheduler slice the sampling thread asks for: shorter than the default (so that it
/// preempts when it wakes), longer than nearly every tick (so that it is not preempted in
/// one).
pub const SLICE_NS: u64 = 500_000;

/// Whether this kernel takes a custom slice (Linux 6.12+); an older one keeps its own,
/// which is no error (the metadata then names no slice).
pub fn kernel_takes_custom_slices() -> bool {
    let Ok(release) = std::fs::read_to_string("/proc/sys/kernel/osrelease") else {
        return false;
    };
    let mut v = release.split(|c: char| !c.is_ascii_digit()).filter_map(|x| x.parse::<u32>().ok());
    (v.next().unwrap_or(0), v.next().unwrap_or(0)) >= (6, 12)
}

/// Prepares the calling thread to sample: its timer slack, its nice value (see
/// `set_sampling_thread`), then its slice. Returns what it got, for the metadata: "nice
/// -10, slice 0.5 ms". Call it on the thread that samples once the other threads have
/// started: threads started later would inherit all three.
pub fn prepare(wanted_nice: Option<i32>) -> String {
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1, 0, 0, 0) };
    let (nice, refused) = set_sampling_thread(wanted_nice);
    describe(nice, ask_for_short_slice(), refused)
}

/// The kernel's `struct sched_attr` as of its first version (48 bytes), which every
/// kernel with sched_setattr accepts.
#[repr(C)]
#[derive(Default)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
}

fn sched_attr() -> Option<SchedAttr> {
    let mut a = SchedAttr::default();
    let size = std::mem::size_of::<SchedAttr>() as libc::c_uint;
    // SAFETY: a buffer of `size` bytes for the calling thread's attributes.
    let r = unsafe { libc::syscall(libc::SYS_sched_getattr, 0, &mut a as *mut SchedAttr, size, 0) };
    (r == 0).then_some(a)
}

/// Asks for a `SLICE_NS` slice, keeping the thread's policy and nice value. Returns the
/// slice the kernel then reports, None when it keeps its default one (a kernel before
/// 6.12, or a policy that is not the fair scheduler's: left alone).
fn ask_for_short_slice() -> Option<u64> {
    let now = sched_attr()?;
    if now.policy != libc::SCHED_OTHER as u32 && now.policy != libc::SCHED_BATCH as u32 {
        return None;
    }
    let wanted = SchedAttr { size: std::mem::size_of::<SchedAttr>() as u32, runtime: SLICE_NS, ..now };
    // SAFETY: a valid attribute block for the calling thread.
    unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &wanted as *const SchedAttr, 0) };
    // (kernels before 6.12 accept the call and keep their slice: only the readback tells)
    sched_attr().map(|a| a.runtime).filter(|&ns| ns == SLICE_NS)
}

/// Sets the calling thread's nice value (Linux keeps one per thread) to `wanted`, or to
/// `DEFAULT_NICE` when None and vizattach was started at nice 0 (a vizattach started
/// under `nice` keeps what it was given). Returns the value it has, and the one asked
/// for with why the kernel refused it.
fn set_sampling_thread(wanted: Option<i32>) -> (Option<i32>, Option<(i32, String)>) {
    let tid = unsafe { libc::gettid() } as libc::id_t;
    let now = current(tid);
    let target = match wanted {
        Some(n) => n,
        None if now == Some(0) => DEFAULT_NICE,
        None => return (now, None),
    };
    if now == Some(target) {
        return (now, None);
    }
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, target) } == 0 {
        return (current(tid), None);
    }
    let why = match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::EACCES) | Some(libc::EPERM) => "raising priority needs root or CAP_SYS_NICE".to_string(),
        _ => std::io::Error::last_os_error().to_string(),
    };
    (current(tid), Some((target, why)))
}

/// "nice -10, slice 0.5 ms", "nice -10" (the kernel's default slice), or "nice 0, slice
/// 0.5 ms, not -10: why" when the priority asked for was refused.
fn describe(now: Option<i32>, slice_ns: Option<u64>, refused: Option<(i32, String)>) -> String {
    let mut s = format!("nice {}", now.map_or("unknown".to_string(), |n| n.to_string()));
    if let Some(ns) = slice_ns {
        s += &format!(", slice {} ms", ns as f64 / 1e6);
    }
    if let Some((target, why)) = refused {
        s += &format!(", not {target}: {why}");
    }
    s
}

/// Whether `describe` said the priority asked for was refused.
pub fn was_refused(described: &str) -> bool {
    described.contains(", not ")
}

fn current(tid: libc::id_t) -> Option<i32> {
    // getpriority returns the nice value itself, and -1 is a valid one: errno tells.
    unsafe { *libc::__errno_location() = 0 };
    let n = unsafe { libc::getpriority(libc::PRIO_PROCESS, tid) };
    (n != -1 || std::io::Error::last_os_error().raw_os_error() == Some(0)).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` on a thread of its own (the test harness' threads keep their priority);
    /// returns what it returned and the nice value that thread then had.
    fn on_a_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> (T, Option<i32>) {
        std::thread::spawn(|| (f(), current(unsafe { libc::gettid() } as libc::id_t))).join().unwrap()
    }

    #[test]
    fn the_calling_thread_gets_the_nice_asked_for() {
        let me = unsafe { libc::gettid() } as libc::id_t;
        let before = current(me);
        let (set, got) = on_a_thread(|| set_sampling_thread(Some(5)));
        assert_eq!((set, got), ((Some(5), None), Some(5)));
        // (lowering one's priority needs no privilege; only the thread that asked has it)
        assert_eq!(current(me), before);
    }

    #[test]
    fn the_sampling_thread_asks_for_a_short_slice_and_keeps_its_nice() {
        let (said, got) = on_a_thread(|| prepare(Some(6)));
        assert_eq!(got, Some(6), "{said}");
        let expected = if kernel_takes_custom_slices() { "nice 6, slice 0.5 ms" } else { "nice 6" };
        assert_eq!(said, expected);
    }

    #[test]
    fn a_thread_started_under_nice_keeps_it_unless_told() {
        let (set, got) = on_a_thread(|| {
            unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 7) };
            set_sampling_thread(None)
        });
        assert_eq!((set, got), ((Some(7), None), Some(7)));
    }

    #[test]
    fn a_refused_priority_is_said_after_what_the_thread_got() {
        let said = describe(Some(0), Some(SLICE_NS), Some((-10, "raising priority needs root".into())));
        assert_eq!(said, "nice 0, slice 0.5 ms, not -10: raising priority needs root");
        assert!(was_refused(&said));
        assert!(!was_refused(&describe(Some(-10), Some(SLICE_NS), None)));
    }
}
