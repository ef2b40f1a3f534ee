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
    Other(i32),
}

impl ReadError {
    pub fn into_error(self, pid: i32) -> Error {
        match self {
            ReadError::Gone => Error::TargetExited(pid),
            ReadError::Denied => Error::PermissionDenied { pid, what: "memory".into() },
            ReadError::Fault | ReadError::NotCode => {
                Error::Inconsistent(format!("process {pid}: read an unmapped address"))
            }
            ReadError::Other(e) => Error::Io(format!(
                "reading memory of process {pid}: {}",
                std::io::Error::from_raw_os_error(e)
            )),
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

    pub fn read(&self, addr: u64, buf: &mut [u8]) -> ReadResult<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let local = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
        let remote = libc::iovec { iov_base: addr as *mut libc::c_void, iov_len: buf.len() };
        // SAFETY: local points at buf, valid for buf.len() bytes; the kernel checks remote.
        let n = unsafe { libc::process_vm_readv(self.pid, &local, 1, &remote, 1, 0) };
        if n < 0 {
            return Err(errno_to_read_error());
        }
        if n as usize != buf.len() {
            return Err(ReadError::Fault);
        }
        Ok(())
    }

    /// Reads several (address, buffer) pieces in one system call. Returns how many bytes
    /// were read in total; pieces are filled in order, so a short count means the piece
    /// containing that byte and all after it are incomplete.
    pub fn read_many(&self, pieces: &mut [(u64, &mut [u8])]) -> ReadResult<usize> {
        const IOV_MAX: usize = 1024;
        let mut total = 0usize;
        for chunk in pieces.chunks_mut(IOV_MAX) {
            let mut local: [libc::iovec; 64] = unsafe { std::mem::zeroed() };
            let mut remote: [libc::iovec; 64] = unsafe { std::mem::zeroed() };
            for group in chunk.chunks_mut(64) {
                let mut want = 0usize;
                for (i, (addr, buf)) in group.iter_mut().enumerate() {
                    local[i] = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
                    remote[i] = libc::iovec { iov_base: *addr as *mut libc::c_void, iov_len: buf.len() };
                    want += buf.len();
                }
                // SAFETY: each local iovec points into a live &mut buffer of its length.
                let n = unsafe {
                    libc::process_vm_readv(
                        self.pid,
                        local.as_ptr(),
                        group.len() as libc::c_ulong,
                        remote.as_ptr(),
                        group.len() as libc::c_ulong,
                        0,
                    )
                };
                if n < 0 {
                    return Err(errno_to_read_error());
                }
                total += n as usize;
                if (n as usize) < want {
                    return Ok(total);
                }
            }
        }
        Ok(total)
    }

    pub fn read_u64(&self, addr: u64) -> ReadResult<u64> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    pub fn read_u32(&self, addr: u64) -> ReadResult<u32> {
        let mut b = [0u8; 4];
        self.read(addr, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    pub fn read_vec(&self, addr: u64, len: usize) -> ReadResult<Vec<u8>> {
        let mut v = vec![0u8; len];
        self.read(addr, &mut v)?;
        Ok(v)
    }
}

fn errno_to_read_error() -> ReadError {
    errno_to_read_error_code(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
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
