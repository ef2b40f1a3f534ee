//! What a walk of one thread's stack reads: the tick's copy first, the process behind it.

use super::memory::{ReadBudget, ReadError, ReadMem, ReadResult, Span};
use super::prefetch::Prefetch;
use std::cell::RefCell;

/// The tick's copy first, the process behind it, for a budget of reads: for the frames a
/// walk finds missing from the copy (a generator started since the plan was made, a stack
/// deeper than planned), and for learning where a thread's frames are. Past the budget a
/// read is `Missing`: the walk gives up, and the next read copies what was learnt.
/// (Unbounded, walks read frame after frame of a running thread: pylint under VizTracer
/// at 10 kHz had single ticks of 7,600 to 100,000 reads, 19-184 ms in which nothing else
/// was sampled.)
pub struct CopyThenProcess<'a> {
    copy: &'a Prefetch,
    process: ReadBudget<'a>,
    blocks: &'a RefCell<LateBlocks>,
}

impl<'a> CopyThenProcess<'a> {
    /// `blocks`: the walk's buffers for what it reads of the process, emptied here (what
    /// an earlier walk read of the process is older than this copy).
    pub fn new(copy: &'a Prefetch, process: &'a dyn ReadMem, reads: u32, blocks: &'a RefCell<LateBlocks>) -> Self {
        blocks.borrow_mut().clear();
        CopyThenProcess { copy, process: ReadBudget::new(process, reads), blocks }
    }

    /// A frame the copy lacks, read with the page around it. The generators a walk meets
    /// new were made one after another, most often from the same allocator pool, and the
    /// next one is often on the page just read: black at 10 kHz made 42 % fewer reads of
    /// the process this way (16 KiB, a whole pool on 3.10+, saved a few more reads but
    /// cost more than it saved). What a page gives was read earlier than a read of its
    /// own would be; the walk's frames read from the process are checked again at the end
    /// of the attempt either way (`stack::still_linked`).
    fn read_late(&self, s: &Span, dst: &mut [u8]) -> ReadResult<()> {
        let mut blocks = self.blocks.borrow_mut();
        if let Some(b) = blocks.get(s.addr, s.len) {
            dst.copy_from_slice(b);
            return Ok(());
        }
        if let Some((base, buf)) = blocks.slot_for(s.addr, s.len) {
            match self.process.read(base, buf) {
                Ok(()) => {
                    blocks.keep(base);
                    if let Some(b) = blocks.get(s.addr, s.len) {
                        dst.copy_from_slice(b);
                        return Ok(());
                    }
                }
                Err(ReadError::Fault) => {} // (a page is mapped whole: not seen)
                Err(e) => return Err(e),
            }
        }
        self.process.read(s.addr, dst)
    }
}

impl ReadMem for CopyThenProcess<'_> {
    fn read_spans(&self, spans: &[Span], buf: &mut [u8]) -> ReadResult<usize> {
        for (n, s) in spans.iter().enumerate() {
            let dst = buf.get_mut(s.at..s.at + s.len).ok_or(ReadError::Fault)?;
            match self.copy.get(s.addr, s.len) {
                Some(b) => dst.copy_from_slice(b),
                // (past the budget: Missing)
                None => match self.read_late(s, dst) {
                    Ok(()) => {}
                    Err(ReadError::Fault) => return Ok(n),
                    Err(e) => return Err(e),
                },
            }
        }
        Ok(spans.len())
    }
}

/// The pages of the target one walk read beside its copy, in buffers allocated once
/// (the sampler keeps one set for all its walks).
pub struct LateBlocks {
    bytes: Vec<u8>,
    /// each buffer's page address; `NONE` while it holds none
    addrs: [u64; LateBlocks::COUNT],
    next: usize,
}

/// (a page address is aligned, so never this)
const NONE: u64 = u64::MAX;

impl Default for LateBlocks {
    fn default() -> Self {
        LateBlocks { bytes: vec![0; Self::SIZE * Self::COUNT], addrs: [NONE; Self::COUNT], next: 0 }
    }
}

impl LateBlocks {
    const SIZE: usize = 4096;
    const COUNT: usize = 8;

    fn clear(&mut self) {
        self.addrs = [NONE; Self::COUNT];
        self.next = 0;
    }

    /// The page around `addr`, if `len` bytes from it lie on that one page.
    fn base(addr: u64, len: usize) -> Option<u64> {
        let size = Self::SIZE as u64;
        let base = addr & !(size - 1);
        ((addr - base).checked_add(len as u64)? <= size).then_some(base)
    }

    fn get(&self, addr: u64, len: usize) -> Option<&[u8]> {
        let base = Self::base(addr, len)?;
        let k = self.addrs.iter().position(|&a| a == base)?;
        let at = k * Self::SIZE + (addr - base) as usize;
        self.bytes.get(at..at + len)
    }

    /// The page around `addr` and the buffer to read it into (the oldest one); `keep`
    /// then makes it readable.
    fn slot_for(&mut self, addr: u64, len: usize) -> Option<(u64, &mut [u8])> {
        let base = Self::base(addr, len)?;
        let k = self.next;
        self.addrs[k] = NONE;
        Some((base, &mut self.bytes[k * Self::SIZE..(k + 1) * Self::SIZE]))
    }

    fn keep(&mut self, base: u64) {
        self.addrs[self.next] = base;
        self.next = (self.next + 1) % Self::COUNT;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_span_is_served_from_a_page_only_when_it_lies_on_it_whole() {
        let mut b = LateBlocks::default();
        let (base, buf) = b.slot_for(0x5010, 16).unwrap();
        assert_eq!(base, 0x5000);
        buf[0x10] = 7;
        assert!(b.get(0x5010, 16).is_none(), "not kept yet");
        b.keep(base);
        assert_eq!(b.get(0x5010, 16).unwrap()[0], 7);
        assert_eq!(b.get(0x5ff8, 8).map(<[u8]>::len), Some(8));
        assert!(b.get(0x5ff8, 9).is_none(), "crosses into the next page");
        assert!(b.slot_for(0x5ff8, 9).is_none());
        assert!(b.get(0x6000, 8).is_none());
        b.clear();
        assert!(b.get(0x5010, 16).is_none());
    }
}
