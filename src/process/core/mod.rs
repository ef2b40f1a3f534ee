//! A process read from its ELF core file (`dump --core`): the memory the core holds, the
//! files it names (NT_FILE) for what it left out, and its threads' registers. Paths in
//! the core are as the process saw them; `--root` says where its filesystem is now (a
//! container's, a chroot's), `--executable` where its executable is. A file that is
//! missing or is not the one the process mapped (another build id) is refused when
//! discovery needs it (the executable, libpython) and left out otherwise.

pub mod file;
pub mod memory;
pub mod notes;

use crate::error::{Error, Result};
use crate::process::memory::{ReadError, ReadMem};
use crate::process::os_thread::{OsThread, Syscall};
use crate::process::MapEntry;
use memory::{CoreMemory, FileRange};
use notes::CoreThread;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const PAGE: u64 = 4096;

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

/// Where the files the core names are now.
#[derive(Debug, Clone, Default)]
pub struct Files {
    /// the process's root directory as we see it (its paths are resolved under it)
    pub root: Option<PathBuf>,
    /// the executable, whatever path the core names
    pub executable: Option<PathBuf>,
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
        let mut opened = HashMap::new();
        let mut maps_of_file: HashMap<&str, Arc<memmap2::Mmap>> = HashMap::new();
        let mut left_out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for m in &n.files {
            if !seen.insert(m.path.as_str()) {
                continue;
            }
            let is_exe = m.path == exe;
            let essential = is_exe || is_libpython(&m.path);
            let at = match (&files.executable, is_exe) {
                (Some(e), true) => e.clone(),
                _ => resolve(files.root.as_deref(), &m.path),
            };
            match open_checked(&at, &m.path, &n.files, &bare) {
                Ok(map) => {
                    opened.insert(m.path.clone(), at);
                    maps_of_file.insert(m.path.as_str(), map);
                }
                Err(why) if essential => {
                    let remedy = if is_exe {
                        "give the executable with --executable PATH, or the process's root directory with --root DIR"
                    } else {
                        "give the process's root directory with --root DIR (where its files are now)"
                    };
                    return Err(fail(format!("{why}; {remedy}")));
                }
                Err(why) => left_out.push(why),
            }
        }
        let ranges = n
            .files
            .iter()
            .filter_map(|m| {
                let data = maps_of_file.get(m.path.as_str())?.clone();
                Some(FileRange { start: m.start, end: m.end, offset: m.offset, data })
            })
            .collect();
        let maps = map_list(&segments, &n.files, &maps_of_file);
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
            opened,
            left_out,
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

/// `path` as the process saw it, under `root` when given. A file deleted while mapped
/// is named "PATH (deleted)": the file now at PATH is tried (its build id tells whether
/// it is the same).
fn resolve(root: Option<&Path>, path: &str) -> PathBuf {
    let p = path.strip_suffix(" (deleted)").unwrap_or(path);
    match root {
        Some(r) => r.join(p.trim_start_matches('/')),
        None => PathBuf::from(p),
    }
}

/// Opens the file for `path` and checks it is the one the process mapped: where the core
/// holds the first page of its mapping, the build ids must agree.
fn open_checked(
    at: &Path,
    path: &str,
    mapped: &[notes::MappedFile],
    core: &CoreMemory,
) -> std::result::Result<Arc<memmap2::Mmap>, String> {
    let shown =
        if at == Path::new(path) { path.to_string() } else { format!("{path} (looked for at {})", at.display()) };
    // a device or a FIFO could block the open, and holds nothing a mapping kept
    match std::fs::metadata(at) {
        Ok(m) if m.is_file() => {}
        Ok(_) => return Err(format!("{shown} is not a regular file")),
        Err(e) => return Err(format!("cannot open {shown}: {e}")),
    }
    let f = std::fs::File::open(at).map_err(|e| format!("cannot open {shown}: {e}"))?;
    // SAFETY: as for the core: read-only, private.
    let map = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| format!("cannot read {shown}: {e}"))?;
    let first = mapped.iter().find(|m| m.path == path && m.offset == 0);
    if let Some(page) = first.and_then(|m| core.dumped(m.start, PAGE.min(m.end.saturating_sub(m.start)))) {
        let ours = map.get(..page.len()).and_then(build_id);
        if let (Some(theirs), Some(ours)) = (build_id(page), ours) {
            if theirs != ours {
                return Err(format!(
                    "{shown} is not the file the process had mapped (build id {} in the core, {} in the file)",
                    hex(&theirs),
                    hex(&ours)
                ));
            }
        }
    }
    Ok(Arc::new(map))
}

/// The GNU build id in the first page of an ELF file (the linker puts its note right
/// after the program headers): a note with name "GNU" and type 3, 4-byte aligned.
fn build_id(page: &[u8]) -> Option<Vec<u8>> {
    let mut i = 0;
    while i + 16 <= page.len() {
        if &page[i + 12..i + 16] == b"GNU\0" && file::u32_at(page, i) == Some(4) && file::u32_at(page, i + 8) == Some(3)
        {
            let len = file::u32_at(page, i + 4)? as usize;
            if (1..=64).contains(&len) {
                return page.get(i + 16..i + 16 + len).map(<[u8]>::to_vec);
            }
        }
        i += 4;
    }
    None
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn file_name(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or(p)
}

fn is_libpython(p: &str) -> bool {
    let n = file_name(p.trim_end_matches(" (deleted)"));
    n.starts_with("libpython3.") && n.contains(".so")
}

/// The mappings as /proc/PID/maps would have listed them: every file the core names
/// (permissions from its segment, when the core has one), and every other segment as
/// anonymous memory.
fn map_list(
    segments: &[file::Segment],
    files: &[notes::MappedFile],
    opened: &HashMap<&str, Arc<memmap2::Mmap>>,
) -> Vec<MapEntry> {
    let flags_at = |start: u64| segments.iter().find(|s| s.vaddr == start).map(|s| s.flags);
    let mut maps: Vec<MapEntry> = files
        .iter()
        .map(|m| {
            // gcore writes no segment at all for file text it leaves out: the file's own
            // program headers say whether the mapped part is code
            let flags = flags_at(m.start).unwrap_or_else(|| {
                let code = opened.get(m.path.as_str()).is_some_and(|f| code_at(f, m.offset));
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

/// Whether `offset` of an ELF file lies in one of its executable PT_LOADs (64-bit only;
/// anything unreadable is not code).
fn code_at(elf: &[u8], offset: u64) -> bool {
    let (Some(phoff), Some(entsize), Some(count)) =
        (file::u64_at(elf, 32), file::u16_at(elf, 54), file::u16_at(elf, 56))
    else {
        return false;
    };
    if elf.get(..4) != Some(b"\x7fELF") || elf.get(4) != Some(&2) || entsize < 56 {
        return false;
    }
    (0..count as u64).any(|i| {
        let Some(at) = phoff.checked_add(i * entsize as u64).and_then(|a| usize::try_from(a).ok()) else {
            return false;
        };
        let field = |o: usize| at.checked_add(o);
        let (Some(kind), Some(flags), Some(off), Some(size)) = (
            file::u32_at(elf, at),
            field(4).and_then(|a| file::u32_at(elf, a)),
            field(8).and_then(|a| file::u64_at(elf, a)),
            field(32).and_then(|a| file::u64_at(elf, a)),
        ) else {
            return false;
        };
        kind == 1 && flags & file::PF_X != 0 && offset >= off & !(PAGE - 1) && offset < off.saturating_add(size)
    })
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
    fn build_id_in_a_page() {
        let mut page = vec![0u8; 64];
        page[20..24].copy_from_slice(&4u32.to_le_bytes());
        page[24..28].copy_from_slice(&3u32.to_le_bytes());
        page[28..32].copy_from_slice(&3u32.to_le_bytes());
        page[32..36].copy_from_slice(b"GNU\0");
        page[36..39].copy_from_slice(&[0xab, 0xcd, 0xef]);
        assert_eq!(build_id(&page), Some(vec![0xab, 0xcd, 0xef]));
        assert_eq!(build_id(&page[..38]), None);
        assert_eq!(build_id(&[]), None);
    }

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

    #[test]
    fn paths_under_a_root() {
        assert_eq!(
            resolve(Some(Path::new("/srv/root")), "/usr/bin/python3"),
            PathBuf::from("/srv/root/usr/bin/python3")
        );
        assert_eq!(resolve(None, "/tmp/python (deleted)"), PathBuf::from("/tmp/python"));
    }
}
