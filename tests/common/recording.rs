//! Running `vizattach record` from the tests: launch mode to completion, by pid with a
//! signal to stop it, and the shared capture settings.

use super::{run_with_timeout, Interpreter, KillOnDrop, RunOutput, WorkDir, VIZATTACH};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Sample rate of every capture here.
pub const RATE: u32 = 1000;
pub const INTERVAL_US: f64 = 1e6 / RATE as f64;
/// Interpreters captured concurrently (timing-sensitive: the machine has 2 cores).
pub const WORKERS: usize = 2;
/// The tests of one file run one at a time, so captures do not compete with the
/// fixtures' busy loops of another test for the two cores.
static SERIAL: Mutex<()> = Mutex::new(());

pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// `vizattach record -q --rate RATE -o OUT -- COMMAND...`, to completion.
pub fn launch(work: &WorkDir, fixture: &str, args: &[String], out: &Path) -> Result<RunOutput, String> {
    let mut cmd = Command::new(VIZATTACH);
    cmd.args(["record", "-q", "--rate", &RATE.to_string(), "-o"])
        .arg(out)
        .arg("--")
        .args(work.command_line(fixture, args))
        .current_dir(work.host_path(""));
    run_with_timeout(cmd, Duration::from_secs(90))
}

/// Starts fixture `fixture` (its arguments `args`, then the path of a ready file) in its
/// work directory and waits until it writes the ready file: for tests that attach by
/// pid, as only then may vizattach stop threads for a read (src/pausing.rs).
pub fn start_until_ready(work: &WorkDir, fixture: &str, args: &[&str]) -> Result<KillOnDrop, String> {
    let ready = work.target_path("ready").display().to_string();
    let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    all.push(ready);
    let argv = work.command_line(fixture, &all);
    let program = KillOnDrop(
        Command::new(&argv[0])
            .args(&argv[1..])
            .current_dir(work.host_path(""))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawn {argv:?}: {e}"))?,
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !work.host_path("ready").exists() {
        if Instant::now() > deadline {
            return Err(format!("{fixture} never began"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(program)
}

/// Starts `fixture` (the ready file appended to `args`), records it by pid at `RATE`
/// for `seconds` into `out` in the work directory, stops it, and reads the trace back.
pub fn record_fixture(
    work: &WorkDir,
    fixture: &str,
    args: &[&str],
    seconds: f64,
    out: &str,
) -> Result<super::trace::Trace, String> {
    let json = work.host_path(out);
    let program = start_until_ready(work, fixture, args)?;
    let mut cmd = Command::new(VIZATTACH);
    cmd.args(["record", "-q", "--rate", &RATE.to_string(), "--duration", &format!("{seconds}s"), "--pid"])
        .arg(program.pid().to_string())
        .arg("-o")
        .arg(&json);
    let run = run_with_timeout(cmd, Duration::from_secs(90))?;
    if !run.status.success() {
        return Err(format!("vizattach record failed: {}", run.describe()));
    }
    drop(program);
    super::trace::check_trace(&json, &work.interpreter.root, None)
}

pub fn send_signal(pid: u32, sig: i32) -> Result<(), String> {
    // SAFETY: plain kill(2) on a pid we spawned.
    if unsafe { libc::kill(pid as i32, sig) } != 0 {
        return Err(format!("kill({pid}, {sig}): {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// vizattach recording `pid` until stopped, output to `out`, stderr to a file.
pub fn start_recording(pid: u32, out: &Path, stderr_file: &Path) -> Result<KillOnDrop, String> {
    let stderr = fs::File::create(stderr_file).map_err(|e| e.to_string())?;
    let mut cmd = Command::new(VIZATTACH);
    cmd.args(["--pid", &pid.to_string(), "--rate", &RATE.to_string(), "-o"])
        .arg(out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    cmd.spawn().map(KillOnDrop).map_err(|e| format!("spawn vizattach: {e}"))
}

/// `vizattach record --pid PID --subprocesses --duration D`, returned once it says it
/// is recording (its stderr goes to `stderr_file`).
pub fn start_recording_tree(pid: i64, duration: &str, out: &Path, stderr_file: &Path) -> Result<KillOnDrop, String> {
    let mut cmd = Command::new(VIZATTACH);
    cmd.args(["record", "--pid", &pid.to_string(), "--subprocesses", "--duration", duration, "--rate"])
        .arg(RATE.to_string())
        .arg("-o")
        .arg(out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(stderr_file).map_err(|e| e.to_string())?);
    let mut viz = KillOnDrop(cmd.spawn().map_err(|e| format!("spawn vizattach: {e}"))?);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !fs::read_to_string(stderr_file).unwrap_or_default().contains("recording") {
        if Instant::now() > deadline || viz.exited().is_some() {
            return Err(format!("vizattach did not start: {}", fs::read_to_string(stderr_file).unwrap_or_default()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(viz)
}

pub fn wait_exit(child: &mut KillOnDrop, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(s) = child.exited() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// Where a failing test leaves its trace for inspection.
pub fn failed_trace_path(interp: &Interpreter, what: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("record-{what}-{}.json", interp.name))
}
