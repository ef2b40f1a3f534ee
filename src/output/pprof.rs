//! pprof: Google's profile.proto, gzip-compressed, the format `go tool pprof` reads and
//! continuous profilers (Pyroscope, Parca, Grafana) ingest.
//!
//! Samples are counted per distinct (thread, stack of code and line) and written once at
//! the end, like the collapsed writer: a long capture costs memory per distinct stack,
//! not per sample. Each frame is a Location (function + current line; the call site for
//! callers), each code object a Function (qualname, file, first line); the thread is in
//! labels (`thread_name`, `thread_id`, `pid`), not in the stack, which is how pprof
//! tools filter and group by thread (`-tagfocus`, `-tags`).
//!
//! Values per sample: `samples/count`, and `wall/nanoseconds` (each sample weighs the
//! capture's mean tick interval: duration / ticks, so a capture that fell behind still
//! adds up to its real length), and `cpu/nanoseconds` when the thread's CPU state was
//! read (src/activity.rs): the same weight for samples taken while it was on CPU, 0 for
//! the others; a sampled estimate of CPU time, exact to within a tick per state change.

use super::{CaptureInfo, Sink};
use crate::activity::Activity;
use crate::python::code::CodeInfo;
use crate::sampler::StackFrame;
use crate::timeline::CodeTable;
use flate2::write::GzEncoder;
use std::collections::HashMap;
use std::io::{self, Write};

/// The messages of profile.proto we write (field numbers of google/pprof's
/// proto/profile.proto), derived with prost by hand as for Perfetto. Public so tests can
/// decode what was written.
pub mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Profile {
        #[prost(message, repeated, tag = "1")]
        pub sample_type: Vec<ValueType>,
        #[prost(message, repeated, tag = "2")]
        pub sample: Vec<Sample>,
        #[prost(message, repeated, tag = "3")]
        pub mapping: Vec<Mapping>,
        #[prost(message, repeated, tag = "4")]
        pub location: Vec<Location>,
        #[prost(message, repeated, tag = "5")]
        pub function: Vec<Function>,
        #[prost(string, repeated, tag = "6")]
        pub string_table: Vec<String>,
        #[prost(int64, tag = "9")]
        pub time_nanos: i64,
        #[prost(int64, tag = "10")]
        pub duration_nanos: i64,
        #[prost(message, optional, tag = "11")]
        pub period_type: Option<ValueType>,
        #[prost(int64, tag = "12")]
        pub period: i64,
        #[prost(int64, repeated, tag = "13")]
        pub comment: Vec<i64>,
        #[prost(int64, tag = "14")]
        pub default_sample_type: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ValueType {
        #[prost(int64, tag = "1")]
        pub r#type: i64,
        #[prost(int64, tag = "2")]
        pub unit: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sample {
        /// leaf first
        #[prost(uint64, repeated, tag = "1")]
        pub location_id: Vec<u64>,
        #[prost(int64, repeated, tag = "2")]
        pub value: Vec<i64>,
        #[prost(message, repeated, tag = "3")]
        pub label: Vec<Label>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Label {
        #[prost(int64, tag = "1")]
        pub key: i64,
        #[prost(int64, tag = "2")]
        pub str: i64,
        #[prost(int64, tag = "3")]
        pub num: i64,
        #[prost(int64, tag = "4")]
        pub num_unit: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Mapping {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(int64, tag = "5")]
        pub filename: i64,
        #[prost(bool, tag = "7")]
        pub has_functions: bool,
        #[prost(bool, tag = "8")]
        pub has_filenames: bool,
        #[prost(bool, tag = "9")]
        pub has_line_numbers: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Location {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(uint64, tag = "2")]
        pub mapping_id: u64,
        #[prost(message, repeated, tag = "4")]
        pub line: Vec<Line>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Line {
        #[prost(uint64, tag = "1")]
        pub function_id: u64,
        #[prost(int64, tag = "2")]
        pub line: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Function {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(int64, tag = "2")]
        pub name: i64,
        #[prost(int64, tag = "3")]
        pub system_name: i64,
        #[prost(int64, tag = "4")]
        pub filename: i64,
        #[prost(int64, tag = "5")]
        pub start_line: i64,
    }
}

/// Counted values of one distinct (thread, stack).
#[derive(Default, Clone, Copy)]
struct Counted {
    samples: i64,
    on_cpu: i64,
}

/// Strings by index, index 0 the empty string (profile.proto requires it).
#[derive(Default)]
struct Strings {
    table: Vec<String>,
    index: HashMap<String, i64>,
}

impl Strings {
    fn id(&mut self, s: &str) -> i64 {
        if self.table.is_empty() {
            self.table.push(String::new());
            self.index.insert(String::new(), 0);
        }
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = self.table.len() as i64;
        self.table.push(s.to_string());
        self.index.insert(s.to_string(), i);
        i
    }
}

pub struct Pprof {
    out: Box<dyn Write + Send>,
    pid: i32,
    process_name: String,
    /// wall-clock time when the capture started (profile.proto's time_nanos is UTC)
    started: std::time::SystemTime,
    threads: HashMap<i32, String>,
    owners: super::Owners,
    /// one function per distinct (name, file, first line); ids from 1
    function_of_code: HashMap<u32, u64>,
    function_ids: HashMap<(String, String, i32), u64>,
    functions: Vec<(String, String, i32)>,
    /// one location per (function, line); ids from 1
    location_ids: HashMap<(u64, i32), u64>,
    locations: Vec<(u64, i32)>,
    counts: HashMap<(i32, Vec<u64>), Counted>,
    /// scratch: one sample's location ids, leaf first
    stack: Vec<u64>,
    /// the activity announced with the sample that comes next, and whether any sample
    /// had a known CPU state (then cpu/nanoseconds is written)
    activity: Activity,
    cpu_known: bool,
}

impl Pprof {
    pub fn new(out: Box<dyn Write + Send>, pid: i32, process_name: &str) -> Pprof {
        Pprof {
            out,
            pid,
            process_name: process_name.to_string(),
            started: std::time::SystemTime::now(),
            threads: HashMap::new(),
            owners: super::Owners::default(),
            function_of_code: HashMap::new(),
            function_ids: HashMap::new(),
            functions: Vec::new(),
            location_ids: HashMap::new(),
            locations: Vec::new(),
            counts: HashMap::new(),
            stack: Vec::new(),
            activity: Activity::default(),
            cpu_known: false,
        }
    }

    fn function(&mut self, code: &CodeInfo) -> u64 {
        if let Some(&f) = self.function_of_code.get(&code.id) {
            return f;
        }
        let key = (code.name.clone(), code.filename.clone(), code.first_line);
        let next = self.functions.len() as u64 + 1;
        let f = *self.function_ids.entry(key.clone()).or_insert(next);
        if f == next {
            self.functions.push(key);
        }
        self.function_of_code.insert(code.id, f);
        f
    }

    fn location(&mut self, function: u64, line: i32) -> u64 {
        let next = self.locations.len() as u64 + 1;
        let l = *self.location_ids.entry((function, line)).or_insert(next);
        if l == next {
            self.locations.push((function, line));
        }
        l
    }

    /// The whole profile, from what was counted.
    fn profile(&self, info: &CaptureInfo) -> proto::Profile {
        use proto::*;
        let mut s = Strings::default();
        s.id("");
        let samples = ValueType { r#type: s.id("samples"), unit: s.id("count") };
        let wall = ValueType { r#type: s.id("wall"), unit: s.id("nanoseconds") };
        let cpu = self.cpu_known.then(|| ValueType { r#type: s.id("cpu"), unit: s.id("nanoseconds") });
        // Every tick samples every thread once: a sample stands for one tick interval.
        let interval_ns =
            if info.samples > 0 { (info.duration_s * 1e9 / info.samples as f64).round() as i64 } else { 0 };
        let function = self
            .functions
            .iter()
            .enumerate()
            .map(|(i, (name, file, line))| {
                let name = s.id(name);
                Function { id: i as u64 + 1, name, system_name: 0, filename: s.id(file), start_line: *line as i64 }
            })
            .collect();
        let location = self
            .locations
            .iter()
            .enumerate()
            .map(|(i, &(function_id, line))| Location {
                id: i as u64 + 1,
                mapping_id: 1,
                line: vec![Line { function_id, line: line as i64 }],
            })
            .collect();
        let (k_name, k_tid, k_pid) = (s.id("thread_name"), s.id("thread_id"), s.id("pid"));
        let mut keys: Vec<&(i32, Vec<u64>)> = self.counts.keys().collect();
        keys.sort(); // the same capture gives the same file
        let mut sample = Vec::with_capacity(keys.len());
        for key in keys {
            let (tid, stack) = key;
            let c = self.counts[key];
            let name = self.threads.get(tid).cloned().unwrap_or_else(|| format!("thread {tid}"));
            sample.push(Sample {
                location_id: stack.clone(),
                value: if cpu.is_some() {
                    vec![c.samples, c.samples * interval_ns, c.on_cpu * interval_ns]
                } else {
                    vec![c.samples, c.samples * interval_ns]
                },
                label: vec![
                    Label { key: k_name, str: s.id(&name), ..Default::default() },
                    Label { key: k_tid, num: *tid as i64, ..Default::default() },
                    Label {
                        key: k_pid,
                        num: self.owners.pid_of(*tid).unwrap_or(self.pid) as i64,
                        ..Default::default()
                    },
                ],
            });
        }
        // pprof names the profile after its first mapping's file: the executable
        let executable = self.process_name.split(' ').next().unwrap_or("");
        let mapping = vec![Mapping {
            id: 1,
            filename: s.id(executable),
            has_functions: true,
            has_filenames: true,
            has_line_numbers: true,
        }];
        let comment = vec![s.id(&format!("vizattach: {}", info.summary())), s.id(&self.process_name)];
        let started_ns = self.started.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0);
        Profile {
            default_sample_type: samples.r#type,
            sample_type: [Some(samples), Some(wall.clone()), cpu].into_iter().flatten().collect(),
            sample,
            mapping,
            location,
            function,
            time_nanos: started_ns,
            duration_nanos: (info.duration_s * 1e9) as i64,
            period_type: Some(wall),
            period: interval_ns,
            comment,
            string_table: s.table,
        }
    }
}

impl Sink for Pprof {
    fn process(&mut self, pid: i32, name: &str) -> io::Result<()> {
        self.owners.process(pid, name);
        Ok(())
    }

    fn thread(&mut self, tid: i32, name: &str) -> io::Result<()> {
        self.owners.note(tid);
        self.threads.insert(tid, name.to_string());
        Ok(())
    }

    fn activity(&mut self, _tid: i32, _time_ns: u64, activity: Activity) -> io::Result<()> {
        self.activity = activity;
        self.cpu_known |= activity.on_cpu().is_some();
        Ok(())
    }

    fn sample(&mut self, tid: i32, stack: &[StackFrame], codes: &CodeTable) -> io::Result<()> {
        self.owners.note(tid);
        let on_cpu = std::mem::take(&mut self.activity).on_cpu() == Some(true);
        if stack.is_empty() {
            return Ok(());
        }
        let mut ids = std::mem::take(&mut self.stack);
        ids.clear();
        for f in stack.iter().rev() {
            if let Some(code) = codes.get(f.code_id) {
                let function = self.function(code);
                ids.push(self.location(function, code.line_at(f.offset)));
            }
        }
        if !ids.is_empty() {
            let c = self.counts.entry((tid, ids.clone())).or_default();
            c.samples += 1;
            c.on_cpu += on_cpu as i64;
        }
        self.stack = ids;
        Ok(())
    }

    /// A repaired capture (journal.rs keeps stacks of code ids, not offsets): each frame
    /// at its function's first line, no CPU time.
    fn counted(
        &mut self,
        tid: i32,
        ids: &[u32],
        n: u64,
        code: &dyn Fn(u32) -> Option<std::sync::Arc<CodeInfo>>,
    ) -> io::Result<()> {
        self.owners.note(tid);
        let mut locs = Vec::with_capacity(ids.len());
        for &id in ids.iter().rev() {
            if let Some(c) = code(id) {
                let function = self.function(&c);
                locs.push(self.location(function, c.first_line));
            }
        }
        if !locs.is_empty() {
            self.counts.entry((tid, locs)).or_default().samples += n as i64;
        }
        Ok(())
    }

    fn close(&mut self, _: i32, _: &CodeInfo, _: u64, _: u64) -> io::Result<()> {
        Ok(())
    }

    /// profile.proto is always gzipped, whatever the file is called.
    fn finish(&mut self, info: &CaptureInfo) -> io::Result<u64> {
        let bytes = prost::Message::encode_to_vec(&self.profile(info));
        let mut counting = super::Counting { inner: self.out.as_mut(), n: 0 };
        {
            let mut gz = GzEncoder::new(&mut counting, flate2::Compression::default());
            gz.write_all(&bytes)?;
            gz.finish()?;
        }
        let n = counting.n;
        self.out.flush()?;
        Ok(n)
    }
}
