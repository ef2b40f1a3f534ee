//! The target's OS threads as /proc shows them, and the mapping of thread ids between
//! the target's pid namespace (what CPython stores) and ours (what we report).

use std::collections::HashMap;

pub struct Tasks {
    /// tid in our namespace, for every thread of the process
    pub tids: Vec<i32>,
    /// innermost-namespace tid -> our tid, when they differ (target in a container)
    ns_to_ours: HashMap<i32, i32>,
}

impl Tasks {
    pub fn read(pid: i32) -> Tasks {
        let mut tids = Vec::new();
        let mut ns_to_ours = HashMap::new();
        if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            for e in dir.flatten() {
                let Some(tid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                    continue;
                };
                tids.push(tid);
                if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")) {
                    if let Some(line) = status.lines().find(|l| l.starts_with("NSpid:")) {
                        if let Some(inner) = line.split_whitespace().last().and_then(|s| s.parse::<i32>().ok()) {
                            if inner != tid {
                                ns_to_ours.insert(inner, tid);
                            }
                        }
                    }
                }
            }
        }
        tids.sort_unstable();
        Tasks { tids, ns_to_ours }
    }

    /// Threads known from elsewhere (a core's notes), with no namespace to translate.
    pub fn fixed(mut tids: Vec<i32>) -> Tasks {
        tids.sort_unstable();
        tids.dedup();
        Tasks { tids, ns_to_ours: HashMap::new() }
    }

    /// Our tid for a tid the target recorded in its own namespace.
    pub fn to_ours(&self, tid: i32) -> i32 {
        self.ns_to_ours.get(&tid).copied().unwrap_or(tid)
    }

    /// The target's own (innermost namespace) tid of one of our tids.
    pub fn to_target(&self, ours: i32) -> i32 {
        self.ns_to_ours.iter().find(|(_, &o)| o == ours).map(|(&i, _)| i).unwrap_or(ours)
    }

    pub fn comm(pid: i32, tid: i32) -> Option<String> {
        std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).ok().map(|s| s.trim_end().to_string())
    }
}
