//! Shared helpers for the vizattach integration tests: the interpreter manifest,
//! targets started in or out of a chroot (killed on drop), running vizattach, and
//! comparing its `dump --json` output with what a fixture recorded about itself.
#![allow(dead_code)]

pub mod recording;
pub mod ship;
pub mod trace;

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The Python fixtures, copied into every target's work directory.
pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
/// Host interpreter for the embedder and deleted-executable targets and its config tool.
pub const HOST_PYTHON311: &str = "/usr/bin/python3.11";
pub const HOST_PYTHON311_CONFIG: &str = "/usr/bin/python3.11-config";
/// Work directories live here, inside the target's root (so ROOT/tmp/vizattach-tests/...).
const WORK_BASE: &str = "/tmp/vizattach-tests";

// ---------------------------------------------------------------------------------------
// Interpreters
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
pub struct Interpreter {
    pub name: String,
    pub version: String,
    /// "/" for the host; otherwise run as `chroot ROOT EXECUTABLE ...`.
    pub root: PathBuf,
    /// Path as seen inside `root`.
    pub executable: PathBuf,
    pub shared: bool,
    pub origin: String,
    /// Start from a temporary copy of the executable and delete the copy once running.
    pub delete_executable: bool,
}

impl Interpreter {
    pub fn version_tuple(&self) -> (u32, u32, u32) {
        let mut parts = self
            .version
            .split('.')
            .map(|p| p.chars().take_while(|c| c.is_ascii_digit()).collect::<String>().parse().unwrap_or(0));
        (parts.next().unwrap_or(0), parts.next().unwrap_or(0), parts.next().unwrap_or(0))
    }

    /// "3.7" for 3.7.16.
    pub fn minor_version(&self) -> String {
        let (a, b, _) = self.version_tuple();
        format!("{a}.{b}")
    }

    /// vizattach supports CPython 3.8 and newer.
    pub fn is_supported(&self) -> bool {
        let (a, b, _) = self.version_tuple();
        (a, b) >= (3, 8)
    }

    pub fn in_chroot(&self) -> bool {
        self.root != Path::new("/")
    }

    fn host_only(name: &str, version: &str, executable: &Path, origin: &str) -> Interpreter {
        Interpreter {
            name: name.to_string(),
            version: version.to_string(),
            root: PathBuf::from("/"),
            executable: executable.to_path_buf(),
            shared: true,
            origin: origin.to_string(),
            delete_executable: false,
        }
    }
}

pub fn is_ci() -> bool {
    std::env::var("CI").map(|v| v == "true").unwrap_or(false)
}

/// A prerequisite is missing: a test failure under CI=true, otherwise a skip note.
/// Returns normally only when skipping.
pub fn missing_prerequisite(what: &str) {
    if is_ci() {
        panic!("CI=true and {what}");
    }
    eprintln!("SKIP: {what} (set CI=true to make this a failure)");
}

pub fn pythons_dir() -> PathBuf {
    std::env::var_os("VIZATTACH_PYTHONS").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/opt/vizattach-pythons"))
}

/// Every interpreter in `$VIZATTACH_PYTHONS/manifest.json`, or None (after a skip note)
/// when there is no manifest. Panics under CI=true when it is missing.
pub fn load_manifest() -> Option<Vec<Interpreter>> {
    let path = pythons_dir().join("manifest.json");
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            missing_prerequisite(&format!(
                "no interpreter manifest at {} ({e}); run scripts/install-pythons.sh",
                path.display()
            ));
            return None;
        }
    };
    let doc: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    let entries =
        doc["interpreters"].as_array().unwrap_or_else(|| panic!("{}: no \"interpreters\" array", path.display()));
    let field = |e: &Value, k: &str| -> String {
        e[k].as_str().unwrap_or_else(|| panic!("{}: entry without string {k:?}: {e}", path.display())).to_string()
    };
    Some(
        entries
            .iter()
            .map(|e| Interpreter {
                name: field(e, "name"),
                version: field(e, "version"),
                root: PathBuf::from(field(e, "root")),
                executable: PathBuf::from(field(e, "executable")),
                shared: e["shared"].as_bool().unwrap_or(false),
                origin: e["origin"].as_str().unwrap_or("").to_string(),
                delete_executable: false,
            })
            .collect(),
    )
}

/// All the targets the dump fixtures run against: every supported manifest entry, plus
/// the C embedder of the host libpython3.11 and a host python3.11 whose executable was
/// deleted after start. None (after a skip note) when there is no manifest.
pub fn dump_targets() -> Option<Vec<Interpreter>> {
    let mut all: Vec<Interpreter> = load_manifest()?.into_iter().filter(|i| i.is_supported()).collect();
    match embed_interpreter() {
        Ok(i) => all.push(i),
        Err(e) => missing_prerequisite(&format!("cannot build the libpython3.11 embedder: {e}")),
    }
    if Path::new(HOST_PYTHON311).exists() {
        let mut deleted = Interpreter::host_only(
            "deleted-exe-python3.11",
            &host_python311_version(),
            Path::new(HOST_PYTHON311),
            "copy of the host python3.11, deleted while running",
        );
        deleted.delete_executable = true;
        all.push(deleted);
    } else {
        missing_prerequisite(&format!("{HOST_PYTHON311} is missing (deleted-executable target)"));
    }
    Some(all)
}

fn host_python311_version() -> String {
    let out = Command::new(HOST_PYTHON311)
        .args(["-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"])
        .output()
        .expect("run host python3.11");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Compiles tests/fixtures/embed.c against the host libpython3.11 once per test process.
pub fn embed_interpreter() -> Result<Interpreter, String> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let exe = BUILT.get_or_init(build_embedder).clone()?;
    Ok(Interpreter::host_only(
        "embed-libpython3.11",
        &host_python311_version(),
        &exe,
        "tests/fixtures/embed.c linked against the host libpython3.11.so",
    ))
}

fn build_embedder() -> Result<PathBuf, String> {
    let config = |args: &[&str]| -> Result<Vec<String>, String> {
        let out = Command::new(HOST_PYTHON311_CONFIG)
            .args(args)
            .output()
            .map_err(|e| format!("{HOST_PYTHON311_CONFIG}: {e}"))?;
        if !out.status.success() {
            return Err(format!("{HOST_PYTHON311_CONFIG} {args:?} failed"));
        }
        Ok(String::from_utf8_lossy(&out.stdout).split_whitespace().map(String::from).collect())
    };
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let exe = dir.join("embed-libpython3.11");
    let tmp = dir.join(format!("embed-libpython3.11.{}.tmp", std::process::id()));
    let out = Command::new("gcc")
        .arg(Path::new(FIXTURES).join("embed.c"))
        .arg("-o")
        .arg(&tmp)
        .args(config(&["--cflags", "--embed"])?)
        .args(config(&["--ldflags", "--embed"])?)
        .output()
        .map_err(|e| format!("gcc: {e}"))?;
    if !out.status.success() {
        return Err(format!("gcc failed:\n{}", String::from_utf8_lossy(&out.stderr)));
    }
    fs::rename(&tmp, &exe).map_err(|e| format!("rename {}: {e}", tmp.display()))?;
    Ok(exe)
}

/// Runs `check` for every interpreter, `workers` at a time, collecting every failure
/// (errors and panics alike) and panicking at the end with all of them, so one broken
/// interpreter does not hide the others.
pub fn for_each_interpreter<F>(interpreters: &[Interpreter], workers: usize, check: F)
where
    F: Fn(&Interpreter) -> Result<(), String> + Sync,
{
    let next = AtomicUsize::new(0);
    let failures: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..workers.max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(interp) = interpreters.get(i) else {
                    break;
                };
                let started = Instant::now();
                let result =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(interp))).unwrap_or_else(|panic| {
                        let msg = panic
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_else(|| "panic".to_string());
                        Err(format!("panicked: {msg}"))
                    });
                let secs = started.elapsed().as_secs_f64();
                match result {
                    Ok(()) => eprintln!("ok   {} ({}) {secs:.1}s", interp.name, interp.version),
                    Err(e) => {
                        eprintln!("FAIL {} ({}) {secs:.1}s\n{}", interp.name, interp.version, indent(&e));
                        failures.lock().unwrap().push((interp.name.clone(), e));
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    if !failures.is_empty() {
        let mut report = format!("{} of {} interpreters failed:\n", failures.len(), interpreters.len());
        for (name, e) in &failures {
            report += &format!("\n=== {name}\n{}\n", indent(e));
        }
        panic!("{report}");
    }
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
}

// ---------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------

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

    fn delete_executable_copy(&mut self) -> Result<(), String> {
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

struct DirGuard(PathBuf);
impl Drop for DirGuard {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// `path` (absolute, as seen inside `root`) as the host sees it.
pub fn rooted(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

fn copy_fixtures(dir: &Path) -> Result<(), String> {
    for entry in fs::read_dir(FIXTURES).map_err(|e| e.to_string())? {
        let path = entry.map_err(|e| e.to_string())?.path();
        if path.extension().is_some_and(|e| e == "py") {
            fs::copy(&path, dir.join(path.file_name().unwrap()))
                .map_err(|e| format!("copy {}: {e}", path.display()))?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Running vizattach
// ---------------------------------------------------------------------------------------

pub const VIZATTACH: &str = env!("CARGO_BIN_EXE_vizattach");

pub struct RunOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl RunOutput {
    pub fn describe(&self) -> String {
        format!("{}\nstderr: {}\nstdout: {}", self.status, self.stderr.trim_end(), truncate(&self.stdout, 2000))
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &s[..end], s.len())
}

/// Runs a command to completion with a timeout (killed when it expires), reading
/// stdout and stderr concurrently so large dumps cannot fill a pipe.
pub fn run_with_timeout(mut cmd: Command, timeout: Duration) -> Result<RunOutput, String> {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let what = format!("{cmd:?}");
    let mut child = KillOnDrop(cmd.spawn().map_err(|e| format!("spawn {what}: {e}"))?);
    let mut out = child.0.stdout.take().unwrap();
    let mut err = child.0.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.exited() {
            break status;
        }
        if Instant::now() > deadline {
            drop(child); // kills it
            return Err(format!("{what} did not finish within {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Ok(RunOutput {
        status,
        stdout: String::from_utf8_lossy(&out_reader.join().unwrap()).into_owned(),
        stderr: String::from_utf8_lossy(&err_reader.join().unwrap()).into_owned(),
    })
}

pub fn run_vizattach(args: &[&str]) -> Result<RunOutput, String> {
    let mut cmd = Command::new(VIZATTACH);
    cmd.args(args);
    run_with_timeout(cmd, Duration::from_secs(60))
}

/// `vizattach dump --pid PID --json`, which must succeed and print a well-formed dump.
pub fn dump(pid: u32) -> Result<Dump, String> {
    dump_with(pid, &[])
}

/// `dump` with extra arguments (e.g. the hidden `--scan`).
pub fn dump_with(pid: u32, extra: &[&str]) -> Result<Dump, String> {
    let pid_s = pid.to_string();
    let mut args = vec!["dump", "--pid", &pid_s, "--json"];
    args.extend_from_slice(extra);
    let out = run_vizattach(&args)?;
    if !out.status.success() {
        return Err(format!("vizattach dump --pid {pid} --json failed: {}", out.describe()));
    }
    let v: Value = serde_json::from_str(&out.stdout)
        .map_err(|e| format!("dump output is not JSON ({e}): {}", truncate(&out.stdout, 2000)))?;
    Dump::from_json(&v).map_err(|e| format!("malformed dump ({e}): {}", truncate(&out.stdout, 2000)))
}

/// Dumps until the set of tids equals `tids` (e.g. the fixture's recorder thread has
/// exited), for up to `timeout`. Any failing dump is an error right away.
pub fn dump_until_tids(pid: u32, tids: &BTreeSet<i64>, timeout: Duration) -> Result<Dump, String> {
    dump_until(pid, timeout, |d| &d.tids() == tids && d.threads.iter().all(|t| t.tid.is_some())).map_err(|(last, e)| {
        match last {
            Some(d) => {
                let got = d.tids();
                format!(
                    "{e}: {} threads expected; the last dump lacked tids {:?}, had unexpected tids {:?} \
                     and {} threads with a null tid",
                    tids.len(),
                    tids.difference(&got).collect::<Vec<_>>(),
                    got.difference(tids).collect::<Vec<_>>(),
                    d.threads.iter().filter(|t| t.tid.is_none()).count()
                )
            }
            None => e,
        }
    })
}

/// Dumps until `done(dump)` holds, for up to `timeout`. The error carries the last dump.
#[allow(clippy::result_large_err)]
pub fn dump_until(pid: u32, timeout: Duration, done: impl Fn(&Dump) -> bool) -> Result<Dump, (Option<Dump>, String)> {
    let deadline = Instant::now() + timeout;
    loop {
        let d = dump(pid).map_err(|e| (None, e))?;
        if done(&d) {
            return Ok(d);
        }
        if Instant::now() > deadline {
            return Err((Some(d), format!("condition not reached within {timeout:?}")));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Checks an error run: non-zero exit, and stderr is exactly one line starting with
/// "vizattach: ". Returns that line.
pub fn expect_error_line(out: &RunOutput) -> Result<String, String> {
    if out.status.success() {
        return Err(format!("expected a failure, got success: {}", out.describe()));
    }
    let text = out.stderr.strip_suffix('\n').unwrap_or(&out.stderr);
    if text.contains('\n') || !text.starts_with("vizattach: ") {
        return Err(format!("stderr must be one line starting with \"vizattach: \": {}", out.describe()));
    }
    Ok(text.to_string())
}

// ---------------------------------------------------------------------------------------
// Dumps and expectations
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub function: String,
    pub file: String,
    pub line: i64,
}

impl std::fmt::Display for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}:{})", self.function, self.file, self.line)
    }
}

#[derive(Clone, Debug)]
pub struct ThreadStack {
    /// null in a dump for a thread state not bound to an OS thread (thread_id 0: not
    /// started yet, or already torn down).
    pub tid: Option<i64>,
    pub thread_id: Option<u64>,
    pub name: Option<String>,
    pub holds_gil: bool,
    pub frames: Vec<Frame>,
}

/// What `vizattach dump --json` printed.
#[derive(Clone, Debug)]
pub struct Dump {
    pub pid: i64,
    pub version: String,
    pub executable: Option<String>,
    pub libpython: Option<String>,
    pub threads: Vec<ThreadStack>,
}

/// What a fixture recorded about itself (the expected.json it wrote).
#[derive(Clone, Debug)]
pub struct Expected {
    pub pid: i64,
    pub version: String,
    pub recorder_tid: i64,
    pub threads: Vec<ThreadStack>,
}

fn get<'a>(v: &'a Value, key: &str) -> Result<&'a Value, String> {
    v.get(key).ok_or_else(|| format!("missing {key:?} in {}", truncate(&v.to_string(), 300)))
}
fn get_i64(v: &Value, key: &str) -> Result<i64, String> {
    get(v, key)?.as_i64().ok_or_else(|| format!("{key:?} is not an integer"))
}
fn get_str(v: &Value, key: &str) -> Result<String, String> {
    Ok(get(v, key)?.as_str().ok_or_else(|| format!("{key:?} is not a string"))?.to_string())
}
fn get_opt_str(v: &Value, key: &str) -> Result<Option<String>, String> {
    match get(v, key)? {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        other => Err(format!("{key:?} is neither a string nor null: {other}")),
    }
}

fn parse_frames(v: &Value) -> Result<Vec<Frame>, String> {
    get(v, "frames")?
        .as_array()
        .ok_or("\"frames\" is not an array")?
        .iter()
        .map(|f| Ok(Frame { function: get_str(f, "function")?, file: get_str(f, "file")?, line: get_i64(f, "line")? }))
        .collect()
}

impl Dump {
    /// Strictly checks the documented shape while parsing.
    pub fn from_json(v: &Value) -> Result<Dump, String> {
        let python = get(v, "python")?;
        let threads = get(v, "threads")?
            .as_array()
            .ok_or("\"threads\" is not an array")?
            .iter()
            .map(|t| {
                let tid = match get(t, "tid")? {
                    Value::Null => None,
                    v => Some(v.as_i64().ok_or("\"tid\" is neither an integer nor null")?),
                };
                Ok(ThreadStack {
                    tid,
                    thread_id: Some(get(t, "thread_id")?.as_u64().ok_or("\"thread_id\" is not an unsigned integer")?),
                    name: get_opt_str(t, "name")?,
                    holds_gil: get(t, "holds_gil")?.as_bool().ok_or("\"holds_gil\" is not a bool")?,
                    frames: parse_frames(t)?,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Dump {
            pid: get_i64(v, "pid")?,
            version: get_str(python, "version")?,
            executable: get_opt_str(python, "executable")?,
            libpython: get_opt_str(python, "libpython")?,
            threads,
        })
    }

    /// The known tids (threads with a null tid are left out).
    pub fn tids(&self) -> BTreeSet<i64> {
        self.threads.iter().filter_map(|t| t.tid).collect()
    }

    pub fn thread(&self, tid: i64) -> Option<&ThreadStack> {
        self.threads.iter().find(|t| t.tid == Some(tid))
    }

    pub fn gil_holders(&self) -> Vec<Option<i64>> {
        self.threads.iter().filter(|t| t.holds_gil).map(|t| t.tid).collect()
    }
}

impl Expected {
    pub fn from_json(v: &Value) -> Result<Expected, String> {
        let threads = get(v, "threads")?
            .as_array()
            .ok_or("\"threads\" is not an array")?
            .iter()
            .map(|t| {
                Ok(ThreadStack {
                    tid: Some(get_i64(t, "tid")?),
                    thread_id: get(t, "thread_id")?.as_u64(),
                    name: Some(get_str(t, "name")?),
                    holds_gil: false,
                    frames: parse_frames(t)?,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Expected {
            pid: get_i64(v, "pid")?,
            version: get_str(v, "version")?,
            recorder_tid: get_i64(v, "recorder_tid")?,
            threads,
        })
    }

    pub fn tids(&self) -> BTreeSet<i64> {
        self.threads.iter().filter_map(|t| t.tid).collect()
    }
}

/// Most frame mismatches listed per thread before eliding the rest.
const MAX_FRAME_DIFFS: usize = 8;

/// Differences between the expected threads and the same tids in `got`, one readable
/// line each ("" when identical). `extra_allowed`: threads in `got` that are not expected
/// are fine (checked elsewhere); otherwise they are differences too.
pub fn diff_threads(expected: &[ThreadStack], got: &[ThreadStack], extra_allowed: bool) -> Vec<String> {
    let mut diffs = Vec::new();
    let got_by_tid: BTreeMap<Option<i64>, &ThreadStack> = got.iter().map(|t| (t.tid, t)).collect();
    for want in expected {
        let label = format!("thread {:?} {:?}", want.tid.unwrap_or(-1), want.name.as_deref().unwrap_or("?"));
        let Some(have) = got_by_tid.get(&want.tid) else {
            diffs.push(format!("{label}: missing from the dump"));
            continue;
        };
        if have.name != want.name {
            diffs.push(format!("{label}: name: expected {:?}, got {:?}", want.name, have.name));
        }
        if let (Some(w), Some(h)) = (want.thread_id, have.thread_id) {
            if w != h {
                diffs.push(format!("{label}: thread_id: expected {w}, got {h}"));
            }
        }
        if have.frames.len() != want.frames.len() {
            diffs.push(format!("{label}: {} frames expected, {} dumped", want.frames.len(), have.frames.len()));
        }
        let mut shown = 0;
        for i in 0..want.frames.len().max(have.frames.len()) {
            let (w, h) = (want.frames.get(i), have.frames.get(i));
            if w == h {
                continue;
            }
            shown += 1;
            if shown > MAX_FRAME_DIFFS {
                diffs.push(format!("{label}: ... more frame differences elided"));
                break;
            }
            let show = |f: Option<&Frame>| f.map_or("<none>".to_string(), |f| f.to_string());
            diffs.push(format!(
                "{label}: frame #{i}: expected {}\n{:>w$}got      {}",
                show(w),
                "",
                show(h),
                w = label.len() + 14
            ));
        }
    }
    if !extra_allowed {
        let want: BTreeSet<Option<i64>> = expected.iter().map(|t| t.tid).collect();
        for t in got.iter().filter(|t| !want.contains(&t.tid)) {
            diffs.push(format!(
                "unexpected thread tid {:?} thread_id {:?} {:?} with {} frames",
                t.tid,
                t.thread_id,
                t.name,
                t.frames.len()
            ));
        }
    }
    diffs
}

/// Internal consistency of any dump: positive tids, no thread listed twice (same tid or
/// same non-zero thread_id), at most one GIL holder.
pub fn dump_sanity(d: &Dump) -> Vec<String> {
    let mut problems = Vec::new();
    let mut tids = BTreeSet::new();
    let mut idents = BTreeSet::new();
    for t in &d.threads {
        if let Some(tid) = t.tid {
            if tid <= 0 {
                problems.push(format!("thread {:?} (thread_id {:?}) has impossible tid {tid}", t.name, t.thread_id));
            } else if !tids.insert(tid) {
                problems.push(format!("tid {tid} listed twice ({:?})", t.name));
            }
        }
        if let Some(ident) = t.thread_id.filter(|&i| i != 0) {
            if !idents.insert(ident) {
                problems.push(format!("thread_id {ident} listed twice ({:?})", t.name));
            }
        }
    }
    let holders = d.gil_holders();
    if holders.len() > 1 {
        problems.push(format!("{} threads claim to hold the GIL: {holders:?}", holders.len()));
    }
    problems
}

/// The full comparison for a settled fixture: pid, version, the exact threads and frames,
/// and at most one GIL holder.
pub fn check_dump(expected: &Expected, got: &Dump) -> Result<(), String> {
    let mut diffs = Vec::new();
    if got.pid != expected.pid {
        diffs.push(format!("pid: expected {}, got {}", expected.pid, got.pid));
    }
    if got.version != expected.version {
        diffs.push(format!("python.version: expected {:?}, got {:?}", expected.version, got.version));
    }
    diffs.extend(dump_sanity(got));
    diffs.extend(diff_threads(&expected.threads, &got.threads, false));
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(format!("{} differences:\n{}", diffs.len(), diffs.join("\n")))
    }
}

// ---------------------------------------------------------------------------------------
// Record tests: work directories for launch mode, interpreter command lines
// ---------------------------------------------------------------------------------------

/// The targets the record tests run against: every supported manifest entry plus the
/// libpython3.11 embedder (when it builds). None (after a skip note) without a manifest.
pub fn record_targets() -> Option<Vec<Interpreter>> {
    let mut all: Vec<Interpreter> = load_manifest()?.into_iter().filter(|i| i.is_supported()).collect();
    match embed_interpreter() {
        Ok(i) => all.push(i),
        Err(e) => missing_prerequisite(&format!("cannot build the libpython3.11 embedder: {e}")),
    }
    Some(all)
}

/// A work directory inside an interpreter's root holding a copy of the fixtures, for
/// programs that something else (vizattach's launch mode) starts. Removed on drop.
pub struct WorkDir {
    pub interpreter: Interpreter,
    host_dir: PathBuf,
    target_dir: PathBuf,
}

impl WorkDir {
    pub fn new(interp: &Interpreter) -> Result<WorkDir, String> {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let unique = format!("{}-w{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::SeqCst), interp.name);
        let target_dir = Path::new(WORK_BASE).join(&unique);
        let host_dir = rooted(&interp.root, &target_dir);
        fs::create_dir_all(&host_dir).map_err(|e| format!("mkdir {}: {e}", host_dir.display()))?;
        let dir = WorkDir { interpreter: interp.clone(), host_dir, target_dir };
        copy_fixtures(&dir.host_dir)?;
        Ok(dir)
    }

    /// Host-side path of a file in the work directory.
    pub fn host_path(&self, name: &str) -> PathBuf {
        self.host_dir.join(name)
    }

    /// The same file as the interpreter sees it (its co_filename for a fixture).
    pub fn target_path(&self, name: &str) -> PathBuf {
        self.target_dir.join(name)
    }

    /// The command line that runs fixture `name` with `args` under the interpreter:
    /// `chroot ROOT EXE SCRIPT ARGS...` or `EXE SCRIPT ARGS...` (paths as the target sees them).
    pub fn command_line(&self, name: &str, args: &[String]) -> Vec<String> {
        let interp = &self.interpreter;
        let mut argv = Vec::new();
        if interp.in_chroot() {
            argv.push("chroot".to_string());
            argv.push(interp.root.display().to_string());
        }
        argv.push(interp.executable.display().to_string());
        argv.push(self.target_path(name).display().to_string());
        argv.extend(args.iter().cloned());
        argv
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.host_dir);
    }
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

/// ETXTBSY on Linux.
fn libc_etxtbsy() -> i32 {
    26
}
