//! `vizattach record` of threads that sleep in C calls and wake
//! (tests/fixtures/wake_churn.py): a thread found asleep in the same frames at two
//! samples, which the kernel put on a CPU in between, woke; the frames above the
//! innermost one that can loop back to its call site were called again (src/timeline.rs,
//! the wake proof; src/python/paths.rs). Checked on the host 3.11 and the newest 3.12+
//! interpreter (the proof needs 3.11+ bytecode paths):
//! - threading.Condition.wait (the standard library's) is one slice per notify, every
//!   20 ms: no slice between the first and last may last 3 periods;
//! - `nap` (one 10 ms sleep, called in a loop) is one slice per sleep;
//! - `select_once` (one 15 ms select() on a different number of sockets each time, from
//!   a loop whose frame never changes: waitress' main thread) is one slice per wait;
//! - `dozer`, which sleeps again and again in one call, and the loops that call `nap`,
//!   `select_once` and `Condition.wait`, are each one slice from the start of the
//!   capture to its end.
//!
//!     cargo test --release --test record_wakes -- --nocapture

mod common;

use common::recording::*;
use common::trace::*;
use common::*;
use std::time::Duration;

const SECONDS: f64 = 2.0;

fn check_wakes(interp: &Interpreter) -> Result<(), String> {
    let work = WorkDir::new(interp)?;
    let json = work.host_path("wakes.json");
    let program = start_until_ready(&work, "wake_churn.py", &["30"])?;
    let mut cmd = std::process::Command::new(VIZATTACH);
    cmd.args(["record", "-q", "--rate", "1000", "--duration", &format!("{SECONDS}s"), "--pid"])
        .arg(program.pid().to_string())
        .arg("-o")
        .arg(&json);
    let run = run_with_timeout(cmd, Duration::from_secs(90))?;
    if !run.status.success() {
        return Err(format!("vizattach record failed: {}", run.describe()));
    }
    drop(program);
    let trace = check_trace(&json, &work.interpreter.root, None)?;
    let mut problems = Vec::new();
    let named = |qual: &str| -> Vec<&Slice> { trace.slices.iter().filter(|s| s.qual == qual).collect() };
    let span = |v: &[&Slice]| -> f64 {
        v.iter().map(|s| s.end()).fold(0.0, f64::max) - v.iter().map(|s| s.ts).fold(f64::MAX, f64::min)
    };
    // (timestamps in microseconds)
    let capture = SECONDS * 1e6;
    for (qual, period_ms) in [("Condition.wait", 20.0), ("nap", 10.0), ("select_once", 15.0)] {
        let v = named(qual);
        let longest_inner = v.iter().skip(1).take(v.len().saturating_sub(2)).map(|s| s.dur).fold(0.0, f64::max);
        eprintln!(
            "     {}: {} {qual} slices, longest between the first and last {:.1} ms",
            interp.name,
            v.len(),
            longest_inner / 1e3
        );
        // a slice per call: about capture / period of them, none as long as 3 periods
        // (one that sleeps through a loaded moment may last 2)
        let expected = capture / (period_ms * 1e3);
        if (v.len() as f64) < expected / 2.0 {
            problems.push(format!("{qual}: {} slices in {SECONDS} s, a call every {period_ms} ms", v.len()));
        }
        if longest_inner >= 3.0 * period_ms * 1e3 {
            problems.push(format!("{qual}: a slice of {:.1} ms, calls last {period_ms} ms", longest_inner / 1e3));
        }
    }
    for qual in ["dozer", "napper", "waiter", "selector"] {
        let v = named(qual);
        if v.len() != 1 || span(&v) < capture * 0.9 {
            problems.push(format!(
                "{qual} (one call through the capture): {} slices, {:?}",
                v.len(),
                v.iter().map(|s| (s.ts as i64, s.dur as i64)).collect::<Vec<_>>()
            ));
        }
    }
    let told = &trace.meta["calls_told_apart"]["wake"];
    eprintln!("     {}: calls told apart by a wake: {told}", interp.name);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

#[test]
fn a_thread_that_woke_in_the_same_frames_made_new_calls_above_its_innermost_loop() {
    let _serial = serial();
    let Some(targets) = host_targets() else {
        return;
    };
    for_each_interpreter(&targets, 1, check_wakes);
}
