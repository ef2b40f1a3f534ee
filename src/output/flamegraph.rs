//! An interactive flame graph (SVG, searchable, zoomable) drawn by inferno from the
//! collapsed sample counts; the capture metadata is its subtitle.

use super::collapsed::{Counted, Render};
use super::CaptureInfo;
use std::io::{self, Write};

pub struct FlameGraph {
    out: Box<dyn Write + Send>,
    process_name: String,
}

impl FlameGraph {
    pub fn new(out: Box<dyn Write + Send>, process_name: &str) -> Counted<FlameGraph> {
        Counted::new(FlameGraph { out, process_name: process_name.to_string() })
    }
}

impl Render for FlameGraph {
    fn render(&mut self, lines: &[String], info: &CaptureInfo) -> io::Result<u64> {
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
