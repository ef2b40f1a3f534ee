//! Running vizattach (and any command) with a timeout, and dumps by `vizattach dump --json`.

use super::*;

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

pub fn truncate(s: &str, max: usize) -> String {
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
