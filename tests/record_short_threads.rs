//! `vizattach record` of threads that live about a millisecond each
//! (tests/fixtures/short_named.py): each one sampled while it runs Python is named by
//! its outermost frame, `Thread._bootstrap`, whose `self` is its Thread object
//! (src/python/thread_names.rs, `bootstrap_name`), not left as "thread N" because it was
//! gone before `threading._active` was looked up again. Every interpreter of the
//! manifest: 93-100 % of the threads seen running `work` named (2026-11-30), against 53 %
//! and 71 % before (host 3.11, pyenv 3.13). The frame's `self` is taken from the tick's
//! copy, since a thread that exits before the end of the tick takes its data stack
//! with it (reading the frame at the end of the tick named 62-86 %).
//!
//!     cargo test --release --test record_short_threads -- --nocapture

mod common;

use common::recording::*;
use common::*;

const SECONDS: f64 = 2.0;

fn check(interp: &Interpreter) -> Result<(), String> {
    let work = WorkDir::new(interp)?;
    let trace = record_fixture(&work, "short_named.py", &["30"], SECONDS, "short_named.json")?;
    // threads seen running `work` (their name was set before they started)
    let mut seen: BTreeSet<i64> = BTreeSet::new();
    for s in trace.slices.iter().filter(|s| s.qual == "work") {
        seen.insert(s.tid);
    }
    let named = seen.iter().filter(|tid| trace.thread_names.get(tid).is_some_and(|n| n.starts_with("short-"))).count();
    let others: Vec<String> = seen
        .iter()
        .filter_map(|tid| trace.thread_names.get(tid))
        .filter(|n| !n.starts_with("short-"))
        .take(5)
        .cloned()
        .collect();
    eprintln!(
        "     {}: {named} of {} threads seen in `work` named by their Thread ({others:?})",
        interp.name,
        seen.len()
    );
    if seen.len() < 10 {
        return Err(format!("only {} short threads seen running `work` in {SECONDS} s", seen.len()));
    }
    if (named as f64) < 0.85 * seen.len() as f64 {
        return Err(format!("only {named} of {} short threads named by their Thread: {others:?}", seen.len()));
    }
    Ok(())
}

#[test]
fn a_thread_that_lives_a_millisecond_is_named_by_its_first_frame() {
    let _serial = serial();
    let Some(targets) = record_targets() else {
        return;
    };
    for_each_interpreter(&targets, 1, check);
}
