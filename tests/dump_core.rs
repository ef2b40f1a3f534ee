//! `vizattach dump --core`: the stacks of a process read from its ELF core file must be
//! the ones `dump --pid` read from the same process, and the ones the fixture recorded
//! about itself (tests/fixtures/_vizfixture.py): cores made by gdb's gcore of live
//! fixtures on interpreters old and new, shared and static-stripped, in and out of
//! debootstrap roots; a core the kernel wrote when a process in a chroot crashed (its
//! paths are as the process saw them: --root); and the errors: not a core, a truncated
//! core, a core of a process that is not Python, files missing or not the ones mapped.
//!
//!     cargo test --release --test dump_core -- --test-threads=2 --nocapture

mod common;

use common::cores::*;
use common::*;

/// Targets checked concurrently within one test (cores by gcore are tens of MB each).
const WORKERS: usize = 2;
const SETTLE: Duration = Duration::from_secs(15);

/// Cores made by gcore of live processes: the host's 3.11 (shared, and embedded through
/// libpython), 3.8-3.13 from pyenv, 3.9 and 3.13 in debootstrap roots, and three static
/// stripped ones (found by scanning, not by symbols). Not sid's: its glibc (2.41+) guards
/// thread stacks with guard regions (MADV_GUARD_INSTALL), which gdb cannot read, and
/// gcore then writes zeros for the rest of each thread's stack; the kernel's cores of
/// those are checked instead (CRASH_TARGETS).
const GCORE_TARGETS: &[&str] = &[
    "host-python3.11",
    "embed-libpython3.11",
    "pyenv-3.8.18",
    "pyenv-3.10.13",
    "pyenv-3.12.1",
    "pyenv-3.13.0",
    "bullseye-python3.9",
    "trixie-python3.13",
    "host-static-stripped-3.11",
    "bullseye-static-stripped-3.9",
    "trixie-static-stripped-3.13",
];

/// Cores the kernel wrote when the process crashed, as it writes them for a process in a
/// container: paths inside the process's root (--root). sid's 3.14 and 3.15 (shared, and
/// static stripped), bullseye's 3.9, and the host's 3.11 (no root to give). One at a time:
/// the kernel writes each into its root's "/".
const CRASH_TARGETS: &[&str] =
    &["sid-python3.14", "sid-python3.15", "sid-static-stripped-3.15", "bullseye-python3.9", "host-python3.11"];

fn core_targets(names: &[&str]) -> Option<Vec<Interpreter>> {
    if !have_gcore() {
        return None;
    }
    let all = dump_targets()?;
    let mut out = Vec::new();
    for name in names {
        match all.iter().find(|i| i.name == *name) {
            Some(i) => out.push(i.clone()),
            None => missing_prerequisite(&format!("interpreter {name} is not in the manifest")),
        }
    }
    Some(out)
}

#[derive(Clone, Copy)]
enum Maker {
    Gcore,
    Crash,
}

/// A core of the target and the arguments `dump --core` needs to find its files. A crash
/// ends the target.
fn make_core(target: &mut Target, how: Maker, dir: &Path) -> Result<(PathBuf, Vec<String>), String> {
    match how {
        Maker::Gcore => Ok((gcore(target.pid, dir)?, Vec::new())),
        Maker::Crash => {
            let core = crash_core(target, dir)?;
            let interp = &target.interpreter;
            if !interp.in_chroot() {
                return Ok((core, Vec::new()));
            }
            // the paths in the core are the chroot's: without --root they are not found
            let line = dump_core_error(&core, &[])?;
            if !line.contains("--root") {
                return Err(format!("without --root the error should say to give it: {line}"));
            }
            Ok((core, vec!["--root".into(), interp.root.to_string_lossy().into_owned()]))
        }
    }
}

/// A live fixture's stacks, then a core of it: the dump of the core must be exactly the
/// fixture's own record and the live dump, thread for thread, frame for frame.
fn check_stacks(names: &[&str], how: Maker, workers: usize) {
    let Some(targets) = core_targets(names) else { return };
    if matches!(how, Maker::Crash) && !kernel_writes_core_in_cwd() {
        return;
    }
    for_each_interpreter(&targets, workers, |interp| {
        let mut target = Target::start_with_env(interp, "main_fixture.py", SMALL_CORE_ENV)?;
        let expected = target.wait_expected()?;
        let live = dump_until_tids(target.pid, &expected.tids(), SETTLE)?;
        let (dir, _cleanup) = core_dir(&interp.name)?;
        let (core, files) = make_core(&mut target, how, &dir)?;
        let files: Vec<&str> = files.iter().map(String::as_str).collect();
        let v = dump_core_json(&core, &files)?;
        let got = Dump::from_json(&v).map_err(|e| format!("malformed dump of the core ({e})"))?;
        check_dump(&expected, &got).map_err(|e| format!("against the fixture's record: {e}"))?;
        let diffs = diff_threads(&live.threads, &got.threads, false);
        if !diffs.is_empty() {
            return Err(format!("against the live dump:\n{}", diffs.join("\n")));
        }
        if v["core"] != core.to_string_lossy().as_ref() {
            return Err(format!("\"core\" is {}, not the core's path", v["core"]));
        }
        if matches!(how, Maker::Crash) && interp.in_chroot() && got.libpython.is_none() {
            // the runtime is in the executable: that file alone is enough, and the ones
            // not found are listed by --verbose
            let exe = rooted(&interp.root, &interp.executable);
            let core_s = core.to_string_lossy();
            let exe_s = exe.to_string_lossy();
            let out = run_vizattach(&["dump", "--core", &core_s, "--json", "--verbose", "--executable", &exe_s])?;
            if !out.status.success() || !out.stderr.contains("left out") {
                return Err(format!("--executable alone: {}", out.describe()));
            }
            let v: Value = serde_json::from_str(&out.stdout).map_err(|e| format!("not JSON ({e})"))?;
            let alone = Dump::from_json(&v).map_err(|e| format!("malformed dump ({e})"))?;
            check_dump(&expected, &alone).map_err(|e| format!("with --executable alone: {e}"))?;
        }
        Ok(())
    });
}

#[test]
fn gcore_shows_the_stacks_the_live_process_showed() {
    check_stacks(GCORE_TARGETS, Maker::Gcore, WORKERS);
}

#[test]
fn crash_core_shows_the_stacks_the_live_process_showed() {
    check_stacks(CRASH_TARGETS, Maker::Crash, 1);
}

/// The stuck fixture (a deadlock of two Locks, an RLock owned by another thread, a
/// Condition nobody notifies, known locals in nested frames, a generator and a
/// coroutine): statuses, waits, owners, deadlocks and locals from the core are the ones
/// the live dump showed (all but "on CPU", which a core cannot tell the way /proc does).
fn check_waits_and_locals(names: &[&str], how: Maker, workers: usize) {
    let Some(targets) = core_targets(names) else { return };
    if matches!(how, Maker::Crash) && !kernel_writes_core_in_cwd() {
        return;
    }
    for_each_interpreter(&targets, workers, |interp| {
        let mut target = Target::start_with_env(interp, "stuck.py", SMALL_CORE_ENV)?;
        target.wait_expected()?;
        let live = settled_stuck_dump(target.pid)?;
        let (dir, _cleanup) = core_dir(&format!("stuck-{}", interp.name))?;
        let (core, mut args) = make_core(&mut target, how, &dir)?;
        args.push("--locals".into());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let got = dump_core_json(&core, &args)?;
        let (want, have) = (comparable(&live)?, comparable(&got)?);
        if want != have {
            return Err(format!(
                "the core's dump differs from the live one:\nlive: {}\ncore: {}",
                serde_json::to_string_pretty(&want).unwrap_or_default(),
                serde_json::to_string_pretty(&have).unwrap_or_default()
            ));
        }
        Ok(())
    });
}

#[test]
fn gcore_shows_the_waits_and_locals_the_live_process_showed() {
    check_waits_and_locals(&["host-python3.11", "bullseye-python3.9", "trixie-python3.13"], Maker::Gcore, WORKERS);
}

#[test]
fn crash_core_shows_the_waits_and_locals_the_live_process_showed() {
    check_waits_and_locals(&["sid-python3.14", "sid-python3.15"], Maker::Crash, 1);
}

/// `--native` from a core: each thread's C stack unwound from the registers and stack the
/// core recorded, spliced with its Python frames, is the one a live `--native` showed
/// of the same process (frame for frame: function, library, address, file:line).
fn check_native(names: &[&str], how: Maker) {
    let Some(targets) = core_targets(names) else { return };
    if matches!(how, Maker::Crash) && !kernel_writes_core_in_cwd() {
        return;
    }
    for_each_interpreter(&targets, 1, |interp| {
        let mut target = Target::start_with_env(interp, "main_fixture.py", SMALL_CORE_ENV)?;
        let expected = target.wait_expected()?;
        dump_until_tids(target.pid, &expected.tids(), SETTLE)?;
        let out = run_vizattach(&["dump", "--pid", &target.pid.to_string(), "--json", "--native"])?;
        if !out.status.success() {
            return Err(format!("live dump --native failed: {}", out.describe()));
        }
        let live: Value = serde_json::from_str(&out.stdout).map_err(|e| format!("not JSON ({e})"))?;
        let (dir, _cleanup) = core_dir(&format!("native-{}", interp.name))?;
        let (core, mut args) = make_core(&mut target, how, &dir)?;
        args.push("--native".into());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let got = dump_core_json(&core, &args)?;
        let stacks = |v: &Value| -> Result<Vec<(Value, Value, Value)>, String> {
            let mut t: Vec<(Value, Value, Value)> = v["threads"]
                .as_array()
                .ok_or("no threads")?
                .iter()
                .map(|t| (t["tid"].clone(), t["frames"].clone(), t["native_error"].clone()))
                .collect();
            t.sort_by_key(|t| t.0.as_i64());
            Ok(t)
        };
        let (want, have) = (stacks(&live)?, stacks(&got)?);
        let native_frames = |s: &[(Value, Value, Value)]| {
            s.iter().flat_map(|t| t.1.as_array().cloned().unwrap_or_default()).filter(|f| f["kind"] == "native").count()
        };
        if native_frames(&have) == 0 {
            return Err("the core's dump has no C frames".into());
        }
        if want != have {
            return Err(format!(
                "C stacks differ:\nlive: {}\ncore: {}",
                serde_json::to_string_pretty(&want).unwrap_or_default(),
                serde_json::to_string_pretty(&have).unwrap_or_default()
            ));
        }
        Ok(())
    });
}

#[test]
fn gcore_native_stacks_are_the_live_ones() {
    check_native(&["host-python3.11", "bullseye-python3.9"], Maker::Gcore);
}

#[test]
fn crash_core_native_stacks_are_the_live_ones() {
    check_native(&["sid-python3.14"], Maker::Crash);
}

/// `dump --pid --json --locals` once the stuck fixture's deadlock shows and two dumps in
/// a row agree (every parked thread asleep where it parks).
fn settled_stuck_dump(pid: u32) -> Result<Value, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last: Option<Value> = None;
    loop {
        let out = run_vizattach(&["dump", "--pid", &pid.to_string(), "--json", "--locals"])?;
        if !out.status.success() {
            return Err(format!("live dump failed: {}", out.describe()));
        }
        let v: Value = serde_json::from_str(&out.stdout).map_err(|e| format!("not JSON ({e})"))?;
        let deadlocked = v["deadlocks"].as_array().is_some_and(|d| !d.is_empty());
        if deadlocked && last.as_ref().map(comparable).transpose()? == Some(comparable(&v)?) {
            return Ok(v);
        }
        if Instant::now() > deadline {
            return Err(format!("the stuck fixture never settled; last dump: {}", out.stdout));
        }
        last = Some(v);
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// A dump without what a core cannot know the way a live process shows it (on CPU), and
/// without where it was read from (a crash core names the executable by its path inside
/// the root); threads in tid order.
fn comparable(v: &Value) -> Result<Value, String> {
    let mut threads = v["threads"].as_array().ok_or("no threads array")?.clone();
    for t in &mut threads {
        if let Some(s) = t["status"].as_object_mut() {
            s.remove("on_cpu");
        }
    }
    threads.sort_by_key(|t| t["tid"].as_i64());
    Ok(
        serde_json::json!({"pid": v["pid"], "version": v["python"]["version"], "threads": threads, "deadlocks": v["deadlocks"]}),
    )
}

/// A process whose executable was deleted: the core names "PATH (deleted)", which is
/// gone; --executable gives the file back (its build id is checked: the wrong build is
/// refused).
#[test]
fn core_of_a_deleted_executable_needs_executable() {
    let Some(targets) = core_targets(&["deleted-exe-python3.11"]) else { return };
    for_each_interpreter(&targets, 1, |interp| {
        let mut target = Target::start_with_env(interp, "main_fixture.py", SMALL_CORE_ENV)?;
        let expected = target.wait_expected()?;
        dump_until_tids(target.pid, &expected.tids(), SETTLE)?;
        let (dir, _cleanup) = core_dir("deleted-exe")?;
        let core = gcore(target.pid, &dir)?;
        let line = dump_core_error(&core, &[])?;
        if !(line.contains("python3.11 (deleted)") && line.contains("--executable")) {
            return Err(format!("the error should name the deleted executable and --executable: {line}"));
        }
        let got = Dump::from_json(&dump_core_json(&core, &["--executable", HOST_PYTHON311])?)
            .map_err(|e| format!("malformed dump ({e})"))?;
        check_dump(&expected, &got)?;
        // the debug build is another executable: its build id differs
        let wrong = "/usr/bin/python3.11d";
        if Path::new(wrong).exists() {
            let line = dump_core_error(&core, &["--executable", wrong])?;
            if !(line.contains("build id") && line.contains("not the file the process had mapped")) {
                return Err(format!("--executable {wrong} should be refused by build id: {line}"));
            }
        }
        Ok(())
    });
}

/// gcore of processes on sid's glibc, whose thread stacks start with a guard region gdb
/// cannot read (it then writes zeros for the rest of the stack): every thread is shown
/// either exactly as the fixture recorded it, or without frames and with the reason;
/// the main thread (whose stack has no such guard) always as recorded. No thread shows
/// a wrong stack.
#[test]
fn gcore_shows_what_it_holds_of_guarded_thread_stacks() {
    let Some(targets) = core_targets(&["sid-python3.14", "sid-python3.15"]) else { return };
    for_each_interpreter(&targets, WORKERS, |interp| {
        let mut target = Target::start_with_env(interp, "main_fixture.py", SMALL_CORE_ENV)?;
        let expected = target.wait_expected()?;
        dump_until_tids(target.pid, &expected.tids(), SETTLE)?;
        let (dir, _cleanup) = core_dir(&format!("guarded-{}", interp.name))?;
        let core = gcore(target.pid, &dir)?;
        let v = dump_core_json(&core, &[])?;
        let got = Dump::from_json(&v).map_err(|e| format!("malformed dump of the core ({e})"))?;
        let errors: Vec<(Option<i64>, String)> = v["threads"]
            .as_array()
            .ok_or("no threads")?
            .iter()
            .filter_map(|t| Some((t["tid"].as_i64(), t["error"].as_str()?.to_string())))
            .collect();
        let mut problems = Vec::new();
        for (tid, why) in &errors {
            if *tid == Some(expected.pid) {
                problems.push(format!("the main thread's stack is unreadable: {why}"));
            }
            if !why.contains("zeros") {
                problems.push(format!("thread {tid:?}: the reason should say what was read: {why}"));
            }
            if got.threads.iter().any(|t| t.tid == *tid && !t.frames.is_empty()) {
                problems.push(format!("thread {tid:?} has both an error and frames"));
            }
        }
        let readable: Vec<ThreadStack> =
            got.threads.iter().filter(|t| !errors.iter().any(|(tid, _)| *tid == t.tid)).cloned().collect();
        let want: Vec<ThreadStack> =
            expected.threads.iter().filter(|t| !errors.iter().any(|(tid, _)| *tid == t.tid)).cloned().collect();
        problems.extend(diff_threads(&want, &readable, false));
        if got.tids() != expected.tids() {
            problems.push(format!("threads {:?}, expected {:?}", got.tids(), expected.tids()));
        }
        eprintln!(
            "{}: {} of {} thread stacks unreadable in gcore's core",
            interp.name,
            errors.len(),
            got.threads.len()
        );
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n"))
        }
    });
}

/// One failing run: exit status 1 (not a panic's 101), one line naming the problem.
fn expect_core_error(core: &Path, extra: &[&str], says: &str) -> Result<(), String> {
    let core_s = core.to_string_lossy();
    let mut args = vec!["dump", "--core", &core_s];
    args.extend_from_slice(extra);
    let out = run_vizattach(&args)?;
    let line = expect_error_line(&out)?;
    if out.status.code() != Some(1) {
        return Err(format!("exit status {} instead of 1: {line}", out.status));
    }
    if !line.contains(says) {
        return Err(format!("the error should say {says:?}: {line}"));
    }
    Ok(())
}

#[test]
fn what_is_not_a_readable_core_is_refused_in_one_line() {
    let (dir, _cleanup) = core_dir("not-cores").unwrap();
    let text = dir.join("notes.txt");
    fs::write(&text, "not a core\n").unwrap();
    let empty = dir.join("empty");
    fs::write(&empty, "").unwrap();
    let mut failures = Vec::new();
    for (file, says) in [
        (text.as_path(), "not an ELF file"),
        (empty.as_path(), "not an ELF file"),
        (Path::new(VIZATTACH), "not a core file"),
        (Path::new("/nonexistent/core.1"), "cannot open"),
    ] {
        if let Err(e) = expect_core_error(file, &[], says) {
            failures.push(format!("{}: {e}", file.display()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A core cut short anywhere (a full disk, a dump killed half way), and one whose bytes
/// were overwritten: a one-line error, never a panic or a wrong dump.
#[test]
fn truncated_and_damaged_cores_are_refused_in_one_line() {
    let Some(targets) = core_targets(&["host-python3.11"]) else { return };
    for_each_interpreter(&targets, 1, |interp| {
        let mut target = Target::start_with_env(interp, "main_fixture.py", SMALL_CORE_ENV)?;
        let expected = target.wait_expected()?;
        dump_until_tids(target.pid, &expected.tids(), SETTLE)?;
        let (dir, _cleanup) = core_dir("truncated")?;
        let core = gcore(target.pid, &dir)?;
        let whole = fs::metadata(&core).map_err(|e| e.to_string())?.len();
        let cut = dir.join("cut");
        // (not the last few KB: gcore ends its cores with section headers, which nothing reads)
        for len in [10, 64, 200, 4096, whole / 3, whole / 2, whole / 10 * 9] {
            copy_prefix(&core, &cut, len)?;
            expect_core_error(&cut, &[], "").map_err(|e| format!("cut to {len} of {whole} bytes: {e}"))?;
            let line = dump_core_error(&cut, &[])?;
            if !(line.contains("truncated") || line.contains("not an ELF")) {
                return Err(format!("cut to {len} bytes: the error should say truncated: {line}"));
            }
        }
        // garbage over the program headers and over a stretch of memory: an error or a
        // dump, but never a panic
        fs::copy(&core, &cut).map_err(|e| e.to_string())?;
        overwrite(&cut, 64, 4096, 0xa5)?;
        expect_core_error(&cut, &[], "").map_err(|e| format!("program headers overwritten: {e}"))?;
        fs::copy(&core, &cut).map_err(|e| e.to_string())?;
        overwrite(&cut, whole / 2, 1 << 20, 0x5a)?;
        let out = run_vizattach(&["dump", "--core", &cut.to_string_lossy()])?;
        if !out.status.success() {
            expect_error_line(&out).map_err(|e| format!("memory overwritten: {e}"))?;
        }
        if out.status.code() == Some(101) {
            return Err(format!("memory overwritten: panicked: {}", out.describe()));
        }
        Ok(())
    });
}

fn copy_prefix(from: &Path, to: &Path, len: u64) -> Result<(), String> {
    let mut src = fs::File::open(from).map_err(|e| e.to_string())?.take(len);
    let mut dst = fs::File::create(to).map_err(|e| e.to_string())?;
    std::io::copy(&mut src, &mut dst).map_err(|e| e.to_string())?;
    Ok(())
}

fn overwrite(path: &Path, at: u64, len: usize, byte: u8) -> Result<(), String> {
    use std::io::{Seek, Write};
    let mut f = fs::OpenOptions::new().write(true).open(path).map_err(|e| e.to_string())?;
    f.seek(std::io::SeekFrom::Start(at)).map_err(|e| e.to_string())?;
    f.write_all(&vec![byte; len]).map_err(|e| e.to_string())
}

/// A core of a process that is not Python says so.
#[test]
fn core_of_a_process_that_is_not_python() {
    if !have_gcore() {
        return;
    }
    let child = Command::new("sleep").arg("120").stdout(Stdio::null()).spawn().expect("start sleep");
    let child = KillOnDrop(child);
    let (dir, _cleanup) = core_dir("not-python").unwrap();
    let core = gcore(child.pid(), &dir).unwrap();
    expect_core_error(&core, &[], "was not a Python process").unwrap();
}

/// --core takes the place of --pid; --root and --executable only make sense with it.
#[test]
fn core_arguments_are_checked() {
    let mut failures = Vec::new();
    for (args, code, says) in [
        (&["dump"][..], 2, "--core <FILE>"),
        (&["dump", "--core", "c", "--pid", "1"][..], 2, "cannot be used with"),
        (&["dump", "--core", "c", "--subprocesses"][..], 2, "cannot be used with"),
        (&["dump", "--pid", "1", "--root", "/"][..], 1, "go with --core"),
        (&["dump", "--pid", "1", "--executable", "/usr/bin/python3"][..], 1, "go with --core"),
    ] {
        let result = run_vizattach(args).and_then(|out| {
            let line = expect_error_line(&out)?;
            if out.status.code() != Some(code) || !line.contains(says) {
                return Err(format!("exit {} (want {code}), should say {says:?}: {line}", out.status));
            }
            Ok(())
        });
        if let Err(e) = result {
            failures.push(format!("{args:?}: {e}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
