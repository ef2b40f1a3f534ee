//! Writers: one per format, all fed the same entry/exit stream by the timeline.

pub mod chrome;

use std::io;
use std::path::{Path, PathBuf};

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
    pub read_errors: u64,
    pub longest_lag_us: f64,
    pub duration_s: f64,
    pub clock: &'static str,
}

/// What every writer is fed, in time order per thread: thread names, slice opens and
/// closes (closes innermost first), and the raw samples for formats that count them.
pub trait Sink {
    fn thread(&mut self, tid: i32, name: &str) -> io::Result<()>;
    /// One thread's stack in one sample, root first.
    fn sample(&mut self, _tid: i32, _stack: &[StackFrame], _codes: &CodeTable) -> io::Result<()> {
        Ok(())
    }
    fn open(&mut self, _tid: i32, _code: &CodeInfo, _start_ns: u64) -> io::Result<()> {
        Ok(())
    }
    fn close(&mut self, tid: i32, code: &CodeInfo, start_ns: u64, end_ns: u64) -> io::Result<()>;
    fn finish(&mut self, info: &CaptureInfo) -> io::Result<u64>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Viztracer,
}

pub const FORMATS: &str = "viztracer (.json, .json.gz)";

impl Format {
    pub fn from_name(name: &str) -> Option<Format> {
        match name {
            "viztracer" | "json" | "chrome" => Some(Format::Viztracer),
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
        if stem.ends_with(".json") {
            return Some((Format::Viztracer, gz));
        }
        None
    }
}

/// Opens the output file now, so an unwritable path fails before any capture starts.
pub fn create(path: &Path, format: Format, gzip: bool, pid: i32, root: PathBuf, process_name: &str) -> io::Result<Box<dyn Sink + Send>> {
    let file = std::fs::File::create(path)?;
    let out: Box<dyn io::Write + Send> = if gzip {
        Box::new(flate2::write::GzEncoder::new(io::BufWriter::with_capacity(1 << 16, file), flate2::Compression::fast()))
    } else {
        Box::new(io::BufWriter::with_capacity(1 << 16, file))
    };
    Ok(match format {
        Format::Viztracer => Box::new(chrome::ChromeJson::new(out, pid, root, process_name)?),
    })
}
