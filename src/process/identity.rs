//! Which process a pid names. Pids are reused: a worker that exits may hand its pid to
//! anything started later. A pid, its start time and where its program is loaded name one
//! process image: a reused pid has another start time (/proc/PID/stat field 22), and an
//! exec (a forked Python child that becomes `sleep`, or a fresh interpreter) keeps the
//! start time but loads the new program's code and arguments elsewhere (fields 26 and 48).

/// What tells one process image from another under the same pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Identity {
    /// clock ticks after boot when the process started
    pub start: u64,
    /// start of its program's code and of its arguments (0 where the kernel hides them:
    /// then an exec goes unnoticed, a reuse does not)
    pub image: (u64, u64),
}

impl Identity {
    /// How long ago the process started, to the kernel's clock tick (its start time counts
    /// ticks since boot, CLOCK_BOOTTIME's origin).
    pub fn age(&self) -> std::time::Duration {
        // SAFETY: sysconf reads a constant.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: clock_gettime writes only into ts.
        unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
        let now_ms = ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000;
        let started_ms = self.start.saturating_mul(1000) / hz;
        std::time::Duration::from_millis(now_ms.saturating_sub(started_ms))
    }
}

/// The identity in a stat line, "pid (comm) S ppid ...", if the process is not a zombie.
pub fn parse(stat: &str) -> Option<Identity> {
    // fields after the command name, which may itself hold parentheses; field 3 first
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    if matches!(fields.first(), None | Some(&"Z") | Some(&"X") | Some(&"x")) {
        return None;
    }
    Some(Identity { start: field(22)?, image: (field(26).unwrap_or(0), field(48).unwrap_or(0)) })
}

/// The identity of the live process `pid`; None when it is gone or a zombie.
pub fn of(pid: i32) -> Option<Identity> {
    parse(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stat line of a process started at `start`, code at `code`, arguments at `args`.
    fn stat(comm: &str, state: &str, start: u64, code: u64, args: u64) -> String {
        let mut f: Vec<String> = (3..=52).map(|_| "0".to_string()).collect();
        f[0] = state.into();
        f[22 - 3] = start.to_string();
        f[26 - 3] = code.to_string();
        f[48 - 3] = args.to_string();
        format!("4242 ({comm}) {}", f.join(" "))
    }

    #[test]
    fn this_process_is_as_old_as_it_has_run() {
        let before = of(std::process::id() as i32).unwrap().age();
        std::thread::sleep(std::time::Duration::from_millis(120));
        let after = of(std::process::id() as i32).unwrap().age();
        // (to the kernel's clock tick, 10 ms at most)
        assert!(after >= before + std::time::Duration::from_millis(90), "{before:?} then {after:?}");
        assert!(after < std::time::Duration::from_secs(3600), "{after:?}");
    }

    #[test]
    fn a_reused_pid_has_another_start_time() {
        let old = parse(&stat("python3", "S", 1000, 0x5000, 0x7ff0)).unwrap();
        let reused = parse(&stat("python3", "S", 1730, 0x5000, 0x7ff0)).unwrap();
        assert_eq!(old.start, 1000);
        assert_ne!(old, reused);
        assert_eq!(old, parse(&stat("python3", "R", 1000, 0x5000, 0x7ff0)).unwrap());
    }

    #[test]
    fn an_exec_keeps_the_start_time_and_moves_the_image() {
        let forked = parse(&stat("python3", "S", 1000, 0x5000, 0x7ff0)).unwrap();
        let execd = parse(&stat("sleep", "S", 1000, 0x6000, 0x7fa0)).unwrap();
        assert_eq!(forked.start, execd.start);
        assert_ne!(forked, execd);
    }

    #[test]
    fn zombies_and_garbage_have_none() {
        assert_eq!(parse(&stat("a) b", "Z", 1000, 1, 1)), None);
        assert_eq!(parse("4242 (x"), None);
        assert_eq!(parse("4242 (x) S 1 2"), None);
        assert_eq!(parse(&stat("a) b", "S", 7, 1, 1)).map(|i| i.start), Some(7));
    }

    #[test]
    fn a_live_process_keeps_its_identity_until_it_execs() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "read x; exec sleep 30"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let before = of(pid).expect("the shell is alive");
        assert_eq!(of(pid), Some(before));
        use std::io::Write;
        child.stdin.take().unwrap().write_all(b"go\n").unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let after = loop {
            let now = of(pid).expect("sleep is alive");
            if now != before || std::time::Instant::now() > deadline {
                break now;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(after.start, before.start, "an exec keeps the start time");
        assert_ne!(after, before, "an exec moves the image");
        assert_eq!(of(pid), None, "a reaped process has no identity");
    }
}
