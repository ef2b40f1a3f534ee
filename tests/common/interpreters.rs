//! The test interpreters: the manifest of scripts/install-pythons.sh, the libpython
//! embedder, and running a check on each of them in parallel.

use super::*;

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

    pub fn host_only(name: &str, version: &str, executable: &Path, origin: &str) -> Interpreter {
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

/// A command running `interp` (through chroot for one in a debootstrap root).
pub fn python_command(interp: &Interpreter) -> Command {
    if interp.in_chroot() {
        let mut c = Command::new("chroot");
        c.arg(&interp.root).arg(&interp.executable);
        c
    } else {
        Command::new(&interp.executable)
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

/// Host interpreters only, for fixtures that start processes (multiprocessing needs
/// /dev/shm, which the test chroots lack): 3.11 and the newest 3.12+ one.
pub fn host_targets() -> Option<Vec<Interpreter>> {
    let all = load_manifest()?;
    let mut chosen: Vec<Interpreter> = all.iter().filter(|i| i.name == "host-python3.11").cloned().collect();
    let newer = all
        .iter()
        .filter(|i| !i.in_chroot() && !i.name.ends_with("-dbg") && i.version_tuple() >= (3, 12, 0))
        .max_by_key(|i| i.version_tuple());
    match newer {
        Some(i) => chosen.push(i.clone()),
        None => missing_prerequisite("no 3.12+ interpreter outside a chroot in the manifest"),
    }
    Some(chosen)
}

/// Every supported interpreter of the manifest, and the host python3.11 always (alone
/// when there is no manifest): for tests that only run code in them and read it back.
pub fn analysis_targets() -> Vec<Interpreter> {
    let host = Interpreter::host_only("host-python3.11", "3.11", Path::new(HOST_PYTHON311), "host");
    match load_manifest() {
        Some(all) => {
            let mut v: Vec<Interpreter> = all.into_iter().filter(|i| i.is_supported()).collect();
            if !v.iter().any(|i| i.executable == Path::new(HOST_PYTHON311) && !i.in_chroot()) {
                v.push(host);
            }
            v
        }
        None => vec![host],
    }
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

pub fn host_python311_version() -> String {
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

pub fn build_embedder() -> Result<PathBuf, String> {
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

pub fn indent(s: &str) -> String {
    s.lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
}
