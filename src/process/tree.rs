//! A process's descendants, from every /proc/PID/stat's parent pid: works on every
//! kernel (/proc/PID/task/TID/children needs CONFIG_PROC_CHILDREN) and sees children of
//! every thread, and grandchildren (a forkserver's workers, a shell's Python child).

use std::collections::{BTreeMap, BTreeSet};

/// The parent pid in a stat line, "pid (comm) S ppid ...": after the last ')', since
/// a command name may itself hold parentheses.
fn parent_of(stat: &str) -> Option<i32> {
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// Every live descendant of `pid`, parents before their children, in pid order per level.
pub fn descendants(pid: i32) -> Vec<i32> {
    descendants_of(&[pid])
}

/// Every live descendant of any of `roots` (none of the roots themselves), from one
/// listing of /proc.
pub fn descendants_of(roots: &[i32]) -> Vec<i32> {
    let mut children: BTreeMap<i32, BTreeSet<i32>> = BTreeMap::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        // (a process that exits between the listing and this read is simply not there)
        if let Some(parent) = std::fs::read_to_string(format!("/proc/{p}/stat")).ok().as_deref().and_then(parent_of) {
            children.entry(parent).or_default().insert(p);
        }
    }
    let mut out = Vec::new();
    let mut level = roots.to_vec();
    while !level.is_empty() {
        let mut next = Vec::new();
        for p in level {
            for &c in children.get(&p).into_iter().flatten() {
                if !roots.contains(&c) && !out.contains(&c) {
                    out.push(c);
                    next.push(c);
                }
            }
        }
        level = next;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_after_the_last_parenthesis() {
        assert_eq!(parent_of("12 (python3) S 7 12 12 0"), Some(7));
        assert_eq!(parent_of("12 (a) b) R 9 1"), Some(9));
        assert_eq!(parent_of("12 (x"), None);
    }

    #[test]
    fn a_child_and_its_child_are_descendants() {
        let mut child = std::process::Command::new("sh").args(["-c", "sleep 30 & wait"]).spawn().unwrap();
        let sh = child.id() as i32;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let grandchildren = loop {
            let d = descendants(sh);
            if !d.is_empty() || std::time::Instant::now() > deadline {
                break d;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let mine = descendants(std::process::id() as i32);
        for &g in &grandchildren {
            // SAFETY: kill(2) on the sleep this test started
            unsafe { libc::kill(g, libc::SIGKILL) };
        }
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(grandchildren.len(), 1, "the shell's sleep: {grandchildren:?}");
        assert!(mine.contains(&sh) && mine.contains(&grandchildren[0]), "{mine:?}");
    }
}
