//! What the thread that samples asks of the scheduler before its first tick: wake-ups on
//! time (timer slack) and a priority that gets it the CPU when it wakes.
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

/// The nice value the sampling thread asks for when vizattach runs at nice 0.
pub const DEFAULT_NICE: i32 = -10;

/// Prepares the calling thread to sample: its timer slack, then its nice value (see
/// `set_sampling_thread`, whose description it returns). Call it on the thread that
/// samples once the other threads have started: threads started later would inherit both.
pub fn prepare(wanted_nice: Option<i32>) -> String {
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1, 0, 0, 0) };
    set_sampling_thread(wanted_nice)
}

/// Sets the calling thread's nice value (Linux keeps one per thread) to `wanted`, or to
/// `DEFAULT_NICE` when None and vizattach was started at nice 0 (a vizattach started
/// under `nice` keeps what it was given). Says what the thread got, for the metadata.
pub fn set_sampling_thread(wanted: Option<i32>) -> String {
    let tid = unsafe { libc::gettid() } as libc::id_t;
    let now = current(tid);
    let target = match wanted {
        Some(n) => n,
        None if now == Some(0) => DEFAULT_NICE,
        None => return describe(now, None),
    };
    if now == Some(target) {
        return describe(now, None);
    }
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, target) } == 0 {
        return describe(current(tid), None);
    }
    let why = match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::EACCES) | Some(libc::EPERM) => "raising priority needs root or CAP_SYS_NICE".to_string(),
        _ => std::io::Error::last_os_error().to_string(),
    };
    describe(current(tid), Some((target, why)))
}

/// "nice -10", or "nice 0, not -10: why" when the priority asked for was refused.
fn describe(now: Option<i32>, refused: Option<(i32, String)>) -> String {
    let now = now.map_or("unknown".to_string(), |n| n.to_string());
    match refused {
        None => format!("nice {now}"),
        Some((target, why)) => format!("nice {now}, not {target}: {why}"),
    }
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

    /// Run on a thread of its own: the test harness' threads keep their priority.
    fn on_a_thread(f: impl FnOnce() -> (String, Option<i32>) + Send + 'static) -> (String, Option<i32>) {
        std::thread::spawn(f).join().unwrap()
    }

    #[test]
    fn the_calling_thread_gets_the_nice_asked_for_and_says_so() {
        let me = unsafe { libc::gettid() } as libc::id_t;
        let before = current(me);
        let (said, got) = on_a_thread(|| {
            let said = set_sampling_thread(Some(5));
            (said, current(unsafe { libc::gettid() } as libc::id_t))
        });
        assert_eq!(got, Some(5));
        assert_eq!(said, "nice 5");
        // (lowering one's priority needs no privilege; only the thread that asked has it)
        assert_eq!(current(me), before);
    }

    #[test]
    fn a_thread_started_under_nice_keeps_it_unless_told() {
        let (said, got) = on_a_thread(|| {
            let tid = unsafe { libc::gettid() } as libc::id_t;
            unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, 7) };
            (set_sampling_thread(None), current(tid))
        });
        assert_eq!((said.as_str(), got), ("nice 7", Some(7)));
    }
}
