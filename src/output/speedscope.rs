//! speedscope's file format: one `evented` profile per thread, made of `O` (open) and
//! `C` (close) events, which is exactly the timeline's entry/exit stream, plus a shared
//! frame table (name, file, line).
//!
//! A profile lists one thread's events together, so events are kept per thread and written
//! at the end: the latest CHUNK of each thread in memory, older ones in chunks in an
//! unlinked spill file next to the output, so memory stays flat however long the capture
//! (12 bytes an event on disk). Times are nanoseconds from the capture's first event:
//! absolute CLOCK_MONOTONIC values outgrow a double's exact integers after ~104 days of
//! uptime. The capture metadata goes into the file's `name`, which speedscope shows.

use super::{CaptureInfo, Sink};
use crate::python::code::CodeInfo;
use serde_json::json;
use std::collections::HashMap;
use std::io::{self, Write};

pub const SCHEMA: &str = "https://www.speedscope.app/file-format-schema.json";

struct Profile {
    tid: i32,
    /// (time, frame index | OPEN): the events not yet spilled
    events: Vec<(u64, u32)>,
    /// where this thread's earlier events lie in the spill file, CHUNK events each, in order
    spilled: Vec<u64>,
    first: Option<u64>,
    last: u64,
}

const OPEN: u32 = 1 << 31;
/// Events a thread keeps in memory before they go to the spill file.
const CHUNK: usize = 4096;
const EVENT_BYTES: usize = 12;

/// The spill file: created on first need in `dir`, unlinked at once (nothing to clean up,
/// whatever happens to us).
struct Spill {
    dir: std::path::PathBuf,
    file: Option<std::fs::File>,
    len: u64,
    buf: Vec<u8>,
}

impl Spill {
    fn write(&mut self, events: &[(u64, u32)]) -> io::Result<u64> {
        if self.file.is_none() {
            let path = self.dir.join(format!(".vizattach-spill-{}", std::process::id()));
            let f = std::fs::File::options().read(true).write(true).create_new(true).open(&path)?;
            std::fs::remove_file(&path)?;
            self.file = Some(f);
        }
        self.buf.clear();
        for &(at, f) in events {
            self.buf.extend_from_slice(&at.to_le_bytes());
            self.buf.extend_from_slice(&f.to_le_bytes());
        }
        let at = self.len;
        if let Some(f) = &mut self.file {
            f.write_all(&self.buf)?;
        }
        self.len += self.buf.len() as u64;
        Ok(at)
    }

    fn read(&mut self, at: u64, into: &mut Vec<(u64, u32)>) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.buf.resize(CHUNK * EVENT_BYTES, 0);
        let f = self.file.as_ref().ok_or_else(|| io::Error::other("no spill file"))?;
        f.read_exact_at(&mut self.buf, at)?;
        into.clear();
        for e in self.buf.chunks_exact(EVENT_BYTES) {
            let at = u64::from_le_bytes(e[..8].try_into().unwrap_or_default());
            let f = u32::from_le_bytes(e[8..].try_into().unwrap_or_default());
            into.push((at, f));
        }
        Ok(())
    }
}

pub struct Speedscope {
    out: Box<dyn Write + Send>,
    process_name: String,
    /// frame index per code id
    frame_of: HashMap<u32, u32>,
    /// frame index per (name, file, line): one frame per distinct function
    frame_index: HashMap<(String, String, i32), u32>,
    frames: Vec<serde_json::Value>,
    profiles: Vec<Profile>,
    profile_of: HashMap<i32, usize>,
    names: HashMap<i32, String>,
    owners: super::Owners,
    spill: Spill,
}

impl Speedscope {
    pub fn new(out: Box<dyn Write + Send>, process_name: &str) -> Speedscope {
        Speedscope {
            out,
            process_name: process_name.to_string(),
            frame_of: HashMap::new(),
            frame_index: HashMap::new(),
            frames: Vec::new(),
            profiles: Vec::new(),
            profile_of: HashMap::new(),
            names: HashMap::new(),
            owners: super::Owners::default(),
            spill: Spill { dir: std::env::temp_dir(), file: None, len: 0, buf: Vec::new() },
        }
    }

    /// Spill next to `output` (the file system that holds the output has room for it;
    /// a temp dir may be RAM).
    pub fn spill_next_to(mut self, output: &std::path::Path) -> Speedscope {
        if let Some(dir) = output.parent().filter(|d| !d.as_os_str().is_empty()) {
            self.spill.dir = dir.to_path_buf();
        } else {
            self.spill.dir = ".".into();
        }
        self
    }

    fn frame(&mut self, code: &CodeInfo) -> u32 {
        if let Some(&i) = self.frame_of.get(&code.id) {
            return i;
        }
        let key = (code.name.clone(), code.filename.clone(), code.first_line);
        let next = self.frames.len() as u32;
        let i = *self.frame_index.entry(key).or_insert(next);
        if i == next {
            self.frames.push(json!({
                "name": super::chrome::slice_name(code),
                "file": code.filename,
                "line": code.first_line,
            }));
        }
        self.frame_of.insert(code.id, i);
        i
    }

    fn push(&mut self, tid: i32, at: u64, frame: u32) -> io::Result<()> {
        let n = self.profiles.len();
        let i = *self.profile_of.entry(tid).or_insert(n);
        if i == n {
            self.owners.note(tid);
            self.profiles.push(Profile { tid, events: Vec::new(), spilled: Vec::new(), first: None, last: 0 });
        }
        let p = &mut self.profiles[i];
        p.first.get_or_insert(at);
        p.last = at;
        p.events.push((at, frame));
        if p.events.len() == CHUNK {
            p.spilled.push(self.spill.write(&p.events)?);
            p.events.clear();
        }
        Ok(())
    }
}

impl Sink for Speedscope {
    fn process(&mut self, pid: i32, name: &str) -> io::Result<()> {
        self.owners.process(pid, name);
        Ok(())
    }

    fn thread(&mut self, tid: i32, name: &str) -> io::Result<()> {
        self.names.insert(tid, name.to_string());
        Ok(())
    }

    fn open(&mut self, tid: i32, code: &CodeInfo, start_ns: u64) -> io::Result<()> {
        let f = self.frame(code);
        self.push(tid, start_ns, f | OPEN)
    }

    fn close(&mut self, tid: i32, code: &CodeInfo, _start_ns: u64, end_ns: u64) -> io::Result<()> {
        let f = self.frame(code);
        self.push(tid, end_ns, f)
    }

    fn finish(&mut self, info: &CaptureInfo) -> io::Result<u64> {
        let base = self.profiles.iter().filter_map(|p| p.first).min().unwrap_or(0);
        let name = format!("{} ({})", self.process_name, info.summary());
        let head = format!(
            "{{\"$schema\":\"{SCHEMA}\",\"name\":{},\"exporter\":{},\"activeProfileIndex\":0,\"shared\":{{\"frames\":{}}},\"profiles\":[",
            serde_json::to_string(&name).unwrap_or_default(),
            serde_json::to_string(&format!("vizattach {}", info.vizattach_version)).unwrap_or_default(),
            serde_json::Value::Array(std::mem::take(&mut self.frames))
        );
        let mut w = super::Counting { inner: self.out.as_mut(), n: 0 };
        w.write_all(head.as_bytes())?;
        let mut chunk = Vec::with_capacity(CHUNK);
        for (i, p) in self.profiles.iter().enumerate() {
            let thread = self.names.get(&p.tid).map(String::as_str).unwrap_or("thread");
            let label = match self.owners.process_label(p.tid) {
                Some(process) => format!("{process}: {}", super::thread_label(thread, p.tid)),
                None => super::thread_label(thread, p.tid),
            };
            let start = p.first.map_or(0, |t| t - base);
            let end = p.first.map_or(0, |_| p.last - base);
            write!(
                w,
                "{}{{\"type\":\"evented\",\"name\":{},\"unit\":\"nanoseconds\",\"startValue\":{start},\"endValue\":{end},\"events\":[",
                if i > 0 { "," } else { "" },
                serde_json::to_string(&label).unwrap_or_default()
            )?;
            let mut comma = false;
            for k in 0..=p.spilled.len() {
                let events = match p.spilled.get(k) {
                    Some(&at) => {
                        self.spill.read(at, &mut chunk)?;
                        &chunk
                    }
                    None => &p.events,
                };
                for &(at, f) in events {
                    let (kind, frame) = if f & OPEN != 0 { ('O', f & !OPEN) } else { ('C', f) };
                    write!(
                        w,
                        "{}{{\"type\":\"{kind}\",\"frame\":{frame},\"at\":{}}}",
                        if comma { "," } else { "" },
                        at - base
                    )?;
                    comma = true;
                }
            }
            w.write_all(b"]}")?;
        }
        w.write_all(b"]}\n")?;
        w.flush()?;
        Ok(w.n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Far more events than a chunk, on two threads: the file lists each thread's events
    /// in order, spilled chunks first, exactly as they came.
    #[test]
    fn spilled_events_come_back_in_order() {
        let dir = std::env::temp_dir().join(format!("vizattach-spill-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.speedscope.json");
        let out = Box::new(std::fs::File::create(&path).unwrap());
        let mut s = Speedscope::new(out, "t").spill_next_to(&path);
        let (a, b) =
            (CodeInfo::named(0, "a".into(), "/t.py".into(), 1), CodeInfo::named(1, "b".into(), "/t.py".into(), 5));
        let n = 3 * CHUNK as u64 + 17;
        for i in 0..n {
            let tid = 1 + (i % 2) as i32;
            let c = if i.is_multiple_of(3) { &a } else { &b };
            s.open(tid, c, 1000 + 10 * i).unwrap();
            s.close(tid, c, 1000 + 10 * i, 1005 + 10 * i).unwrap();
        }
        assert!(s.profiles.iter().all(|p| !p.spilled.is_empty()), "the test must spill");
        let info = super::super::journal::tests_info();
        s.finish(&info).unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let mut seen = 0;
        for (k, p) in doc["profiles"].as_array().unwrap().iter().enumerate() {
            let events = p["events"].as_array().unwrap();
            assert_eq!(events.len() as u64, 2 * ((n + 1 - k as u64) / 2), "thread {k}: every open and close");
            for (j, e) in events.iter().enumerate() {
                let i = k as u64 + 2 * (j as u64 / 2);
                let at = if j % 2 == 0 { 10 * i } else { 10 * i + 5 };
                assert_eq!(e["at"].as_u64(), Some(at), "thread {k} event {j}");
                assert_eq!(e["type"], if j % 2 == 0 { "O" } else { "C" });
                assert_eq!(e["frame"].as_u64(), Some(if i.is_multiple_of(3) { 0 } else { 1 }));
                seen += 1;
            }
        }
        assert_eq!(seen, 2 * n);
        assert!(std::fs::read_dir(&dir).unwrap().count() == 1, "the spill file is never left behind");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
