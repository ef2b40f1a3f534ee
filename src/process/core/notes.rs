//! What a core's notes say about the process: each thread's id and registers
//! (NT_PRSTATUS), the process's id, name and arguments (NT_PRPSINFO), which files were
//! mapped where (NT_FILE) and the auxiliary vector (NT_AUXV, where the executable's
//! program headers were). x86-64 layouts, from the kernel's elf_prstatus /
//! elf_prpsinfo and user_regs_struct.

use super::file::{u32_at, u64_at, Note};

const NT_PRSTATUS: u32 = 1;
const NT_PRPSINFO: u32 = 3;
const NT_AUXV: u32 = 6;
const NT_FILE: u32 = 0x4649_4c45;

const PRSTATUS_PID: usize = 32;
const PRSTATUS_REGS: usize = 112;
/// user_regs_struct: r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax rcx rdx rsi rdi orig_rax rip cs eflags rsp ...
const REG_RBP: usize = 4;
const REG_RAX: usize = 10;
const REG_RDX: usize = 12;
const REG_RSI: usize = 13;
const REG_RDI: usize = 14;
const REG_ORIG_RAX: usize = 15;
const REG_RIP: usize = 16;
const REG_RSP: usize = 19;

const AT_PHDR: u64 = 3;
const AT_EXECFN: u64 = 31;

/// One thread as the dumper stopped it.
#[derive(Debug, Clone)]
pub struct CoreThread {
    /// as the dumper saw it: the target's pid namespace for a kernel core, the dumping
    /// tool's for gcore
    pub tid: i32,
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    /// the system call the thread was in (orig_rax), -1 outside one
    pub orig_rax: i64,
    /// what that system call returned so far: a restart code for one interrupted while it slept
    pub rax: i64,
    pub args: [u64; 3],
}

/// A file the process had mapped: `start..end` holds the file from `offset`.
#[derive(Debug, Clone)]
pub struct MappedFile {
    pub start: u64,
    pub end: u64,
    pub offset: u64,
    pub path: String,
}

#[derive(Debug, Default)]
pub struct Notes {
    pub threads: Vec<CoreThread>,
    pub pid: Option<i32>,
    /// the process name (comm), 15 bytes at most
    pub fname: String,
    /// the start of the command line, 80 bytes at most
    pub psargs: String,
    pub files: Vec<MappedFile>,
    /// where the executable's program headers were mapped (AT_PHDR)
    pub phdr: Option<u64>,
    /// where the path given to execve was (AT_EXECFN): an address in the core
    pub execfn: Option<u64>,
}

pub fn read(notes: &[Note]) -> Notes {
    let mut out = Notes::default();
    for n in notes.iter().filter(|n| n.name == b"CORE") {
        match n.kind {
            NT_PRSTATUS => out.threads.extend(prstatus(n.desc)),
            NT_PRPSINFO => {
                out.pid = u32_at(n.desc, 24).map(|p| p as i32);
                out.fname = c_string(n.desc.get(40..56).unwrap_or(&[]));
                out.psargs = c_string(n.desc.get(56..136).unwrap_or(&[])).trim_end().to_string();
            }
            NT_FILE => out.files = files(n.desc),
            NT_AUXV => {
                for pair in n.desc.chunks_exact(16) {
                    let (k, v) = (u64_at(pair, 0).unwrap_or(0), u64_at(pair, 8).unwrap_or(0));
                    match k {
                        AT_PHDR => out.phdr = Some(v),
                        AT_EXECFN => out.execfn = Some(v),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    out
}

fn prstatus(d: &[u8]) -> Option<CoreThread> {
    let reg = |i: usize| u64_at(d, PRSTATUS_REGS + 8 * i);
    Some(CoreThread {
        tid: u32_at(d, PRSTATUS_PID)? as i32,
        ip: reg(REG_RIP)?,
        sp: reg(REG_RSP)?,
        bp: reg(REG_RBP)?,
        orig_rax: reg(REG_ORIG_RAX)? as i64,
        rax: reg(REG_RAX)? as i64,
        args: [reg(REG_RDI)?, reg(REG_RSI)?, reg(REG_RDX)?],
    })
}

/// count, page size, count × (start, end, offset in pages), then count NUL-ended paths.
fn files(d: &[u8]) -> Vec<MappedFile> {
    let (Some(count), Some(page)) = (u64_at(d, 0), u64_at(d, 8)) else { return Vec::new() };
    let Some(names_at) = usize::try_from(count).ok().and_then(|c| c.checked_mul(24)).and_then(|n| n.checked_add(16))
    else {
        return Vec::new();
    };
    let mut names = d.get(names_at..).unwrap_or(&[]).split(|&b| b == 0);
    let mut out = Vec::new();
    for i in 0..count as usize {
        let at = 16 + 24 * i;
        let (Some(start), Some(end), Some(pages), Some(name)) =
            (u64_at(d, at), u64_at(d, at + 8), u64_at(d, at + 16), names.next())
        else {
            break;
        };
        out.push(MappedFile {
            start,
            end,
            offset: pages.saturating_mul(page),
            path: String::from_utf8_lossy(name).into_owned(),
        });
    }
    out
}

fn c_string(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn nt_file() {
        let mut d = Vec::new();
        for v in [2u64, 4096, 0x1000, 0x3000, 0, 0x5000, 0x6000, 2] {
            d.extend(v.to_le_bytes());
        }
        d.extend(b"/usr/bin/python3.11\0/lib/libc.so.6\0");
        let f = super::files(&d);
        assert_eq!(f.len(), 2);
        assert_eq!((f[1].start, f[1].end, f[1].offset), (0x5000, 0x6000, 0x2000));
        assert_eq!(f[1].path, "/lib/libc.so.6");
        // a count that overflows, and one larger than the note: nothing, or what is there
        let mut huge = d.clone();
        huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(super::files(&huge).is_empty());
        huge[..8].copy_from_slice(&3u64.to_le_bytes());
        assert!(super::files(&huge).len() <= 3);
    }
}
