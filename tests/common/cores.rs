//! Core files of test targets (gdb's gcore, or the kernel's own on a crash) and
//! `vizattach dump --core` on them.

use super::*;

pub const GCORE: &str = "/usr/bin/gcore";

/// The environment of targets that gcore will copy. gdb writes every mapping in full,
/// and glibc reserves 64 MB of address space per thread arena: with one arena a
/// fixture's core is tens of MB instead of up to a GB. Nothing Python does changes.
pub const SMALL_CORE_ENV: &[(&str, &str)] = &[("MALLOC_ARENA_MAX", "1")];

/// Where a test keeps its cores: big files, removed when the guard drops.
pub fn core_dir(name: &str) -> Result<(PathBuf, DirGuard), String> {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("cores-{}-{name}", std::process::id()));
    fs::create_dir_all(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    Ok((dir.clone(), DirGuard::new(dir)))
}

/// `gcore -o DIR/core PID`: a core of the running process (it is stopped while gdb
/// copies it, and runs on afterwards). Returns the core's path.
pub fn gcore(pid: u32, dir: &Path) -> Result<PathBuf, String> {
    let prefix = dir.join("core");
    let mut cmd = Command::new(GCORE);
    cmd.arg("-o").arg(&prefix).arg(pid.to_string());
    let out = run_with_timeout(cmd, Duration::from_secs(120))?;
    let path = PathBuf::from(format!("{}.{pid}", prefix.display()));
    if !out.status.success() || !path.exists() {
        return Err(format!("gcore {pid} made no core: {}", out.describe()));
    }
    Ok(path)
}

/// gcore is part of gdb (scripts/test.sh installs it): a skip note, or a failure under CI.
pub fn have_gcore() -> bool {
    if Path::new(GCORE).exists() {
        return true;
    }
    missing_prerequisite(&format!("{GCORE} is missing (apt-get install gdb)"));
    false
}

/// `vizattach dump --core CORE --json EXTRA...`, which must succeed; the raw JSON.
pub fn dump_core_json(core: &Path, extra: &[&str]) -> Result<Value, String> {
    let core_s = core.to_string_lossy();
    let mut args = vec!["dump", "--core", &core_s, "--json"];
    args.extend_from_slice(extra);
    let out = run_vizattach(&args)?;
    if !out.status.success() {
        return Err(format!("vizattach {} failed: {}", args.join(" "), out.describe()));
    }
    serde_json::from_str(&out.stdout)
        .map_err(|e| format!("dump output is not JSON ({e}): {}", truncate(&out.stdout, 2000)))
}

/// `vizattach dump --core CORE EXTRA...`, which must fail with one line; that line.
pub fn dump_core_error(core: &Path, extra: &[&str]) -> Result<String, String> {
    let core_s = core.to_string_lossy();
    let mut args = vec!["dump", "--core", &core_s];
    args.extend_from_slice(extra);
    expect_error_line(&run_vizattach(&args)?)
}

/// Whether the kernel writes cores as "core" in the crashing process's working
/// directory (a skip note, or a failure under CI, otherwise: the crash tests need it).
pub fn kernel_writes_core_in_cwd() -> bool {
    let pattern = fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap_or_default();
    if pattern.trim() == "core" {
        return true;
    }
    missing_prerequisite(&format!("kernel.core_pattern is {:?}, not \"core\"", pattern.trim()));
    false
}

/// Crashes the target (SIGABRT, core dumps allowed for it alone with prlimit) and moves
/// the core the kernel wrote into `dir`. The kernel writes it in the process's working
/// directory: the root's "/" for a target in a chroot (chroot(1) starts it there; one
/// crash at a time), its work directory otherwise. Paths in it are as the
/// process saw them, inside its root.
pub fn crash_core(target: &mut Target, dir: &Path) -> Result<PathBuf, String> {
    // tests run side by side, and every crash in one root writes the same ROOT/core
    static ONE_CRASH_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _turn = ONE_CRASH_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let written =
        if target.interpreter.in_chroot() { target.interpreter.root.join("core") } else { target.host_path("core") };
    let _ = fs::remove_file(&written);
    let pid = target.pid.to_string();
    let steps: [(&str, &[&str]); 2] = [("prlimit", &["--pid", &pid, "--core=unlimited"]), ("kill", &["-ABRT", &pid])];
    for (cmd, args) in steps {
        let out = Command::new(cmd).args(args).output().map_err(|e| format!("{cmd}: {e}"))?;
        if !out.status.success() {
            return Err(format!("{cmd} {args:?}: {}", String::from_utf8_lossy(&out.stderr)));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = target.exited() {
            break s;
        }
        if Instant::now() > deadline {
            return Err("the target did not die of SIGABRT within 60 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    use std::os::unix::process::ExitStatusExt;
    if !status.core_dumped() {
        return Err(format!("the target died ({status}) without a core"));
    }
    let core = dir.join("core");
    // a copy keeps the kernel's holes (it writes pages never touched as holes): fs::copy
    // uses copy_file_range, which keeps them on the usual file systems
    fs::copy(&written, &core).map_err(|e| format!("copy {}: {e}", written.display()))?;
    let _ = fs::remove_file(&written);
    Ok(core)
}
