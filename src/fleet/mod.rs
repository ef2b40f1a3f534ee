//! `vizattach record` of several processes in one trace: `--pid` given several times, and
//! `--subprocesses` (every Python descendant, children born during the capture included).
//! One sampler and one timeline per process, driven by one clock (clock.rs) and drained
//! into one set of writers (lanes.rs), which keep each process on its own track
//! (Sink::process). watch.rs finds and attaches the descendants on a helper thread.
//! The capture of a single process does not come here: record.rs keeps its path as is.

mod clock;
mod lanes;
mod watch;

use crate::clock::now_ns;
use crate::error::{Error, Result};
use crate::output::{self, CaptureInfo, ProcessInfo};
use crate::process::identity::{self, Identity};
use crate::python::snapshot::Reader;
use crate::record::{self, Facts, Options, Rate, What};
use crate::sampler::{Stats, StopReason};
use lanes::{Lanes, Totals};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

const CHECKPOINT_NS: u64 = 500_000_000;

/// A process attached and ready to be sampled.
pub struct Joined {
    pid: i32,
    identity: Identity,
    info: ProcessInfo,
    reader: Reader,
}

impl Joined {
    fn new(pid: i32, identity: Identity, reader: Reader) -> Joined {
        let info = ProcessInfo {
            pid,
            command_line: reader.source.cmdline(),
            python_version: reader.target.version.to_string(),
        };
        Joined { pid, identity, info, reader }
    }
}

pub fn record(opts: Options) -> Result<i32> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM, signal_hook::consts::SIGHUP] {
        signal_hook::flag::register(sig, stop.clone())
            .map_err(|e| Error::Io(format!("cannot install signal handler: {e}")))?;
    }
    let (format, gzip) = record::resolve_format(opts.output.as_deref(), opts.format)?;
    if let Some(p) = &opts.output {
        record::check_writable(p)?;
    }
    for p in &opts.also {
        record::resolve_format(Some(p), None)?;
        record::check_writable(p)?;
    }
    // The processes named are attached before anything starts: one that cannot be read
    // is an error now, as for a single --pid.
    let mut child = None;
    let mut first = Vec::new();
    match &opts.what {
        What::Pids(pids) => {
            for &p in pids {
                if !first.iter().any(|j: &Joined| j.pid == p) {
                    first.push(attach(p)?);
                }
            }
        }
        What::Launch(argv) => {
            let mut c = std::process::Command::new(&argv[0])
                .args(&argv[1..])
                .spawn()
                .map_err(|e| Error::Usage(format!("cannot start {}: {e}", argv[0])))?;
            let pid = c.id() as i32;
            let reader = record::attach_launched(pid, &mut c)?;
            let id = identity::of(pid).ok_or(Error::TargetExited(pid))?;
            first.push(Joined::new(pid, id, reader));
            child = Some(c);
        }
    }
    let head = first[0].info.clone();
    let roots: Vec<(i32, Identity)> = first.iter().map(|j| (j.pid, j.identity)).collect();
    let path = opts.output.clone().unwrap_or_else(|| record::default_name(head.pid, gzip));
    let root_dir = first[0].reader.source.root_dir();
    let sink = output::create(&path, format, gzip, head.pid, root_dir.clone(), &head.command_line)
        .and_then(|s| output::also_write(s, &opts.also, head.pid, root_dir, &head.command_line))
        .map_err(|e| Error::Io(format!("cannot write {}: {e}", path.display())))?;
    let sink = output::mode::filter(sink, opts.mode);

    let shared = Arc::new(watch::Shared::default());
    watch::lock(&shared.members).extend(roots.iter().copied());
    let (joins_tx, joins_rx) = crossbeam_channel::unbounded();
    let watcher_stop = Arc::new(AtomicBool::new(false));
    let watcher = opts.subprocesses.then(|| {
        let (roots, shared, stop) = (roots.iter().map(|r| r.0).collect(), shared.clone(), watcher_stop.clone());
        std::thread::Builder::new()
            .name("subprocesses".into())
            .spawn(move || watch::watch(roots, shared, joins_tx, stop))
    });
    let watcher = watcher.transpose().map_err(|e| Error::Io(format!("cannot start the subprocess watcher: {e}")))?;

    let stats = Arc::new(Stats::default());
    let facts = Facts {
        python_version: head.python_version.clone(),
        pid: head.pid,
        command_line: head.command_line.clone(),
        rate: opts.rate,
        mode: opts.mode.name(),
    };
    let (lanes_tx, lanes_rx) = crossbeam_channel::unbounded::<lanes::Lane>();
    let consumer = {
        let (stats, facts, shared) = (stats.clone(), facts.clone(), shared.clone());
        let following = opts.subprocesses;
        std::thread::Builder::new()
            .name("timeline".into())
            .spawn(move || {
                let mut sink = sink;
                let mut lanes = Lanes::default();
                let mut error = None;
                let mut next_checkpoint = now_ns() + CHECKPOINT_NS;
                loop {
                    let now = now_ns();
                    if now >= next_checkpoint && error.is_none() {
                        next_checkpoint = now + CHECKPOINT_NS;
                        let totals = lanes.totals();
                        let info = info(&facts, &stats, &totals, following.then(|| *watch::lock(&shared.skipped)));
                        if let Err(e) = sink.checkpoint(&info, totals.last_ns) {
                            error = Some(e);
                        }
                    }
                    let mut closed = false;
                    loop {
                        match lanes_rx.try_recv() {
                            Ok(lane) => lanes.join(lane),
                            Err(crossbeam_channel::TryRecvError::Empty) => break,
                            Err(crossbeam_channel::TryRecvError::Disconnected) => {
                                closed = true;
                                break;
                            }
                        }
                    }
                    // After an error the lanes are still drained, so the samplers never
                    // block on a full channel; nothing more is written.
                    let got = match error {
                        None => lanes.drain(sink.as_mut()).unwrap_or_else(|e| {
                            error = Some(e);
                            true
                        }),
                        Some(_) => lanes.drain(&mut Discard).unwrap_or(true),
                    };
                    if closed && lanes.is_empty() {
                        break;
                    }
                    if !got {
                        std::thread::sleep(record::CONSUMER_NAP);
                    }
                }
                (lanes.totals(), sink, error)
            })
            .map_err(|e| Error::Io(format!("cannot start the timeline thread: {e}")))?
    };

    let show_progress = !opts.quiet && std::io::stderr().is_terminal();
    let progress = show_progress.then(|| record::spawn_progress(stats.clone(), stop.clone()));
    if !opts.quiet {
        let pids: Vec<String> = first.iter().map(|j| j.pid.to_string()).collect();
        eprintln!(
            "vizattach: recording process{} {}{} at {} samples/s{} -> {}",
            if pids.len() == 1 { "" } else { "es" },
            pids.join(", "),
            if opts.subprocesses { " and every Python process they start" } else { "" },
            opts.rate,
            opts.duration
                .map(|d| format!(" for {}", record::humantime(d)))
                .unwrap_or_else(|| ", Ctrl-C to stop".into()),
            path.display()
        );
    }
    let interval_ns = match opts.rate {
        Rate::Hz(n) => 1_000_000_000 / n.max(1) as u64,
        Rate::Max => 0,
    };
    let end_ns = opts.duration.map(|d| now_ns() + d.as_nanos() as u64);
    // (a program we started is our child: our own wait for it would take the stops ptrace
    // reports for its main thread; its descendants are not)
    let launched = child.as_ref().map(|c| c.id() as i32);
    let pausing = clock::Pausing { budget: opts.pause_budget, not: launched };
    *stats.pausing.lock().unwrap_or_else(|e| e.into_inner()) = match opts.pause_budget {
        b if b > 0.0 => format!(
            "on (budget {b} % of wall time per process{})",
            if launched.is_some() { ", not the program vizattach started" } else { "" }
        ),
        _ => "off (--pause-budget 0)".into(),
    };
    let mut clock = clock::Clock::new(lanes_tx, joins_rx, shared.clone(), roots, opts.subprocesses, pausing);
    // (here, on the thread that samples, once the others have started: they keep ours)
    stats.set_sampler_priority(crate::sampling_thread::prepare(opts.sampler_nice));
    let reason = clock.run(first, interval_ns, end_ns, &stop, &stats);
    let still = clock.member_count();
    watcher_stop.store(true, Ordering::Relaxed);
    drop(clock); // ends every lane
    if let Some(w) = watcher {
        let _ = w.join();
    }
    if let Some(p) = progress {
        stop.store(true, Ordering::Relaxed);
        let _ = p.join();
    }
    let (totals, mut sink, error) = consumer.join().map_err(|_| Error::Io("the timeline thread failed".into()))?;
    let skipped = opts.subprocesses.then(|| *watch::lock(&shared.skipped));
    let info = info(&facts, &stats, &totals, skipped);
    let finished = match error {
        Some(e) => Err(e),
        None => sink.finish(&info).map(|_| ()),
    };
    drop(sink); // completes the gzip stream
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let exit = match child {
        Some(mut c) => c.wait().map(record::exit_code).unwrap_or(1),
        None => 0,
    };
    if let Err(e) = finished {
        return Err(Error::Io(format!(
            "writing {} failed after {} samples: {e}; the file is incomplete: once there is room, \
             `vizattach repair {}` finishes what reached the disk",
            path.display(),
            totals.samples,
            path.display()
        )));
    }
    if !opts.quiet {
        let why = match &reason {
            StopReason::Requested => "stopped".to_string(),
            StopReason::ConsumerGone => "stopped: the writer stopped taking samples".to_string(),
            StopReason::TargetExited => "every process exited".to_string(),
            StopReason::Failed(e) => format!("stopped on an error: {e}"),
        };
        let n = totals.processes.len();
        eprintln!(
            "vizattach: {why} after {:.2}s: {} processes ({} still running){}, {} samples ({:.0} ticks/s, {} missed ticks, \
             {} dropped; {}), {} threads, {} slices, {} written to {}",
            info.duration_s,
            n,
            still,
            skipped_text(skipped),
            totals.samples,
            info.rate_achieved,
            info.missed_ticks,
            info.dropped_samples,
            info.losses(),
            totals.threads,
            totals.slices,
            record::human_bytes(size),
            std::iter::once(&path).chain(&opts.also).map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        );
        eprintln!("vizattach: open it with {}", output::how_to_open(format, &path));
    }
    if let StopReason::Failed(e) = reason {
        return Err(Error::Io(e));
    }
    Ok(exit)
}

fn attach(pid: i32) -> Result<Joined> {
    let reader = Reader::attach(pid)?;
    let id = identity::of(pid).ok_or(Error::NoSuchProcess(pid))?;
    Ok(Joined::new(pid, id, reader))
}

/// "; skipped 2 non-Python children" (and the unreadable ones), or nothing.
fn skipped_text(s: Option<output::Skipped>) -> String {
    let Some(s) = s else {
        return String::new();
    };
    let mut parts = Vec::new();
    if s.not_python > 0 || s.unreadable == 0 {
        let n = s.not_python;
        parts.push(format!("skipped {n} non-Python child{}", if n == 1 { "" } else { "ren" }));
    }
    if s.unreadable > 0 {
        parts.push(format!("{} unreadable", s.unreadable));
    }
    format!("; {}", parts.join(", "))
}

fn info(facts: &Facts, stats: &Stats, t: &Totals, skipped: Option<output::Skipped>) -> CaptureInfo {
    let ticks = stats.ticks.load(Ordering::Relaxed);
    let mut info = record::capture_info_of(facts, stats, t.samples, ticks, t.told_apart);
    info.processes = t.processes.clone();
    info.skipped_children = skipped;
    info
}

/// Where a failed writer's share goes: the lanes keep draining after an error.
struct Discard;

impl output::Sink for Discard {
    fn thread(&mut self, _: i32, _: &str) -> std::io::Result<()> {
        Ok(())
    }
    fn close(&mut self, _: i32, _: &crate::python::code::CodeInfo, _: u64, _: u64) -> std::io::Result<()> {
        Ok(())
    }
    fn finish(&mut self, _: &CaptureInfo) -> std::io::Result<u64> {
        Ok(0)
    }
}
