//! The ELF files a process has mapped executable, as `dump --native` needs them: where
//! each is loaded (its bias), its call-frame information (.eh_frame with its
//! .eh_frame_hdr index, .debug_frame) and its function symbols (.symtab, .dynsym, and
//! the MiniDebugInfo symbol table in .gnu_debugdata), so a return address can be unwound
//! through and named, and where debug information exists (the file itself, or a
//! detached `.debug` file found by build-id under /usr/lib/debug/.build-id, as Debian's
//! -dbgsym / libc6-dbg packages install them, in the target's root first) file:line and
//! the names of functions the file's own symbol tables leave out. Each file is read once
//! per dump, through the path the target sees (process/mod.rs `file_path`).

use crate::process::MapEntry;
use goblin::elf::{program_header::PT_LOAD, sym::STT_FUNC, Elf};
use std::path::{Path, PathBuf};

pub struct Module {
    /// the executable mapping's range in the target
    pub start: u64,
    pub end: u64,
    /// target address = file virtual address + bias
    pub bias: u64,
    pub path: String,
    pub eh_frame: Option<Section>,
    pub eh_frame_hdr: Option<Section>,
    pub debug_frame: Option<Section>,
    pub text_vaddr: u64,
    /// (file vaddr, size, name), sorted by address
    symbols: Vec<(u64, u64, String)>,
    /// DWARF line tables and the full symbol table, when debug information was found
    debug: Option<addr2line::Loader>,
}

/// Where a C frame's code came from, as far as debug information tells.
pub struct Located {
    pub function: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
    /// a function inlined into the next one (no call of its own on the stack)
    pub inlined: bool,
}

pub struct Section {
    pub vaddr: u64,
    pub data: Vec<u8>,
}

impl Module {
    pub fn contains(&self, addr: u64) -> bool {
        addr >= self.start && addr < self.end
    }

    /// The function containing the target address `addr`, and how far into it.
    pub fn symbol(&self, addr: u64) -> Option<(&str, u64)> {
        let v = addr.wrapping_sub(self.bias);
        let i = self.symbols.partition_point(|s| s.0 <= v);
        let (start, size, name) = self.symbols.get(i.checked_sub(1)?)?;
        (v < start.saturating_add((*size).max(1))).then(|| (name.as_str(), v - start))
    }

    /// Name, file and line of the code at target address `addr` (for a caller, pass the
    /// return address minus one: the call itself), innermost first: functions inlined
    /// there come before the function that holds the code, as the DWARF says.
    pub fn locate(&self, addr: u64) -> Vec<Located> {
        let v = addr.wrapping_sub(self.bias);
        let own = self.symbol(addr).map(|(n, _)| n.to_string());
        let Some(d) = &self.debug else {
            return vec![Located { function: own, file: None, line: None, inlined: false }];
        };
        let mut out = Vec::new();
        if let Ok(mut frames) = d.find_frames(v) {
            while let Ok(Some(f)) = frames.next() {
                let function = f.function.as_ref().and_then(|n| n.raw_name().ok()).map(|n| n.into_owned());
                let (file, line) = f.location.map(|l| (l.file.map(str::to_string), l.line)).unwrap_or((None, None));
                out.push(Located { function, file, line, inlined: true });
            }
        }
        match out.last_mut() {
            // the outermost is the function itself: the symbol table's name for it
            // (with its .lto_priv suffix) is the one tools and profilers show
            Some(last) => {
                last.inlined = false;
                if own.is_some() {
                    last.function = own;
                } else if last.function.is_none() {
                    last.function = d.find_symbol(v).map(str::to_string);
                }
            }
            None => out.push(Located {
                function: own.or_else(|| d.find_symbol(v).map(str::to_string)),
                file: None,
                line: None,
                inlined: false,
            }),
        }
        out
    }

    /// The file name, for the "library" field.
    pub fn file_name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or(&self.path)
    }
}

/// Every executable file mapping of `maps` that parses as ELF, each file read through
/// `file_path`; detached debug files are looked for under `debug_root` (the target's
/// root), then under ours.
pub fn load(maps: &[MapEntry], file_path: &dyn Fn(&MapEntry) -> PathBuf, debug_root: &Path) -> Vec<Module> {
    maps.iter()
        .filter(|m| m.executable && m.path.starts_with('/'))
        .filter_map(|m| load_one(&file_path(m), debug_root, m))
        .collect()
}

fn load_one(file: &Path, debug_root: &Path, m: &MapEntry) -> Option<Module> {
    let data = std::fs::read(file).ok()?;
    let elf = Elf::parse(&data).ok()?;
    // the PT_LOAD this mapping comes from: its file offset says where in vaddr space it starts
    let seg = elf.program_headers.iter().find(|p| {
        p.p_type == PT_LOAD
            && p.p_offset & !0xfff <= m.offset
            && m.offset < p.p_offset.saturating_add(p.p_filesz.max(1))
    })?;
    let vaddr_of_start = (seg.p_vaddr & !0xfff) + (m.offset - (seg.p_offset & !0xfff));
    let bias = m.start.wrapping_sub(vaddr_of_start);
    let section = |name: &str| -> Option<Section> {
        let sh = elf.section_headers.iter().find(|s| elf.shdr_strtab.get_at(s.sh_name) == Some(name))?;
        let range = sh.file_range()?;
        Some(Section { vaddr: sh.sh_addr, data: data.get(range)?.to_vec() })
    };
    let text_vaddr = elf
        .section_headers
        .iter()
        .find(|s| elf.shdr_strtab.get_at(s.sh_name) == Some(".text"))
        .map(|s| s.sh_addr)
        .unwrap_or(0);
    let mut symbols: Vec<(u64, u64, String)> = Vec::new();
    for (syms, strtab) in [(&elf.syms, &elf.strtab), (&elf.dynsyms, &elf.dynstrtab)] {
        for s in syms.iter().filter(|s| s.st_type() == STT_FUNC && s.st_value != 0) {
            if let Some(name) = strtab.get_at(s.st_name).filter(|n| !n.is_empty()) {
                symbols.push((s.st_value, s.st_size, name.to_string()));
            }
        }
    }
    if let Some(mini) = section(".gnu_debugdata") {
        mini_debug_symbols(&mini.data, &mut symbols);
    }
    let build_id = elf.iter_note_headers(&data).into_iter().flatten().flatten().find_map(|n| {
        (n.n_type == goblin::elf::note::NT_GNU_BUILD_ID && n.name == "GNU")
            .then(|| n.desc.iter().map(|b| format!("{b:02x}")).collect::<String>())
    });
    let has_dwarf = elf.section_headers.iter().any(|s| elf.shdr_strtab.get_at(s.sh_name) == Some(".debug_line"));
    let debug = debug_file(debug_root, build_id.as_deref())
        .and_then(|p| addr2line::Loader::new(p).ok())
        .or_else(|| has_dwarf.then(|| addr2line::Loader::new(file).ok()).flatten());
    symbols.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    symbols.dedup_by(|a, b| a.0 == b.0);
    Some(Module {
        start: m.start,
        end: m.end,
        bias,
        path: m.path.clone(),
        eh_frame: section(".eh_frame"),
        eh_frame_hdr: section(".eh_frame_hdr"),
        debug_frame: section(".debug_frame"),
        text_vaddr,
        symbols,
        debug,
    })
}

/// The most a `.gnu_debugdata` may unpack to: it holds symbol tables only (a few MB for
/// the largest libraries); anything bigger is not what it claims to be.
const MINI_DEBUG_MAX: usize = 64 << 20;

/// Function symbols from MiniDebugInfo: `.gnu_debugdata`, an xz-compressed ELF holding
/// the `.symtab` that stripping removed (Fedora, RHEL and others ship binaries this way,
/// so static functions keep their names without a debug package).
fn mini_debug_symbols(xz: &[u8], symbols: &mut Vec<(u64, u64, String)>) {
    let mut out = Bounded(Vec::new());
    if lzma_rs::xz_decompress(&mut std::io::Cursor::new(xz), &mut out).is_err() {
        return;
    }
    let Ok(inner) = Elf::parse(&out.0) else { return };
    for s in inner.syms.iter().filter(|s| s.st_type() == STT_FUNC && s.st_value != 0) {
        if let Some(name) = inner.strtab.get_at(s.st_name).filter(|n| !n.is_empty()) {
            symbols.push((s.st_value, s.st_size, name.to_string()));
        }
    }
}

/// A Vec that refuses to grow past `MINI_DEBUG_MAX`.
struct Bounded(Vec<u8>);

impl std::io::Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + buf.len() > MINI_DEBUG_MAX {
            return Err(std::io::Error::other(".gnu_debugdata unpacks to too much"));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The detached debug file with this build-id: in the target's root, then in ours.
fn debug_file(debug_root: &Path, build_id: Option<&str>) -> Option<PathBuf> {
    let id = build_id.filter(|id| id.len() > 2)?;
    let rel = format!("usr/lib/debug/.build-id/{}/{}.debug", &id[..2], &id[2..]);
    [debug_root.join(&rel), Path::new("/").join(&rel)].into_iter().find(|p| p.is_file())
}
