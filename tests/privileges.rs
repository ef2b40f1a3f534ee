//! What a user without the right to read the target sees (README, "Kubernetes and
//! containers"): one line that names the remedy (CAP_SYS_PTRACE, SYS_PTRACE for Docker
//! and Kubernetes) and a failure status, for `dump` and `record`, with the plain and
//! the static binary; the target keeps running untouched. And the same commands work
//! once the right is there.
//!
//!     cargo test --release --test privileges -- --nocapture
//!
//! Needs root (to drop to nobody, and to drop CAP_SYS_PTRACE with setpriv).

mod common;

use common::ship::*;
use common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const NOBODY: &str = "65534";

/// A host python3.11 sleeping, started through `setpriv ARGS` (as another user, say), in
/// a directory anyone may write. Killed and removed on drop.
struct Sleeper {
    process: KillOnDrop,
    pid: u32,
    dir: PathBuf,
}

impl Sleeper {
    fn start(setpriv: &[&str]) -> Sleeper {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = PathBuf::from(format!("/tmp/vizattach-privileges-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        fs::copy(Path::new(FIXTURES).join("idle.py"), dir.join("idle.py")).unwrap();
        let mut cmd = Command::new("setpriv");
        cmd.args(setpriv).arg("--").arg(HOST_PYTHON311).arg(dir.join("idle.py")).arg(dir.join("ready.json"));
        let mut process = KillOnDrop(cmd.stdin(Stdio::null()).stdout(Stdio::null()).spawn().unwrap());
        let deadline = Instant::now() + Duration::from_secs(60);
        let pid = loop {
            if let Ok(text) = fs::read_to_string(dir.join("ready.json")) {
                let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                break v["pid"].as_u64().unwrap() as u32;
            }
            assert!(process.exited().is_none(), "the sleeper exited before it was ready");
            assert!(Instant::now() < deadline, "the sleeper was not ready within 60 s");
            std::thread::sleep(Duration::from_millis(20));
        };
        Sleeper { process, pid, dir }
    }

    /// Running, not stopped: state R or S in /proc/PID/stat.
    fn state(&self) -> char {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap();
        stat.rsplit(')').next().unwrap().trim().chars().next().unwrap()
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.process.0.kill();
        let _ = self.process.0.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn run_as(setpriv: &[&str], exe: &Path, args: &[&str]) -> RunOutput {
    let mut cmd = Command::new("setpriv");
    cmd.args(setpriv).arg("--").arg(exe).args(args);
    run_with_timeout(cmd, Duration::from_secs(60)).unwrap()
}

/// The plain and the static binary, copied where any user may run them (the checkout
/// may not be open to others).
fn binaries(dir: &Path) -> Vec<PathBuf> {
    let static_bin = static_binary().unwrap_or_else(|e| panic!("{e}"));
    [(PathBuf::from(VIZATTACH), "vizattach"), (static_bin, "vizattach-static")]
        .into_iter()
        .map(|(from, name)| {
            let to = dir.join(name);
            if !to.exists() {
                copy_executable(&from, &to).unwrap_or_else(|e| panic!("{e}"));
            }
            to
        })
        .collect()
}

/// Both commands fail with the one permission line, leave no output file, and leave
/// the target running.
fn check_denied(setpriv: &[&str], target: &Sleeper) {
    for exe in binaries(&target.dir) {
        let pid = target.pid.to_string();
        let dump = run_as(setpriv, &exe, &["dump", "--pid", &pid]);
        let out = target.dir.join("denied.json");
        let record = run_as(setpriv, &exe, &["record", "--pid", &pid, "-d", "1s", "-o", out.to_str().unwrap()]);
        for (what, r) in [("dump", &dump), ("record", &record)] {
            let line = expect_error_line(r).unwrap_or_else(|e| panic!("{} {what}: {e}", exe.display()));
            for needle in ["permission denied", &format!("process {pid}"), "CAP_SYS_PTRACE", "--cap-add SYS_PTRACE"] {
                assert!(line.contains(needle), "{} {what}: {needle:?} not in: {line}", exe.display());
            }
            eprintln!("{} {what} (setpriv {}): {line}", exe.display(), setpriv.join(" "));
        }
        assert!(!out.exists(), "record left {} behind", out.display());
        assert!(matches!(target.state(), 'S' | 'R'), "target state {} after the attempt", target.state());
    }
}

fn check_allowed(setpriv: &[&str], target: &Sleeper) {
    for exe in binaries(&target.dir) {
        let r = run_as(setpriv, &exe, &["dump", "--json", "--pid", &target.pid.to_string()]);
        let d = parse_dump(&r).unwrap_or_else(|e| panic!("{} (setpriv {}): {e}", exe.display(), setpriv.join(" ")));
        let main = d.threads.iter().find(|t| t.name.as_deref() == Some("MainThread")).expect("no MainThread");
        assert!(main.frames.first().is_some_and(|f| f.file.ends_with("idle.py")), "{:?}", main.frames);
    }
}

fn yama_restricts() -> bool {
    fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope").is_ok_and(|s| s.trim() != "0")
}

/// An unprivileged user against a root-owned target.
#[test]
fn unprivileged_user_against_a_root_target() {
    let target = Sleeper::start(&[]);
    check_denied(&["--reuid", NOBODY, "--regid", NOBODY, "--clear-groups"], &target);
}

/// Root without CAP_SYS_PTRACE (a container without SYS_PTRACE) against another user's
/// target; with the capability the same commands work.
#[test]
fn root_without_cap_sys_ptrace_against_another_users_target() {
    let target = Sleeper::start(&["--reuid", NOBODY, "--regid", NOBODY, "--clear-groups"]);
    check_denied(&["--bounding-set", "-sys_ptrace", "--inh-caps", "-sys_ptrace"], &target);
    check_allowed(&[], &target);
}

/// The target's own user needs no capability (unless Yama restricts ptrace).
#[test]
fn the_targets_own_user_needs_no_capability() {
    if yama_restricts() {
        eprintln!("SKIP: kernel.yama.ptrace_scope is not 0 here");
        return;
    }
    let as_nobody = ["--reuid", NOBODY, "--regid", NOBODY, "--clear-groups"];
    let target = Sleeper::start(&as_nobody);
    check_allowed(&as_nobody, &target);
}
