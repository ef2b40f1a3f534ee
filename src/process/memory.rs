//! Reading the target's memory with process_vm_readv: no stop, no ptrace, and many
//! pieces in one system call when the caller has them ready.

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadError {
    /// The address is not mapped (or no longer is): the structure changed under us.
    Fault,
    /// The process is gone.
    Gone,
    Denied,
    /// Readable, but not the kind of object expected (3.13+ frames may run other things
    /// than code objects).
    NotCode,
    /// Not in the copy being read (a tick's prefetched view): read it and try again.
    Missing,
    Other(i32),
}

impl ReadError {
    pub fn into_error(self, pid: i32) -> Error {
        match self {
            ReadError::Gone => Error::TargetExited(pid),
            ReadError::Denied => Error::PermissionDenied { pid, what: "memory".into() },
            ReadError::Fault | ReadError::NotCode | ReadError::Missing => {
                Error::Inconsistent(format!("process {pid}: read an unmapped address"))
            }
            ReadError::Other(e) => {
                Error::Io(format!("reading memory of process {pid}: {}", std::io::Error::from_raw_os_error(e)))
            }
        }
    }
}

pub type ReadResult<T> = std::result::Result<T, ReadError>;

#[derive(Clone, Copy)]
pub struct Memory {
    pub pid: i32,
}

impl Memory {
    pub fn new(pid: i32) -> Memory {
        Memory { pid }
    }

    /// One read of the target's first mapped page tells apart "no permission" from
    /// "no process" before anything else is attempted.
    pub fn check_access(&self) -> Result<()> {
        let maps = std::fs::read_to_string(format!("/proc/{}/maps", self.pid))
            .map_err(|e| super::io_error(self.pid, "memory maps", e))?;
        let Some(first) = super::maps::parse(&maps).into_iter().find(|m| m.readable) else {
            return Err(Error::TargetExited(self.pid));
        };
        let mut b = [0u8; 8];
        match self.read(first.start, &mut b) {
            Ok(()) | Err(ReadError::Fault) => Ok(()),
            Err(e) => Err(e.into_error(self.pid)),
        }
    }
}

/// A piece of a batched read: `len` bytes at `addr` in the target go to `at` in the
/// caller's buffer.
#[derive(Debug, Clone, Copy)]
pub struct Span {
    pub addr: u64,
    pub len: usize,
    pub at: usize,
}

/// Anything that reads a target's memory: the live process, the copy one tick made of
/// it (process/prefetch.rs), and in tests a simulated memory that changes between reads.
/// Every reader of interpreter structures goes through this, so the same walk serves
/// dumps, scans and the sampler.
pub trait ReadMem {
    /// Fills `buf` from the spans, in order. Returns how many spans were filled
    /// completely: a span the target does not map ends the read there.
    fn read_spans(&self, spans: &[Span], buf: &mut [u8]) -> ReadResult<usize>;

    fn read(&self, addr: u64, buf: &mut [u8]) -> ReadResult<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let span = Span { addr, len: buf.len(), at: 0 };
        match self.read_spans(&[span], buf)? {
            1 => Ok(()),
            _ => Err(ReadError::Fault),
        }
    }

    fn read_u64(&self, addr: u64) -> ReadResult<u64> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn read_u32(&self, addr: u64) -> ReadResult<u32> {
        let mut b = [0u8; 4];
        self.read(addr, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn read_vec(&self, addr: u64, len: usize) -> ReadResult<Vec<u8>> {
        let mut v = vec![0u8; len];
        self.read(addr, &mut v)?;
        Ok(v)
    }
}

/// Another `ReadMem` for at most `reads` calls, then `Missing`: a lookup on the
/// sampler's thread walks objects whose headers may be torn or freed, and must not stall
/// the sampling however many entries they claim.
pub struct ReadBudget<'a> {
    inner: &'a dyn ReadMem,
    left: std::cell::Cell<u32>,
}

impl<'a> ReadBudget<'a> {
    pub fn new(inner: &'a dyn ReadMem, reads: u32) -> Self {
        ReadBudget { inner, left: std::cell::Cell::new(reads) }
    }
}

impl ReadMem for ReadBudget<'_> {
    fn read_spans(&self, spans: &[Span], buf: &mut [u8]) -> ReadResult<usize> {
        let left = self.left.get();
        if left == 0 {
            return Err(ReadError::Missing);
        }
        self.left.set(left - 1);
        self.inner.read_spans(spans, buf)
    }
}

impl ReadMem for Memory {
    /// One process_vm_readv per 64 spans (the kernel copies them in order, so pieces
    /// next to each other in the list are read microseconds apart at most).
    fn read_spans(&self, spans: &[Span], buf: &mut [u8]) -> ReadResult<usize> {
        let mut filled = 0;
        for group in spans.chunks(64) {
            let mut local: [libc::iovec; 64] = unsafe { std::mem::zeroed() };
            let mut remote: [libc::iovec; 64] = unsafe { std::mem::zeroed() };
            let mut want = 0;
            for (i, s) in group.iter().enumerate() {
                let Some(dst) = buf.get_mut(s.at..s.at + s.len) else {
                    return Err(ReadError::Fault);
                };
                local[i] = libc::iovec { iov_base: dst.as_mut_ptr().cast(), iov_len: s.len };
                remote[i] = libc::iovec { iov_base: s.addr as *mut libc::c_void, iov_len: s.len };
                want += s.len;
            }
            // SAFETY: each local iovec points into `buf`, inside its bounds (checked above);
            // the kernel checks the remote ones.
            let n = unsafe {
                libc::process_vm_readv(self.pid, local.as_ptr(), group.len() as _, remote.as_ptr(), group.len() as _, 0)
            };
            if n < 0 {
                let e = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
                if e == libc::EFAULT {
                    return Ok(filled); // the group's first span itself is unmapped
                }
                return Err(errno_to_read_error_code(e));
            }
            let mut left = n as usize;
            for s in group {
                if left < s.len {
                    return Ok(filled);
                }
                left -= s.len;
                filled += 1;
            }
            if (n as usize) < want {
                return Ok(filled);
            }
        }
        Ok(filled)
    }
}

pub fn errno_to_read_error_code(e: i32) -> ReadError {
    match e {
        libc::EFAULT | libc::EIO => ReadError::Fault,
        libc::ESRCH => ReadError::Gone,
        libc::EPERM | libc::EACCES => ReadError::Denied,
        e => ReadError::Other(e),
    }
}

/// Little-endian field access into a buffer we already read; out of range reads as 0,
/// so a malformed offset can never panic on data that came from another process.
pub trait Fields {
    fn u64_at(&self, off: u64) -> u64;
    fn u32_at(&self, off: u64) -> u32;
    fn i32_at(&self, off: u64) -> i32 {
        self.u32_at(off) as i32
    }
    fn u8_at(&self, off: u64) -> u8;
}

impl Fields for [u8] {
    #[inline]
    fn u64_at(&self, off: u64) -> u64 {
        let o = off as usize;
        match self.get(o..o.wrapping_add(8)) {
            Some(b) => u64::from_le_bytes(b.try_into().unwrap_or([0; 8])),
            None => 0,
        }
    }
    #[inline]
    fn u32_at(&self, off: u64) -> u32 {
        let o = off as usize;
        match self.get(o..o.wrapping_add(4)) {
            Some(b) => u32::from_le_bytes(b.try_into().unwrap_or([0; 4])),
            None => 0,
        }
    }
    #[inline]
    fn u8_at(&self, off: u64) -> u8 {
        self.get(off as usize).copied().unwrap_or(0)
    }
}
