//! `record --subprocesses` on a real pre-fork server: gunicorn (three sync workers,
//! installed from PyPI into a venv) with --max-requests, so that under load driven to
//! 127.0.0.1 its workers exit and are replaced during the capture, and one is killed
//! with SIGKILL mid-capture. Every worker that served its full quota while the load ran
//! is in the trace, under its own pid, with its requests; the killed one's slices end by
//! its death, and a worker booted after it is followed.

mod common;

use common::trace::*;
use common::*;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

/// Requests a worker serves before gunicorn replaces it.
const MAX_REQUESTS: usize = 30;

/// A venv with gunicorn, made once under CARGO_TARGET_TMPDIR (as tests/common/tp.rs
/// makes viztracer's).
fn gunicorn() -> Option<PathBuf> {
    let venv = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fleet-tools/venv");
    let bin = venv.join("bin/gunicorn");
    if bin.exists() {
        return Some(bin);
    }
    let made = fs::create_dir_all(venv.parent().unwrap()).map_err(|e| e.to_string()).and_then(|()| {
        tp::sh(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
        tp::sh(Command::new(venv.join("bin/pip")).args(["install", "-q", "gunicorn==27.0.1"]))
    });
    match made {
        Ok(()) if bin.exists() => Some(bin),
        Ok(()) => {
            missing_prerequisite("pip installed gunicorn but bin/gunicorn is missing");
            None
        }
        Err(e) => {
            missing_prerequisite(&format!("cannot install gunicorn from PyPI: {e}"));
            None
        }
    }
}

/// How long a worker has lived before the test may kill it as one vizattach follows.
const OLD_ENOUGH: Duration = Duration::from_millis(600);

/// How long process `pid` has been running (None: gone, or a zombie), to the kernel's
/// clock tick.
fn age(pid: i64) -> Option<Duration> {
    vizattach::process::identity::of(pid as i32).map(|id| id.age())
}

/// CLOCK_MONOTONIC in microseconds: the trace's clock.
fn monotonic_us() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 * 1e6 + ts.tv_nsec as f64 / 1e3
}

fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

/// One GET; the pid of the worker that answered.
fn get(port: u16, n: usize) -> Option<i64> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET /r{n} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.rsplit(" from ").next()?.trim().parse().ok()
}

struct RmDir(PathBuf);
impl Drop for RmDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Kills the master and every worker it booted, whatever happened.
struct Server {
    master: KillOnDrop,
    log: PathBuf,
}

impl Server {
    fn booted(&self) -> Vec<i64> {
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        log.lines().filter_map(|l| l.split("Booting worker with pid: ").nth(1)?.trim().parse().ok()).collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        for p in self.booted() {
            // SAFETY: kill(2) on workers of the server this test started
            unsafe { libc::kill(p as i32, libc::SIGKILL) };
        }
        let _ = self.master.0.kill();
        let _ = self.master.0.wait();
    }
}

#[test]
fn subprocesses_follows_gunicorn_workers_replaced_under_load() {
    let Some(bin) = gunicorn() else { return };
    if let Err(e) = server_capture(&bin) {
        panic!("{e}");
    }
}

fn server_capture(bin: &Path) -> Result<(), String> {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("gunicorn-{}", std::process::id()));
    fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let _cleanup = RmDir(dir.clone());
    let port = free_port()?;
    let log = dir.join("gunicorn.log");
    let mut cmd = Command::new(bin);
    cmd.args(["--chdir", FIXTURES, "--workers", "3", "--worker-class", "sync", "--max-requests"])
        .arg(MAX_REQUESTS.to_string())
        .args(["--max-requests-jitter", "0", "--log-level", "info", "--bind"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("fleet_wsgi:app")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).map_err(|e| e.to_string())?);
    let server = Server { master: KillOnDrop(cmd.spawn().map_err(|e| format!("spawn gunicorn: {e}"))?), log };
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.booted().len() < 3 || get(port, 0).is_none() {
        if Instant::now() > deadline {
            return Err(format!("gunicorn did not come up: {}", fs::read_to_string(&server.log).unwrap_or_default()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let master = server.master.pid() as i64;

    let out = dir.join("server.json");
    let stderr_file = dir.join("vizattach-stderr.txt");
    let mut viz = common::recording::start_recording_tree(master, "5s", &out, &stderr_file)?;
    // Load for 3.5 s of the 5 s capture, sequential requests from one client.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut served: BTreeMap<i64, usize> = BTreeMap::new();
            let mut n = 1;
            while !stop.load(Ordering::Relaxed) {
                if let Some(pid) = get(port, n) {
                    *served.entry(pid).or_default() += 1;
                }
                n += 1;
            }
            served
        })
    };
    // Mid-load, one worker dies without warning (an OOM kill, a segfault in an
    // extension): its slices must end cleanly and its replacement must be followed.
    std::thread::sleep(Duration::from_millis(1500));
    // The youngest live worker that has lived long enough to have been attached (the
    // process tree is looked at every 150 ms, and attaching takes a moment): before, the
    // second newest was taken, and once it had not been attached yet (CI, 2026-11-30).
    let chosen = Instant::now() + Duration::from_secs(3);
    let victim = loop {
        let old_enough = server.booted().into_iter().rev().find(|&p| age(p).is_some_and(|a| a >= OLD_ENOUGH));
        if let Some(p) = old_enough {
            break p;
        }
        if Instant::now() > chosen {
            return Err(format!("no worker lived {OLD_ENOUGH:?} under load: booted {:?}", server.booted()));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let killed_us = monotonic_us();
    // SAFETY: kill(2) on a worker of the server this test started
    unsafe { libc::kill(victim as i32, libc::SIGKILL) };
    let booted_before_kill = server.booted().len();
    std::thread::sleep(Duration::from_millis(2000));
    stop.store(true, Ordering::Relaxed);
    let served = load.join().map_err(|_| "the load thread failed")?;
    let status = common::recording::wait_exit(&mut viz, Duration::from_secs(60)).ok_or("vizattach did not stop")?;
    let stderr = fs::read_to_string(&stderr_file).unwrap_or_default();
    if !status.success() {
        return Err(format!("record --subprocesses exited with {status}: {stderr}"));
    }
    let file = Path::new(FIXTURES).join("fleet_wsgi.py").display().to_string();
    let trace = check_trace_of(&out, Path::new("/"), Some(&file), None)
        .map_err(|e| format!("{e}\nvizattach said: {stderr}"))?;

    // Workers that served their whole quota while the load ran lived through it: each is
    // in the trace with its own requests.
    let replaced: Vec<i64> = served.iter().filter(|(_, &n)| n == MAX_REQUESTS).map(|(&p, _)| p).collect();
    if replaced.len() < 3 {
        return Err(format!("only {} workers were replaced under load: served {served:?}", replaced.len()));
    }
    for pid in &replaced {
        let requests = trace.slices.iter().filter(|s| s.pid == *pid && s.qual == "handle_request").count();
        if requests == 0 {
            return Err(format!(
                "worker {pid} served {MAX_REQUESTS} requests during the capture but has no handle_request slice; \
                 processes in the trace: {:?}",
                trace.processes.keys().collect::<Vec<_>>()
            ));
        }
    }
    if !trace.processes.contains_key(&victim) {
        return Err(format!("the worker {victim} killed mid-capture is not in the trace"));
    }
    if let Some(late) = trace.slices.iter().find(|s| s.pid == victim && s.end() > killed_us + 1000.0) {
        return Err(format!(
            "worker {victim}, killed mid-capture: {} ends {:.1} ms after the kill",
            late.name,
            (late.end() - killed_us) / 1000.0
        ));
    }
    let after_kill = server.booted().into_iter().skip(booted_before_kill).collect::<Vec<_>>();
    if !after_kill.iter().any(|p| trace.slices.iter().any(|s| s.pid == *p && s.qual == "handle_request")) {
        return Err(format!(
            "no worker booted after the kill ({after_kill:?}) served a request in the trace: {:?}",
            trace.processes.keys().collect::<Vec<_>>()
        ));
    }
    let booted: BTreeSet<i64> = server.booted().into_iter().collect();
    for pid in trace.processes.keys() {
        if *pid != master && !booted.contains(pid) {
            return Err(format!(
                "process {pid} in the trace is neither the master nor a worker: {:?}",
                trace.processes
            ));
        }
    }
    if !trace.processes.contains_key(&master) {
        return Err(format!("the master {master} is not in the trace"));
    }
    if trace.meta["skipped_children"]["not_python"].as_u64() != Some(0) {
        return Err(format!("skipped_children: {}", trace.meta["skipped_children"]));
    }
    eprintln!(
        "  gunicorn: {} requests, {} workers replaced under load, worker {victim} killed and replaced, {} processes in the trace",
        served.values().sum::<usize>(),
        replaced.len(),
        trace.processes.len()
    );
    Ok(())
}
