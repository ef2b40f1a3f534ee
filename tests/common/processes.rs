//! Target processes started in or out of a chroot (killed on drop), their work
//! directories and fixture copies.

use super::*;

/// A child process that is killed (SIGKILL) and reaped when dropped, even on panic.
pub struct KillOnDrop(pub Child);

impl KillOnDrop {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.0.try_wait().ok().flatten()
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until /proc/PID/exe no longer is our own executable (i.e. the child has exec'd).
pub fn wait_for_exec(pid: u32, timeout: Duration) -> Result<(), String> {
    let ours = fs::read_link("/proc/self/exe").map_err(|e| e.to_string())?;
    let deadline = Instant::now() + timeout;
    loop {
        match fs::read_link(format!("/proc/{pid}/exe")) {
            Ok(exe) if exe != ours => return Ok(()),
            _ if Instant::now() > deadline => return Err(format!("pid {pid} never exec'd")),
            _ => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// A fixture running under an interpreter, in its own work directory (inside the
/// interpreter's root). Killed, reaped and cleaned up on drop.
pub struct Target {
    pub interpreter: Interpreter,
    pub pid: u32,
    process: KillOnDrop,
    /// The work directory as the host sees it (ROOT/tmp/vizattach-tests/<unique>).
    host_dir: PathBuf,
    /// The same directory as the target sees it (/tmp/vizattach-tests/<unique>).
    target_dir: PathBuf,
    /// Host path of the executable copy to delete once running (delete_executable).
    exe_copy: Option<PathBuf>,
}

impl Target {
    /// Starts `FIXTURE OUTPUT` where OUTPUT is `<work dir>/expected.json` (read it with
    /// `wait_expected`, or `wait_json("expected.json")`).
    pub fn start(interp: &Interpreter, fixture: &str) -> Result<Target, String> {
        Target::start_with_env(interp, fixture, &[])
    }

    /// `start`, with these variables added to the target's environment.
    pub fn start_with_env(interp: &Interpreter, fixture: &str, env: &[(&str, &str)]) -> Result<Target, String> {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let unique = format!("{}-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::SeqCst), interp.name);
        let target_dir = Path::new(WORK_BASE).join(&unique);
        let host_dir = rooted(&interp.root, &target_dir);
        fs::create_dir_all(&host_dir).map_err(|e| format!("mkdir {}: {e}", host_dir.display()))?;
        // From here on a failure must still clean up the directory.
        let cleanup = DirGuard(host_dir.clone());
        copy_fixtures(&host_dir)?;

        let mut executable = interp.executable.clone();
        let mut exe_copy = None;
        if interp.delete_executable {
            let copy = host_dir.join(interp.executable.file_name().unwrap());
            fs::copy(rooted(&interp.root, &interp.executable), &copy)
                .map_err(|e| format!("copy {}: {e}", interp.executable.display()))?;
            executable = target_dir.join(copy.file_name().unwrap());
            exe_copy = Some(copy);
        }

        let mut cmd = if interp.in_chroot() {
            let mut c = Command::new("chroot");
            c.arg(&interp.root).arg(&executable);
            c
        } else {
            Command::new(&executable)
        };
        let stderr = fs::File::create(host_dir.join("stderr.txt")).map_err(|e| e.to_string())?;
        cmd.envs(env.iter().copied());
        cmd.arg(target_dir.join(fixture))
            .arg(target_dir.join("expected.json"))
            .current_dir(&host_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        // A freshly copied executable can be "busy" for a moment: another test thread's
        // fork may still hold the copy's write descriptor until its child execs.
        let mut tries = 0;
        let child = loop {
            match cmd.spawn() {
                Err(e) if e.raw_os_error() == Some(libc_etxtbsy()) && tries < 50 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                r => break r.map_err(|e| format!("spawn {cmd:?}: {e}"))?,
            }
        };
        std::mem::forget(cleanup); // Target's Drop owns the directory now
        Ok(Target {
            interpreter: interp.clone(),
            pid: child.id(),
            process: KillOnDrop(child),
            host_dir,
            target_dir,
            exe_copy,
        })
    }

    /// Host-side path of a file in the work directory.
    pub fn host_path(&self, name: &str) -> PathBuf {
        self.host_dir.join(name)
    }

    /// Path of a file in the work directory as the target sees it (its co_filename).
    pub fn target_path(&self, name: &str) -> PathBuf {
        self.target_dir.join(name)
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(self.host_path("stderr.txt")).unwrap_or_default()
    }

    /// Waits for the fixture to write `name` (atomically), failing early if it exits.
    /// Once it is there, a delete_executable target's executable copy is deleted.
    pub fn wait_json(&mut self, name: &str, timeout: Duration) -> Result<Value, String> {
        let path = self.host_path(name);
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(text) = fs::read_to_string(&path) {
                let v = serde_json::from_str(&text).map_err(|e| format!("{}: bad JSON: {e}", path.display()))?;
                self.delete_executable_copy()?;
                return Ok(v);
            }
            if let Some(status) = self.process.exited() {
                return Err(format!("fixture exited ({status}) before writing {name}; stderr:\n{}", self.stderr()));
            }
            if Instant::now() > deadline {
                return Err(format!("fixture did not write {name} within {timeout:?}; stderr:\n{}", self.stderr()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The stacks the fixture recorded about itself.
    pub fn wait_expected(&mut self) -> Result<Expected, String> {
        let v = self.wait_json("expected.json", Duration::from_secs(90))?;
        Expected::from_json(&v).map_err(|e| format!("expected.json: {e}"))
    }

    pub fn delete_executable_copy(&mut self) -> Result<(), String> {
        if let Some(copy) = self.exe_copy.take() {
            fs::remove_file(&copy).map_err(|e| format!("delete {}: {e}", copy.display()))?;
            let exe = fs::read_link(format!("/proc/{}/exe", self.pid)).map_err(|e| e.to_string())?;
            if !exe.to_string_lossy().ends_with(" (deleted)") {
                return Err(format!("/proc/{}/exe is {} after deleting the copy", self.pid, exe.display()));
            }
        }
        Ok(())
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        // Kill first (KillOnDrop), then remove the directory.
        let _ = self.process.0.kill();
        let _ = self.process.0.wait();
        let _ = fs::remove_dir_all(&self.host_dir);
    }
}

pub struct DirGuard(PathBuf);
impl DirGuard {
    /// Removes `dir` and all in it when dropped.
    pub fn new(dir: PathBuf) -> DirGuard {
        DirGuard(dir)
    }
}
impl Drop for DirGuard {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// `path` (absolute, as seen inside `root`) as the host sees it.
pub fn rooted(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

pub fn copy_fixtures(dir: &Path) -> Result<(), String> {
    for entry in fs::read_dir(FIXTURES).map_err(|e| e.to_string())? {
        let path = entry.map_err(|e| e.to_string())?.path();
        if path.extension().is_some_and(|e| e == "py") {
            fs::copy(&path, dir.join(path.file_name().unwrap()))
                .map_err(|e| format!("copy {}: {e}", path.display()))?;
        }
    }
    Ok(())
}

impl Target {
    /// Kills the target now (SIGKILL) and reaps it, as its parent would.
    pub fn kill_and_reap(&mut self) -> Option<ExitStatus> {
        let _ = self.process.0.kill();
        self.process.0.wait().ok()
    }

    /// The exit status if the target has exited (reaping it).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.process.exited()
    }
}

/// Threads (tid, state, tracer) of `pid` that are stopped (t/T) or have a tracer.
pub fn stopped_or_traced(pid: u32) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
        let status = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
        let field = |k: &str| {
            status.lines().find(|l| l.starts_with(k)).map(|l| l[k.len()..].trim().to_string()).unwrap_or_default()
        };
        let (state, tracer) = (field("State:"), field("TracerPid:"));
        if state.starts_with('t') || state.starts_with('T') || (tracer != "0" && !tracer.is_empty()) {
            out.push((e.file_name().to_string_lossy().into_owned(), state, tracer));
        }
    }
    out
}

/// Waits until some thread of `pid` has a tracer (vizattach holds it stopped).
pub fn wait_traced(pid: u32, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    while stopped_or_traced(pid).iter().all(|(_, _, tracer)| tracer == "0" || tracer.is_empty()) {
        if Instant::now() > deadline {
            return Err("vizattach never paused a thread".into());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}
