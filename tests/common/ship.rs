//! Helpers for the shipping tests (static binary, wheel, demo, privileges): the static
//! build, fixtures started inside a new pid + mount namespace (what a container is to the
//! kernel), tid mapping between namespaces, and checks of a recorded trace against what a
//! fixture recorded about itself.

use super::*;

/// The static release binary (scripts/build-static), built once per test process. The
/// script is a no-op when the build is fresh, so a test never runs a stale binary.
pub fn static_binary() -> Result<PathBuf, String> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let root = Path::new(env!("CARGO_MANIFEST_DIR"));
            let out = Command::new("bash")
                .arg(root.join("scripts/build-static"))
                .current_dir(root)
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("bash scripts/build-static: {e}"))?;
            if !out.status.success() {
                return Err(format!("scripts/build-static failed:\n{}", String::from_utf8_lossy(&out.stderr)));
            }
            let path = String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or("").trim().to_string();
            let bin = root.join(path);
            if !bin.is_file() {
                return Err(format!("scripts/build-static printed {}, which is not a file", bin.display()));
            }
            Ok(bin)
        })
        .clone()
}

/// Why `path` is not a static executable (its program interpreter, the libraries it
/// needs), or None when it is one. readelf comes with binutils, as the linker does.
pub fn not_static(path: &Path) -> Result<Option<String>, String> {
    let readelf = |flag: &str| -> Result<String, String> {
        let out = Command::new("readelf").arg(flag).arg(path).output().map_err(|e| format!("readelf: {e}"))?;
        if !out.status.success() {
            return Err(format!("readelf {flag} {}: {}", path.display(), String::from_utf8_lossy(&out.stderr)));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let why: Vec<String> = readelf("-lW")?
        .lines()
        .chain(readelf("-dW")?.lines())
        .filter(|l| l.contains("Requesting program interpreter") || l.contains("(NEEDED)"))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    Ok((!why.is_empty()).then(|| why.join("; ")))
}

/// The host interpreter and Debian bullseye's 3.9 (glibc 2.31, in its chroot), from the
/// manifest: the two ends of what the container tests run. None after a skip note.
pub fn container_interpreters() -> Option<Vec<Interpreter>> {
    let all = load_manifest()?;
    let mut picked = Vec::new();
    for name in ["host-python3.11", "bullseye-python3.9"] {
        match all.iter().find(|i| i.name == name) {
            Some(i) => picked.push(i.clone()),
            None => missing_prerequisite(&format!("no {name} in the manifest; run scripts/install-pythons.sh")),
        }
    }
    Some(picked)
}

pub fn bullseye() -> Option<Interpreter> {
    container_interpreters()?.into_iter().find(|i| i.name == "bullseye-python3.9")
}

/// The pid namespace path of a process ("pid:[4026531836]").
pub fn pid_namespace(pid: u32) -> Result<PathBuf, String> {
    fs::read_link(format!("/proc/{pid}/ns/pid")).map_err(|e| format!("/proc/{pid}/ns/pid: {e}"))
}

/// `NSpid` of a task as our /proc shows it: its id in every pid namespace from ours down
/// to its own (the first is ours, the last its own).
pub fn nspid(pid: u32, tid: u32) -> Result<Vec<i64>, String> {
    let path = format!("/proc/{pid}/task/{tid}/status");
    let text = fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    let line = text.lines().find(|l| l.starts_with("NSpid:")).ok_or(format!("{path}: no NSpid line"))?;
    line["NSpid:".len()..].split_whitespace().map(|s| s.parse().map_err(|e| format!("{path}: {e}"))).collect()
}

/// For a process in a child pid namespace: its threads' ids there -> ids in ours.
pub fn ns_to_host_tids(host_pid: u32) -> Result<BTreeMap<i64, i64>, String> {
    let mut map = BTreeMap::new();
    for entry in fs::read_dir(format!("/proc/{host_pid}/task")).map_err(|e| e.to_string())? {
        let tid: u32 = entry.map_err(|e| e.to_string())?.file_name().to_string_lossy().parse().unwrap_or(0);
        if let Ok(ids) = nspid(host_pid, tid) {
            map.insert(*ids.last().unwrap(), ids[0]);
        }
    }
    Ok(map)
}

/// A fixture running as pid 1 of a new pid + mount namespace with its own /proc
/// (`unshare --pid --fork --mount-proc`), under its interpreter's root: how a container
/// runtime starts a program. Everything in the namespace dies with the unshare process
/// (--kill-child), which is killed on drop.
pub struct NsTarget {
    pub interpreter: Interpreter,
    unshare: KillOnDrop,
    /// The fixture's pid as we see it.
    pub host_pid: u32,
    work: WorkDir,
}

impl NsTarget {
    pub fn start(interp: &Interpreter, fixture: &str) -> Result<NsTarget, String> {
        let work = WorkDir::new(interp)?;
        let argv = work.command_line(fixture, &[work.target_path("expected.json").display().to_string()]);
        let stderr = fs::File::create(work.host_path("stderr.txt")).map_err(|e| e.to_string())?;
        let child = Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc", "--kill-child"])
            .args(&argv)
            .current_dir(work.host_path(""))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("spawn unshare: {e}"))?;
        let mut unshare = KillOnDrop(child);
        // The fixture is unshare's only child (the forked pid 1, which execs chroot or
        // the interpreter in place).
        let deadline = Instant::now() + Duration::from_secs(30);
        let children = format!("/proc/{0}/task/{0}/children", unshare.pid());
        let host_pid = loop {
            let text = fs::read_to_string(&children).unwrap_or_default();
            if let Some(p) = text.split_whitespace().next().and_then(|p| p.parse().ok()) {
                break p;
            }
            if let Some(status) = unshare.exited() {
                let err = fs::read_to_string(work.host_path("stderr.txt")).unwrap_or_default();
                return Err(format!("unshare exited ({status}): {err}"));
            }
            if Instant::now() > deadline {
                return Err("unshare started no child within 30 s".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        Ok(NsTarget { interpreter: interp.clone(), unshare, host_pid, work })
    }

    pub fn host_path(&self, name: &str) -> PathBuf {
        self.work.host_path(name)
    }

    /// Waits for the fixture's own account of its stacks (ids as its namespace sees them).
    pub fn wait_expected(&mut self) -> Result<Expected, String> {
        let path = self.work.host_path("expected.json");
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Ok(text) = fs::read_to_string(&path) {
                let v: Value = serde_json::from_str(&text).map_err(|e| format!("expected.json: {e}"))?;
                return Expected::from_json(&v);
            }
            if let Some(status) = self.unshare.exited() {
                let err = fs::read_to_string(self.work.host_path("stderr.txt")).unwrap_or_default();
                return Err(format!("the namespace exited ({status}) before the fixture wrote expected.json: {err}"));
            }
            if Instant::now() > deadline {
                return Err("the fixture wrote no expected.json within 90 s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `program args` inside the fixture's pid and mount namespaces (`nsenter`), as
    /// `kubectl exec` or `docker exec` would.
    pub fn run_inside(&self, program: &Path, args: &[&str]) -> Result<RunOutput, String> {
        let mut cmd = Command::new("nsenter");
        cmd.args(["--target", &self.host_pid.to_string(), "--pid", "--mount", "--"]).arg(program).args(args);
        run_with_timeout(cmd, Duration::from_secs(120))
    }
}

/// Parses a `dump --json` run.
pub fn parse_dump(out: &RunOutput) -> Result<Dump, String> {
    if !out.status.success() {
        return Err(format!("dump failed: {}", out.describe()));
    }
    let v: Value =
        serde_json::from_str(&out.stdout).map_err(|e| format!("dump output is not JSON: {e}: {}", out.describe()))?;
    Dump::from_json(&v)
}

/// Dumps with `run` until the dump shows exactly the fixture's threads (its recorder
/// thread has to exit first), then compares them frame by frame.
pub fn dump_matches(expected: &Expected, run: impl Fn() -> Result<RunOutput, String>) -> Result<Dump, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = parse_dump(&run()?)?;
        if got.tids() == expected.tids() || Instant::now() > deadline {
            check_dump(expected, &got)?;
            return Ok(got);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The same expectation with its pid and tids as another pid namespace numbers them.
pub fn expected_renumbered(expected: &Expected, pid: i64, tids: &BTreeMap<i64, i64>) -> Result<Expected, String> {
    let mut e = expected.clone();
    e.pid = pid;
    for t in &mut e.threads {
        let ns = t.tid.unwrap_or(-1);
        t.tid = Some(*tids.get(&ns).ok_or(format!("no thread {ns} in the target's namespace"))?);
    }
    Ok(e)
}

/// Checks a VizTracer JSON trace of a settled fixture: every expected thread (by tid) has
/// a slice for every one of its Python frames, named `function (file:...)`, and the
/// capture metadata names the pid. Returns the number of slices.
pub fn check_trace_has_stacks(path: &Path, expected: &Expected) -> Result<usize, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| format!("{}: not JSON: {e}", path.display()))?;
    let events = v["traceEvents"].as_array().ok_or(format!("{}: no traceEvents", path.display()))?;
    let mut names: BTreeMap<i64, BTreeSet<String>> = BTreeMap::new();
    for e in events.iter().filter(|e| e["ph"] == "X") {
        let tid = e["tid"].as_i64().ok_or("slice without integer tid")?;
        names.entry(tid).or_default().insert(e["name"].as_str().unwrap_or("").to_string());
    }
    let mut missing = Vec::new();
    for t in &expected.threads {
        let tid = t.tid.unwrap_or(-1);
        let have = names.get(&tid);
        for f in &t.frames {
            let prefix = format!("{} ({}:", f.function, f.file);
            if !have.is_some_and(|n| n.iter().any(|n| n.starts_with(&prefix))) {
                missing.push(format!("tid {tid}: no slice {prefix}...)"));
            }
        }
    }
    if !missing.is_empty() {
        return Err(format!(
            "{}: {} frames without a slice (first: {}); tids in the trace: {:?}",
            path.display(),
            missing.len(),
            missing[0],
            names.keys().collect::<Vec<_>>()
        ));
    }
    let meta_pid = v["viztracer_metadata"]["pid"].as_i64();
    if meta_pid != Some(expected.pid) {
        return Err(format!("{}: metadata pid {meta_pid:?}, expected {}", path.display(), expected.pid));
    }
    Ok(names.values().map(|n| n.len()).sum())
}

/// Copies an executable to `to` and returns once it can be run. A fresh copy is "busy"
/// (ETXTBSY) while any child forked by another test thread during the copy still holds
/// its write descriptor, until that child execs; once one exec of the copy succeeds, no
/// writer is left and none can appear.
pub fn copy_executable(from: &Path, to: &Path) -> Result<(), String> {
    fs::copy(from, to).map_err(|e| format!("copy {} to {}: {e}", from.display(), to.display()))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match Command::new(to).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status() {
            Ok(_) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc_etxtbsy()) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => return Err(format!("run {}: {e}", to.display())),
        }
    }
}
