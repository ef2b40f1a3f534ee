//! Writers: one per format, all fed the same entry/exit stream by the timeline.

pub mod chrome;
pub mod collapsed;
pub mod flamegraph;
pub mod journal;
pub mod mode;
pub mod perfetto;
pub mod pprof;
pub mod speedscope;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::activity::Activity;
use crate::python::code::CodeInfo;
use crate::sampler::StackFrame;
use crate::timeline::CodeTable;

/// What a capture was, for the formats that carry metadata.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CaptureInfo {
    pub vizattach_version: String,
    pub python_version: String,
    pub pid: i32,
    pub command_line: String,
    pub rate_requested: String,
    pub rate_achieved: f64,
    pub samples: u64,
    pub missed_ticks: u64,
    pub dropped_samples: u64,
    /// one per live thread per tick: what `lost_samples` is a share of
    pub thread_samples: u64,
    /// thread samples no consistent read could be made of, by reason, and "total"
    pub lost_samples: std::collections::BTreeMap<&'static str, u64>,
    /// thread samples kept after immediate re-reads
    pub retried_samples: u64,
    /// thread samples of sleeping threads, whose stacks were not read again (they had
    /// not run since their last read)
    #[serde(default)]
    pub asleep_samples: u64,
    /// thread samples whose thread the GIL's switch count proved asleep, without a read
    /// of its /proc schedstat (src/activity.rs, `replays`)
    #[serde(default)]
    pub asleep_by_gil_samples: u64,
    /// thread samples whose walk reached a generator the copy lacked, read after it had
    /// moved on, and was completed from the callers' saved value stacks in the copy
    #[serde(default)]
    pub inferred_samples: u64,
    /// thread samples read with the thread stopped for the read, after every quick
    /// re-read tore (src/pausing.rs), and how long threads were stopped in all
    #[serde(default)]
    pub paused_samples: u64,
    /// of the lost thread samples, those that a stop would have been tried for had the
    /// stop budget (`--pause-budget`) not been spent
    #[serde(default)]
    pub over_budget_samples: u64,
    #[serde(default)]
    pub stopped_ms: f64,
    /// stops that caught a signal on its way to the thread (handed back on detach)
    #[serde(default)]
    pub signals_handed_back: u64,
    /// whether threads could be stopped ("on (budget 5 % of wall time)"), or why not
    #[serde(default)]
    pub pausing: String,
    /// the sampling thread's nice value ("nice -10"), or what was refused and why
    /// ("nice 0, not -10: raising priority needs root or CAP_SYS_NICE"): src/sampling_thread.rs
    #[serde(default)]
    pub sampler_priority: String,
    /// ticks whose read failed as a whole (the target exec'ing or exiting)
    pub failed_ticks: u64,
    /// samples of one frame taken for two calls because the frame proved it: "locals"
    /// (an argument or cell changed, a local became unbound), "offset" (moved where no
    /// path of the code leads), "caller" (the caller's slots changed: it ran in between)
    pub calls_told_apart: std::collections::BTreeMap<&'static str, u64>,
    pub longest_lag_us: f64,
    pub duration_s: f64,
    /// which samples the sample-count formats counted: wall, cpu or gil (`--mode`)
    pub mode: &'static str,
    pub clock: &'static str,
    /// set when `vizattach repair` rebuilt the file from a killed capture's journal
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovered: Option<String>,
    /// a capture of several processes (src/fleet.rs): every one recorded, in the order
    /// they joined (`pid` and `command_line` above are the first one's)
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<ProcessInfo>,
    /// `--subprocesses`: descendants that were not Python, or could not be read, and were
    /// not recorded
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped_children: Option<Skipped>,
}

/// One process of a capture of several.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ProcessInfo {
    pub pid: i32,
    pub command_line: String,
    pub python_version: String,
}

/// Children `--subprocesses` did not record, by why.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct Skipped {
    pub not_python: u64,
    /// Python, but not readable (permissions, an interpreter we do not know)
    pub unreadable: u64,
}

/// What every writer is fed, in time order per thread: thread names, slice opens and
/// closes (closes innermost first), and the raw samples for formats that count them.
impl CaptureInfo {
    /// One line for formats that carry metadata only as text.
    pub fn summary(&self) -> String {
        format!(
            "pid {}, Python {}; vizattach {}: {} samples in {:.2} s, {} asked, {:.0}/s achieved, {} missed ticks, {} dropped, {}",
            self.pid,
            self.python_version,
            self.vizattach_version,
            self.samples,
            self.duration_s,
            self.rate_requested,
            self.rate_achieved,
            self.missed_ticks,
            self.dropped_samples,
            self.losses()
        )
    }

    /// "lost 0.3 % of 12345 thread samples (12 moved, 14 torn), 380 retried"
    pub fn losses(&self) -> String {
        let total = self.lost_samples.get("total").copied().unwrap_or(0);
        let pct = if self.thread_samples > 0 { 100.0 * total as f64 / self.thread_samples as f64 } else { 0.0 };
        let why: Vec<String> = self
            .lost_samples
            .iter()
            .filter(|(k, n)| **k != "total" && **n > 0)
            .map(|(k, n)| format!("{n} {k}"))
            .collect();
        let mut s = format!("lost {pct:.2} % of {} thread samples", self.thread_samples);
        if !why.is_empty() {
            s += &format!(" ({})", why.join(", "));
        }
        s += &format!(", {} retried", self.retried_samples);
        if self.asleep_samples > 0 {
            s += &format!(", {} asleep (not re-read)", self.asleep_samples);
        }
        if self.inferred_samples > 0 {
            s += &format!(", {} with generator callers inferred", self.inferred_samples);
        }
        if self.paused_samples > 0 {
            s += &format!(
                ", {} read stopped ({:.1} ms stopped, {:.2} % of the time)",
                self.paused_samples,
                self.stopped_ms,
                if self.duration_s > 0.0 { self.stopped_ms / 10.0 / self.duration_s } else { 0.0 }
            );
        }
        if self.over_budget_samples > 0 {
            s += &format!(
                ", {} lost with the stop budget spent (a larger --pause-budget or a lower --rate keeps them)",
                self.over_budget_samples
            );
        }
        if self.pausing.starts_with("refused") {
            s += &format!("; stopping threads {}", self.pausing);
        }
        if crate::sampling_thread::was_refused(&self.sampler_priority) {
            s += &format!("; sampler at {} (on a busy machine its ticks may come late)", self.sampler_priority);
        }
        if let Some(r) = &self.recovered {
            s += &format!("; {r}");
        }
        s
    }
}

pub trait Sink {
    /// Several processes in one capture (`record --pid A --pid B`, `--subprocesses`;
    /// src/fleet.rs): what follows, until the next call, is process `pid`'s, named `name`
    /// (its command line). The first call for a pid declares it. A capture of one process
    /// never calls this: its process is the one the writer was made for.
    fn process(&mut self, _pid: i32, _name: &str) -> io::Result<()> {
        Ok(())
    }
    fn thread(&mut self, tid: i32, name: &str) -> io::Result<()>;
    /// A code object met for the first time, before any slice uses it: the moment to
    /// read anything about it from the target, which may be gone by the end.
    fn code(&mut self, _code: &CodeInfo) -> io::Result<()> {
        Ok(())
    }
    /// What a thread was doing at a sample (src/activity.rs), just before its `sample`.
    fn activity(&mut self, _tid: i32, _time_ns: u64, _activity: Activity) -> io::Result<()> {
        Ok(())
    }
    /// One thread's stack in one sample, root first.
    fn sample(&mut self, _tid: i32, _stack: &[StackFrame], _codes: &CodeTable) -> io::Result<()> {
        Ok(())
    }
    fn open(&mut self, _tid: i32, _code: &CodeInfo, _start_ns: u64) -> io::Result<()> {
        Ok(())
    }
    fn close(&mut self, tid: i32, code: &CodeInfo, start_ns: u64, end_ns: u64) -> io::Result<()>;
    /// `n` samples of one thread's stack of code ids, root first: how a replayed journal
    /// feeds the formats that count samples (journal.rs).
    fn counted(
        &mut self,
        _tid: i32,
        _ids: &[u32],
        _n: u64,
        _code: &dyn Fn(u32) -> Option<Arc<CodeInfo>>,
    ) -> io::Result<()> {
        Ok(())
    }
    /// Called every half second during a capture (record.rs): hand what is buffered to
    /// the file, so a vizattach killed without warning loses half a second at most
    /// (README, "What survives a crash"). `info` is the capture so far, `last_ns` its last
    /// sample.
    fn checkpoint(&mut self, _info: &CaptureInfo, _last_ns: u64) -> io::Result<()> {
        Ok(())
    }
    fn finish(&mut self, info: &CaptureInfo) -> io::Result<u64>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Viztracer,
    Perfetto,
    Speedscope,
    Collapsed,
    Flamegraph,
    Pprof,
}

pub const FORMATS: &str = "viztracer (.json), perfetto (.pftrace, .perfetto-trace), speedscope (.speedscope.json), \
collapsed (.collapsed, .txt), flamegraph (.svg), pprof (.pb.gz, .pprof; always gzipped); add .gz to gzip any of them";

impl Format {
    /// The name `from_name` takes.
    pub fn name(self) -> &'static str {
        match self {
            Format::Viztracer => "viztracer",
            Format::Perfetto => "perfetto",
            Format::Speedscope => "speedscope",
            Format::Collapsed => "collapsed",
            Format::Flamegraph => "flamegraph",
            Format::Pprof => "pprof",
        }
    }

    pub fn from_name(name: &str) -> Option<Format> {
        match name {
            "viztracer" | "json" | "chrome" => Some(Format::Viztracer),
            "perfetto" | "pftrace" | "protobuf" => Some(Format::Perfetto),
            "speedscope" => Some(Format::Speedscope),
            "collapsed" | "folded" => Some(Format::Collapsed),
            "flamegraph" | "svg" => Some(Format::Flamegraph),
            "pprof" => Some(Format::Pprof),
            _ => None,
        }
    }

    /// The format and whether to gzip, from a file name.
    pub fn from_path(path: &Path) -> Option<(Format, bool)> {
        let name = path.file_name()?.to_str()?;
        let (stem, gz) = match name.strip_suffix(".gz") {
            Some(s) => (s, true),
            None => (name, false),
        };
        // longest suffix first: .speedscope.json is also a .json
        const SUFFIXES: [(&str, Format); 9] = [
            (".speedscope.json", Format::Speedscope),
            (".json", Format::Viztracer),
            (".pftrace", Format::Perfetto),
            (".perfetto-trace", Format::Perfetto),
            (".collapsed", Format::Collapsed),
            (".txt", Format::Collapsed),
            (".svg", Format::Flamegraph),
            (".pb", Format::Pprof),
            (".pprof", Format::Pprof),
        ];
        SUFFIXES.iter().find(|(suffix, _)| stem.ends_with(suffix)).map(|&(_, f)| (f, gz))
    }
}

/// The same capture written to `main` and to every file of `also`, each in the format of
/// its extension (`-o` given several times; `vizattach demo` writes JSON and SVG).
pub fn also_write(
    main: Box<dyn Sink + Send>,
    also: &[PathBuf],
    pid: i32,
    root: PathBuf,
    process_name: &str,
) -> io::Result<Box<dyn Sink + Send>> {
    if also.is_empty() {
        return Ok(main);
    }
    let mut sinks = vec![main];
    for p in also {
        let (f, gz) = Format::from_path(p)
            .ok_or_else(|| io::Error::other(format!("unknown format of {}; formats: {FORMATS}", p.display())))?;
        sinks.push(
            create(p, f, gz, pid, root.clone(), process_name)
                .map_err(|e| io::Error::other(format!("{}: {e}", p.display())))?,
        );
    }
    Ok(Box::new(Tee(sinks)))
}

/// Opens the output file now, so an unwritable path fails before any capture starts.
pub fn create(
    path: &Path,
    format: Format,
    gzip: bool,
    pid: i32,
    root: PathBuf,
    process_name: &str,
) -> io::Result<Box<dyn Sink + Send>> {
    // A stream of whole packets is its own recovery, and a pipe or a device cannot be
    // renamed into place: no journal for those (journal.rs).
    let special = std::fs::metadata(path).is_ok_and(|m| !m.is_file());
    if format == Format::Perfetto && !gzip || special {
        return writer(path, format, gzip, pid, root, process_name);
    }
    Ok(Box::new(journal::Journaled::create(path, format, gzip, pid, root, process_name)?))
}

/// The writer of one format into `path`, nothing more.
pub(crate) fn writer(
    path: &Path,
    format: Format,
    gzip: bool,
    pid: i32,
    root: PathBuf,
    process_name: &str,
) -> io::Result<Box<dyn Sink + Send>> {
    let file = std::fs::File::create(path)?;
    // profile.proto files are always gzipped, by the writer itself (.pb.gz is one gzip)
    let gzip = gzip && format != Format::Pprof;
    if format == Format::Perfetto && !gzip {
        // unbuffered: the writer batches whole packets itself, so that after a failed
        // write it can cut the file back to the last complete packet
        return Ok(Box::new(perfetto::Perfetto::new(Box::new(file.try_clone()?), Some(file), pid, process_name)?));
    }
    let out: Box<dyn io::Write + Send> = if gzip {
        Box::new(flate2::write::GzEncoder::new(
            io::BufWriter::with_capacity(1 << 16, file),
            flate2::Compression::fast(),
        ))
    } else {
        Box::new(io::BufWriter::with_capacity(1 << 16, file))
    };
    Ok(match format {
        Format::Viztracer => Box::new(chrome::ChromeJson::new(out, pid, root, process_name)?),
        Format::Perfetto => Box::new(perfetto::Perfetto::new(out, None, pid, process_name)?),
        Format::Speedscope => Box::new(speedscope::Speedscope::new(out, process_name).spill_next_to(path)),
        Format::Collapsed => Box::new(collapsed::Collapsed::new(out)),
        Format::Flamegraph => Box::new(flamegraph::FlameGraph::new(out, process_name)),
        Format::Pprof => Box::new(pprof::Pprof::new(out, pid, process_name)),
    })
}

/// One capture fed to several writers.
struct Tee(Vec<Box<dyn Sink + Send>>);

impl Sink for Tee {
    fn process(&mut self, pid: i32, name: &str) -> io::Result<()> {
        self.0.iter_mut().try_for_each(|s| s.process(pid, name))
    }
    fn thread(&mut self, tid: i32, name: &str) -> io::Result<()> {
        self.0.iter_mut().try_for_each(|s| s.thread(tid, name))
    }
    fn code(&mut self, code: &CodeInfo) -> io::Result<()> {
        self.0.iter_mut().try_for_each(|s| s.code(code))
    }
    fn activity(&mut self, tid: i32, time_ns: u64, activity: Activity) -> io::Result<()> {
        self.0.iter_mut().try_for_each(|s| s.activity(tid, time_ns, activity))
    }
    fn sample(&mut self, tid: i32, stack: &[StackFrame], codes: &CodeTable) -> io::Result<()> {
        self.0.iter_mut().try_for_each(|s| s.sample(tid, stack, codes))
    }
    fn open(&mut self, tid: i32, code: &CodeInfo, start_ns: u64) -> io::Result<()> {
        self.0.iter_mut().try_for_each(|s| s.open(tid, code, start_ns))
    }
    fn close(&mut self, tid: i32, code: &CodeInfo, start_ns: u64, end_ns: u64) -> io::Result<()> {
        self.0.iter_mut().try_for_each(|s| s.close(tid, code, start_ns, end_ns))
    }
    fn checkpoint(&mut self, info: &CaptureInfo, last_ns: u64) -> io::Result<()> {
        self.0.iter_mut().try_for_each(|s| s.checkpoint(info, last_ns))
    }
    fn finish(&mut self, info: &CaptureInfo) -> io::Result<u64> {
        let mut first = 0;
        for (i, s) in self.0.iter_mut().enumerate() {
            let n = s.finish(info)?;
            if i == 0 {
                first = n;
            }
        }
        Ok(first)
    }
}

/// How to open a file of this format, for the summary.
pub fn how_to_open(format: Format, path: &std::path::Path) -> String {
    let p = path.display();
    match format {
        Format::Viztracer => {
            format!("`vizviewer {p}` (pip install viztracer), https://ui.perfetto.dev, or chrome://tracing")
        }
        Format::Perfetto => format!("https://ui.perfetto.dev (Open trace file: {p})"),
        Format::Speedscope => {
            format!("https://www.speedscope.app (drop {p} there), or `npx speedscope {p}`")
        }
        Format::Collapsed => {
            format!("`inferno-flamegraph < {p} > out.svg`, `flamegraph.pl {p}`, or https://www.speedscope.app")
        }
        Format::Flamegraph => format!("any web browser ({p})"),
        Format::Pprof => format!("`go tool pprof -http=: {p}`, or send it to Pyroscope, Parca or Grafana (README)"),
    }
}

/// How a thread is labelled where one string must say both which thread and its name.
pub fn thread_label(name: &str, tid: i32) -> String {
    format!("{name} (tid {tid})")
}

/// Counts bytes on their way out, for writers that report how much they wrote.
pub(crate) struct Counting<'a> {
    pub inner: &'a mut (dyn io::Write + Send),
    pub n: u64,
}

impl io::Write for Counting<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Which process each thread is, for the writers that name threads in labels (a capture
/// of several processes: Sink::process). Empty, and free, for a capture of one.
#[derive(Default)]
pub(crate) struct Owners {
    current: i32,
    names: std::collections::HashMap<i32, String>,
    of: std::collections::HashMap<i32, i32>,
}

impl Owners {
    pub fn process(&mut self, pid: i32, name: &str) {
        self.current = pid;
        self.names.insert(pid, name.to_string());
    }

    /// `tid` is the current process's (its first event decides).
    pub fn note(&mut self, tid: i32) {
        if !self.names.is_empty() {
            self.of.entry(tid).or_insert(self.current);
        }
    }

    pub fn pid_of(&self, tid: i32) -> Option<i32> {
        self.of.get(&tid).copied()
    }

    /// "NAME (pid PID)" of the thread's process, when the capture has several.
    pub fn process_label(&self, tid: i32) -> Option<String> {
        let pid = self.pid_of(tid)?;
        let name = self.names.get(&pid).map(String::as_str).unwrap_or("process");
        Some(format!("{name} (pid {pid})"))
    }
}
