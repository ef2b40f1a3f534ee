//! 3.13+: `_PyRuntime` begins with `_Py_DebugOffsets`, the interpreter's own description
//! of its layout. We check it is what we expect and take its offsets over our table's,
//! because layouts change within a minor version (3.13.0's PyThreadState is smaller than
//! 3.13.18's).

use super::layout::Layout;
use super::version::Version;
use crate::process::memory::{Fields, ReadError, ReadMem};

pub enum Problem {
    Read(ReadError),
    Refuse(String),
}

const COOKIE: &[u8; 8] = b"xdebugpy";

/// Overlays the target's offsets onto `layout`; returns a note per difference.
pub fn apply(mem: &dyn ReadMem, runtime: u64, version: &Version, layout: &mut Layout) -> Result<Vec<String>, Problem> {
    let header = layout.debug.clone().ok_or_else(|| Problem::Refuse("table lacks the debug header".into()))?;
    let span = layout.debug_offsets.values().copied().max().unwrap_or(0) + 8;
    let mut buf = vec![0u8; span.max(header.free_threaded + 8) as usize];
    mem.read(runtime, &mut buf).map_err(Problem::Read)?;
    if buf.get(header.cookie as usize..header.cookie as usize + 8) != Some(&COOKIE[..]) {
        return Err(Problem::Refuse("_PyRuntime does not start with the _Py_DebugOffsets cookie".into()));
    }
    let theirs = Version::from_hex(buf.u64_at(header.version));
    if (theirs.major, theirs.minor) != (version.major, version.minor) {
        return Err(Problem::Refuse(format!("_Py_DebugOffsets says {theirs}, Py_Version says {version}")));
    }
    if buf.u64_at(header.free_threaded) != 0 {
        return Err(Problem::Refuse("free-threaded builds are not supported yet".into()));
    }
    let mut notes = Vec::new();
    let chunk_before = layout.tstate.datastack_chunk;
    for (field, &at) in layout.debug_offsets.clone().iter() {
        let value = buf.u64_at(at);
        // An offset into a struct is never this large: the description itself is not
        // what we think it is, so trust neither.
        if value > 1 << 20 {
            return Err(Problem::Refuse(format!("_Py_DebugOffsets field {field} holds {value}, not an offset")));
        }
        if let Some(ours) = layout.field_mut(field) {
            if *ours != value {
                notes.push(format!("{field}: table says {}, target says {value} (using the target's)", *ours));
                *ours = value;
            }
        }
    }
    // The target describes datastack_chunk but not datastack_top, its neighbour in every
    // version's header: where the one moved, so did the other.
    if let (Some(before), Some(after), Some(top)) =
        (chunk_before, layout.tstate.datastack_chunk, layout.tstate.datastack_top.as_mut())
    {
        *top = top.wrapping_add(after).wrapping_sub(before);
    }
    Ok(notes)
}
