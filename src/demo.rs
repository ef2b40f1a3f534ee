//! `vizattach demo`: the first run. Starts a small program embedded in the binary
//! (demo/program.py: threads, nested calls, a generator, sleeps) with a Python of the
//! machine, records it for a few seconds into vizattach-demo.json and vizattach-demo.svg,
//! says how to open both, and ends the program.

use crate::error::{Error, Result};
use crate::record::{self, Rate};
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const PROGRAM: &str = include_str!("demo/program.py");
pub const JSON: &str = "vizattach-demo.json";
pub const SVG: &str = "vizattach-demo.svg";
/// How long the program may take to start its threads (a cold interpreter on a loaded
/// machine can take seconds).
const START_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Options {
    /// The interpreter; None: the first `python3` on PATH.
    pub python: Option<PathBuf>,
    pub duration: Duration,
    pub rate: Rate,
}

/// The first executable `python3` in PATH.
fn python_on_path() -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("python3"))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// The running demo program and its files; dropping it ends the program (its stdin
/// closes and it is killed) and removes the script's directory.
struct Running {
    child: Child,
    dir: PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start(python: &Path) -> Result<Running> {
    let dir = std::env::temp_dir().join(format!("vizattach-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| Error::Io(format!("cannot create {}: {e}", dir.display())))?;
    let script = dir.join("vizattach_demo.py");
    if let Err(e) = std::fs::write(&script, PROGRAM) {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(Error::Io(format!("cannot write {}: {e}", script.display())));
    }
    let child = Command::new(python)
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        // its own process group: Ctrl-C stops the recording, not the program mid-capture
        .process_group(0)
        .spawn();
    let child = match child {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(Error::Usage(format!(
                "cannot run {}: {e}; pass --python PATH to a Python 3.8 or newer",
                python.display()
            )));
        }
    };
    Ok(Running { child, dir })
}

/// Waits for the program's "ready" line: every thread has started.
fn wait_ready(run: &mut Running, python: &Path) -> Result<()> {
    let stdout = run.child.stdout.take().expect("stdout is piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    match rx.recv_timeout(START_TIMEOUT) {
        Ok(line) if line.trim() == "ready" => Ok(()),
        Ok(_) => {
            let status = run.child.wait().map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
            Err(Error::Usage(format!(
                "the demo program did not start under {} ({status}); pass --python PATH to a Python 3.8 or newer",
                python.display()
            )))
        }
        Err(_) => Err(Error::Io(format!("the demo program did not start within {}s", START_TIMEOUT.as_secs()))),
    }
}

/// Runs the demo; returns the exit status to leave with.
pub fn run(opts: Options) -> Result<i32> {
    let python = match opts.python {
        Some(p) => p,
        None => python_on_path().ok_or_else(|| {
            Error::Usage(
                "the demo needs Python and there is no python3 on PATH: install Python 3.8 or newer, or pass --python PATH"
                    .into(),
            )
        })?,
    };
    let mut running = start(&python)?;
    wait_ready(&mut running, &python)?;
    let pid = running.child.id() as i32;
    eprintln!(
        "vizattach demo: started {} (pid {pid}) running {}: a main thread serving requests, two workers, a poller",
        python.display(),
        running.dir.join("vizattach_demo.py").display()
    );
    let status = record::record(record::Options {
        what: record::What::Pids(vec![pid]),
        subprocesses: false,
        duration: Some(opts.duration),
        rate: opts.rate,
        output: Some(PathBuf::from(JSON)),
        format: None,
        quiet: false,
        also: vec![PathBuf::from(SVG)],
        mode: crate::activity::Mode::Wall,
        pause_budget: 5.0,
        sampler_nice: None,
    })?;
    drop(running);
    // record's summary said how to open the timeline; the flame graph is the other file
    eprintln!("vizattach demo: the flame graph of the same capture is {SVG}: open it in any web browser");
    eprintln!("vizattach demo: next, attach to your own program: vizattach --pid PID, or vizattach dump --pid PID");
    Ok(status)
}
