//! `--mode`: which samples the sample-count writers (collapsed, flame graph, pprof) are
//! fed. Slices and activity tracks are never filtered: the timeline stays whole.

use super::{CaptureInfo, Sink};
use crate::activity::{Activity, Mode};
use crate::python::code::CodeInfo;
use crate::sampler::StackFrame;
use crate::timeline::CodeTable;
use std::io;

/// Wraps the writers of a capture; in wall mode there is nothing to filter.
pub fn filter(inner: Box<dyn Sink + Send>, mode: Mode) -> Box<dyn Sink + Send> {
    match mode {
        Mode::Wall => inner,
        mode => Box::new(ModeFilter { inner, mode, last: Activity::default() }),
    }
}

struct ModeFilter {
    inner: Box<dyn Sink + Send>,
    mode: Mode,
    /// the activity announced with the sample that comes next
    last: Activity,
}

impl Sink for ModeFilter {
    fn process(&mut self, pid: i32, name: &str) -> io::Result<()> {
        self.inner.process(pid, name)
    }
    fn thread(&mut self, tid: i32, name: &str) -> io::Result<()> {
        self.inner.thread(tid, name)
    }
    fn code(&mut self, code: &CodeInfo) -> io::Result<()> {
        self.inner.code(code)
    }
    fn activity(&mut self, tid: i32, time_ns: u64, activity: Activity) -> io::Result<()> {
        self.last = activity;
        self.inner.activity(tid, time_ns, activity)
    }
    fn sample(&mut self, tid: i32, stack: &[StackFrame], codes: &CodeTable) -> io::Result<()> {
        if self.mode.keeps(self.last) {
            self.inner.sample(tid, stack, codes)?;
        }
        Ok(())
    }
    fn open(&mut self, tid: i32, code: &CodeInfo, start_ns: u64) -> io::Result<()> {
        self.inner.open(tid, code, start_ns)
    }
    fn close(&mut self, tid: i32, code: &CodeInfo, start_ns: u64, end_ns: u64) -> io::Result<()> {
        self.inner.close(tid, code, start_ns, end_ns)
    }
    fn checkpoint(&mut self, info: &CaptureInfo, last_ns: u64) -> io::Result<()> {
        self.inner.checkpoint(info, last_ns)
    }
    fn finish(&mut self, info: &CaptureInfo) -> io::Result<u64> {
        self.inner.finish(info)
    }
}
