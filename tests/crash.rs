//! What a vizattach killed without warning (SIGKILL: the OOM killer, `kill -9`, a pod
//! evicted, a dropped `kubectl exec`) leaves behind, and the documented way to open it
//! (README, "What survives a crash"):
//! - `.pftrace` loads as it is in the real Perfetto trace processor, with every slice up to
//!   the last checkpoint (slices open at the kill show as not ended);
//! - every other format is finished by `vizattach repair FILE` from its journal, with the
//!   same slices, and opens;
//! - the target runs on, never stopped, whatever the moment of the kill.

mod common;

use common::*;
use prost::Message;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use vizattach::output::perfetto::proto;

/// One capture written in every format (`-o` once per file).
const OUTPUTS: [&str; 6] =
    ["cap.json", "cap.pftrace", "cap.json.gz", "cap.speedscope.json", "cap.collapsed", "cap.svg"];
const JOURNAL: &str = ".vizattach-journal";
const PARTIAL: &str = ".vizattach-partial";
/// A checkpoint every half second: what a kill may lose, plus generous room for a loaded
/// two-core machine (the figure is printed; the bound is what the test holds to).
const MAX_LOSS_S: f64 = 2.0;
/// Journals and the .pftrace reach the disk at the same checkpoints but in their own
/// batches between them: formats are compared up to the earliest end of them all, less
/// this much (the stream is in time order per thread only, within a sample or two).
const MARGIN_NS: u64 = 50_000_000;

fn mono_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes only into ts.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

// ---------------------------------------------------------------------------------------
// The target and the captures
// ---------------------------------------------------------------------------------------

fn busy_target() -> Option<Target> {
    let all = load_manifest()?;
    let Some(interp) = all.into_iter().find(|i| i.name == "host-python3.11") else {
        missing_prerequisite("no host-python3.11 in the manifest");
        return None;
    };
    let mut t = Target::start(&interp, "crash_busy.py").unwrap();
    t.wait_json("expected.json", Duration::from_secs(60)).unwrap();
    Some(t)
}

fn beats(t: &Target) -> u64 {
    fs::read_to_string(t.host_path("expected.json.beat")).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}

/// Alive, not stopped, and still making progress.
fn runs_on(t: &mut Target) -> Result<(), String> {
    if let Some(s) = t.exited() {
        return Err(format!("the target exited ({s}); stderr:\n{}", t.stderr()));
    }
    let stat = fs::read_to_string(format!("/proc/{}/stat", t.pid)).map_err(|e| e.to_string())?;
    let state = stat.rsplit_once(") ").and_then(|(_, r)| r.chars().next()).unwrap_or('?');
    if matches!(state, 'T' | 't' | 'Z' | 'X') {
        return Err(format!("the target is in state {state} after vizattach was killed"));
    }
    let (before, deadline) = (beats(t), Instant::now() + Duration::from_secs(30));
    while beats(t) <= before {
        if Instant::now() > deadline {
            return Err("the target made no progress in 30 s after vizattach was killed".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

struct Killed {
    /// CLOCK_MONOTONIC of the SIGKILL
    at_ns: u64,
    /// vizattach had exited by itself before the kill (a --duration that ran out)
    finished: bool,
    stderr: String,
}

/// When to count the time to the kill from.
#[derive(Clone, Copy, PartialEq)]
enum From {
    /// vizattach's start (the kill may come during the attach)
    Spawn,
    /// the capture's start: the moment its output files appear (after the attach)
    Capture,
}

/// Records process `pid` into `dir/outputs[0]` (and the other outputs) and SIGKILLs
/// vizattach `after` its start or its capture's start.
fn capture_and_kill(
    pid: u32,
    dir: &Path,
    outputs: &[&str],
    extra: &[&str],
    from: From,
    after: Duration,
) -> Result<Killed, String> {
    fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let paths: Vec<PathBuf> = outputs.iter().map(|o| dir.join(o)).collect();
    let err_path = dir.join("vizattach.stderr");
    let mut cmd = Command::new(VIZATTACH);
    cmd.args(["--pid", &pid.to_string(), "-q"]);
    for p in &paths {
        cmd.arg("-o").arg(p);
    }
    cmd.args(extra);
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(fs::File::create(&err_path).map_err(|e| e.to_string())?);
    let mut child = KillOnDrop(cmd.spawn().map_err(|e| format!("spawn vizattach: {e}"))?);
    if from == From::Capture {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !paths[0].exists() && !with_suffix(&paths[0], JOURNAL).exists() {
            if Instant::now() > deadline || child.exited().is_some() {
                let _ = child.0.kill();
                return Err(format!(
                    "the capture did not start: {}",
                    fs::read_to_string(&err_path).unwrap_or_default()
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    std::thread::sleep(after);
    let finished = child.exited().is_some();
    let at_ns = mono_ns();
    let _ = child.0.kill();
    let _ = child.0.wait();
    let stderr = fs::read_to_string(&err_path).unwrap_or_default();
    if stderr.contains("panicked") {
        return Err(format!("vizattach panicked: {stderr}"));
    }
    Ok(Killed { at_ns, finished, stderr })
}

fn repair(path: &Path) -> Result<RunOutput, String> {
    let out = run_vizattach(&["repair", path.to_str().unwrap()])?;
    if out.stderr.contains("panicked") || out.stdout.contains("panicked") {
        return Err(format!("vizattach repair panicked: {}", out.describe()));
    }
    Ok(out)
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

// ---------------------------------------------------------------------------------------
// Reading slices back
// ---------------------------------------------------------------------------------------

/// One slice; `end` None for one the trace shows as not ended.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Slice {
    tid: i64,
    depth: u64,
    name: String,
    start: u64,
    end: Option<u64>,
}

const ERRORS_SQL: &str =
    "select name, idx, severity, value from stats where severity in ('error', 'data_loss') and value > 0";
const SLICES_SQL: &str = "select t.tid, s.depth, s.name, s.ts, s.dur from slice s \
     join thread_track tt on s.track_id = tt.id join thread t using (utid)";

/// A trace as the trace processor reads it; any error or data-loss statistic fails.
fn tp_slices(dist: &Path, path: &Path) -> Result<Vec<Slice>, String> {
    let r = tp::query(dist, path, &[ERRORS_SQL, SLICES_SQL])?;
    if !r[0].is_empty() {
        return Err(format!("{}: trace processor stats report errors: {:?}", path.display(), r[0]));
    }
    Ok(r[1]
        .iter()
        .map(|row| {
            let (ts, dur) = (row[3].as_u64().unwrap_or(0), row[4].as_i64().unwrap_or(-1));
            Slice {
                tid: row[0].as_i64().unwrap_or(0),
                depth: row[1].as_u64().unwrap_or(0),
                name: row[2].as_str().unwrap_or("").to_string(),
                start: ts,
                end: (dur >= 0).then(|| ts + dur as u64),
            }
        })
        .collect())
}

fn read_text(path: &Path) -> Result<String, String> {
    let bytes = fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if path.extension().is_some_and(|e| e == "gz") {
        let mut s = String::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_string(&mut s)
            .map_err(|e| format!("{}: gunzip: {e}", path.display()))?;
        return Ok(s);
    }
    String::from_utf8(bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// VizTracer JSON as written: complete events (no depth) and the metadata.
fn json_events(path: &Path) -> Result<(Vec<Slice>, Value), String> {
    let v: Value = serde_json::from_str(&read_text(path)?).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = Vec::new();
    for e in v["traceEvents"].as_array().ok_or("no traceEvents")? {
        if e["ph"] == "X" {
            let ns = |k: &str| (e[k].as_f64().unwrap_or(0.0) * 1000.0).round() as u64;
            out.push(Slice {
                tid: e["tid"].as_i64().unwrap_or(0),
                depth: 0,
                name: e["name"].as_str().unwrap_or("").to_string(),
                start: ns("ts"),
                end: Some(ns("ts") + ns("dur")),
            });
        }
    }
    Ok((out, v["viztracer_metadata"].clone()))
}

/// speedscope's evented profiles; times from the capture's first event.
fn speedscope_slices(path: &Path) -> Result<Vec<Slice>, String> {
    let v: Value = serde_json::from_str(&read_text(path)?).map_err(|e| format!("{}: {e}", path.display()))?;
    let frames = v["shared"]["frames"].as_array().ok_or("no shared.frames")?;
    let mut out = Vec::new();
    for p in v["profiles"].as_array().ok_or("no profiles")? {
        let label = p["name"].as_str().unwrap_or("");
        let tid = label.rsplit_once("(tid ").and_then(|(_, r)| r.trim_end_matches(')').parse().ok()).unwrap_or(0);
        let mut stack: Vec<(u64, u64)> = Vec::new();
        for e in p["events"].as_array().ok_or("no events")? {
            let (frame, at) = (e["frame"].as_u64().ok_or("frame")?, e["at"].as_u64().ok_or("at")?);
            match e["type"].as_str() {
                Some("O") => stack.push((frame, at)),
                Some("C") => {
                    let (f, start) = stack.pop().ok_or("C with nothing open")?;
                    if f != frame {
                        return Err(format!("C of frame {frame} closes frame {f}"));
                    }
                    let name = frames.get(f as usize).and_then(|f| f["name"].as_str()).ok_or("bad frame")?;
                    out.push(Slice { tid, depth: stack.len() as u64, name: name.into(), start, end: Some(at) });
                }
                _ => return Err(format!("bad event {e}")),
            }
        }
        if !stack.is_empty() {
            return Err(format!("profile {label}: {} frames never closed", stack.len()));
        }
    }
    Ok(out)
}

/// Root-to-slice name paths per thread (slices with depths).
fn paths(slices: &[Slice]) -> BTreeSet<(i64, Vec<String>)> {
    let mut sorted: Vec<&Slice> = slices.iter().collect();
    sorted.sort_by_key(|s| (s.tid, s.start, std::cmp::Reverse(s.end), s.depth));
    let mut out = BTreeSet::new();
    let mut stack: Vec<String> = Vec::new();
    let mut tid = None;
    for s in sorted {
        if tid != Some(s.tid) {
            stack.clear();
            tid = Some(s.tid);
        }
        stack.truncate(s.depth as usize);
        stack.push(s.name.clone());
        out.insert((s.tid, stack.clone()));
    }
    out
}

/// Every `stack count` line, stacks without the thread label, by tid.
fn collapsed(path: &Path) -> Result<BTreeMap<(i64, Vec<String>), u64>, String> {
    let mut out = BTreeMap::new();
    for line in read_text(path)?.lines() {
        let (stack, n) = line.rsplit_once(' ').ok_or(format!("bad line {line:?}"))?;
        let n: u64 = n.parse().map_err(|_| format!("bad count in {line:?}"))?;
        let mut parts = stack.split(';');
        let label = parts.next().unwrap_or("");
        let tid = label.rsplit_once("(tid ").and_then(|(_, r)| r.trim_end_matches(')').parse().ok()).ok_or("label")?;
        *out.entry((tid, parts.map(String::from).collect())).or_insert(0) += n;
    }
    Ok(out)
}

/// The completed slices ending before `cut`: the same in both, times within `tol_ns`.
fn same_until(what: &str, a: &[Slice], b: &[Slice], cut: u64, tol_ns: u64) -> Result<usize, String> {
    type Runs = BTreeMap<(i64, u64, String), Vec<(u64, u64)>>;
    let group = |v: &[Slice], depth: bool| -> Runs {
        let mut m: Runs = BTreeMap::new();
        for s in v {
            if let Some(end) = s.end.filter(|&e| e <= cut + tol_ns) {
                m.entry((s.tid, if depth { s.depth } else { 0 }, s.name.clone())).or_default().push((s.start, end));
            }
        }
        m.values_mut().for_each(|v| v.sort());
        m
    };
    let depth = a.iter().chain(b).any(|s| s.depth > 0);
    let (ga, gb) = (group(a, depth), group(b, depth));
    let keys: BTreeSet<_> = ga.keys().chain(gb.keys()).collect();
    let mut n = 0;
    for k in keys {
        let empty = Vec::new();
        let (mut x, mut y) = (ga.get(k).unwrap_or(&empty).clone(), gb.get(k).unwrap_or(&empty).clone());
        // one near the cut may fall on either side of it in the two traces
        let near = |s: &(u64, u64)| s.1 + tol_ns >= cut;
        while x.len() > y.len() && x.last().is_some_and(near) {
            x.pop();
        }
        while y.len() > x.len() && y.last().is_some_and(near) {
            y.pop();
        }
        if x.len() != y.len() {
            return Err(format!(
                "{what}: {k:?} has {} slices before the cut in one, {} in the other",
                x.len(),
                y.len()
            ));
        }
        for (p, q) in x.iter().zip(&y) {
            if p.0.abs_diff(q.0) > tol_ns || p.1.abs_diff(q.1) > tol_ns {
                return Err(format!("{what}: {k:?}: {p:?} against {q:?}"));
            }
        }
        n += x.len();
    }
    Ok(n)
}

fn rebase(v: &mut [Slice]) {
    let base = v.iter().map(|s| s.start).min().unwrap_or(0);
    for s in v {
        s.start -= base;
        s.end = s.end.map(|e| e - base);
    }
}

fn last_end(v: &[Slice]) -> u64 {
    v.iter().filter_map(|s| s.end).max().unwrap_or(0)
}

// ---------------------------------------------------------------------------------------
// What one killed capture left, every format checked the documented way
// ---------------------------------------------------------------------------------------

/// What one kill kept, for the report.
struct Kept {
    complete: usize,
    open: usize,
    /// from the end of the last complete slice in the .pftrace to the kill
    loss_s: f64,
    json_slices: usize,
    text_slices: usize,
    samples_counted: u64,
}

fn check_killed(dist: &Path, dir: &Path, killed: &Killed) -> Result<Kept, String> {
    let p = |name: &str| dir.join(name);
    // .pftrace: straight into the trace processor
    let pf = tp_slices(dist, &p("cap.pftrace"))?;
    let (complete, open): (Vec<Slice>, Vec<Slice>) = pf.iter().cloned().partition(|s| s.end.is_some());
    let loss_s = killed.at_ns.saturating_sub(last_end(&complete)) as f64 / 1e9;
    // repair leaves it whole packets only
    let out = repair(&p("cap.pftrace"))?;
    if !out.status.success() {
        return Err(format!("repair of cap.pftrace failed: {}", out.describe()));
    }
    let bytes = fs::read(p("cap.pftrace")).map_err(|e| e.to_string())?;
    proto::Trace::decode(&bytes[..]).map_err(|e| format!("cap.pftrace after repair is not whole packets: {e}"))?;

    // the others: only a journal and a partial file until repaired
    for o in OUTPUTS.iter().filter(|o| **o != "cap.pftrace") {
        let out = p(o);
        if out.exists() || !with_suffix(&out, JOURNAL).exists() {
            return Err(format!("{o}: expected only {o}{JOURNAL} (and {o}{PARTIAL}) after the kill"));
        }
    }
    // without its journal, the partial JSON is closed as text (the fallback)
    fs::copy(p(&format!("cap.json{PARTIAL}")), p(&format!("text.json{PARTIAL}"))).map_err(|e| e.to_string())?;
    let mut summaries = Vec::new();
    for o in OUTPUTS.iter().filter(|o| **o != "cap.pftrace").chain(&["text.json"]) {
        let out = repair(&p(o))?;
        if !out.status.success() {
            return Err(format!("repair {o} failed: {}", out.describe()));
        }
        summaries.push(out.stdout.lines().next().unwrap_or("").to_string());
        for leftover in [JOURNAL, PARTIAL] {
            if with_suffix(&p(o), leftover).exists() {
                return Err(format!("{o}{leftover} is still there after repair"));
            }
        }
    }

    // JSON: the trace processor reads the slices of the .pftrace
    let json = tp_slices(dist, &p("cap.json"))?;
    if json.iter().any(|s| s.end.is_none()) {
        return Err("cap.json has unfinished slices after repair".into());
    }
    let cut = last_end(&complete).min(last_end(&json)).saturating_sub(MARGIN_NS);
    same_until("cap.json against cap.pftrace", &pf, &json, cut, 1000)?;
    // what was open at the kill in the .pftrace is there too, closed
    for o in &open {
        if !json
            .iter()
            .any(|s| (s.tid, s.depth, &s.name) == (o.tid, o.depth, &o.name) && s.start.abs_diff(o.start) <= 1000)
        {
            return Err(format!("slice open at the kill in cap.pftrace is not in cap.json: {o:?}"));
        }
    }
    // the text fallback keeps slices that closed before its last flush, and nothing else
    // (its buffer may have reached the file after the journal's last flush: compared up to
    // the journal's end)
    let text = tp_slices(dist, &p("text.json"))?;
    let json_end = last_end(&json).saturating_sub(MARGIN_NS);
    let whole: BTreeSet<(i64, &str, u64, Option<u64>)> =
        json.iter().map(|s| (s.tid, s.name.as_str(), s.start, s.end)).collect();
    let lacking =
        |s: &&Slice| s.end.is_some_and(|e| e <= json_end) && !whole.contains(&(s.tid, s.name.as_str(), s.start, s.end));
    if let Some(s) = text.iter().find(lacking) {
        return Err(format!("text.json (closed without its journal) has a slice cap.json lacks: {s:?}"));
    }
    let (json_x, meta) = json_events(&p("cap.json"))?;
    if !meta["recovered"].as_str().is_some_and(|r| r.contains("vizattach repair")) {
        return Err(format!("cap.json does not say it was recovered: {meta}"));
    }
    // the gzipped JSON and speedscope: the same slices
    let (gz_x, _) = json_events(&p("cap.json.gz"))?;
    let cut_x = last_end(&json_x).min(last_end(&gz_x)).saturating_sub(MARGIN_NS);
    same_until("cap.json.gz against cap.json", &json_x, &gz_x, cut_x, 0)?;
    let mut ss = speedscope_slices(&p("cap.speedscope.json"))?;
    let mut rebased = json.clone();
    rebase(&mut rebased);
    rebase(&mut ss);
    let cut_s = last_end(&rebased).min(last_end(&ss)).saturating_sub(MARGIN_NS);
    same_until("cap.speedscope.json against cap.json", &rebased, &ss, cut_s, 2)?;
    // collapsed stacks: each one a path of nested slices
    let counts = collapsed(&p("cap.collapsed"))?;
    let known = paths(&json);
    if let Some(((tid, stack), _)) = counts.iter().find(|(k, _)| !known.contains(k)) {
        return Err(format!("cap.collapsed has a stack no slices of cap.json show: {tid} {stack:?}"));
    }
    let svg = read_text(&p("cap.svg"))?;
    if !svg.trim_end().ends_with("</svg>") || !svg.contains("recovered") {
        return Err("cap.svg is not a finished flame graph that says it was recovered".into());
    }
    eprintln!("    {}", summaries.join("\n    "));
    Ok(Kept {
        complete: complete.len(),
        open: open.len(),
        loss_s,
        json_slices: json.len(),
        text_slices: text.len(),
        samples_counted: counts.values().sum(),
    })
}

#[test]
fn sigkill_at_1_2_and_10_s_keeps_all_but_the_last_half_second() {
    let Some(mut target) = busy_target() else { return };
    let Some(dist) = tp::web_dist() else { return };
    let pid = target.pid;
    let kills = [1u64, 2, 10];
    let dirs: Vec<PathBuf> = kills.iter().map(|s| target.host_path(&format!("kill-{s}s"))).collect();
    // three captures of the same target at once, killed 1, 2 and 10 s into the capture
    let killed: Vec<Result<Killed, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = kills
            .iter()
            .zip(&dirs)
            .map(|(secs, dir)| {
                s.spawn(move || capture_and_kill(pid, dir, &OUTPUTS, &[], From::Capture, Duration::from_secs(*secs)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    runs_on(&mut target).unwrap();
    let mut failures = Vec::new();
    for ((secs, dir), k) in kills.iter().zip(&dirs).zip(killed) {
        let k = k.unwrap();
        assert!(!k.finished, "vizattach exited by itself: {}", k.stderr);
        match check_killed(dist, dir, &k) {
            Ok(kept) => {
                eprintln!(
                    "SIGKILL at {secs} s: .pftrace {} complete slices + {} open at the kill, the last complete one \
                     ending {:.2} s before the kill; repaired .json {} slices (closed as text without its journal: {}); \
                     {} samples counted in .collapsed",
                    kept.complete, kept.open, kept.loss_s, kept.json_slices, kept.text_slices, kept.samples_counted
                );
                if *secs >= 2 && (kept.complete == 0 || kept.loss_s > MAX_LOSS_S) {
                    failures.push(format!(
                        "kill at {secs} s: {} complete slices, the last {:.2} s before the kill",
                        kept.complete, kept.loss_s
                    ));
                }
            }
            Err(e) => failures.push(format!("kill at {secs} s: {e}")),
        }
    }
    runs_on(&mut target).unwrap();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------
// Kills at random moments
// ---------------------------------------------------------------------------------------

/// xorshift: reproducible from the seed printed (VIZATTACH_CRASH_SEED=N to replay).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// After one kill: the documented path opens whatever is there.
fn open_the_documented_way(dist: &Path, path: &Path) -> Result<String, String> {
    let name = path.file_name().unwrap().to_string_lossy().to_string();
    let (journal, partial) = (with_suffix(path, JOURNAL), with_suffix(path, PARTIAL));
    let mut note = String::new();
    if journal.exists() || partial.exists() || name.ends_with(".pftrace") && path.exists() {
        let out = repair(path)?;
        note = out.stdout.lines().chain(out.stderr.lines()).next().unwrap_or("").to_string();
        if !out.status.success() {
            // the one refusal allowed: nothing recorded yet, and nothing left behind
            if !out.stderr.contains("before it recorded anything") {
                return Err(format!("repair {name} failed: {}", out.describe()));
            }
        }
        if journal.exists() || partial.exists() {
            return Err(format!("{name}: journal or partial file left after repair"));
        }
    }
    if !path.exists() {
        return Ok(format!("no file ({note})"));
    }
    if name.ends_with(".pftrace") {
        tp_slices(dist, path)?;
    } else if name.ends_with(".speedscope.json") {
        speedscope_slices(path)?;
    } else if name.ends_with(".json") || name.ends_with(".json.gz") {
        json_events(path)?;
        if name.ends_with(".json") {
            tp_slices(dist, path)?;
        }
    } else if name.ends_with(".collapsed") {
        collapsed(path)?;
    } else if name.ends_with(".svg") {
        let svg = read_text(path)?;
        if !svg.trim_end().ends_with("</svg>") {
            return Err(format!("{name} is not a whole SVG"));
        }
    }
    Ok(format!("{} bytes ({note})", fs::metadata(path).map(|m| m.len()).unwrap_or(0)))
}

#[test]
fn sigkill_at_random_moments_never_leaves_a_file_that_does_not_open() {
    let Some(mut target) = busy_target() else { return };
    let Some(dist) = tp::web_dist() else { return };
    let seed = std::env::var("VIZATTACH_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| mono_ns() | 1);
    eprintln!("seed {seed} (VIZATTACH_CRASH_SEED={seed} replays it)");
    let mut rng = Rng(seed);
    let formats = ["r.json", "r.pftrace", "r.json.gz", "r.speedscope.json", "r.collapsed", "r.svg"];
    let mut failures = Vec::new();
    for i in 0..18 {
        let format = formats[(i / 3) % formats.len()];
        // start-up (attach, file creation), mid-capture, and the finish of a short --duration
        let (when, after, extra): (&str, u64, &[&str]) = match i % 3 {
            0 => ("start-up", rng.below(150), &[]),
            1 => ("capture", 150 + rng.below(1500), &[]),
            _ => ("finish", 280 + rng.below(150), &["--duration", "300ms"]),
        };
        let dir = target.host_path(&format!("random-{i}"));
        let killed = capture_and_kill(target.pid, &dir, &[format], extra, From::Spawn, Duration::from_millis(after));
        let result = killed.and_then(|k| open_the_documented_way(dist, &dir.join(format)).map(|r| (r, k.finished)));
        match result {
            Ok((r, finished)) => eprintln!(
                "  {format:<18} killed at {after:4} ms ({when}{}): {r}",
                if finished { ", had finished" } else { "" }
            ),
            Err(e) => failures.push(format!("{format} killed at {after} ms ({when}): {e}")),
        }
        if let Err(e) = runs_on(&mut target) {
            failures.push(format!("after {format} killed at {after} ms: {e}"));
            break;
        }
    }
    assert!(failures.is_empty(), "seed {seed}:\n{}", failures.join("\n"));
}
