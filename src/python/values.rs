//! A bounded, safe repr of an object in the target, for `dump --locals`: built-in
//! scalars by value, small built-in containers a few items deep, anything else as
//! `<TypeName at 0x...>`. Nothing runs in the target: every value is decoded from its
//! memory, every length is capped before it is read, and a type defined in Python (a
//! heap type) is never shown by value even if it calls itself `int`.

use super::layout::{Layout, LongModel};
use super::objects::dict_items;
use crate::process::memory::{Fields, ReadMem};

/// Characters of a str (bytes of a bytes object) shown before "...".
pub const MAX_STR: u64 = 60;
/// Items of a container shown before "...".
pub const MAX_ITEMS: u64 = 5;
/// Containers inside containers shown by value; deeper ones are `[...]`.
pub const MAX_DEPTH: u32 = 2;
/// Bigger dicts and sets are not read item by item.
const MAX_TABLE: u64 = 1024;

/// What `repr` needs of an object's type.
pub struct TypeFacts {
    pub name: String,
    pub heap: bool,
}

/// The type of `obj`: its `tp_name` (bounded) and whether it was defined in Python.
pub fn type_of(mem: &dyn ReadMem, l: &Layout, obj: u64) -> Option<TypeFacts> {
    let tp = mem.read_u64(obj + l.object.ob_type).ok()?;
    if tp == 0 {
        return None;
    }
    let flags = mem.read_u64(tp + l.type_.tp_flags).ok()?;
    let name_ptr = mem.read_u64(tp + l.type_.tp_name).ok()?;
    Some(TypeFacts { name: c_string(mem, name_ptr, 80)?, heap: flags & l.model.tp_flags_heaptype != 0 })
}

/// A NUL-terminated C string of at most `max` bytes (longer ones are cut).
pub fn c_string(mem: &dyn ReadMem, addr: u64, max: usize) -> Option<String> {
    let mut buf = vec![0u8; max];
    // the string may end near the end of a mapping: shrink the read until it fits
    let mut n = max;
    while mem.read(addr, &mut buf[..n]).is_err() {
        n /= 2;
        if n < 8 {
            return None;
        }
    }
    let end = buf[..n].iter().position(|&b| b == 0).unwrap_or(n);
    Some(String::from_utf8_lossy(&buf[..end]).into_owned())
}

pub fn generic(name: &str, obj: u64) -> String {
    format!("<{name} at {obj:#x}>")
}

/// The repr of `obj`, never longer than a few hundred characters.
pub fn repr(mem: &dyn ReadMem, l: &Layout, obj: u64) -> String {
    repr_at(mem, l, obj, 0)
}

fn repr_at(mem: &dyn ReadMem, l: &Layout, obj: u64, depth: u32) -> String {
    if obj == 0 || obj & 7 != 0 {
        return format!("<invalid reference {obj:#x}>");
    }
    let Some(ty) = type_of(mem, l, obj) else {
        return format!("<unreadable object at {obj:#x}>");
    };
    if ty.heap {
        return generic(&ty.name, obj);
    }
    let shown = match ty.name.as_str() {
        "NoneType" => Some("None".to_string()),
        "bool" => read_int(mem, l, obj).map(|v| if v == 0 { "False" } else { "True" }.to_string()),
        "int" => read_int(mem, l, obj).map(|v| v.to_string()),
        "float" => mem.read_u64(obj + l.float.value).ok().map(|b| float_repr(f64::from_bits(b))),
        "str" => str_repr(mem, l, obj),
        "bytes" => bytes_repr(mem, l, obj),
        "tuple" | "list" | "dict" | "set" | "frozenset" if depth >= MAX_DEPTH => Some(
            match ty.name.as_str() {
                "tuple" => "(...)",
                "list" => "[...]",
                "dict" => "{...}",
                _ => "{...}",
            }
            .to_string(),
        ),
        "tuple" => seq_repr(mem, l, obj, depth, true),
        "list" => seq_repr(mem, l, obj, depth, false),
        "dict" => dict_repr(mem, l, obj, depth),
        "set" | "frozenset" => set_repr(mem, l, obj, depth, ty.name == "frozenset"),
        _ => None,
    };
    shown.unwrap_or_else(|| generic(&ty.name, obj))
}

/// An int of up to 4 digits (120 bits), signed; None for bigger ones.
pub fn read_int(mem: &dyn ReadMem, l: &Layout, obj: u64) -> Option<i128> {
    let tag = mem.read_u64(obj + l.long.size).ok()?;
    let (ndigits, negative) = match l.model.long {
        LongModel::ObSize => ((tag as i64).unsigned_abs(), (tag as i64) < 0),
        LongModel::LvTag => (tag >> 3, tag & 3 == 2),
    };
    if ndigits > 4 {
        return None;
    }
    let mut digits = [0u8; 16];
    mem.read(obj + l.long.digits, &mut digits[..ndigits as usize * 4]).ok()?;
    let mut v: i128 = 0;
    for i in (0..ndigits as usize).rev() {
        v = (v << l.long.digit_bits) | digits.u32_at(i as u64 * 4) as i128;
    }
    Some(if negative { -v } else { v })
}

/// Python's float repr for the usual cases: `1.0`, `0.1`, `1e+20`, `inf`, `nan`.
fn float_repr(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf" } else { "-inf" }.into();
    }
    let a = f.abs();
    if a != 0.0 && !(1e-4..1e16).contains(&a) {
        // Rust writes 1e20 and 1e-5; Python 1e+20 and 1e-05
        let s = format!("{f:e}");
        let (m, e) = s.split_once('e').unwrap_or((&s, "0"));
        let (sign, digits) = e.strip_prefix('-').map(|d| ('-', d)).unwrap_or(('+', e));
        return format!("{m}e{sign}{digits:0>2}");
    }
    let s = format!("{f}");
    if s.contains('.') {
        s
    } else {
        s + ".0"
    }
}

/// (the first `max` characters, the full length), decoded from a PEP 393 string.
pub fn read_str_prefix(mem: &dyn ReadMem, l: &Layout, obj: u64, max: u64) -> Option<(String, u64)> {
    let u = &l.unicode;
    let mut head = [0u8; 96];
    let head_len = (u.compact_data.max(u.legacy_data) + 8).min(96) as usize;
    mem.read(obj, &mut head[..head_len]).ok()?;
    let length = head.u64_at(u.length);
    let state = head.u32_at(u.state);
    let kind = (state >> 2) & 7;
    let compact = (state >> 5) & 1 == 1;
    let ascii = (state >> 6) & 1 == 1;
    if !matches!(kind, 1 | 2 | 4) || length > 1 << 40 {
        return None;
    }
    let data = match (compact, ascii) {
        (true, true) => obj + u.ascii_data,
        (true, false) => obj + u.compact_data,
        (false, _) => head.u64_at(u.legacy_data),
    };
    let n = length.min(max);
    let raw = mem.read_vec(data, (n * kind as u64) as usize).ok()?;
    let s = match kind {
        1 => raw.iter().map(|&b| b as char).collect(),
        2 => raw
            .chunks_exact(2)
            .map(|c| char::from_u32(u16::from_le_bytes([c[0], c[1]]) as u32).unwrap_or('\u{fffd}'))
            .collect(),
        _ => raw
            .chunks_exact(4)
            .map(|c| char::from_u32(u32::from_le_bytes([c[0], c[1], c[2], c[3]])).unwrap_or('\u{fffd}'))
            .collect(),
    };
    Some((s, length))
}

fn str_repr(mem: &dyn ReadMem, l: &Layout, obj: u64) -> Option<String> {
    let (s, len) = read_str_prefix(mem, l, obj, MAX_STR)?;
    // Python's choice of quotes: single unless the text has a single quote and no double
    let quote = if s.contains('\'') && !s.contains('"') { '"' } else { '\'' };
    let mut out = String::from(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push(quote);
    if len > MAX_STR {
        out.push_str(&format!("... ({len} characters)"));
    }
    Some(out)
}

fn bytes_repr(mem: &dyn ReadMem, l: &Layout, obj: u64) -> Option<String> {
    let len = mem.read_u64(obj + l.bytes.size).ok()?;
    if len > 1 << 40 {
        return None;
    }
    let raw = mem.read_vec(obj + l.bytes.data, len.min(MAX_STR) as usize).ok()?;
    let quote = if raw.contains(&b'\'') && !raw.contains(&b'"') { b'"' } else { b'\'' };
    let mut out = format!("b{}", quote as char);
    for &b in &raw {
        match b {
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            b if b == quote => {
                out.push('\\');
                out.push(b as char);
            }
            0x20..=0x7e => out.push(b as char),
            b => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out.push(quote as char);
    if len > MAX_STR {
        out.push_str(&format!("... ({len} bytes)"));
    }
    Some(out)
}

fn seq_repr(mem: &dyn ReadMem, l: &Layout, obj: u64, depth: u32, tuple: bool) -> Option<String> {
    let (offs, open, close) = if tuple { (&l.tuple, "(", ")") } else { (&l.list, "[", "]") };
    let len = mem.read_u64(obj + offs.size).ok()?;
    if len > 1 << 40 {
        return None;
    }
    // a tuple holds its items inline; a list points to an array of them
    let items = if tuple { obj + offs.items } else { mem.read_u64(obj + offs.items).ok()? };
    let n = len.min(MAX_ITEMS);
    let raw = if n == 0 { Vec::new() } else { mem.read_vec(items, n as usize * 8).ok()? };
    let mut parts: Vec<String> = (0..n).map(|i| repr_at(mem, l, raw.u64_at(i * 8), depth + 1)).collect();
    if len > MAX_ITEMS {
        parts.push(format!("... ({len} items)"));
    }
    let trailing = if tuple && len == 1 { "," } else { "" };
    Some(format!("{open}{}{trailing}{close}", parts.join(", ")))
}

fn dict_repr(mem: &dyn ReadMem, l: &Layout, obj: u64, depth: u32) -> Option<String> {
    let used = mem.read_u64(obj + l.dict.used).ok()?;
    if used > MAX_TABLE {
        return Some(format!("<dict with {used} items at {obj:#x}>"));
    }
    let items = dict_items(mem, l, obj).ok()?;
    let mut parts: Vec<String> = items
        .iter()
        .take(MAX_ITEMS as usize)
        .map(|&(k, v)| format!("{}: {}", repr_at(mem, l, k, depth + 1), repr_at(mem, l, v, depth + 1)))
        .collect();
    if items.len() as u64 > MAX_ITEMS {
        parts.push(format!("... ({} items)", items.len()));
    }
    Some(format!("{{{}}}", parts.join(", ")))
}

fn set_repr(mem: &dyn ReadMem, l: &Layout, obj: u64, depth: u32, frozen: bool) -> Option<String> {
    let s = &l.set;
    let used = mem.read_u64(obj + s.used).ok()?;
    let mask = mem.read_u64(obj + s.mask).ok()?;
    if used == 0 {
        return Some(if frozen { "frozenset()" } else { "set()" }.into());
    }
    if mask >= MAX_TABLE || s.entry_size < 16 {
        return Some(format!("<{} with {used} items at {obj:#x}>", if frozen { "frozenset" } else { "set" }));
    }
    let table = mem.read_u64(obj + s.table).ok()?;
    let raw = mem.read_vec(table, ((mask + 1) * s.entry_size) as usize).ok()?;
    let mut parts = Vec::new();
    for e in raw.chunks_exact(s.entry_size as usize) {
        let (key, hash) = (e.u64_at(0), e.u64_at(8) as i64);
        // a removed entry keeps a dummy key with hash -1 (no object hashes to -1)
        if key == 0 || hash == -1 {
            continue;
        }
        if parts.len() as u64 == MAX_ITEMS {
            parts.push(format!("... ({used} items)"));
            break;
        }
        parts.push(repr_at(mem, l, key, depth + 1));
    }
    let body = parts.join(", ");
    Some(if frozen { format!("frozenset({{{body}}})") } else { format!("{{{body}}}") })
}

#[cfg(test)]
mod tests {
    #[test]
    fn floats_read_like_python() {
        use super::float_repr;
        assert_eq!(float_repr(1.5), "1.5");
        assert_eq!(float_repr(2.0), "2.0");
        assert_eq!(float_repr(0.1), "0.1");
        assert_eq!(float_repr(1e20), "1e+20");
        assert_eq!(float_repr(1.5e-7), "1.5e-07");
        assert_eq!(float_repr(-0.0), "-0.0");
        assert_eq!(float_repr(f64::INFINITY), "inf");
    }
}
