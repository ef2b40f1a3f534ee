//! `vizattach record` of back-to-back calls that only a local slot tells apart
//! (tests/fixtures/back_to_back.py): two samples of one frame at one offset are two calls
//! when a slot that no way from that offset back to it writes holds another object
//! (src/python/paths.rs, `kept_at`; 3.11+). Checked on the host 3.11 and the newest 3.12+
//! interpreter:
//! - `step`, called again and again from one call site, computing ~4 ms in one C call
//!   after making a new object: one slice per call, not a merged one;
//! - `looper`, one call that computes in the same C call in a loop writing a new object
//!   each time round, and `stepper`: one slice each through the capture.
//!
//!     cargo test --release --test record_calls -- --nocapture

mod common;

use common::recording::*;
use common::trace::*;
use common::*;

const SECONDS: f64 = 2.0;

fn check_calls(interp: &Interpreter) -> Result<(), String> {
    let work = WorkDir::new(interp)?;
    let trace = record_fixture(&work, "back_to_back.py", &["60"], SECONDS, "calls.json")?;
    let mut problems = Vec::new();
    let named = |qual: &str| -> Vec<&Slice> { trace.slices.iter().filter(|s| s.qual == qual).collect() };
    // (timestamps in microseconds)
    let capture = SECONDS * 1e6;
    let steps = named("step");
    let longest = steps.iter().map(|s| s.dur).fold(0.0, f64::max);
    // Each call lasts about 4 ms of CPU, twice that when the two threads share a CPU;
    // merged calls make one slice of the whole capture. A call whose slot change the
    // 4 bits of its object do not show (1 in 16) stays merged with the next.
    if (steps.len() as f64) < capture / 20e3 {
        problems.push(format!("{} step slices in {SECONDS} s, a call every 4-8 ms", steps.len()));
    }
    if longest > capture / 4.0 {
        problems.push(format!("a step slice of {:.1} ms: calls merged", longest / 1e3));
    }
    for qual in ["looper", "stepper"] {
        let v = named(qual);
        if v.len() != 1 || v[0].dur < capture * 0.9 {
            problems.push(format!(
                "{qual} (one call through the capture): {} slices, {:?}",
                v.len(),
                v.iter().map(|s| (s.ts as i64, s.dur as i64)).collect::<Vec<_>>()
            ));
        }
    }
    let told = &trace.meta["calls_told_apart"]["locals"];
    eprintln!(
        "     {}: {} step slices (longest {:.1} ms); calls told apart by locals: {told}",
        interp.name,
        steps.len(),
        longest / 1e3
    );
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

#[test]
fn back_to_back_calls_a_local_slot_tells_apart_are_split_and_a_loop_is_not() {
    let _serial = serial();
    let Some(targets) = host_targets() else {
        return;
    };
    for_each_interpreter(&targets, 1, check_calls);
}
