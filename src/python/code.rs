//! Code objects: names, file, first line and line table, read once per code object and
//! cached by address. A cached entry is checked against the object's name and file
//! pointers before use, so a code object freed and another allocated at the same
//! address is caught.

use super::bytecode::{self, CallProofs};
use super::layout::Layout;
use super::linetable;
use super::strings::{read_bytes, read_unicode};
use crate::addr_map::AddrMap;
use crate::process::memory::{Fields, ReadError, ReadMem, ReadResult};
use std::sync::Arc;

#[derive(Debug)]
pub struct CodeInfo {
    /// Small dense id, unique for the life of the cache: what samples carry.
    pub id: u32,
    /// co_qualname (3.11+) or co_name
    pub name: String,
    pub filename: String,
    pub first_line: i32,
    linetable: Vec<u8>,
    /// How `linetable` is encoded, so writers away from the layout can turn an offset
    /// into a line (`line_at`).
    line_format: super::layout::LineTable,
    /// Where the bytecode starts in memory (3.11+), so an instruction pointer becomes an offset.
    pub bytecode_start: u64,
    /// Byte offset before which a 3.11+ frame has not started running yet.
    pub first_traceable: i64,
    /// Bytes a frame of this code takes on the data stack (3.12+; 0 unknown).
    pub frame_bytes: u64,
    /// Where the value stack starts, in bytes from localsplus (3.11+).
    pub stack_base: u64,
    /// What this entry was read from: the name, file and line table pointers, and the
    /// bytecode's length and first line (`identity_of`).
    identity: [u64; 4],
    /// 3.12+'s `<interpreter trampoline>`, which only C-stack entry frames run
    entry_only: bool,
    /// What the bytecode lets the timeline prove about two samples of one frame of this
    /// code (see python/bytecode.rs); proves nothing if the bytecode could not be read.
    pub proofs: CallProofs,
}

/// The code object 3.12+ C-stack entry frames run (CPython's `_Py_MakeShimCode`).
const TRAMPOLINE: &str = "<interpreter trampoline>";

/// The fields that tell one code object from another at the same address.
fn identity_fields(layout: &Layout) -> [u64; 5] {
    let c = &layout.code;
    let name = c.qualname.unwrap_or(c.name);
    [name, c.filename, c.linetable, c.firstlineno, c.ob_size.unwrap_or(c.firstlineno)]
}

/// Where a code object's identity lies: one small read tells whether a cached entry
/// still describes the object at that address.
pub fn identity_span(layout: &Layout) -> (u64, usize) {
    let fields = identity_fields(layout);
    let lo = fields.iter().min().copied().unwrap_or(0);
    let hi = fields.iter().max().copied().unwrap_or(0) + 8;
    (lo, (hi - lo) as usize)
}

/// A code object's identity from bytes read at `base` bytes into it. Name and file
/// pointers alone do not tell apart code compiled from strings, whose `<module>` and
/// `<string>` are the same objects for all of them, nor does the line table's pointer
/// when the allocator hands a new code object and its table the addresses an old pair
/// just freed: subinterpreters running one string after another did exactly that, and
/// their module code kept the bytecode proofs of an earlier string's. The bytecode's
/// length and first line catch most of those.
fn identity_of(layout: &Layout, bytes: &[u8], base: u64) -> [u64; 4] {
    let [name, file, lines, first, size] = identity_fields(layout).map(|at| bytes.u64_at(at - base));
    [name, file, lines, (first & 0xffff_ffff) | size << 32]
}

impl CodeInfo {
    #[cfg(test)]
    pub fn for_test(id: u32, name: &str) -> CodeInfo {
        CodeInfo {
            id,
            name: name.into(),
            filename: "/t.py".into(),
            first_line: 1,
            linetable: Vec::new(),
            line_format: super::layout::LineTable::Locations,
            bytecode_start: 0,
            first_traceable: 0,
            frame_bytes: 0,
            stack_base: 0,
            identity: [0; 4],
            entry_only: false,
            proofs: CallProofs::none(),
        }
    }

    /// A code object known only by its name and place: what a capture's journal keeps of
    /// it (output/journal.rs), enough for every writer.
    pub fn named(id: u32, name: String, filename: String, first_line: i32) -> CodeInfo {
        CodeInfo {
            id,
            name,
            filename,
            first_line,
            linetable: Vec::new(),
            line_format: super::layout::LineTable::Locations,
            bytecode_start: 0,
            first_traceable: 0,
            frame_bytes: 0,
            stack_base: 0,
            identity: [0; 4],
            entry_only: false,
            proofs: CallProofs::none(),
        }
    }

    /// What a stack walk needs of this code object.
    pub fn facts(&self) -> super::stack::CodeFacts {
        super::stack::CodeFacts {
            bytecode_start: self.bytecode_start,
            first_traceable: self.first_traceable,
            frame_bytes: self.frame_bytes,
            stack_base: self.stack_base,
            fixed_slots: self.proofs.fixed_slots,
            undeletable: self.proofs.undeletable,
            entry_only: self.entry_only,
        }
    }

    /// Whether `bytes`, read at the code object's identity span, are still this entry's.
    pub fn identity_matches(&self, layout: &Layout, bytes: &[u8]) -> bool {
        self.identity == identity_of(layout, bytes, identity_span(layout).0)
    }

    /// The line of a byte offset in this code's bytecode (the first line if the table
    /// does not say).
    pub fn line_at(&self, offset: i64) -> i32 {
        linetable::line_for(self.line_format, &self.linetable, self.first_line, offset).unwrap_or(self.first_line)
    }

    pub fn line(&self, layout: &Layout, offset: i64) -> i32 {
        linetable::line_for(layout.model.line_table, &self.linetable, self.first_line, offset)
            .unwrap_or(self.first_line)
    }
}

#[derive(Default)]
pub struct CodeCache {
    entries: AddrMap<u64, Arc<CodeInfo>>,
    next_id: u32,
    /// ids drawn from a counter shared by the caches of several processes, so one
    /// capture's ids never collide (src/fleet.rs); None: this cache's own
    shared_ids: Option<Arc<std::sync::atomic::AtomicU32>>,
    /// Entries created since the last `take_new`, for consumers that name ids.
    fresh: Vec<Arc<CodeInfo>>,
}

/// How much of a code object we read at once: every field we use lies below this.
fn header_len(layout: &Layout) -> usize {
    let c = &layout.code;
    let max = [
        c.filename,
        c.name,
        c.qualname.unwrap_or(0),
        c.firstlineno,
        c.linetable,
        c.firsttraceable.unwrap_or(0),
        c.framesize.unwrap_or(0),
        c.nlocalsplus.unwrap_or(0),
        layout.object.ob_type,
    ]
    .into_iter()
    .max()
    .unwrap_or(0);
    (max + 8) as usize
}

impl CodeCache {
    /// A cache whose ids come from `ids`, shared with other processes' caches.
    pub fn sharing_ids(ids: Arc<std::sync::atomic::AtomicU32>) -> CodeCache {
        CodeCache { shared_ids: Some(ids), ..CodeCache::default() }
    }

    /// Reads (or finds) the code object at `addr`. `code_type` is PyCode_Type: anything
    /// else at that address is not a code object (3.13+ frames may hold other executables).
    pub fn get(&mut self, mem: &dyn ReadMem, layout: &Layout, code_type: u64, addr: u64) -> ReadResult<Arc<CodeInfo>> {
        let mut head = [0u8; 512];
        let n = header_len(layout).min(head.len());
        mem.read(addr, &mut head[..n])?;
        let head = &head[..n];
        if head.u64_at(layout.object.ob_type) != code_type {
            return Err(ReadError::NotCode);
        }
        let c = &layout.code;
        let name_ptr = head.u64_at(c.qualname.unwrap_or(c.name));
        let file_ptr = head.u64_at(c.filename);
        let identity = identity_of(layout, head, 0);
        if let Some(hit) = self.entries.get(&addr) {
            if hit.identity == identity {
                return Ok(hit.clone());
            }
        }
        let id = match &self.shared_ids {
            Some(ids) => ids.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            None => self.next_id,
        };
        let name = read_unicode(mem, layout, name_ptr)?;
        let info = Arc::new(CodeInfo {
            id,
            entry_only: name == TRAMPOLINE,
            name,
            filename: read_unicode(mem, layout, file_ptr)?,
            first_line: head.i32_at(c.firstlineno),
            linetable: read_bytes(mem, layout, head.u64_at(c.linetable))?,
            line_format: layout.model.line_table,
            bytecode_start: c.code_adaptive.map(|o| addr + o).unwrap_or(0),
            first_traceable: c.firsttraceable.map(|o| head.i32_at(o) as i64 * 2).unwrap_or(0),
            frame_bytes: c.framesize.map(|o| head.i32_at(o).max(0) as u64 * 8).unwrap_or(0),
            // (3.8-3.10: where the locals end, for Locals::slots)
            stack_base: c.nlocalsplus.or(c.nlocals).map(|o| head.i32_at(o).max(0) as u64 * 8).unwrap_or(0),
            identity,
            proofs: bytecode::read_proofs(mem, layout, addr),
        });
        self.next_id += 1;
        if self.entries.len() > 100_000 {
            self.entries.clear(); // bound memory on programs that generate code endlessly
        }
        self.entries.insert(addr, info.clone());
        self.fresh.push(info.clone());
        Ok(info)
    }

    /// Code objects first seen since the last call.
    pub fn take_new(&mut self) -> Vec<Arc<CodeInfo>> {
        std::mem::take(&mut self.fresh)
    }

    /// (start of bytecode, first traceable offset) of a cached code object, unvalidated:
    /// for frames that were already seen alive, whose code cannot have been freed.
    pub fn cached(&self, addr: u64) -> Option<&Arc<CodeInfo>> {
        self.entries.get(&addr)
    }
}
