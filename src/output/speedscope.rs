//! speedscope's file format: one `evented` profile per thread, made of `O` (open) and
//! `C` (close) events, which is exactly the timeline's entry/exit stream, plus a shared
//! frame table (name, file, line).
//!
//! A profile lists one thread's events together, so events are kept per thread (16 bytes
//! each) and written at the end. Times are nanoseconds from the capture's first event:
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
    /// (time, frame index | OPEN)
    events: Vec<(u64, u32)>,
}

const OPEN: u32 = 1 << 31;

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
        }
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

    fn push(&mut self, tid: i32, at: u64, frame: u32) {
        let n = self.profiles.len();
        let i = *self.profile_of.entry(tid).or_insert(n);
        if i == n {
            self.profiles.push(Profile { tid, events: Vec::new() });
        }
        self.profiles[i].events.push((at, frame));
    }
}

impl Sink for Speedscope {
    fn thread(&mut self, tid: i32, name: &str) -> io::Result<()> {
        self.names.insert(tid, name.to_string());
        Ok(())
    }

    fn open(&mut self, tid: i32, code: &CodeInfo, start_ns: u64) -> io::Result<()> {
        let f = self.frame(code);
        self.push(tid, start_ns, f | OPEN);
        Ok(())
    }

    fn close(&mut self, tid: i32, code: &CodeInfo, _start_ns: u64, end_ns: u64) -> io::Result<()> {
        let f = self.frame(code);
        self.push(tid, end_ns, f);
        Ok(())
    }

    fn finish(&mut self, info: &CaptureInfo) -> io::Result<u64> {
        let base = self.profiles.iter().filter_map(|p| p.events.first()).map(|e| e.0).min().unwrap_or(0);
        let name = format!("{} ({})", self.process_name, info.summary());
        let head = format!(
            "{{\"$schema\":\"{SCHEMA}\",\"name\":{},\"exporter\":{},\"activeProfileIndex\":0,\"shared\":{{\"frames\":{}}},\"profiles\":[",
            serde_json::to_string(&name).unwrap_or_default(),
            serde_json::to_string(&format!("vizattach {}", info.vizattach_version)).unwrap_or_default(),
            serde_json::Value::Array(std::mem::take(&mut self.frames))
        );
        let mut w = super::Counting { inner: self.out.as_mut(), n: 0 };
        w.write_all(head.as_bytes())?;
        for (i, p) in self.profiles.iter().enumerate() {
            let thread = self.names.get(&p.tid).map(String::as_str).unwrap_or("thread");
            let start = p.events.first().map_or(0, |e| e.0 - base);
            let end = p.events.last().map_or(0, |e| e.0 - base);
            write!(
                w,
                "{}{{\"type\":\"evented\",\"name\":{},\"unit\":\"nanoseconds\",\"startValue\":{start},\"endValue\":{end},\"events\":[",
                if i > 0 { "," } else { "" },
                serde_json::to_string(&super::thread_label(thread, p.tid)).unwrap_or_default()
            )?;
            for (j, &(at, f)) in p.events.iter().enumerate() {
                let (kind, frame) = if f & OPEN != 0 { ('O', f & !OPEN) } else { ('C', f) };
                write!(
                    w,
                    "{}{{\"type\":\"{kind}\",\"frame\":{frame},\"at\":{}}}",
                    if j > 0 { "," } else { "" },
                    at - base
                )?;
            }
            w.write_all(b"]}")?;
        }
        w.write_all(b"]}\n")?;
        w.flush()?;
        Ok(w.n)
    }
}
