//! PEP 393 unicode and bytes objects, read with every length bounded: the bytes come
//! from another process and may be stale.

use super::layout::Layout;
use crate::process::memory::{Fields, ReadError, ReadMem, ReadResult};

/// Longest string we will read (names and file paths are far shorter).
pub const MAX_CHARS: u64 = 4096;
pub const MAX_BYTES: u64 = 1 << 20;

pub fn read_unicode(mem: &dyn ReadMem, layout: &Layout, addr: u64) -> ReadResult<String> {
    if addr == 0 {
        return Err(ReadError::Fault);
    }
    let u = &layout.unicode;
    let mut head = [0u8; 96];
    let head_len = (u.compact_data.max(u.legacy_data) + 8).min(96) as usize;
    mem.read(addr, &mut head[..head_len])?;
    let length = head.u64_at(u.length);
    let state = head.u32_at(u.state);
    let kind = (state >> 2) & 7;
    let compact = (state >> 5) & 1 == 1;
    let ascii = (state >> 6) & 1 == 1;
    if length > MAX_CHARS || !matches!(kind, 1 | 2 | 4) || (ascii && kind != 1) {
        return Err(ReadError::Fault);
    }
    let data = match (compact, ascii) {
        (true, true) => addr + u.ascii_data,
        (true, false) => addr + u.compact_data,
        (false, _) => head.u64_at(u.legacy_data),
    };
    let mut raw = vec![0u8; (length * kind as u64) as usize];
    mem.read(data, &mut raw)?;
    decode(&raw, kind)
}

fn decode(raw: &[u8], kind: u32) -> ReadResult<String> {
    match kind {
        1 => Ok(raw.iter().map(|&b| b as char).collect()),
        2 => raw
            .chunks_exact(2)
            .map(|c| char::from_u32(u16::from_le_bytes([c[0], c[1]]) as u32).ok_or(ReadError::Fault))
            .collect(),
        _ => raw
            .chunks_exact(4)
            .map(|c| char::from_u32(u32::from_le_bytes([c[0], c[1], c[2], c[3]])).ok_or(ReadError::Fault))
            .collect(),
    }
}

pub fn read_bytes(mem: &dyn ReadMem, layout: &Layout, addr: u64) -> ReadResult<Vec<u8>> {
    if addr == 0 {
        return Err(ReadError::Fault);
    }
    let size = mem.read_u64(addr + layout.bytes.size)?;
    if size > MAX_BYTES {
        return Err(ReadError::Fault);
    }
    mem.read_vec(addr + layout.bytes.data, size as usize)
}

/// Compares a unicode object with an ASCII name without decoding it (dict key lookup).
pub fn unicode_equals(mem: &dyn ReadMem, layout: &Layout, addr: u64, want: &str) -> ReadResult<bool> {
    let u = &layout.unicode;
    let mut head = [0u8; 64];
    let n = (u.ascii_data as usize).min(64);
    mem.read(addr, &mut head[..n])?;
    let state = head.u32_at(u.state);
    let compact_ascii = (state >> 5) & 3 == 3;
    if !compact_ascii || head.u64_at(u.length) != want.len() as u64 {
        return Ok(false);
    }
    let mut data = vec![0u8; want.len()];
    mem.read(addr + u.ascii_data, &mut data)?;
    Ok(data == want.as_bytes())
}

#[cfg(test)]
mod tests {
    #[test]
    fn decodes_each_kind() {
        assert_eq!(super::decode(b"ab", 1).unwrap(), "ab");
        assert_eq!(super::decode(&[0xfc, 0x00], 2).unwrap(), "ü");
        assert_eq!(super::decode(&0x65e5u32.to_le_bytes(), 4).unwrap(), "日");
        assert!(super::decode(&0xd800u32.to_le_bytes(), 4).is_err());
    }
}
