//! The stuck-process view on top of a snapshot: for every thread its status (on CPU or
//! asleep and in which system call, GIL held / awaited), the lock it waits for (named by
//! the local, attribute or global it was reached through, with its owner where that can
//! be known), cycles of such waits (likely deadlocks), and with `--locals` every frame's
//! arguments and locals by value.
//!
//! How a wait is recognized, without stopping or changing anything in the target: a
//! thread asleep in `futex` sleeps on one address. Inside the GIL's struct, it waits for
//! the GIL. Otherwise that address is compared with the mutex of every `_thread.lock` /
//! `_thread.RLock` its innermost frames reach: a lock whose mutex is a separately
//! allocated semaphore (Lock before 3.13, RLock before 3.14) is slept on directly; an
//! inline PyMutex's waiter parks on a semaphore in a wait entry on its own stack, whose
//! `addr` names the mutex. Only an exact address match is reported.

use super::discover::Target;
use super::locals;
use super::objects::{dict_items, instance_attr_items};
use super::snapshot::ThreadStack;
use super::strings::read_unicode;
use super::values::{self, type_of};
use crate::process::memory::ReadMem;
use crate::process::os_thread::OsThread;

/// Frames searched for the lock a thread waits on, innermost first.
const FRAMES_SEARCHED: usize = 8;
/// Module globals scanned for locks; bigger modules are skipped.
const MAX_GLOBALS: u64 = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gil {
    Held,
    Waiting,
    No,
}

impl Gil {
    pub fn as_str(self) -> &'static str {
        match self {
            Gil::Held => "held",
            Gil::Waiting => "waiting",
            Gil::No => "no",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerKnown {
    /// the RLock records its owner
    Recorded,
    /// a plain Lock records none: the one other thread whose frames reach it while it is locked
    Likely,
}

#[derive(Debug, Clone)]
pub struct Wait {
    /// "Lock", "RLock", or the threading class the lock belongs to ("Condition", "Event", ...)
    pub kind: String,
    /// the _thread lock object slept on
    pub lock: u64,
    pub lock_repr: String,
    /// the threading object (Condition, Event, Semaphore...) it was reached through, if any
    pub object: Option<String>,
    /// the local, attribute path or global it was reached through: `second`, `self._lock`, `global LOCK`
    pub via: String,
    /// the function whose frame reaches it
    pub function: String,
    /// the thread that owns the lock: index into the snapshot's threads
    pub owner: Option<(usize, OwnerKnown)>,
}

#[derive(Debug, Clone)]
pub struct Status {
    pub on_cpu: bool,
    pub gil: Gil,
    pub syscall: Option<String>,
    pub waiting_on: Option<Wait>,
}

/// One frame's locals: (name, repr) in slot order.
pub type FrameLocals = Vec<(String, String)>;

pub struct Diagnosis {
    /// one per thread of the snapshot, same order
    pub status: Vec<Status>,
    /// with --locals: per thread, per frame (innermost first), (name, repr)
    pub locals: Option<Vec<Vec<FrameLocals>>>,
    /// cycles of waits: thread indices, each waiting for the next (the last for the first)
    pub deadlocks: Vec<Vec<usize>>,
}

/// A lock object reached from a frame, and how.
struct Reached {
    lock: u64,
    via: String,
    /// the frame's index in the thread's stack
    frame: usize,
}

/// `os`: what the OS says of each thread of `threads` (same order).
pub fn diagnose(
    mem: &dyn ReadMem,
    t: &Target,
    os: &[OsThread],
    threads: &[ThreadStack],
    with_locals: bool,
) -> Diagnosis {
    // what each thread's frames reach, for finding waits and likely owners
    let reached: Vec<Vec<Reached>> = threads.iter().map(|th| reachable_locks(mem, t, th, false)).collect();
    let mut status: Vec<Status> = threads
        .iter()
        .zip(os)
        .map(|(th, os)| {
            let futex = os.syscall.as_ref().filter(|s| s.is_futex()).map(|s| s.args[0]);
            let gil = if th.holds_gil {
                Gil::Held
            } else if futex.is_some_and(|a| in_gil(t, th.interp, a)) {
                Gil::Waiting
            } else {
                Gil::No
            };
            Status { on_cpu: os.on_cpu, gil, syscall: os.syscall.as_ref().map(|s| s.name()), waiting_on: None }
        })
        .collect();
    for (i, th) in threads.iter().enumerate() {
        let futex = os.get(i).and_then(|o| o.syscall.as_ref()).filter(|s| s.is_futex()).map(|s| s.args[0]);
        let (Some(addr), Gil::No) = (futex, status[i].gil) else { continue };
        let key = wait_key(mem, t, addr);
        status[i].waiting_on = find_wait(mem, t, th, key);
    }
    // owners, now that every thread's wait is known
    for i in 0..threads.len() {
        let Some(w) = status[i].waiting_on.clone() else { continue };
        let owner = owner_of(mem, t, threads, &status, &reached, i, w.lock);
        if let Some(w) = status[i].waiting_on.as_mut() {
            w.owner = owner;
        }
    }
    let deadlocks = cycles(&status);
    let locals = with_locals.then(|| {
        threads
            .iter()
            .map(|th| {
                th.frames
                    .iter()
                    .map(|f| match locals::read(mem, t, f.code_addr, f.addr) {
                        Ok(ls) => ls.into_iter().map(|lc| (lc.name, values::repr(mem, &t.layout, lc.object))).collect(),
                        Err(_) => {
                            vec![("<locals>".to_string(), "<unreadable: the frame changed while read>".to_string())]
                        }
                    })
                    .collect()
            })
            .collect()
    });
    Diagnosis { status, locals, deadlocks }
}

/// Whether `addr` lies inside the GIL of `interp` (its mutex or condition variables).
fn in_gil(t: &Target, interp: u64, addr: u64) -> bool {
    super::threads::gil_span(t, interp).is_some_and(|(start, end)| (start..end).contains(&addr))
}

/// What a thread asleep on futex `addr` may wait for: the semaphore itself, or the
/// address its parking-lot wait entry names (read only where the layout has one).
#[derive(Clone, Copy)]
struct WaitKey {
    futex: u64,
    parked: Option<u64>,
}

fn wait_key(mem: &dyn ReadMem, t: &Target, addr: u64) -> WaitKey {
    let lk = &t.layout.lock;
    let parked = (lk.wait_entry_sema != 0)
        .then(|| addr.checked_sub(lk.wait_entry_sema))
        .flatten()
        .and_then(|entry| mem.read_u64(entry + lk.wait_entry_addr).ok())
        .filter(|&a| a != 0);
    WaitKey { futex: addr, parked }
}

impl WaitKey {
    fn matches(&self, m: &Mutex) -> bool {
        if m.indirect {
            m.addr == self.futex
        } else {
            Some(m.addr) == self.parked
        }
    }
}

/// Where a lock's waiters wait: its semaphore (indirect) or its inline mutex.
struct Mutex {
    addr: u64,
    indirect: bool,
    rlock: bool,
    /// where the lock's state lives: a `locked` byte, or the PyMutex (bit 0: locked)
    locked_at: u64,
    /// an RLock's owner (thread ident) field
    owner_at: u64,
}

/// The mutex a `_thread.lock` or `_thread.RLock` waiter waits for. The layout is told by
/// the type's instance size (it changed within 3.13), never by version.
fn lock_mutex(mem: &dyn ReadMem, t: &Target, obj: u64) -> Option<Mutex> {
    let (l, lk) = (&t.layout, &t.layout.lock);
    // (these types are heap types from 3.10 on: made from a spec by the _thread module)
    let ty = type_of(mem, l, obj)?;
    let rlock = match ty.name.as_str() {
        "_thread.lock" => false,
        "_thread.RLock" => true,
        _ => return None,
    };
    let tp = mem.read_u64(obj + l.object.ob_type).ok()?;
    let size = mem.read_u64(tp + l.type_.tp_basicsize).ok()?;
    let (field, indirect, locked_at, owner_at) = match rlock {
        false if size == lk.sem_size => (lk.sem_mutex, true, lk.sem_locked, 0),
        false if size == lk.pymutex_size => (lk.pymutex, false, lk.pymutex, 0),
        true if size == lk.rlock_sem_size => (lk.rlock_sem_mutex, true, 0, lk.rlock_sem_owner),
        true if size == lk.rlock_pymutex_size => (lk.rlock_pymutex, false, 0, lk.rlock_pymutex_owner),
        _ => return None,
    };
    if field == 0 {
        return None;
    }
    let addr = if indirect { mem.read_u64(obj + field).ok()? } else { obj + field };
    Some(Mutex { addr, indirect, rlock, locked_at: obj + locked_at, owner_at: obj + owner_at })
}

fn is_lock(mem: &dyn ReadMem, t: &Target, obj: u64) -> bool {
    lock_mutex(mem, t, obj).is_some()
}

/// Every lock the thread's innermost frames reach through a local or one attribute of a
/// local (and, with `globals`, through the frames' module globals).
fn reachable_locks(mem: &dyn ReadMem, t: &Target, th: &ThreadStack, globals: bool) -> Vec<Reached> {
    let l = &t.layout;
    let mut out = Vec::new();
    for (fi, f) in th.frames.iter().enumerate().take(FRAMES_SEARCHED) {
        let Ok(ls) = locals::read(mem, t, f.code_addr, f.addr) else { continue };
        for lc in ls {
            if is_lock(mem, t, lc.object) {
                out.push(Reached { lock: lc.object, via: lc.name.clone(), frame: fi });
                continue;
            }
            for (k, v) in attrs(mem, t, lc.object) {
                if is_lock(mem, t, v) {
                    out.push(Reached { lock: v, via: format!("{}.{k}", lc.name), frame: fi });
                }
            }
        }
        if globals {
            let Some(g) = l.frame.globals.and_then(|o| mem.read_u64(f.addr + o).ok()).filter(|&g| g != 0) else {
                continue;
            };
            if mem.read_u64(g + l.dict.used).map_or(true, |n| n > MAX_GLOBALS) {
                continue;
            }
            for (k, v) in dict_items(mem, l, g).unwrap_or_default() {
                if is_lock(mem, t, v) {
                    let name = read_unicode(mem, l, k).unwrap_or_else(|_| "?".into());
                    out.push(Reached { lock: v, via: format!("global {name}"), frame: fi });
                }
            }
        }
    }
    out
}

/// Instance attributes of a Python-defined object (name, value); empty for anything else.
fn attrs(mem: &dyn ReadMem, t: &Target, obj: u64) -> Vec<(String, u64)> {
    let l = &t.layout;
    if !type_of(mem, l, obj).is_some_and(|ty| ty.heap) {
        return Vec::new();
    }
    instance_attr_items(mem, l, obj)
        .unwrap_or_default()
        .into_iter()
        .take(256)
        .filter_map(|(k, v)| Some((read_unicode(mem, l, k).ok()?, v)))
        .collect()
}

/// The lock whose mutex is `key`, as reached from the thread's frames.
fn find_wait(mem: &dyn ReadMem, t: &Target, th: &ThreadStack, key: WaitKey) -> Option<Wait> {
    let l = &t.layout;
    let hit = reachable_locks(mem, t, th, true)
        .into_iter()
        .find(|r| lock_mutex(mem, t, r.lock).is_some_and(|m| key.matches(&m)))?;
    let rlock = lock_mutex(mem, t, hit.lock).is_some_and(|m| m.rlock);
    let mut wait = Wait {
        kind: if rlock { "RLock" } else { "Lock" }.to_string(),
        lock: hit.lock,
        lock_repr: values::repr(mem, l, hit.lock),
        object: None,
        via: hit.via.clone(),
        function: th.frames[hit.frame].code.name.clone(),
        owner: None,
    };
    // Reached inside the threading module (Condition.wait, Event.wait, Semaphore.acquire,
    // Condition.__enter__...): name the threading object the caller used, as the caller
    // reached it.
    let in_threading = |i: usize| th.frames.get(i).is_some_and(|f| f.code.filename.ends_with("threading.py"));
    if in_threading(hit.frame) {
        let mut outer = hit.frame;
        while in_threading(outer + 1) {
            outer += 1;
        }
        let f = &th.frames[outer];
        let this = locals::read(mem, t, f.code_addr, f.addr)
            .ok()
            .and_then(|ls| ls.into_iter().find(|lc| lc.name == "self").map(|lc| lc.object));
        if let Some(this) = this {
            wait.kind = type_of(mem, l, this).map(|ty| ty.name).unwrap_or_else(|| "object".into());
            wait.object = Some(values::repr(mem, l, this));
            if let Some((via, func)) = reach_object(mem, t, th, outer + 1, this) {
                wait.via = via;
                wait.function = func;
            } else {
                wait.via = format!("self in {}", f.code.name);
                wait.function = f.code.name.clone();
            }
        }
    }
    Some(wait)
}

/// How the frames from `from` outward reach `obj`: a local, an attribute of a local or a
/// global of the first frame that does.
fn reach_object(mem: &dyn ReadMem, t: &Target, th: &ThreadStack, from: usize, obj: u64) -> Option<(String, String)> {
    let l = &t.layout;
    for f in th.frames.iter().skip(from).take(FRAMES_SEARCHED) {
        let name = f.code.name.clone();
        let Ok(ls) = locals::read(mem, t, f.code_addr, f.addr) else { continue };
        for lc in &ls {
            if lc.object == obj {
                return Some((lc.name.clone(), name));
            }
        }
        for lc in &ls {
            for (k, v) in attrs(mem, t, lc.object) {
                if v == obj {
                    return Some((format!("{}.{k}", lc.name), name));
                }
            }
        }
        let g = l.frame.globals.and_then(|o| mem.read_u64(f.addr + o).ok()).filter(|&g| g != 0);
        if let Some(g) = g.filter(|&g| mem.read_u64(g + l.dict.used).is_ok_and(|n| n <= MAX_GLOBALS)) {
            for (k, v) in dict_items(mem, l, g).unwrap_or_default() {
                if v == obj {
                    return Some((format!("global {}", read_unicode(mem, l, k).unwrap_or_else(|_| "?".into())), name));
                }
            }
        }
    }
    None
}

/// Who holds the lock thread `waiter` waits for: an RLock's recorded owner; for a plain
/// Lock, which records none, the one other thread whose frames reach it while it is
/// locked and that does not wait for it itself.
fn owner_of(
    mem: &dyn ReadMem,
    t: &Target,
    threads: &[ThreadStack],
    status: &[Status],
    reached: &[Vec<Reached>],
    waiter: usize,
    lock: u64,
) -> Option<(usize, OwnerKnown)> {
    let m = lock_mutex(mem, t, lock)?;
    if m.rlock {
        let ident = mem.read_u64(m.owner_at).ok().filter(|&i| i != 0)?;
        let i = threads.iter().position(|th| th.thread_id == ident)?;
        return Some((i, OwnerKnown::Recorded));
    }
    let locked = mem.read_vec(m.locked_at, 1).ok()?[0] & 1 == 1;
    if !locked {
        return None;
    }
    let holders: Vec<usize> = (0..threads.len())
        .filter(|&i| i != waiter)
        .filter(|&i| reached[i].iter().any(|r| r.lock == lock))
        .filter(|&i| status[i].waiting_on.as_ref().is_none_or(|w| w.lock != lock))
        .collect();
    match holders.as_slice() {
        [one] => Some((*one, OwnerKnown::Likely)),
        _ => None,
    }
}

/// Cycles in the waits-for graph (each thread waits for at most one owner).
fn cycles(status: &[Status]) -> Vec<Vec<usize>> {
    let next = |i: usize| status[i].waiting_on.as_ref().and_then(|w| w.owner).map(|(o, _)| o);
    let mut found: Vec<Vec<usize>> = Vec::new();
    for start in 0..status.len() {
        let mut path = vec![start];
        let mut at = start;
        while let Some(n) = next(at) {
            if let Some(pos) = path.iter().position(|&p| p == n) {
                let mut cycle = path[pos..].to_vec();
                // one rotation per cycle: start at its smallest index
                let min = cycle.iter().enumerate().min_by_key(|(_, &v)| v).map(|(i, _)| i).unwrap_or(0);
                cycle.rotate_left(min);
                if cycle.len() > 1 && !found.contains(&cycle) {
                    found.push(cycle);
                }
                break;
            }
            path.push(n);
            at = n;
        }
    }
    found
}
