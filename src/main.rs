use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use vizattach::error::Error;
use vizattach::output::Format;
use vizattach::python::{discover::Discovery, layout, snapshot::Reader};
use vizattach::record::{self, Rate};

/// Attach to a running CPython process (3.8-3.15) and see what every thread is doing,
/// without restarting it, changing its code or injecting anything into it.
#[derive(Parser)]
#[command(name = "vizattach", version, about, long_about = None, after_help = "\
Examples:
  vizattach demo                          record a demo program: vizattach-demo.json and .svg
  vizattach --pid 1234 --duration 10s     record a timeline of every thread for 10 s
  vizattach --pid 1234 -o trace.json.gz   record until Ctrl-C, gzipped
  vizattach record -- python3 app.py      start app.py, record it until it exits
  vizattach --pid 1234 --pid 5678         two processes into one trace, a track each
  vizattach --pid 1234 --subprocesses     a server and every Python worker it starts
  vizattach dump --pid 1234           every thread's Python stack, innermost frame first
  vizattach dump --pid 1234 --json    the same as JSON, for scripts
  vizattach dump --core core.1234     the stacks of a crashed or gcore'd process, from its core file
  vizattach versions                  which CPython versions can be read, and how
  vizattach repair trace.json         finish the file of a capture whose vizattach was killed

Reading another process needs root or CAP_SYS_PTRACE (docker: --cap-add SYS_PTRACE),
or the same user with kernel.yama.ptrace_scope=0.")]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    record: RecordArgs,
}

#[derive(Args)]
struct RecordArgs {
    /// Process id of the running Python process to record; give it several times to
    /// record several processes into one trace (one process track each, named by its
    /// command line)
    #[arg(long, short)]
    pid: Vec<i32>,
    /// Also record every Python descendant of the process, those started during the
    /// capture included (fork, multiprocessing, gunicorn/uWSGI-style workers and their
    /// replacements); the process tree is looked at every 150 ms. Children that are not
    /// Python (a shell, `sleep`) are skipped and counted in the summary and metadata. A
    /// process that exits ends its slices at its last sample; the capture goes on
    #[arg(long)]
    subprocesses: bool,
    /// How long to record: 500ms, 10s, 2m, 1h [default: until Ctrl-C or the target exits]
    #[arg(long, short, value_parser = record::parse_duration)]
    duration: Option<std::time::Duration>,
    /// Samples per second, 1 to 1000000, or max (as fast as one core allows)
    #[arg(long, short, default_value = "1000", value_parser = record::parse_rate)]
    rate: Rate,
    /// Output file; the extension picks the format: .json (VizTracer/Chrome JSON),
    /// .pftrace or .perfetto-trace (Perfetto protobuf), .speedscope.json, .collapsed or .txt
    /// (collapsed stacks), .svg (flame graph), .pb.gz or .pprof (pprof); add .gz to gzip
    /// [default: vizattach-PID-TIMESTAMP.json in the current directory].
    /// Give -o several times to write the same capture to several files, each in the
    /// format of its extension (-o run.pftrace -o run.svg)
    #[arg(long, short)]
    output: Vec<PathBuf>,
    /// Output format of the first -o, overriding its extension: viztracer, perfetto, speedscope, collapsed, flamegraph, pprof
    #[arg(long, value_parser = parse_format)]
    format: Option<Format>,
    /// No progress line and no summary
    #[arg(long, short)]
    quiet: bool,
    /// Which samples collapsed, flamegraph and pprof count: wall (all: where the time
    /// goes, waiting included; py-spy --idle), cpu (the thread was on CPU; py-spy's
    /// default), gil (it held the GIL; py-spy --gil). The timeline always has every slice.
    #[arg(long, default_value = "wall", value_parser = parse_mode)]
    mode: vizattach::activity::Mode,
    /// Most stacks are read without stopping anything. A thread whose stack changed under
    /// every quick re-read of a tick (a busy thread churning generators, most often) is
    /// stopped (ptrace) for one read, tens of microseconds, and let go at once; threads
    /// spend at most this share of the capture's wall time stopped, in percent (past it,
    /// such samples are counted lost). 0: never stop a thread. A watchdog ends vizattach
    /// if one stop lasts 250 ms, whatever happens to it; the kernel then resumes the
    /// thread. Never the program vizattach starts in launch mode (its child); with several
    /// processes, each has this budget
    #[arg(long, default_value = "5", value_name = "PERCENT", value_parser = parse_budget)]
    pause_budget: f64,
    /// Nice value of the thread that samples, -20 (first) to 19 (last). A sample is
    /// stamped when it is read, so a tick that comes late moves the slice edges it finds:
    /// on a machine the target keeps busy, a sampler at the default priority wakes late
    /// and skips ticks. Raised, it gets the CPU on time and uses no more per tick; the
    /// timeline and writer thread keep vizattach's priority. Below 0 needs root or
    /// CAP_SYS_NICE: without it the sampler keeps its priority and the summary says so
    /// [default: -10 if vizattach runs at nice 0, else vizattach's own]
    #[arg(long, value_name = "N", allow_negative_numbers = true,
          value_parser = clap::value_parser!(i32).range(-20..=19))]
    sampler_nice: Option<i32>,
    /// Keep every stopped thread stopped this long (tests of the watchdog)
    #[arg(long, hide = true, default_value = "0")]
    pause_hold_ms: u64,
    /// Read every thread stopped every Nth tick (tests of what stopping does to a target)
    #[arg(long, hide = true, default_value = "0", value_name = "N")]
    pause_every: u64,
    /// Give up waiting for a stop after this long (tests of threads let go a tick later)
    #[arg(long, hide = true, value_name = "MICROSECONDS")]
    pause_wait_us: Option<u64>,
    /// Launch mode: the program to start and record until it exits, after `--`
    /// (vizattach exits with its exit status)
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<String>,
}

fn parse_budget(s: &str) -> Result<f64, String> {
    match s.trim_end_matches('%').parse::<f64>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Ok(p),
        _ => Err(format!("'{s}' is not a share in percent: give 0 to 100 (0: never stop a thread)")),
    }
}

fn parse_mode(s: &str) -> Result<vizattach::activity::Mode, String> {
    vizattach::activity::Mode::from_name(s).ok_or_else(|| format!("unknown mode '{s}'; modes: wall, cpu, gil"))
}

fn parse_format(s: &str) -> Result<Format, String> {
    Format::from_name(s).ok_or_else(|| format!("unknown format '{s}'; formats: {}", vizattach::output::FORMATS))
}

#[derive(Subcommand)]
enum Command {
    /// Record a timeline (the default command: `vizattach --pid PID` is the same).
    ///
    /// Samples every thread's Python stack at --rate and turns the differences between
    /// samples into entry/exit slices, VizTracer-style: one slice per function call seen,
    /// named "qualname (file:first_line)", nested per thread. Two calls from the same line
    /// with no sample between them look like one call: raise --rate to see short calls.
    Record(RecordArgs),
    /// Print every thread's Python stack now: the stuck-process view.
    ///
    /// The target keeps running: stacks are read from its memory, and a read that
    /// races with the program (the stack changed while being read) is retried.
    ///
    /// With --core FILE, the stacks are read from an ELF core file instead: one the kernel
    /// wrote when the process crashed, or `gcore PID` made of a live one. The files the
    /// core names (the executable, libpython, ...) must be the ones the process had
    /// mapped, where the core says they were: they hold what a core leaves out. A core
    /// copied from a container or another machine needs that filesystem: give its root
    /// with --root (an unpacked image, a mounted snapshot, or /proc/PID/root of a
    /// container still running); a file that is missing or differs (another build id) is
    /// refused with a message that says which.
    #[command(after_help = "\
Examples:
  vizattach dump --pid 1234
      every thread's stack, innermost frame first
  vizattach dump --pid 1234 --locals --native
      with each frame's arguments and locals, and the C stacks
  gcore -o /tmp/core 1234 && vizattach dump --core /tmp/core.1234
      a core of a live process (gdb's gcore), then its stacks
  vizattach dump --core core --root /srv/app-rootfs
      a core from a container, whose filesystem is unpacked under /srv/app-rootfs
  vizattach dump --core core --root /proc/4242/root
      the same, while a container with the same image still runs (pid 4242)
  vizattach dump --core core --executable ./python3.12
      the executable is no longer where the core says it was")]
    #[command(group(clap::ArgGroup::new("target").required(true).args(["pid", "core"])))]
    Dump {
        /// Process id of the Python process (several --pid: each of them)
        #[arg(long, short)]
        pid: Vec<i32>,
        /// Read the stacks from this ELF core file instead of a running process
        /// (x86-64; as the kernel or gdb's gcore write them)
        #[arg(long, value_name = "FILE", conflicts_with = "subprocesses")]
        core: Option<PathBuf>,
        /// With --core: the executable the process ran, when it is no longer at the path the
        /// core names (moved, deleted, or copied elsewhere)
        #[arg(long, value_name = "PATH")]
        executable: Option<PathBuf>,
        /// With --core: the directory that was the process's root: every path the core names
        /// is looked for under it (a container's or chroot's filesystem)
        #[arg(long, value_name = "DIR")]
        root: Option<PathBuf>,
        /// Also every Python descendant of each --pid (forked workers, multiprocessing,
        /// Python children of a shell); others are skipped and listed on stderr
        #[arg(long)]
        subprocesses: bool,
        /// Print JSON: {"pid", "core", "python": {...}, "threads": [{"tid", "thread_id", "name", "holds_gil",
        /// "status": {"on_cpu", "gil", "syscall", "waiting_on"}, "frames": [{"kind", "function", "file", "line"}],
        /// "error": why a core's stack could not be read, or null}],
        /// "deadlocks": [...]}; with several processes {"processes": [...], "skipped": [...]}
        #[arg(long)]
        json: bool,
        /// Also show each Python frame's arguments and locals (cells and free variables
        /// included), as safe bounded reprs read from memory: nothing runs in the target
        #[arg(long)]
        locals: bool,
        /// Also unwind each thread's C stack (DWARF CFI, frame pointers as a fallback) and
        /// splice the Python frames in. Pauses each thread briefly (ptrace) to copy its
        /// registers and stack; a watchdog guarantees it runs on within 3 s whatever happens.
        /// With --core, unwound from the registers and stack the core recorded
        #[arg(long)]
        native: bool,
        /// Keep the first thread paused this long during --native (tests of the watchdog)
        #[arg(long, hide = true, default_value = "0")]
        native_hold_ms: u64,
        /// Also print how the interpreter was found and any layout differences (with --core:
        /// and which of the files the core names were left out, and why)
        #[arg(long, short)]
        verbose: bool,
        /// Find the runtime by scanning memory even when symbols exist (what happens
        /// for stripped binaries; for testing that path)
        #[arg(long, hide = true)]
        scan: bool,
    },
    /// List the CPython versions vizattach reads, and where each layout comes from.
    Versions,
    /// Record a small demo program for a few seconds: vizattach-demo.json and .svg.
    ///
    /// Starts a program embedded in vizattach (threads, nested calls, a generator,
    /// sleeps) with the first python3 on PATH, records it into vizattach-demo.json
    /// (timeline) and vizattach-demo.svg (flame graph) in the current directory, says how
    /// to open them, and ends the program.
    Demo {
        /// The Python to run the demo with [default: the first python3 on PATH]
        #[arg(long, value_name = "PATH")]
        python: Option<PathBuf>,
        /// How long to record
        #[arg(long, short, default_value = "3s", value_parser = record::parse_duration)]
        duration: std::time::Duration,
        /// Samples per second, 1 to 1000000, or max
        #[arg(long, short, default_value = "1000", value_parser = record::parse_rate)]
        rate: Rate,
    },
    /// Finish the file of a capture that was killed (SIGKILL, OOM, a dropped session).
    ///
    /// FILE is the capture's -o path (or its .vizattach-journal). Formats other than
    /// .pftrace keep a journal next to the file while recording; repair writes the file
    /// from it, with every slice up to the last flush (at most about a second before the
    /// kill). A .pftrace opens as it is; repair cuts off a packet the kill cut short.
    Repair {
        /// The capture's output file
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            // One line, like every other error: clap's message and its list of possible
            // values, without the usage block.
            let text = e.render().to_string();
            let parts: Vec<&str> = text
                .lines()
                .map(str::trim)
                .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
                .filter(|l| !l.is_empty())
                .collect();
            let line = parts.join(" ");
            eprintln!("vizattach: {}; see vizattach --help", line.strip_prefix("error: ").unwrap_or(&line));
            return ExitCode::from(2);
        }
    };
    match run(cli) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("vizattach: {e}");
            ExitCode::FAILURE
        }
    }
}

/// --verbose: how the interpreter was found.
fn describe<S: vizattach::process::image::Image>(reader: &Reader<S>) {
    let t = &reader.target;
    eprintln!(
        "vizattach: Python {} at _PyRuntime {:#x} in {}",
        t.version,
        t.runtime,
        t.libpython.as_deref().unwrap_or(&t.executable)
    );
    for n in &t.notes {
        eprintln!("vizattach: _Py_DebugOffsets differs from our {} table: {n}", t.layout.about.minor);
    }
}

fn print_dump<S: vizattach::process::image::Image>(reader: &Reader<S>, dumped: &vizattach::dump::Dumped, json: bool) {
    if json {
        println!("{}", vizattach::dump::to_json(reader, dumped));
    } else {
        print!("{}", vizattach::dump::to_text(reader, dumped));
    }
}

fn run(cli: Cli) -> Result<i32, Error> {
    match cli.command.unwrap_or(Command::Record(cli.record)) {
        Command::Record(a) => {
            let what = match (a.pid.is_empty(), a.command.is_empty()) {
                (false, true) => record::What::Pids(a.pid),
                (true, false) => record::What::Launch(a.command),
                (false, false) => return Err(Error::Usage("give either --pid or a command after --, not both".into())),
                (true, true) => {
                    return Err(Error::Usage(
                        "nothing to record: give --pid PID, or a command after -- (see vizattach --help)".into(),
                    ))
                }
            };
            vizattach::pausing::HOLD_MS.store(a.pause_hold_ms, std::sync::atomic::Ordering::Relaxed);
            vizattach::pausing::EVERY.store(a.pause_every, std::sync::atomic::Ordering::Relaxed);
            if let Some(us) = a.pause_wait_us {
                vizattach::pausing::WAIT_US.store(us, std::sync::atomic::Ordering::Relaxed);
            }
            record::record(record::Options {
                what,
                duration: a.duration,
                rate: a.rate,
                output: a.output.first().cloned(),
                format: a.format,
                quiet: a.quiet,
                also: a.output.get(1..).unwrap_or_default().to_vec(),
                mode: a.mode,
                subprocesses: a.subprocesses,
                pause_budget: a.pause_budget,
                sampler_nice: a.sampler_nice,
            })
        }
        Command::Dump {
            pid,
            core,
            executable,
            root,
            json,
            locals,
            native,
            native_hold_ms,
            verbose,
            scan,
            subprocesses,
        } => {
            vizattach::native::pause::HOLD_MS.store(native_hold_ms, std::sync::atomic::Ordering::Relaxed);
            let how = if scan { Discovery::Scan } else { Discovery::Symbols };
            if core.is_none() && (executable.is_some() || root.is_some()) {
                // (a live process's files are found through /proc)
                return Err(Error::Usage(
                    "--executable and --root say where a core's files are: they go with --core FILE".into(),
                ));
            }
            if let Some(core) = core {
                let files = vizattach::process::core::Files { root, executable };
                let mut reader = Reader::open_core(&core, &files, how)?;
                if verbose {
                    describe(&reader);
                    for why in &reader.source.left_out {
                        eprintln!("vizattach: left out (its bytes are not read): {why}");
                    }
                }
                let dumped = vizattach::dump::read_core(&mut reader, locals, native)?;
                print_dump(&reader, &dumped, json);
                return Ok(0);
            }
            if subprocesses || pid.len() > 1 {
                let many = vizattach::dump::many(&pid, subprocesses, how, locals, native)?;
                if json {
                    println!("{}", many.to_json());
                } else {
                    print!("{}", many.to_text());
                }
                eprintln!("vizattach: {}", many.summary());
                return Ok(0);
            }
            let pid = pid[0];
            let mut reader = Reader::attach_with(pid, how)?;
            if verbose {
                describe(&reader);
            }
            let dumped = vizattach::dump::read(&mut reader, locals, native)?;
            print_dump(&reader, &dumped, json);
            Ok(0)
        }
        Command::Demo { python, duration, rate } => {
            vizattach::demo::run(vizattach::demo::Options { python, duration, rate })
        }
        Command::Repair { file } => {
            println!("{}", vizattach::repair::repair(&file)?);
            Ok(0)
        }
        Command::Versions => {
            println!("{:<6} {:<8} {:<7} layout source", "minor", "headers", "tested");
            for l in layout::all() {
                println!(
                    "{:<6} {:<8} {:<7} {}{}",
                    l.about.minor,
                    l.about.headers,
                    if l.about.tested { "yes" } else { "NO" },
                    l.about.source,
                    if l.model.debug_offsets { "; the target's own _Py_DebugOffsets take precedence" } else { "" }
                );
            }
            Ok(0)
        }
    }
}
