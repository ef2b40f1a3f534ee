use clap::{Parser, Subcommand};
use std::process::ExitCode;
use vizattach::error::Error;
use vizattach::python::{layout, snapshot::Reader};

/// Attach to a running CPython process (3.8-3.15) and see what every thread is doing,
/// without restarting it, changing its code or injecting anything into it.
#[derive(Parser)]
#[command(name = "vizattach", version, about, long_about = None, after_help = "\
Examples:
  vizattach dump --pid 1234           every thread's Python stack, innermost frame first
  vizattach dump --pid 1234 --json    the same as JSON, for scripts
  vizattach versions                  which CPython versions can be read, and how

Reading another process needs root or CAP_SYS_PTRACE (docker: --cap-add SYS_PTRACE),
or the same user with kernel.yama.ptrace_scope=0.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print every thread's Python stack now: the stuck-process view.
    ///
    /// The target keeps running: stacks are read from its memory, and a read that
    /// races with the program (the stack changed while being read) is retried.
    Dump {
        /// Process id of the Python process
        #[arg(long, short)]
        pid: i32,
        /// Print JSON: {"pid", "python": {...}, "threads": [{"tid", "thread_id", "name", "holds_gil", "frames": [{"function", "file", "line"}]}]}
        #[arg(long)]
        json: bool,
        /// Also print how the interpreter was found and any layout differences
        #[arg(long, short)]
        verbose: bool,
    },
    /// List the CPython versions vizattach reads, and where each layout comes from.
    Versions,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vizattach: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), Error> {
    match cli.command {
        Command::Dump { pid, json, verbose } => {
            let mut reader = Reader::attach(pid)?;
            if verbose {
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
            let threads = reader.snapshot()?;
            if json {
                println!("{}", vizattach::dump::to_json(&reader, &threads));
            } else {
                print!("{}", vizattach::dump::to_text(&reader, &threads));
            }
            Ok(())
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
            Ok(())
        }
    }
}
