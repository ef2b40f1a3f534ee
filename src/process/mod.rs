//! The target process as the OS shows it: its maps, files, threads and memory.

pub mod copy_then_process;
pub mod core;
pub mod elf;
pub mod identity;
pub mod image;
pub mod maps;
pub mod memory;
pub mod os_thread;
pub mod prefetch;
#[cfg(test)]
pub mod simmem;
pub mod stop;
pub mod tasks;
pub mod tree;

use crate::error::{Error, Result};
use std::path::PathBuf;

pub use maps::MapEntry;
pub use memory::Memory;

pub struct Process {
    pub pid: i32,
    pub memory: Memory,
    pub maps: Vec<MapEntry>,
    /// The executable's path as the target sees it (may end in " (deleted)").
    pub exe: String,
    pub comm: String,
}

impl Process {
    /// The target's root directory as a path that outlives it: /proc/PID/root vanishes
    /// with the process, so a writer reading sources after a short program ended would
    /// find nothing. Where the link names a directory we see too (the same one: same
    /// device and inode), that path is used; otherwise /proc/PID/root.
    pub fn root_dir(&self) -> PathBuf {
        use std::os::unix::fs::MetadataExt;
        let proc_root = PathBuf::from(format!("/proc/{}/root", self.pid));
        let same = |p: &PathBuf| match (std::fs::metadata(&proc_root), std::fs::metadata(p)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        };
        match std::fs::read_link(&proc_root) {
            Ok(p) if p.is_absolute() && same(&p) => p,
            _ => proc_root,
        }
    }

    pub fn open(pid: i32) -> Result<Process> {
        if pid <= 0 {
            return Err(Error::Usage(format!("invalid pid {pid}: a process id is a positive number")));
        }
        let proc_dir = PathBuf::from(format!("/proc/{pid}"));
        if !proc_dir.exists() {
            return Err(Error::NoSuchProcess(pid));
        }
        let comm = std::fs::read_to_string(proc_dir.join("comm"))
            .map(|s| s.trim_end().to_string())
            .map_err(|e| io_error(pid, "comm", e))?;
        let exe = std::fs::read_link(proc_dir.join("exe"))
            .map(|p| p.to_string_lossy().into_owned())
            .map_err(|e| io_error(pid, &format!("executable (/proc/{pid}/exe)"), e))?;
        let maps = maps::read(pid)?;
        let memory = Memory::new(pid);
        memory.check_access()?;
        Ok(Process { pid, memory, maps, exe, comm })
    }

    /// A path under which we can open a file the target has mapped. map_files names the
    /// mapped file itself, whatever mount namespace or chroot it came from and even if it
    /// was deleted; the other two are fallbacks for kernels that refuse map_files.
    pub fn file_path(&self, entry: &MapEntry) -> PathBuf {
        let exact = PathBuf::from(format!("/proc/{}/map_files/{:x}-{:x}", self.pid, entry.start, entry.end));
        if std::fs::metadata(&exact).is_ok() {
            return exact;
        }
        if entry.path == self.exe {
            return PathBuf::from(format!("/proc/{}/exe", self.pid));
        }
        // Paths in maps are relative to the reader's root when it can reach the file
        // (chroots) and to the target's mount namespace otherwise (containers).
        let in_root = PathBuf::from(format!("/proc/{}/root{}", self.pid, entry.path));
        if in_root.exists() {
            in_root
        } else {
            PathBuf::from(&entry.path)
        }
    }

    /// The target's command line, NUL separators turned into spaces.
    pub fn cmdline(&self) -> String {
        std::fs::read(format!("/proc/{}/cmdline", self.pid))
            .map(|b| {
                let s: Vec<String> = b
                    .split(|&c| c == 0)
                    .filter(|p| !p.is_empty())
                    .map(|p| String::from_utf8_lossy(p).into_owned())
                    .collect();
                s.join(" ")
            })
            .unwrap_or_default()
    }

    pub fn is_alive(&self) -> bool {
        is_alive(self.pid)
    }
}

/// Running or sleeping: not gone, not a zombie waiting to be reaped.
pub fn is_alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // the state follows the command name, which is in parentheses and may hold anything
    let state = stat.rfind(')').and_then(|i| stat[i + 1..].split_whitespace().next());
    !matches!(state, None | Some("Z") | Some("X") | Some("x"))
}

pub fn io_error(pid: i32, what: &str, e: std::io::Error) -> Error {
    match e.kind() {
        std::io::ErrorKind::NotFound => Error::NoSuchProcess(pid),
        std::io::ErrorKind::PermissionDenied => Error::PermissionDenied { pid, what: what.to_string() },
        _ => Error::Io(format!("cannot read {what} of process {pid}: {e}")),
    }
}
