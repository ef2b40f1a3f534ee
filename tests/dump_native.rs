//! `vizattach dump --native` against real targets: a C library built here
//! (tests/fixtures/native_block.c) blocks inside two C functions called from Python
//! (tests/fixtures/native_fixture.py) on every interpreter of the suite, and the target
//! must always run on: after every native dump, after vizattach is SIGKILLed while it
//! holds a thread paused (many times), and when vizattach is stopped while it holds one
//! (its watchdog ends it).
//!
//!     cargo test --release --test dump_native -- --nocapture

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const WORKERS: usize = 3;
/// How long a thread may take to be back in its blocking call, or a thread list to show
/// no tracer, on a loaded machine.
const SETTLE: Duration = Duration::from_secs(30);
/// SIGKILLs of vizattach while it holds a thread paused.
const KILLS: usize = 20;
/// The watchdog's bound (src/native/pause.rs WATCHDOG) plus slack for a loaded machine.
const WATCHDOG_BOUND: Duration = Duration::from_secs(3 + 12);

/// Compiles native_block.c once per test process.
fn block_library() -> Result<PathBuf, String> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
            let out = dir.join("libvzblock.so");
            let tmp = dir.join(format!("libvzblock.{}.tmp", std::process::id()));
            let status = Command::new("gcc")
                .args(["-shared", "-fPIC", "-O1", "-o"])
                .arg(&tmp)
                .arg(Path::new(FIXTURES).join("native_block.c"))
                .status()
                .map_err(|e| format!("gcc: {e}"))?;
            if !status.success() {
                return Err("gcc failed on native_block.c".into());
            }
            std::fs::rename(&tmp, &out).map_err(|e| e.to_string())?;
            Ok(out)
        })
        .clone()
}

/// The fixture started with its C library in place, once its threads are parked; None
/// (after a note) for an interpreter that cannot load C extensions at all (static
/// builds that export no symbols cannot import _ctypes).
fn start(interp: &Interpreter) -> Result<Option<Target>, String> {
    start_with(interp, &block_library()?)
}

/// `start`, with `lib` as the fixture's C library.
fn start_with(interp: &Interpreter, lib: &Path) -> Result<Option<Target>, String> {
    let mut target = Target::start(interp, "native_fixture.py")?;
    let dest = target.host_path("libvzblock.so");
    let tmp = target.host_path("libvzblock.so.tmp");
    std::fs::copy(lib, &tmp).map_err(|e| format!("copy {}: {e}", lib.display()))?;
    std::fs::rename(&tmp, &dest).map_err(|e| e.to_string())?;
    match target.wait_expected() {
        Ok(_) => Ok(Some(target)),
        Err(e) => match std::fs::read_to_string(target.host_path("no_ctypes.txt")) {
            Ok(why) => {
                eprintln!("     {}: cannot load C code ({why}): not checked", interp.name);
                Ok(None)
            }
            Err(_) => Err(e),
        },
    }
}

fn thread<'a>(v: &'a Value, name: &str) -> Result<&'a Value, String> {
    v["threads"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["name"] == name)
        .ok_or_else(|| format!("no thread {name:?}"))
}

fn position(frames: &[Value], pred: impl Fn(&Value) -> bool) -> Option<usize> {
    frames.iter().position(pred)
}

/// C frames named, in order, with the Python caller spliced outside them (and inside
/// the evaluation-loop call that runs it, where the interpreter has symbols).
#[test]
fn c_frames_named_and_python_frames_spliced() {
    let Some(targets) = dump_targets() else {
        return;
    };
    for_each_interpreter(&targets, WORKERS, |interp| {
        let Some(target) = start(interp)? else { return Ok(()) };
        let deadline = Instant::now() + SETTLE;
        loop {
            let out = run_vizattach(&["dump", "--pid", &target.pid.to_string(), "--json", "--native"])?;
            if !out.status.success() {
                return Err(format!("dump --native failed: {}", out.describe()));
            }
            let v: Value = serde_json::from_str(&out.stdout).map_err(|e| format!("not JSON ({e})"))?;
            let verdict = check_c_caller(&v);
            match verdict {
                Ok(()) => break,
                Err(e) if Instant::now() > deadline => return Err(format!("{e}\nlast dump: {}", out.stdout)),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
        runs_on(&target)
    });
}

fn check_c_caller(v: &Value) -> Result<(), String> {
    let t = thread(v, "c-caller")?;
    let frames = t["frames"].as_array().ok_or("no frames")?;
    let native = |name: &'static str| move |f: &Value| f["kind"] == "native" && f["function"] == name;
    let inner = position(frames, native("vz_block_inner")).ok_or("no native frame vz_block_inner")?;
    let outer = position(frames, native("vz_block_outer")).ok_or("no native frame vz_block_outer")?;
    let caller =
        position(frames, |f| f["kind"] == "python" && f["function"] == "call_c").ok_or("no Python frame call_c")?;
    if inner >= outer {
        return Err(format!("vz_block_inner (#{inner}) must be inside vz_block_outer (#{outer})"));
    }
    for f in &frames[inner..=outer] {
        if f["library"] != "libvzblock.so" || !f["address"].as_str().is_some_and(|a| a.starts_with("0x")) {
            return Err(format!("frame {f} should be in libvzblock.so with an address"));
        }
    }
    // With the evaluation loop named, the caller is spliced outside the C frames and
    // inside the evaluation-loop call that runs it; without symbols (stripped static
    // builds) Python frames come first.
    let eval_after =
        frames[outer..].iter().position(|f| f["function"] == "_PyEval_EvalFrameDefault").map(|p| p + outer);
    match eval_after {
        Some(eval) if !(outer < caller && caller < eval) => Err(format!(
            "call_c (#{caller}) must lie between vz_block_outer (#{outer}) and _PyEval_EvalFrameDefault (#{eval})"
        )),
        _ => Ok(()),
    }
}

/// With detached debug information installed (libc6-dbg by scripts/test.sh,
/// python3.11-dbg by scripts/install-pythons.sh), the host interpreter's sleeping main
/// thread shows libc frames with file:line, read from the debug file found by
/// build-id, and `time_sleep`, a static function of python3.11 that its own symbol
/// tables (no .symtab, and .dynsym lists exported functions only) cannot name.
#[test]
fn file_and_line_from_detached_debug_info() {
    let Some(interp) = host_interpreter() else {
        missing_prerequisite("no host-python3.11 in the manifest");
        return;
    };
    if !Path::new("/usr/lib/debug/.build-id").is_dir()
        || Command::new("dpkg").args(["-s", "libc6-dbg"]).output().map_or(true, |o| !o.status.success())
    {
        missing_prerequisite("libc6-dbg is not installed (scripts/test.sh installs it)");
        return;
    }
    for_each_interpreter(&[interp], 1, |interp| {
        let target = start(interp)?.ok_or("the host interpreter cannot load C code")?;
        let deadline = Instant::now() + SETTLE;
        loop {
            let out = run_vizattach(&["dump", "--pid", &target.pid.to_string(), "--json", "--native"])?;
            let v: Value =
                serde_json::from_str(&out.stdout).map_err(|e| format!("not JSON ({e}): {}", out.describe()))?;
            let main = thread(&v, "MainThread")?;
            let frames = main["frames"].as_array().ok_or("no frames")?;
            let libc_located = frames.iter().any(|f| {
                f["library"] == "libc.so.6"
                    && f["file"].as_str().is_some_and(|p| p.ends_with(".c") || p.ends_with(".S"))
                    && f["line"].as_u64().is_some_and(|l| l > 0)
            });
            // time.sleep -> clock_nanosleep: __GI___clock_nanosleep is not in libc's .dynsym
            let static_named =
                frames.iter().any(|f| f["function"].as_str().is_some_and(|n| n.contains("clock_nanosleep")));
            if libc_located && static_named {
                return runs_on(&target);
            }
            if Instant::now() > deadline {
                return Err(format!("no libc frame with file:line and a debug-info name: {}", main["frames"]));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
}

/// The fixture's library built the way Fedora ships binaries: vz_block_inner static,
/// the file stripped, its symbol table xz-compressed into .gnu_debugdata (MiniDebugInfo).
/// Returns (with MiniDebugInfo, the same stripped file without it).
fn mini_debug_library() -> Result<(PathBuf, PathBuf), String> {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("minidebuginfo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let run = |cmd: &mut Command| -> Result<(), String> {
        let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
        if !out.status.success() {
            return Err(format!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr)));
        }
        Ok(())
    };
    let full = dir.join("full.so");
    let (symtab, stripped, with_mini) = (dir.join("symtab.debug"), dir.join("stripped.so"), dir.join("mini.so"));
    run(Command::new("gcc")
        .args(["-shared", "-fPIC", "-O1", "-DVZ_INNER_STATIC", "-o"])
        .arg(&full)
        .arg(Path::new(FIXTURES).join("native_block.c")))?;
    run(Command::new("objcopy").arg("--only-keep-debug").arg(&full).arg(dir.join("all.debug")))?;
    run(Command::new("objcopy").arg("--strip-debug").arg(dir.join("all.debug")).arg(&symtab))?;
    run(Command::new("xz").arg("-kf").arg(&symtab))?;
    run(Command::new("strip").arg("--strip-all").arg("-o").arg(&stripped).arg(&full))?;
    run(Command::new("objcopy")
        .arg(format!("--add-section=.gnu_debugdata={}.xz", symtab.display()))
        .arg(&stripped)
        .arg(&with_mini))?;
    Ok((with_mini, stripped))
}

/// A static function of a stripped library is named from its .gnu_debugdata; the same
/// library without that section leaves it unnamed (so the name comes from there).
#[test]
fn static_function_named_from_minidebuginfo() {
    let Some(interp) = host_interpreter() else {
        missing_prerequisite("no host-python3.11 in the manifest");
        return;
    };
    let (with_mini, stripped) = match mini_debug_library() {
        Ok(libs) => libs,
        Err(e) => {
            missing_prerequisite(&format!("cannot build a MiniDebugInfo library (gcc, objcopy, xz, strip): {e}"));
            return;
        }
    };
    for_each_interpreter(&[interp], 1, |interp| {
        for (lib, named) in [(&with_mini, true), (&stripped, false)] {
            let target = start_with(interp, lib)?.ok_or("the host interpreter cannot load C code")?;
            let deadline = Instant::now() + SETTLE;
            loop {
                let out = run_vizattach(&["dump", "--pid", &target.pid.to_string(), "--json", "--native"])?;
                let v: Value =
                    serde_json::from_str(&out.stdout).map_err(|e| format!("not JSON ({e}): {}", out.describe()))?;
                let frames = thread(&v, "c-caller")?["frames"].as_array().cloned().unwrap_or_default();
                let ours: Vec<&Value> = frames.iter().filter(|f| f["library"] == "libvzblock.so").collect();
                let has = |name: &str| ours.iter().any(|f| f["function"] == name);
                // the exported caller is named either way (.dynsym): the stack reached it
                if has("vz_block_outer") && ours.len() >= 2 {
                    if has("vz_block_inner") != named {
                        return Err(format!(
                            "{}: vz_block_inner named: {}, expected {named}; frames: {ours:?}",
                            lib.display(),
                            !named
                        ));
                    }
                    runs_on(&target)?;
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!("{}: no vz_block_outer with its callee: {frames:?}", lib.display()));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        Ok(())
    });
}

/// Every thread of the target untraced and not stopped, and the ticker thread counting.
fn runs_on(target: &Target) -> Result<(), String> {
    let deadline = Instant::now() + SETTLE;
    loop {
        let stopped = stopped_or_traced(target.pid);
        if stopped.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("threads still stopped or traced: {stopped:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let ticks = |t: &Target| std::fs::read_to_string(t.host_path("ticks.txt")).ok().and_then(|s| s.parse::<u64>().ok());
    let before = ticks(target).ok_or("no ticks.txt")?;
    let deadline = Instant::now() + SETTLE;
    while ticks(target).unwrap_or(0) <= before {
        if Instant::now() > deadline {
            return Err(format!("the ticker thread stopped counting at {before}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn host_interpreter() -> Option<Interpreter> {
    dump_targets()?.into_iter().find(|i| i.name == "host-python3.11")
}

/// SIGKILL vizattach while it holds a thread paused, KILLS times: every time, the
/// kernel resumes the thread and the target runs on.
#[test]
fn sigkill_during_native_dump_never_leaves_the_target_stopped() {
    let Some(interp) = host_interpreter() else {
        missing_prerequisite("no host-python3.11 in the manifest");
        return;
    };
    for_each_interpreter(&[interp], 1, |interp| {
        let target = start(interp)?.ok_or("the host interpreter cannot load C code")?;
        for i in 0..KILLS {
            let mut v = KillOnDrop(
                Command::new(VIZATTACH)
                    .args(["dump", "--pid", &target.pid.to_string(), "--native", "--native-hold-ms", "2000"])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .map_err(|e| e.to_string())?,
            );
            wait_traced(target.pid, SETTLE).map_err(|e| format!("kill {i}: {e}"))?;
            // SAFETY: signalling our own child.
            unsafe { libc::kill(v.pid() as i32, libc::SIGKILL) };
            let _ = v.0.wait();
            runs_on(&target).map_err(|e| format!("after kill {i}: {e}"))?;
        }
        eprintln!("     {KILLS} SIGKILLs while a thread was paused; the target ran on after each");
        Ok(())
    });
}

/// vizattach stopped (SIGSTOP) while it holds a thread paused: its watchdog SIGKILLs it
/// within the documented bound, and the thread runs on.
#[test]
fn watchdog_resumes_the_target_when_vizattach_hangs() {
    let Some(interp) = host_interpreter() else {
        missing_prerequisite("no host-python3.11 in the manifest");
        return;
    };
    for_each_interpreter(&[interp], 1, |interp| {
        let target = start(interp)?.ok_or("the host interpreter cannot load C code")?;
        let mut v = KillOnDrop(
            Command::new(VIZATTACH)
                .args(["dump", "--pid", &target.pid.to_string(), "--native", "--native-hold-ms", "60000"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .map_err(|e| e.to_string())?,
        );
        wait_traced(target.pid, SETTLE)?;
        let stopped_at = Instant::now();
        // SAFETY: signalling our own child.
        unsafe { libc::kill(v.pid() as i32, libc::SIGSTOP) };
        let status = loop {
            if let Some(s) = v.exited() {
                break s;
            }
            if stopped_at.elapsed() > WATCHDOG_BOUND {
                return Err(format!("vizattach still alive {WATCHDOG_BOUND:?} after SIGSTOP: no watchdog"));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        use std::os::unix::process::ExitStatusExt;
        if status.signal() != Some(libc::SIGKILL) {
            return Err(format!("vizattach ended with {status}, not by its watchdog's SIGKILL"));
        }
        eprintln!("     watchdog ended a stopped vizattach after {:?}", stopped_at.elapsed());
        runs_on(&target)
    });
}

/// Without the right to ptrace, --native fails with one line naming the remedy, and the
/// target is untouched. (Only meaningful as root: drops to nobody.)
#[test]
fn native_without_ptrace_permission_is_one_clear_line() {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        missing_prerequisite("not root: cannot drop privileges for the no-permission case");
        return;
    }
    let Some(interp) = host_interpreter() else {
        missing_prerequisite("no host-python3.11 in the manifest");
        return;
    };
    for_each_interpreter(&[interp], 1, |interp| {
        let target = start(interp)?.ok_or("the host interpreter cannot load C code")?;
        let mut cmd = Command::new("setpriv");
        cmd.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            VIZATTACH,
            "dump",
            "--pid",
            &target.pid.to_string(),
            "--native",
        ]);
        let out = run_with_timeout(cmd, Duration::from_secs(60))?;
        let line = expect_error_line(&out)?;
        if !line.contains("CAP_SYS_PTRACE") {
            return Err(format!("the error should name the remedy: {line}"));
        }
        runs_on(&target)
    });
}
