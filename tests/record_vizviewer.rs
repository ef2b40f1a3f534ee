//! A trace written by vizattach opens in VizTracer's own viewer (vizviewer), installed
//! from PyPI into a venv under the target dir.

mod common;

use common::recording::*;
use common::trace::*;
use common::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------
// vizviewer
// ---------------------------------------------------------------------------------------

/// A venv with viztracer under the target dir, created on first use. Err when pip
/// cannot install it.
fn vizviewer() -> Result<PathBuf, String> {
    let venv = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("viztracer-venv");
    let exe = venv.join("bin/vizviewer");
    if exe.exists() {
        return Ok(exe);
    }
    let python = if Path::new(HOST_PYTHON311).exists() { HOST_PYTHON311 } else { "python3" };
    let _ = fs::remove_dir_all(&venv);
    let mut cmd = Command::new(python);
    cmd.args(["-m", "venv"]).arg(&venv);
    let out = run_with_timeout(cmd, Duration::from_secs(120))?;
    if !out.status.success() {
        return Err(format!("{python} -m venv failed: {}", out.describe()));
    }
    let mut cmd = Command::new(venv.join("bin/pip"));
    cmd.args(["install", "-q", "viztracer"]);
    let out = run_with_timeout(cmd, Duration::from_secs(300))?;
    if !out.status.success() || !exe.exists() {
        return Err(format!("pip install viztracer failed: {}", out.describe()));
    }
    Ok(exe)
}

/// GET http://127.0.0.1:port/path; returns (status code, body).
fn http_get(port: u16, path: &str) -> Result<(u16, Vec<u8>), String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| format!("read {path}: {e}"))?;
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n").ok_or(format!("GET {path}: no HTTP header"))?;
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or(format!("GET {path}: bad status line {head:?}"))?;
    Ok((code, buf[head_end + 4..].to_vec()))
}

#[test]
fn record_trace_opens_in_vizviewer() {
    let _serial = serial();
    let Some(manifest) = load_manifest() else {
        return;
    };
    let Some(interp) = manifest.iter().filter(|i| i.is_supported()).min_by_key(|i| i.in_chroot()).cloned() else {
        missing_prerequisite("no supported interpreter in the manifest");
        return;
    };
    let viewer = match vizviewer() {
        Ok(v) => v,
        Err(e) => {
            missing_prerequisite(&format!("cannot install viztracer: {e}"));
            return;
        }
    };
    let work = WorkDir::new(&interp).unwrap();
    let out = work.host_path("trace.json");
    let truth = work.target_path("truth.json").display().to_string();
    let run = launch(&work, "timeline_main.py", &[truth], &out).unwrap();
    assert!(run.status.success(), "vizattach record failed: {}", run.describe());
    let fixture = work.target_path("timeline_main.py").display().to_string();
    let trace = check_trace(&out, &interp.root, Some(&fixture)).unwrap_or_else(|e| panic!("{e}"));

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let log = work.host_path("vizviewer.log");
    let mut cmd = Command::new(&viewer);
    cmd.args(["--server_only", "--port", &port.to_string()])
        .arg(&out)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&log).unwrap())
        .stderr(fs::File::create(work.host_path("vizviewer.err")).unwrap());
    let mut server = KillOnDrop(cmd.spawn().expect("spawn vizviewer"));
    let deadline = Instant::now() + Duration::from_secs(60);
    let read_logs = || {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            fs::read_to_string(&log).unwrap_or_default(),
            fs::read_to_string(work.host_path("vizviewer.err")).unwrap_or_default()
        )
    };
    loop {
        if let Some(s) = server.exited() {
            panic!("vizviewer exited ({s}) instead of serving {}:\n{}", out.display(), read_logs());
        }
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "vizviewer did not listen on port {port} within 60 s:\n{}", read_logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    // The page, then what its front end asks for: vizviewer_info, the trace itself
    // (localtrace) and file_info (viztracer/viewer.py, PerfettoHandler).
    let (code, body) = http_get(port, "/").unwrap();
    assert_eq!(code, 200, "GET /: {}", String::from_utf8_lossy(&body));
    let (code, _) = http_get(port, "/vizviewer_info").unwrap();
    assert_eq!(code, 200, "GET /vizviewer_info");
    let (code, body) = http_get(port, "/localtrace").unwrap();
    assert_eq!(code, 200, "GET /localtrace");
    assert_eq!(body, fs::read(&out).unwrap(), "/localtrace does not serve the trace file");
    let (code, body) = http_get(port, "/file_info").unwrap();
    assert_eq!(code, 200, "GET /file_info");
    let info: Value = serde_json::from_slice(&body).expect("file_info is JSON");
    let served: BTreeSet<&String> = info["files"].as_object().map(|m| m.keys().collect()).unwrap_or_default();
    assert!(served.contains(&fixture), "vizviewer's file_info lacks the fixture {fixture:?}: {served:?}");
    assert_eq!(served.len(), trace.files.len());
    assert!(server.exited().is_none(), "vizviewer died while serving:\n{}", read_logs());
    let logs = read_logs();
    assert!(
        !logs.contains("Traceback") && !logs.to_lowercase().contains("error"),
        "vizviewer reported an error:\n{logs}"
    );
    drop(server);
}
