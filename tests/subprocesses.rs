//! `dump --subprocesses` and several `--pid`s on a real process tree: a master with a
//! multiprocessing.Pool of three workers and a non-Python child (`sleep`), on the host
//! 3.11 and a 3.12+ interpreter. Every worker is dumped with its own stack, the `sleep`
//! is skipped and named.

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Duration;

/// Kills the tree's other processes (the Pool's workers outlive a killed master).
struct Reap(Vec<i64>);
impl Drop for Reap {
    fn drop(&mut self) {
        for &p in &self.0 {
            // SAFETY: kill(2) on processes this test's fixture started
            unsafe { libc::kill(p as i32, libc::SIGKILL) };
        }
    }
}

fn frames_of(p: &Value) -> BTreeSet<String> {
    p["threads"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|t| t["frames"].as_array().into_iter().flatten())
        .filter_map(|f| f["function"].as_str().map(String::from))
        .collect()
}

fn tree(interp: &Interpreter) -> Result<(), String> {
    let mut target = Target::start(interp, "pool_tree.py")?;
    let ready = target.wait_json("expected.json", Duration::from_secs(60))?;
    let workers: Vec<i64> =
        ready["workers"].as_array().ok_or("no workers")?.iter().filter_map(|w| w.as_i64()).collect();
    let sleep = ready["sleep"].as_i64().ok_or("no sleep pid")?;
    let _reap = Reap(workers.iter().copied().chain([sleep]).collect());
    let master = target.pid.to_string();

    let out = run_vizattach(&["dump", "--pid", &master, "--subprocesses", "--json"])?;
    if !out.status.success() {
        return Err(format!("dump --subprocesses failed: {}", out.describe()));
    }
    let v: Value = serde_json::from_str(&out.stdout).map_err(|e| format!("not JSON ({e}): {}", out.stdout))?;
    let procs = v["processes"].as_array().ok_or("no processes")?;
    let pids: BTreeSet<i64> = procs.iter().filter_map(|p| p["pid"].as_i64()).collect();
    let want: BTreeSet<i64> = workers.iter().copied().chain([target.pid as i64]).collect();
    // (3.12+ may also run multiprocessing's resource tracker, a Python child of its own)
    if !want.is_subset(&pids) {
        return Err(format!("dumped {pids:?}, the tree is {want:?}"));
    }
    for p in procs {
        let pid = p["pid"].as_i64().unwrap_or(0);
        let frames = frames_of(p);
        let expect = if pid == target.pid as i64 { "master_wait" } else { "pool_hold" };
        if want.contains(&pid) && !frames.contains(expect) {
            return Err(format!("process {pid}: no {expect} in {frames:?}"));
        }
    }
    let skipped = v["skipped"].as_array().ok_or("no skipped")?;
    if !skipped.iter().any(|s| s["pid"].as_i64() == Some(sleep) && s["why"] == "not Python") {
        return Err(format!("the sleep ({sleep}) is not listed as skipped: {skipped:?}"));
    }
    if !out.stderr.contains("child process") || !out.stderr.contains(&format!("{sleep} (sleep, not Python)")) {
        return Err(format!("stderr does not say what was skipped: {}", out.stderr));
    }

    // several --pid: each of them, and nothing else
    let (a, b) = (workers[0].to_string(), workers[1].to_string());
    let out = run_vizattach(&["dump", "--pid", &a, "--pid", &b])?;
    if !out.status.success() {
        return Err(format!("dump --pid --pid failed: {}", out.describe()));
    }
    let headers: Vec<&str> = out.stdout.lines().filter(|l| l.starts_with("Process ")).collect();
    if headers.len() != 2
        || !headers[0].starts_with(&format!("Process {a}:"))
        || !headers[1].starts_with(&format!("Process {b}:"))
    {
        return Err(format!("dump of two pids printed {headers:?}"));
    }
    // a non-Python pid named by the user is an error, as for one pid
    let out = run_vizattach(&["dump", "--pid", &a, "--pid", &sleep.to_string()])?;
    if out.status.success() || !out.stderr.contains("is not a Python process") {
        return Err(format!("dump of a non-Python --pid: {}", out.describe()));
    }
    eprintln!("  {}: {} processes dumped, sleep skipped", interp.name, pids.len());
    Ok(())
}

#[test]
fn dump_subprocesses_shows_every_pool_worker_and_skips_the_shell_child() {
    let Some(targets) = host_targets() else { return };
    for_each_interpreter(&targets, 2, tree);
}
