//! Per-thread activity against real interpreters (one per GIL home: 3.9 and 3.11 keep the
//! GIL in the runtime, 3.14 in each interpreter, located by the target's debug offsets):
//! - a thread that alternates 50 ms on CPU and 50 ms asleep is on CPU in about half its
//!   samples (pprof's cpu/nanoseconds against wall/nanoseconds of one capture), its state
//!   changes are on a counter track beside its slices in Perfetto and in counter events in
//!   JSON, and `--mode cpu` drops its sleeping frames from the collapsed output;
//! - with a thread that keeps the GIL in C code and one that waits for it, `--mode gil`
//!   counts the first and (nearly) not the second; `--mode wall` counts both.
//!
//! Bounds are loose: the machine may be loaded, and states change between a read of the
//! stack and of /proc (a few microseconds apart).

mod common;

use common::*;
use prost::Message;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use vizattach::output::{perfetto::proto as pf, pprof::proto as pp};

/// Host 3.11 (GIL in the runtime, our table), 3.9 (the same home, older layout) and 3.14
/// (GIL in the interpreter, the target's own offsets).
fn activity_targets() -> Option<Vec<Interpreter>> {
    let all = load_manifest()?;
    let mut chosen = Vec::new();
    for minor in ["3.9", "3.11", "3.14"] {
        // (debug builds, "-dbg", are not what this test is about)
        let candidates = all.iter().filter(|i| i.minor_version() == minor && !i.name.ends_with("-dbg"));
        match candidates.min_by_key(|i| i.name != "host-python3.11") {
            Some(i) => chosen.push(i.clone()),
            None => missing_prerequisite(&format!("no {minor} interpreter in the manifest")),
        }
    }
    Some(chosen)
}

/// Records `target` by pid for `secs` in `mode`, to `outputs` (one `-o` each).
fn record(target: &Target, mode: &str, secs: &str, outputs: &[&str]) -> Result<(), String> {
    let mut cmd = Command::new(VIZATTACH);
    cmd.args(["--pid", &target.pid.to_string(), "-q", "-d", secs, "--mode", mode]);
    for o in outputs {
        cmd.arg("-o").arg(target.host_path(o));
    }
    let out = run_with_timeout(cmd, Duration::from_secs(120))?;
    if !out.status.success() {
        return Err(format!("vizattach --mode {mode} failed: {}", out.describe()));
    }
    Ok(())
}

/// Collapsed counts by (thread label's tid, leaf function name).
fn leaves(path: &Path) -> Result<BTreeMap<(i64, String), u64>, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let (stack, n) = line.rsplit_once(' ').ok_or(format!("bad line {line:?}"))?;
        let thread = stack.split(';').next().unwrap_or("");
        let tid: i64 = thread
            .rsplit_once("(tid ")
            .and_then(|(_, t)| t.trim_end_matches(')').parse().ok())
            .ok_or(format!("no tid in {line:?}"))?;
        let leaf = stack.rsplit(';').next().unwrap_or("").split(" (").next().unwrap_or("").to_string();
        *out.entry((tid, leaf)).or_insert(0) += n.parse::<u64>().map_err(|_| format!("bad count {line:?}"))?;
    }
    Ok(out)
}

fn count(leaves: &BTreeMap<(i64, String), u64>, tid: i64, leaf: Option<&str>) -> u64 {
    leaves.iter().filter(|((t, l), _)| *t == tid && leaf.is_none_or(|f| f == l)).map(|(_, n)| n).sum()
}

fn duty(interp: &Interpreter) -> Result<(), String> {
    let mut target = Target::start(interp, "activity_duty.py")?;
    let ready = target.wait_json("expected.json", Duration::from_secs(60))?;
    let tid = ready["duty"].as_i64().ok_or("no duty tid")?;
    record(&target, "wall", "2s", &["wall.collapsed", "wall.pb.gz", "wall.json", "wall.pftrace"])?;
    record(&target, "cpu", "2s", &["cpu.collapsed"])?;

    // about half its samples on CPU, from one capture's pprof
    let mut gz = Vec::new();
    flate2::read::GzDecoder::new(fs::File::open(target.host_path("wall.pb.gz")).map_err(|e| e.to_string())?)
        .read_to_end(&mut gz)
        .map_err(|e| e.to_string())?;
    let prof = pp::Profile::decode(&gz[..]).map_err(|e| e.to_string())?;
    let types: Vec<&str> = prof.sample_type.iter().map(|t| prof.string_table[t.r#type as usize].as_str()).collect();
    if types != ["samples", "wall", "cpu"] {
        return Err(format!("pprof sample types {types:?}"));
    }
    let tid_key = prof.string_table.iter().position(|s| s == "thread_id").ok_or("no thread_id label")? as i64;
    let (mut wall, mut cpu) = (0, 0);
    for s in &prof.sample {
        if s.label.iter().any(|l| l.key == tid_key && l.num == tid) {
            wall += s.value[1];
            cpu += s.value[2];
        }
    }
    let share = cpu as f64 / wall.max(1) as f64;
    if wall == 0 || !(0.25..=0.75).contains(&share) {
        return Err(format!(
            "duty thread on CPU in {:.0} % of its samples (wall {wall} ns, cpu {cpu} ns)",
            share * 100.0
        ));
    }

    // the timeline shows the changes: JSON counter events, a Perfetto counter track
    let json: Value =
        serde_json::from_str(&fs::read_to_string(target.host_path("wall.json")).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    let name = format!("activity {tid}");
    let on_cpu: Vec<i64> = json["traceEvents"]
        .as_array()
        .ok_or("no traceEvents")?
        .iter()
        .filter(|e| e["ph"] == "C" && e["name"] == name.as_str())
        .filter_map(|e| e["args"]["on_cpu"].as_i64())
        .collect();
    let changes = on_cpu.windows(2).filter(|w| w[0] != w[1]).count();
    // 2 s of 100 ms cycles: about 40 changes
    if changes < 16 {
        return Err(format!("{changes} on-CPU changes of the duty thread in the JSON counters: {on_cpu:?}"));
    }
    let trace = pf::Trace::decode(&fs::read(target.host_path("wall.pftrace")).map_err(|e| e.to_string())?[..])
        .map_err(|e| e.to_string())?;
    let thread_uuid = trace
        .packet
        .iter()
        .filter_map(|p| p.track_descriptor.as_ref())
        .find(|d| d.thread.as_ref().and_then(|t| t.tid) == Some(tid as i32))
        .and_then(|d| d.uuid)
        .ok_or("no track of the duty thread in the pftrace")?;
    let cpu_track = trace
        .packet
        .iter()
        .filter_map(|p| p.track_descriptor.as_ref())
        .find(|d| d.parent_uuid == Some(thread_uuid) && d.name.as_deref() == Some("on CPU") && d.counter.is_some())
        .and_then(|d| d.uuid)
        .ok_or("no \"on CPU\" counter track under the duty thread")?;
    let values: Vec<i64> = trace
        .packet
        .iter()
        .filter_map(|p| p.track_event.as_ref())
        .filter(|e| e.track_uuid == Some(cpu_track))
        .filter_map(|e| e.counter_value)
        .collect();
    if values.len() < 16 || values.windows(2).any(|w| w[0] == w[1]) {
        return Err(format!("the pftrace's on-CPU counter of the duty thread: {values:?}"));
    }

    // --mode cpu: its sleeping frames vanish, its busy ones stay. (Not to zero: a thread
    // woken from its sleep is runnable, 'R', until it gets a CPU and leaves the sleeping
    // frame; on a loaded 2-core machine that is a few ms per wake-up, 0-6 % of them.)
    let (w, c) = (leaves(&target.host_path("wall.collapsed"))?, leaves(&target.host_path("cpu.collapsed"))?);
    let (w_sleep, w_busy) = (count(&w, tid, Some("duty_sleep")), count(&w, tid, Some("duty_busy")));
    let (c_sleep, c_busy) = (count(&c, tid, Some("duty_sleep")), count(&c, tid, Some("duty_busy")));
    if w_sleep < 200 || w_busy < 200 {
        return Err(format!("wall mode: duty_sleep {w_sleep}, duty_busy {w_busy} samples"));
    }
    // Sleeping threads are not re-read (docs/ARCHITECTURE.md, "Sleeping threads"): the
    // waiting main thread and the duty thread's sleeps are such samples, and a wake-up
    // must still show at once (a sleep taken for still running would eat the busy half).
    let asleep = json["viztracer_metadata"]["asleep_samples"].as_u64().unwrap_or(0);
    if asleep == 0 || w_busy * 3 < w_sleep {
        return Err(format!("{asleep} samples of sleeping threads; duty_sleep {w_sleep}, duty_busy {w_busy} samples"));
    }
    if c_sleep * 10 > w_sleep || c_busy * 2 < w_busy {
        return Err(format!(
            "--mode cpu: duty_sleep {c_sleep} (wall {w_sleep}), duty_busy {c_busy} (wall {w_busy}) samples"
        ));
    }
    eprintln!(
        "  {}: on CPU {:.0} %, {changes} changes; --mode cpu: duty_sleep {c_sleep}/{w_sleep}, duty_busy {c_busy}/{w_busy}; {asleep} asleep",
        interp.name,
        share * 100.0
    );
    Ok(())
}

fn gil(interp: &Interpreter) -> Result<(), String> {
    let mut target = Target::start(interp, "activity_gil.py")?;
    let ready = target.wait_json("expected.json", Duration::from_secs(60))?;
    let (hog, waiter) = (ready["hog"].as_i64().ok_or("no hog")?, ready["waiter"].as_i64().ok_or("no waiter")?);
    record(&target, "wall", "2s", &["wall.collapsed"])?;
    record(&target, "gil", "2s", &["gil.collapsed"])?;
    let (w, g) = (leaves(&target.host_path("wall.collapsed"))?, leaves(&target.host_path("gil.collapsed"))?);
    let (w_hog, w_waiter) = (count(&w, hog, None), count(&w, waiter, None));
    let (g_hog, g_waiter) = (count(&g, hog, None), count(&g, waiter, None));
    // wall: both are there all the time
    if w_hog < 500 || w_waiter * 2 < w_hog {
        return Err(format!("wall mode: hog {w_hog}, waiter {w_waiter} samples"));
    }
    // gil: the holder counts, the waiter (nearly) not
    if g_hog * 2 < w_hog || g_waiter * 5 > g_hog {
        return Err(format!("--mode gil: hog {g_hog} (wall {w_hog}), waiter {g_waiter} (wall {w_waiter}) samples"));
    }
    eprintln!("  {}: --mode gil: hog {g_hog}/{w_hog}, waiter {g_waiter}/{w_waiter}", interp.name);
    Ok(())
}

#[test]
fn a_thread_busy_half_the_time_is_on_cpu_in_half_its_samples() {
    let Some(targets) = activity_targets() else { return };
    for_each_interpreter(&targets, 2, duty);
}

#[test]
fn mode_gil_does_not_count_a_thread_waiting_for_the_gil() {
    let Some(targets) = activity_targets() else { return };
    for_each_interpreter(&targets, 2, gil);
}

/// One line naming the modes (argument errors are one line like every other error).
#[test]
fn unknown_mode_fails_naming_the_modes() {
    let out = run_vizattach(&["--pid", "1", "--mode", "idle"]).unwrap();
    assert!(!out.status.success());
    let line = expect_error_line(&out).unwrap();
    for m in ["wall", "cpu", "gil"] {
        assert!(line.contains(m), "error does not list {m}: {line}");
    }
}
