//! The static release binary (scripts/build-static) run the ways a container runs it:
//! alone in an empty root, inside Debian bullseye's root (glibc 2.31), inside a new pid +
//! mount namespace against a Python there, and from the host against a Python inside
//! such a namespace. In each, `dump --json` must show the fixture's exact stacks and a
//! short `record` must hold a slice for every one of its frames.
//!
//!     cargo test --release --test static_binary -- --nocapture
//!
//! Needs root (chroot, mount, unshare) and the interpreters of scripts/install-pythons.sh.

mod common;

use common::ship::*;
use common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn bin() -> PathBuf {
    static_binary().unwrap_or_else(|e| panic!("{e}"))
}

/// `vizattach ARGS` chrooted into `root` with a fresh /proc mounted there, in a mount
/// namespace of its own (so the mount vanishes with it). `exe` is the binary's path
/// inside `root`.
fn run_chrooted(root: &Path, exe: &str, args: &[&str]) -> Result<RunOutput, String> {
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        "mount -t proc proc \"$0/proc\" && exec chroot \"$@\"",
    ])
    .arg(root)
    .arg(root)
    .arg(exe)
    .args(args);
    run_with_timeout(cmd, Duration::from_secs(120))
}

/// A short record of `pid` must name every frame of the settled fixture.
fn check_record(
    run: impl Fn(&[&str]) -> Result<RunOutput, String>,
    out_arg: &str,
    host_out: &Path,
    expected: &Expected,
) -> Result<(), String> {
    let r = run(&["record", "--pid", &expected.pid.to_string(), "--duration", "1s", "-q", "-o", out_arg])?;
    if !r.status.success() {
        return Err(format!("record failed: {}", r.describe()));
    }
    let n = check_trace_has_stacks(host_out, expected)?;
    eprintln!("  record: {n} distinct slices in {}", host_out.display());
    Ok(())
}

#[test]
fn static_binary_is_static() {
    let b = bin();
    assert_eq!(not_static(&b).unwrap(), None, "{} is not static", b.display());
    // and the plain build is not: the check can tell them apart
    assert!(not_static(Path::new(VIZATTACH)).unwrap().is_some(), "{VIZATTACH} looks static");
    // ldd of a static binary says so and lists no library
    let ldd = Command::new("ldd").arg(&b).output().unwrap();
    let text = String::from_utf8_lossy(&ldd.stdout).to_string() + &String::from_utf8_lossy(&ldd.stderr);
    assert!(!text.contains("=>") && !text.contains("libc.so"), "ldd {}: {text}", b.display());
    // Static glibc cannot serve user, group or host look-ups (NSS loads its modules at
    // run time): none of their entry points may be linked in. (std's weak-symbol probes
    // pull in dlsym, which finds nothing in a static binary and is harmless.)
    let nm = Command::new("nm").arg("--defined-only").arg(&b).output().expect("nm (binutils)");
    assert!(nm.status.success(), "nm {}: {}", b.display(), String::from_utf8_lossy(&nm.stderr));
    let symbols = String::from_utf8_lossy(&nm.stdout);
    let nss: Vec<&str> = symbols
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .filter(|s| {
            matches!(
                *s,
                "getpwnam"
                    | "getpwnam_r"
                    | "getpwuid"
                    | "getpwuid_r"
                    | "getgrnam"
                    | "getgrgid"
                    | "getgrouplist"
                    | "initgroups"
                    | "getaddrinfo"
                    | "gethostbyname"
                    | "gethostbyname_r"
                    | "getservbyname"
                    | "getnameinfo"
            )
        })
        .collect();
    assert!(nss.is_empty(), "{} links NSS look-ups: {nss:?}", b.display());
    eprintln!("{}: {} bytes, static", b.display(), fs::metadata(&b).unwrap().len());
}

/// Only the binary and /proc: no libc, no shell, no /etc, no /tmp.
#[test]
fn static_binary_in_an_empty_root() {
    let Some(interps) = container_interpreters() else {
        return;
    };
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("empty-root-{}", std::process::id()));
    let _ = fs::remove_dir_all(&root);
    fs::create_dir_all(root.join("proc")).unwrap();
    copy_executable(&bin(), &root.join("vizattach")).unwrap();
    struct Cleanup(PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(root.clone());
    let names: Vec<String> =
        fs::read_dir(&root).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
    assert_eq!(names.len(), 2, "the root holds more than the binary and proc/: {names:?}");
    for_each_interpreter(&interps, 1, |interp| {
        let mut target = Target::start(interp, "main_fixture.py")?;
        let expected = target.wait_expected()?;
        dump_matches(&expected, || {
            run_chrooted(&root, "/vizattach", &["dump", "--json", "--pid", &target.pid.to_string()])
        })?;
        let out = format!("trace-{}.json", interp.name);
        check_record(|a| run_chrooted(&root, "/vizattach", a), &format!("/{out}"), &root.join(&out), &expected)
    });
}

/// Inside Debian bullseye's root (glibc 2.31, older than the build machine's), against
/// bullseye's own python3.9.
#[test]
fn static_binary_in_the_bullseye_root() {
    let Some(interp) = bullseye() else {
        return;
    };
    for_each_interpreter(&[interp], 1, |interp| {
        let mut target = Target::start(interp, "main_fixture.py")?;
        let expected = target.wait_expected()?;
        // The work directory lives inside the bullseye root; the binary goes there too.
        copy_executable(&bin(), &target.host_path("vizattach"))?;
        let exe = target.target_path("vizattach").display().to_string();
        let libc = fs::read_dir(interp.root.join("lib/x86_64-linux-gnu"))
            .map_err(|e| e.to_string())?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .find(|n| n.starts_with("libc-2."));
        eprintln!("  bullseye root's glibc: {libc:?}");
        dump_matches(&expected, || {
            run_chrooted(&interp.root, &exe, &["dump", "--json", "--pid", &target.pid.to_string()])
        })?;
        let out = target.target_path("trace.json").display().to_string();
        check_record(|a| run_chrooted(&interp.root, &exe, a), &out, &target.host_path("trace.json"), &expected)
    });
}

/// `kubectl exec` / `docker exec`: vizattach runs in the target's pid and mount
/// namespaces, where the target is pid 1 and the ids are the namespace's own.
#[test]
fn static_binary_inside_a_pid_namespace() {
    let Some(interps) = container_interpreters() else {
        return;
    };
    let b = bin();
    for_each_interpreter(&interps, 2, |interp| {
        let mut target = NsTarget::start(interp, "main_fixture.py")?;
        let expected = target.wait_expected()?;
        if expected.pid != 1 {
            return Err(format!("the fixture is pid {} in its namespace, not 1", expected.pid));
        }
        dump_matches(&expected, || target.run_inside(&b, &["dump", "--json", "--pid", "1"]))?;
        let out = target.host_path("trace.json");
        // the work directory is the same path in the namespace's mount namespace (a copy
        // of ours), and inside the interpreter's root for the fixture
        check_record(|a| target.run_inside(&b, a), &out.display().to_string(), &out, &expected)
    });
}

/// vizattach on the host, the target in a pid namespace of its own: the dump and the
/// trace use our pid and tids (NSpid), so they line up with host tools.
#[test]
fn static_binary_from_the_host_into_a_pid_namespace() {
    let Some(interps) = container_interpreters() else {
        return;
    };
    let b = bin();
    for_each_interpreter(&interps, 2, |interp| {
        let mut target = NsTarget::start(interp, "main_fixture.py")?;
        let in_ns = target.wait_expected()?;
        if pid_namespace(target.host_pid)? == pid_namespace(std::process::id())? {
            return Err("the fixture shares our pid namespace".into());
        }
        let tids = ns_to_host_tids(target.host_pid)?;
        let expected = expected_renumbered(&in_ns, target.host_pid as i64, &tids)?;
        if expected.tids().iter().any(|t| in_ns.tids().contains(t)) {
            return Err(format!("namespace and host tids overlap: {:?} / {:?}", in_ns.tids(), expected.tids()));
        }
        let run = |args: &[&str]| {
            let mut cmd = Command::new(&b);
            cmd.args(args);
            run_with_timeout(cmd, Duration::from_secs(120))
        };
        dump_matches(&expected, || run(&["dump", "--json", "--pid", &target.host_pid.to_string()]))?;
        let out = target.host_path("trace-host.json");
        check_record(run, &out.display().to_string(), &out, &expected)
    });
}
