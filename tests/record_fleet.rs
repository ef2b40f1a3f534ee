//! `vizattach record` of several processes into one trace: `--pid` given twice (two
//! interpreters, one Chrome JSON and one Perfetto trace, each process's threads and exact
//! slice names under its own pid and name), and `--subprocesses` on a parent whose
//! fork and spawn workers come and go during the capture, beside a non-Python child.

mod common;

use common::recording::RATE;
use common::trace::*;
use common::*;
use std::collections::BTreeSet;
use std::time::Duration;

/// The line of `def NAME(` in a fixture: slice names carry the first line.
fn def_line(fixture: &str, name: &str) -> i64 {
    let text = fs::read_to_string(Path::new(FIXTURES).join(fixture)).unwrap_or_default();
    let pat = format!("def {name}(");
    text.lines().position(|l| l.starts_with(&pat)).map(|i| i as i64 + 1).unwrap_or(-1)
}

fn slice_name(func: &str, file: &str, fixture: &str) -> String {
    format!("{func} ({file}:{})", def_line(fixture, func))
}

/// Kills processes a fixture started that outlive it.
struct Reap(Vec<i64>);
impl Drop for Reap {
    fn drop(&mut self) {
        for &p in &self.0 {
            // SAFETY: kill(2) on processes this test's fixture started
            unsafe { libc::kill(p as i32, libc::SIGKILL) };
        }
    }
}

// ---------------------------------------------------------------------------------------
// Two --pid
// ---------------------------------------------------------------------------------------

#[test]
fn two_pids_one_trace_each_process_on_its_own_track() {
    let Some(targets) = host_targets() else { return };
    if targets.is_empty() {
        return missing_prerequisite("no host interpreter in the manifest");
    }
    // two interpreters where there are two (one trace may hold two Python versions)
    let (ia, ib) = (&targets[0], targets.last().unwrap());
    if let Err(e) = two_pids(ia, ib) {
        panic!("{} + {}: {e}", ia.name, ib.name);
    }
}

fn two_pids(ia: &Interpreter, ib: &Interpreter) -> Result<(), String> {
    let mut a = Target::start(ia, "fleet_pair.py")?;
    let mut b = Target::start(ib, "fleet_pair.py")?;
    let ready_a = a.wait_json("expected.json", Duration::from_secs(60))?;
    let ready_b = b.wait_json("expected.json", Duration::from_secs(60))?;
    let json = a.host_path("two.json");
    let pftrace = a.host_path("two.pftrace");
    let (pa, pb) = (a.pid.to_string(), b.pid.to_string());
    let out = run_vizattach(&[
        "record",
        "--pid",
        &pa,
        "--pid",
        &pb,
        "--duration",
        "2s",
        "--rate",
        &RATE.to_string(),
        "-o",
        json.to_str().unwrap(),
        "-o",
        pftrace.to_str().unwrap(),
    ])?;
    if !out.status.success() {
        return Err(format!("record of two pids failed: {}", out.describe()));
    }
    let trace = check_trace_of(&json, Path::new("/"), None, Some(2))?;

    // Each process: its name is its command line, its threads and slices are its own.
    let mut expected: BTreeSet<(i64, i64, String)> = BTreeSet::new();
    for (t, ready) in [(&a, &ready_a), (&b, &ready_b)] {
        let pid = t.pid as i64;
        let file = ready["file"].as_str().ok_or("no file")?.to_string();
        let name = trace.processes.get(&pid).ok_or(format!("no process_name for {pid}: {:?}", trace.processes))?;
        if !name.contains(&file) {
            return Err(format!("process {pid} is named {name:?}, not by its command line (running {file})"));
        }
        let (main, helper) = (ready["main_tid"].as_i64().unwrap_or(-1), ready["helper_tid"].as_i64().unwrap_or(-1));
        for (tid, tname) in [(main, "MainThread"), (helper, "helper")] {
            if trace.thread_names.get(&tid).map(String::as_str) != Some(tname) {
                return Err(format!("thread {tid} of {pid} is named {:?}, not {tname}", trace.thread_names.get(&tid)));
            }
        }
        let want = [(main, "lead_loop"), (main, "lead_step"), (helper, "helper_loop"), (helper, "helper_step")];
        for (tid, func) in want {
            let exact = slice_name(func, &file, "fleet_pair.py");
            if !trace.slices.iter().any(|s| s.pid == pid && s.tid == tid && s.name == exact) {
                return Err(format!("no {exact:?} on thread {tid} of process {pid}"));
            }
            expected.insert((pid, tid, exact));
        }
        // nothing of this process under another pid, nothing of another under this one
        for s in trace.slices.iter().filter(|s| s.file == file || s.tid == main || s.tid == helper) {
            if s.pid != pid || !(s.tid == main || s.tid == helper) {
                return Err(format!("{} (pid {}, tid {}) belongs to process {pid}", s.name, s.pid, s.tid));
            }
        }
    }
    // 2 s of 50 ms steps, each told apart by its argument: about 40 in each process
    for t in [&a, &b] {
        let steps = trace.slices.iter().filter(|s| s.pid == t.pid as i64 && s.qual == "lead_step").count();
        if steps < 25 {
            return Err(format!("only {steps} lead_step slices in process {} over 2 s", t.pid));
        }
    }
    let meta_pids: BTreeSet<i64> =
        trace.meta["processes"].as_array().into_iter().flatten().filter_map(|p| p["pid"].as_i64()).collect();
    if meta_pids != [a.pid as i64, b.pid as i64].into_iter().collect() {
        return Err(format!("viztracer_metadata.processes is {}", trace.meta["processes"]));
    }

    // The same capture in Perfetto's own trace processor: a process per pid, named by
    // its command line, and the same (pid, tid, slice) under it.
    let Some(dist) = tp::web_dist() else { return Ok(()) };
    let r = tp::query(
        dist,
        &pftrace,
        &[
            "select name, idx, severity, value from stats where severity in ('error', 'data_loss') and value > 0",
            "select p.pid, t.tid, s.name from slice s join thread_track tt on s.track_id = tt.id \
             join thread t using (utid) join process p using (upid)",
            &format!("select pid, name from process where pid in ({pa}, {pb})"),
            "select t.tid, t.name, p.pid from thread t join process p using (upid)",
        ],
    )?;
    if !r[0].is_empty() {
        return Err(format!("trace processor stats report errors: {:?}", r[0]));
    }
    let tp_slices: BTreeSet<(i64, i64, String)> = r[1]
        .iter()
        .map(|row| (row[0].as_i64().unwrap_or(0), row[1].as_i64().unwrap_or(0), row[2].as_str().unwrap_or("").into()))
        .collect();
    let json_slices: BTreeSet<(i64, i64, String)> =
        trace.slices.iter().map(|s| (s.pid, s.tid, s.name.clone())).collect();
    if tp_slices != json_slices {
        return Err(format!(
            "the .pftrace and the .json differ: only in pftrace {:?}; only in json {:?}",
            tp_slices.difference(&json_slices).take(5).collect::<Vec<_>>(),
            json_slices.difference(&tp_slices).take(5).collect::<Vec<_>>()
        ));
    }
    if !expected.is_subset(&tp_slices) {
        return Err(format!("the trace processor lacks {:?}", expected.difference(&tp_slices).collect::<Vec<_>>()));
    }
    for row in &r[2] {
        let (pid, name) = (row[0].as_i64().unwrap_or(0), row[1].as_str().unwrap_or(""));
        if trace.processes.get(&pid).map(String::as_str) != Some(name) {
            return Err(format!(
                "process {pid} is {name:?} in the trace processor, {:?} in JSON",
                trace.processes.get(&pid)
            ));
        }
    }
    if r[2].len() != 2 {
        return Err(format!("the trace processor has processes {:?}", r[2]));
    }
    for (t, ready) in [(&a, &ready_a), (&b, &ready_b)] {
        for (key, tname) in [("main_tid", "MainThread"), ("helper_tid", "helper")] {
            let tid = ready[key].as_i64().unwrap_or(-1);
            let found = r[3].iter().any(|row| {
                row[0].as_i64() == Some(tid) && row[1].as_str() == Some(tname) && row[2].as_i64() == Some(t.pid as i64)
            });
            if !found {
                return Err(format!("thread {tid} ({tname}) is not under process {} in the trace processor", t.pid));
            }
        }
    }
    eprintln!(
        "  {} + {}: {} distinct (pid, tid, slice) in 2 processes, JSON and Perfetto agree",
        ia.name,
        ib.name,
        json_slices.len()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// --subprocesses
// ---------------------------------------------------------------------------------------

#[test]
fn subprocesses_follows_workers_born_and_replaced_during_the_capture() {
    let Some(targets) = host_targets() else { return };
    for_each_interpreter(&targets, 1, churn);
}

fn churn(interp: &Interpreter) -> Result<(), String> {
    let mut parent = Target::start(interp, "fleet_tree.py")?;
    let ready = parent.wait_json("expected.json", Duration::from_secs(60))?;
    let file = ready["file"].as_str().ok_or("no file")?.to_string();
    let out = parent.host_path("tree.json");
    let stderr_file = parent.host_path("vizattach-stderr.txt");
    // the workers start once the capture runs
    let mut viz = common::recording::start_recording_tree(parent.pid as i64, "6s", &out, &stderr_file)?;
    fs::write(parent.host_path("expected.json.go"), b"go").map_err(|e| e.to_string())?;
    let children = parent.wait_json("expected.json.children", Duration::from_secs(60))?;
    let sleep = children["sleep"].as_i64().ok_or("no sleep pid")?;
    let _reap = Reap(vec![sleep]);
    let status = common::recording::wait_exit(&mut viz, Duration::from_secs(60)).ok_or("vizattach did not stop")?;
    let stderr = fs::read_to_string(&stderr_file).unwrap_or_default();
    if !status.success() {
        return Err(format!("record --subprocesses exited with {status}: {stderr}"));
    }
    let trace = check_trace_of(&out, Path::new("/"), Some(&file), None)
        .map_err(|e| format!("{e}\nvizattach said: {stderr}"))?;

    let parent_pid = parent.pid as i64;
    let parent_wait = slice_name("parent_wait", &file, "fleet_tree.py");
    if !trace.slices.iter().any(|s| s.pid == parent_pid && s.name == parent_wait) {
        return Err(format!("no {parent_wait:?} under the parent {parent_pid}"));
    }
    let work = slice_name("child_work", &file, "fleet_tree.py");
    let list = children["children"].as_array().ok_or("no children")?;
    let mut methods = BTreeSet::new();
    for c in list {
        let (pid, method) = (c["pid"].as_i64().unwrap_or(-1), c["method"].as_str().unwrap_or("?"));
        let exited_us = c["exited"].as_f64().unwrap_or(0.0) * 1e6;
        if c["exitcode"].as_i64() != Some(0) {
            return Err(format!("worker {pid} ({method}) failed: {c}"));
        }
        if !trace.processes.contains_key(&pid) {
            return Err(format!("worker {pid} ({method}) is not in the trace: {:?}", trace.processes.keys()));
        }
        let mine: Vec<&Slice> = trace.slices.iter().filter(|s| s.pid == pid).collect();
        // 0.7 s of work, found within a poll (150 ms) and attached: most of it is seen
        let Some(w) = mine.iter().find(|s| s.name == work) else {
            return Err(format!(
                "worker {pid} ({method}) has no {work:?}: {:?}",
                mine.iter().map(|s| &s.name).collect::<Vec<_>>()
            ));
        };
        if w.dur < 200_000.0 {
            return Err(format!("worker {pid} ({method}): child_work lasts {:.0} ms of 700", w.dur / 1000.0));
        }
        // it exited mid-capture: its slices end at its last sample, before it was reaped
        if let Some(late) = mine.iter().find(|s| s.end() > exited_us + 1000.0) {
            return Err(format!(
                "worker {pid}: {} ends {:.1} ms after the worker exited",
                late.name,
                (late.end() - exited_us) / 1000.0
            ));
        }
        methods.insert(method.to_string());
    }
    if list.len() < 6 || methods.len() != 2 {
        return Err(format!(
            "the fixture ran {} workers ({methods:?}); expected at least 6, fork and spawn",
            list.len()
        ));
    }
    if trace.processes.contains_key(&sleep) {
        return Err(format!("the sleep ({sleep}) was recorded"));
    }
    let skipped = &trace.meta["skipped_children"];
    if skipped["not_python"].as_u64() != Some(1) {
        return Err(format!("skipped_children is {skipped}, expected the sleep alone as not Python"));
    }
    if !stderr.contains("skipped 1 non-Python child,") {
        return Err(format!("the summary does not count the sleep: {stderr}"));
    }
    eprintln!("  {}: {} workers followed, {} processes, sleep skipped", interp.name, list.len(), trace.processes.len());
    Ok(())
}

// ---------------------------------------------------------------------------------------
// --subprocesses through multiprocessing.Pool (launch mode)
// ---------------------------------------------------------------------------------------

#[test]
fn subprocesses_follows_a_pool_with_one_task_per_worker() {
    let Some(targets) = host_targets() else { return };
    // a 3.12+ interpreter: the pool's workers are forked from a program whose stacks
    // start at C-stack entry frames
    let newer: Vec<Interpreter> = targets.into_iter().filter(|i| i.version_tuple() >= (3, 12, 0)).collect();
    for_each_interpreter(&newer, 1, pool);
}

fn pool(interp: &Interpreter) -> Result<(), String> {
    let work = WorkDir::new(interp)?;
    let out = work.host_path("pool.json");
    let pids_file = work.target_path("pids.json");
    let mut cmd = Command::new(VIZATTACH);
    cmd.args(["record", "-q", "--subprocesses", "--rate", &RATE.to_string(), "-o"])
        .arg(&out)
        .arg("--")
        .args(work.command_line("fleet_pool.py", &[pids_file.display().to_string()]))
        .current_dir(work.host_path(""));
    let run = common::run::run_with_timeout(cmd, Duration::from_secs(90))?;
    if !run.status.success() {
        return Err(format!("record --subprocesses -- fleet_pool.py exited with {}: {}", run.status, run.stderr));
    }
    let pids: Vec<i64> = serde_json::from_str::<serde_json::Value>(
        &fs::read_to_string(work.host_path("pids.json")).map_err(|e| format!("pids.json: {e}"))?,
    )
    .map_err(|e| e.to_string())?["pids"]
        .as_array()
        .ok_or("no pids")?
        .iter()
        .filter_map(|p| p.as_i64())
        .collect();
    let distinct: BTreeSet<i64> = pids.iter().copied().collect();
    if distinct.len() != 6 {
        return Err(format!("the pool ran its 6 tasks in {} processes: {pids:?}", distinct.len()));
    }
    let file = work.target_path("fleet_pool.py").display().to_string();
    let trace =
        check_trace_of(&out, &work.host_path(""), Some(&file), None).map_err(|e| format!("{e}\n{}", run.stderr))?;
    let task = slice_name("pool_task", &file, "fleet_pool.py");
    // each worker lives 0.8 s and is found within a poll (150 ms): all but a start-up's
    // worth of its task is in the trace, under its own pid
    let mut seen = 0;
    for pid in &distinct {
        let longest =
            trace.slices.iter().filter(|s| s.pid == *pid && s.name == task).map(|s| s.dur).fold(0.0, f64::max);
        if longest >= 300_000.0 {
            seen += 1;
        }
    }
    if seen < 5 {
        return Err(format!(
            "only {seen} of the 6 pool workers have a pool_task slice of 300 ms or more; processes in the trace: {:?}",
            trace.processes
        ));
    }
    Ok(())
}
