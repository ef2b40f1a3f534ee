//! A process read from its ELF core file (`dump --core`): the memory the core holds, the
//! files it names (NT_FILE) for what it left out, and its threads' registers. Paths in
//! the core are as the process saw them; `--root` says where its filesystem is now (a
//! container's, a chroot's), `--executable` where its executable is. A file that is
//! missing or is not the one the process mapped (another build id) is refused when
//! discovery needs it (the executable, libpython) and left out otherwise.

pub mod file;
pub mod files;
pub mod memory;
pub mod notes;

use crate::error::{Error, Result};
use crate::process::memory::{ReadError, ReadMem};
use crate::process::os_thread::{OsThread, Syscall};
use crate::process::MapEntry;
use files::file_name;
pub use files::Files;
use memory::{CoreMemory, FileRange};
use notes::CoreThread;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const PAGE: u64 = 4096;

pub struct Core {
    pub path: PathBuf,
    pub memory: CoreMemory,
    pub maps: Vec<MapEntry>,
    /// the executable as the process saw it
    pub exe: String,
    pub pid: i32,
    pub comm: String,
    pub psargs: String,
    pub threads: Vec<CoreThread>,
    /// where each path the core names was opened
    opened: HashMap<String, PathBuf>,
    /// files the core names that could not be used, and why (for --verbose)
    pub left_out: Vec<String>,
    /// the process's root directory as we see it (--root)
    pub root: Option<PathBuf>,
}

impl Core {
    pub fn open(path: &Path, files: &Files) -> Result<Core> {
        let shown = path.display().to_string();
        let fail = |why: String| Error::Core(format!("{shown}: {why}"));
        let f = std::fs::File::open(path).map_err(|e| fail(format!("cannot open it: {e}")))?;
        // SAFETY: read-only private mapping; a file changed under us gives wrong bytes at
        // worst, which every reader of target memory tolerates.
        let data = Arc::new(unsafe { memmap2::Mmap::map(&f) }.map_err(|e| fail(format!("cannot read it: {e}")))?);
        let parsed = file::parse(&data).map_err(|why| fail(format!("is {why}")))?;
        let n = notes::read(&parsed.notes);
        let segments = parsed.segments.clone();
        drop(parsed);
        if n.threads.is_empty() {
            return Err(fail("is a core without threads (no NT_PRSTATUS note)".into()));
        }
        if n.files.is_empty() {
            return Err(fail(
                "lists no mapped files (no NT_FILE note: cores from Linux 3.7 and later, and gdb's gcore, have one)"
                    .into(),
            ));
        }
        let bare = CoreMemory::new(data.clone(), segments.clone(), Vec::new());
        // --executable names the file, not which mapping was it: its file name does
        let given = || {
            let name = files.executable.as_ref()?.file_name()?.to_string_lossy().into_owned();
            n.files.iter().find(|m| m.offset == 0 && file_name(&m.path).trim_end_matches(" (deleted)") == name)
        };
        let exe = executable(&n, &bare).or_else(|| given().map(|m| m.path.clone())).ok_or_else(|| {
            fail("does not tell which file is the executable (no AT_PHDR, AT_EXECFN or name match); give it with --executable PATH".into())
        })?;
        let found = files::find(files, &n.files, &exe, &bare).map_err(fail)?;
        let ranges = n
            .files
            .iter()
            .filter_map(|m| {
                let data = found.data.get(&m.path)?.clone();
                Some(FileRange { start: m.start, end: m.end, offset: m.offset, data })
            })
            .collect();
        let maps = map_list(&segments, &n.files, &found.data);
        let pid = n.pid.or_else(|| n.threads.first().map(|t| t.tid)).unwrap_or(0);
        Ok(Core {
            path: path.to_path_buf(),
            memory: CoreMemory::new(data, segments, ranges),
            maps,
            exe,
            pid,
            comm: n.fname,
            psargs: n.psargs,
            threads: n.threads,
            opened: found.opened,
            left_out: found.left_out,
            root: files.root.clone(),
        })
    }

    pub fn file_path(&self, entry: &MapEntry) -> PathBuf {
        self.opened.get(&entry.path).cloned().unwrap_or_else(|| PathBuf::from(&entry.path))
    }

    pub fn thread(&self, tid: i32) -> Option<&CoreThread> {
        self.threads.iter().find(|t| t.tid == tid)
    }
}

/// The executable: the file mapped where its program headers were (AT_PHDR), else the
/// path given to execve (AT_EXECFN), else the mapped file named like the process.
fn executable(n: &notes::Notes, mem: &CoreMemory) -> Option<String> {
    let by_phdr = n.phdr.and_then(|a| n.files.iter().find(|m| a >= m.start && a < m.end)).map(|m| m.path.clone());
    let by_execfn = || {
        let b = mem.read_vec(n.execfn?, 4096).ok().or_else(|| mem.read_vec(n.execfn?, 256).ok())?;
        let end = b.iter().position(|&c| c == 0)?;
        let p = String::from_utf8_lossy(&b[..end]).into_owned();
        n.files.iter().any(|m| m.path == p).then_some(p)
    };
    let by_name = || {
        n.files
            .iter()
            .find(|m| !n.fname.is_empty() && m.offset == 0 && file_name(&m.path).starts_with(&n.fname))
            .map(|m| m.path.clone())
    };
    by_phdr.or_else(by_execfn).or_else(by_name)
}

/// The mappings as /proc/PID/maps would have listed them: every file the core names
/// (permissions from its segment, when the core has one), and every other segment as
/// anonymous memory.
fn map_list(
    segments: &[file::Segment],
    files: &[notes::MappedFile],
    opened: &HashMap<String, Arc<memmap2::Mmap>>,
) -> Vec<MapEntry> {
    let flags_at = |start: u64| segments.iter().find(|s| s.vaddr == start).map(|s| s.flags);
    let mut maps: Vec<MapEntry> = files
        .iter()
        .map(|m| {
            // gcore writes no segment at all for file text it leaves out: the file's own
            // program headers say whether the mapped part is code
            let flags = flags_at(m.start).unwrap_or_else(|| {
                let code = opened.get(&m.path).is_some_and(|f| files::code_at(f, m.offset));
                file::PF_R | if code { file::PF_X } else { 0 }
            });
            MapEntry {
                start: m.start,
                end: m.end,
                readable: flags & file::PF_R != 0,
                writable: flags & file::PF_W != 0,
                executable: flags & file::PF_X != 0,
                offset: m.offset,
                inode: 0,
                path: m.path.clone(),
            }
        })
        .collect();
    for s in segments {
        if !files.iter().any(|m| m.start == s.vaddr) {
            maps.push(MapEntry {
                start: s.vaddr,
                end: s.vaddr.saturating_add(s.memsz),
                readable: s.flags & file::PF_R != 0,
                writable: s.flags & file::PF_W != 0,
                executable: s.flags & file::PF_X != 0,
                offset: 0,
                inode: 0,
                path: String::new(),
            });
        }
    }
    maps.sort_by_key(|m| m.start);
    maps
}

/// What a thread was doing when it was dumped. A thread stopped while asleep in a system
/// call shows the call's number in orig_rax and a restart code in rax (the kernel
/// interrupted the sleep to stop it). Any other thread was running (or runnable): in
/// user code, or on its way back from a call that had returned.
pub fn os_thread(t: &CoreThread) -> OsThread {
    const RESTART_CODES: std::ops::RangeInclusive<i64> = -516..=-512; // ERESTARTSYS .. ERESTART_RESTARTBLOCK
    if t.orig_rax >= 0 && RESTART_CODES.contains(&t.rax) {
        OsThread { on_cpu: false, syscall: Some(Syscall { number: t.orig_rax, args: t.args }) }
    } else {
        OsThread { on_cpu: true, syscall: None }
    }
}

impl crate::process::image::Image for Core {
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
        Core::file_path(self, entry)
    }
    fn pid(&self) -> i32 {
        self.pid
    }
    fn live(&self) -> bool {
        false
    }
    fn recorded_tids(&self) -> Option<Vec<i32>> {
        Some(self.threads.iter().map(|t| t.tid).collect())
    }
    fn thread_name(&self, _tid: i32) -> Option<String> {
        None // a core keeps only the process's name
    }
    fn os_threads(&self, tids: &[Option<i32>]) -> Vec<OsThread> {
        tids.iter().map(|t| t.and_then(|tid| self.thread(tid)).map(os_thread).unwrap_or_default()).collect()
    }
    fn heading(&self) -> String {
        format!("Core {} of process {}: {}", self.path.display(), self.pid, self.psargs)
    }
    fn core_path(&self) -> Option<&Path> {
        Some(&self.path)
    }
    fn not_python(&self) -> Error {
        Error::Core(format!(
            "{}: process {} ({}, {}) was not a Python process: no CPython runtime (_PyRuntime) in its executable or any libpython it had loaded",
            self.path.display(),
            self.pid,
            self.comm,
            self.exe
        ))
    }
    fn read_error(&self, e: ReadError) -> Error {
        Error::Core(format!("{}: {}", self.path.display(), self.unreadable(e)))
    }
    fn begin_read(&self) {
        self.memory.forget_missed();
    }
    fn unreadable(&self, e: ReadError) -> String {
        match (e, self.memory.last_missed()) {
            (ReadError::Fault | ReadError::Missing | ReadError::NotCode, Some(at)) => format!(
                "the interpreter's structures lead to memory the core does not hold (at {at:#x}: a core cut short, dumped with a coredump_filter that leaves out anonymous memory, or read with files that are not the process's)"
            ),
            (ReadError::Fault | ReadError::Missing | ReadError::NotCode, None) => "a stack does not hold together in the core: a frame reads as zeros or garbage (gdb's gcore writes zeros for the rest of a mapping after a page it cannot read, such as the guard regions glibc 2.41+ puts in thread stacks on Linux 6.13+; the kernel's own cores keep them)".to_string(),
            (e, _) => format!("reading the core failed: {e:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_status_from_registers() {
        let t = |orig_rax: i64, rax: i64| CoreThread { tid: 1, ip: 0, sp: 0, bp: 0, orig_rax, rax, args: [7, 0, 0] };
        let asleep = os_thread(&t(libc::SYS_futex, -512));
        assert!(!asleep.on_cpu && asleep.syscall.as_ref().is_some_and(|s| s.is_futex() && s.args[0] == 7));
        assert!(os_thread(&t(-1, 0)).on_cpu);
        // a call that returned (0) was not slept in
        let returned = os_thread(&t(libc::SYS_futex, 0));
        assert!(returned.syscall.is_none() && returned.on_cpu);
    }
}
