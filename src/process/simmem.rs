//! A simulated target memory for tests: regions of bytes, and scripted changes that
//! happen while a read is under way (just before a chosen span is copied), so every way
//! a read of a running program can tear is reproduced exactly, every time.

use super::memory::{ReadMem, ReadResult, Span};
use std::cell::RefCell;
use std::collections::BTreeMap;

type Change = Box<dyn FnOnce(&mut Regions)>;

#[derive(Default)]
pub struct Regions {
    map: BTreeMap<u64, Vec<u8>>,
}

impl Regions {
    pub fn map(&mut self, addr: u64, len: usize) {
        self.map.insert(addr, vec![0; len]);
    }

    fn find(&self, addr: u64, len: usize) -> Option<(u64, &Vec<u8>)> {
        let (&start, bytes) = self.map.range(..=addr).next_back()?;
        (addr + len as u64 <= start + bytes.len() as u64).then_some((start, bytes))
    }

    pub fn write(&mut self, addr: u64, data: &[u8]) {
        let (&start, bytes) = self.map.range_mut(..=addr).next_back().expect("write to unmapped simulated memory");
        let o = (addr - start) as usize;
        bytes[o..o + data.len()].copy_from_slice(data);
    }

    pub fn u64(&mut self, addr: u64, v: u64) {
        self.write(addr, &v.to_le_bytes());
    }

    pub fn u32(&mut self, addr: u64, v: u32) {
        self.write(addr, &v.to_le_bytes());
    }

    pub fn u8(&mut self, addr: u64, v: u8) {
        self.write(addr, &[v]);
    }

    pub fn copy(&mut self, from: u64, to: u64, len: usize) {
        let (start, bytes) = self.find(from, len).expect("copy from unmapped simulated memory");
        let o = (from - start) as usize;
        let data = bytes[o..o + len].to_vec();
        self.write(to, &data);
    }
}

#[derive(Default)]
pub struct SimMem {
    pub regions: RefCell<Regions>,
    /// (address, whether a span holding it counts or only one starting there, changes),
    /// run just before the next such span is read
    script: RefCell<Vec<(u64, bool, Change)>>,
    /// (address, changes), run when a read has copied the bytes below that address of
    /// the span that holds it, and not the rest: one copy, two moments
    midway: RefCell<Vec<(u64, Change)>>,
    pub spans_read: RefCell<usize>,
    /// calls of `read_spans`: what a process would pay one system call each for
    pub reads: RefCell<usize>,
}

impl SimMem {
    pub fn with(&self, f: impl FnOnce(&mut Regions)) {
        f(&mut self.regions.borrow_mut());
    }

    /// Runs `change` just before a span starting at `addr` is next read.
    pub fn when_reading(&self, addr: u64, change: impl FnOnce(&mut Regions) + 'static) {
        self.script.borrow_mut().push((addr, false, Box::new(change)));
    }

    /// Runs `change` just before a span holding `addr` is next read (the page a walk
    /// reads around a frame its copy lacks, say).
    pub fn when_reading_over(&self, addr: u64, change: impl FnOnce(&mut Regions) + 'static) {
        self.script.borrow_mut().push((addr, true, Box::new(change)));
    }

    /// Runs `change` in the middle of the next read of a span holding `addr`, once the
    /// span's bytes below `addr` are copied.
    pub fn when_copying(&self, addr: u64, change: impl FnOnce(&mut Regions) + 'static) {
        self.midway.borrow_mut().push((addr, Box::new(change)));
    }

    pub fn pending_changes(&self) -> usize {
        self.script.borrow().len() + self.midway.borrow().len()
    }

    /// The first scripted change `due` picks (by address, and whether it is due over a
    /// span), taken out of the script.
    fn take_change(&self, due: impl Fn(u64, bool) -> bool) -> Option<Change> {
        let mut script = self.script.borrow_mut();
        let i = script.iter().position(|(a, over, _)| due(*a, *over))?;
        Some(script.remove(i).2)
    }

    /// Drops the changes not made yet.
    pub fn forget_changes(&self) {
        self.script.borrow_mut().clear();
        self.midway.borrow_mut().clear();
    }
}

impl ReadMem for SimMem {
    fn read_spans(&self, spans: &[Span], buf: &mut [u8]) -> ReadResult<usize> {
        *self.reads.borrow_mut() += 1;
        for (n, s) in spans.iter().enumerate() {
            // every change due over the span, then one due at its address
            let end = s.addr + s.len as u64;
            while let Some(change) = self.take_change(|a, over| over && (s.addr..end).contains(&a)) {
                change(&mut self.regions.borrow_mut());
            }
            if let Some(change) = self.take_change(|a, over| !over && a == s.addr) {
                change(&mut self.regions.borrow_mut());
            }
            *self.spans_read.borrow_mut() += 1;
            if self.regions.borrow().find(s.addr, s.len).is_none() {
                return Ok(n);
            }
            let mut from = s.addr;
            loop {
                let split = {
                    let mut midway = self.midway.borrow_mut();
                    let due = midway.iter().enumerate().filter(|(_, (a, _))| *a > from && *a < end);
                    due.min_by_key(|(_, (a, _))| *a).map(|(i, _)| i).map(|i| midway.remove(i))
                };
                let until = split.as_ref().map_or(end, |(a, _)| *a);
                let regions = self.regions.borrow();
                let (start, bytes) = regions.find(from, (until - from) as usize).expect("mapped above");
                let (o, at) = ((from - start) as usize, s.at + (from - s.addr) as usize);
                let len = (until - from) as usize;
                buf[at..at + len].copy_from_slice(&bytes[o..o + len]);
                drop(regions);
                let Some((_, change)) = split else { break };
                change(&mut self.regions.borrow_mut());
                from = until;
            }
        }
        Ok(spans.len())
    }
}
