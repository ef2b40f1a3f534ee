//! Stopping a by-pid capture: SIGINT, SIGTERM, SIGHUP, the target's death and
//! `--duration` all leave a complete trace holding what was captured.

mod common;

use common::recording::*;
use common::trace::*;
use common::*;
use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------
// Stopping a by-pid capture
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Stop {
    Signal(i32, &'static str),
    KillTarget,
    Duration,
}

/// Attaches by pid to timeline_forever.py, stops the capture `how` after about a
/// second, and checks exit status 0 and a valid trace holding the cycle's slices.
fn check_stop(interp: &Interpreter, how: Stop) -> Result<(), String> {
    let mut target = Target::start(interp, "timeline_forever.py")?;
    let ready = target.wait_json("expected.json", Duration::from_secs(60))?;
    let fixture = target.target_path("timeline_forever.py").display().to_string();
    if ready["file"].as_str() != Some(fixture.as_str()) {
        return Err(format!("the fixture ran as {}, expected {fixture:?}", ready["file"]));
    }
    let out = target.host_path("trace.json");
    let stderr_file = target.host_path("vizattach-stderr.txt");
    let mut viz = match how {
        Stop::Duration => {
            let stderr = fs::File::create(&stderr_file).map_err(|e| e.to_string())?;
            let mut cmd = Command::new(VIZATTACH);
            cmd.args([
                "record",
                "--pid",
                &target.pid.to_string(),
                "--duration",
                "2500ms",
                "--rate",
                &RATE.to_string(),
                "-o",
            ])
            .arg(&out)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
            KillOnDrop(cmd.spawn().map_err(|e| format!("spawn vizattach: {e}"))?)
        }
        _ => start_recording(target.pid, &out, &stderr_file)?,
    };
    let started = Instant::now();
    std::thread::sleep(Duration::from_millis(2500));
    if let Some(s) = viz.exited() {
        if !matches!(how, Stop::Duration) {
            return Err(format!(
                "vizattach exited ({s}) before being stopped: {}",
                fs::read_to_string(&stderr_file).unwrap_or_default()
            ));
        }
    }
    match how {
        Stop::Signal(sig, _) => send_signal(viz.pid(), sig)?,
        Stop::KillTarget => {
            target.kill_and_reap();
        }
        Stop::Duration => {}
    }
    let Some(status) = wait_exit(&mut viz, Duration::from_secs(20)) else {
        return Err(format!("vizattach did not exit within 20 s of being stopped ({how:?})"));
    };
    let elapsed = started.elapsed();
    let stderr = fs::read_to_string(&stderr_file).unwrap_or_default();
    if !status.success() {
        return Err(format!("vizattach exited with {status} after {how:?}; stderr:\n{stderr}"));
    }
    if matches!(how, Stop::Duration) && elapsed > Duration::from_secs(10) {
        return Err(format!("--duration 2500ms took {elapsed:?}"));
    }
    let trace = check_trace(&out, &interp.root, Some(&fixture)).map_err(|e| {
        let _ = fs::copy(&out, failed_trace_path(interp, "stop"));
        format!("{how:?}: {e}\nstderr:\n{stderr}")
    })?;
    let main_tid = ready["main_tid"].as_i64().unwrap_or(0);
    let tree = trace.file_tree(&fixture);
    let count = |q: &str| tree.slices.iter().filter(|s| s.tid == main_tid && s.qual == q).count();
    let (cycles, sleeps, busies) = (count("cycle"), count("step_sleep"), count("step_busy"));
    // ~2.5 s of 150 ms cycles: ~16 of each; be generous for a loaded machine
    if cycles < 8 || sleeps < 8 || busies < 8 {
        return Err(format!(
            "{how:?}: only {cycles} cycle, {sleeps} step_sleep, {busies} step_busy slices on the main thread (tid {main_tid}) in about 2.5 s; stderr:\n{stderr}"
        ));
    }
    // Each cycle() holds its two steps, in order.
    let (bad, _) = tree.cycles_not_holding_their_steps(main_tid);
    if !bad.is_empty() {
        let _ = fs::copy(&out, failed_trace_path(interp, "stop"));
        return Err(format!(
            "{how:?}: {} cycle() slices do not hold exactly [step_sleep, step_busy] (longest sampler lag {:.1} ms, trace kept at {}):\n{}",
            bad.len(),
            trace.meta_f64("longest_lag_us") / 1000.0,
            failed_trace_path(interp, "stop").display(),
            bad[..bad.len().min(3)].join("\n")
        ));
    }
    let what = match how {
        Stop::Signal(_, name) => name,
        Stop::KillTarget => "kill -9 of the target",
        Stop::Duration => "--duration",
    };
    eprintln!("     {}: stopped by {what}: {cycles} cycles recorded", interp.name);
    Ok(())
}

#[test]
fn record_stop_sigint() {
    let _serial = serial();
    let Some(targets) = record_targets() else {
        return;
    };
    for_each_interpreter(&targets, WORKERS, |i| check_stop(i, Stop::Signal(libc::SIGINT, "SIGINT")));
}

#[test]
fn record_stop_sigterm() {
    let _serial = serial();
    let Some(targets) = record_targets() else {
        return;
    };
    for_each_interpreter(&targets, WORKERS, |i| check_stop(i, Stop::Signal(libc::SIGTERM, "SIGTERM")));
}

#[test]
fn record_stop_sighup() {
    let _serial = serial();
    let Some(targets) = record_targets() else {
        return;
    };
    for_each_interpreter(&targets, WORKERS, |i| check_stop(i, Stop::Signal(libc::SIGHUP, "SIGHUP")));
}

#[test]
fn record_stop_target_killed() {
    let _serial = serial();
    let Some(targets) = record_targets() else {
        return;
    };
    for_each_interpreter(&targets, WORKERS, |i| check_stop(i, Stop::KillTarget));
}

#[test]
fn record_stop_duration() {
    let _serial = serial();
    let Some(targets) = record_targets() else {
        return;
    };
    for_each_interpreter(&targets, WORKERS, |i| check_stop(i, Stop::Duration));
}
