//! Threads that run code in subinterpreters (3.12+): one thread, one stack. The frames a
//! thread runs in a subinterpreter sit on top of the call that entered it, in the dump and
//! in the timeline, never as a second thread with the same id.

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const VIZATTACH: &str = env!("CARGO_BIN_EXE_vizattach");
const HOSTS: usize = 2;

fn subinterpreter_targets() -> Option<Vec<Interpreter>> {
    let all = record_targets()?;
    Some(all.into_iter().filter(|i| i.version_tuple() >= (3, 12, 0)).collect())
}

#[derive(Debug)]
struct Slice {
    name: String,
    ts: f64,
    end: f64,
}

type Nested = BTreeMap<i64, Vec<(Slice, Vec<String>)>>;

/// Complete events per tid, each with the names of the slices enclosing it (outermost
/// first), nesting taken from time containment as the viewers draw it.
fn nested(trace: &Value) -> Result<Nested, String> {
    let events = trace["traceEvents"].as_array().ok_or("no traceEvents array")?;
    let mut by_tid: BTreeMap<i64, Vec<Slice>> = BTreeMap::new();
    for e in events.iter().filter(|e| e["ph"] == "X") {
        let (Some(tid), Some(ts), Some(dur), Some(name)) =
            (e["tid"].as_i64(), e["ts"].as_f64(), e["dur"].as_f64(), e["name"].as_str())
        else {
            return Err(format!("malformed complete event {e}"));
        };
        by_tid.entry(tid).or_default().push(Slice { name: name.to_string(), ts, end: ts + dur });
    }
    let mut out = BTreeMap::new();
    for (tid, mut slices) in by_tid {
        slices.sort_by(|a, b| a.ts.total_cmp(&b.ts).then(b.end.total_cmp(&a.end)));
        let mut open: Vec<(f64, String)> = Vec::new();
        let mut list = Vec::new();
        for s in slices {
            while open.last().is_some_and(|(end, _)| *end <= s.ts) {
                open.pop();
            }
            let parents = open.iter().map(|(_, n)| n.clone()).collect();
            open.push((s.end, s.name.clone()));
            list.push((s, parents));
        }
        out.insert(tid, list);
    }
    Ok(out)
}

fn short(name: &str) -> &str {
    name.split(" (").next().unwrap_or(name)
}

fn check_record(interp: &Interpreter) -> Result<(), String> {
    let work = WorkDir::new(interp)?;
    let out = work.host_path("trace.json");
    let mut cmd = Command::new(VIZATTACH);
    cmd.args(["record", "-q", "--rate", "1000", "-o"])
        .arg(&out)
        .arg("--")
        .args(work.command_line("subinterp.py", &["1.5".into(), HOSTS.to_string()]))
        .current_dir(work.host_path(""));
    let run = run_with_timeout(cmd, Duration::from_secs(90))?;
    if !run.status.success() {
        return Err(format!("vizattach record failed: {}", run.describe()));
    }
    let text = std::fs::read_to_string(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let trace: Value = serde_json::from_str(&text).map_err(|e| format!("trace is not JSON: {e}"))?;
    let threads = nested(&trace)?;
    let mut hosts = 0;
    for (tid, slices) in &threads {
        let inner: Vec<_> = slices.iter().filter(|(s, _)| short(&s.name) == "sub_inner").collect();
        let roots: Vec<&str> = slices.iter().filter(|(_, p)| p.is_empty()).map(|(s, _)| short(&s.name)).collect();
        if roots.iter().any(|r| r.starts_with("sub_") || *r == "<module>" && !inner.is_empty()) {
            return Err(format!("thread {tid}: subinterpreter frames form a stack of their own: roots {roots:?}"));
        }
        if inner.is_empty() {
            continue;
        }
        hosts += 1;
        // 1.5 s of 30 ms busy + 20 ms sleep: about 30 calls; a quarter is plenty even if
        // start-up took a while on a loaded machine.
        if inner.len() < 8 {
            return Err(format!("thread {tid}: only {} sub_inner slices", inner.len()));
        }
        for (s, parents) in inner {
            let chain: Vec<&str> = parents.iter().map(|p| short(p)).collect();
            let pos = |n: &str| chain.iter().position(|c| *c == n);
            match (pos("host"), pos("sub_outer")) {
                (Some(h), Some(o)) if h < o => {}
                _ => {
                    return Err(format!(
                        "thread {tid}: sub_inner at {:.1} ms is not inside host > ... > sub_outer: {chain:?}",
                        s.ts / 1000.0
                    ))
                }
            }
        }
    }
    if hosts != HOSTS {
        return Err(format!("{hosts} threads ran sub_inner, expected {HOSTS}; tids {:?}", threads.keys()));
    }
    Ok(())
}

#[test]
fn record_nests_subinterpreter_frames_in_their_thread() {
    let Some(targets) = subinterpreter_targets() else {
        return;
    };
    for_each_interpreter(&targets, 2, check_record);
}

/// Dumps until every host thread is caught inside its subinterpreter; each dump must show
/// each OS thread once, and a host thread's subinterpreter frames (interpreter != 0) on
/// top of the main interpreter's frames down to `host`.
fn check_dump(interp: &Interpreter) -> Result<(), String> {
    let work = WorkDir::new(interp)?;
    let argv = work.command_line("subinterp.py", &["60".into(), HOSTS.to_string()]);
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]).current_dir(work.host_path("")).stdin(Stdio::null()).stdout(Stdio::null());
    let target = KillOnDrop(cmd.spawn().map_err(|e| format!("spawn {argv:?}: {e}"))?);
    let pid = target.pid().to_string();
    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(100));
        let out = run_vizattach(&["dump", "--pid", &pid, "--json"])?;
        if !out.status.success() {
            last = out.describe();
            continue; // not up yet
        }
        let dump: Value = serde_json::from_str(&out.stdout).map_err(|e| format!("dump is not JSON: {e}"))?;
        let threads = dump["threads"].as_array().ok_or("no threads array")?;
        let mut tids: Vec<i64> = threads.iter().filter_map(|t| t["tid"].as_i64()).collect();
        let n = tids.len();
        tids.sort_unstable();
        tids.dedup();
        if tids.len() != n {
            return Err(format!("a thread is listed twice: {}", out.stdout));
        }
        let mut inside = 0;
        for t in threads {
            let frames: Vec<(String, i64)> = t["frames"]
                .as_array()
                .ok_or("no frames array")?
                .iter()
                .map(|f| (f["function"].as_str().unwrap_or("").to_string(), f["interpreter"].as_i64().unwrap_or(-1)))
                .collect();
            let Some(host) = frames.iter().position(|f| f.0 == "host") else {
                continue;
            };
            let Some(sub) = frames.iter().position(|f| f.0 == "sub_outer") else {
                continue;
            };
            // innermost first: every frame above the entry runs in the subinterpreter,
            // every frame from Interpreter.exec (or its 3.12/3.13 caller) down in main
            let id = frames[sub].1;
            let boundary = frames.iter().position(|f| f.1 == 0).unwrap_or(frames.len());
            if sub > host
                || id <= 0
                || frames[..boundary].iter().any(|f| f.1 != id)
                || frames[boundary..].iter().any(|f| f.1 != 0)
                || boundary > host
            {
                return Err(format!("thread {}: frames (function, interpreter) {frames:?}", t["tid"]));
            }
            inside += 1;
        }
        if inside == HOSTS {
            return Ok(());
        }
        last = format!("{inside} of {HOSTS} host threads inside: {}", out.stdout);
    }
    Err(format!("never saw every host thread inside its subinterpreter; last: {last}"))
}

#[test]
fn dump_joins_subinterpreter_frames_to_their_thread() {
    let Some(targets) = subinterpreter_targets() else {
        return;
    };
    for_each_interpreter(&targets, 2, check_dump);
}
