//! What the interpreter model reads of a target, whether it runs (`Process`) or was
//! dumped to a core file (`core::Core`): its memory, what it had mapped where, where each
//! mapped file can be opened, its threads as the OS knew them, and how to name it in
//! errors. Discovery, the snapshot and the dump read through this, so a core is walked by
//! the same code as a live process.

use super::memory::{ReadError, ReadMem};
use super::os_thread::OsThread;
use super::MapEntry;
use crate::error::Error;
use std::path::PathBuf;

pub trait Image {
    fn memory(&self) -> &dyn ReadMem;
    fn maps(&self) -> &[MapEntry];
    /// The executable's path as the target saw it.
    fn exe(&self) -> &str;
    /// A path under which we can open a file the target had mapped.
    fn file_path(&self, entry: &MapEntry) -> PathBuf;
    /// The process id (the target's, for a core).
    fn pid(&self) -> i32;
    /// A running process changes while it is read: a read that faults may be a race worth
    /// retrying. A core never changes: a fault is final.
    fn live(&self) -> bool;
    /// The OS threads, when they cannot be listed from /proc (a core's threads); None
    /// for a live process.
    fn recorded_tids(&self) -> Option<Vec<i32>>;
    /// A thread's OS name, where one is known that differs from the process's.
    fn thread_name(&self, tid: i32) -> Option<String>;
    /// What the OS says each thread was doing (on CPU, the system call it slept in).
    fn os_threads(&self, tids: &[Option<i32>]) -> Vec<OsThread>;
    /// The first line of a dump: which process, and where it was read from.
    fn heading(&self) -> String;
    /// The core file read, for a core.
    fn core_path(&self) -> Option<&std::path::Path>;
    /// The error for a target without a CPython runtime.
    fn not_python(&self) -> Error;
    /// The error for a read that failed for good.
    fn read_error(&self, e: ReadError) -> Error;
    /// Why one thread's stack could not be read, for a target that cannot be read again
    /// (a core); the other threads are shown. Explains the reads since `begin_read`.
    fn unreadable(&self, e: ReadError) -> String;
    /// Starts a read whose failure `unreadable` will explain (what failed before is
    /// not its reason).
    fn begin_read(&self) {}
}

impl Image for super::Process {
    fn memory(&self) -> &dyn ReadMem {
        &self.memory
    }
    fn maps(&self) -> &[MapEntry] {
        &self.maps
    }
    fn exe(&self) -> &str {
        &self.exe
    }
    fn file_path(&self, entry: &MapEntry) -> PathBuf {
        super::Process::file_path(self, entry)
    }
    fn pid(&self) -> i32 {
        self.pid
    }
    fn live(&self) -> bool {
        true
    }
    fn recorded_tids(&self) -> Option<Vec<i32>> {
        None
    }
    fn thread_name(&self, tid: i32) -> Option<String> {
        super::tasks::Tasks::comm(self.pid, tid).filter(|c| *c != self.comm)
    }
    fn os_threads(&self, tids: &[Option<i32>]) -> Vec<OsThread> {
        tids.iter().map(|t| t.map(|tid| super::os_thread::read(self.pid, tid)).unwrap_or_default()).collect()
    }
    fn heading(&self) -> String {
        format!("Process {}: {}", self.pid, self.cmdline())
    }
    fn core_path(&self) -> Option<&std::path::Path> {
        None
    }
    fn not_python(&self) -> Error {
        Error::NotPython {
            pid: self.pid,
            comm: self.comm.clone(),
            exe: self.exe.trim_end_matches(" (deleted)").to_string(),
        }
    }
    fn read_error(&self, e: ReadError) -> Error {
        e.into_error(self.pid)
    }
    fn unreadable(&self, e: ReadError) -> String {
        e.into_error(self.pid).to_string()
    }
}
