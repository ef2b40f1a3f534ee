//! Chrome Trace Event JSON in VizTracer's shape: complete ("X") events streamed as slices
//! close, thread and process names as metadata ("M") events, then viztracer_metadata and
//! file_info (the source of every file named, so vizviewer can show it).

use super::{CaptureInfo, Sink};
use crate::activity::Activity;
use crate::python::code::CodeInfo;
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::PathBuf;

/// Per-file and total caps on embedded source, so a capture of a huge program stays sane.
const MAX_SOURCE_FILE: u64 = 8 << 20;
const MAX_SOURCE_TOTAL: usize = 128 << 20;

pub struct ChromeJson {
    out: Box<dyn Write + Send>,
    /// the process events are written for now (Sink::process), and each one's name as
    /// last written
    pid: i32,
    processes: std::collections::HashMap<i32, String>,
    /// the target's root (/proc/PID/root): its files are read through it
    root: PathBuf,
    /// JSON-escaped slice name per code id, built once
    names: Vec<Option<String>>,
    files: BTreeMap<String, Option<(String, usize)>>,
    functions: BTreeMap<String, (String, i32)>,
    source_bytes: usize,
    written: u64,
    /// Closes of one thread at one instant, innermost first as they arrive. They are written
    /// outermost first: viewers (Perfetto's JSON importer among them) nest complete events
    /// with the same start and duration in file order, so a parent must precede a child that
    /// spans exactly the same interval.
    pending: Vec<String>,
    pending_at: (i32, u64),
    /// written events' buffers, for the next closes: a slice costs no allocation
    spare: Vec<String>,
    /// per thread: the activity last written as a counter event, and its last sample
    activity: std::collections::HashMap<i32, (Activity, u64)>,
}

impl ChromeJson {
    pub fn new(mut out: Box<dyn Write + Send>, pid: i32, root: PathBuf, process_name: &str) -> io::Result<ChromeJson> {
        let head = format!("{{\"traceEvents\":[\n{}", process_event(pid, process_name));
        out.write_all(head.as_bytes())?;
        Ok(ChromeJson {
            out,
            pid,
            processes: [(pid, process_name.to_string())].into_iter().collect(),
            root,
            names: Vec::new(),
            files: BTreeMap::new(),
            functions: BTreeMap::new(),
            source_bytes: 0,
            written: head.len() as u64,
            pending: Vec::new(),
            pending_at: (0, 0),
            spare: Vec::new(),
            activity: std::collections::HashMap::new(),
        })
    }

    fn name(&mut self, code: &CodeInfo) -> &str {
        let i = code.id as usize;
        if self.names.len() <= i {
            self.names.resize(i + 1, None);
        }
        if self.names[i].is_none() {
            let name = slice_name(code);
            self.functions.insert(name.clone(), (code.filename.clone(), code.first_line));
            self.note_file(&code.filename);
            self.names[i] = Some(serde_json::to_string(&name).unwrap_or_default());
        }
        self.names[i].as_deref().unwrap_or("\"?\"")
    }

    fn note_file(&mut self, file: &str) {
        if !self.files.contains_key(file) {
            let src = self.read_source(file);
            self.files.insert(file.to_string(), src);
        }
    }

    /// Read now, while the target lives: at the end of capture its root may be gone.
    fn read_source(&mut self, file: &str) -> Option<(String, usize)> {
        if !file.starts_with('/') || self.source_bytes > MAX_SOURCE_TOTAL {
            return None;
        }
        let path = self.root.join(file.trim_start_matches('/'));
        let meta = std::fs::metadata(&path).ok()?;
        if meta.len() > MAX_SOURCE_FILE {
            return None;
        }
        let text = std::fs::read_to_string(&path).ok()?;
        self.source_bytes += text.len();
        let lines = text.lines().count();
        Some((text, lines))
    }

    fn flush_pending(&mut self) -> io::Result<()> {
        while let Some(e) = self.pending.pop() {
            self.event(&e)?;
            self.spare.push(e);
        }
        Ok(())
    }

    fn event(&mut self, s: &str) -> io::Result<()> {
        self.out.write_all(b",\n")?;
        self.out.write_all(s.as_bytes())?;
        self.written += s.len() as u64 + 2;
        Ok(())
    }
}

fn process_event(pid: i32, name: &str) -> String {
    format!(
        "{{\"ph\":\"M\",\"pid\":{pid},\"tid\":{pid},\"name\":\"process_name\",\"args\":{{\"name\":{}}}}}",
        serde_json::to_string(name).unwrap_or_default()
    )
}

/// VizTracer's convention: "qualname (file:first_line)".
pub fn slice_name(code: &CodeInfo) -> String {
    format!("{} ({}:{})", code.name, code.filename, code.first_line)
}

/// Nanoseconds written as microseconds with three decimals, formatted in place.
struct Us(u64);

impl std::fmt::Display for Us {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{:03}", self.0 / 1000, self.0 % 1000)
    }
}

impl Sink for ChromeJson {
    fn process(&mut self, pid: i32, name: &str) -> io::Result<()> {
        // (pending closes carry their own pid: only their order is pending)
        self.flush_pending()?;
        self.pid = pid;
        if self.processes.get(&pid).map(String::as_str) != Some(name) {
            self.processes.insert(pid, name.to_string());
            self.event(&process_event(pid, name))?;
        }
        Ok(())
    }

    fn code(&mut self, code: &CodeInfo) -> io::Result<()> {
        self.note_file(&code.filename);
        Ok(())
    }

    fn thread(&mut self, tid: i32, name: &str) -> io::Result<()> {
        let e = format!(
            "{{\"ph\":\"M\",\"pid\":{},\"tid\":{tid},\"name\":\"thread_name\",\"args\":{{\"name\":{}}}}}",
            self.pid,
            serde_json::to_string(name).unwrap_or_default()
        );
        self.flush_pending()?;
        self.event(&e)
    }

    /// A counter event "activity TID" (args on_cpu, holds_gil: 1 or 0) whenever it
    /// changes, halfway between the samples that differ, like slice boundaries.
    fn activity(&mut self, tid: i32, time_ns: u64, activity: Activity) -> io::Result<()> {
        let previous = self.activity.insert(tid, (activity, time_ns));
        let at = match previous {
            Some((a, _)) if a == activity => return Ok(()),
            Some((_, last)) => last + time_ns.saturating_sub(last) / 2,
            None => time_ns,
        };
        let mut args = Vec::new();
        if let Some(c) = activity.on_cpu() {
            args.push(format!("\"on_cpu\":{}", c as u8));
        }
        if let Some(g) = activity.holds_gil() {
            args.push(format!("\"holds_gil\":{}", g as u8));
        }
        if args.is_empty() {
            return Ok(());
        }
        let e = format!(
            "{{\"ph\":\"C\",\"name\":\"activity {tid}\",\"ts\":{},\"pid\":{},\"tid\":{tid},\"args\":{{{}}}}}",
            Us(at),
            self.pid,
            args.join(",")
        );
        self.flush_pending()?;
        self.event(&e)
    }

    fn close(&mut self, tid: i32, code: &CodeInfo, start_ns: u64, end_ns: u64) -> io::Result<()> {
        use std::fmt::Write as _;
        let pid = self.pid;
        let mut e = self.spare.pop().unwrap_or_default();
        e.clear();
        let _ = write!(
            e,
            "{{\"ph\":\"X\",\"name\":{},\"ts\":{},\"dur\":{},\"pid\":{pid},\"tid\":{tid},\"cat\":\"python\"}}",
            self.name(code),
            Us(start_ns),
            Us(end_ns - start_ns)
        );
        if self.pending_at != (tid, end_ns) {
            self.flush_pending()?;
            self.pending_at = (tid, end_ns);
        }
        self.pending.push(e);
        Ok(())
    }

    /// Pushes the buffer to the file. Closes of the current instant stay pending: their
    /// order is not settled yet. (After a kill the journal rebuilds the file, journal.rs.)
    fn checkpoint(&mut self, _info: &CaptureInfo, _last_ns: u64) -> io::Result<()> {
        self.out.flush()
    }

    fn finish(&mut self, info: &CaptureInfo) -> io::Result<u64> {
        self.flush_pending()?;
        let mut meta = serde_json::to_value(info).unwrap_or_default();
        if let Some(m) = meta.as_object_mut() {
            m.insert("version".into(), format!("vizattach {}", info.vizattach_version).into());
            m.insert("overflow".into(), false.into());
        }
        let files: serde_json::Map<String, serde_json::Value> = self
            .files
            .iter()
            .filter_map(|(f, s)| s.as_ref().map(|(text, n)| (f.clone(), serde_json::json!([text, n]))))
            .collect();
        let tail = format!(
            "\n],\n\"displayTimeUnit\":\"ns\",\n\"viztracer_metadata\":{},\n\"file_info\":{}}}\n",
            meta,
            serde_json::json!({ "files": files, "functions": self.functions })
        );
        self.out.write_all(tail.as_bytes())?;
        self.out.flush()?;
        self.written += tail.len() as u64;
        Ok(self.written)
    }
}
