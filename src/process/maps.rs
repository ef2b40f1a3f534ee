//! /proc/PID/maps: which files the target has mapped where.

use crate::error::Result;

#[derive(Debug, Clone)]
pub struct MapEntry {
    pub start: u64,
    pub end: u64,
    pub readable: bool,
    pub writable: bool,
    pub executable: bool,
    pub offset: u64,
    pub inode: u64,
    pub path: String,
}

impl MapEntry {
    pub fn deleted(&self) -> bool {
        self.path.ends_with(" (deleted)")
    }
    pub fn file_name(&self) -> &str {
        let p = self.path.trim_end_matches(" (deleted)");
        p.rsplit('/').next().unwrap_or(p)
    }
}

pub fn read(pid: i32) -> Result<Vec<MapEntry>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .map_err(|e| super::io_error(pid, &format!("memory maps (/proc/{pid}/maps)"), e))?;
    Ok(parse(&text))
}

pub fn parse(text: &str) -> Vec<MapEntry> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<MapEntry> {
    // start-end perms offset dev inode   path (path may contain spaces)
    let mut rest = line;
    let mut field = || {
        let t = rest.trim_start();
        let end = t.find(' ').unwrap_or(t.len());
        let (f, r) = t.split_at(end);
        rest = r;
        f
    };
    let range = field();
    let perms = field();
    let offset = field();
    let _dev = field();
    let inode = field();
    let path = rest.trim_start().to_string();
    let (s, e) = range.split_once('-')?;
    Some(MapEntry {
        start: u64::from_str_radix(s, 16).ok()?,
        end: u64::from_str_radix(e, 16).ok()?,
        readable: perms.starts_with('r'),
        writable: perms.as_bytes().get(1) == Some(&b'w'),
        executable: perms.as_bytes().get(2) == Some(&b'x'),
        offset: u64::from_str_radix(offset, 16).ok()?,
        inode: inode.parse().ok()?,
        path,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_paths_with_spaces_and_deleted() {
        let m = super::parse(
            "55d0c8a00000-55d0c8a2c000 r--p 00000000 fe:01 1234   /tmp/my dir/python3.11 (deleted)\n\
             7ffd1000-7ffd2000 rw-p 00000000 00:00 0          [stack]\n",
        );
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].path, "/tmp/my dir/python3.11 (deleted)");
        assert!(m[0].deleted());
        assert_eq!(m[0].file_name(), "python3.11");
        assert_eq!(m[1].start, 0x7ffd1000);
        assert!(m[1].writable);
    }
}
