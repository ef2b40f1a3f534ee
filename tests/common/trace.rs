//! Reading back a Chrome-JSON trace written by `vizattach record`, and the structural
//! checks every trace must pass (valid JSON, strict nesting per thread, thread names,
//! file_info, metadata).

use super::rooted;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
pub struct Slice {
    /// the whole event name, "qualname (file:first_line)"
    pub name: String,
    pub qual: String,
    pub file: String,
    pub ts: f64,
    pub dur: f64,
    pub tid: i64,
    pub pid: i64,
    /// index of the enclosing slice on the same thread
    pub parent: Option<usize>,
}

impl Slice {
    pub fn end(&self) -> f64 {
        self.ts + self.dur
    }
}

#[derive(Debug)]
pub struct Trace {
    pub slices: Vec<Slice>,
    pub thread_names: BTreeMap<i64, String>,
    pub meta: Value,
    pub files: serde_json::Map<String, Value>,
    pub pid: i64,
    /// every process_name event: pid -> name (one, unless several processes were recorded)
    pub processes: BTreeMap<i64, String>,
}

impl Trace {
    pub fn meta_f64(&self, key: &str) -> f64 {
        self.meta[key].as_f64().unwrap_or(0.0)
    }

    /// Slices from `file` only; each one's parent is its nearest enclosing slice from
    /// `file` (the stdlib frames between, e.g. threading's, are left out).
    pub fn file_tree(&self, file: &str) -> FileTree {
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
pub struct FileTree {
    pub slices: Vec<Slice>,
    pub children: Vec<Vec<usize>>,
    pub roots: BTreeMap<i64, Vec<usize>>,
}

impl FileTree {
    pub fn render(&self, nodes: &[usize], depth: usize, out: &mut String) {
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

    pub fn render_thread(&self, tid: i64) -> String {
        let mut out = String::new();
        self.render(self.roots.get(&tid).map(|v| v.as_slice()).unwrap_or(&[]), 1, &mut out);
        out
    }

    /// timeline_forever.py's `cycle()` slices on thread `tid` that do not hold exactly
    /// [step_sleep, step_busy], described (the first and last, which the start or end
    /// of the capture may cut, excepted), and how many complete ones there are.
    pub fn cycles_not_holding_their_steps(&self, tid: i64) -> (Vec<String>, usize) {
        let first = self.slices.iter().map(|s| s.ts).fold(f64::MAX, f64::min);
        let last = self.slices.iter().map(|s| s.end()).fold(0.0, f64::max);
        let (mut bad, mut complete) = (Vec::new(), 0);
        for (n, s) in self.slices.iter().enumerate() {
            if s.qual != "cycle" || s.tid != tid || s.ts <= first + 1.0 || s.end() >= last - 1.0 {
                continue;
            }
            complete += 1;
            let kids: Vec<&str> = self.children[n].iter().map(|&c| self.slices[c].qual.as_str()).collect();
            if kids != ["step_sleep", "step_busy"] {
                bad.push(format!("cycle [ts {:.1} ms, dur {:.1} ms] holds {kids:?}", s.ts / 1000.0, s.dur / 1000.0));
            }
        }
        (bad, complete)
    }
}

/// "qualname (file:line)" -> (qualname, file, line).
pub fn parse_slice_name(name: &str) -> Option<(String, String, i64)> {
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
pub fn check_trace(path: &Path, root: &Path, required_file: Option<&str>) -> Result<Trace, String> {
    check_trace_of(path, root, required_file, Some(1))
}

/// `check_trace` of a capture of several processes: `processes` process_name events
/// (None: any number), one per pid.
pub fn check_trace_of(
    path: &Path,
    root: &Path,
    required_file: Option<&str>,
    processes: Option<usize>,
) -> Result<Trace, String> {
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
        "asleep_samples",
        "inferred_samples",
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
    let mut process_map = BTreeMap::new();
    for e in events {
        match e["ph"].as_str() {
            Some("M") => {
                let name = e["args"]["name"].as_str();
                match (e["name"].as_str(), name) {
                    (Some("process_name"), Some(n)) => {
                        process_names += 1;
                        pid = pid.or(e["pid"].as_i64());
                        if let Some(old) = process_map.insert(e["pid"].as_i64().unwrap_or(-1), n.to_string()) {
                            problems.push(format!("pid {} named twice: {old:?} and {n:?}", e["pid"]));
                        }
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
                let pid = e["pid"].as_i64().unwrap_or(-1);
                if !process_map.contains_key(&pid) {
                    problems.push(format!("X event of pid {pid} before (or without) its process_name: {e}"));
                }
                slices.push(Slice { name: name.to_string(), qual, file, ts, dur, tid, pid, parent: None });
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
    match processes {
        Some(n) if process_names != n => problems.push(format!("{process_names} process_name events, expected {n}")),
        None if process_names == 0 => problems.push("no process_name event".to_string()),
        _ => {}
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
    Ok(Trace { slices, thread_names, meta, files, pid: pid.unwrap_or(0), processes: process_map })
}
