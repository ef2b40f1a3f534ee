//! `vizattach record` of threads asleep while another holds the GIL
//! (tests/fixtures/gil_sleepers.py). The sampler spares such a thread its schedstat read
//! while the GIL's switch count proves it has not taken the GIL (src/activity.rs,
//! `replays`); checked on every supported interpreter, since the count's place comes
//! from each version's table:
//! - most samples of the six waiters are proved so (`asleep_by_gil_samples`), and each
//!   waiter's 31 frames are each one slice through the capture;
//! - `ticker`, which wakes every 30 ms for 3 ms of `tock`, has its tocks: a thread that
//!   woke and took the GIL is read, not taken for still asleep.
//!
//!     cargo test --release --test record_sleepers -- --nocapture

mod common;

use common::recording::*;
use common::trace::*;
use common::*;

const SECONDS: f64 = 1.5;

fn check_sleepers(interp: &Interpreter) -> Result<(), String> {
    let work = WorkDir::new(interp)?;
    let trace = record_fixture(&work, "gil_sleepers.py", &["60"], SECONDS, "sleepers.json")?;
    let mut problems = Vec::new();
    let tids_named = |prefix: &str| -> Vec<i64> {
        trace.thread_names.iter().filter(|(_, n)| n.starts_with(prefix)).map(|(&t, _)| t).collect()
    };
    // (timestamps in microseconds)
    let capture = SECONDS * 1e6;
    let waiters = tids_named("waiter");
    if waiters.len() != 6 {
        problems.push(format!("{} waiter threads named in the trace, 6 run", waiters.len()));
    }
    for &tid in &waiters {
        let deep: Vec<&Slice> = trace.slices.iter().filter(|s| s.tid == tid && s.qual == "deep").collect();
        let short = deep.iter().filter(|s| s.dur < capture * 0.9).count();
        if deep.len() != 31 || short > 0 {
            problems.push(format!(
                "waiter {tid}: {} deep slices (31 frames), {short} shorter than the capture",
                deep.len()
            ));
        }
    }
    let meta = &trace.meta;
    let (samples, by_gil) =
        (meta["samples"].as_u64().unwrap_or(0), meta["asleep_by_gil_samples"].as_u64().unwrap_or(0));
    // six waiters at every sample; at most 1 in 10 is a real read (SLEEPER_CHECK_NS), and
    // the ticker's and main thread's takes of the GIL cost a few more
    if by_gil * 2 < samples * 6 {
        problems.push(format!("{by_gil} thread samples proved asleep by the GIL in {samples} samples of 6 waiters"));
    }
    let tocks = trace.slices.iter().filter(|s| s.qual == "tock").count();
    // one every 30 ms (plus up to a switch interval's wait for the GIL): 40-50 in the
    // capture; half of them at least, whatever the machine's load
    let expected = capture / 35e3;
    if (tocks as f64) < expected / 2.0 {
        problems.push(format!("{tocks} tock slices in {SECONDS} s, one every 30-35 ms"));
    }
    eprintln!(
        "     {}: {by_gil} thread samples proved asleep by the GIL in {samples} samples; {tocks} tocks",
        interp.name
    );
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

#[test]
fn a_sleeping_thread_the_gil_proves_unmoved_is_not_read_and_one_that_woke_is() {
    let _serial = serial();
    let Some(targets) = record_targets() else {
        return;
    };
    for_each_interpreter(&targets, 2, check_sleepers);
}
