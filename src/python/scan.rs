//! Last resort for binaries without symbols: find `_PyRuntime` in the binary's data by
//! what it points to, and PyCode_Type through a running frame.

use super::layout::{FrameModel, Layout};
use crate::process::image::Image;
use crate::process::memory::{Fields, ReadMem, ReadResult, Span};
use crate::process::MapEntry;

const MAX_REGION: u64 = 256 << 20;

/// The binary's writable data and the anonymous .bss right after it, in memory order.
fn data_regions<'a>(image: &'a dyn Image, binary: &'a MapEntry) -> Vec<&'a MapEntry> {
    let mut out = Vec::new();
    let mut follows = false;
    for m in image.maps() {
        if m.path == binary.path {
            follows = m.writable;
            if m.writable {
                out.push(m);
            }
        } else {
            if follows && m.writable && m.path.is_empty() {
                out.push(m);
            }
            follows = false;
        }
    }
    out
}

pub fn find_runtime(image: &dyn Image, binary: &MapEntry, l: &Layout) -> Option<u64> {
    let mem = image.memory();
    let copies: Vec<(u64, Vec<u8>)> = data_regions(image, binary)
        .into_iter()
        .filter(|r| r.end - r.start <= MAX_REGION)
        .filter_map(|r| mem.read_vec(r.start, (r.end - r.start) as usize).ok().map(|buf| (r.start, buf)))
        .collect();
    if l.model.debug_offsets {
        // 3.13+: the runtime starts with its own description, cookie first.
        return copies.iter().find_map(|(start, buf)| {
            let pos = (0..buf.len().saturating_sub(8)).step_by(8).find(|&i| &buf[i..i + 8] == b"xdebugpy")?;
            Some(start + pos as u64)
        });
    }
    // Most pointer pairs in .data point at other globals: checking them against the copy
    // instead of the process keeps a scan to a few reads instead of thousands.
    let local = Copies(&copies, mem);
    // Interpreter states live in writable memory (the heap, or the runtime itself).
    let mut writable: Vec<(u64, u64)> =
        image.maps().iter().filter(|m| m.readable && m.writable).map(|m| (m.start, m.end)).collect();
    writable.sort_unstable();
    let is_writable = |addr: u64| {
        let i = writable.partition_point(|r| r.0 <= addr);
        i > 0 && addr < writable[i - 1].1
    };
    let need = l.runtime.interpreters_head.max(l.runtime.interpreters_main) as usize + 8;
    for (start, buf) in &copies {
        for off in (0..buf.len().saturating_sub(need)).step_by(8) {
            let head = buf.u64_at((off + l.runtime.interpreters_head as usize) as u64);
            let main = buf.u64_at((off + l.runtime.interpreters_main as usize) as u64);
            if main & 7 != 0 || head & 7 != 0 || !is_writable(main) || !is_writable(head) {
                continue;
            }
            // The main interpreter's first thread state must point back at it.
            let Ok(tstate) = local.read_u64(main + l.interp.threads_head) else {
                continue;
            };
            if tstate == 0 || tstate & 7 != 0 {
                continue;
            }
            if local.read_u64(tstate + l.tstate.interp).ok() != Some(main) {
                continue;
            }
            // Other globals point at the main interpreter too; these hold only for the
            // runtime: main is last in the list that starts at head, and the GIL, where
            // the runtime keeps it, is free or held by a thread state of main.
            if !chain_reaches(&local, l, head, main) {
                continue;
            }
            if let (Some(holder), Some(locked)) = (l.runtime.gil_holder, l.runtime.gil_locked) {
                // The last holder may have ended since (and a debug build scribbles over
                // freed memory): only a held GIL's holder is sure to be alive.
                let h = buf.u64_at((off + holder as usize) as u64);
                let held = buf.u32_at((off + locked as usize) as u64) != 0;
                if held && h != 0 && local.read_u64(h + l.tstate.interp).ok() != Some(main) {
                    continue;
                }
            }
            return Some(start + off as u64);
        }
    }
    None
}

/// The binary's data as copied for the scan, falling back to the process elsewhere.
struct Copies<'a>(&'a [(u64, Vec<u8>)], &'a dyn ReadMem);

impl ReadMem for Copies<'_> {
    fn read_spans(&self, spans: &[Span], buf: &mut [u8]) -> ReadResult<usize> {
        for (i, s) in spans.iter().enumerate() {
            let end = s.addr + s.len as u64;
            match self.0.iter().find(|(start, b)| s.addr >= *start && end <= start + b.len() as u64) {
                Some((start, b)) => {
                    let from = (s.addr - start) as usize;
                    buf[s.at..s.at + s.len].copy_from_slice(&b[from..from + s.len]);
                }
                None => {
                    if self.1.read_spans(std::slice::from_ref(s), buf)? == 0 {
                        return Ok(i);
                    }
                }
            }
        }
        Ok(spans.len())
    }
}

fn chain_reaches(mem: &dyn ReadMem, l: &Layout, head: u64, main: u64) -> bool {
    let mut interp = head;
    for _ in 0..64 {
        if interp == main {
            return mem.read_u64(main + l.interp.next).ok() == Some(0);
        }
        match mem.read_u64(interp + l.interp.next) {
            Ok(next) if next != 0 => interp = next,
            _ => return false,
        }
    }
    false
}

/// PyCode_Type, as the type of a running frame's code object whose type is named "code".
pub fn find_code_type(mem: &dyn ReadMem, l: &Layout, runtime: u64) -> Option<u64> {
    let interp = mem.read_u64(runtime + l.runtime.interpreters_main).ok()?;
    let mut tstate = mem.read_u64(interp + l.interp.threads_head).ok()?;
    for _ in 0..10_000 {
        if tstate == 0 {
            break;
        }
        // (the walk itself needs PyCode_Type: only the hop to the top frame is shared)
        let mut frame = super::stack::top_frame(mem, l, tstate).ok()?.frame;
        for _ in 0..1000 {
            if frame == 0 {
                break;
            }
            let code = mem.read_u64(frame + l.frame.code).ok()? & !l.model.stackref_tag_mask;
            if let Some(tp) = mem.read_u64(code + l.object.ob_type).ok().filter(|&t| t != 0) {
                let name = mem.read_u64(tp + l.type_.tp_name).ok()?;
                if mem.read_vec(name, 5).ok().as_deref() == Some(b"code\0") {
                    return Some(tp);
                }
            }
            frame = mem.read_u64(frame + l.frame.previous).ok()?;
            if l.model.frames == FrameModel::FrameObject && frame & 7 != 0 {
                break;
            }
        }
        tstate = mem.read_u64(tstate + l.tstate.next).ok()?;
    }
    None
}
