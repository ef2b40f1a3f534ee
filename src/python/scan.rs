//! Last resort for binaries without symbols: find `_PyRuntime` in the binary's data by
//! what it points to, and PyCode_Type through a running frame.

use super::layout::{FrameModel, Layout};
use crate::process::memory::{Fields, ReadMem};
use crate::process::{MapEntry, Process};

const MAX_REGION: u64 = 256 << 20;

/// The binary's writable data and the anonymous .bss right after it, in memory order.
fn data_regions<'a>(process: &'a Process, binary: &'a MapEntry) -> Vec<&'a MapEntry> {
    let mut out = Vec::new();
    let mut follows = false;
    for m in &process.maps {
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

pub fn find_runtime(process: &Process, binary: &MapEntry, l: &Layout) -> Option<u64> {
    let mem = &process.memory;
    for region in data_regions(process, binary) {
        let len = region.end - region.start;
        if len > MAX_REGION {
            continue;
        }
        let Ok(buf) = mem.read_vec(region.start, len as usize) else {
            continue;
        };
        if l.model.debug_offsets {
            // 3.13+: the runtime starts with its own description, cookie first.
            if let Some(pos) = (0..buf.len().saturating_sub(8)).step_by(8).find(|&i| &buf[i..i + 8] == b"xdebugpy") {
                return Some(region.start + pos as u64);
            }
            continue;
        }
        let need = l.runtime.interpreters_head.max(l.runtime.interpreters_main) as usize + 8;
        for off in (0..buf.len().saturating_sub(need)).step_by(8) {
            let head = buf.u64_at((off + l.runtime.interpreters_head as usize) as u64);
            let main = buf.u64_at((off + l.runtime.interpreters_main as usize) as u64);
            if main == 0 || head == 0 || main & 7 != 0 || head & 7 != 0 {
                continue;
            }
            // The main interpreter's first thread state must point back at it.
            let Ok(tstate) = mem.read_u64(main + l.interp.threads_head) else {
                continue;
            };
            if tstate == 0 || tstate & 7 != 0 {
                continue;
            }
            if mem.read_u64(tstate + l.tstate.interp).ok() != Some(main) {
                continue;
            }
            // Other globals point at the main interpreter too; these hold only for the
            // runtime: main is last in the list that starts at head, and the GIL, where
            // the runtime keeps it, is free or held by a thread state of main.
            if !chain_reaches(mem, l, head, main) {
                continue;
            }
            if let (Some(holder), Some(_)) = (l.runtime.gil_holder, l.runtime.gil_locked) {
                let h = buf.u64_at((off + holder as usize) as u64);
                if h != 0 && mem.read_u64(h + l.tstate.interp).ok() != Some(main) {
                    continue;
                }
            }
            return Some(region.start + off as u64);
        }
    }
    None
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
