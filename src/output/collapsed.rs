//! Collapsed stacks, `thread;outer;...;inner count`: sample counts per distinct stack,
//! the input of flamegraph.pl, inferno and speedscope. Counted in memory (one entry per
//! distinct stack, not per sample) and written sorted at the end.

use super::{CaptureInfo, Sink};
use crate::python::code::CodeInfo;
use crate::sampler::StackFrame;
use crate::timeline::CodeTable;
use std::collections::{BTreeMap, HashMap};
use std::io::{self, Write};
use std::sync::Arc;

/// Sample counts per (thread, stack of code ids); names are resolved once per code.
#[derive(Default)]
pub struct Counts {
    stacks: HashMap<(i32, Vec<u32>), u64>,
    frames: HashMap<u32, String>,
    threads: HashMap<i32, String>,
    pub(crate) owners: super::Owners,
}

impl Counts {
    pub fn thread(&mut self, tid: i32, name: &str) {
        self.owners.note(tid);
        self.threads.insert(tid, name.to_string());
    }

    pub fn sample(&mut self, tid: i32, stack: &[StackFrame], codes: &CodeTable) {
        if stack.is_empty() {
            return;
        }
        let ids: Vec<u32> = stack.iter().map(|f| f.code_id).collect();
        self.add(tid, ids, 1, &|id| codes.get(id).cloned());
    }

    /// `n` samples of one stack of code ids, root first.
    pub fn add(&mut self, tid: i32, ids: Vec<u32>, n: u64, code: &dyn Fn(u32) -> Option<Arc<CodeInfo>>) {
        self.owners.note(tid);
        for &id in &ids {
            if let (false, Some(code)) = (self.frames.contains_key(&id), code(id)) {
                // ';' separates frames and a line ends a record: neither may appear in one
                let name = super::chrome::slice_name(&code).replace([';', '\n', '\r'], ":");
                self.frames.insert(id, name);
            }
        }
        *self.stacks.entry((tid, ids)).or_insert(0) += n;
    }

    /// The `stack count` lines, sorted (the order flame graph tools expect).
    pub fn lines(&self) -> Vec<String> {
        let mut out: BTreeMap<String, u64> = BTreeMap::new();
        for ((tid, ids), n) in &self.stacks {
            let name = self.threads.get(tid).map(String::as_str).unwrap_or("thread");
            let mut line = super::thread_label(name, *tid).replace([';', '\n', '\r'], ":");
            if let Some(p) = self.owners.process_label(*tid) {
                line = format!("{};{line}", p.replace([';', '\n', '\r'], ":"));
            }
            for id in ids {
                line.push(';');
                line.push_str(self.frames.get(id).map(String::as_str).unwrap_or("?"));
            }
            *out.entry(line).or_insert(0) += n;
        }
        out.into_iter().map(|(stack, n)| format!("{stack} {n}")).collect()
    }
}

/// A writer whose output is the counts: it counts as the capture goes and draws them
/// once at the end, in the way `R` says (collapsed text here, an SVG in flamegraph.rs).
pub struct Counted<R> {
    counts: Counts,
    render: R,
}

/// What a `Counted` writer does with the collapsed lines at the end; returns the bytes
/// written.
pub trait Render {
    fn render(&mut self, lines: &[String], info: &CaptureInfo) -> io::Result<u64>;
}

impl<R: Render> Counted<R> {
    pub fn new(render: R) -> Counted<R> {
        Counted { counts: Counts::default(), render }
    }
}

impl<R: Render> Sink for Counted<R> {
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
        self.render.render(&self.counts.lines(), info)
    }
}

/// The collapsed text itself.
pub struct Collapsed {
    out: Box<dyn Write + Send>,
}

impl Collapsed {
    pub fn new(out: Box<dyn Write + Send>) -> Counted<Collapsed> {
        Counted::new(Collapsed { out })
    }
}

impl Render for Collapsed {
    /// The format has no room for metadata: flame graph tools reject any other line.
    fn render(&mut self, lines: &[String], _info: &CaptureInfo) -> io::Result<u64> {
        let mut written = 0;
        for line in lines {
            self.out.write_all(line.as_bytes())?;
            self.out.write_all(b"\n")?;
            written += line.len() as u64 + 1;
        }
        self.out.flush()?;
        Ok(written)
    }
}
