//! `vizattach demo`: the embedded program recorded into vizattach-demo.json and
//! vizattach-demo.svg, its child gone afterwards; with no Python, one line that says so.
//!
//!     cargo test --release --test demo -- --nocapture

mod common;

use common::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn fresh_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `vizattach demo ARGS` in `dir` with `path` as PATH; returns the output and the
/// pid vizattach ran as (the demo's script directory is named after it).
fn demo(dir: &Path, path: &str, args: &[&str]) -> (RunOutput, u32) {
    let mut cmd = Command::new(VIZATTACH);
    cmd.arg("demo").args(args).current_dir(dir).env("PATH", path);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let run = RunOutput {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    };
    (run, pid)
}

/// Processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = fs::read(e.path().join("cmdline")) {
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if text.contains(needle) {
                found.push(format!("{}: {text}", e.file_name().to_string_lossy()));
            }
        }
    }
    found
}

/// The demo ran, wrote both files with the demo's calls, and left nothing running.
fn check_demo_run(dir: &Path, out: &RunOutput, vizattach_pid: u32) -> Result<(), String> {
    if !out.status.success() {
        return Err(format!("demo failed: {}", out.describe()));
    }
    for needle in ["vizattach-demo.json", "vizattach-demo.svg", "vizviewer", "web browser", "samples"] {
        if !out.stderr.contains(needle) {
            return Err(format!("the demo's output does not mention {needle:?}: {}", out.describe()));
        }
    }
    // the timeline: every demo thread by name, with its calls nested as the program makes them
    let text = fs::read_to_string(dir.join("vizattach-demo.json")).map_err(|e| e.to_string())?;
    let v: Value = serde_json::from_str(&text).map_err(|e| format!("vizattach-demo.json: {e}"))?;
    let events = v["traceEvents"].as_array().ok_or("no traceEvents")?;
    let mut names_by_tid: BTreeMap<i64, String> = BTreeMap::new();
    let mut slices: BTreeMap<i64, BTreeSet<String>> = BTreeMap::new();
    for e in events {
        let tid = e["tid"].as_i64().unwrap_or(-1);
        match e["ph"].as_str() {
            Some("M") if e["name"] == "thread_name" => {
                names_by_tid.insert(tid, e["args"]["name"].as_str().unwrap_or("").to_string());
            }
            Some("X") => {
                let name = e["name"].as_str().unwrap_or("");
                // "qualname (file:line)": keep the function
                slices.entry(tid).or_default().insert(name.split(" (").next().unwrap_or("").to_string());
            }
            _ => {}
        }
    }
    let want: [(&str, &[&str]); 4] = [
        ("MainThread", &["main", "serve", "handle_request", "parse", "tokenize", "render", "rows", "transform"]),
        ("worker-1", &["worker", "compute", "fib"]),
        ("worker-2", &["worker", "compute", "fib"]),
        ("poller", &["poll"]),
    ];
    for (thread, functions) in want {
        let tid = names_by_tid
            .iter()
            .find(|(_, n)| n.starts_with(thread))
            .map(|(t, _)| *t)
            .ok_or(format!("no thread named {thread} in the trace: {names_by_tid:?}"))?;
        let have = slices.get(&tid).cloned().unwrap_or_default();
        let missing: Vec<_> = functions.iter().filter(|f| !have.contains(**f)).collect();
        if !missing.is_empty() {
            return Err(format!("{thread}: no slice of {missing:?}; slices: {have:?}"));
        }
    }
    let source = v["file_info"]["files"].as_object().ok_or("no file_info.files")?;
    if !source.keys().any(|k| k.ends_with("vizattach_demo.py")) {
        return Err(format!("file_info lacks the demo's source: {:?}", source.keys().collect::<Vec<_>>()));
    }
    // the flame graph: an SVG with the same calls
    let svg = fs::read_to_string(dir.join("vizattach-demo.svg")).map_err(|e| e.to_string())?;
    if !svg.contains("<svg") || !svg.contains("fib") || !svg.contains("handle_request") {
        return Err(format!("vizattach-demo.svg is not a flame graph of the demo ({} bytes)", svg.len()));
    }
    // the program is gone and its script directory removed
    let script_dir = format!("vizattach-demo-{vizattach_pid}");
    let left = processes_mentioning(&script_dir);
    if !left.is_empty() {
        return Err(format!("the demo program is still running: {left:?}"));
    }
    if std::env::temp_dir().join(&script_dir).exists() {
        return Err(format!("{script_dir} was left in the temporary directory"));
    }
    Ok(())
}

/// `--python PATH`, the host's python3.11.
#[test]
fn demo_with_python_option() {
    let dir = fresh_dir("demo-option");
    let (out, pid) = demo(&dir, "/usr/bin:/bin", &["--python", HOST_PYTHON311, "--duration", "2s"]);
    check_demo_run(&dir, &out, pid).unwrap();
    let _ = fs::remove_dir_all(&dir);
}

/// The first python3 on PATH: a directory holding only a python3 link to bullseye's
/// 3.9 would need a chroot, so it points at a pyenv build when there is one (another
/// version than the host's), else at the host's python3.11.
#[test]
fn demo_with_python3_from_path() {
    let dir = fresh_dir("demo-path");
    let bin = dir.join("bin");
    fs::create_dir_all(&bin).unwrap();
    let pyenv_312 = dirs_home().join(".pyenv/versions/3.12.1/bin/python3.12");
    let python = if pyenv_312.exists() { pyenv_312 } else { PathBuf::from(HOST_PYTHON311) };
    std::os::unix::fs::symlink(&python, bin.join("python3")).unwrap();
    let path = format!("{}:/nonexistent:/usr/bin:/bin", bin.display());
    let (out, pid) = demo(&dir, &path, &["--duration", "2s"]);
    check_demo_run(&dir, &out, pid).unwrap();
    assert!(out.stderr.contains(&bin.join("python3").display().to_string()), "{}", out.describe());
    let _ = fs::remove_dir_all(&dir);
}

fn dirs_home() -> PathBuf {
    std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"))
}

/// No python3 on PATH: one line saying so, a failure status, no files.
#[test]
fn demo_without_python() {
    let dir = fresh_dir("demo-none");
    let empty = dir.join("empty-bin");
    fs::create_dir_all(&empty).unwrap();
    let (out, _) = demo(&dir, &empty.display().to_string(), &[]);
    let line = expect_error_line(&out).unwrap();
    assert!(line.contains("no python3 on PATH") && line.contains("--python"), "{line}");
    assert!(!dir.join("vizattach-demo.json").exists() && !dir.join("vizattach-demo.svg").exists());

    let (out, _) = demo(&dir, "/usr/bin:/bin", &["--python", "/nonexistent/python3"]);
    let line = expect_error_line(&out).unwrap();
    assert!(line.contains("/nonexistent/python3") && line.contains("--python"), "{line}");
    let _ = fs::remove_dir_all(&dir);
}

/// Not a Python at all: the program never says it is ready; one line, nothing left.
#[test]
fn demo_with_something_that_is_not_python() {
    let dir = fresh_dir("demo-false");
    let (out, pid) = demo(&dir, "/usr/bin:/bin", &["--python", "/bin/false"]);
    let line = expect_error_line(&out).unwrap();
    assert!(line.contains("did not start") && line.contains("--python"), "{line}");
    assert!(!std::env::temp_dir().join(format!("vizattach-demo-{pid}")).exists());
    let _ = fs::remove_dir_all(&dir);
}
