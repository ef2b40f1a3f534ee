//! The arguments, locals, cells and free variables of one frame: each bound slot's name
//! and the object it holds (a cell's content, not the cell). Names come from the code
//! object (3.8-3.10: co_varnames, co_cellvars, co_freevars, in the order the frame
//! keeps their slots; 3.11+: co_localsplusnames), values from the frame's slots.
//! 3.14+ slots are tagged stack references: the tag bits are cleared first.

use super::discover::Target;
use super::strings::read_unicode;
use super::values::type_of;
use crate::process::memory::{Fields, ReadError, ReadMem, ReadResult};

/// More slots than this is not a real function (CPython's own limit is far lower in practice).
const MAX_SLOTS: u64 = 4096;

pub struct Local {
    pub name: String,
    /// the object (for a cell or free variable, the cell's content)
    pub object: u64,
}

/// The bound locals of the frame at `frame` running the code object at `code`, in slot order.
pub fn read(mem: &dyn ReadMem, t: &Target, code: u64, frame: u64) -> ReadResult<Vec<Local>> {
    let l = &t.layout;
    let Some(at) = l.frame.localsplus else { return Ok(Vec::new()) };
    let (names, cells_from) = names(mem, t, code)?;
    let n = names.len() as u64;
    let slots = if n == 0 { Vec::new() } else { mem.read_vec(frame + at, n as usize * 8)? };
    let mut out = Vec::new();
    for (i, name) in names.into_iter().enumerate() {
        let mut obj = slots.u64_at(i as u64 * 8) & !l.model.stackref_tag_mask;
        if obj == 0 {
            continue; // unbound
        }
        if cells_from(i) && type_of(mem, l, obj).is_some_and(|ty| ty.name == "cell") {
            obj = mem.read_u64(obj + l.cell.r#ref)?;
            if obj == 0 {
                continue; // an empty cell: not bound yet
            }
        }
        out.push(Local { name, object: obj });
    }
    Ok(out)
}

/// Whether a slot (by index) may hold a cell.
type CellSlots = Box<dyn Fn(usize) -> bool>;

/// The slot names in slot order, and which slots may hold a cell.
fn names(mem: &dyn ReadMem, t: &Target, code: u64) -> ReadResult<(Vec<String>, CellSlots)> {
    let (l, c) = (&t.layout, &t.layout.code);
    if let Some(off) = c.localsplusnames {
        let names = tuple_strings(mem, t, mem.read_u64(code + off)?)?;
        let kinds = match c.localspluskinds {
            Some(k) => super::strings::read_bytes(mem, l, mem.read_u64(code + k)?)?,
            None => Vec::new(),
        };
        let cell_bits = l.model.co_fast_cell.unwrap_or(0) | l.model.co_fast_free.unwrap_or(0);
        let is_cell = move |i: usize| kinds.get(i).is_some_and(|&k| k as u64 & cell_bits != 0);
        return Ok((names, Box::new(is_cell)));
    }
    let (Some(v), Some(cv), Some(fv)) = (c.varnames, c.cellvars, c.freevars) else {
        return Ok((Vec::new(), Box::new(|_| false)));
    };
    // 3.8-3.10: the frame keeps co_nlocals locals, then one cell per cell variable and
    // free variable
    let mut names = tuple_strings(mem, t, mem.read_u64(code + v)?)?;
    let nlocals = names.len();
    names.extend(tuple_strings(mem, t, mem.read_u64(code + cv)?)?);
    names.extend(tuple_strings(mem, t, mem.read_u64(code + fv)?)?);
    Ok((names, Box::new(move |i| i >= nlocals)))
}

fn tuple_strings(mem: &dyn ReadMem, t: &Target, tuple: u64) -> ReadResult<Vec<String>> {
    let l = &t.layout;
    if tuple == 0 {
        return Ok(Vec::new());
    }
    let n = mem.read_u64(tuple + l.tuple.size)?;
    if n > MAX_SLOTS {
        return Err(ReadError::Fault);
    }
    let raw = mem.read_vec(tuple + l.tuple.items, n as usize * 8)?;
    (0..n).map(|i| read_unicode(mem, l, raw.u64_at(i * 8))).collect()
}
