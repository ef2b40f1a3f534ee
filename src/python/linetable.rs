//! Line numbers from a code object's line table, in each of CPython's three formats.
//! `offset` is the instruction's byte offset into the bytecode.

use super::layout::LineTable;

pub fn line_for(format: LineTable, table: &[u8], first_line: i32, offset: i64) -> Option<i32> {
    match format {
        LineTable::Lnotab => Some(lnotab(table, first_line, offset)),
        LineTable::Linetable310 => linetable310(table, first_line, offset),
        LineTable::Locations => locations(table, first_line, offset),
    }
}

/// 3.8/3.9 co_lnotab: (bytecode delta, signed line delta) pairs.
fn lnotab(table: &[u8], first_line: i32, offset: i64) -> i32 {
    let mut line = first_line;
    let mut addr: i64 = 0;
    for pair in table.chunks_exact(2) {
        addr += pair[0] as i64;
        if addr > offset {
            break;
        }
        line += pair[1] as i8 as i32;
    }
    line
}

/// 3.10 co_linetable: (bytecode length, signed line delta) pairs; -128 means "no line".
fn linetable310(table: &[u8], first_line: i32, offset: i64) -> Option<i32> {
    if offset < 0 {
        return Some(first_line);
    }
    let mut line = first_line;
    let mut end: i64 = 0;
    for pair in table.chunks_exact(2) {
        let start = end;
        end += pair[0] as i64;
        let delta = pair[1] as i8;
        let this = if delta == -128 {
            None
        } else {
            line += delta as i32;
            Some(line)
        };
        if start <= offset && offset < end {
            return this;
        }
    }
    None
}

/// 3.11+ co_linetable ("locations"): entries of (code, length in code units) followed
/// by varints; only the line delta matters here.
fn locations(table: &[u8], first_line: i32, offset: i64) -> Option<i32> {
    let target = offset / 2;
    let mut line = first_line;
    let mut addr: i64 = 0;
    let mut i = 0usize;
    while i < table.len() {
        let head = table[i];
        i += 1;
        if head & 0x80 == 0 {
            return None; // lost sync: not an entry start
        }
        let code = (head >> 3) & 15;
        let length = (head & 7) as i64 + 1;
        let mut this = Some(0);
        match code {
            15 => this = None,
            14 => {
                line += svarint(table, &mut i)?;
                varint(table, &mut i)?; // end line delta
                varint(table, &mut i)?; // column
                varint(table, &mut i)?; // end column
            }
            13 => line += svarint(table, &mut i)?,
            10..=12 => {
                line += (code - 10) as i32;
                i += 2;
            }
            _ => i += 1,
        }
        if addr <= target && target < addr + length {
            return this.map(|_| line);
        }
        addr += length;
    }
    None
}

fn varint(t: &[u8], i: &mut usize) -> Option<u32> {
    let mut b = *t.get(*i)?;
    *i += 1;
    let mut v = (b & 63) as u32;
    let mut shift = 6;
    while b & 64 != 0 {
        b = *t.get(*i)?;
        *i += 1;
        v |= ((b & 63) as u32).checked_shl(shift)?;
        shift += 6;
    }
    Some(v)
}

fn svarint(t: &[u8], i: &mut usize) -> Option<i32> {
    let v = varint(t, i)?;
    Some(if v & 1 != 0 { -((v >> 1) as i32) } else { (v >> 1) as i32 })
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn lnotab_walks_pairs() {
        // line 10 at 0, +2 lines at byte 4, +1 at byte 10
        let t = [0, 0, 4, 2, 6, 1];
        assert_eq!(lnotab(&t, 10, 0), 10);
        assert_eq!(lnotab(&t, 10, 4), 12);
        assert_eq!(lnotab(&t, 10, 9), 12);
        assert_eq!(lnotab(&t, 10, 10), 13);
    }
    #[test]
    fn linetable310_ranges() {
        let t = [4, 1, 6, 0x80, 2, 3];
        assert_eq!(linetable310(&t, 5, 0), Some(6));
        assert_eq!(linetable310(&t, 5, 5), None);
        assert_eq!(linetable310(&t, 5, 10), Some(9));
        assert_eq!(linetable310(&t, 5, -2), Some(5));
    }
    #[test]
    fn locations_forms() {
        // code 13 (no column) +1 line, 2 units; code 10 one-line form, 1 unit; code 14
        // long form -3 lines, 1 unit; code 15 no location, 1 unit.
        let t = [0x80 | (13 << 3) | 1, 2, 0x80 | (10 << 3), 0, 5, 0x80 | (14 << 3), 7, 0, 1, 2, 0x80 | (15 << 3)];
        assert_eq!(locations(&t, 20, 0), Some(21));
        assert_eq!(locations(&t, 20, 2), Some(21));
        assert_eq!(locations(&t, 20, 4), Some(21));
        assert_eq!(locations(&t, 20, 6), Some(18));
        assert_eq!(locations(&t, 20, 8), None);
    }
}
