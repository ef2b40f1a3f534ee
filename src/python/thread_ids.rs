//! OS thread ids for thread states, in our pid namespace. 3.11+ records the tid
//! (native_thread_id); before that only pthread_t is kept, and the tid is found inside
//! glibc's struct pthread, at an offset we discover once by matching /proc/PID/task.

use super::threads::ThreadState;
use crate::process::memory::{Fields, Memory};
use crate::process::tasks::Tasks;

const SCAN: usize = 2048;

pub struct ThreadIds {
    pub tasks: Tasks,
    pthread_tid_offset: Option<u64>,
}

impl ThreadIds {
    pub fn new(pid: i32) -> ThreadIds {
        ThreadIds { tasks: Tasks::read(pid), pthread_tid_offset: None }
    }

    pub fn refresh(&mut self, pid: i32) {
        self.tasks = Tasks::read(pid);
    }

    /// Our tid for each thread state (None where it cannot be known).
    pub fn resolve(&mut self, mem: &Memory, states: &[ThreadState]) -> Vec<Option<i32>> {
        if states.iter().any(|s| s.native_id.is_none()) && self.pthread_tid_offset.is_none() {
            self.pthread_tid_offset = self.find_offset(mem, states);
        }
        states
            .iter()
            .map(|s| {
                let inner = match s.native_id {
                    Some(n) if n > 0 => Some(n),
                    Some(_) => None, // not started yet / already finished
                    None => {
                        let off = self.pthread_tid_offset?;
                        mem.read_u32(s.thread_id.checked_add(off)?).ok().map(|v| v as i32)
                    }
                };
                inner.map(|t| self.tasks.to_ours(t))
            })
            .collect()
    }

    fn find_offset(&self, mem: &Memory, states: &[ThreadState]) -> Option<u64> {
        let known: std::collections::HashSet<i32> = self.tasks.tids.iter().map(|&t| self.tasks.to_target(t)).collect();
        let structs: Vec<Vec<u8>> =
            states.iter().filter(|s| s.thread_id != 0).filter_map(|s| mem.read_vec(s.thread_id, SCAN).ok()).collect();
        if structs.is_empty() {
            return None;
        }
        (0..SCAN as u64 - 4).step_by(4).find(|&off| {
            let vals: Vec<i32> = structs.iter().map(|b| b.i32_at(off)).collect();
            let distinct: std::collections::HashSet<_> = vals.iter().collect();
            distinct.len() == vals.len() && vals.iter().all(|v| known.contains(v))
        })
    }
}
