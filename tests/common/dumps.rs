//! What a dump says and what a fixture recorded about itself, and comparing the two.

use super::*;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub function: String,
    pub file: String,
    pub line: i64,
}

impl std::fmt::Display for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}:{})", self.function, self.file, self.line)
    }
}

#[derive(Clone, Debug)]
pub struct ThreadStack {
    /// null in a dump for a thread state not bound to an OS thread (thread_id 0: not
    /// started yet, or already torn down).
    pub tid: Option<i64>,
    pub thread_id: Option<u64>,
    pub name: Option<String>,
    pub holds_gil: bool,
    pub frames: Vec<Frame>,
}

/// What `vizattach dump --json` printed.
#[derive(Clone, Debug)]
pub struct Dump {
    pub pid: i64,
    pub version: String,
    pub executable: Option<String>,
    pub libpython: Option<String>,
    pub threads: Vec<ThreadStack>,
}

/// What a fixture recorded about itself (the expected.json it wrote).
#[derive(Clone, Debug)]
pub struct Expected {
    pub pid: i64,
    pub version: String,
    pub recorder_tid: i64,
    pub threads: Vec<ThreadStack>,
}

pub fn get<'a>(v: &'a Value, key: &str) -> Result<&'a Value, String> {
    v.get(key).ok_or_else(|| format!("missing {key:?} in {}", truncate(&v.to_string(), 300)))
}
pub fn get_i64(v: &Value, key: &str) -> Result<i64, String> {
    get(v, key)?.as_i64().ok_or_else(|| format!("{key:?} is not an integer"))
}
pub fn get_str(v: &Value, key: &str) -> Result<String, String> {
    Ok(get(v, key)?.as_str().ok_or_else(|| format!("{key:?} is not a string"))?.to_string())
}
pub fn get_opt_str(v: &Value, key: &str) -> Result<Option<String>, String> {
    match get(v, key)? {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        other => Err(format!("{key:?} is neither a string nor null: {other}")),
    }
}

pub fn parse_frames(v: &Value) -> Result<Vec<Frame>, String> {
    get(v, "frames")?
        .as_array()
        .ok_or("\"frames\" is not an array")?
        .iter()
        .map(|f| Ok(Frame { function: get_str(f, "function")?, file: get_str(f, "file")?, line: get_i64(f, "line")? }))
        .collect()
}

impl Dump {
    /// Strictly checks the documented shape while parsing.
    pub fn from_json(v: &Value) -> Result<Dump, String> {
        let python = get(v, "python")?;
        let threads = get(v, "threads")?
            .as_array()
            .ok_or("\"threads\" is not an array")?
            .iter()
            .map(|t| {
                let tid = match get(t, "tid")? {
                    Value::Null => None,
                    v => Some(v.as_i64().ok_or("\"tid\" is neither an integer nor null")?),
                };
                Ok(ThreadStack {
                    tid,
                    thread_id: Some(get(t, "thread_id")?.as_u64().ok_or("\"thread_id\" is not an unsigned integer")?),
                    name: get_opt_str(t, "name")?,
                    holds_gil: get(t, "holds_gil")?.as_bool().ok_or("\"holds_gil\" is not a bool")?,
                    frames: parse_frames(t)?,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Dump {
            pid: get_i64(v, "pid")?,
            version: get_str(python, "version")?,
            executable: get_opt_str(python, "executable")?,
            libpython: get_opt_str(python, "libpython")?,
            threads,
        })
    }

    /// The known tids (threads with a null tid are left out).
    pub fn tids(&self) -> BTreeSet<i64> {
        self.threads.iter().filter_map(|t| t.tid).collect()
    }

    pub fn thread(&self, tid: i64) -> Option<&ThreadStack> {
        self.threads.iter().find(|t| t.tid == Some(tid))
    }

    pub fn gil_holders(&self) -> Vec<Option<i64>> {
        self.threads.iter().filter(|t| t.holds_gil).map(|t| t.tid).collect()
    }
}

impl Expected {
    pub fn from_json(v: &Value) -> Result<Expected, String> {
        let threads = get(v, "threads")?
            .as_array()
            .ok_or("\"threads\" is not an array")?
            .iter()
            .map(|t| {
                Ok(ThreadStack {
                    tid: Some(get_i64(t, "tid")?),
                    thread_id: get(t, "thread_id")?.as_u64(),
                    name: Some(get_str(t, "name")?),
                    holds_gil: false,
                    frames: parse_frames(t)?,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Expected {
            pid: get_i64(v, "pid")?,
            version: get_str(v, "version")?,
            recorder_tid: get_i64(v, "recorder_tid")?,
            threads,
        })
    }

    pub fn tids(&self) -> BTreeSet<i64> {
        self.threads.iter().filter_map(|t| t.tid).collect()
    }
}

/// Most frame mismatches listed per thread before eliding the rest.
pub const MAX_FRAME_DIFFS: usize = 8;

/// Differences between the expected threads and the same tids in `got`, one readable
/// line each ("" when identical). `extra_allowed`: threads in `got` that are not expected
/// are fine (checked elsewhere); otherwise they are differences too.
pub fn diff_threads(expected: &[ThreadStack], got: &[ThreadStack], extra_allowed: bool) -> Vec<String> {
    let mut diffs = Vec::new();
    let got_by_tid: BTreeMap<Option<i64>, &ThreadStack> = got.iter().map(|t| (t.tid, t)).collect();
    for want in expected {
        let label = format!("thread {:?} {:?}", want.tid.unwrap_or(-1), want.name.as_deref().unwrap_or("?"));
        let Some(have) = got_by_tid.get(&want.tid) else {
            diffs.push(format!("{label}: missing from the dump"));
            continue;
        };
        if have.name != want.name {
            diffs.push(format!("{label}: name: expected {:?}, got {:?}", want.name, have.name));
        }
        if let (Some(w), Some(h)) = (want.thread_id, have.thread_id) {
            if w != h {
                diffs.push(format!("{label}: thread_id: expected {w}, got {h}"));
            }
        }
        if have.frames.len() != want.frames.len() {
            diffs.push(format!("{label}: {} frames expected, {} dumped", want.frames.len(), have.frames.len()));
        }
        let mut shown = 0;
        for i in 0..want.frames.len().max(have.frames.len()) {
            let (w, h) = (want.frames.get(i), have.frames.get(i));
            if w == h {
                continue;
            }
            shown += 1;
            if shown > MAX_FRAME_DIFFS {
                diffs.push(format!("{label}: ... more frame differences elided"));
                break;
            }
            let show = |f: Option<&Frame>| f.map_or("<none>".to_string(), |f| f.to_string());
            diffs.push(format!(
                "{label}: frame #{i}: expected {}\n{:>w$}got      {}",
                show(w),
                "",
                show(h),
                w = label.len() + 14
            ));
        }
    }
    if !extra_allowed {
        let want: BTreeSet<Option<i64>> = expected.iter().map(|t| t.tid).collect();
        for t in got.iter().filter(|t| !want.contains(&t.tid)) {
            diffs.push(format!(
                "unexpected thread tid {:?} thread_id {:?} {:?} with {} frames",
                t.tid,
                t.thread_id,
                t.name,
                t.frames.len()
            ));
        }
    }
    diffs
}

/// Internal consistency of any dump: positive tids, no thread listed twice (same tid or
/// same non-zero thread_id), at most one GIL holder.
pub fn dump_sanity(d: &Dump) -> Vec<String> {
    let mut problems = Vec::new();
    let mut tids = BTreeSet::new();
    let mut idents = BTreeSet::new();
    for t in &d.threads {
        if let Some(tid) = t.tid {
            if tid <= 0 {
                problems.push(format!("thread {:?} (thread_id {:?}) has impossible tid {tid}", t.name, t.thread_id));
            } else if !tids.insert(tid) {
                problems.push(format!("tid {tid} listed twice ({:?})", t.name));
            }
        }
        if let Some(ident) = t.thread_id.filter(|&i| i != 0) {
            if !idents.insert(ident) {
                problems.push(format!("thread_id {ident} listed twice ({:?})", t.name));
            }
        }
    }
    let holders = d.gil_holders();
    if holders.len() > 1 {
        problems.push(format!("{} threads claim to hold the GIL: {holders:?}", holders.len()));
    }
    problems
}

/// The full comparison for a settled fixture: pid, version, the exact threads and frames,
/// and at most one GIL holder.
pub fn check_dump(expected: &Expected, got: &Dump) -> Result<(), String> {
    let mut diffs = Vec::new();
    if got.pid != expected.pid {
        diffs.push(format!("pid: expected {}, got {}", expected.pid, got.pid));
    }
    if got.version != expected.version {
        diffs.push(format!("python.version: expected {:?}, got {:?}", expected.version, got.version));
    }
    diffs.extend(dump_sanity(got));
    diffs.extend(diff_threads(&expected.threads, &got.threads, false));
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(format!("{} differences:\n{}", diffs.len(), diffs.join("\n")))
    }
}
