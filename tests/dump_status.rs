//! `vizattach dump`'s stuck-process view on every interpreter of the suite, against
//! tests/fixtures/stuck.py: thread status (asleep, in which system call, GIL), lock waits
//! (two threads deadlocked on two Locks, an RLock owned by another thread, a Condition
//! nobody notifies) and `--locals` (known values in nested frames, a closure, a
//! generator and a coroutine).
//!
//!     cargo test --release --test dump_status -- --nocapture

mod common;

use common::*;
use serde_json::Value;
use std::time::{Duration, Instant};

/// Targets checked concurrently (they only sleep while being dumped).
const WORKERS: usize = 3;
/// How long a parked thread may take to be asleep in its blocking call once the
/// fixture saw it at its line (generous: the machine may be loaded).
const SETTLE: Duration = Duration::from_secs(30);

/// `dump --json --locals` of the stuck fixture, repeated until `check` accepts it (or
/// SETTLE passes: then its last complaint is the failure).
fn check_stuck(check: impl Fn(&Interpreter, &Value) -> Result<(), String> + Sync) {
    let Some(targets) = dump_targets() else {
        return;
    };
    for_each_interpreter(&targets, WORKERS, |interp| {
        let mut target = Target::start(interp, "stuck.py")?;
        target.wait_expected()?;
        let deadline = Instant::now() + SETTLE;
        loop {
            let out = run_vizattach(&["dump", "--pid", &target.pid.to_string(), "--json", "--locals"])?;
            if !out.status.success() {
                return Err(format!("dump failed: {}", out.describe()));
            }
            let v: Value = serde_json::from_str(&out.stdout).map_err(|e| format!("not JSON ({e})"))?;
            match check(interp, &v) {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() > deadline => return Err(format!("{e}\nlast dump: {}", out.stdout)),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    });
}

fn thread<'a>(v: &'a Value, name: &str) -> Result<&'a Value, String> {
    v["threads"]
        .as_array()
        .ok_or("no threads array")?
        .iter()
        .find(|t| t["name"] == name)
        .ok_or_else(|| format!("no thread named {name:?}"))
}

fn waiting_on<'a>(v: &'a Value, name: &str) -> Result<&'a Value, String> {
    let w = &thread(v, name)?["status"]["waiting_on"];
    if w.is_null() {
        return Err(format!("{name}: waiting_on is null"));
    }
    Ok(w)
}

fn expect(what: &str, got: &Value, want: &str) -> Result<(), String> {
    if got.as_str() == Some(want) {
        Ok(())
    } else {
        Err(format!("{what}: expected {want:?}, got {got}"))
    }
}

/// The function name vizattach prints: co_qualname from 3.11, co_name before.
fn function_name(interp: &Interpreter, qualname: &str) -> String {
    let (a, b, _) = interp.version_tuple();
    if (a, b) >= (3, 11) {
        qualname.to_string()
    } else {
        qualname.rsplit('.').next().unwrap_or(qualname).to_string()
    }
}

/// Two threads each hold one Lock and block acquiring the other's: each names the Lock
/// it waits for (local `second` of `take`) and the other thread as its likely holder,
/// and the pair is reported once as a deadlock (JSON and text).
#[test]
fn deadlock_cycle_is_reported() {
    check_stuck(|_, v| {
        let t1 = thread(v, "deadlock-1")?;
        let t2 = thread(v, "deadlock-2")?;
        for (me, other) in [("deadlock-1", t2), ("deadlock-2", t1)] {
            let w = waiting_on(v, me)?;
            expect(&format!("{me} kind"), &w["kind"], "Lock")?;
            expect(&format!("{me} via"), &w["via"], "second")?;
            expect(&format!("{me} function"), &w["function"], "take")?;
            expect(&format!("{me} owner"), &w["owner"]["tid"].to_string().into(), &other["tid"].to_string())?;
            if !w["lock"].as_str().is_some_and(|s| s.starts_with("<_thread.lock at 0x")) {
                return Err(format!("{me}: lock repr {}", w["lock"]));
            }
        }
        // each waits for the lock the other took first
        let (first1, first2) = (&t1["frames"][0]["locals"]["first"], &t2["frames"][0]["locals"]["first"]);
        expect(
            "deadlock-1 waits for deadlock-2's first lock",
            &waiting_on(v, "deadlock-1")?["lock"],
            first2.as_str().unwrap_or("?"),
        )?;
        expect(
            "deadlock-2 waits for deadlock-1's first lock",
            &waiting_on(v, "deadlock-2")?["lock"],
            first1.as_str().unwrap_or("?"),
        )?;
        let cycles = v["deadlocks"].as_array().ok_or("no deadlocks array")?;
        let mut want = vec![t1["tid"].as_i64(), t2["tid"].as_i64()];
        want.sort();
        let found = cycles.iter().any(|c| {
            let mut tids: Vec<Option<i64>> = c["tids"].as_array().into_iter().flatten().map(|t| t.as_i64()).collect();
            tids.sort();
            tids == want
        });
        if cycles.len() != 1 || !found {
            return Err(format!("expected exactly the cycle {want:?}, got {}", v["deadlocks"]));
        }
        Ok(())
    });
}

/// The text form prints the cycle as a likely deadlock, and each waiter's line.
#[test]
fn deadlock_in_text_output() {
    let Some(targets) = dump_targets() else {
        return;
    };
    let host: Vec<Interpreter> = targets.into_iter().filter(|i| !i.in_chroot()).take(1).collect();
    for_each_interpreter(&host, 1, |interp| {
        let mut target = Target::start(interp, "stuck.py")?;
        target.wait_expected()?;
        let deadline = Instant::now() + SETTLE;
        loop {
            let out = run_vizattach(&["dump", "--pid", &target.pid.to_string()])?;
            let text = &out.stdout;
            let ok = out.status.success()
                && text.lines().filter(|l| l.starts_with("Likely deadlock: ")).count() == 1
                && text.contains("waiting for Lock `second` in take")
                && text.contains("waiting for RLock `global shared_rlock` in wait_rlock")
                && text.contains("owned by thread");
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("text dump lacks the deadlock or wait lines:\n{}", out.describe()));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
}

/// A thread blocked on an RLock another thread holds names that thread as the owner
/// (recorded by the RLock itself, so certain), and the global it was reached through.
#[test]
fn rlock_owner_is_named() {
    check_stuck(|_, v| {
        let w = waiting_on(v, "rlock-waiter")?;
        expect("kind", &w["kind"], "RLock")?;
        expect("via", &w["via"], "global shared_rlock")?;
        expect("function", &w["function"], "wait_rlock")?;
        expect("owner", &w["owner"]["name"], "rlock-owner")?;
        if w["owner"]["certain"] != true {
            return Err(format!("an RLock's owner is recorded, so certain: {w}"));
        }
        Ok(())
    });
}

/// A thread in Condition.wait names the Condition as its caller reached it.
#[test]
fn condition_wait_is_named() {
    check_stuck(|interp, v| {
        let w = waiting_on(v, "cond-waiter")?;
        expect("kind", &w["kind"], "Condition")?;
        expect("via", &w["via"], "self.cond")?;
        expect("function", &w["function"], &function_name(interp, "Mailbox.receive"))?;
        Ok(())
    });
}

/// Threads in time.sleep: asleep (not on CPU) in the sleep system call the version
/// uses, no GIL, no lock wait. Lock waiters sleep in futex. Nobody waits for the GIL.
#[test]
fn sleeping_threads_show_their_syscall() {
    check_stuck(|_, v| {
        for name in ["MainThread", "rlock-owner"] {
            let s = &thread(v, name)?["status"];
            if s["on_cpu"] != false || s["gil"] != "no" || !s["waiting_on"].is_null() {
                return Err(format!("{name}: expected asleep, no GIL, no lock wait: {s}"));
            }
            // time.sleep: clock_nanosleep from 3.11, select() before
            let sc = s["syscall"].as_str().unwrap_or("");
            if !matches!(sc, "clock_nanosleep" | "select" | "pselect6" | "nanosleep") {
                return Err(format!("{name}: syscall {sc:?} is not a sleep"));
            }
        }
        for name in ["deadlock-1", "deadlock-2", "rlock-waiter", "cond-waiter"] {
            let s = &thread(v, name)?["status"];
            if s["syscall"] != "futex" || s["on_cpu"] != false {
                return Err(format!("{name}: expected asleep in futex: {s}"));
            }
        }
        for t in v["threads"].as_array().into_iter().flatten() {
            if t["status"]["gil"] == "waiting" {
                return Err(format!("{} waits for the GIL, but every thread is blocked elsewhere", t["name"]));
            }
        }
        Ok(())
    });
}

fn frame<'a>(t: &'a Value, function: &str) -> Result<&'a Value, String> {
    t["frames"]
        .as_array()
        .ok_or("no frames")?
        .iter()
        .find(|f| f["function"] == function)
        .ok_or_else(|| format!("no frame {function:?} in {}", t["name"]))
}

fn expect_locals(f: &Value, want: &[(&str, &str)]) -> Result<(), String> {
    if f["kind"] != "python" {
        return Err(format!("frame kind {} is not \"python\"", f["kind"]));
    }
    for (name, repr) in want {
        expect(&format!("{} local {name}", f["function"]), &f["locals"][name], repr)?;
    }
    Ok(())
}

/// Known arguments, locals, a cell (`number` in outer) and a free variable (`number` in
/// inner), by value, in nested frames.
#[test]
fn locals_of_nested_frames() {
    check_stuck(|interp, v| {
        let t = thread(v, "locals-thread")?;
        let inner = frame(t, &function_name(interp, "outer.<locals>.inner"))?;
        expect_locals(inner, &[("step", "7"), ("total", "49"), ("number", "42")])?;
        let outer = frame(t, "outer")?;
        expect_locals(
            outer,
            &[
                ("count", "3"),
                ("text", "'hello'"),
                ("data", "[1, 2]"),
                ("number", "42"),
                ("ratio", "1.5"),
                ("raw", "b'by\\x00tes'"),
                ("flag", "True"),
                ("nothing", "None"),
                ("pair", "(1, 'two', [3, 4])"),
                ("table", "{'k': [1, 2]}"),
                ("single", "{7}"),
            ],
        )?;
        let long = outer["locals"]["long_text"].as_str().unwrap_or("");
        if !(long.starts_with("'xxxxxxxxxx") && long.ends_with("'... (500 characters)") && long.len() < 100) {
            return Err(format!("long_text is not truncated as expected: {long:?}"));
        }
        let func = outer["locals"]["inner"].as_str().unwrap_or("");
        if !func.starts_with("<function at 0x") {
            return Err(format!("inner should be shown by type and address: {func:?}"));
        }
        Ok(())
    });
}

/// Locals of a running generator's frame and of a coroutine's frame.
#[test]
fn locals_of_generators_and_coroutines() {
    check_stuck(|_, v| {
        expect_locals(frame(thread(v, "gen-thread")?, "gen")?, &[("limit", "5"), ("produced", "'gen-local'")])?;
        expect_locals(frame(thread(v, "coro-thread")?, "coro")?, &[("k", "11"), ("here", "'coro-local'")])?;
        Ok(())
    });
}
