//! OS thread ids for thread states, in our pid namespace. 3.11+ records the tid
//! (native_thread_id); before that only pthread_t is kept, and the tid is found inside
//! glibc's struct pthread, at an offset we discover once by matching /proc/PID/task.

use super::threads::ThreadState;
use crate::process::memory::{Fields, ReadMem};
use crate::process::tasks::Tasks;

const SCAN: usize = 2048;

pub struct ThreadIds {
    pid: i32,
    /// the threads can be listed again (/proc); a core's list is all there is
    live: bool,
    /// the target's pid namespace is ours: the tids it records need no translation
    same_pid_namespace: bool,
    pub tasks: Tasks,
    pthread_tid_offset: Option<u64>,
}

impl ThreadIds {
    pub fn new(pid: i32) -> ThreadIds {
        let ns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/pid")).ok();
        let same_pid_namespace = ns("self").is_some() && ns("self") == ns(&pid.to_string());
        ThreadIds { pid, live: true, same_pid_namespace, tasks: Tasks::read(pid), pthread_tid_offset: None }
    }

    /// The threads a core recorded, by the ids it recorded them with.
    pub fn recorded(pid: i32, tids: Vec<i32>) -> ThreadIds {
        ThreadIds { pid, live: false, same_pid_namespace: true, tasks: Tasks::fixed(tids), pthread_tid_offset: None }
    }

    pub fn refresh(&mut self) {
        if self.live {
            self.tasks = Tasks::read(self.pid);
        }
    }

    /// Our tid for each thread state (None where it cannot be known: a thread that has
    /// not started or has already finished has no OS thread of its own).
    /// `verify_live` checks every tid against /proc (a dump must not show a thread that
    /// has ended); a sampler can skip that where tids need no translation.
    pub fn resolve(&mut self, mem: &dyn ReadMem, states: &[ThreadState], verify_live: bool) -> Vec<Option<i32>> {
        if states.iter().any(|s| s.native_id.is_none()) && self.pthread_tid_offset.is_none() {
            self.pthread_tid_offset = self.find_offset(mem, states);
        }
        let inner: Vec<Option<i32>> = states
            .iter()
            .map(|s| match s.native_id {
                Some(n) => Some(n),
                None => {
                    let off = self.pthread_tid_offset?;
                    Some(mem.read_u32(s.thread_id.checked_add(off)?).ok()? as i32)
                }
            })
            .collect();
        if !verify_live && self.same_pid_namespace {
            // The sampler's fast path: the target's tids are ours, and a thread state whose
            // thread just ended shows for a tick at most; no /proc scan per new thread.
            let mut tids: Vec<Option<i32>> = inner.into_iter().map(|t| t.filter(|&t| t > 0)).collect();
            drop_duplicates(&mut tids);
            return tids;
        }
        let mut known = self.known_target_tids();
        // The main thread's tid is the pid: a task list without it is a failed read.
        let stale =
            inner.iter().flatten().any(|t| !known.contains(t)) || self.tasks.tids.binary_search(&self.pid).is_err();
        if stale && self.live {
            // A thread started since we listed the tasks, or one has ended: look again.
            self.tasks = Tasks::read(self.pid);
            known = self.known_target_tids();
        }
        // Listing /proc/PID/task while threads come and go can skip live ones (the
        // kernel walks the list by position); asked by name, the kernel answers exactly.
        // (Our tid is the target's only in our own pid namespace; a core's threads are
        // what it recorded, whatever runs under its pid here now.)
        let (pid, same_ns) = (self.pid, self.same_pid_namespace && self.live);
        let listed_or_there =
            |t: &i32| known.contains(t) || (same_ns && std::path::Path::new(&format!("/proc/{pid}/task/{t}")).exists());
        let mut tids: Vec<Option<i32>> =
            inner.into_iter().map(|t| t.filter(listed_or_there).map(|t| self.tasks.to_ours(t))).collect();
        drop_duplicates(&mut tids);
        tids
    }

    /// Whether a thread state without a tid is one without a live OS thread (rather than
    /// one we cannot map).
    pub fn can_resolve(&self, states: &[ThreadState]) -> bool {
        self.pthread_tid_offset.is_some() || states.iter().all(|s| s.native_id.is_some())
    }

    fn known_target_tids(&self) -> std::collections::HashSet<i32> {
        self.tasks.tids.iter().map(|&t| self.tasks.to_target(t)).collect()
    }

    /// The offset of the tid in struct pthread: the one where the most thread states hold
    /// a live tid of this process, all different. Threads starting or ending while we
    /// look may not match; live ones do.
    fn find_offset(&self, mem: &dyn ReadMem, states: &[ThreadState]) -> Option<u64> {
        let known = self.known_target_tids();
        let structs: Vec<Vec<u8>> =
            states.iter().filter(|s| s.thread_id != 0).filter_map(|s| mem.read_vec(s.thread_id, SCAN).ok()).collect();
        let mut best: Option<(usize, u64)> = None;
        for off in (0..SCAN as u64 - 4).step_by(4) {
            let hits: std::collections::HashSet<i32> =
                structs.iter().map(|b| b.i32_at(off)).filter(|v| known.contains(v)).collect();
            if hits.len() > best.map_or(0, |b| b.0) {
                best = Some((hits.len(), off));
            }
        }
        // Most of the states must agree, or this is chance.
        best.filter(|&(n, _)| n * 2 > structs.len()).map(|b| b.1)
    }
}

/// A new thread's state carries its creator's ids until the new thread has stored its own,
/// one field at a time: of two states showing one tid, the later in the list (new states
/// are linked at the head) is the one that owns it.
fn drop_duplicates(tids: &mut [Option<i32>]) {
    let mut seen = std::collections::HashSet::new();
    for t in tids.iter_mut().rev() {
        if let Some(tid) = *t {
            if !seen.insert(tid) {
                *t = None;
            }
        }
    }
}
