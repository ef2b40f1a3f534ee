//! `vizattach record` of a fixture with a known call tree (launch mode), compared with
//! what the fixture measured about itself: every call of its expected tree with
//! time.monotonic (CLOCK_MONOTONIC, the clock vizattach stamps samples with), so
//! durations and start offsets are compared with what really happened, within 3 sample
//! intervals + 15 % + the longest sampler lag vizattach reports.
//!
//!     cargo test --release --test record_timeline -- --nocapture

mod common;

use common::recording::*;
use common::trace::*;
use common::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

// ---------------------------------------------------------------------------------------
// The timeline fixture and its expected tree
// ---------------------------------------------------------------------------------------

/// One expected call: the fixture's function key (see INFO["functions"] in
/// timeline_main.py), the fixture's timing label if it measured this call, and its
/// children in order. `burst`: instead of exact children, n calls of one function made
/// back to back from one line, with nothing in the callee to tell them apart: the
/// caller's loop variable, which changes between them, must (src/timeline.rs).
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
        if let Some((key, n)) = exp.burst {
            let qual = self.truth.qual(key);
            if kids.len() != n || got_names.iter().any(|k| *k != qual) {
                self.problems.push(format!(
                    "{path}: expected {n} slices of {qual} (calls back to back from one line), got {got_names:?}"
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

#[test]
fn record_timeline_fixture() {
    let _serial = serial();
    let Some(targets) = record_targets() else {
        return;
    };
    for_each_interpreter(&targets, WORKERS, check_timeline);
}
