//! `vizattach dump --json` against live fixtures on every interpreter in the manifest
//! (plus a libpython embedder and a deleted executable), and its error cases.
//!
//! Each fixture records the stacks vizattach must print from inside the target itself
//! (see tests/fixtures/_vizfixture.py), so expectations are exact on every version.
//!
//!     cargo test --test dump -- --nocapture
//!
//! Interpreters come from $VIZATTACH_PYTHONS/manifest.json (scripts/install-pythons.sh);
//! without it the tests print a skip note, or fail when CI=true.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Targets checked concurrently within one test (they mostly sleep while being dumped).
const WORKERS: usize = 3;
/// How long a settled fixture may take to show exactly its expected threads (the
/// recorder thread has to exit first).
const SETTLE: Duration = Duration::from_secs(15);

/// Starts `fixture` on every target, waits for its recorded stacks, then requires the
/// dump to match them exactly.
fn check_fixture_everywhere(fixture: &str) {
    let Some(targets) = dump_targets() else {
        return;
    };
    for_each_interpreter(&targets, WORKERS, |interp| {
        let mut target = Target::start(interp, fixture)?;
        let expected = target.wait_expected()?;
        let got = dump_until_tids(target.pid, &expected.tids(), SETTLE)?;
        check_dump(&expected, &got)
    });
}

/// Main thread in time.sleep in a nested function; Worker.run -> inner -> lambda ->
/// Event.wait; 1000-deep recursion; a generator frame; coroutine frames under
/// asyncio.run; a non-ASCII function in a non-ASCII file name.
#[test]
fn dump_main_fixture() {
    check_fixture_everywhere("main_fixture.py");
}

/// The last-resort discovery for stripped binaries (scanning the binary's data for a
/// runtime whose structures hold together, PyCode_Type from a running frame) must find
/// the same interpreter: same exact stacks as the expected ones.
#[test]
fn dump_by_scanning_for_the_runtime() {
    let Some(targets) = dump_targets() else {
        return;
    };
    for_each_interpreter(&targets, WORKERS, |interp| {
        let mut target = Target::start(interp, "main_fixture.py")?;
        let expected = target.wait_expected()?;
        dump_until_tids(target.pid, &expected.tids(), SETTLE)?;
        let got = dump_with(target.pid, &["--scan"])?;
        check_dump(&expected, &got)
    });
}

/// 200 blocked threads (Event.wait and time.sleep) plus the main thread.
#[test]
fn dump_many_threads() {
    check_fixture_everywhere("many_threads.py");
}

/// Dumps taken while short-lived threads are created and finish continuously.
const CHURN_DUMPS: usize = 20;
/// A thread caught while starting or exiting has no Python frame yet (or any more): its
/// thread state is linked but its frame stack is empty. That is a true state, not
/// garbage, so it is tolerated (and counted) for the short-lived threads only.
const TRANSIENT_EMPTY_STACKS_ALLOWED: bool = true;

#[test]
fn dump_churn() {
    let Some(targets) = dump_targets() else {
        return;
    };
    for_each_interpreter(&targets, WORKERS, |interp| {
        let mut target = Target::start(interp, "churn.py")?;
        let expected = target.wait_expected()?;
        let stable = expected.tids();
        // Wait for the recorder thread to be gone before counting runs.
        dump_until(target.pid, SETTLE, |d| {
            let tids = d.tids();
            stable.is_subset(&tids) && !tids.contains(&expected.recorder_tid)
        })
        .map_err(|(last, e)| format!("churn never settled: {e}; last tids {:?}", last.map(|d| d.tids())))?;

        let fixture_dir = target.target_path("");
        let mut problems = Vec::new();
        let (mut transient_seen, mut transient_empty) = (0, 0);
        let mut bad_runs = Vec::new();
        for run in 0..CHURN_DUMPS {
            let problems_before = problems.len();
            let got = dump(target.pid).map_err(|e| format!("run {run}: {e}"))?;
            for d in diff_threads(&expected.threads, &got.threads, true) {
                problems.push(format!("run {run}: {d}"));
            }
            for p in dump_sanity(&got) {
                problems.push(format!("run {run}: {p}"));
            }
            if got.pid != expected.pid {
                problems.push(format!("run {run}: pid {} instead of {}", got.pid, expected.pid));
            }
            for t in got.threads.iter().filter(|t| t.tid.is_none_or(|tid| !stable.contains(&tid))) {
                transient_seen += 1;
                // No OS thread (yet, or any more) is only possible for thread_id 0.
                if t.tid.is_none() && t.thread_id != Some(0) {
                    problems.push(format!(
                        "run {run}: thread_id {:?} {:?} has a null tid but is bound to a thread",
                        t.thread_id, t.name
                    ));
                }
                if t.frames.is_empty() {
                    transient_empty += 1;
                    if !TRANSIENT_EMPTY_STACKS_ALLOWED {
                        problems.push(format!("run {run}: thread {:?} {:?} has no frames", t.tid, t.name));
                    }
                }
                for (i, f) in t.frames.iter().enumerate() {
                    if let Err(why) = plausible_churn_frame(f, &fixture_dir) {
                        problems.push(format!("run {run}: thread {:?} {:?} frame #{i} {f}: {why}", t.tid, t.name));
                    }
                }
            }
            if problems.len() > problems_before {
                bad_runs.push(run);
            }
        }
        eprintln!(
            "     {}: {CHURN_DUMPS} dumps, {transient_seen} non-stable thread stacks seen, {transient_empty} of them empty",
            interp.name
        );
        if problems.is_empty() {
            Ok(())
        } else {
            let total = problems.len();
            problems.truncate(40);
            Err(format!(
                "{} of {CHURN_DUMPS} runs wrong (runs {bad_runs:?}), {total} problems; the first ones:\n{}",
                bad_runs.len(),
                problems.join("\n")
            ))
        }
    });
}

/// A frame of the spawner or a short-lived thread: code from the fixture directory or
/// the threading machinery, a real line, a real name.
fn plausible_churn_frame(f: &Frame, fixture_dir: &Path) -> Result<(), String> {
    if f.line <= 0 {
        return Err("line is not positive".into());
    }
    if f.function.is_empty() || f.function.chars().any(|c| c.is_control()) {
        return Err("implausible function name".into());
    }
    let file = Path::new(&f.file);
    let from_fixture = file.starts_with(fixture_dir);
    let threading = matches!(file.file_name().and_then(|n| n.to_str()), Some("threading.py") | Some("_weakrefset.py"));
    if from_fixture || threading {
        Ok(())
    } else {
        Err("file is neither the fixture nor threading.py/_weakrefset.py".into())
    }
}

// ---------------------------------------------------------------------------------------
// Errors: one "vizattach: ..." line on stderr and a non-zero exit.
// ---------------------------------------------------------------------------------------

fn dump_error(pid: u32) -> String {
    let out = run_vizattach(&["dump", "--pid", &pid.to_string(), "--json"]).unwrap();
    expect_error_line(&out).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn error_no_such_process() {
    let pid_max: u32 =
        std::fs::read_to_string("/proc/sys/kernel/pid_max").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(32768);
    let pid = (2..pid_max).rev().find(|p| !Path::new(&format!("/proc/{p}")).exists()).expect("a free pid");
    let line = dump_error(pid);
    assert!(
        line.to_lowercase().contains("no such process") && line.contains(&pid.to_string()),
        "expected \"no such process\" and the pid {pid} in: {line}"
    );
}

#[test]
fn error_not_python() {
    let mut cmd = Command::new("sleep");
    cmd.arg("100");
    let sleeper = KillOnDrop(cmd.spawn().expect("spawn sleep"));
    wait_for_exec(sleeper.pid(), Duration::from_secs(5)).unwrap();
    let line = dump_error(sleeper.pid());
    assert!(line.contains("not a Python process"), "expected \"not a Python process\" in: {line}");
}

#[test]
fn error_unsupported_version() {
    let Some(manifest) = load_manifest() else {
        return;
    };
    let old: Vec<Interpreter> = manifest.into_iter().filter(|i| !i.is_supported()).collect();
    if old.is_empty() {
        eprintln!("SKIP: no interpreter older than 3.8 in the manifest");
        return;
    }
    for_each_interpreter(&old, WORKERS, |interp| {
        let mut target = Target::start(interp, "idle.py")?;
        target.wait_json("expected.json", Duration::from_secs(30))?;
        let out = run_vizattach(&["dump", "--pid", &target.pid.to_string(), "--json"])?;
        let line = expect_error_line(&out)?;
        if line.contains(&interp.minor_version()) && line.to_lowercase().contains("supported") {
            Ok(())
        } else {
            Err(format!("expected {:?} and \"supported\" in: {line}", interp.minor_version()))
        }
    });
}

/// A target that exits while it is being read: vizattach either prints a complete dump
/// or says the process exited (or is gone), in one line, never garbage or a panic.
#[test]
fn target_exits_while_being_read() {
    let Some(manifest) = load_manifest() else {
        return;
    };
    let Some(host) = manifest.iter().find(|i| i.is_supported() && !i.in_chroot()) else {
        missing_prerequisite("no supported host interpreter in the manifest");
        return;
    };
    let mut outcomes = std::collections::BTreeMap::new();
    for i in 0..30u64 {
        // Lives a few ms into its run, so dumps land before, during and after its exit.
        let mut cmd = Command::new(&host.executable);
        cmd.args([
            "-c",
            &format!(
                "import time\ndef f(n):\n  return f(n-1) if n else time.sleep({})\nf(50)",
                (i % 10) as f64 * 0.004
            ),
        ]);
        let child = KillOnDrop(cmd.spawn().expect("spawn python"));
        std::thread::sleep(Duration::from_millis(25 + (i % 7) * 6));
        let out = run_vizattach(&["dump", "--pid", &child.pid().to_string(), "--json"]).unwrap();
        let outcome = if out.status.success() {
            let v: serde_json::Value = serde_json::from_str(&out.stdout)
                .unwrap_or_else(|e| panic!("run {i}: a successful dump must be JSON ({e}): {}", out.stdout));
            assert!(v["threads"].is_array(), "run {i}: malformed dump {v}");
            "complete dump"
        } else {
            let line = expect_error_line(&out).unwrap_or_else(|e| panic!("run {i}: {e}"));
            let l = line.to_lowercase();
            assert!(
                l.contains("exited") || l.contains("no such process") || l.contains("not a python process"),
                "run {i}: unexpected error for an exiting target: {line}"
            );
            if line.contains("exited") {
                "exit reported"
            } else {
                "gone before reading"
            }
        };
        *outcomes.entry(outcome).or_insert(0) += 1;
    }
    eprintln!("     outcomes over 30 racing dumps: {outcomes:?}");
}

#[test]
fn error_permission_denied() {
    let Some(manifest) = load_manifest() else {
        return;
    };
    let Some(host) = manifest.iter().find(|i| i.is_supported() && !i.in_chroot()) else {
        missing_prerequisite("no supported host interpreter in the manifest");
        return;
    };
    if !Path::new("/usr/bin/setpriv").exists() {
        missing_prerequisite("setpriv is missing");
        return;
    }
    // The target runs as root (we are root); vizattach runs as nobody.
    let mut target = Target::start(host, "idle.py").unwrap();
    target.wait_json("expected.json", Duration::from_secs(30)).unwrap();
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", VIZATTACH]).args([
        "dump",
        "--pid",
        &target.pid.to_string(),
        "--json",
    ]);
    let out = run_with_timeout(cmd, Duration::from_secs(60)).unwrap();
    let line = expect_error_line(&out).unwrap_or_else(|e| panic!("{e}"));
    assert!(line.contains("CAP_SYS_PTRACE"), "expected CAP_SYS_PTRACE in: {line}");
}

/// Sanity of the harness itself: the shared helpers see the same set of tids in an
/// expectation as the fixture recorded (kept cheap: no vizattach involved).
#[test]
fn harness_expected_file_is_well_formed() {
    let Some(manifest) = load_manifest() else {
        return;
    };
    let Some(host) = manifest.iter().find(|i| i.is_supported() && !i.in_chroot()) else {
        return;
    };
    let mut target = Target::start(host, "main_fixture.py").unwrap();
    let expected = target.wait_expected().unwrap();
    let names: BTreeSet<&str> = expected.threads.iter().filter_map(|t| t.name.as_deref()).collect();
    let want: BTreeSet<&str> =
        ["MainThread", "worker-1", "recurser", "generator", "asyncio", "unicode-ü"].into_iter().collect();
    assert_eq!(names, want);
    assert_eq!(expected.pid, target.pid as i64);
    assert!(!expected.tids().contains(&expected.recorder_tid));
}
