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
//!   capture to its end;
//! - a thread stopped by the sampler (src/pausing.rs) and let go, at once or a tick
//!   later, is not taken for one that woke (timeline_forever.py: each `cycle()` holds
//!   one `step_sleep` and one `step_busy`, and no call is told apart by a wake).
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
    let trace = record_fixture(&work, "wake_churn.py", &["30"], SECONDS, "wakes.json")?;
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

/// timeline_forever.py recorded with every thread read stopped every 5th tick, and the
/// wait for each stop cut to nothing, so that about half the threads stop only after
/// the sampler gave up and are let go a tick later. A stop moves the thread's switch-in
/// count twice: when it stops and when it runs again after being let go, which may come
/// after a tick that found it asleep where it was. Before the fix (src/activity.rs,
/// `Touch`) every capture split `step_sleep` and `cycle` at stops: 11-20 cycles in 2.5 s.
/// The sampler runs at nice 0 here: a sleeping thread the interrupt wakes on the
/// sampler's own CPU cannot preempt a sampler at nice -10, so with no wait at all almost
/// no stop came in time (0-5 of ~490, against 12-31 at nice 0), and the capture proved
/// nothing about stops that do.
fn check_stops_are_not_wakes(interp: &Interpreter) -> Result<(), String> {
    let mut target = Target::start(interp, "timeline_forever.py")?;
    let ready = target.wait_json("expected.json", Duration::from_secs(60))?;
    let fixture = target.target_path("timeline_forever.py").display().to_string();
    let json = target.host_path("stopped.json");
    let mut cmd = std::process::Command::new(VIZATTACH);
    cmd.args(["record", "-q", "--rate", "1000", "--duration", "2500ms", "--pause-budget", "100"])
        .args(["--pause-every", "5", "--pause-wait-us", "0", "--sampler-nice", "0", "--pid"])
        .arg(target.pid.to_string())
        .arg("-o")
        .arg(&json);
    let run = run_with_timeout(cmd, Duration::from_secs(90))?;
    if !run.status.success() {
        return Err(format!("vizattach record failed: {}", run.describe()));
    }
    let trace = check_trace(&json, &interp.root, Some(&fixture))?;
    let meta = &trace.meta;
    let (paused, moved) =
        (meta["paused_samples"].as_u64().unwrap_or(0), meta["lost_samples"]["moved"].as_u64().unwrap_or(0));
    let wakes = meta["calls_told_apart"]["wake"].as_u64().unwrap_or(u64::MAX);
    let tree = trace.file_tree(&fixture);
    let (bad, complete) = tree.cycles_not_holding_their_steps(ready["main_tid"].as_i64().unwrap_or(0));
    eprintln!(
        "     {}: {complete} cycles, {paused} samples read stopped, {moved} lost to stops not made in time, {wakes} calls told apart by a wake",
        interp.name
    );
    let mut problems = Vec::new();
    if paused == 0 || moved == 0 {
        problems
            .push(format!("the capture did not exercise both kinds of stop: {paused} read stopped, {moved} given up"));
    }
    if complete < 8 {
        problems.push(format!("only {complete} complete cycle() slices in 2.5 s of 150 ms cycles"));
    }
    if wakes != 0 {
        problems.push(format!("{wakes} calls told apart by a wake, where no call sleeps twice in the same frames"));
    }
    if !bad.is_empty() {
        let kept = failed_trace_path(interp, "stops-are-not-wakes");
        let _ = std::fs::copy(&json, &kept);
        problems.push(format!(
            "{} cycles split (trace kept at {}):\n{}",
            bad.len(),
            kept.display(),
            bad[..bad.len().min(3)].join("\n")
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

#[test]
fn a_thread_the_sampler_stopped_did_not_wake() {
    let _serial = serial();
    let Some(targets) = host_targets() else {
        return;
    };
    for_each_interpreter(&targets, 1, check_stops_are_not_wakes);
}

#[test]
fn a_thread_that_woke_in_the_same_frames_made_new_calls_above_its_innermost_loop() {
    let _serial = serial();
    let Some(targets) = host_targets() else {
        return;
    };
    for_each_interpreter(&targets, 1, check_wakes);
}
