//! An interactive flame graph (SVG, searchable, zoomable) drawn by inferno from the
//! collapsed sample counts; the capture metadata is its subtitle.

use super::collapsed::Counts;
use super::{CaptureInfo, Sink};
use crate::python::code::CodeInfo;
use crate::sampler::StackFrame;
use crate::timeline::CodeTable;
use std::io::{self, Write};
use std::sync::Arc;

pub struct FlameGraph {
    out: Box<dyn Write + Send>,
    counts: Counts,
    process_name: String,
}

impl FlameGraph {
    pub fn new(out: Box<dyn Write + Send>, process_name: &str) -> FlameGraph {
        FlameGraph { out, counts: Counts::default(), process_name: process_name.to_string() }
    }
}

impl Sink for FlameGraph {
    fn process(&mut self, pid: i32, name: &str) -> io::Result<()> {
        self.counts.owners.process(pid, name);
        Ok(())
    }

    fn thread(&mut self, tid: i32, name: &str) -> io::Result<()> {
        self.counts.thread(tid, name);
        Ok(())
    }

    fn sample(&mut self, tid: i32, stack: &[StackFrame], codes: &CodeTable) -> io::Result<()> {
        self.counts.sample(tid, stack, codes);
        Ok(())
    }

    fn counted(
        &mut self,
        tid: i32,
        ids: &[u32],
        n: u64,
        code: &dyn Fn(u32) -> Option<Arc<CodeInfo>>,
    ) -> io::Result<()> {
        self.counts.add(tid, ids.to_vec(), n, code);
        Ok(())
    }

    fn close(&mut self, _: i32, _: &CodeInfo, _: u64, _: u64) -> io::Result<()> {
        Ok(())
    }

    fn finish(&mut self, info: &CaptureInfo) -> io::Result<u64> {
        let lines = self.counts.lines();
        let mut opt = inferno::flamegraph::Options::default();
        opt.title = format!("vizattach: {}", self.process_name);
        opt.subtitle = Some(info.summary());
        opt.count_name = "samples".into();
        let mut counting = super::Counting { inner: self.out.as_mut(), n: 0 };
        if lines.is_empty() {
            // inferno refuses an empty profile; an empty capture still gets a valid SVG
            writeln!(counting, "<?xml version=\"1.0\" standalone=\"no\"?><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"600\" height=\"40\"><text x=\"10\" y=\"25\">vizattach: no samples</text></svg>")?;
        } else {
            inferno::flamegraph::from_lines(&mut opt, lines.iter().map(String::as_str), &mut counting)?;
        }
        counting.flush()?;
        Ok(counting.n)
    }
}
