//! The ELF core file itself: its PT_LOAD segments (memory the dumper copied) and its
//! notes. Parsed by hand, every offset and length checked against the file: a core is
//! untrusted input, and goblin parses more than a core needs (section headers) and
//! trusts some sizes.

/// One PT_LOAD: `filesz` bytes at `offset` in the core are the memory at `vaddr`; the
/// rest up to `memsz` was not dumped (file-backed text, usually).
#[derive(Debug, Clone, Copy)]
pub struct Segment {
    pub vaddr: u64,
    pub memsz: u64,
    pub offset: u64,
    pub filesz: u64,
    pub flags: u32,
}

pub const PF_X: u32 = 1;
pub const PF_W: u32 = 2;
pub const PF_R: u32 = 4;

/// One note: its type, owner name, and descriptor bytes.
#[derive(Debug)]
pub struct Note<'a> {
    pub kind: u32,
    pub name: &'a [u8],
    pub desc: &'a [u8],
}

#[derive(Debug)]
pub struct CoreFile<'a> {
    pub segments: Vec<Segment>,
    pub notes: Vec<Note<'a>>,
}

const ET_CORE: u16 = 4;
const EM_X86_64: u16 = 62;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const PHDR_SIZE: usize = 56;

/// Why a file is not a core we can read, as the end of a sentence ("FILE is ...").
pub type Refusal = String;

pub fn parse(data: &[u8]) -> Result<CoreFile<'_>, Refusal> {
    if data.get(..4) != Some(b"\x7fELF") {
        let compressed = [(&b"\x28\xb5\x2f\xfd"[..], "zstd"), (b"\xfd7zXZ", "xz"), (b"\x04\x22\x4d\x18", "lz4")];
        if let Some((_, how)) = compressed.iter().find(|(magic, _)| data.starts_with(magic)) {
            return Err(format!(
                "{how}-compressed (systemd-coredump stores cores so): decompress it first (coredumpctl dump PID -o FILE)"
            ));
        }
        return Err("not an ELF file (a core file starts with \\x7fELF)".into());
    }
    if data.get(4) != Some(&2) || data.get(5) != Some(&1) {
        return Err("not a 64-bit little-endian ELF file: only x86-64 cores are read".into());
    }
    let e_type = u16_at(data, 16).ok_or("truncated in its ELF header")?;
    let machine = u16_at(data, 18).ok_or("truncated in its ELF header")?;
    if e_type != ET_CORE {
        return Err(format!("an ELF file of type {e_type}, not a core file (type 4)"));
    }
    if machine != EM_X86_64 {
        return Err(format!("a core of machine type {machine}: only x86-64 cores are read"));
    }
    let phoff = u64_at(data, 32).ok_or("truncated in its ELF header")?;
    let phentsize = u16_at(data, 54).ok_or("truncated in its ELF header")? as usize;
    let phnum = u16_at(data, 56).ok_or("truncated in its ELF header")? as usize;
    if phentsize < PHDR_SIZE {
        return Err(format!("a core with program headers of {phentsize} bytes (64-bit ones have {PHDR_SIZE})"));
    }
    let mut segments = Vec::new();
    let mut notes = Vec::new();
    for i in 0..phnum {
        let at = phoff
            .checked_add((i * phentsize) as u64)
            .and_then(|a| usize::try_from(a).ok())
            .filter(|&a| a.checked_add(PHDR_SIZE).is_some_and(|end| end <= data.len()))
            .ok_or("truncated: its program headers end past the end of the file")?;
        let field = |o: usize| u64_at(data, at + o).unwrap_or(0);
        let p_type = u32_at(data, at).unwrap_or(0);
        let flags = u32_at(data, at + 4).unwrap_or(0);
        let (offset, vaddr, filesz, memsz) = (field(8), field(16), field(32), field(40));
        match p_type {
            PT_LOAD => segments.push(Segment { vaddr, memsz, offset, filesz: filesz.min(memsz), flags }),
            PT_NOTE => notes.extend(parse_notes(slice(data, offset, filesz).ok_or(
                "truncated: its notes (the threads' registers and the list of mapped files) end past the end of the file",
            )?)),
            _ => {}
        }
    }
    if let Some(s) = segments.iter().find(|s| s.offset.checked_add(s.filesz).is_none_or(|e| e > data.len() as u64)) {
        return Err(format!(
            "truncated: the memory dumped at {:#x} ends past the end of the file (the dump was cut short; is the disk full?)",
            s.vaddr
        ));
    }
    if notes.is_empty() {
        return Err("a core file without notes (no threads, no list of mapped files)".into());
    }
    segments.sort_by_key(|s| s.vaddr);
    Ok(CoreFile { segments, notes })
}

/// Notes are (namesz, descsz, type, name padded to 4, desc padded to 4); a malformed one
/// ends the list.
fn parse_notes(mut b: &[u8]) -> Vec<Note<'_>> {
    let mut out = Vec::new();
    let pad = |n: usize| n.checked_add(3).map(|v| v & !3);
    while b.len() >= 12 {
        let (namesz, descsz, kind) =
            (u32_at(b, 0).unwrap_or(0) as usize, u32_at(b, 4).unwrap_or(0) as usize, u32_at(b, 8).unwrap_or(0));
        let Some(name_end) = pad(namesz).and_then(|n| n.checked_add(12)) else { break };
        let Some(desc_end) = pad(descsz).and_then(|d| d.checked_add(name_end)) else { break };
        let (Some(name), Some(desc)) = (b.get(12..12 + namesz), b.get(name_end..name_end + descsz)) else { break };
        // the name includes its NUL
        let name = name.strip_suffix(b"\0").unwrap_or(name);
        out.push(Note { kind, name, desc });
        b = b.get(desc_end..).unwrap_or(&[]);
    }
    out
}

pub fn slice(data: &[u8], offset: u64, len: u64) -> Option<&[u8]> {
    let start = usize::try_from(offset).ok()?;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    data.get(start..end)
}

pub fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o.checked_add(2)?)?.try_into().ok()?))
}

pub fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o.checked_add(4)?)?.try_into().ok()?))
}

pub fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(o..o.checked_add(8)?)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(e_type: u16, phnum: u16) -> Vec<u8> {
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = 2;
        h[5] = 1;
        h[16..18].copy_from_slice(&e_type.to_le_bytes());
        h[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
        h[32..40].copy_from_slice(&64u64.to_le_bytes());
        h[54..56].copy_from_slice(&(PHDR_SIZE as u16).to_le_bytes());
        h[56..58].copy_from_slice(&phnum.to_le_bytes());
        h
    }

    #[test]
    fn refuses_what_is_not_a_core_without_panicking() {
        assert!(parse(b"").unwrap_err().contains("not an ELF"));
        assert!(parse(b"#!/bin/sh\n").unwrap_err().contains("not an ELF"));
        assert!(parse(b"\x28\xb5\x2f\xfd....").unwrap_err().contains("coredumpctl dump"));
        assert!(parse(&header(2, 0)).unwrap_err().contains("not a core file"));
        // program headers promised but absent
        assert!(parse(&header(ET_CORE, 3)).unwrap_err().contains("truncated"));
        // every prefix of a header that promises a segment fails cleanly
        let mut h = header(ET_CORE, 1);
        let mut ph = vec![0u8; PHDR_SIZE];
        ph[..4].copy_from_slice(&PT_LOAD.to_le_bytes());
        ph[8..16].copy_from_slice(&4096u64.to_le_bytes()); // offset
        ph[32..40].copy_from_slice(&4096u64.to_le_bytes()); // filesz
        ph[40..48].copy_from_slice(&4096u64.to_le_bytes()); // memsz
        h.extend(ph);
        for n in 0..h.len() {
            assert!(parse(&h[..n]).is_err());
        }
        assert!(parse(&h).unwrap_err().contains("truncated"));
    }

    #[test]
    fn notes_stop_at_garbage() {
        let mut b = Vec::new();
        for v in [5u32, 4, 1] {
            b.extend(v.to_le_bytes());
        }
        b.extend(b"CORE\0\0\0\0");
        b.extend([1, 2, 3, 4]);
        b.extend([0xff; 12]); // a note claiming 4 GiB
        let notes = parse_notes(&b);
        assert_eq!(notes.len(), 1);
        assert_eq!(notes[0].name, b"CORE");
        assert_eq!(notes[0].desc, [1, 2, 3, 4]);
    }
}
