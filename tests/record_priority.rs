//! The sampling thread's priority (src/sampling_thread.rs): raised to nice -10 by default, to
//! what `--sampler-nice` says, never for the timeline thread; refused without
//! CAP_SYS_NICE, which the summary and the metadata say. Read from the kernel
//! (/proc/PID/task/TID/stat) while a real capture runs.
//!
//!     cargo test --release --test record_priority -- --nocapture
//!
//! Needs root (to drop CAP_SYS_NICE with setpriv).

mod common;

use common::recording::start_until_ready;
use common::*;

/// Runs `prefix... vizattach record --pid PID -d 3s -o OUT extra...`; while it records,
/// reads the nice value of each of its threads by name. Returns them, the summary line
/// and the trace's `sampler_priority`.
fn record(dir: &Path, prefix: &[&str], pid: u32, extra: &[&str]) -> (BTreeMap<String, i64>, String, String) {
    let out = dir.join("trace.json");
    let _ = fs::remove_file(&out);
    let mut cmd = Command::new(prefix.first().copied().unwrap_or(VIZATTACH));
    if !prefix.is_empty() {
        cmd.args(&prefix[1..]).arg("--").arg(VIZATTACH);
    }
    cmd.args(["record", "--pid", &pid.to_string(), "-d", "3s", "-o"]).arg(&out).args(extra);
    let mut va = KillOnDrop(cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap());
    // The sampler starts once the target is read (well within a second here); its
    // priority is set before the first tick.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut nice = BTreeMap::new();
    while Instant::now() < deadline && va.exited().is_none() {
        std::thread::sleep(Duration::from_millis(300));
        nice = threads_nice(va.pid());
        if nice.contains_key("timeline") && nice.contains_key("sampler") {
            std::thread::sleep(Duration::from_millis(300));
            nice = threads_nice(va.pid());
            break;
        }
    }
    let status = va.0.wait().unwrap();
    let mut stderr = String::new();
    va.0.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(status.success(), "vizattach failed: {stderr}");
    let summary = stderr.lines().find(|l| l.contains("stopped after")).unwrap_or_default().to_string();
    let trace: Value = serde_json::from_str(&fs::read_to_string(&out).unwrap()).unwrap();
    let said = trace["viztracer_metadata"]["sampler_priority"].as_str().unwrap_or_default().to_string();
    (nice, summary, said)
}

/// Thread name -> nice value (field 19 of /proc/PID/task/TID/stat). The sampler is the
/// main thread, named after the executable. With it, under "sampler slack", its timer
/// slack in ns (/proc/PID/timerslack_ns is the main thread's).
fn threads_nice(pid: u32) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    if let Ok(slack) = fs::read_to_string(format!("/proc/{pid}/timerslack_ns")) {
        out.insert("sampler slack".to_string(), slack.trim().parse().unwrap());
    }
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else { return out };
    for t in tasks.flatten() {
        let tid: u32 = t.file_name().to_string_lossy().parse().unwrap();
        let (Ok(stat), Ok(comm)) =
            (fs::read_to_string(t.path().join("stat")), fs::read_to_string(t.path().join("comm")))
        else {
            continue;
        };
        let fields: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
        let name = if tid == pid { "sampler".to_string() } else { comm.trim().to_string() };
        out.insert(name, fields[16].parse().unwrap());
    }
    out
}

#[test]
fn the_sampling_thread_alone_runs_at_the_priority_asked_for() {
    let Some(interp) = load_manifest().and_then(|all| all.into_iter().find(|i| i.name == "host-python3.11")) else {
        return missing_prerequisite("no host-python3.11 in the manifest");
    };
    // two sleeping targets (idle.py), each in a work directory of its own
    let (work, other_work) = (WorkDir::new(&interp).unwrap(), WorkDir::new(&interp).unwrap());
    let target = start_until_ready(&work, "idle.py", &[]).unwrap();
    let other_target = start_until_ready(&other_work, "idle.py", &[]).unwrap();
    let (pid, other) = (target.pid(), other_target.pid());
    let dir = work.host_path("");

    let (nice, _, said) = record(&dir, &[], pid, &[]);
    assert_eq!(nice.get("sampler"), Some(&-10), "threads' nice values: {nice:?}");
    assert_eq!(nice.get("timeline"), Some(&0), "threads' nice values: {nice:?}");
    assert_eq!(said, "nice -10");
    // and it wakes on time: no timer slack (src/sampling_thread.rs)
    assert_eq!(nice.get("sampler slack"), Some(&1), "{nice:?}");

    let (nice, _, said) = record(&dir, &[], pid, &["--sampler-nice", "-3"]);
    assert_eq!((nice.get("sampler"), nice.get("timeline")), (Some(&-3), Some(&0)), "{nice:?}");
    assert_eq!(said, "nice -3");

    // Several processes: one clock samples them all (src/fleet/), on the main thread.
    let (nice, _, said) = record(&dir, &[], pid, &["--pid", &other.to_string()]);
    assert_eq!((nice.get("sampler"), said.as_str()), (Some(&-10), "nice -10"), "{nice:?}");
    assert_eq!(nice.get("sampler slack"), Some(&1), "{nice:?}");
    assert!(nice.iter().filter(|(name, _)| !name.starts_with("sampler")).all(|(_, &n)| n == 0), "{nice:?}");

    // Started under `nice`, vizattach keeps what it was given unless told.
    let (nice, _, said) = record(&dir, &["nice", "-n", "4"], pid, &[]);
    assert_eq!((nice.get("sampler"), nice.get("timeline")), (Some(&4), Some(&4)), "{nice:?}");
    assert_eq!(said, "nice 4");

    // Without CAP_SYS_NICE the kernel refuses: the capture goes on, and says so.
    let (nice, summary, said) =
        record(&dir, &["setpriv", "--inh-caps=-sys_nice", "--bounding-set=-sys_nice"], pid, &[]);
    assert_eq!(nice.get("sampler"), Some(&0), "{nice:?}");
    assert_eq!(said, "nice 0, not -10: raising priority needs root or CAP_SYS_NICE");
    assert!(summary.contains("sampler at nice 0, not -10"), "summary: {summary}");

    let out = run_vizattach(&["record", "--pid", &pid.to_string(), "--sampler-nice", "-21"]).unwrap();
    assert!(!out.status.success());
    let line = expect_error_line(&out).unwrap();
    assert!(line.contains("--sampler-nice") && line.contains("-20"), "error: {line}");
}
