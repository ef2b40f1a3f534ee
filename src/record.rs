//! `vizattach record`: wiring of a capture. The sampler runs on this thread; the
//! timeline and the writer run on another, behind a bounded channel.

use crate::clock::now_ns;
use crate::error::{Error, Result};
use crate::output::{self, CaptureInfo, Format};
use crate::python::snapshot::Reader;
use crate::sampler::{Message, Sampler, Stats, StopReason};
use crate::timeline::Timeline;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long the timeline thread sleeps when it has caught up: 4096 queued samples last
/// 20 ms even at 200k samples/s. Each nap is a wake-up of its own (a context switch,
/// ~10 us on a VM): napping 2 ms cost about 5 % of vizattach's CPU at 1 kHz (cpu_loop,
/// 12 A/B pairs against 8 ms).
pub(crate) const CONSUMER_NAP: Duration = Duration::from_millis(8);
/// Sample buffers waiting to go back to the sampler: more than one nap's worth at
/// 10 kHz, so none is freed and made again.
pub(crate) const RECYCLED: usize = 256;
/// How often the writers hand what they buffer to the file (Sink::checkpoint): what a
/// vizattach killed without warning can lose (README, "What survives a crash").
const CHECKPOINT_NS: u64 = 500_000_000;

#[derive(Debug, Clone, Copy)]
pub enum Rate {
    Hz(u32),
    Max,
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rate::Hz(n) => write!(f, "{n}"),
            Rate::Max => write!(f, "max"),
        }
    }
}

pub enum What {
    /// one process, or several into one trace (src/fleet.rs)
    Pids(Vec<i32>),
    Launch(Vec<String>),
}

pub struct Options {
    pub what: What,
    pub duration: Option<Duration>,
    pub rate: Rate,
    pub output: Option<PathBuf>,
    pub format: Option<Format>,
    pub quiet: bool,
    /// More files to write the same capture to, each in the format of its extension.
    pub also: Vec<PathBuf>,
    /// which samples the sample-count formats count (src/activity.rs)
    pub mode: crate::activity::Mode,
    /// also every Python descendant, those born during the capture included (src/fleet.rs)
    pub subprocesses: bool,
    /// share of wall time threads may spend stopped for a read, in percent (src/pausing.rs)
    pub pause_budget: f64,
    /// the sampling thread's nice value; None: src/sampling_thread.rs's default
    pub sampler_nice: Option<i32>,
}

/// Records; returns the exit status to leave with (the program's, in launch mode).
pub fn record(opts: Options) -> Result<i32> {
    if opts.subprocesses || matches!(&opts.what, What::Pids(p) if p.len() > 1) {
        return crate::fleet::record(opts);
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM, signal_hook::consts::SIGHUP] {
        signal_hook::flag::register(sig, stop.clone())
            .map_err(|e| Error::Io(format!("cannot install signal handler: {e}")))?;
    }
    // The output must be writable before anything starts: an error after ten minutes of
    // capture is no use to anyone.
    let (format, gzip) = resolve_format(opts.output.as_deref(), opts.format)?;
    if let Some(p) = &opts.output {
        check_writable(p)?;
    }
    for p in &opts.also {
        resolve_format(Some(p), None)?;
        check_writable(p)?;
    }
    let mut child = None;
    let pid = match &opts.what {
        What::Pids(p) => *p.first().ok_or_else(|| Error::Usage("nothing to record: give --pid PID".into()))?,
        What::Launch(argv) => {
            let c = std::process::Command::new(&argv[0])
                .args(&argv[1..])
                .spawn()
                .map_err(|e| Error::Usage(format!("cannot start {}: {e}", argv[0])))?;
            let pid = c.id() as i32;
            child = Some(c);
            pid
        }
    };
    let reader = match &mut child {
        None => Reader::attach(pid)?,
        Some(c) => attach_launched(pid, c)?,
    };
    let path = opts.output.clone().unwrap_or_else(|| default_name(pid, gzip));
    let command_line = reader.source.cmdline();
    let root = reader.source.root_dir();
    let sink = output::create(&path, format, gzip, pid, root.clone(), &command_line)
        .and_then(|s| output::also_write(s, &opts.also, pid, root, &command_line))
        .map_err(|e| Error::Io(format!("cannot write {}: {e}", path.display())))?;
    let sink = output::mode::filter(sink, opts.mode);
    let python_version = reader.target.version.to_string();
    let Reader { source: process, target, codes, ids } = reader;
    let process_comm = process.comm.clone();
    let mut sampler = Sampler::new(pid, process.memory, target, codes, ids);
    let stats = Arc::new(Stats::default());
    // A program we started is our child: our own wait for it would take the stops ptrace
    // reports for its main thread.
    let pausing = match &child {
        Some(_) => "off (a program vizattach started)".to_string(),
        None if opts.pause_budget > 0.0 => {
            sampler.pause_with(crate::pausing::Pauser::new(opts.pause_budget));
            format!("on (budget {} % of wall time)", opts.pause_budget)
        }
        None => "off (--pause-budget 0)".to_string(),
    };
    *stats.pausing.lock().unwrap_or_else(|e| e.into_inner()) = pausing;

    let (tx, rx) = crossbeam_channel::bounded::<Message>(4096);
    // Sample buffers travel back to the sampler once written, so it never allocates.
    let (recycle_tx, recycle_rx) = crossbeam_channel::bounded(RECYCLED);
    sampler.recycle_from(recycle_rx);
    let facts = Facts {
        python_version: python_version.clone(),
        pid,
        command_line: command_line.clone(),
        rate: opts.rate,
        mode: opts.mode.name(),
    };
    let (consumer_stats, consumer_facts) = (stats.clone(), facts.clone());
    let consumer = std::thread::Builder::new()
        .name("timeline".into())
        .spawn(move || {
            let mut sink = sink;
            let mut timeline = Timeline::default();
            let mut error = None;
            let mut next_checkpoint = now_ns() + CHECKPOINT_NS;
            // Drain, then nap: a receiver blocked in recv() makes the sampler wake it
            // (a futex call and a context switch) on every sample; a napping one costs
            // the sampler nothing. The channel holds far more than one nap's worth.
            loop {
                // A clock read per message (vDSO, tens of ns) keeps the bound whether the
                // channel is busy or idle.
                let now = now_ns();
                if now >= next_checkpoint && error.is_none() {
                    next_checkpoint = now + CHECKPOINT_NS;
                    let info = capture_info(&consumer_facts, &consumer_stats, &timeline);
                    if let Err(e) = sink.checkpoint(&info, timeline.last_ns) {
                        error = Some(e);
                    }
                }
                let msg = match rx.try_recv() {
                    Ok(m) => m,
                    Err(crossbeam_channel::TryRecvError::Empty) => {
                        std::thread::sleep(CONSUMER_NAP);
                        continue;
                    }
                    Err(crossbeam_channel::TryRecvError::Disconnected) => break,
                };
                if error.is_none() {
                    if let Err(e) = timeline.handle(&msg, sink.as_mut()) {
                        error = Some(e);
                    }
                }
                if let Message::Sample(batch) = msg {
                    let _ = recycle_tx.try_send(batch);
                }
            }
            (timeline, sink, error)
        })
        .map_err(|e| Error::Io(format!("cannot start the timeline thread: {e}")))?;

    let show_progress = !opts.quiet && std::io::stderr().is_terminal();
    let progress = show_progress.then(|| spawn_progress(stats.clone(), stop.clone()));
    if !opts.quiet {
        eprintln!(
            "vizattach: recording process {pid} ({process_comm}, Python {python_version}) at {} samples/s{} -> {}",
            opts.rate,
            opts.duration.map(|d| format!(" for {}", humantime(d))).unwrap_or_else(|| ", Ctrl-C to stop".into()),
            path.display()
        );
    }
    let interval_ns = match opts.rate {
        Rate::Hz(n) => 1_000_000_000 / n.max(1) as u64,
        Rate::Max => 0,
    };
    let end_ns = opts.duration.map(|d| now_ns() + d.as_nanos() as u64);
    // (here, on the thread that samples, once the others have started: they keep ours)
    stats.set_sampler_priority(crate::sampling_thread::prepare(opts.sampler_nice));
    let reason = sampler.run(&tx, interval_ns, end_ns, &stop, &stats);
    drop(tx);
    if let Some(p) = progress {
        stop.store(true, Ordering::Relaxed);
        let _ = p.join();
    }
    let (mut timeline, mut sink, error) =
        consumer.join().map_err(|_| Error::Io("the timeline thread failed".into()))?;
    let samples = timeline.samples;
    let info = capture_info(&facts, &stats, &timeline);
    let duration_s = info.duration_s;
    let comm_of = |tid: i32| crate::process::tasks::Tasks::comm(pid, tid).unwrap_or_else(|| format!("thread {tid}"));
    let finished = match error {
        Some(e) => Err(e),
        None => timeline.finish(sink.as_mut(), &comm_of).and_then(|()| sink.finish(&info)),
    };
    drop(sink); // completes the gzip stream
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let exit = match child {
        Some(mut c) => c.wait().map(exit_code).unwrap_or(1),
        None => 0,
    };
    if let Err(e) = finished {
        return Err(Error::Io(format!(
            "writing {} failed after {samples} samples: {e}; the file is incomplete: once there is room, \
             `vizattach repair {}` finishes what reached the disk",
            path.display(),
            path.display()
        )));
    }
    if !opts.quiet {
        let why = match &reason {
            StopReason::Requested => "stopped".to_string(),
            StopReason::ConsumerGone => "stopped: the writer stopped taking samples".to_string(),
            StopReason::TargetExited => format!("process {pid} exited"),
            StopReason::Failed(e) => format!("stopped on an error: {e}"),
        };
        eprintln!(
            "vizattach: {why} after {:.2}s: {samples} samples ({:.0}/s, {} missed ticks, {} dropped; {}), \
             {} threads, {} slices, {} written to {}",
            duration_s,
            info.rate_achieved,
            info.missed_ticks,
            info.dropped_samples,
            info.losses(),
            timeline.threads_seen(),
            timeline.slices,
            human_bytes(size),
            std::iter::once(&path).chain(&opts.also).map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        );
        eprintln!("vizattach: open it with {}", output::how_to_open(format, &path));
    }
    if let StopReason::Failed(e) = reason {
        return Err(Error::Io(e));
    }
    Ok(exit)
}

/// What is known of a capture before it starts.
#[derive(Clone)]
pub(crate) struct Facts {
    pub python_version: String,
    pub pid: i32,
    pub command_line: String,
    pub rate: Rate,
    pub mode: &'static str,
}

/// The capture's metadata as of now: at the end, and at every checkpoint.
fn capture_info(facts: &Facts, stats: &Stats, timeline: &Timeline) -> CaptureInfo {
    capture_info_of(facts, stats, timeline.samples, timeline.samples, timeline.told_apart)
}

/// The same from counts: `ticks` sets the achieved rate (a capture of several processes
/// counts a sample per process per tick, src/fleet.rs).
pub(crate) fn capture_info_of(
    facts: &Facts,
    stats: &Stats,
    samples: u64,
    ticks: u64,
    told_apart: crate::timeline::ToldApart,
) -> CaptureInfo {
    let stopped_ns = stats.last_sample_ns.load(Ordering::Relaxed);
    let started_ns = stats.started_ns.load(Ordering::Relaxed);
    let duration_s = stopped_ns.saturating_sub(started_ns) as f64 / 1e9;
    CaptureInfo {
        vizattach_version: env!("CARGO_PKG_VERSION").into(),
        python_version: facts.python_version.clone(),
        pid: facts.pid,
        command_line: facts.command_line.clone(),
        rate_requested: facts.rate.to_string(),
        rate_achieved: if duration_s > 0.0 { ticks as f64 / duration_s } else { 0.0 },
        samples,
        missed_ticks: stats.missed_ticks.load(Ordering::Relaxed),
        dropped_samples: stats.dropped.load(Ordering::Relaxed),
        thread_samples: stats.thread_samples.load(Ordering::Relaxed),
        lost_samples: std::iter::once(("total", stats.lost_total()))
            .chain(crate::sampler::LOSS_NAMES.iter().zip(&stats.lost).map(|(k, n)| (*k, n.load(Ordering::Relaxed))))
            .collect(),
        retried_samples: stats.retried.load(Ordering::Relaxed),
        asleep_samples: stats.asleep.load(Ordering::Relaxed),
        asleep_by_gil_samples: stats.asleep_by_gil.load(Ordering::Relaxed),
        inferred_samples: stats.inferred.load(Ordering::Relaxed),
        paused_samples: stats.paused.load(Ordering::Relaxed),
        over_budget_samples: stats.over_budget.load(Ordering::Relaxed),
        stopped_ms: stats.stopped_ns.load(Ordering::Relaxed) as f64 / 1e6,
        signals_handed_back: stats.signals_handed_back.load(Ordering::Relaxed),
        pausing: stats.pausing.lock().map(|p| p.clone()).unwrap_or_default(),
        sampler_priority: stats.sampler_priority.lock().map(|p| p.clone()).unwrap_or_default(),
        failed_ticks: stats.failed_ticks.load(Ordering::Relaxed),
        calls_told_apart: [
            ("locals", told_apart.by_locals),
            ("offset", told_apart.by_offset),
            ("caller", told_apart.by_caller),
            ("yield", told_apart.by_yield),
            ("wake", told_apart.by_wake),
            ("stack_end", told_apart.by_stack_end),
        ]
        .into_iter()
        .collect(),
        longest_lag_us: stats.longest_lag_ns.load(Ordering::Relaxed) as f64 / 1000.0,
        duration_s,
        mode: facts.mode,
        clock: "CLOCK_MONOTONIC",
        recovered: None,
        processes: Vec::new(),
        skipped_children: None,
    }
}

/// In launch mode the interpreter is not there at once: retry until it is, without a
/// fixed sleep, so a program that lives 50 ms is still seen.
pub(crate) fn attach_launched(pid: i32, child: &mut std::process::Child) -> Result<Reader> {
    let started = std::time::Instant::now();
    loop {
        match Reader::attach(pid) {
            // Wait for the interpreter to be up: before that the process may still be
            // exec'ing, and versions without Py_Version only tell their patch level
            // through sys.version once it exists.
            // (attach once more: the version read before initialization may be partial)
            Ok(r) if r.initialized() => return Reader::attach(pid),
            Ok(_) => {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(Error::Usage(format!(
                        "the program exited (status {}) before its Python interpreter started",
                        exit_code(status)
                    )));
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            Err(e @ Error::PermissionDenied { .. }) => return Err(e),
            // Until the dynamic loader has mapped libpython the process looks like a
            // Python without a runtime: give it a moment before believing that.
            Err(e @ (Error::UnsupportedVersion { .. } | Error::NotPython { .. }))
                if started.elapsed() > Duration::from_secs(2) =>
            {
                return Err(e)
            }
            Err(e) => {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(Error::Usage(format!(
                        "the program exited (status {}) before its Python interpreter could be read: {e}",
                        exit_code(status)
                    )));
                }
                if started.elapsed() > Duration::from_secs(30) {
                    return Err(e);
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    }
}

pub(crate) fn exit_code(s: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0))
}

pub(crate) fn resolve_format(path: Option<&Path>, forced: Option<Format>) -> Result<(Format, bool)> {
    let from_path = path.map(|p| {
        Format::from_path(p).ok_or_else(|| {
            Error::Usage(format!(
                "cannot tell the format of {} from its extension; formats: {}; or pass --format",
                p.display(),
                output::FORMATS
            ))
        })
    });
    match (forced, from_path) {
        (Some(f), Some(Ok((_, gz)))) => Ok((f, gz)),
        (Some(f), _) => Ok((f, path.is_some_and(|p| p.extension().is_some_and(|e| e == "gz")))),
        (None, Some(r)) => r,
        (None, None) => Ok((Format::Viztracer, false)),
    }
}

pub(crate) fn check_writable(path: &Path) -> Result<()> {
    let cannot = |e: std::io::Error| Error::Io(format!("cannot write {}: {e}", path.display()));
    if path.exists() {
        std::fs::OpenOptions::new().append(true).open(path).map_err(cannot)?;
        return Ok(());
    }
    // Nothing is created to find out: a probe file made and removed again would be left
    // empty where the capture belongs by a kill in between (tests/crash.rs caught one, 3
    // ms after start), and no reader opens an empty file. The directory must let us
    // create files in it (the journal, the partial file, then the output by rename).
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let meta = std::fs::metadata(dir).map_err(cannot)?;
    if !meta.is_dir() {
        return Err(cannot(std::io::Error::from_raw_os_error(libc::ENOTDIR)));
    }
    let c = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(dir.as_os_str()))
        .map_err(|_| cannot(std::io::Error::from_raw_os_error(libc::EINVAL)))?;
    // SAFETY: access(2) reads the NUL-terminated path we pass and nothing else.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
        return Err(cannot(std::io::Error::last_os_error()));
    }
    Ok(())
}

pub(crate) fn default_name(pid: i32, gzip: bool) -> PathBuf {
    let mut t: libc::time_t = 0;
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: time and localtime_r write only into the values we pass.
    unsafe {
        libc::time(&mut t);
        libc::localtime_r(&t, &mut tm);
    }
    PathBuf::from(format!(
        "vizattach-{pid}-{:04}{:02}{:02}-{:02}{:02}{:02}.json{}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        if gzip { ".gz" } else { "" }
    ))
}

pub(crate) fn spawn_progress(stats: Arc<Stats>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let start = now_ns();
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(250));
            let el = (now_ns() - start) as f64 / 1e9;
            let n = stats.ticks.load(Ordering::Relaxed);
            eprint!(
                "\r\x1b[K  {el:6.1}s  {n} samples  {:.0}/s  missed {}  lag max {:.1} ms  lost {}",
                n as f64 / el.max(1e-9),
                stats.missed_ticks.load(Ordering::Relaxed),
                stats.longest_lag_ns.load(Ordering::Relaxed) as f64 / 1e6,
                stats.lost_total()
            );
        }
        eprint!("\r\x1b[K");
    })
}

pub fn humantime(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

pub(crate) fn human_bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} bytes"),
    }
}

/// "500ms", "10s", "2m", "1h", or a plain number of seconds.
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("invalid duration '{s}': use e.g. 500ms, 10s, 2m, 1h"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("invalid duration unit in '{s}': use ms, s, m or h")),
    };
    if !(secs > 0.0 && secs.is_finite()) {
        return Err(format!("invalid duration '{s}': must be positive"));
    }
    Ok(Duration::from_secs_f64(secs))
}

pub fn parse_rate(s: &str) -> std::result::Result<Rate, String> {
    if s == "max" {
        return Ok(Rate::Max);
    }
    match s.parse::<u32>() {
        Ok(n) if (1..=1_000_000).contains(&n) => Ok(Rate::Hz(n)),
        _ => Err(format!("invalid rate '{s}': samples per second from 1 to 1000000, or max")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(matches!(parse_rate("max"), Ok(Rate::Max)));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("1000001").is_err());
    }
}
