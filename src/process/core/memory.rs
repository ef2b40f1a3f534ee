//! A core's memory behind `ReadMem`: the bytes the dumper copied, and for file-backed
//! ranges it left out (text and read-only data are usually not dumped) the bytes of the
//! mapped file itself. Copied bytes win: they are what the process had, written or not.

use super::file::Segment;
use crate::process::memory::{ReadError, ReadMem, ReadResult, Span};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A file range the process had mapped, served from our copy of the file.
pub struct FileRange {
    pub start: u64,
    pub end: u64,
    pub offset: u64,
    pub data: Arc<memmap2::Mmap>,
}

pub struct CoreMemory {
    core: Arc<memmap2::Mmap>,
    /// sorted by vaddr
    segments: Vec<Segment>,
    /// sorted by start
    files: Vec<FileRange>,
    /// the last address asked for that neither the core nor a file holds (0: none), for
    /// the error that reports it
    missed: AtomicU64,
}

impl CoreMemory {
    pub fn new(core: Arc<memmap2::Mmap>, mut segments: Vec<Segment>, mut files: Vec<FileRange>) -> CoreMemory {
        segments.sort_by_key(|s| s.vaddr);
        files.sort_by_key(|f| f.start);
        CoreMemory { core, segments, files, missed: AtomicU64::new(0) }
    }

    pub fn forget_missed(&self) {
        self.missed.store(0, Ordering::Relaxed);
    }

    pub fn last_missed(&self) -> Option<u64> {
        Some(self.missed.load(Ordering::Relaxed)).filter(|&a| a != 0)
    }

    /// Whether the core itself holds `len` bytes at `addr` (not the files beside it).
    pub fn dumped(&self, addr: u64, len: u64) -> Option<&[u8]> {
        let s = self.segment(addr)?;
        let end = addr.checked_add(len)?;
        if end > s.vaddr.saturating_add(s.filesz) {
            return None;
        }
        super::file::slice(&self.core, s.offset + (addr - s.vaddr), len)
    }

    fn segment(&self, addr: u64) -> Option<&Segment> {
        let i = self.segments.partition_point(|s| s.vaddr <= addr);
        let s = self.segments.get(i.checked_sub(1)?)?;
        (addr - s.vaddr < s.memsz).then_some(s)
    }

    fn file(&self, addr: u64) -> Option<&FileRange> {
        let i = self.files.partition_point(|f| f.start <= addr);
        let f = self.files.get(i.checked_sub(1)?)?;
        (addr < f.end).then_some(f)
    }

    /// Copies as much of `dst` as one source (a segment's bytes, or one file) holds at
    /// `addr`; how many bytes, 0 for none.
    fn piece(&self, addr: u64, dst: &mut [u8]) -> usize {
        let want = dst.len() as u64;
        if let Some(s) = self.segment(addr) {
            let in_core = s.vaddr.saturating_add(s.filesz).saturating_sub(addr).min(want);
            if in_core > 0 {
                let Some(src) = super::file::slice(&self.core, s.offset + (addr - s.vaddr), in_core) else {
                    return 0;
                };
                dst[..src.len()].copy_from_slice(src);
                return src.len();
            }
        }
        let Some(f) = self.file(addr) else { return 0 };
        let limit = (f.end - addr).min(want);
        let Some(at) = f.offset.checked_add(addr - f.start) else { return 0 };
        let available = (f.data.len() as u64).saturating_sub(at).min(limit);
        if available == 0 {
            return 0; // past the end of the file: memory (bss) the core did not keep
        }
        let Some(src) = super::file::slice(&f.data, at, available) else { return 0 };
        dst[..src.len()].copy_from_slice(src);
        src.len()
    }

    fn read_one(&self, mut addr: u64, mut dst: &mut [u8]) -> bool {
        while !dst.is_empty() {
            let n = self.piece(addr, dst);
            if n == 0 {
                self.missed.store(addr, Ordering::Relaxed);
                return false;
            }
            addr = match addr.checked_add(n as u64) {
                Some(a) => a,
                None => return false,
            };
            dst = &mut dst[n..];
        }
        true
    }
}

impl ReadMem for CoreMemory {
    fn read_spans(&self, spans: &[Span], buf: &mut [u8]) -> ReadResult<usize> {
        for (i, s) in spans.iter().enumerate() {
            let Some(dst) = s.at.checked_add(s.len).and_then(|end| buf.get_mut(s.at..end)) else {
                return Err(ReadError::Fault);
            };
            if !self.read_one(s.addr, dst) {
                return Ok(i);
            }
        }
        Ok(spans.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn mmap_of(bytes: &[u8]) -> Arc<memmap2::Mmap> {
        let mut f = tempfile();
        f.write_all(bytes).unwrap();
        Arc::new(unsafe { memmap2::Mmap::map(&f).unwrap() })
    }

    fn tempfile() -> std::fs::File {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("vizattach-corememory-{}-{n}", std::process::id()));
        let f = std::fs::OpenOptions::new().create(true).truncate(true).read(true).write(true).open(&p).unwrap();
        let _ = std::fs::remove_file(&p);
        f
    }

    #[test]
    fn dumped_bytes_then_the_file_then_nothing() {
        // the core holds 0x1000..0x1008 of an 0x10-byte mapping; the file holds the rest
        let core = mmap_of(&[0xaa; 8]);
        let seg = Segment { vaddr: 0x1000, memsz: 0x10, offset: 0, filesz: 8, flags: 0 };
        let file = mmap_of(&(0u8..0x0c).collect::<Vec<_>>());
        let files = vec![FileRange { start: 0x1000, end: 0x1010, offset: 0, data: file }];
        let m = CoreMemory::new(core, vec![seg], files);
        let mut b = [0u8; 8];
        m.read(0x1004, &mut b).unwrap();
        assert_eq!(b, [0xaa, 0xaa, 0xaa, 0xaa, 8, 9, 10, 11]);
        // past the file's end (0x100c): not held
        assert_eq!(m.read(0x100a, &mut [0u8; 4]), Err(ReadError::Fault));
        assert_eq!(m.read(0x2000, &mut [0u8; 1]), Err(ReadError::Fault));
        assert_eq!(m.read(u64::MAX - 1, &mut [0u8; 4]), Err(ReadError::Fault));
        // a segment claiming the top of the address space, past what the core holds
        let top = Segment { vaddr: u64::MAX - 4, memsz: u64::MAX, offset: 4, filesz: u64::MAX, flags: 0 };
        let m = CoreMemory::new(mmap_of(&[1; 8]), vec![top], Vec::new());
        assert_eq!(m.read(u64::MAX - 2, &mut [0u8; 8]), Err(ReadError::Fault));
    }
}
