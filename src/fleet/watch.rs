//! `--subprocesses`: the helper thread that finds the Python descendants of the recorded
//! processes as they are born (fork, multiprocessing, gunicorn-style workers, a
//! replacement for a worker that died) and attaches to them. Attaching reads ELF files and
//! the runtime, which takes milliseconds: here, not on the sampling thread, which only
//! takes in what is ready.

use super::Joined;
use crate::error::Error;
use crate::output::Skipped;
use crate::process::identity::{self, Identity};
use crate::process::tree;
use crate::python::snapshot::Reader;
use crossbeam_channel::Sender;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the process tree is listed (every /proc/PID/stat: too costly per tick).
pub const POLL: Duration = Duration::from_millis(150);
/// A child this young may still be a copy of its parent about to exec another program:
/// it is looked at again at the next poll.
const MIN_AGE: Duration = Duration::from_millis(50);
/// Until the dynamic loader has mapped libpython a fresh interpreter looks like no
/// Python at all: believe "not Python" only of a child seen this long.
const NOT_PYTHON_AFTER: Duration = Duration::from_millis(300);
/// A Python child whose interpreter never comes up (embedders that never initialize).
const NEVER_UP_AFTER: Duration = Duration::from_secs(5);

/// What the watcher and the sampling thread share.
#[derive(Default)]
pub struct Shared {
    /// the process images being recorded (or handed over to be): never attached twice.
    /// The sampling thread takes out an image it stopped recording because the pid
    /// changed hands or exec'd, so that whatever the pid names now is looked at afresh.
    pub members: Mutex<HashSet<(i32, Identity)>>,
    pub skipped: Mutex<Skipped>,
}

/// Watches until `stop`, handing each new Python descendant of the roots (the recorded
/// processes, current members included: an orphaned worker's children are followed too)
/// to `joins`.
pub fn watch(roots: Vec<i32>, shared: Arc<Shared>, joins: Sender<Joined>, stop: Arc<AtomicBool>) {
    // images decided against (not Python, unreadable), and when undecided ones were first seen
    let mut decided: HashSet<(i32, Identity)> = HashSet::new();
    let mut first_seen: HashMap<(i32, Identity), Instant> = HashMap::new();
    while !stop.load(Ordering::Relaxed) {
        let members: Vec<(i32, Identity)> = lock(&shared.members).iter().copied().collect();
        let mut from: Vec<i32> = roots.clone();
        from.extend(members.iter().map(|m| m.0));
        from.sort_unstable();
        from.dedup();
        let found = tree::descendants_of(&from);
        let mut seen_now = HashSet::new();
        for pid in found {
            let Some(id) = identity::of(pid) else {
                continue;
            };
            let key = (pid, id);
            seen_now.insert(key);
            if decided.contains(&key) || members.contains(&key) || !old_enough(id) {
                continue;
            }
            let since = *first_seen.entry(key).or_insert_with(Instant::now);
            match look_at(pid, since.elapsed()) {
                Verdict::Python(reader) => {
                    first_seen.remove(&key);
                    lock(&shared.members).insert(key);
                    if joins.send(Joined::new(pid, id, *reader)).is_err() {
                        return;
                    }
                }
                Verdict::Later => {}
                Verdict::Gone => {
                    first_seen.remove(&key);
                }
                Verdict::Skip(why) => {
                    first_seen.remove(&key);
                    decided.insert(key);
                    let mut s = lock(&shared.skipped);
                    match why {
                        Why::NotPython => s.not_python += 1,
                        Why::Unreadable => s.unreadable += 1,
                    }
                }
            }
        }
        // what is no longer there cannot come back under the same identity
        decided.retain(|k| seen_now.contains(k));
        first_seen.retain(|k, _| seen_now.contains(k));
        let until = Instant::now() + POLL;
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // (a panic elsewhere leaves plain data behind: still usable)
    m.lock().unwrap_or_else(|e| e.into_inner())
}

enum Why {
    NotPython,
    Unreadable,
}

enum Verdict {
    Python(Box<Reader>),
    Later,
    Gone,
    Skip(Why),
}

fn look_at(pid: i32, seen_for: Duration) -> Verdict {
    match Reader::attach(pid) {
        Ok(r) if r.initialized() => Verdict::Python(Box::new(r)),
        Ok(_) if seen_for > NEVER_UP_AFTER => Verdict::Skip(Why::Unreadable),
        Ok(_) => Verdict::Later,
        Err(Error::NoSuchProcess(_) | Error::TargetExited(_)) => Verdict::Gone,
        Err(Error::NotPython { .. }) if seen_for >= NOT_PYTHON_AFTER => Verdict::Skip(Why::NotPython),
        Err(Error::UnsupportedVersion { .. }) if seen_for >= NOT_PYTHON_AFTER => Verdict::Skip(Why::Unreadable),
        Err(Error::NotPython { .. } | Error::UnsupportedVersion { .. }) => Verdict::Later,
        Err(Error::PermissionDenied { .. }) => Verdict::Skip(Why::Unreadable),
        // the process exec'ing or exiting while it was read: look again next time
        Err(_) if seen_for < NEVER_UP_AFTER => Verdict::Later,
        Err(_) => Verdict::Skip(Why::Unreadable),
    }
}

/// Whether the process started at least MIN_AGE ago.
fn old_enough(id: Identity) -> bool {
    id.age() >= MIN_AGE
}
