//! `vizattach record` against real interpreters: the timeline of a fixture with a known
//! call tree (launch mode), stopping by signal and by target death (by pid), launch-mode
//! exit status and short programs, and opening a trace in vizviewer.
//!
//!     cargo test --release --test record -- --nocapture
//!
//! Every trace written is put through `check_trace` (valid JSON, strict nesting per
//! thread, thread names, file_info, metadata). Interpreters come from
//! $VIZATTACH_PYTHONS/manifest.json (scripts/install-pythons.sh), plus an embedder of
//! the host libpython3.11; without the manifest the tests print a skip note, or fail
//! when CI=true.
//!
//! Timing expectations come from the fixture itself: it measures every call of its
//! expected tree with time.monotonic (CLOCK_MONOTONIC, the clock vizattach stamps
//! samples with), so durations and start offsets are compared with what really
//! happened, within 3 sample intervals + 15 % + the longest sampler lag vizattach
//! reports.

mod common;

use common::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Sample rate of every capture here.
const RATE: u32 = 1000;
const INTERVAL_US: f64 = 1e6 / RATE as f64;
/// Interpreters captured concurrently (timing-sensitive: the machine has 2 cores).
const WORKERS: usize = 2;
/// The test functions of this file run one at a time, so captures do not compete
/// with the fixtures' busy loops of another test for the two cores.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

// ---------------------------------------------------------------------------------------
// Traces: parsing and the structural checks every trace must pass
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Slice {
    /// the whole event name, "qualname (file:first_line)"
    name: String,
    qual: String,
    file: String,
    ts: f64,
    dur: f64,
    tid: i64,
    /// index of the enclosing slice on the same thread
    parent: Option<usize>,
}

impl Slice {
    fn end(&self) -> f64 {
        self.ts + self.dur
    }
}

#[derive(Debug)]
struct Trace {
    slices: Vec<Slice>,
    thread_names: BTreeMap<i64, String>,
    meta: Value,
    files: serde_json::Map<String, Value>,
    pid: i64,
}

impl Trace {
    fn meta_f64(&self, key: &str) -> f64 {
        self.meta[key].as_f64().unwrap_or(0.0)
    }

    /// Slices from `file` only; each one's parent is its nearest enclosing slice from
    /// `file` (the stdlib frames between, e.g. threading's, are left out).
    fn file_tree(&self, file: &str) -> FileTree {
        let mut nodes: Vec<usize> = Vec::new();
        let mut index_of = BTreeMap::new();
        for (i, s) in self.slices.iter().enumerate() {
            if s.file == file {
                index_of.insert(i, nodes.len());
                nodes.push(i);
            }
        }
        let mut children: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
        let mut roots: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
        for (n, &i) in nodes.iter().enumerate() {
            let mut p = self.slices[i].parent;
            while let Some(pi) = p {
                if self.slices[pi].file == file {
                    break;
                }
                p = self.slices[pi].parent;
            }
            match p {
                Some(pi) => children[index_of[&pi]].push(n),
                None => roots.entry(self.slices[i].tid).or_default().push(n),
            }
        }
        // siblings never tie on ts (they nest strictly), so ts orders them
        let by_ts = |v: &mut Vec<usize>| {
            v.sort_by(|&a, &b| self.slices[nodes[a]].ts.total_cmp(&self.slices[nodes[b]].ts).then(a.cmp(&b)))
        };
        children.iter_mut().for_each(by_ts);
        roots.values_mut().for_each(by_ts);
        FileTree { slices: nodes.iter().map(|&i| self.slices[i].clone()).collect(), children, roots }
    }
}

/// The slices of one file as a forest per thread.
struct FileTree {
    slices: Vec<Slice>,
    children: Vec<Vec<usize>>,
    roots: BTreeMap<i64, Vec<usize>>,
}

impl FileTree {
    fn render(&self, nodes: &[usize], depth: usize, out: &mut String) {
        for &n in nodes {
            let s = &self.slices[n];
            out.push_str(&format!(
                "{:indent$}{} [ts {:.1} dur {:.1} ms]\n",
                "",
                s.qual,
                s.ts / 1000.0,
                s.dur / 1000.0,
                indent = depth * 2
            ));
            self.render(&self.children[n], depth + 1, out);
        }
    }

    fn render_thread(&self, tid: i64) -> String {
        let mut out = String::new();
        self.render(self.roots.get(&tid).map(|v| v.as_slice()).unwrap_or(&[]), 1, &mut out);
        out
    }
}

/// "qualname (file:line)" -> (qualname, file, line).
fn parse_slice_name(name: &str) -> Option<(String, String, i64)> {
    let inner = name.strip_suffix(')')?;
    let open = inner.rfind(" (")?;
    let (qual, loc) = (&inner[..open], &inner[open + 2..]);
    let (file, line) = loc.rsplit_once(':')?;
    Some((qual.to_string(), file.to_string(), line.parse().ok()?))
}

/// Everything any trace vizattach writes must satisfy:
/// - valid JSON of VizTracer's shape, with the metadata keys we document;
/// - a process_name event; every tid of an X event has a thread_name event;
/// - X events well-formed ("qualname (file:line)", ts, dur >= 0, cat python) and
///   strictly nested per tid (sorted by ts then -dur, a child lies within its parent);
/// - file_info.functions names every slice; file_info.files holds every file named by
///   a slice that exists in the target's root (`root`), with its source and line count,
///   and `required_file` (the fixture, as the target sees it) must be among them.
fn check_trace(path: &Path, root: &Path, required_file: Option<&str>) -> Result<Trace, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| {
        let tail: String = text.chars().rev().take(300).collect::<Vec<_>>().into_iter().rev().collect();
        format!("{} is not valid JSON ({e}); {} bytes, ends with: {tail}", path.display(), text.len())
    })?;
    let mut problems = Vec::new();
    let events = v["traceEvents"].as_array().ok_or("no traceEvents array")?;
    let meta = v["viztracer_metadata"].clone();
    if !meta.is_object() {
        problems.push("no viztracer_metadata object".to_string());
    }
    for key in [
        "python_version",
        "rate_requested",
        "rate_achieved",
        "samples",
        "missed_ticks",
        "dropped_samples",
        "thread_samples",
        "lost_samples",
        "retried_samples",
        "duration_s",
    ] {
        if meta.get(key).is_none() {
            problems.push(format!("viztracer_metadata lacks {key:?}"));
        }
    }
    let files = v["file_info"]["files"].as_object().cloned().ok_or("no file_info.files object")?;
    let functions = v["file_info"]["functions"].as_object().cloned().ok_or("no file_info.functions object")?;

    let mut slices = Vec::new();
    let mut thread_names = BTreeMap::new();
    let mut process_names = 0;
    let mut pid = None;
    for e in events {
        match e["ph"].as_str() {
            Some("M") => {
                let name = e["args"]["name"].as_str();
                match (e["name"].as_str(), name) {
                    (Some("process_name"), Some(_)) => {
                        process_names += 1;
                        pid = e["pid"].as_i64();
                    }
                    (Some("thread_name"), Some(n)) => match e["tid"].as_i64() {
                        Some(tid) => {
                            if let Some(old) = thread_names.insert(tid, n.to_string()) {
                                problems.push(format!("tid {tid} named twice: {old:?} and {n:?}"));
                            }
                        }
                        None => problems.push(format!("thread_name event without integer tid: {e}")),
                    },
                    _ => problems.push(format!("unexpected metadata event {e}")),
                }
            }
            Some("X") => {
                let name = e["name"].as_str().unwrap_or("");
                let Some((qual, file, line)) = parse_slice_name(name) else {
                    problems.push(format!("X event name is not \"qualname (file:line)\": {e}"));
                    continue;
                };
                let (Some(ts), Some(dur), Some(tid)) = (e["ts"].as_f64(), e["dur"].as_f64(), e["tid"].as_i64()) else {
                    problems.push(format!("X event lacks numeric ts/dur/tid: {e}"));
                    continue;
                };
                if dur < 0.0 || line < 0 || e["pid"].as_i64().is_none() || e["cat"].as_str() != Some("python") {
                    problems.push(format!("malformed X event: {e}"));
                }
                match functions.get(name) {
                    Some(f) if f[0].as_str() == Some(file.as_str()) && f[1].as_i64() == Some(line) => {}
                    other => problems
                        .push(format!("file_info.functions[{name:?}] is {other:?}, expected [{file:?}, {line}]")),
                }
                slices.push(Slice { name: name.to_string(), qual, file, ts, dur, tid, parent: None });
            }
            // per-thread activity counters (src/activity.rs; tests/activity.rs checks them)
            Some("C") if e["name"].as_str().is_some_and(|n| n.starts_with("activity ")) => {
                let args = e["args"].as_object().map(|a| a.keys().cloned().collect::<Vec<_>>()).unwrap_or_default();
                if args.is_empty() || args.iter().any(|k| k != "on_cpu" && k != "holds_gil") {
                    problems.push(format!("activity counter with other arguments: {e}"));
                }
            }
            _ => problems.push(format!("unexpected event {e}")),
        }
    }
    if process_names != 1 {
        problems.push(format!("{process_names} process_name events, expected 1"));
    }
    // Strict nesting per thread. A parent and a child opened and closed at the same
    // sample midpoints have identical ts and dur: viewers (Perfetto's JSON importer,
    // catapult) then nest them in file order, so the one written first is the parent.
    let mut order: Vec<usize> = (0..slices.len()).collect();
    order.sort_by(|&a, &b| {
        let (sa, sb) = (&slices[a], &slices[b]);
        sa.tid.cmp(&sb.tid).then(sa.ts.total_cmp(&sb.ts)).then(sb.dur.total_cmp(&sa.dur)).then(a.cmp(&b))
    });
    const EPS: f64 = 0.002; // ts and dur are printed with ns precision
    let mut stack: Vec<usize> = Vec::new();
    let mut overlaps = 0;
    for &i in &order {
        while let Some(&top) = stack.last() {
            if slices[top].tid != slices[i].tid || slices[top].end() <= slices[i].ts + EPS && slices[top].dur > 0.0 {
                stack.pop();
            } else {
                break;
            }
        }
        if let Some(&top) = stack.last() {
            if slices[i].end() > slices[top].end() + EPS {
                overlaps += 1;
                if overlaps <= 5 {
                    problems.push(format!(
                        "tid {}: {} [{:.3}, {:.3}] overlaps {} [{:.3}, {:.3}] without nesting",
                        slices[i].tid,
                        slices[i].name,
                        slices[i].ts,
                        slices[i].end(),
                        slices[top].name,
                        slices[top].ts,
                        slices[top].end()
                    ));
                }
            }
            slices[i].parent = Some(top);
        }
        stack.push(i);
    }
    if overlaps > 5 {
        problems.push(format!("... {} nesting violations in all", overlaps));
    }
    let tids: BTreeSet<i64> = slices.iter().map(|s| s.tid).collect();
    for tid in &tids {
        if !thread_names.contains_key(tid) {
            problems.push(format!("tid {tid} has slices but no thread_name event"));
        }
    }
    // Sources.
    let named_files: BTreeSet<&str> = slices.iter().map(|s| s.file.as_str()).collect();
    for f in &named_files {
        let host = rooted(root, Path::new(f));
        let on_disk = f.starts_with('/') && host.is_file();
        match files.get(*f) {
            Some(entry) => {
                if let (Some(src), Some(n)) = (entry[0].as_str(), entry[1].as_i64()) {
                    if let Ok(real) = fs::read_to_string(&host) {
                        if real != src || real.lines().count() as i64 != n {
                            problems.push(format!(
                                "file_info.files[{f:?}] differs from the file (or its line count {n} is wrong)"
                            ));
                        }
                    }
                } else {
                    problems.push(format!(
                        "file_info.files[{f:?}] is not [source, n_lines]: {}",
                        entry.to_string().chars().take(200).collect::<String>()
                    ));
                }
            }
            None if on_disk || Some(*f) == required_file => {
                problems.push(format!("file_info.files lacks {f:?}, named by a slice"))
            }
            None => {}
        }
    }
    if let Some(req) = required_file {
        if !named_files.contains(req) {
            problems.push(format!("no slice from the fixture {req:?} at all"));
        }
        if !files.contains_key(req) {
            problems.push(format!("file_info.files lacks the fixture {req:?}"));
        }
    }
    if !problems.is_empty() {
        // keep it for inspection: work directories are removed when the test ends
        let dir =
            path.parent().and_then(|d| d.file_name()).map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let kept = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("record-malformed-{dir}.json"));
        let _ = fs::copy(path, &kept);
        return Err(format!("{} is malformed (kept at {}):\n{}", path.display(), kept.display(), problems.join("\n")));
    }
    Ok(Trace { slices, thread_names, meta, files, pid: pid.unwrap_or(0) })
}

// ---------------------------------------------------------------------------------------
// Running vizattach record
// ---------------------------------------------------------------------------------------

/// `vizattach record -q --rate RATE -o OUT -- COMMAND...`, to completion.
fn launch(work: &WorkDir, fixture: &str, args: &[String], out: &Path) -> Result<RunOutput, String> {
    let mut cmd = Command::new(VIZATTACH);
    cmd.args(["record", "-q", "--rate", &RATE.to_string(), "-o"])
        .arg(out)
        .arg("--")
        .args(work.command_line(fixture, args))
        .current_dir(work.host_path(""));
    run_with_timeout(cmd, Duration::from_secs(90))
}

fn send_signal(pid: u32, sig: i32) -> Result<(), String> {
    // SAFETY: plain kill(2) on a pid we spawned.
    if unsafe { libc::kill(pid as i32, sig) } != 0 {
        return Err(format!("kill({pid}, {sig}): {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// vizattach recording `pid` until stopped, output to `out`, stderr to a file.
fn start_recording(pid: u32, out: &Path, stderr_file: &Path) -> Result<KillOnDrop, String> {
    let stderr = fs::File::create(stderr_file).map_err(|e| e.to_string())?;
    let mut cmd = Command::new(VIZATTACH);
    cmd.args(["--pid", &pid.to_string(), "--rate", &RATE.to_string(), "-o"])
        .arg(out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    cmd.spawn().map(KillOnDrop).map_err(|e| format!("spawn vizattach: {e}"))
}

fn wait_exit(child: &mut KillOnDrop, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(s) = child.exited() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

// ---------------------------------------------------------------------------------------
// The timeline fixture and its expected tree
// ---------------------------------------------------------------------------------------

/// One expected call: the fixture's function key (see INFO["functions"] in
/// timeline_main.py), the fixture's timing label if it measured this call, and its
/// children in order. `burst`: instead of exact children, 1..=max calls of one function
/// made back to back from one line (they may merge into fewer slices).
struct E {
    key: &'static str,
    label: Option<&'static str>,
    kids: Vec<E>,
    burst: Option<(&'static str, usize)>,
    /// fixture functions that may appear among the children besides `kids` (code that
    /// runs for microseconds, like a class body at import)
    may_also_contain: &'static [&'static str],
}

fn e(key: &'static str, label: &'static str, kids: Vec<E>) -> E {
    E { key, label: Some(label), kids, burst: None, may_also_contain: &[] }
}

/// The main thread's expected tree (slices from timeline_main.py only).
fn expected_main_thread() -> E {
    let recurse = |inner: E| e("recurse", "recurse", vec![inner]);
    E {
        key: "<module>",
        label: None,
        burst: None,
        may_also_contain: &["Recursor"],
        kids: vec![e(
            "main",
            "main",
            vec![
                e(
                    "outer",
                    "outer",
                    vec![
                        e("busy", "outer.busy1", vec![]),
                        e(
                            "middle",
                            "middle",
                            vec![
                                e("leaf_sleep", "leaf_sleep", vec![]),
                                e("leaf_busy", "leaf_busy", vec![e("busy", "leaf_busy.busy", vec![])]),
                            ],
                        ),
                        e("busy", "outer.busy2", vec![]),
                    ],
                ),
                // three calls from one line (caller sleeps between), then one from each of
                // two other lines, back to back: five slices
                e(
                    "repeat_calls",
                    "repeat_calls",
                    vec![
                        e("repeated", "repeated.a0", vec![]),
                        e("repeated", "repeated.a1", vec![]),
                        e("repeated", "repeated.a2", vec![]),
                        e("repeated", "repeated.b", vec![]),
                        e("repeated", "repeated.c", vec![]),
                    ],
                ),
                // Recursor().recurse(4): five nested calls
                recurse(recurse(recurse(recurse(e("recurse", "recurse", vec![]))))),
                // a generator resumed four times, the consumer sleeping in between
                e(
                    "consume",
                    "consume",
                    vec![
                        e("gen", "gen.0", vec![]),
                        e("gen", "gen.1", vec![]),
                        e("gen", "gen.2", vec![]),
                        e("gen", "gen.3", vec![]),
                    ],
                ),
                E {
                    key: "same_line_burst",
                    label: Some("same_line_burst"),
                    kids: vec![],
                    burst: Some(("burst_step", 3)),
                    may_also_contain: &[],
                },
                e("with_worker", "with_worker", vec![]),
            ],
        )],
    }
}

/// worker-1's expected tree.
fn expected_worker_thread() -> E {
    e("worker_body", "worker_body", vec![e("worker_step", "worker_step", vec![]), e("busy", "worker.busy", vec![])])
}

struct Truth {
    pid: i64,
    version: String,
    main_tid: i64,
    worker_tid: i64,
    file: String,
    /// key -> (qualname, first line)
    functions: BTreeMap<String, (String, i64)>,
    /// label -> (start, end) in microseconds of CLOCK_MONOTONIC
    spans: BTreeMap<String, (f64, f64)>,
}

impl Truth {
    fn load(path: &Path) -> Result<Truth, String> {
        let text = fs::read_to_string(path).map_err(|e| format!("the fixture wrote no {}: {e}", path.display()))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let functions = v["functions"]
            .as_object()
            .ok_or("truth: no functions")?
            .iter()
            .map(|(k, f)| (k.clone(), (f[0].as_str().unwrap_or("").to_string(), f[2].as_i64().unwrap_or(-1))))
            .collect();
        let spans = v["spans"]
            .as_object()
            .ok_or("truth: no spans")?
            .iter()
            .map(|(k, s)| (k.clone(), (s[0].as_f64().unwrap_or(0.0) * 1e6, s[1].as_f64().unwrap_or(0.0) * 1e6)))
            .collect();
        Ok(Truth {
            pid: v["pid"].as_i64().unwrap_or(0),
            version: v["version"].as_str().unwrap_or("").to_string(),
            main_tid: v["main_tid"].as_i64().unwrap_or(0),
            worker_tid: v["worker_tid"].as_i64().unwrap_or(0),
            file: v["file"].as_str().unwrap_or("").to_string(),
            functions,
            spans,
        })
    }

    fn qual(&self, key: &str) -> String {
        self.functions.get(key).map(|f| f.0.clone()).unwrap_or_else(|| key.to_string())
    }
}

struct Matcher<'a> {
    tree: &'a FileTree,
    truth: &'a Truth,
    /// tolerance on a duration `d` (us): 3 intervals + 15 % + the longest sampler lag
    lag_us: f64,
    /// the trace's start of main() and the fixture's, to compare start offsets
    ref_slice_ts: f64,
    ref_truth_ts: f64,
    problems: Vec<String>,
    checked: usize,
}

impl Matcher<'_> {
    fn dur_tolerance(&self, d: f64) -> f64 {
        3.0 * INTERVAL_US + 0.15 * d + self.lag_us
    }
    fn offset_tolerance(&self) -> f64 {
        // each edge is off by at most half a sample gap; 5 ms more for the fixture
        // being descheduled between taking its timestamp and making the call
        3.0 * INTERVAL_US + self.lag_us + 5000.0
    }

    fn check_timing(&mut self, path: &str, s: &Slice, start: f64, end: f64) {
        self.checked += 1;
        let want = end - start;
        let tol = self.dur_tolerance(want);
        if (s.dur - want).abs() > tol {
            self.problems.push(format!(
                "{path}: duration {:.1} ms, the fixture measured {:.1} ms (tolerance ±{:.1} ms)",
                s.dur / 1000.0,
                want / 1000.0,
                tol / 1000.0
            ));
        }
        let (got_off, want_off) = (s.ts - self.ref_slice_ts, start - self.ref_truth_ts);
        let tol = self.offset_tolerance();
        if (got_off - want_off).abs() > tol {
            self.problems.push(format!(
                "{path}: starts {:.1} ms after main() began, the fixture measured {:.1} ms (tolerance ±{:.1} ms)",
                got_off / 1000.0,
                want_off / 1000.0,
                tol / 1000.0
            ));
        }
    }

    fn expect_name(&mut self, path: &str, s: &Slice, key: &str) -> bool {
        let (qual, line) = self.truth.functions.get(key).cloned().unwrap_or((key.to_string(), -1));
        let want = format!("{qual} ({}:{line})", self.truth.file);
        if s.name != want {
            self.problems.push(format!("{path}: slice {:?}, expected {want:?}", s.name));
            return false;
        }
        true
    }

    /// Matches `node` against `exp`, recursively.
    fn node(&mut self, path: &str, node: usize, exp: &E) {
        let s = self.tree.slices[node].clone();
        let path = format!("{path}/{}", exp.key);
        if !self.expect_name(&path, &s, exp.key) {
            return;
        }
        if let Some(label) = exp.label {
            match self.truth.spans.get(label) {
                Some(&(a, b)) => self.check_timing(&path, &s, a, b),
                None => self.problems.push(format!("{path}: the fixture measured no {label:?}")),
            }
        }
        let kids: Vec<usize> = self.tree.children[node]
            .iter()
            .copied()
            .filter(|&c| !exp.may_also_contain.iter().any(|k| self.tree.slices[c].qual == self.truth.qual(k)))
            .collect();
        let got_names: Vec<String> = kids.iter().map(|&c| self.tree.slices[c].qual.clone()).collect();
        if let Some((key, max)) = exp.burst {
            let qual = self.truth.qual(key);
            if kids.is_empty() || kids.len() > max || got_names.iter().any(|n| *n != qual) {
                self.problems.push(format!(
                    "{path}: expected 1 to {max} slices of {qual} (calls back to back from one line), got {got_names:?}"
                ));
                return;
            }
            for &c in &kids {
                let cs = self.tree.slices[c].clone();
                self.expect_name(&format!("{path}/{key}"), &cs, key);
            }
            // Together they cover the caller's time, bar the loop overhead.
            let (first, last) = (&self.tree.slices[kids[0]], &self.tree.slices[*kids.last().unwrap()]);
            let covered = last.end() - first.ts;
            let tol = self.dur_tolerance(s.dur);
            if (covered - s.dur).abs() > tol {
                self.problems.push(format!(
                    "{path}: the {key} slices span {:.1} ms of the caller's {:.1} ms",
                    covered / 1000.0,
                    s.dur / 1000.0
                ));
            }
            return;
        }
        let want_names: Vec<String> = exp.kids.iter().map(|k| self.truth.qual(k.key)).collect();
        if got_names != want_names {
            self.problems.push(format!("{path}: children {got_names:?}, expected {want_names:?}"));
            return;
        }
        for (&c, k) in kids.iter().zip(&exp.kids) {
            self.node(&path, c, k);
        }
    }
}

/// Records timeline_main.py in launch mode and checks everything against its truth.
fn check_timeline(interp: &Interpreter) -> Result<(), String> {
    let work = WorkDir::new(interp)?;
    let out = work.host_path("trace.json");
    let truth_path = work.target_path("truth.json").display().to_string();
    let run = launch(&work, "timeline_main.py", &[truth_path], &out)?;
    if !run.status.success() {
        return Err(format!("vizattach record failed: {}", run.describe()));
    }
    let truth = Truth::load(&work.host_path("truth.json"))?;
    let fixture = work.target_path("timeline_main.py").display().to_string();
    if truth.file != fixture {
        return Err(format!("the fixture ran as {:?}, expected {fixture:?}", truth.file));
    }
    let trace = check_trace(&out, &interp.root, Some(&fixture))?;
    let mut problems = Vec::new();

    // Metadata.
    if trace.meta["python_version"].as_str() != Some(truth.version.as_str()) {
        problems.push(format!(
            "viztracer_metadata.python_version {}, the fixture says {:?}",
            trace.meta["python_version"], truth.version
        ));
    }
    if trace.pid != truth.pid {
        problems.push(format!("process_name pid {}, the fixture's pid is {}", trace.pid, truth.pid));
    }
    let achieved = trace.meta_f64("rate_achieved");
    let lag_us = trace.meta_f64("longest_lag_us");
    eprintln!(
        "     {}: {} samples, {achieved:.0}/s, {} missed ticks, longest lag {:.1} ms, {} slices",
        interp.name,
        trace.meta["samples"],
        trace.meta["missed_ticks"],
        lag_us / 1000.0,
        trace.slices.len()
    );
    if achieved < 0.5 * RATE as f64 {
        problems.push(format!("rate_achieved {achieved:.0}/s for {RATE} requested"));
    }

    // Threads.
    let tree = trace.file_tree(&fixture);
    let tids: BTreeSet<i64> = tree.roots.keys().copied().collect();
    let want_tids: BTreeSet<i64> = [truth.main_tid, truth.worker_tid].into_iter().collect();
    if tids != want_tids {
        problems.push(format!(
            "threads with slices of the fixture: {tids:?}, expected main {} and worker-1 {}",
            truth.main_tid, truth.worker_tid
        ));
    }
    if truth.main_tid != truth.pid {
        problems.push(format!("the fixture's main native id {} is not its pid {}", truth.main_tid, truth.pid));
    }
    for (tid, name) in [(truth.main_tid, "MainThread"), (truth.worker_tid, "worker-1")] {
        if trace.thread_names.get(&tid).map(String::as_str) != Some(name) {
            problems.push(format!("thread_name of tid {tid}: {:?}, expected {name:?}", trace.thread_names.get(&tid)));
        }
    }

    // The trees.
    let main_ts = tree.slices.iter().find(|s| s.tid == truth.main_tid && s.qual == truth.qual("main")).map(|s| s.ts);
    let Some(ref_slice_ts) = main_ts else {
        problems.push(format!("no main() slice on the main thread; its tree:\n{}", tree.render_thread(truth.main_tid)));
        return Err(problems.join("\n"));
    };
    let mut m = Matcher {
        tree: &tree,
        truth: &truth,
        lag_us,
        ref_slice_ts,
        ref_truth_ts: truth.spans.get("main").map(|s| s.0).unwrap_or(0.0),
        problems: Vec::new(),
        checked: 0,
    };
    for (tid, exp, what) in [
        (truth.main_tid, expected_main_thread(), "main thread"),
        (truth.worker_tid, expected_worker_thread(), "worker-1"),
    ] {
        let roots = tree.roots.get(&tid).cloned().unwrap_or_default();
        if roots.len() != 1 {
            m.problems.push(format!(
                "{what} (tid {tid}): {} root slices from the fixture, expected 1 ({})",
                roots.len(),
                exp.key
            ));
            continue;
        }
        let before = m.problems.len();
        m.node(what, roots[0], &exp);
        if m.problems.len() > before {
            m.problems.push(format!("{what}'s slices from the fixture:\n{}", tree.render_thread(tid)));
        }
    }
    // worker-1 lives within with_worker().
    let find = |tid: i64, key: &str| tree.slices.iter().find(|s| s.tid == tid && s.qual == truth.qual(key)).cloned();
    if let (Some(w), Some(body)) = (find(truth.main_tid, "with_worker"), find(truth.worker_tid, "worker_body")) {
        if body.ts < w.ts || body.end() > w.end() {
            m.problems.push(format!(
                "worker_body [{:.1}, {:.1}] ms is not within with_worker [{:.1}, {:.1}] ms",
                body.ts / 1000.0,
                body.end() / 1000.0,
                w.ts / 1000.0,
                w.end() / 1000.0
            ));
        }
    }
    let checked = m.checked;
    problems.extend(m.problems);
    if problems.is_empty() {
        eprintln!("     {}: tree matched, {checked} timings within tolerance", interp.name);
        Ok(())
    } else {
        let _ = fs::copy(&out, failed_trace_path(interp, "timeline"));
        let _ = fs::copy(work.host_path("truth.json"), failed_trace_path(interp, "timeline-truth"));
        Err(format!(
            "{} problems (trace kept at {}):\n{}",
            problems.len(),
            failed_trace_path(interp, "timeline").display(),
            problems.join("\n")
        ))
    }
}

/// Where a failing test leaves its trace for inspection.
fn failed_trace_path(interp: &Interpreter, what: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("record-{what}-{}.json", interp.name))
}

#[test]
fn record_timeline_fixture() {
    let _serial = serial();
    let Some(targets) = record_targets() else {
        return;
    };
    for_each_interpreter(&targets, WORKERS, check_timeline);
}

// ---------------------------------------------------------------------------------------
// Stopping a by-pid capture
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Stop {
    Signal(i32, &'static str),
    KillTarget,
    Duration,
}

/// Attaches by pid to timeline_forever.py, stops the capture `how` after about a
/// second, and checks exit status 0 and a valid trace holding the cycle's slices.
fn check_stop(interp: &Interpreter, how: Stop) -> Result<(), String> {
    let mut target = Target::start(interp, "timeline_forever.py")?;
    let ready = target.wait_json("expected.json", Duration::from_secs(60))?;
    let fixture = target.target_path("timeline_forever.py").display().to_string();
    if ready["file"].as_str() != Some(fixture.as_str()) {
        return Err(format!("the fixture ran as {}, expected {fixture:?}", ready["file"]));
    }
    let out = target.host_path("trace.json");
    let stderr_file = target.host_path("vizattach-stderr.txt");
    let mut viz = match how {
        Stop::Duration => {
            let stderr = fs::File::create(&stderr_file).map_err(|e| e.to_string())?;
            let mut cmd = Command::new(VIZATTACH);
            cmd.args([
                "record",
                "--pid",
                &target.pid.to_string(),
                "--duration",
                "2500ms",
                "--rate",
                &RATE.to_string(),
                "-o",
            ])
            .arg(&out)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
            KillOnDrop(cmd.spawn().map_err(|e| format!("spawn vizattach: {e}"))?)
        }
        _ => start_recording(target.pid, &out, &stderr_file)?,
    };
    let started = Instant::now();
    std::thread::sleep(Duration::from_millis(2500));
    if let Some(s) = viz.exited() {
        if !matches!(how, Stop::Duration) {
            return Err(format!(
                "vizattach exited ({s}) before being stopped: {}",
                fs::read_to_string(&stderr_file).unwrap_or_default()
            ));
        }
    }
    match how {
        Stop::Signal(sig, _) => send_signal(viz.pid(), sig)?,
        Stop::KillTarget => {
            target.kill_and_reap();
        }
        Stop::Duration => {}
    }
    let Some(status) = wait_exit(&mut viz, Duration::from_secs(20)) else {
        return Err(format!("vizattach did not exit within 20 s of being stopped ({how:?})"));
    };
    let elapsed = started.elapsed();
    let stderr = fs::read_to_string(&stderr_file).unwrap_or_default();
    if !status.success() {
        return Err(format!("vizattach exited with {status} after {how:?}; stderr:\n{stderr}"));
    }
    if matches!(how, Stop::Duration) && elapsed > Duration::from_secs(10) {
        return Err(format!("--duration 2500ms took {elapsed:?}"));
    }
    let trace = check_trace(&out, &interp.root, Some(&fixture)).map_err(|e| {
        let _ = fs::copy(&out, failed_trace_path(interp, "stop"));
        format!("{how:?}: {e}\nstderr:\n{stderr}")
    })?;
    let main_tid = ready["main_tid"].as_i64().unwrap_or(0);
    let tree = trace.file_tree(&fixture);
    let count = |q: &str| tree.slices.iter().filter(|s| s.tid == main_tid && s.qual == q).count();
    let (cycles, sleeps, busies) = (count("cycle"), count("step_sleep"), count("step_busy"));
    // ~2.5 s of 150 ms cycles: ~16 of each; be generous for a loaded machine
    if cycles < 8 || sleeps < 8 || busies < 8 {
        return Err(format!(
            "{how:?}: only {cycles} cycle, {sleeps} step_sleep, {busies} step_busy slices on the main thread (tid {main_tid}) in about 2.5 s; stderr:\n{stderr}"
        ));
    }
    // Each cycle() holds its two steps, in order.
    let mut bad = 0;
    let mut bad_ones = Vec::new();
    for (n, s) in tree.slices.iter().enumerate() {
        if s.qual == "cycle" && s.tid == main_tid {
            let kids: Vec<&str> = tree.children[n].iter().map(|&c| tree.slices[c].qual.as_str()).collect();
            // the first and last cycle may be cut by the start or end of the capture
            let cut = s.ts <= tree.slices.iter().map(|s| s.ts).fold(f64::MAX, f64::min) + 1.0
                || s.end() >= tree.slices.iter().map(|s| s.end()).fold(0.0, f64::max) - 1.0;
            if kids != ["step_sleep", "step_busy"] && !cut {
                bad += 1;
                if bad <= 3 {
                    bad_ones.push(format!(
                        "cycle [ts {:.1} ms, dur {:.1} ms] holds {kids:?}",
                        s.ts / 1000.0,
                        s.dur / 1000.0
                    ));
                }
            }
        }
    }
    if bad > 0 {
        let _ = fs::copy(&out, failed_trace_path(interp, "stop"));
        return Err(format!(
            "{how:?}: {bad} cycle() slices do not hold exactly [step_sleep, step_busy] (longest sampler lag {:.1} ms, trace kept at {}):\n{}",
            trace.meta_f64("longest_lag_us") / 1000.0,
            failed_trace_path(interp, "stop").display(),
            bad_ones.join("\n")
        ));
    }
    let what = match how {
        Stop::Signal(_, name) => name,
        Stop::KillTarget => "kill -9 of the target",
        Stop::Duration => "--duration",
    };
    eprintln!("     {}: stopped by {what}: {cycles} cycles recorded", interp.name);
    Ok(())
}

#[test]
fn record_stop_sigint() {
    let _serial = serial();
    let Some(targets) = record_targets() else {
        return;
    };
    for_each_interpreter(&targets, WORKERS, |i| check_stop(i, Stop::Signal(libc::SIGINT, "SIGINT")));
}

#[test]
fn record_stop_sigterm() {
    let _serial = serial();
    let Some(targets) = record_targets() else {
        return;
    };
    for_each_interpreter(&targets, WORKERS, |i| check_stop(i, Stop::Signal(libc::SIGTERM, "SIGTERM")));
}

#[test]
fn record_stop_sighup() {
    let _serial = serial();
    let Some(targets) = record_targets() else {
        return;
    };
    for_each_interpreter(&targets, WORKERS, |i| check_stop(i, Stop::Signal(libc::SIGHUP, "SIGHUP")));
}

#[test]
fn record_stop_target_killed() {
    let _serial = serial();
    let Some(targets) = record_targets() else {
        return;
    };
    for_each_interpreter(&targets, WORKERS, |i| check_stop(i, Stop::KillTarget));
}

#[test]
fn record_stop_duration() {
    let _serial = serial();
    let Some(targets) = record_targets() else {
        return;
    };
    for_each_interpreter(&targets, WORKERS, |i| check_stop(i, Stop::Duration));
}

// ---------------------------------------------------------------------------------------
// Launch mode
// ---------------------------------------------------------------------------------------

/// The program's exit status (3) is vizattach's, and the trace is complete.
#[test]
fn record_launch_exit_status() {
    let _serial = serial();
    let Some(targets) = record_targets() else {
        return;
    };
    for_each_interpreter(&targets, WORKERS, |interp| {
        let work = WorkDir::new(interp)?;
        let out = work.host_path("trace.json");
        let run = launch(&work, "timeline_exit3.py", &[], &out)?;
        if run.status.code() != Some(3) {
            return Err(format!("expected exit status 3 (the program's), got {}", run.describe()));
        }
        let fixture = work.target_path("timeline_exit3.py").display().to_string();
        let trace = check_trace(&out, &interp.root, Some(&fixture))?;
        let tree = trace.file_tree(&fixture);
        match tree.slices.iter().find(|s| s.qual == "main") {
            Some(s) if s.dur >= 80_000.0 => Ok(()),
            Some(s) => Err(format!("main() lasted {:.1} ms in the trace, it sleeps 100 ms", s.dur / 1000.0)),
            None => Err(format!(
                "no main() slice; fixture slices: {:?}",
                tree.slices.iter().map(|s| &s.name).collect::<Vec<_>>()
            )),
        }
    });
}

/// A program that lives about 50 ms is still captured: its main() (or at least its
/// <module>) is in the trace.
#[test]
fn record_launch_short_program() {
    let _serial = serial();
    let Some(targets) = record_targets() else {
        return;
    };
    for_each_interpreter(&targets, WORKERS, |interp| {
        let work = WorkDir::new(interp)?;
        let out = work.host_path("trace.json");
        let run = launch(&work, "timeline_short.py", &[], &out)?;
        if !run.status.success() {
            return Err(format!("vizattach record failed: {}", run.describe()));
        }
        let fixture = work.target_path("timeline_short.py").display().to_string();
        let trace = check_trace(&out, &interp.root, Some(&fixture))?;
        let tree = trace.file_tree(&fixture);
        let names: Vec<&str> = tree.slices.iter().map(|s| s.qual.as_str()).collect();
        if !names.contains(&"main") && !names.contains(&"<module>") {
            return Err(format!("neither main() nor <module> of the fixture in the trace: {names:?}"));
        }
        if let Some(s) = tree.slices.iter().find(|s| s.qual == "main") {
            if s.dur < 35_000.0 {
                return Err(format!("main() lasted {:.1} ms in the trace, it sleeps 50 ms", s.dur / 1000.0));
            }
        }
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------
// vizviewer
// ---------------------------------------------------------------------------------------

/// A venv with viztracer under the target dir, created on first use. Err when pip
/// cannot install it.
fn vizviewer() -> Result<PathBuf, String> {
    let venv = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("viztracer-venv");
    let exe = venv.join("bin/vizviewer");
    if exe.exists() {
        return Ok(exe);
    }
    let python = if Path::new(HOST_PYTHON311).exists() { HOST_PYTHON311 } else { "python3" };
    let _ = fs::remove_dir_all(&venv);
    let mut cmd = Command::new(python);
    cmd.args(["-m", "venv"]).arg(&venv);
    let out = run_with_timeout(cmd, Duration::from_secs(120))?;
    if !out.status.success() {
        return Err(format!("{python} -m venv failed: {}", out.describe()));
    }
    let mut cmd = Command::new(venv.join("bin/pip"));
    cmd.args(["install", "-q", "viztracer"]);
    let out = run_with_timeout(cmd, Duration::from_secs(300))?;
    if !out.status.success() || !exe.exists() {
        return Err(format!("pip install viztracer failed: {}", out.describe()));
    }
    Ok(exe)
}

/// GET http://127.0.0.1:port/path; returns (status code, body).
fn http_get(port: u16, path: &str) -> Result<(u16, Vec<u8>), String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| format!("read {path}: {e}"))?;
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n").ok_or(format!("GET {path}: no HTTP header"))?;
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or(format!("GET {path}: bad status line {head:?}"))?;
    Ok((code, buf[head_end + 4..].to_vec()))
}

#[test]
fn record_trace_opens_in_vizviewer() {
    let _serial = serial();
    let Some(manifest) = load_manifest() else {
        return;
    };
    let Some(interp) = manifest.iter().filter(|i| i.is_supported()).min_by_key(|i| i.in_chroot()).cloned() else {
        missing_prerequisite("no supported interpreter in the manifest");
        return;
    };
    let viewer = match vizviewer() {
        Ok(v) => v,
        Err(e) => {
            missing_prerequisite(&format!("cannot install viztracer: {e}"));
            return;
        }
    };
    let work = WorkDir::new(&interp).unwrap();
    let out = work.host_path("trace.json");
    let truth = work.target_path("truth.json").display().to_string();
    let run = launch(&work, "timeline_main.py", &[truth], &out).unwrap();
    assert!(run.status.success(), "vizattach record failed: {}", run.describe());
    let fixture = work.target_path("timeline_main.py").display().to_string();
    let trace = check_trace(&out, &interp.root, Some(&fixture)).unwrap_or_else(|e| panic!("{e}"));

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let log = work.host_path("vizviewer.log");
    let mut cmd = Command::new(&viewer);
    cmd.args(["--server_only", "--port", &port.to_string()])
        .arg(&out)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&log).unwrap())
        .stderr(fs::File::create(work.host_path("vizviewer.err")).unwrap());
    let mut server = KillOnDrop(cmd.spawn().expect("spawn vizviewer"));
    let deadline = Instant::now() + Duration::from_secs(60);
    let read_logs = || {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            fs::read_to_string(&log).unwrap_or_default(),
            fs::read_to_string(work.host_path("vizviewer.err")).unwrap_or_default()
        )
    };
    loop {
        if let Some(s) = server.exited() {
            panic!("vizviewer exited ({s}) instead of serving {}:\n{}", out.display(), read_logs());
        }
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "vizviewer did not listen on port {port} within 60 s:\n{}", read_logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    // The page, then what its front end asks for: vizviewer_info, the trace itself
    // (localtrace) and file_info (viztracer/viewer.py, PerfettoHandler).
    let (code, body) = http_get(port, "/").unwrap();
    assert_eq!(code, 200, "GET /: {}", String::from_utf8_lossy(&body));
    let (code, _) = http_get(port, "/vizviewer_info").unwrap();
    assert_eq!(code, 200, "GET /vizviewer_info");
    let (code, body) = http_get(port, "/localtrace").unwrap();
    assert_eq!(code, 200, "GET /localtrace");
    assert_eq!(body, fs::read(&out).unwrap(), "/localtrace does not serve the trace file");
    let (code, body) = http_get(port, "/file_info").unwrap();
    assert_eq!(code, 200, "GET /file_info");
    let info: Value = serde_json::from_slice(&body).expect("file_info is JSON");
    let served: BTreeSet<&String> = info["files"].as_object().map(|m| m.keys().collect()).unwrap_or_default();
    assert!(served.contains(&fixture), "vizviewer's file_info lacks the fixture {fixture:?}: {served:?}");
    assert_eq!(served.len(), trace.files.len());
    assert!(server.exited().is_none(), "vizviewer died while serving:\n{}", read_logs());
    let logs = read_logs();
    assert!(
        !logs.contains("Traceback") && !logs.to_lowercase().contains("error"),
        "vizviewer reported an error:\n{logs}"
    );
    drop(server);
}
