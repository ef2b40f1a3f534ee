//! The clock of a capture of several processes: every tick samples each member process
//! with its own sampler (each has its own memory, layout and code cache), paced as
//! `Sampler::run` paces one. A member whose process exits, exec's or whose pid passes to
//! another process leaves; the capture goes on without it.

use super::lanes::Lane;
use super::watch::{Shared, POLL};
use super::Joined;
use crate::clock::now_ns;
use crate::process::identity::{self, Identity};
use crate::process::memory::ReadError;
use crate::sampler::{wait_for_next_tick, Message, Sampler, Stats, StopReason};
use crate::timeline::Timeline;
use crossbeam_channel::{Receiver, Sender};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

/// Queued samples per process (as for one process, record.rs).
const CHANNEL: usize = 4096;

/// Whether a member that leaves is forgotten, so that whatever its pid names now (after
/// an exec, or handed to another process) is looked at afresh.
enum Forget {
    Yes,
    No,
}

struct Member {
    pid: i32,
    identity: Identity,
    sampler: Sampler,
    tx: Sender<Message>,
}

pub struct Clock {
    members: Vec<Member>,
    /// code ids drawn by every member's cache: unique in the capture
    code_ids: Arc<AtomicU32>,
    lanes: Sender<Lane>,
    joins: Receiver<Joined>,
    shared: Arc<Shared>,
    /// more processes may join (--subprocesses): no members is not the end while a root lives
    roots: Vec<(i32, Identity)>,
    following: bool,
    pausing: Pausing,
}

/// Whether members' threads may be stopped for a read (src/pausing.rs): each process
/// gets its own budget; `not`: a process that must never be stopped (our own child).
#[derive(Clone, Copy)]
pub struct Pausing {
    pub budget: f64,
    pub not: Option<i32>,
}

impl Clock {
    pub fn new(
        lanes: Sender<Lane>,
        joins: Receiver<Joined>,
        shared: Arc<Shared>,
        roots: Vec<(i32, Identity)>,
        following: bool,
        pausing: Pausing,
    ) -> Clock {
        Clock { members: Vec::new(), code_ids: Arc::default(), lanes, joins, shared, roots, following, pausing }
    }

    /// Takes in a process: its lane goes to the consumer before any of its samples.
    fn admit(&mut self, j: Joined) -> bool {
        let (tx, rx) = crossbeam_channel::bounded(CHANNEL);
        let (recycle_tx, recycle_rx) = crossbeam_channel::bounded(crate::record::RECYCLED);
        let crate::python::snapshot::Reader { source: process, target, ids, .. } = j.reader;
        let codes = crate::python::code::CodeCache::sharing_ids(self.code_ids.clone());
        let mut sampler = Sampler::new(j.pid, process.memory, target, codes, ids);
        sampler.recycle_from(recycle_rx);
        sampler.prime();
        if self.pausing.budget > 0.0 && self.pausing.not != Some(j.pid) {
            sampler.pause_with(crate::pausing::Pauser::new(self.pausing.budget));
        }
        let lane = Lane { pid: j.pid, info: j.info, rx, recycle: recycle_tx, timeline: Timeline::default() };
        if self.lanes.send(lane).is_err() {
            return false;
        }
        self.members.push(Member { pid: j.pid, identity: j.identity, sampler, tx });
        true
    }

    /// Samples until `stop`, the deadline, or until no member is left and none can come.
    pub fn run(
        &mut self,
        first: Vec<Joined>,
        interval_ns: u64,
        end_ns: Option<u64>,
        stop: &AtomicBool,
        stats: &Stats,
    ) -> StopReason {
        for j in first {
            if !self.admit(j) {
                return StopReason::ConsumerGone;
            }
        }
        let start = now_ns();
        stats.started_ns.store(start, Ordering::Relaxed);
        let mut deadline = start;
        let mut next_check = start + POLL.as_nanos() as u64;
        loop {
            if stop.load(Ordering::Relaxed) || end_ns.is_some_and(|e| now_ns() >= e) {
                return StopReason::Requested;
            }
            while let Ok(j) = self.joins.try_recv() {
                if !self.admit(j) {
                    return StopReason::ConsumerGone;
                }
            }
            let mut sampled = false;
            let mut i = 0;
            while i < self.members.len() {
                let m = &mut self.members[i];
                let leave = match m.sampler.tick(&m.tx, stats) {
                    Ok(true) => {
                        sampled = true;
                        None
                    }
                    Ok(false) => return StopReason::ConsumerGone,
                    // (the kernel also refuses reads for a moment while a process execs)
                    Err(ReadError::Gone | ReadError::Fault | ReadError::Missing) => {
                        stats.failed_ticks.fetch_add(1, Ordering::Relaxed);
                        (identity::of(m.pid) != Some(m.identity)).then_some(Forget::Yes)
                    }
                    // Whatever else one process does, the others go on: it leaves, and
                    // is not taken in again.
                    Err(_) => Some(Forget::No),
                };
                if let Some(forget) = leave {
                    self.leave(i, forget);
                } else {
                    i += 1;
                }
            }
            // (the achieved rate counts ticks that sampled something: not those spent
            // waiting for the last exit to be confirmed)
            if sampled {
                stats.ticks.fetch_add(1, Ordering::Relaxed);
            }
            let now = now_ns();
            if now >= next_check {
                next_check = now + POLL.as_nanos() as u64;
                // A pid handed to another process, or a process that exec'd, may still
                // read without error: its image says it is not the one we attached to.
                let mut i = 0;
                while i < self.members.len() {
                    if identity::of(self.members[i].pid) != Some(self.members[i].identity) {
                        self.leave(i, Forget::Yes);
                    } else {
                        i += 1;
                    }
                }
                if self.members.is_empty() && !self.more_may_come() {
                    return StopReason::TargetExited;
                }
            }
            if self.members.is_empty() && !self.following {
                return StopReason::TargetExited;
            }
            if interval_ns == 0 {
                continue;
            }
            wait_for_next_tick(&mut deadline, interval_ns, end_ns, stats);
        }
    }

    /// A member leaves: dropping its sender ends its lane at its last samples.
    fn leave(&mut self, i: usize, forget: Forget) {
        let m = self.members.remove(i);
        if let Forget::Yes = forget {
            super::watch::lock(&self.shared.members).remove(&(m.pid, m.identity));
        }
    }

    /// Following descendants: one may still come while a root lives or one is on its way.
    fn more_may_come(&self) -> bool {
        self.following && (!self.joins.is_empty() || self.roots.iter().any(|&(p, id)| identity::of(p) == Some(id)))
    }

    /// The pids still recorded (for the summary).
    pub fn member_count(&self) -> usize {
        self.members.len()
    }
}
