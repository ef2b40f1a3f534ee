//! Finding the files a core names (NT_FILE) where they are now: under the process's
//! root (`--root`), the executable where `--executable` says, each checked to be the
//! file the process mapped (same build id, where the core kept the page that holds it).
//! What discovery needs (the executable, libpython) must be found; the rest is left out
//! when missing, and its bytes are then not read.

use super::file;
use super::memory::CoreMemory;
use super::notes::MappedFile;
use super::PAGE;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where the files the core names are now.
#[derive(Debug, Clone, Default)]
pub struct Files {
    /// the process's root directory as we see it (its paths are resolved under it)
    pub root: Option<PathBuf>,
    /// the executable, whatever path the core names
    pub executable: Option<PathBuf>,
}

/// The files found, by the path the core names them with.
pub struct Found {
    /// where each was opened
    pub opened: HashMap<String, PathBuf>,
    pub data: HashMap<String, Arc<memmap2::Mmap>>,
    /// files not found or not the process's, and why
    pub left_out: Vec<String>,
}

/// Opens every file the core names; an error (with its remedy) for the executable
/// (`exe`) or a libpython that is missing or another build.
pub fn find(files: &Files, mapped: &[MappedFile], exe: &str, core: &CoreMemory) -> Result<Found, String> {
    let mut found = Found { opened: HashMap::new(), data: HashMap::new(), left_out: Vec::new() };
    let mut seen = std::collections::HashSet::new();
    for m in mapped {
        if !seen.insert(m.path.as_str()) {
            continue;
        }
        let is_exe = m.path == exe;
        let essential = is_exe || is_libpython(&m.path);
        let at = match (&files.executable, is_exe) {
            (Some(e), true) => e.clone(),
            _ => resolve(files.root.as_deref(), &m.path),
        };
        match open_checked(&at, &m.path, mapped, core) {
            Ok(map) => {
                found.opened.insert(m.path.clone(), at);
                found.data.insert(m.path.clone(), map);
            }
            Err(why) if essential => {
                let remedy = if is_exe {
                    "give the executable with --executable PATH, or the process's root directory with --root DIR"
                } else {
                    "give the process's root directory with --root DIR (where its files are now)"
                };
                return Err(format!("{why}; {remedy}"));
            }
            Err(why) => found.left_out.push(why),
        }
    }
    Ok(found)
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
    mapped: &[MappedFile],
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

pub fn file_name(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or(p)
}

fn is_libpython(p: &str) -> bool {
    let n = file_name(p.trim_end_matches(" (deleted)"));
    n.starts_with("libpython3.") && n.contains(".so")
}

/// Whether `offset` of an ELF file lies in one of its executable PT_LOADs (64-bit only;
/// anything unreadable is not code).
pub fn code_at(elf: &[u8], offset: u64) -> bool {
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
    fn paths_under_a_root() {
        assert_eq!(
            resolve(Some(Path::new("/srv/root")), "/usr/bin/python3"),
            PathBuf::from("/srv/root/usr/bin/python3")
        );
        assert_eq!(resolve(None, "/tmp/python (deleted)"), PathBuf::from("/tmp/python"));
    }
}
