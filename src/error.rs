//! Errors a user sees: each is one line that says what happened and what to do.

use std::fmt;

#[derive(Debug)]
pub enum Error {
    NoSuchProcess(i32),
    PermissionDenied {
        pid: i32,
        what: String,
    },
    NotPython {
        pid: i32,
        comm: String,
        exe: String,
    },
    UnsupportedVersion {
        version: String,
        why: String,
    },
    /// The target exited (or exec'd) while we were reading it.
    TargetExited(i32),
    /// Memory we read did not make sense even after retries.
    Inconsistent(String),
    Io(String),
    Usage(String),
    /// A core file (`dump --core`) that cannot be read, or the files it names: the path
    /// and why, with the remedy.
    Core(String),
}

pub type Result<T> = std::result::Result<T, Error>;

pub const PERMISSION_HINT: &str = "run as root or with CAP_SYS_PTRACE (in Docker: --cap-add SYS_PTRACE; \
in Kubernetes: securityContext.capabilities.add: [SYS_PTRACE]), or as the target's user with \
kernel.yama.ptrace_scope set to 0 (sysctl kernel.yama.ptrace_scope=0)";

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NoSuchProcess(pid) => write!(f, "no such process: {pid}"),
            Error::PermissionDenied { pid, what } => {
                write!(f, "permission denied reading {what} of process {pid}: {PERMISSION_HINT}")
            }
            Error::NotPython { pid, comm, exe } => write!(
                f,
                "process {pid} ({comm}, {exe}) is not a Python process: no CPython runtime (_PyRuntime) in its executable or any libpython it has loaded"
            ),
            Error::UnsupportedVersion { version, why } => write!(
                f,
                "Python {version} is not supported ({why}); supported: {}",
                crate::python::layout::supported_list()
            ),
            Error::TargetExited(pid) => write!(f, "process {pid} exited while it was being read"),
            Error::Inconsistent(what) => write!(f, "{what}"),
            Error::Io(what) => write!(f, "{what}"),
            Error::Usage(what) => write!(f, "{what}"),
            Error::Core(what) => write!(f, "core file {what}"),
        }
    }
}

impl std::error::Error for Error {}
