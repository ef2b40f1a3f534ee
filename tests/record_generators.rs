//! `vizattach record` of a program that makes new generators all the time and resumes
//! them every way CPython does (tests/fixtures/gen_churn.py): a sampler keeps meeting
//! generator frames the tick's copy lacks, read after they yielded, and generator
//! objects freed and made again at the same addresses. Every sampled stack must be one
//! the program can have (before the checks of src/python/stack.rs and
//! src/python/resume.rs, up to 2.5 % of them were not, on 3.14), and at most 1 % of
//! samples may be lost (src/pausing.rs stops the thread where quick re-reads tear).
//!
//!     cargo test --release --test record_generators -- --nocapture

mod common;

use common::recording::*;
use common::*;
use std::time::Duration;

/// The stacks under `driver` the fixture can have, root first: every prefix of these.
const CHAINS: [&[&str]; 3] = [&["leaf"], &["delegate", "wrapper", "inner", "leaf"], &["through_c", "leaf"]];

/// The function name of a collapsed-stack frame ("name (file:line)").
fn function(frame: &str) -> &str {
    frame.split(" (").next().unwrap_or(frame)
}

fn possible(under_driver: &[&str]) -> bool {
    CHAINS.iter().any(|chain| chain.starts_with(under_driver))
}

fn check_generators(interp: &Interpreter) -> Result<(), String> {
    let work = WorkDir::new(interp)?;
    let collapsed = work.host_path("gen.collapsed");
    let json = work.host_path("gen.json");
    // Attached by pid, not launched: only then may vizattach stop the thread for a read
    // when its quick re-reads tear (src/pausing.rs), and this program tears them often.
    let program = start_until_ready(&work, "gen_churn.py", &["6"])?;
    let mut cmd = std::process::Command::new(VIZATTACH);
    cmd.args(["record", "-q", "--rate", "2000", "--duration", "3s", "--pid", &program.pid().to_string(), "-o"])
        .arg(&collapsed)
        .arg("-o")
        .arg(&json);
    let run = run_with_timeout(cmd, Duration::from_secs(90))?;
    if !run.status.success() {
        return Err(format!("vizattach record failed: {}", run.describe()));
    }
    drop(program);
    let meta: Value = serde_json::from_str(&fs::read_to_string(&json).map_err(|e| e.to_string())?)
        .map_err(|e| format!("gen.json: {e}"))?;
    let meta = &meta["viztracer_metadata"];
    let inferred = meta["inferred_samples"].as_u64().ok_or("no inferred_samples in the metadata")?;
    let mut problems = Vec::new();
    let (mut in_driver, mut in_generators, mut wrong) = (0u64, 0u64, 0u64);
    let text = fs::read_to_string(&collapsed).map_err(|e| e.to_string())?;
    for line in text.lines() {
        let (stack, count) = line.rsplit_once(' ').ok_or(format!("bad line {line:?}"))?;
        let count: u64 = count.parse().map_err(|_| format!("bad count in {line:?}"))?;
        let frames: Vec<&str> = stack.split(';').skip(1).map(function).collect();
        let Some(d) = frames.iter().position(|&f| f == "driver") else {
            continue; // start-up (launch mode records the imports) and exit
        };
        if frames[..d] != ["<module>", "main"] {
            problems.push(format!("{count} samples of {frames:?}: driver called from elsewhere"));
        }
        in_driver += count;
        if !possible(&frames[d + 1..]) {
            wrong += count;
            eprintln!("     {}: {count} samples of a stack the program cannot have: {:?}", interp.name, &frames[d..]);
        }
        if frames[d + 1..].iter().any(|f| ["inner", "wrapper", "delegate", "through_c"].contains(f)) {
            in_generators += count;
        }
    }
    let lost = meta["lost_samples"]["total"].as_u64().unwrap_or(0);
    let thread_samples = meta["thread_samples"].as_u64().unwrap_or(0);
    let paused = meta["paused_samples"].as_u64().unwrap_or(0);
    eprintln!(
        "     {}: {in_driver} samples in driver, {in_generators} in its generators, {inferred} with generator callers inferred, {paused} read stopped ({} ms), lost {lost} of {thread_samples}",
        interp.name, meta["stopped_ms"]
    );
    // The target: at most 1 % of thread samples lost, with threads stopped for a
    // read where quick re-reads tear (within the default budget of 5 % of the time).
    if lost * 100 > thread_samples {
        problems.push(format!("lost {lost} of {thread_samples} thread samples ({})", meta["lost_samples"]));
    }
    if !meta["pausing"].as_str().unwrap_or("").starts_with("on") {
        problems.push(format!("threads could not be stopped: {}", meta["pausing"]));
    }
    // Two known ways still make a few impossible stacks (docs/ARCHITECTURE.md,
    // "Generators read too late"): a thread that returns and calls again while its stack
    // is copied comes back to the same top frame under another chain, through a
    // generator made again at a freed one's address (up to 0.15 % here); and on 3.12 a
    // chain through a C-stack entry frame whose slot other C code has reused shows it as
    // a Python frame, `<interpreter trampoline>` (up to 0.3 % in one CI run). The bound
    // is the phantom target, 1 %; the first inference made 2.5 %.
    if wrong * 100 > in_driver {
        problems.push(format!("{wrong} of {in_driver} samples in driver have a stack the program cannot have"));
    }
    if in_driver < 1000 {
        problems.push(format!("only {in_driver} samples in driver (3 s at 2 kHz)"));
    }
    if in_generators * 4 < in_driver {
        problems.push(format!("only {in_generators} of {in_driver} samples in the generators"));
    }
    // 3.11 has no saved stack pointer to name a generator's callers by
    let (major, minor, _) = interp.version_tuple();
    if (major, minor) < (3, 12) && inferred > 0 {
        problems.push(format!("{inferred} samples inferred on a version without the fields for it"));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

#[test]
fn generators_read_after_they_yielded_give_only_possible_stacks() {
    let _serial = serial();
    let Some(targets) = record_targets() else {
        return;
    };
    for_each_interpreter(&targets, WORKERS, check_generators);
}
