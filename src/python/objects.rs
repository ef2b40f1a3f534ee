//! Reading a few kinds of Python objects out of the target: dicts, ints, and instance
//! attributes. Only what thread naming needs; every count is bounded.

use super::layout::{DictModel, InstanceAttrs, Layout, LongModel};
use super::strings::unicode_equals;
use crate::process::memory::{Fields, ReadError, ReadMem, ReadResult};

const MAX_ENTRIES: u64 = 1 << 20;

/// (key, value) pointers of every live entry of a dict.
pub fn dict_items(mem: &dyn ReadMem, l: &Layout, dict: u64) -> ReadResult<Vec<(u64, u64)>> {
    let keys = mem.read_u64(dict + l.dict.keys)?;
    let values = mem.read_u64(dict + l.dict.values)?;
    let entries = keys_entries(mem, l, keys)?;
    // A dict that grew while we read it has a new keys table, and the old one may already
    // be freed and reused: what we read from it only counts if it is still the dict's.
    if mem.read_u64(dict + l.dict.keys)? != keys {
        return Err(ReadError::Fault);
    }
    let mut out = Vec::with_capacity(entries.len());
    for (i, (key, value)) in entries.into_iter().enumerate() {
        if key == 0 {
            continue;
        }
        let value = if values != 0 { split_value(mem, l, values, i)? } else { value };
        if value != 0 {
            out.push((key, value));
        }
    }
    Ok(out)
}

/// The entries of a keys table, in insertion order: (key, value), value 0 for split tables.
fn keys_entries(mem: &dyn ReadMem, l: &Layout, keys: u64) -> ReadResult<Vec<(u64, u64)>> {
    let k = &l.dictkeys;
    let mut head = [0u8; 64];
    mem.read(keys, &mut head[..(k.indices as usize).min(64)])?;
    let nentries = head.u64_at(k.nentries);
    // (a table read while it is replaced, or freed, says anything: the entries must fit
    // the table its header describes, or a garbage count of up to MAX_ENTRIES entries has
    // each key read, one system call apiece, stalling the sampler)
    let (index_bytes, entry_size, key_at) = match l.model.dict {
        DictModel::Legacy => {
            let size = head.u64_at(k.size.unwrap_or(0));
            if !size.is_power_of_two() || nentries > usable(size) {
                return Err(ReadError::Fault);
            }
            (size.saturating_mul(1 << log2_index_width(size)), 24, 8)
        }
        DictModel::Compact => {
            let log2_index_bytes = head.u8_at(k.log2_index_bytes.unwrap_or(0)) as u32;
            if let Some(at) = k.log2_size {
                let log2_size = head.u8_at(at) as u32;
                let size = 1u64.checked_shl(log2_size).unwrap_or(u64::MAX);
                if log2_size > 40 || log2_index_bytes != log2_size + log2_index_width(size) || nentries > usable(size) {
                    return Err(ReadError::Fault);
                }
            }
            // kind 0 (general) entries carry the hash; unicode and split ones do not
            let general = head.u8_at(k.kind.unwrap_or(0)) == 0;
            (
                1u64.checked_shl(log2_index_bytes).unwrap_or(u64::MAX),
                if general { 24 } else { 16 },
                if general { 8 } else { 0 },
            )
        }
    };
    if nentries > MAX_ENTRIES || index_bytes > MAX_ENTRIES * 8 {
        return Err(ReadError::Fault);
    }
    let raw = mem.read_vec(keys + k.indices + index_bytes, (nentries * entry_size) as usize)?;
    Ok(raw.chunks_exact(entry_size as usize).map(|e| (e.u64_at(key_at), e.u64_at(key_at + 8))).collect())
}

/// The width of a keys table's indices for `size` slots, as a power of two: 1 byte up to
/// 255 slots, then 2, 4 and 8 (CPython's DK_IXSIZE).
fn log2_index_width(size: u64) -> u32 {
    match size {
        0..=0xff => 0,
        0x100..=0xffff => 1,
        0x1_0000..=0xffff_ffff => 2,
        _ => 3,
    }
}

/// Entries a keys table of `size` slots holds at most (CPython's USABLE_FRACTION).
fn usable(size: u64) -> u64 {
    size.saturating_mul(2) / 3
}

fn split_value(mem: &dyn ReadMem, l: &Layout, values: u64, index: usize) -> ReadResult<u64> {
    mem.read_u64(values + l.dictvalues.values + 8 * index as u64)
}

/// Looks up a string key; keys are compared without decoding.
pub fn dict_get(mem: &dyn ReadMem, l: &Layout, dict: u64, name: &str) -> ReadResult<Option<u64>> {
    for (k, v) in dict_items(mem, l, dict)? {
        if unicode_equals(mem, l, k, name)? {
            return Ok(Some(v));
        }
    }
    Ok(None)
}

/// An int that fits in 64 bits (thread idents), or None.
pub fn read_u64_int(mem: &dyn ReadMem, l: &Layout, obj: u64) -> ReadResult<Option<u64>> {
    let tag = mem.read_u64(obj + l.long.size)?;
    let (ndigits, negative) = match l.model.long {
        LongModel::ObSize => ((tag as i64).unsigned_abs(), (tag as i64) < 0),
        LongModel::LvTag => (tag >> 3, tag & 3 == 2),
    };
    if negative || ndigits > 3 {
        return Ok(None);
    }
    let mut digits = [0u8; 12];
    mem.read(obj + l.long.digits, &mut digits[..ndigits as usize * 4])?;
    let mut v: u128 = 0;
    for i in (0..ndigits as usize).rev() {
        v = (v << l.long.digit_bits) | digits.u32_at(i as u64 * 4) as u128;
    }
    Ok(u64::try_from(v).ok())
}

/// Where an instance keeps its attributes, as the version lays them out.
enum AttrStorage {
    None,
    Dict(u64),
    /// values laid out by the type's cached keys (`ht_cached_keys`)
    Values {
        keys_owner: u64,
        values: u64,
    },
}

fn attr_storage(mem: &dyn ReadMem, l: &Layout, obj: u64) -> ReadResult<AttrStorage> {
    let tp = mem.read_u64(obj + l.object.ob_type)?;
    let flags = mem.read_u64(tp + l.type_.tp_flags)?;
    let managed = flags & l.model.tp_flags_managed_dict != 0;
    let dict_at = |addr: u64| -> ReadResult<AttrStorage> {
        Ok(match mem.read_u64(addr)? {
            0 => AttrStorage::None,
            d => AttrStorage::Dict(d),
        })
    };
    let values = |values: u64| AttrStorage::Values { keys_owner: tp, values };
    match l.model.instance_attrs {
        InstanceAttrs::ValuesPointer if managed => match mem.read_u64(obj.wrapping_sub(32))? {
            0 => dict_at(obj.wrapping_sub(24)),
            v => Ok(values(v)),
        },
        InstanceAttrs::DictOrValues if managed => {
            let w = mem.read_u64(obj.wrapping_sub(24))?;
            Ok(if w & 1 == 1 {
                values(w.wrapping_add(1))
            } else if w != 0 {
                AttrStorage::Dict(w)
            } else {
                AttrStorage::None
            })
        }
        InstanceAttrs::InlineValues if flags & l.model.tp_flags_inline_values != 0 => {
            let v = obj + mem.read_u64(tp + l.type_.tp_basicsize)?;
            let valid = mem.read_vec(v + l.dictvalues.valid.unwrap_or(0), 1)?[0];
            if valid != 0 {
                Ok(values(v))
            } else {
                dict_at(obj.wrapping_sub(24))
            }
        }
        InstanceAttrs::InstanceDict => by_dictoffset(mem, l, tp, obj),
        _ if managed => dict_at(obj.wrapping_sub(24)),
        _ => by_dictoffset(mem, l, tp, obj),
    }
}

fn by_dictoffset(mem: &dyn ReadMem, l: &Layout, tp: u64, obj: u64) -> ReadResult<AttrStorage> {
    let off = mem.read_u64(tp + l.type_.tp_dictoffset)? as i64;
    if off <= 0 {
        return Ok(AttrStorage::None);
    }
    Ok(match mem.read_u64(obj + off as u64)? {
        0 => AttrStorage::None,
        d => AttrStorage::Dict(d),
    })
}

/// An instance attribute stored in the instance's dict or inline values.
pub fn instance_attr(mem: &dyn ReadMem, l: &Layout, obj: u64, name: &str) -> ReadResult<Option<u64>> {
    match attr_storage(mem, l, obj)? {
        AttrStorage::None => Ok(None),
        AttrStorage::Dict(d) => dict_get(mem, l, d, name),
        AttrStorage::Values { keys_owner, values } => {
            let keys = mem.read_u64(keys_owner + l.type_.ht_cached_keys)?;
            for (i, (k, _)) in keys_entries(mem, l, keys)?.into_iter().enumerate() {
                if k != 0 && unicode_equals(mem, l, k, name)? {
                    let v = split_value(mem, l, values, i)?;
                    return Ok((v != 0).then_some(v));
                }
            }
            Ok(None)
        }
    }
}

/// Every instance attribute of `obj` as (name object, value), wherever the version keeps
/// them (a dict, or values laid out by the type's cached keys). Empty for objects
/// without attributes of their own.
pub fn instance_attr_items(mem: &dyn ReadMem, l: &Layout, obj: u64) -> ReadResult<Vec<(u64, u64)>> {
    match attr_storage(mem, l, obj)? {
        AttrStorage::None => Ok(Vec::new()),
        AttrStorage::Dict(d) => dict_items(mem, l, d),
        AttrStorage::Values { keys_owner, values } => {
            let keys = mem.read_u64(keys_owner + l.type_.ht_cached_keys)?;
            let mut out = Vec::new();
            for (i, (k, _)) in keys_entries(mem, l, keys)?.into_iter().enumerate() {
                let v = if k == 0 { 0 } else { split_value(mem, l, values, i)? };
                if v != 0 {
                    out.push((k, v));
                }
            }
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::simmem::SimMem;

    /// A 3.12 unicode-keyed table of 8 slots at 0x1000 holding `n` entries that point
    /// at mapped memory, with its header saying `log2_size` and `log2_index_bytes`.
    fn table(n: u64, log2_size: u8, log2_index_bytes: u8) -> (SimMem, Layout) {
        let l = Layout::for_minor(3, 12).unwrap();
        let k = &l.dictkeys;
        let mem = SimMem::default();
        mem.with(|r| {
            r.map(0x1000, 0x10_0000);
            r.u8(0x1000 + k.log2_size.unwrap(), log2_size);
            r.u8(0x1000 + k.log2_index_bytes.unwrap(), log2_index_bytes);
            r.u8(0x1000 + k.kind.unwrap(), 1);
            r.u64(0x1000 + k.nentries, n);
        });
        (mem, l)
    }

    #[test]
    fn a_keys_table_is_read_only_when_its_entries_fit_its_size() {
        let (mem, l) = table(5, 3, 3);
        assert_eq!(keys_entries(&mem, &l, 0x1000).map(|e| e.len()), Ok(5));
        // 8 slots hold 5 entries at most (2/3): a count past that is a torn or freed
        // header, whose entries' keys would each cost a read
        let (mem, l) = table(6, 3, 3);
        assert_eq!(keys_entries(&mem, &l, 0x1000), Err(ReadError::Fault));
        let (mem, l) = table(30_000, 3, 3);
        assert_eq!(keys_entries(&mem, &l, 0x1000), Err(ReadError::Fault));
        // indices wider than the size calls for
        let (mem, l) = table(5, 3, 4);
        assert_eq!(keys_entries(&mem, &l, 0x1000), Err(ReadError::Fault));
        // 256 slots take 2-byte indices
        let (mem, l) = table(170, 8, 9);
        assert_eq!(keys_entries(&mem, &l, 0x1000).map(|e| e.len()), Ok(170));
    }
}
