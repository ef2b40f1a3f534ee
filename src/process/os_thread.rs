//! What the kernel says one thread is doing: running or sleeping, and, for a sleeping
//! thread, the system call it sleeps in with its arguments (/proc/PID/task/TID/stat and
//! .../syscall). The futex address of a sleeping thread is what tells a GIL wait and a
//! lock wait apart (python/thread_status.rs, python/locks.rs). Dumps only: these are
//! files opened once per thread per dump, never on a sampling path.

/// One thread as /proc shows it at the moment of reading.
#[derive(Debug, Clone, Default)]
pub struct OsThread {
    /// state R (running or runnable)
    pub on_cpu: bool,
    /// the system call the thread is blocked in, when it is blocked in one
    pub syscall: Option<Syscall>,
}

#[derive(Debug, Clone)]
pub struct Syscall {
    pub number: i64,
    /// the first three arguments (a futex's address is the first)
    pub args: [u64; 3],
}

impl Syscall {
    /// The system call's name on this architecture (`syscall_N` for one we do not name).
    pub fn name(&self) -> String {
        syscall_name(self.number).map(str::to_string).unwrap_or_else(|| format!("syscall_{}", self.number))
    }

    pub fn is_futex(&self) -> bool {
        self.number == libc::SYS_futex
    }
}

pub fn read(pid: i32, tid: i32) -> OsThread {
    let dir = format!("/proc/{pid}/task/{tid}");
    let stat = std::fs::read_to_string(format!("{dir}/stat")).unwrap_or_default();
    // the state follows the command name, which is in parentheses and may hold anything
    let state = stat.rfind(')').and_then(|i| stat[i + 1..].split_whitespace().next()).unwrap_or("");
    let on_cpu = state == "R";
    // Needs the same right as reading memory; a thread that is running has no syscall.
    let syscall = if on_cpu {
        None
    } else {
        std::fs::read_to_string(format!("{dir}/syscall")).ok().and_then(|s| parse_syscall(&s))
    };
    OsThread { on_cpu, syscall }
}

/// "202 0x7f.. 0x80 0x0 ..." -> futex with its arguments; "running" and "-1 sp pc" (blocked
/// outside a system call, e.g. stopped) -> None.
fn parse_syscall(s: &str) -> Option<Syscall> {
    let mut it = s.split_whitespace();
    let number: i64 = it.next()?.parse().ok()?;
    if number < 0 {
        return None;
    }
    let mut args = [0u64; 3];
    for a in args.iter_mut() {
        let h = it.next()?;
        *a = u64::from_str_radix(h.trim_start_matches("0x"), 16).ok()?;
    }
    Some(Syscall { number, args })
}

/// The system calls a blocked program usually sleeps in; the numbers come from libc for
/// the architecture we are built for (the target's, since process_vm_readv needs both
/// to match).
fn syscall_name(n: i64) -> Option<&'static str> {
    use libc::*;
    let table: &[(i64, &str)] = &[
        (SYS_futex, "futex"),
        (SYS_read, "read"),
        (SYS_write, "write"),
        (SYS_readv, "readv"),
        (SYS_writev, "writev"),
        (SYS_pread64, "pread64"),
        (SYS_pwrite64, "pwrite64"),
        (SYS_openat, "openat"),
        (SYS_close, "close"),
        (SYS_ppoll, "ppoll"),
        (SYS_pselect6, "pselect6"),
        (SYS_epoll_pwait, "epoll_pwait"),
        (SYS_epoll_pwait2, "epoll_pwait2"),
        (SYS_nanosleep, "nanosleep"),
        (SYS_clock_nanosleep, "clock_nanosleep"),
        (SYS_accept4, "accept4"),
        (SYS_connect, "connect"),
        (SYS_recvfrom, "recvfrom"),
        (SYS_recvmsg, "recvmsg"),
        (SYS_recvmmsg, "recvmmsg"),
        (SYS_sendto, "sendto"),
        (SYS_sendmsg, "sendmsg"),
        (SYS_wait4, "wait4"),
        (SYS_waitid, "waitid"),
        (SYS_rt_sigtimedwait, "rt_sigtimedwait"),
        (SYS_rt_sigsuspend, "rt_sigsuspend"),
        (SYS_flock, "flock"),
        (SYS_fcntl, "fcntl"),
        (SYS_ioctl, "ioctl"),
        (SYS_io_getevents, "io_getevents"),
        (SYS_msgrcv, "msgrcv"),
        (SYS_semtimedop, "semtimedop"),
        (SYS_io_uring_enter, "io_uring_enter"),
        (SYS_futex_waitv, "futex_waitv"),
        #[cfg(target_arch = "x86_64")]
        (SYS_poll, "poll"),
        #[cfg(target_arch = "x86_64")]
        (SYS_select, "select"),
        #[cfg(target_arch = "x86_64")]
        (SYS_epoll_wait, "epoll_wait"),
        #[cfg(target_arch = "x86_64")]
        (SYS_accept, "accept"),
        #[cfg(target_arch = "x86_64")]
        (SYS_pause, "pause"),
        #[cfg(target_arch = "x86_64")]
        (SYS_wait4, "wait4"),
    ];
    table.iter().find(|(k, _)| *k == n).map(|(_, v)| *v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_kernel_formats() {
        let s = parse_syscall("202 0x7f00aa 0x189 0x0 0x0 0x0 0xffffffff 0x7ffc 0x7f12\n").unwrap();
        assert!(s.is_futex());
        assert_eq!(s.name(), "futex");
        assert_eq!(s.args, [0x7f00aa, 0x189, 0]);
        assert!(parse_syscall("running\n").is_none());
        assert!(parse_syscall("-1 0x7ffc 0x7f12\n").is_none());
        assert_eq!(Syscall { number: 99_999, args: [0; 3] }.name(), "syscall_99999");
    }
}
