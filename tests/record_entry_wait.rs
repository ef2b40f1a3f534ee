//! `vizattach record` of a thread that waits for the GIL at the RESUME of the function it
//! calls (tests/fixtures/entry_wait.py). Whether such a wait is part of the call depends
//! on the version, as tracers see it (docs/ARCHITECTURE.md, "Frames that have not
//! started"): on 3.12 the call is reported before the wait, and the timeline shows
//! `entered` through it: waits of the switch interval (5 ms), dozens in 2 s; on 3.11 and
//! 3.13+ the wait comes first, and `entered`, whose body is one instruction and a
//! return, shows only when a sample falls inside that body: a slice of about one
//! interval, never three (each call gets another argument, so samples of two calls are
//! never one slice). Every 3.11+ interpreter of the manifest.
//!
//!     cargo test --release --test record_entry_wait -- --nocapture

mod common;

use common::recording::*;
use common::*;

const SECONDS: f64 = 2.0;

fn check(interp: &Interpreter) -> Result<(), String> {
    let work = WorkDir::new(interp)?;
    let trace = record_fixture(&work, "entry_wait.py", &["30"], SECONDS, "entry_wait.json")?;
    let entered: Vec<f64> = trace.slices.iter().filter(|s| s.qual == "entered").map(|s| s.dur).collect();
    let long = entered.iter().filter(|&&d| d >= 3e3).count();
    let total_ms = entered.iter().sum::<f64>() / 1e3;
    let in_call = interp.version_tuple() >= (3, 12, 0) && interp.version_tuple() < (3, 13, 0);
    eprintln!(
        "     {}: {} entered slices, {long} of 3 ms or more, {total_ms:.0} ms in all (waits at its RESUME {})",
        interp.name,
        entered.len(),
        if in_call { "shown" } else { "not shown" }
    );
    if in_call && long < 20 {
        return Err(format!("{long} entered slices of 3 ms or more: its GIL waits at RESUME are not shown"));
    }
    if !in_call && long > 2 {
        return Err(format!("{long} entered slices of 3 ms or more: a wait before the call was shown as the call"));
    }
    Ok(())
}

#[test]
fn a_wait_at_a_resume_is_in_the_call_only_where_tracers_put_it() {
    let _serial = serial();
    let Some(targets) = record_targets() else {
        return;
    };
    let targets: Vec<Interpreter> = targets.into_iter().filter(|i| i.version_tuple() >= (3, 11, 0)).collect();
    for_each_interpreter(&targets, 1, check);
}
