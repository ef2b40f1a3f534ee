//! `vizattach record` of a thread that waits for the GIL at the RESUME of the function it
//! calls (tests/fixtures/entry_wait.py). Whether such a wait is part of the call depends
//! on the version, as tracers see it (docs/ARCHITECTURE.md, "Frames that have not
//! started"): on 3.12 the call is reported before the wait, and the timeline shows
//! `entered` through it: waits of the switch interval (5 ms), dozens in 2 s; on 3.11 and
//! 3.13+ the wait comes first, and `entered`, whose body is one instruction and a
//! return, shows only when a sample falls inside that body: a slice of about one
//! interval, never three (each call gets another argument, so samples of two calls are
//! never one slice). Under cProfile (a tracer in C), 3.11 checks for the wait twice,
//! before the call event and after it, and a wait at the second check is in the call:
//! shown (the event made the frame's object, which tells the two checks apart). Every
//! 3.11+ interpreter of the manifest.
//!
//!     cargo test --release --test record_entry_wait -- --nocapture

mod common;

use common::recording::*;
use common::*;

const SECONDS: f64 = 2.0;

fn check(interp: &Interpreter) -> Result<(), String> {
    let work = WorkDir::new(interp)?;
    let v = interp.version_tuple();
    // unprofiled, the wait is in the call only on 3.12; under a tracer in C (cProfile),
    // on 3.11 too when it comes at the check after the call event
    // (a statically linked interpreter cannot load the system's _lsprof module)
    let has_cprofile = python_command(interp)
        .args(["-c", "import cProfile"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    for profiled in [false, true] {
        if profiled && !has_cprofile {
            eprintln!("     {}: no cProfile, the profiled run is skipped", interp.name);
            continue;
        }
        let args: &[&str] = if profiled { &["30", "profiled"] } else { &["30"] };
        let trace = record_fixture(&work, "entry_wait.py", args, SECONDS, "entry_wait.json")?;
        let entered: Vec<f64> = trace.slices.iter().filter(|s| s.qual == "entered").map(|s| s.dur).collect();
        let long = entered.iter().filter(|&&d| d >= 3e3).count();
        let total_ms = entered.iter().sum::<f64>() / 1e3;
        let in_call = ((3, 12, 0)..(3, 13, 0)).contains(&v);
        let some_in_call = profiled && ((3, 11, 0)..(3, 12, 0)).contains(&v);
        eprintln!(
            "     {}{}: {} entered slices, {long} of 3 ms or more, {total_ms:.0} ms in all (waits at its RESUME {})",
            interp.name,
            if profiled { " under cProfile" } else { "" },
            entered.len(),
            if in_call {
                "shown"
            } else if some_in_call {
                "shown after the call event"
            } else {
                "not shown"
            }
        );
        let what = if profiled { " under cProfile" } else { "" };
        if in_call && long < 20 {
            return Err(format!("{long} entered slices of 3 ms or more{what}: its GIL waits at RESUME are not shown"));
        }
        if some_in_call && long < 5 {
            return Err(format!(
                "{long} entered slices of 3 ms or more{what}: its waits after the call event are not shown"
            ));
        }
        if !in_call && !some_in_call && long > 2 {
            return Err(format!(
                "{long} entered slices of 3 ms or more{what}: a wait before the call was shown as the call"
            ));
        }
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
