//! pprof output read back by Go's own reader: one capture written as .pb.gz and as
//! collapsed stacks, `go tool pprof -raw` and `-top` on the .pb.gz, compared with the
//! collapsed counts sample for sample; line numbers checked against the fixture's own.
//! `go` comes from Debian's golang-go (scripts/test.sh installs it).

mod common;

use common::*;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The `go` binary: on PATH, or where Debian's golang-go puts it.
fn go() -> Option<PathBuf> {
    let candidates = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("go")).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(fs::read_dir("/usr/lib").ok().into_iter().flatten().flatten().filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with("go").then(|| e.path().join("bin/go"))
        }));
    for c in candidates {
        if c.is_file() {
            return Some(c);
        }
    }
    missing_prerequisite("no `go` (Debian: apt-get install golang-go; scripts/test.sh does it)");
    None
}

fn go_pprof(go: &Path, args: &[&str], file: &Path) -> Result<String, String> {
    let mut cmd = Command::new(go);
    cmd.args(["tool", "pprof"]).args(args).arg(file);
    // a writable cache for go, whatever HOME is
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("go-cache");
    cmd.env("GOCACHE", &cache).env("HOME", env!("CARGO_TARGET_TMPDIR"));
    let out = run_with_timeout(cmd, Duration::from_secs(120))?;
    if !out.status.success() {
        return Err(format!("go tool pprof {args:?} failed: {}", out.describe()));
    }
    Ok(out.stdout)
}

/// One sample as `go tool pprof -raw` prints it.
#[derive(Debug)]
struct RawSample {
    values: Vec<i64>,
    locations: Vec<u64>,
    labels: BTreeMap<String, String>,
}

/// A location: function name, file, line, function's first line.
#[derive(Debug, Clone)]
struct RawLocation {
    name: String,
    file: String,
    line: i64,
    start_line: i64,
}

struct Raw {
    sample_types: Vec<String>,
    samples: Vec<RawSample>,
    locations: HashMap<u64, RawLocation>,
    period: i64,
}

/// `key:[value] key:[value]` pairs on one label line.
fn labels_of(line: &str, into: &mut BTreeMap<String, String>) -> Result<(), String> {
    let mut rest = line.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once(":[").ok_or(format!("bad label line {line:?}"))?;
        let (value, after) = after.split_once(']').ok_or(format!("bad label line {line:?}"))?;
        into.insert(key.trim().to_string(), value.to_string());
        rest = after.trim_start();
    }
    Ok(())
}

/// Parses `go tool pprof -raw` output (the text form of every sample and location).
fn parse_raw(text: &str) -> Result<Raw, String> {
    let mut raw = Raw { sample_types: Vec::new(), samples: Vec::new(), locations: HashMap::new(), period: 0 };
    let mut section = "";
    for line in text.lines() {
        match line.trim_end() {
            "Samples:" => {
                section = "types";
                continue;
            }
            "Locations" => {
                section = "locations";
                continue;
            }
            "Mappings" => {
                section = "mappings";
                continue;
            }
            _ => {}
        }
        if let Some(p) = line.strip_prefix("Period: ") {
            raw.period = p.trim().parse().map_err(|_| format!("bad period {line:?}"))?;
        }
        match section {
            "types" => {
                raw.sample_types = line.split_whitespace().map(|t| t.trim_end_matches("[dflt]").to_string()).collect();
                section = "samples";
            }
            "samples" => {
                if let Some((values, locs)) = line.split_once(':').filter(|(v, _)| {
                    let v = v.trim();
                    !v.is_empty() && v.split_whitespace().all(|n| n.parse::<i64>().is_ok())
                }) {
                    raw.samples.push(RawSample {
                        values: values.split_whitespace().map(|n| n.parse().unwrap()).collect(),
                        locations: locs
                            .split_whitespace()
                            .map(|n| n.parse().map_err(|_| format!("bad location id in {line:?}")))
                            .collect::<Result<_, _>>()?,
                        labels: BTreeMap::new(),
                    });
                } else if !line.trim().is_empty() {
                    let s = raw.samples.last_mut().ok_or(format!("label before any sample: {line:?}"))?;
                    labels_of(line, &mut s.labels)?;
                }
            }
            "locations" if !line.trim().is_empty() => {
                // "     1: 0x0 M=1 name /path/file.py:12 s=10"
                let (id, rest) = line.trim().split_once(": ").ok_or(format!("bad location {line:?}"))?;
                let id: u64 = id.parse().map_err(|_| format!("bad location {line:?}"))?;
                let mut words = rest.splitn(3, ' ');
                let (_addr, _mapping) = (words.next(), words.next());
                let rest = words.next().ok_or(format!("bad location {line:?}"))?;
                let (rest, start) = rest.rsplit_once(" s=").ok_or(format!("no s= in {line:?}"))?;
                let (name, file_line) = rest.split_once(' ').ok_or(format!("bad location {line:?}"))?;
                let (file, l) = file_line.rsplit_once(':').ok_or(format!("bad location {line:?}"))?;
                raw.locations.insert(
                    id,
                    RawLocation {
                        name: name.to_string(),
                        file: file.to_string(),
                        line: l.parse().map_err(|_| format!("bad line in {line:?}"))?,
                        // "s=10", or "s=10(system name)": our functions have none, "()"
                        start_line: start
                            .split('(')
                            .next()
                            .unwrap_or("")
                            .trim()
                            .parse()
                            .map_err(|_| format!("bad s= in {line:?}"))?,
                    },
                );
            }
            _ => {}
        }
    }
    Ok(raw)
}

/// Collapsed stacks: (thread label, frames root first) -> count.
fn read_collapsed(path: &Path) -> Result<BTreeMap<(String, Vec<String>), i64>, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let (stack, count) = line.rsplit_once(' ').ok_or(format!("bad line {line:?}"))?;
        let mut parts = stack.split(';');
        let thread = parts.next().unwrap_or("").to_string();
        *out.entry((thread, parts.map(String::from).collect())).or_insert(0) +=
            count.parse::<i64>().map_err(|_| format!("bad count in {line:?}"))?;
    }
    Ok(out)
}

/// One interpreter per line-table family where the manifest has it: 3.9 (lnotab), 3.10
/// (the 3.10 table), 3.11 on the host and 3.15 (location tables).
fn pprof_targets() -> Option<Vec<Interpreter>> {
    let all = load_manifest()?;
    let mut chosen = Vec::new();
    for minor in ["3.9", "3.10", "3.11", "3.15"] {
        let pick = all
            .iter()
            .filter(|i| i.minor_version() == minor && !i.name.ends_with("-dbg"))
            .min_by_key(|i| (i.name != "host-python3.11", i.delete_executable));
        match pick {
            Some(i) => chosen.push(i.clone()),
            None if minor == "3.10" => {} // only where a pyenv build exists
            None => missing_prerequisite(&format!("no {minor} interpreter in the manifest")),
        }
    }
    Some(chosen)
}

fn one_capture(interp: &Interpreter, go: &Path) -> Result<(), String> {
    let work = WorkDir::new(interp)?;
    let truth_path = work.target_path("truth.json").display().to_string();
    let (pb, collapsed) = (work.host_path("cap.pb.gz"), work.host_path("cap.collapsed"));
    let mut cmd = Command::new(VIZATTACH);
    cmd.args(["record", "-q", "--rate", "500", "-o"]).arg(&pb).arg("-o").arg(&collapsed);
    cmd.arg("--").args(work.command_line("pprof_work.py", &[truth_path, "1.5".into()]));
    let out = run_with_timeout(cmd, Duration::from_secs(120))?;
    if !out.status.success() {
        return Err(format!("vizattach record failed: {}", out.describe()));
    }
    let truth: Value =
        serde_json::from_str(&fs::read_to_string(work.host_path("truth.json")).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    let bytes = fs::read(&pb).map_err(|e| e.to_string())?;
    if bytes.get(..2) != Some(&[0x1f, 0x8b]) {
        return Err("cap.pb.gz is not gzipped".into());
    }

    let raw = parse_raw(&go_pprof(go, &["-raw"], &pb)?)?;
    if raw.sample_types != ["samples/count", "wall/nanoseconds", "cpu/nanoseconds"] {
        return Err(format!("sample types {:?}", raw.sample_types));
    }
    // pprof's stacks, turned into collapsed lines: thread label, then frames root first,
    // each named `qualname (file:first_line)`.
    let mut from_pprof: BTreeMap<(String, Vec<String>), i64> = BTreeMap::new();
    let pid = truth["pid"].as_i64().ok_or("truth without pid")?;
    for s in &raw.samples {
        let (name, tid) = (s.labels.get("thread_name"), s.labels.get("thread_id"));
        let (Some(name), Some(tid)) = (name, tid) else {
            return Err(format!("sample without thread labels: {s:?}"));
        };
        if s.labels.get("pid").map(String::as_str) != Some(&pid.to_string()) {
            return Err(format!("sample's pid label is not {pid}: {s:?}"));
        }
        if s.values.len() != 3 || s.values[1] != s.values[0] * raw.period {
            return Err(format!("wall/nanoseconds is not samples x period ({}): {s:?}", raw.period));
        }
        if s.values[2] % raw.period.max(1) != 0 || s.values[2] > s.values[1] {
            return Err(format!("cpu/nanoseconds is not a share of wall in whole periods: {s:?}"));
        }
        let mut frames = Vec::new();
        for id in s.locations.iter().rev() {
            let l = raw.locations.get(id).ok_or(format!("sample names location {id}, not listed"))?;
            frames.push(format!("{} ({}:{})", l.name, l.file, l.start_line));
        }
        *from_pprof.entry((format!("{name} (tid {tid})"), frames)).or_insert(0) += s.values[0];
    }
    let want = read_collapsed(&collapsed)?;
    if from_pprof != want {
        let only_p: Vec<_> = from_pprof.iter().filter(|(k, v)| want.get(*k) != Some(v)).take(4).collect();
        let only_c: Vec<_> = want.iter().filter(|(k, v)| from_pprof.get(*k) != Some(v)).take(4).collect();
        return Err(format!("pprof and collapsed differ:\n  pprof {only_p:?}\n  collapsed {only_c:?}"));
    }
    let total: i64 = want.values().sum();
    let worker = format!("pprof-worker (tid {})", truth["worker_tid"]);
    if total < 100 || !want.keys().any(|(t, _)| *t == worker) {
        return Err(format!("{total} samples, threads {:?}", want.keys().map(|k| &k.0).collect::<Vec<_>>()));
    }

    // Lines: busy_leaf's samples point into it, nearly all at its loop (the `for` line
    // and the body alternate; nothing else in it runs long), middle's at its call.
    let lines = &truth["lines"];
    let (busy, middle) = (lines["busy"].as_i64().ok_or("no busy line")?, lines["middle"].as_i64().ok_or("no middle")?);
    let mut busy_lines: BTreeMap<i64, i64> = BTreeMap::new();
    for s in &raw.samples {
        for (depth, id) in s.locations.iter().enumerate() {
            let l = &raw.locations[id];
            if l.name == "busy_leaf" && depth == 0 {
                *busy_lines.entry(l.line).or_insert(0) += s.values[0];
            }
            if l.name == "middle" && l.line != middle {
                return Err(format!("middle is sampled at line {}, it calls busy_leaf at {middle}", l.line));
            }
        }
    }
    let in_loop: i64 = busy_lines.range(busy - 1..=busy).map(|(_, n)| n).sum();
    let all_busy: i64 = busy_lines.values().sum();
    if all_busy == 0 || in_loop * 10 < all_busy * 9 {
        return Err(format!("busy_leaf's lines {busy_lines:?}; its loop is at {}-{busy}", busy - 1));
    }

    // -top: each function's flat count is the collapsed leaf count of that name.
    let mut leaf: BTreeMap<String, i64> = BTreeMap::new();
    for ((_, frames), n) in &want {
        let name = frames.last().and_then(|f| f.split(" (").next()).unwrap_or("").to_string();
        *leaf.entry(name).or_insert(0) += n;
    }
    let top = go_pprof(go, &["-top", "-nodecount=100000", "-nodefraction=0", "-edgefraction=0"], &pb)?;
    if !top.contains(&format!("Total samples = {total}")) && !top.contains(&format!("of {total} total")) {
        return Err(format!("-top does not show {total} samples:\n{top}"));
    }
    let mut flat: BTreeMap<String, i64> = BTreeMap::new();
    for line in top.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        if w.len() >= 6 && w[1].ends_with('%') && w[2].ends_with('%') {
            if let Ok(n) = w[0].parse::<i64>() {
                flat.insert(w[5..].join(" "), n);
            }
        }
    }
    leaf.retain(|_, n| *n > 0);
    flat.retain(|_, n| *n > 0);
    if flat != leaf {
        return Err(format!("-top flat counts {flat:?}, collapsed leaves {leaf:?}\n{top}"));
    }
    eprintln!("  {}: {total} samples, {} distinct stacks; -top:\n{top}", interp.name, want.len());
    Ok(())
}

#[test]
fn pprof_reads_back_in_go_tool_pprof_as_the_collapsed_counts() {
    let Some(go) = go() else { return };
    let Some(targets) = pprof_targets() else { return };
    for_each_interpreter(&targets, 2, |i| one_capture(i, &go));
}

#[test]
fn pprof_format_by_name_and_extension() {
    use vizattach::output::Format;
    assert_eq!(Format::from_path(Path::new("a.pb.gz")), Some((Format::Pprof, true)));
    assert_eq!(Format::from_path(Path::new("a.pprof")), Some((Format::Pprof, false)));
    assert_eq!(Format::from_name("pprof"), Some(Format::Pprof));
}
