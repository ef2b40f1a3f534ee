//! Many pieces of the target's memory read in one process_vm_readv, then served locally.
//! The sampler asks for everything it expects to need this tick (thread states, the
//! used part of each data-stack chunk, last tick's frames) at once; what turns out to be
//! elsewhere is read on demand.

use super::memory::{Memory, ReadResult};

#[derive(Default)]
pub struct Prefetch {
    /// (address, length, offset into buf), in the order requested
    spans: Vec<(u64, usize, usize)>,
    /// how many spans the last read filled completely
    filled: usize,
    buf: Vec<u8>,
}

impl Prefetch {
    pub fn clear(&mut self) {
        self.spans.clear();
        self.filled = 0;
        self.buf.clear();
    }

    pub fn want(&mut self, addr: u64, len: usize) {
        if addr == 0 || len == 0 {
            return;
        }
        let at = self.buf.len();
        self.spans.push((addr, len, at));
        self.buf.resize(at + len, 0); // no allocation once the buffer has grown
    }

    /// One system call for up to 1024 pieces per call. A piece the target does not map
    /// any more ends the read there; later pieces count as not read.
    pub fn read(&mut self, mem: &Memory) -> ReadResult<()> {
        const BATCH: usize = 1024;
        let mut done = 0;
        while done < self.spans.len() {
            let group = &self.spans[done..(done + BATCH).min(self.spans.len())];
            let mut local: [libc::iovec; 64] = unsafe { std::mem::zeroed() };
            let mut remote: [libc::iovec; 64] = unsafe { std::mem::zeroed() };
            let mut ok = 0;
            for sub in group.chunks(64) {
                let mut want = 0;
                for (i, &(addr, len, at)) in sub.iter().enumerate() {
                    // SAFETY: at..at+len lies inside buf (want() grew it); buf is not
                    // resized until the read returns.
                    local[i] = libc::iovec { iov_base: unsafe { self.buf.as_mut_ptr().add(at) }.cast(), iov_len: len };
                    remote[i] = libc::iovec { iov_base: addr as *mut libc::c_void, iov_len: len };
                    want += len;
                }
                let n = unsafe {
                    libc::process_vm_readv(mem.pid, local.as_ptr(), sub.len() as _, remote.as_ptr(), sub.len() as _, 0)
                };
                if n < 0 {
                    let e = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
                    if e == libc::EFAULT {
                        // the first piece itself is unmapped: nothing of this sub-batch
                        self.filled = done + ok;
                        return Ok(());
                    }
                    return Err(super::memory::errno_to_read_error_code(e));
                }
                let mut left = n as usize;
                for &(_, len, _) in sub {
                    if left >= len {
                        left -= len;
                        ok += 1;
                    } else {
                        break;
                    }
                }
                if (n as usize) < want {
                    self.filled = done + ok;
                    return Ok(());
                }
            }
            done += group.len();
        }
        self.filled = self.spans.len();
        Ok(())
    }

    /// The bytes at [addr, addr+len) if one filled piece covers them.
    #[inline]
    pub fn get(&self, addr: u64, len: usize) -> Option<&[u8]> {
        for &(a, l, at) in &self.spans[..self.filled] {
            if addr >= a && addr + len as u64 <= a + l as u64 {
                let o = at + (addr - a) as usize;
                return self.buf.get(o..o + len);
            }
        }
        None
    }
}
