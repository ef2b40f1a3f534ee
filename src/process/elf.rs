//! What we need from an ELF file the target has mapped: a few symbols, a section, and
//! the load address relation between file and memory.

use goblin::elf::{program_header::PT_LOAD, Elf};
use std::path::Path;

pub struct ElfInfo {
    /// Mapped, not read: a libpython with debug info is tens of MB and we touch little of it.
    data: memmap2::Mmap,
    /// (name, value, size) of the symbols we care about, from .dynsym and .symtab.
    symbols: Vec<(String, u64, u64)>,
    sections: Vec<(String, u64, u64, u64)>, // name, vaddr, size, file offset
    /// p_vaddr of the first PT_LOAD whose file offset is 0.
    first_load_vaddr: u64,
}

const WANTED: &[&str] = &["_PyRuntime", "Py_Version", "PyCode_Type", "_Py_DebugOffsets"];

impl ElfInfo {
    pub fn open(path: &Path) -> std::io::Result<ElfInfo> {
        let file = std::fs::File::open(path)?;
        // SAFETY: the mapping is read-only and private; a file changed under us can at
        // worst give wrong bytes, which every reader of this data already tolerates.
        let data = unsafe { memmap2::Mmap::map(&file)? };
        let (symbols, sections, first_load_vaddr) = {
            let elf = Elf::parse(&data).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            let mut symbols = Vec::new();
            for (syms, strtab) in [(&elf.dynsyms, &elf.dynstrtab), (&elf.syms, &elf.strtab)] {
                for s in syms.iter() {
                    if s.st_value == 0 {
                        continue;
                    }
                    if let Some(name) = strtab.get_at(s.st_name) {
                        if WANTED.contains(&name) {
                            symbols.push((name.to_string(), s.st_value, s.st_size));
                        }
                    }
                }
            }
            let sections = elf
                .section_headers
                .iter()
                .filter_map(|h| {
                    let name = elf.shdr_strtab.get_at(h.sh_name)?;
                    Some((name.to_string(), h.sh_addr, h.sh_size, h.sh_offset))
                })
                .collect();
            let first_load_vaddr = elf
                .program_headers
                .iter()
                .filter(|p| p.p_type == PT_LOAD)
                .map(|p| p.p_vaddr - p.p_offset)
                .next()
                .unwrap_or(0);
            (symbols, sections, first_load_vaddr)
        };
        Ok(ElfInfo { data, symbols, sections, first_load_vaddr })
    }

    pub fn symbol(&self, name: &str) -> Option<(u64, u64)> {
        self.symbols.iter().find(|s| s.0 == name).map(|s| (s.1, s.2))
    }

    pub fn section(&self, name: &str) -> Option<(u64, u64)> {
        self.sections.iter().find(|s| s.0 == name && s.1 != 0).map(|s| (s.1, s.2))
    }

    /// Memory address of a file virtual address, given where offset 0 of the file is mapped.
    pub fn to_memory(&self, vaddr: u64, base_mapping_start: u64) -> u64 {
        base_mapping_start.wrapping_add(vaddr.wrapping_sub(self.first_load_vaddr & !0xfff))
    }

    /// Finds a "3.N.M" version string (PY_VERSION) in the read-only data: the last resort
    /// for versions without a Py_Version symbol. `minor` narrows it when the file name told.
    pub fn find_version_string(&self, minor: Option<u32>) -> Option<String> {
        let (_, _, size, off) = self.sections.iter().find(|s| s.0 == ".rodata")?;
        let rodata = self.data.get(*off as usize..(*off + *size) as usize)?;
        version_in_rodata(rodata, minor)
    }
}

/// A string of its own first; failing that, the tail of a longer one: linkers merge
/// identical string tails, and pyenv's libpython3.10 keeps PY_VERSION "3.10.13" only as
/// the end of its build directory's ".../Python-3.10.13".
fn version_in_rodata(rodata: &[u8], minor: Option<u32>) -> Option<String> {
    let prefix = match minor {
        Some(m) => format!("3.{m}."),
        None => "3.".to_string(),
    };
    let p = prefix.as_bytes();
    let own_string = |b: u8| b == 0;
    let string_tail = |b: u8| !(b.is_ascii_alphanumeric() || b == b'.');
    for starts_right in [&own_string as &dyn Fn(u8) -> bool, &string_tail] {
        let mut i = 0;
        while let Some(pos) = find(&rodata[i..], p) {
            let start = i + pos;
            i = start + 1;
            if start > 0 && !starts_right(rodata[start - 1]) {
                continue;
            }
            let Some(len) = rodata[start..].iter().position(|&c| c == 0) else {
                break;
            };
            if let Ok(s) = std::str::from_utf8(&rodata[start..start + len]) {
                if is_version(s) {
                    return Some(s.to_string());
                }
            }
        }
    }
    None
}

/// First occurrence of `needle`: a scan for its first byte, then a comparison (a memcmp at
/// every position of a multi-megabyte .rodata made this most of a static binary's attach).
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let (&first, rest) = needle.split_first()?;
    let mut i = 0;
    while i + needle.len() <= hay.len() {
        i += hay[i..=hay.len() - needle.len()].iter().position(|&b| b == first)?;
        if &hay[i + 1..i + needle.len()] == rest {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// "3.9.2", "3.10.13", "3.15.0a1", "3.12.0rc2", "3.9.2+"
fn is_version(s: &str) -> bool {
    let mut parts = s.splitn(3, '.');
    let (Some(a), Some(b), Some(c)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let digits = |t: &str| !t.is_empty() && t.len() <= 3 && t.bytes().all(|c| c.is_ascii_digit());
    let micro_len = c.bytes().take_while(|c| c.is_ascii_digit()).count();
    let tail = &c[micro_len..];
    a == "3"
        && digits(b)
        && micro_len > 0
        && micro_len <= 3
        && (tail.is_empty()
            || tail == "+"
            || ["a", "b", "rc"].iter().any(|t| tail.strip_prefix(t).is_some_and(|n| digits(n.trim_end_matches('+')))))
}

#[cfg(test)]
mod tests {
    #[test]
    fn version_strings() {
        for ok in ["3.9.2", "3.10.13", "3.15.0a1", "3.12.0rc2", "3.9.2+"] {
            assert!(super::is_version(ok), "{ok}");
        }
        for bad in ["3.9", "3.x.1", "3.9.", "3.9.2 (default", "4.0.0"] {
            assert!(!super::is_version(bad), "{bad}");
        }
    }

    #[test]
    fn version_in_rodata() {
        let own = b"\0python3.10\0/usr/lib/python3.10\x003.10.13\0";
        assert_eq!(super::version_in_rodata(own, Some(10)).as_deref(), Some("3.10.13"));
        let merged = b"\0/root/.pyenv/versions/3.10.13\0python3.10\0/tmp/b/Python-3.10.13\0";
        assert_eq!(super::version_in_rodata(merged, Some(10)).as_deref(), Some("3.10.13"));
        assert_eq!(super::version_in_rodata(merged, None).as_deref(), Some("3.10.13"));
        assert_eq!(super::version_in_rodata(b"\0libpython3.10.so\0x13.10.1\0", None), None);
    }
}
