//! Many pieces of the target's memory read in one batch, then served locally: the copy
//! a tick walks. The sampler asks for everything it expects to need (thread states, the
//! used part of each data-stack chunk, last tick's frames) at once; whatever the walk
//! then wants that is not in the copy is `ReadError::Missing`, never read behind the
//! copy's back, so everything one walk sees was read in one pass.
//!
//! Some pieces are *checks*: a field read a second time at the end of a thread's group,
//! to tell whether the thread moved while its group was copied. Checks are reached by
//! the handle `want_check` returns, never by address, so they do not shadow the first
//! read of the same field.

use super::memory::{ReadError, ReadMem, ReadResult, Span};

/// Bytes between two pieces that one piece reads rather than starting another.
const MERGE_GAP: u64 = 1024;
const PAGE: u64 = 4096;

#[derive(Default)]
pub struct Prefetch {
    spans: Vec<Span>,
    /// whether spans[i] is a check (not served by address)
    check: Vec<bool>,
    /// whether the last read filled spans[i] completely
    ok: Vec<bool>,
    /// bytes asked for so far; `buf` only grows (never cleared: every byte served was
    /// written by the last read, so nothing is zeroed per tick)
    used: usize,
    buf: Vec<u8>,
    /// bytes handed in rather than read (`give`), served like filled spans
    given: Vec<Span>,
    /// filled, non-check spans not inside another, by address (ends increase too);
    /// `spans.len() + j` stands for given[j]
    index: Vec<u32>,
}

impl Prefetch {
    pub fn clear(&mut self) {
        self.spans.clear();
        self.check.clear();
        self.ok.clear();
        self.used = 0;
        self.given.clear();
        self.index.clear();
    }

    /// Serves [addr, addr+bytes.len()) from `bytes` at this read, without reading it:
    /// for memory known not to have changed since it was last read. A span read for
    /// real that covers the same bytes is served instead.
    pub fn give(&mut self, addr: u64, bytes: &[u8]) {
        if addr == 0 || bytes.is_empty() {
            return;
        }
        let at = self.used;
        self.used += bytes.len();
        if self.buf.len() < self.used {
            self.buf.resize(self.used, 0);
        }
        self.buf[at..self.used].copy_from_slice(bytes);
        self.given.push(Span { addr, len: bytes.len(), at });
    }

    fn span(&self, i: u32) -> &Span {
        let i = i as usize;
        self.spans.get(i).unwrap_or_else(|| &self.given[i - self.spans.len()])
    }

    fn push(&mut self, addr: u64, len: usize, check: bool) -> usize {
        let at = self.used;
        self.spans.push(Span { addr, len, at });
        self.check.push(check);
        self.used += len;
        if self.buf.len() < self.used {
            self.buf.resize(self.used, 0);
        }
        self.spans.len() - 1
    }

    /// Asks for [addr, addr+len). A piece close to the previous one (after or before it)
    /// and on the pages that one touches extends it instead: the kernel pins pages
    /// per piece, so two fields of one structure cost one piece, not two (the bytes in
    /// between are read too, at the same point of the read; a page the other could not
    /// read, this one could not either).
    pub fn want(&mut self, addr: u64, len: usize) {
        if addr == 0 || len == 0 {
            return;
        }
        if let (Some(last), Some(false)) = (self.spans.last_mut(), self.check.last()) {
            let end = last.addr + last.len as u64;
            let new_end = addr.saturating_add(len as u64);
            let (lo, hi) = (addr.min(last.addr), new_end.max(end));
            let gap = addr.saturating_sub(end).max(last.addr.saturating_sub(new_end));
            // (below it too: thread states listed newest first lie at falling addresses)
            if gap <= MERGE_GAP && lo / PAGE >= last.addr / PAGE && (hi - 1) / PAGE <= (end - 1) / PAGE {
                // (the last piece's bytes are not read yet: it just starts lower and
                // ends higher in the same place of the buffer)
                let grow = (hi - lo) as usize - last.len;
                last.addr = lo;
                last.len += grow;
                self.used += grow;
                if self.buf.len() < self.used {
                    self.buf.resize(self.used, 0);
                }
                return;
            }
        }
        self.push(addr, len, false);
    }

    /// A second read of a field already asked for; its bytes come from `checked`.
    pub fn want_check(&mut self, addr: u64, len: usize) -> Option<usize> {
        (addr != 0 && len != 0).then(|| self.push(addr, len, true))
    }

    /// Reads every span, in the order asked. A span the target does not map is skipped
    /// (the read goes on after it), so one thread's stale plan costs the others nothing.
    /// One that fails on its last page only is read again without that page: a piece of
    /// frames ends a frame's length past the last frame's start, which for the last frame
    /// of a data-stack chunk can be past the chunk's mapping, and the whole piece (a
    /// chunk's worth of frames) was lost with it.
    pub fn fetch(&mut self, mem: &dyn ReadMem) -> ReadResult<()> {
        self.ok.clear();
        self.ok.resize(self.spans.len(), false);
        let mut from = 0;
        let mut cut_at = usize::MAX;
        while from < self.spans.len() {
            let n = mem.read_spans(&self.spans[from..], &mut self.buf)?;
            self.ok[from..from + n].iter_mut().for_each(|o| *o = true);
            from += n;
            let Some(s) = self.spans.get_mut(from) else { break };
            let last_page = (s.addr + s.len as u64 - 1) / PAGE * PAGE;
            if cut_at != from && !self.check[from] && last_page > s.addr {
                s.len = (last_page - s.addr) as usize;
                cut_at = from;
                continue;
            }
            from += 1;
        }
        self.index.clear();
        self.index.extend((0..self.spans.len() as u32).filter(|&i| self.ok[i as usize] && !self.check[i as usize]));
        let read = self.spans.len() as u32;
        self.index.extend(read..read + self.given.len() as u32);
        let mut index = std::mem::take(&mut self.index);
        // (at one address, the longer first; of equal ones, the one read for real)
        index.sort_unstable_by_key(|&i| (self.span(i).addr, std::cmp::Reverse(self.span(i).len), i >= read));
        // A span that ends before some earlier-starting span ends lies inside that span:
        // drop it, so starts and ends both increase and one binary search finds the only
        // span that can hold an address.
        let mut end = 0;
        index.retain(|&i| {
            let s = self.span(i);
            let e = s.addr + s.len as u64;
            let keep = e > end;
            end = end.max(e);
            keep
        });
        self.index = index;
        Ok(())
    }

    /// The bytes of check `id`, if the read reached it.
    pub fn checked(&self, id: usize) -> Option<&[u8]> {
        let s = self.spans.get(id).filter(|_| self.ok.get(id) == Some(&true))?;
        self.buf.get(s.at..s.at + s.len)
    }

    /// The bytes at [addr, addr+len) if one filled span covers them.
    #[inline]
    pub fn get(&self, addr: u64, len: usize) -> Option<&[u8]> {
        let end = addr.checked_add(len as u64)?;
        let i = self.index.partition_point(|&i| self.span(i).addr <= addr).checked_sub(1)?;
        let s = self.span(self.index[i]);
        if end > s.addr + s.len as u64 {
            return None;
        }
        let o = s.at + (addr - s.addr) as usize;
        self.buf.get(o..o + len)
    }
}

/// The copy read as memory: what it does not hold is `Missing`.
impl ReadMem for Prefetch {
    fn read_spans(&self, spans: &[Span], buf: &mut [u8]) -> ReadResult<usize> {
        for s in spans {
            let src = self.get(s.addr, s.len).ok_or(ReadError::Missing)?;
            buf.get_mut(s.at..s.at + s.len).ok_or(ReadError::Fault)?.copy_from_slice(src);
        }
        Ok(spans.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Memory that holds `0x1000..0x3000`, each byte the low byte of its address.
    struct Flat;
    impl ReadMem for Flat {
        fn read_spans(&self, spans: &[Span], buf: &mut [u8]) -> ReadResult<usize> {
            for (n, s) in spans.iter().enumerate() {
                if s.addr < 0x1000 || s.addr + s.len as u64 > 0x3000 {
                    return Ok(n);
                }
                for k in 0..s.len {
                    buf[s.at + k] = (s.addr + k as u64) as u8;
                }
            }
            Ok(spans.len())
        }
    }

    #[test]
    fn serves_covered_ranges_and_misses_the_rest() {
        let mut p = Prefetch::default();
        p.want(0x2000, 0x100);
        p.want(0x1000, 0x40);
        p.want(0x1010, 0x8); // inside the previous one
        let c = p.want_check(0x1000, 8).unwrap();
        p.fetch(&Flat).unwrap();
        assert_eq!(p.get(0x1010, 4), Some(&[0x10, 0x11, 0x12, 0x13][..]));
        assert_eq!(p.get(0x20f8, 8).map(|b| b[0]), Some(0xf8));
        assert_eq!(p.get(0x20fc, 8), None); // runs past the span
        assert_eq!(p.get(0x1800, 8), None);
        assert_eq!(p.checked(c).map(|b| b[1]), Some(0x01));
        let mut b = [0u8; 2];
        assert_eq!(p.read(0x1800, &mut b), Err(ReadError::Missing));
    }

    #[test]
    fn a_piece_that_runs_onto_an_unmapped_page_keeps_the_pages_before() {
        let mut p = Prefetch::default();
        p.want(0x1000, 0x100);
        p.want(0x2800, 0x1000); // 0x3000.. is not mapped
        p.want(0x2000, 0x10);
        p.want(0x4000, 0x10); // not mapped at all
        p.want(0x1800, 0x10);
        p.fetch(&Flat).unwrap();
        assert_eq!(p.get(0x2800, 0x800).map(|b| b[0x7ff]), Some(0xff));
        assert_eq!(p.get(0x2f00, 0x200), None);
        assert_eq!(p.get(0x2000, 0x10).map(|b| b[1]), Some(0x01));
        assert_eq!(p.get(0x4000, 0x10), None);
        assert_eq!(p.get(0x1800, 0x10).map(|b| b[2]), Some(0x02));
        assert_eq!(p.get(0x1000, 0x100).map(|b| b[3]), Some(0x03));
    }

    #[test]
    fn close_pieces_on_one_page_are_read_as_one_but_never_across_a_check() {
        let mut p = Prefetch::default();
        p.want(0x1000, 8);
        p.want(0x1100, 16); // same page, 248 bytes on: one piece
        p.want(0x1ff8, 16); // past the gap
        let c = p.want_check(0x1000, 8).unwrap();
        p.want(0x1010, 8); // after a check: its own piece, read after it
        assert_eq!(
            p.spans.iter().map(|s| (s.addr, s.len)).collect::<Vec<_>>(),
            [(0x1000, 0x110), (0x1ff8, 16), (0x1000, 8), (0x1010, 8)]
        );
        p.fetch(&Flat).unwrap();
        assert_eq!(p.get(0x1108, 8).map(|b| b[0]), Some(0x08));
        assert_eq!(p.checked(c).map(|b| b[1]), Some(0x01));
        let mut q = Prefetch::default();
        q.want(0x1f00, 0x80);
        q.want(0x2008, 8); // on the next page: not merged
        assert_eq!(q.spans.len(), 2);
        // falling addresses on one page: one piece, each read where it lies
        let mut r = Prefetch::default();
        r.want(0x1800, 0x100);
        r.want(0x1400, 0x100);
        r.want(0x1000, 0x100);
        r.want(0x0c00, 0x100); // on the page before: its own piece
        assert_eq!(r.spans.iter().map(|s| (s.addr, s.len)).collect::<Vec<_>>(), [(0x1000, 0x900), (0x0c00, 0x100)]);
        r.fetch(&Flat).unwrap();
        assert_eq!(r.get(0x1400, 2), Some(&[0x00, 0x01][..]));
        assert_eq!(r.get(0x18ff, 1), Some(&[0xff][..]));
    }

    #[test]
    fn an_unmapped_span_is_skipped_and_the_read_goes_on() {
        let mut p = Prefetch::default();
        p.want(0x1000, 8);
        p.want(0x9000, 8);
        p.want(0x1100, 8);
        p.fetch(&Flat).unwrap();
        assert!(p.get(0x1000, 8).is_some());
        assert!(p.get(0x9000, 8).is_none());
        assert!(p.get(0x1100, 8).is_some());
    }

    #[test]
    fn given_bytes_are_served_without_a_read_and_a_real_read_wins() {
        let mut p = Prefetch::default();
        p.want(0x1000, 0x10);
        p.give(0x1800, &[7; 16]);
        p.give(0x1000, &[9; 8]); // read for real too: the read is served
        p.want(0x2000, 8);
        p.fetch(&Flat).unwrap();
        assert_eq!(p.spans.len(), 2, "given bytes are not read");
        assert_eq!(p.get(0x1804, 4), Some(&[7, 7, 7, 7][..]));
        assert_eq!(p.get(0x1000, 2), Some(&[0x00, 0x01][..]));
        assert_eq!(p.get(0x2000, 1), Some(&[0x00][..]));
        assert_eq!(p.get(0x180c, 8), None, "past the given bytes");
        p.clear();
        p.fetch(&Flat).unwrap();
        assert_eq!(p.get(0x1800, 1), None, "gone with the read they were given to");
    }
}
