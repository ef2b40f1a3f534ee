//! Walking one thread's Python frames, innermost first. The walk yields raw frames
//! (code address, frame address, bytecode offset); names and lines are resolved
//! separately, through the code cache, so a sampler can keep raw frames only.

use super::discover::Target;
use super::layout::FrameModel;
use crate::process::memory::{Fields, Memory, ReadError, ReadResult};
use crate::process::prefetch::Prefetch;

/// Deeper than this is a loop in what we read, not a real stack (CPython's own C stack
/// limits keep real Python stacks far shallower).
pub const MAX_DEPTH: usize = 50_000;

const USER_SPACE_END: u64 = 0x8000_0000_0000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RawFrame {
    pub code: u64,
    pub frame: u64,
    /// byte offset of the current instruction in the bytecode
    pub offset: i64,
}

/// The thread's innermost frame pointer, as the thread state holds it now.
pub fn top_frame(mem: &Memory, t: &Target, tstate: u64) -> ReadResult<u64> {
    let l = &t.layout;
    let p = mem.read_u64(tstate + l.tstate.frame)?;
    match l.tstate.cframe_current_frame {
        Some(off) if l.model.frame_via_cframe => {
            if p == 0 {
                Ok(0)
            } else {
                mem.read_u64(p + off)
            }
        }
        _ => Ok(p),
    }
}

/// Reads the stack starting at `frame`, taking frames from `local` where it holds them
/// and reading the rest. `visited` gets every frame read, Python or not (entry frames
/// on the C stack included), so a sampler can ask for all of them at once next time. Errors mean the memory changed under us.
pub fn walk(
    mem: &Memory,
    t: &Target,
    mut frame: u64,
    out: &mut Vec<RawFrame>,
    visited: &mut Vec<u64>,
    local: &Prefetch,
    mut code_start: impl FnMut(u64) -> ReadResult<(u64, i64)>,
) -> ReadResult<()> {
    out.clear();
    visited.clear();
    let l = &t.layout;
    let f = &l.frame;
    let mut buf = [0u8; 128];
    let len = (f.size as usize).clamp(8, buf.len());
    let mut seen = 0usize;
    while frame != 0 {
        seen += 1;
        // Frames are aligned user-space addresses: anything else is a torn read, and
        // following it would only read more garbage.
        if seen > MAX_DEPTH || frame & 7 != 0 || frame >= USER_SPACE_END {
            return Err(ReadError::Fault);
        }
        visited.push(frame);
        let b = match local.get(frame, len) {
            Some(b) => b,
            None => {
                mem.read(frame, &mut buf[..len])?;
                &buf[..len]
            }
        };
        let previous = b.u64_at(f.previous);
        let code = b.u64_at(f.code) & !l.model.stackref_tag_mask;
        match l.model.frames {
            FrameModel::FrameObject => {
                let lasti = b.i32_at(f.lasti.unwrap_or(0)) as i64;
                out.push(RawFrame { code, frame, offset: lasti * l.model.lasti_unit as i64 });
            }
            FrameModel::InterpreterFrame => {
                let owner = b.u8_at(f.owner.unwrap_or(0));
                let non_python = l.model.owner_first_non_python.is_some_and(|first| owner >= first);
                if !non_python && code != 0 {
                    // (start of bytecode, first traceable offset) or Fault if not a code object
                    match code_start(code) {
                        Ok((start, first_traceable)) => {
                            let offset = b.u64_at(f.instr.unwrap_or(0)).wrapping_sub(start) as i64;
                            let incomplete =
                                Some(owner) != l.model.owner_generator && offset < first_traceable;
                            if !incomplete {
                                out.push(RawFrame { code, frame, offset });
                            }
                        }
                        // 3.13+ frames may execute something that is not a code object;
                        // an unreadable one means the stack changed under us.
                        Err(ReadError::NotCode) if l.model.debug_offsets => {}
                        Err(ReadError::NotCode) => return Err(ReadError::Fault),
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        frame = previous;
    }
    Ok(())
}

/// The thread's stack read directly, frame by frame, believed only if the thread state
/// still points at the same innermost frame afterwards (Fault if it moved).
pub fn walk_consistent(
    mem: &Memory,
    t: &Target,
    tstate: u64,
    out: &mut Vec<RawFrame>,
    visited: &mut Vec<u64>,
    code_start: impl FnMut(u64) -> ReadResult<(u64, i64)>,
) -> ReadResult<()> {
    let top = top_frame(mem, t, tstate)?;
    walk(mem, t, top, out, visited, &Prefetch::default(), code_start)?;
    if top_frame(mem, t, tstate)? != top {
        return Err(ReadError::Fault);
    }
    Ok(())
}

/// Read where a code object was a moment ago, anything but a vanished process means the
/// stack changed under us.
pub fn torn(e: ReadError) -> ReadError {
    match e {
        ReadError::NotCode => ReadError::Fault,
        e => e,
    }
}
