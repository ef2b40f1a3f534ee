//! Free-threaded builds are refused with one clear line. No free-threaded CPython can be
//! installed here (README, "Builds"), so a real 3.13+ interpreter is made to describe
//! itself as one: it sets the `free_threaded` flag of its own `_Py_DebugOffsets` (read only
//! by debuggers, never by the interpreter) through ctypes, and vizattach must refuse it for
//! dump and record alike.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

/// The offset of `free_threaded` in `_Py_DebugOffsets`, from the generated table.
fn flag_offset(minor: &str) -> Result<u64, String> {
    let path = format!("{}/python_versions/{minor}.toml", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    let mut in_debug = false;
    for line in text.lines() {
        if line.starts_with('[') {
            in_debug = line == "[debug]";
        } else if let Some(v) = line.strip_prefix("free_threaded = ").filter(|_| in_debug) {
            return v.trim().parse().map_err(|e| format!("{path}: free_threaded = {v}: {e}"));
        }
    }
    Err(format!("{path} has no [debug] free_threaded"))
}

const CLAIM: &str = r#"
import ctypes, sys, time
runtime = ctypes.addressof(ctypes.c_char.in_dll(ctypes.pythonapi, "_PyRuntime"))
ctypes.memmove(runtime + int(sys.argv[1]), (1).to_bytes(8, "little"), 8)
print("claimed", flush=True)
time.sleep(120)
"#;

fn check(interp: &Interpreter) -> Result<(), String> {
    let offset = flag_offset(&interp.minor_version())?;
    let work = WorkDir::new(interp)?;
    std::fs::write(work.host_path("claim.py"), CLAIM).map_err(|e| e.to_string())?;
    let argv = work.command_line("claim.py", &[offset.to_string()]);
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null());
    let mut target = KillOnDrop(cmd.spawn().map_err(|e| format!("spawn {argv:?}: {e}"))?);
    let mut line = String::new();
    BufReader::new(target.0.stdout.take().unwrap()).read_line(&mut line).map_err(|e| e.to_string())?;
    if line.trim() != "claimed" {
        return Err(format!("the target did not set its flag (exit {:?})", target.exited()));
    }
    let pid = target.pid().to_string();
    let never = work.host_path("never.json");
    let never_s = never.display().to_string();
    for args in [vec!["dump", "--pid", &pid], vec!["record", "--pid", &pid, "--duration", "1s", "-o", &never_s]] {
        let out = run_vizattach(&args)?;
        let err = expect_error_line(&out)?;
        if !err.contains("free-threaded") {
            return Err(format!("{args:?}: the error does not say why: {err}"));
        }
    }
    if never.exists() {
        return Err("a refused record still wrote its output file".into());
    }
    if target.exited().is_some() {
        return Err("the target died".into());
    }
    Ok(())
}

#[test]
fn free_threaded_builds_are_refused() {
    let Some(all) = load_manifest() else {
        return;
    };
    // 3.13+ describe themselves; the static test builds keep _PyRuntime out of reach of
    // ctypes (it is not exported), so they cannot make the claim.
    let targets: Vec<Interpreter> = all.into_iter().filter(|i| i.version_tuple() >= (3, 13, 0) && i.shared).collect();
    if targets.is_empty() {
        missing_prerequisite("no 3.13+ interpreter in the manifest");
        return;
    }
    for_each_interpreter(&targets, 2, check);
}
