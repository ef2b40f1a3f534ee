//! The sampling thread's priority (src/sampling_thread.rs): raised to nice -10 by default, to
//! what `--sampler-nice` says, never for the timeline thread; refused without
//! CAP_SYS_NICE, which the summary and the metadata say; with its timer slack and (Linux
//! 6.12+) scheduler slice. Read from the kernel (/proc/PID/task/TID/stat, sched) while a
//! real capture runs.
//!
//!     cargo test --release --test record_priority -- --nocapture
//!
//! Needs root (to drop CAP_SYS_NICE with setpriv).

mod common;

use common::recording::start_until_ready;
use common::*;

/// What the kernel says of a capture's threads while it records: each thread's nice value
/// by name (the sampler is the main thread, named after the executable), the sampler's
/// timer slack (/proc/PID/timerslack_ns is the main thread's), and each thread's slice
/// (se.slice in /proc/PID/task/TID/sched; None on kernels that do not show it).
#[derive(Debug, Default)]
struct Seen {
    nice: BTreeMap<String, i64>,
    sampler_slack_ns: Option<u64>,
    slice_ns: BTreeMap<String, u64>,
}

/// Runs `prefix... vizattach record --pid PID -d 3s -o OUT extra...` and reads what the
/// kernel says of its threads while it records. Returns that, the summary line and the
/// trace's `sampler_priority`.
fn record(dir: &Path, prefix: &[&str], pid: u32, extra: &[&str]) -> (Seen, String, String) {
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
    let mut seen = Seen::default();
    while Instant::now() < deadline && va.exited().is_none() {
        std::thread::sleep(Duration::from_millis(300));
        seen = threads_seen(va.pid());
        if seen.nice.contains_key("timeline") && seen.nice.contains_key("sampler") {
            std::thread::sleep(Duration::from_millis(300));
            seen = threads_seen(va.pid());
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
    (seen, summary, said)
}

fn threads_seen(pid: u32) -> Seen {
    let mut seen = Seen {
        sampler_slack_ns: fs::read_to_string(format!("/proc/{pid}/timerslack_ns"))
            .ok()
            .map(|s| s.trim().parse().unwrap()),
        ..Seen::default()
    };
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else { return seen };
    for t in tasks.flatten() {
        let tid: u32 = t.file_name().to_string_lossy().parse().unwrap();
        let (Ok(stat), Ok(comm)) =
            (fs::read_to_string(t.path().join("stat")), fs::read_to_string(t.path().join("comm")))
        else {
            continue;
        };
        let fields: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
        let name = if tid == pid { "sampler".to_string() } else { comm.trim().to_string() };
        let sched = fs::read_to_string(t.path().join("sched")).unwrap_or_default();
        let slice = sched.lines().find(|l| l.starts_with("se.slice")).and_then(|l| l.split(':').nth(1));
        if let Some(ns) = slice.and_then(|v| v.trim().parse().ok()) {
            seen.slice_ns.insert(name.clone(), ns);
        }
        seen.nice.insert(name, fields[16].parse().unwrap());
    }
    seen
}

/// Whether this kernel gives a thread the slice it asks for (Linux 6.12+).
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

    // The slice the sampler asks for, as the metadata says it (src/sampling_thread.rs).
    let slice = if vizattach::sampling_thread::kernel_takes_custom_slices() { ", slice 0.5 ms" } else { "" };

    let (seen, _, said) = record(&dir, &[], pid, &[]);
    let nice = &seen.nice;
    assert_eq!(nice.get("sampler"), Some(&-10), "{seen:?}");
    assert_eq!(nice.get("timeline"), Some(&0), "{seen:?}");
    assert_eq!(said, format!("nice -10{slice}"));
    // and it wakes on time: no timer slack, and (Linux 6.12+) a slice short enough to
    // take the CPU from the target's threads when it wakes; the timeline keeps the default
    assert_eq!(seen.sampler_slack_ns, Some(1), "{seen:?}");
    if vizattach::sampling_thread::kernel_takes_custom_slices() {
        assert_eq!(seen.slice_ns.get("sampler"), Some(&500_000), "{seen:?}");
        assert_ne!(seen.slice_ns.get("timeline"), Some(&500_000), "{seen:?}");
    }

    let (seen, _, said) = record(&dir, &[], pid, &["--sampler-nice", "-3"]);
    assert_eq!((seen.nice.get("sampler"), seen.nice.get("timeline")), (Some(&-3), Some(&0)), "{seen:?}");
    assert_eq!(said, format!("nice -3{slice}"));

    // Several processes: one clock samples them all (src/fleet/), on the main thread.
    let (seen, _, said) = record(&dir, &[], pid, &["--pid", &other.to_string()]);
    assert_eq!((seen.nice.get("sampler"), said), (Some(&-10), format!("nice -10{slice}")), "{seen:?}");
    assert_eq!(seen.sampler_slack_ns, Some(1), "{seen:?}");
    if vizattach::sampling_thread::kernel_takes_custom_slices() {
        assert_eq!(seen.slice_ns.get("sampler"), Some(&500_000), "{seen:?}");
    }
    assert!(seen.nice.iter().filter(|(name, _)| *name != "sampler").all(|(_, &n)| n == 0), "{seen:?}");

    // Started under `nice`, vizattach keeps what it was given unless told.
    let (seen, _, said) = record(&dir, &["nice", "-n", "4"], pid, &[]);
    assert_eq!((seen.nice.get("sampler"), seen.nice.get("timeline")), (Some(&4), Some(&4)), "{seen:?}");
    assert_eq!(said, format!("nice 4{slice}"));

    // Without CAP_SYS_NICE the kernel refuses: the capture goes on, and says so. (A
    // shorter slice needs no privilege.)
    let (seen, summary, said) =
        record(&dir, &["setpriv", "--inh-caps=-sys_nice", "--bounding-set=-sys_nice"], pid, &[]);
    assert_eq!(seen.nice.get("sampler"), Some(&0), "{seen:?}");
    assert_eq!(said, format!("nice 0{slice}, not -10: raising priority needs root or CAP_SYS_NICE"));
    assert!(summary.contains(&format!("sampler at nice 0{slice}, not -10")), "summary: {summary}");

    let out = run_vizattach(&["record", "--pid", &pid.to_string(), "--sampler-nice", "-21"]).unwrap();
    assert!(!out.status.success());
    let line = expect_error_line(&out).unwrap();
    assert!(line.contains("--sampler-nice") && line.contains("-20"), "error: {line}");
}
