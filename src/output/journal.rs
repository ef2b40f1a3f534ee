//! The recovery journal: what a vizattach killed without warning (SIGKILL, the OOM
//! killer, a pod evicted) leaves behind for the formats that are not their own recovery.
//!
//! A `.pftrace` is a stream of self-delimiting packets: whatever reached the file loads.
//! The other formats are not: VizTracer's JSON object needs its closing lines and
//! `file_info`, and speedscope, collapsed stacks and SVG are written at the end from what
//! was gathered in memory. For them, during a capture:
//! - the file is written to `OUT.vizattach-partial` and renamed to `OUT` only once complete,
//!   so `OUT` is never a half-written file;
//! - next to it, `OUT.vizattach-journal` receives the capture as it happens, in compact
//!   length-prefixed records: code objects, thread names, slice opens and closes (for the
//!   formats made of slices), sample counts per distinct stack since the last checkpoint
//!   (for the formats that count samples), and the capture's metadata at each checkpoint;
//! - records are buffered and reach the file after 64 KiB or at the next checkpoint (every
//!   half second, record.rs), so the journal lags the capture by half a second at most;
//! - a clean finish renames the partial file to `OUT`, then deletes the journal.
//!
//! `vizattach repair OUT` (src/repair.rs) replays a journal through the same writer and
//! renames the result to `OUT`: every slice that closed, and every slice still open at the
//! journal's last record (closed there), every sample counted up to the last checkpoint.
//! A record cut short by the kill is ignored.

use super::{CaptureInfo, Format, Sink};
use crate::python::code::CodeInfo;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const JOURNAL_SUFFIX: &str = ".vizattach-journal";
pub const PARTIAL_SUFFIX: &str = ".vizattach-partial";
const MAGIC: &[u8] = b"vizattach journal 1\n";
/// Buffered records reach the file after this many bytes, or at the next checkpoint.
const BATCH: usize = 1 << 16;
/// No record we write comes near this; a longer one is damage, not data.
const MAX_RECORD: u64 = 64 << 20;

const HEADER: u8 = b'H';
const CODE: u8 = b'C';
const THREAD: u8 = b'T';
const OPEN: u8 = b'O';
const CLOSE: u8 = b'X';
const COUNT: u8 = b'S';
const PROGRESS: u8 = b'P';
/// What follows is this process's (a capture of several: Sink::process).
const PROCESS: u8 = b'W';
/// The last record of a journal whose partial file is complete (only the rename is left):
/// distinctive bytes, so no other record's tail can pass for it.
const END: &[u8] = b"E vizattach journal: the partial file is complete\n";

/// The three names of one output: the file, its partial form, its journal.
#[derive(Debug, Clone)]
pub struct Paths {
    pub out: PathBuf,
    pub partial: PathBuf,
    pub journal: PathBuf,
}

impl Paths {
    pub fn of(out: &Path) -> Paths {
        let with = |suffix: &str| {
            let mut s = out.as_os_str().to_owned();
            s.push(suffix);
            PathBuf::from(s)
        };
        Paths { out: out.to_path_buf(), partial: with(PARTIAL_SUFFIX), journal: with(JOURNAL_SUFFIX) }
    }

    /// From any of the three names.
    pub fn from_any(path: &Path) -> Paths {
        let s = path.as_os_str().to_string_lossy();
        for suffix in [JOURNAL_SUFFIX, PARTIAL_SUFFIX] {
            if let Some(out) = s.strip_suffix(suffix) {
                return Paths::of(Path::new(out));
            }
        }
        Paths::of(path)
    }
}

/// Which parts of the stream a format needs from the journal.
fn needs(format: Format) -> (bool, bool) {
    let counts = matches!(format, Format::Collapsed | Format::Flamegraph | Format::Pprof);
    (!counts, counts)
}

// ---------------------------------------------------------------------------------------
// Encoding: varints, zigzag time deltas, length-prefixed strings
// ---------------------------------------------------------------------------------------

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_signed(out: &mut Vec<u8>, v: i64) {
    put_varint(out, ((v << 1) ^ (v >> 63)) as u64);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// Times are written as the difference to the previous time in the journal: most are a
/// sample interval or less apart, one to three bytes instead of eight.
#[derive(Default)]
struct Clock(u64);

impl Clock {
    fn put(&mut self, out: &mut Vec<u8>, t: u64) {
        put_signed(out, t.wrapping_sub(self.0) as i64);
        self.0 = t;
    }
    fn get(&mut self, r: &mut Fields) -> io::Result<u64> {
        let d = r.signed()?;
        self.0 = self.0.wrapping_add(d as u64);
        Ok(self.0)
    }
}

/// The fields of one record, read in order; running out is an error (a damaged record).
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn varint(&mut self) -> io::Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = self.0.split_first().ok_or_else(damaged)?;
            self.0 = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(damaged())
    }
    fn signed(&mut self) -> io::Result<i64> {
        let v = self.varint()?;
        Ok((v >> 1) as i64 ^ -((v & 1) as i64))
    }
    fn int(&mut self) -> io::Result<i32> {
        i32::try_from(self.signed()?).map_err(|_| damaged())
    }
    fn id(&mut self) -> io::Result<u32> {
        u32::try_from(self.varint()?).map_err(|_| damaged())
    }
    fn str(&mut self) -> io::Result<String> {
        let n = self.varint()? as usize;
        if n > self.0.len() {
            return Err(damaged());
        }
        let (s, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(String::from_utf8_lossy(s).into_owned())
    }
}

fn damaged() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "a damaged journal record")
}

// ---------------------------------------------------------------------------------------
// Writing: a Sink in front of the format's own writer
// ---------------------------------------------------------------------------------------

/// Feeds the format's writer (into the partial file) and journals the same stream.
pub struct Journaled {
    inner: Option<Box<dyn Sink + Send>>,
    journal: File,
    buf: Vec<u8>,
    record: Vec<u8>,
    clock: Clock,
    slices: bool,
    /// samples per [pid, tid, code ids...] since the last checkpoint (formats that count)
    counts: Option<HashMap<Vec<u32>, u64>>,
    /// a capture of several processes: the current one, and each one's name (counts are
    /// journaled per process at checkpoints)
    pid: i32,
    names: HashMap<i32, String>,
    key: Vec<u32>,
    paths: Paths,
}

impl Journaled {
    pub fn create(
        out: &Path,
        format: Format,
        gzip: bool,
        pid: i32,
        root: PathBuf,
        process_name: &str,
    ) -> io::Result<Journaled> {
        let paths = Paths::of(out);
        // The journal and its header first: a partial file never exists without them.
        let mut journal = File::create(&paths.journal)?;
        let mut head = MAGIC.to_vec();
        let mut rec = vec![HEADER];
        put_str(&mut rec, Format::name(format));
        rec.push(gzip as u8);
        put_signed(&mut rec, pid as i64);
        put_str(&mut rec, process_name);
        put_str(&mut rec, &root.to_string_lossy());
        put_varint(&mut head, rec.len() as u64);
        head.extend_from_slice(&rec);
        journal.write_all(&head)?;
        let inner = super::writer(&paths.partial, format, gzip, pid, root, process_name)?;
        let (slices, counts) = needs(format);
        Ok(Journaled {
            inner: Some(inner),
            journal,
            buf: Vec::with_capacity(BATCH + 4096),
            record: Vec::new(),
            clock: Clock::default(),
            slices,
            counts: counts.then(HashMap::new),
            key: Vec::new(),
            pid,
            names: HashMap::new(),
            paths,
        })
    }

    fn inner(&mut self) -> io::Result<&mut (dyn Sink + Send + 'static)> {
        self.inner.as_deref_mut().ok_or_else(|| io::Error::other("the capture is already finished"))
    }

    /// Appends the record built in `self.record` (tag first).
    fn push(&mut self) -> io::Result<()> {
        put_varint(&mut self.buf, self.record.len() as u64);
        self.buf.extend_from_slice(&self.record);
        if self.buf.len() >= BATCH {
            self.flush()?;
        }
        Ok(())
    }

    fn push_process(&mut self, pid: i32) -> io::Result<()> {
        let name = self.names.get(&pid).cloned().unwrap_or_default();
        self.record.clear();
        self.record.push(PROCESS);
        put_signed(&mut self.record, pid as i64);
        put_str(&mut self.record, &name);
        self.push()
    }

    fn flush(&mut self) -> io::Result<()> {
        let r = self.journal.write_all(&self.buf);
        self.buf.clear();
        r
    }
}

impl Sink for Journaled {
    fn process(&mut self, pid: i32, name: &str) -> io::Result<()> {
        self.inner()?.process(pid, name)?;
        self.pid = pid;
        self.names.insert(pid, name.to_string());
        self.push_process(pid)
    }

    fn thread(&mut self, tid: i32, name: &str) -> io::Result<()> {
        self.inner()?.thread(tid, name)?;
        self.record.clear();
        self.record.push(THREAD);
        put_signed(&mut self.record, tid as i64);
        put_str(&mut self.record, name);
        self.push()
    }

    fn code(&mut self, code: &CodeInfo) -> io::Result<()> {
        self.inner()?.code(code)?;
        self.record.clear();
        self.record.push(CODE);
        put_varint(&mut self.record, code.id as u64);
        put_str(&mut self.record, &code.name);
        put_str(&mut self.record, &code.filename);
        put_signed(&mut self.record, code.first_line as i64);
        self.push()
    }

    fn sample(
        &mut self,
        tid: i32,
        stack: &[crate::sampler::StackFrame],
        codes: &crate::timeline::CodeTable,
    ) -> io::Result<()> {
        self.inner()?.sample(tid, stack, codes)?;
        if let Some(counts) = &mut self.counts {
            if stack.is_empty() {
                return Ok(());
            }
            self.key.clear();
            self.key.push(self.pid as u32);
            self.key.push(tid as u32);
            self.key.extend(stack.iter().map(|f| f.code_id));
            match counts.get_mut(self.key.as_slice()) {
                Some(n) => *n += 1,
                None => {
                    counts.insert(self.key.clone(), 1);
                }
            }
        }
        Ok(())
    }

    /// Forwarded, not journaled: a repaired file has no activity counters.
    fn activity(&mut self, tid: i32, time_ns: u64, activity: crate::activity::Activity) -> io::Result<()> {
        self.inner()?.activity(tid, time_ns, activity)
    }

    fn open(&mut self, tid: i32, code: &CodeInfo, start_ns: u64) -> io::Result<()> {
        self.inner()?.open(tid, code, start_ns)?;
        if self.slices {
            self.record.clear();
            self.record.push(OPEN);
            put_signed(&mut self.record, tid as i64);
            put_varint(&mut self.record, code.id as u64);
            self.clock.put(&mut self.record, start_ns);
            self.push()?;
        }
        Ok(())
    }

    fn close(&mut self, tid: i32, code: &CodeInfo, start_ns: u64, end_ns: u64) -> io::Result<()> {
        self.inner()?.close(tid, code, start_ns, end_ns)?;
        if self.slices {
            self.record.clear();
            self.record.push(CLOSE);
            put_signed(&mut self.record, tid as i64);
            put_varint(&mut self.record, code.id as u64);
            self.clock.put(&mut self.record, start_ns);
            self.clock.put(&mut self.record, end_ns);
            self.push()?;
        }
        Ok(())
    }

    fn checkpoint(&mut self, info: &CaptureInfo, last_ns: u64) -> io::Result<()> {
        self.inner()?.checkpoint(info, last_ns)?;
        if let Some(counts) = self.counts.take() {
            // grouped by process, each group after the record that names it, and the
            // current process named again after them
            let mut keys: Vec<(&Vec<u32>, &u64)> = counts.iter().collect();
            keys.sort_unstable_by_key(|(k, _)| k.first().copied());
            let several = !self.names.is_empty();
            let mut current = None;
            for (key, n) in keys {
                let Some((&pid, key)) = key.split_first() else {
                    continue;
                };
                if several && current != Some(pid) {
                    self.push_process(pid as i32)?;
                    current = Some(pid);
                }
                self.record.clear();
                self.record.push(COUNT);
                put_varint(&mut self.record, *n);
                put_varint(&mut self.record, key.len() as u64);
                for &id in key {
                    put_varint(&mut self.record, id as u64);
                }
                self.push()?;
            }
            if current.is_some_and(|p| p as i32 != self.pid) {
                self.push_process(self.pid)?;
            }
            let mut counts = counts;
            counts.clear();
            self.counts = Some(counts);
        }
        self.record.clear();
        self.record.push(PROGRESS);
        self.clock.put(&mut self.record, last_ns);
        put_str(&mut self.record, &serde_json::to_string(info).unwrap_or_default());
        self.push()?;
        self.flush()
    }

    /// The writer finishes into the partial file, which then becomes the output; the
    /// journal goes last, so some complete form of the capture exists at every moment.
    fn finish(&mut self, info: &CaptureInfo) -> io::Result<u64> {
        let n = self.inner()?.finish(info)?;
        drop(self.inner.take()); // completes a gzip stream, closes the file
                                 // a kill from here on loses nothing: repair finds this and renames the file
        self.record.clear();
        self.record.extend_from_slice(END);
        self.push()?;
        self.flush()?;
        std::fs::rename(&self.paths.partial, &self.paths.out)?;
        std::fs::remove_file(&self.paths.journal)?;
        Ok(n)
    }
}

// ---------------------------------------------------------------------------------------
// Reading and replaying
// ---------------------------------------------------------------------------------------

/// What a journal says about the capture it belongs to.
pub struct Header {
    pub format: Format,
    pub gzip: bool,
    pub pid: i32,
    pub process_name: String,
    pub root: PathBuf,
}

enum Record {
    Code(Box<CodeInfo>),
    Thread(i32, String),
    Open { tid: i32, code: u32, at: u64 },
    Close { tid: i32, code: u32, start: u64, end: u64 },
    Count { tid: i32, ids: Vec<u32>, n: u64 },
    Progress { last_ns: u64, info: serde_json::Value },
    Process(i32, String),
}

/// Reads records one at a time (a journal may be larger than memory should hold).
struct Records {
    r: BufReader<File>,
    buf: Vec<u8>,
    clock: Clock,
    /// the last record was cut short (the kill came in the middle of a write)
    cut: bool,
}

impl Records {
    /// The next record's bytes, or None at the end (or at a record cut short).
    fn next_raw(&mut self) -> io::Result<Option<&[u8]>> {
        let mut len = 0u64;
        for i in 0.. {
            let mut b = [0u8];
            match self.r.read(&mut b)? {
                0 => {
                    self.cut = i > 0;
                    return Ok(None);
                }
                _ => {
                    len |= u64::from(b[0] & 0x7f) << (7 * i);
                    if b[0] & 0x80 == 0 {
                        break;
                    }
                    if i >= 9 {
                        return Err(damaged());
                    }
                }
            }
        }
        if len == 0 || len > MAX_RECORD {
            return Err(damaged());
        }
        self.buf.resize(len as usize, 0);
        match self.r.read_exact(&mut self.buf) {
            Ok(()) => Ok(Some(&self.buf)),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                self.cut = true;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn next(&mut self) -> io::Result<Option<Record>> {
        let mut clock = std::mem::take(&mut self.clock);
        let r = self.decode(&mut clock);
        self.clock = clock;
        r
    }

    fn decode(&mut self, clock: &mut Clock) -> io::Result<Option<Record>> {
        let Some(raw) = self.next_raw()? else { return Ok(None) };
        let (&tag, rest) = raw.split_first().ok_or_else(damaged)?;
        let mut f = Fields(rest);
        Ok(Some(match tag {
            CODE => {
                let id = f.id()?;
                let (name, file) = (f.str()?, f.str()?);
                Record::Code(Box::new(CodeInfo::named(id, name, file, f.int()?)))
            }
            THREAD => Record::Thread(f.int()?, f.str()?),
            OPEN => Record::Open { tid: f.int()?, code: f.id()?, at: clock.get(&mut f)? },
            CLOSE => {
                let (tid, code) = (f.int()?, f.id()?);
                let start = clock.get(&mut f)?;
                Record::Close { tid, code, start, end: clock.get(&mut f)? }
            }
            COUNT => {
                let n = f.varint()?;
                let len = f.varint()?;
                if len == 0 || len > rest.len() as u64 {
                    return Err(damaged());
                }
                let tid = f.id()? as i32;
                let ids = (1..len).map(|_| f.id()).collect::<io::Result<Vec<u32>>>()?;
                Record::Count { tid, ids, n }
            }
            _ if raw == END => return Ok(None),
            PROCESS => Record::Process(f.int()?, f.str()?),
            PROGRESS => {
                let last_ns = clock.get(&mut f)?;
                let info = serde_json::from_str(&f.str()?).map_err(|_| damaged())?;
                Record::Progress { last_ns, info }
            }
            _ => return Err(damaged()),
        }))
    }
}

/// Whether the journal ends in END: its partial file is complete.
pub fn ends_complete(path: &Path) -> io::Result<bool> {
    use std::os::unix::fs::FileExt;
    let f = File::open(path)?;
    let len = f.metadata()?.len();
    let tail = END.len() as u64 + 1;
    if len < MAGIC.len() as u64 + tail {
        return Ok(false);
    }
    let mut buf = vec![0u8; tail as usize];
    f.read_exact_at(&mut buf, len - tail)?;
    Ok(buf[0] as usize == END.len() && &buf[1..] == END)
}

/// Opens a journal and reads its header.
fn open(path: &Path) -> io::Result<(Header, Records)> {
    let mut r = BufReader::with_capacity(1 << 16, File::open(path)?);
    let mut magic = Vec::new();
    (&mut r).take(MAGIC.len() as u64).read_to_end(&mut magic)?;
    if !MAGIC.starts_with(&magic) {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "not a vizattach journal"));
    }
    if magic.len() < MAGIC.len() {
        // cut inside the first write: the capture had not begun
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the journal is empty"));
    }
    let mut records = Records { r, buf: Vec::new(), clock: Clock::default(), cut: false };
    let raw =
        records.next_raw()?.ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "the journal is empty"))?;
    let (&tag, rest) = raw.split_first().ok_or_else(damaged)?;
    if tag != HEADER {
        return Err(damaged());
    }
    let mut f = Fields(rest);
    let name = f.str()?;
    let format = Format::from_name(&name).ok_or_else(damaged)?;
    let gzip = {
        let (&g, rest) = f.0.split_first().ok_or_else(damaged)?;
        f.0 = rest;
        g != 0
    };
    let header = Header { format, gzip, pid: f.int()?, process_name: f.str()?, root: PathBuf::from(f.str()?) };
    Ok((header, records))
}

/// What a replay recovered.
pub struct Replayed {
    pub header: Header,
    pub slices: u64,
    /// slices still open at the journal's end, closed there
    pub closed_at_end: u64,
    pub samples_counted: u64,
    pub threads: usize,
    /// first and last time the journal knows of (CLOCK_MONOTONIC, ns)
    pub span_ns: (u64, u64),
    /// the journal ended in a record cut short, or in damage (ignored from there)
    pub cut: Option<String>,
    pub info: CaptureInfo,
}

/// Writes the capture in `paths.journal` into `paths.partial` with its format's writer,
/// closing what was still open at the end, then renames it to `paths.out` and deletes the
/// journal. `root` is where the target's files (sources for JSON) are read from now.
pub fn replay(paths: &Paths, root: impl FnOnce(&Header) -> PathBuf) -> io::Result<Replayed> {
    let (header, mut records) = open(&paths.journal)?;
    let mut sink =
        super::writer(&paths.partial, header.format, header.gzip, header.pid, root(&header), &header.process_name)?;
    let mut codes: HashMap<u32, Arc<CodeInfo>> = HashMap::new();
    // by (pid, tid): a capture of several processes switches between them (Record::Process)
    let mut pid = header.pid;
    let mut names: BTreeMap<i32, String> = BTreeMap::new();
    let mut open: BTreeMap<(i32, i32), Vec<(u32, u64)>> = BTreeMap::new();
    let mut named: BTreeMap<(i32, i32), bool> = BTreeMap::new();
    let (mut slices, mut samples_counted) = (0u64, 0u64);
    let (mut first, mut last) = (u64::MAX, 0u64);
    let mut progress: Option<serde_json::Value> = None;
    let mut cut = None;
    loop {
        let rec = match records.next() {
            Ok(Some(r)) => r,
            Ok(None) => {
                if records.cut {
                    cut = Some("its last record was cut short by the kill".to_string());
                }
                break;
            }
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                cut = Some("it is damaged after some point; read up to there".to_string());
                break;
            }
            Err(e) => return Err(e),
        };
        let mut seen = |t: u64| {
            first = first.min(t);
            last = last.max(t);
        };
        match rec {
            Record::Code(c) => {
                let c: Arc<CodeInfo> = Arc::from(c);
                sink.code(&c)?;
                codes.insert(c.id, c);
            }
            Record::Process(p, name) => {
                sink.process(p, &name)?;
                names.insert(p, name);
                pid = p;
            }
            Record::Thread(tid, name) => {
                sink.thread(tid, &name)?;
                named.insert((pid, tid), true);
            }
            Record::Open { tid, code, at } => {
                seen(at);
                named.entry((pid, tid)).or_insert(false);
                if let Some(c) = codes.get(&code) {
                    sink.open(tid, c, at)?;
                    open.entry((pid, tid)).or_default().push((code, at));
                }
            }
            Record::Close { tid, code, start, end } => {
                seen(start);
                seen(end);
                if let Some(c) = codes.get(&code) {
                    sink.close(tid, c, start, end)?;
                    slices += 1;
                    let stack = open.entry((pid, tid)).or_default();
                    if stack.last().map(|o| o.0) == Some(code) {
                        stack.pop();
                    }
                }
            }
            Record::Count { tid, ids, n } => {
                named.entry((pid, tid)).or_insert(false);
                sink.counted(tid, &ids, n, &|id| codes.get(&id).cloned())?;
                samples_counted += n;
            }
            Record::Progress { last_ns, info } => {
                seen(last_ns);
                progress = Some(info);
            }
        }
    }
    // What was open when the journal ends is closed there, innermost first, as a clean
    // finish closes everything at the last sample.
    let mut closed_at_end = 0;
    let mut enter = |sink: &mut Box<dyn Sink + Send>, p: i32| match names.get(&p) {
        Some(name) if p != pid => {
            pid = p;
            sink.process(p, name)
        }
        _ => Ok(()),
    };
    for (&(p, tid), stack) in &mut open {
        enter(&mut sink, p)?;
        while let Some((code, start)) = stack.pop() {
            if let Some(c) = codes.get(&code) {
                sink.close(tid, c, start, last.max(start))?;
                closed_at_end += 1;
            }
        }
    }
    for (&(p, tid), has_name) in &named {
        if !has_name {
            enter(&mut sink, p)?;
            sink.thread(tid, &format!("thread {tid}"))?;
        }
    }
    let mut info = progress.as_ref().map(info_from_json).unwrap_or_else(|| CaptureInfo {
        pid: header.pid,
        command_line: header.process_name.clone(),
        ..empty_info()
    });
    info.recovered = Some(format!(
        "recovered by `vizattach repair` from the journal of a capture that did not finish: \
         {slices} slices closed, {closed_at_end} still open closed at its last record{}",
        match &cut {
            Some(c) => format!("; {c}"),
            None => String::new(),
        }
    ));
    sink.finish(&info)?;
    drop(sink);
    std::fs::rename(&paths.partial, &paths.out)?;
    std::fs::remove_file(&paths.journal)?;
    let threads = named.len();
    Ok(Replayed {
        header,
        slices,
        closed_at_end,
        samples_counted,
        threads,
        span_ns: (first.min(last), last),
        cut,
        info,
    })
}

#[cfg(test)]
pub(crate) fn tests_info() -> CaptureInfo {
    empty_info()
}

fn empty_info() -> CaptureInfo {
    CaptureInfo {
        vizattach_version: env!("CARGO_PKG_VERSION").into(),
        python_version: String::new(),
        pid: 0,
        command_line: String::new(),
        rate_requested: String::new(),
        rate_achieved: 0.0,
        samples: 0,
        missed_ticks: 0,
        dropped_samples: 0,
        thread_samples: 0,
        lost_samples: BTreeMap::new(),
        retried_samples: 0,
        asleep_samples: 0,
        asleep_by_gil_samples: 0,
        inferred_samples: 0,
        paused_samples: 0,
        over_budget_samples: 0,
        stopped_ms: 0.0,
        signals_handed_back: 0,
        pausing: String::new(),
        sampler_priority: String::new(),
        failed_ticks: 0,
        calls_told_apart: BTreeMap::new(),
        longest_lag_us: 0.0,
        duration_s: 0.0,
        mode: "wall",
        clock: "CLOCK_MONOTONIC",
        recovered: None,
        processes: Vec::new(),
        skipped_children: None,
    }
}

/// The metadata of the last checkpoint, as `CaptureInfo` serialized it.
fn info_from_json(v: &serde_json::Value) -> CaptureInfo {
    let u = |k: &str| v[k].as_u64().unwrap_or(0);
    let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
    let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
    let names = |k: &str, known: &[&'static str]| -> BTreeMap<&'static str, u64> {
        known.iter().filter_map(|&n| Some((n, v[k][n].as_u64()?))).collect()
    };
    let mut losses = vec!["total"];
    losses.extend(crate::sampler::LOSS_NAMES);
    CaptureInfo {
        vizattach_version: s("vizattach_version"),
        python_version: s("python_version"),
        pid: v["pid"].as_i64().unwrap_or(0) as i32,
        command_line: s("command_line"),
        rate_requested: s("rate_requested"),
        rate_achieved: f("rate_achieved"),
        samples: u("samples"),
        missed_ticks: u("missed_ticks"),
        dropped_samples: u("dropped_samples"),
        thread_samples: u("thread_samples"),
        lost_samples: names("lost_samples", &losses),
        retried_samples: u("retried_samples"),
        asleep_samples: u("asleep_samples"),
        asleep_by_gil_samples: u("asleep_by_gil_samples"),
        inferred_samples: u("inferred_samples"),
        paused_samples: u("paused_samples"),
        over_budget_samples: u("over_budget_samples"),
        stopped_ms: f("stopped_ms"),
        signals_handed_back: u("signals_handed_back"),
        pausing: s("pausing"),
        sampler_priority: s("sampler_priority"),
        failed_ticks: u("failed_ticks"),
        calls_told_apart: names("calls_told_apart", &["locals", "offset", "caller", "yield", "wake"]),
        longest_lag_us: f("longest_lag_us"),
        duration_s: f("duration_s"),
        mode: match v["mode"].as_str() {
            Some("cpu") => "cpu",
            Some("gil") => "gil",
            _ => "wall",
        },
        clock: "CLOCK_MONOTONIC",
        recovered: None,
        processes: serde_json::from_value(v["processes"].clone()).unwrap_or_default(),
        skipped_children: serde_json::from_value(v["skipped_children"].clone()).ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_time_deltas_round_trip() {
        let mut out = Vec::new();
        let mut c = Clock::default();
        let times = [5_000_000_000_123u64, 5_000_000_001_000, 4_999_999_999_000, u64::MAX / 3];
        for &t in &times {
            c.put(&mut out, t);
        }
        put_signed(&mut out, -7);
        put_str(&mut out, "é;x");
        let mut f = Fields(&out);
        let mut c = Clock::default();
        for &t in &times {
            assert_eq!(c.get(&mut f).unwrap(), t);
        }
        assert_eq!(f.signed().unwrap(), -7);
        assert_eq!(f.str().unwrap(), "é;x");
        assert!(f.varint().is_err(), "running out of bytes is damage, not zero");
    }

    /// A journal cut at every byte (where a kill may cut it) replays into a file that
    /// parses, with what its whole records hold; never an error but "empty" for a cut
    /// inside the header.
    #[test]
    fn a_journal_cut_anywhere_replays() {
        let dir = std::env::temp_dir().join(format!("vizattach-journal-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("cap.speedscope.json");
        let mut j = Journaled::create(&out, Format::Speedscope, false, 42, "/".into(), "python3 app.py").unwrap();
        let (a, b) =
            (CodeInfo::named(0, "main".into(), "/a.py".into(), 1), CodeInfo::named(1, "f".into(), "/a.py".into(), 9));
        j.code(&a).unwrap();
        j.code(&b).unwrap();
        j.thread(7, "MainThread").unwrap();
        j.open(7, &a, 1_000_000).unwrap();
        for i in 0..20u64 {
            j.open(7, &b, 2_000_000 + i * 1000).unwrap();
            j.close(7, &b, 2_000_000 + i * 1000, 2_000_500 + i * 1000).unwrap();
        }
        j.checkpoint(&empty_info(), 2_100_000).unwrap();
        let whole = std::fs::read(Paths::of(&out).journal).unwrap();
        let cut_dir = dir.join("cut");
        std::fs::create_dir_all(&cut_dir).unwrap();
        let mut last_slices = 0;
        for n in 0..=whole.len() {
            let paths = Paths::of(&cut_dir.join("cap.speedscope.json"));
            std::fs::write(&paths.journal, &whole[..n]).unwrap();
            match replay(&paths, |_| "/".into()) {
                Ok(r) => {
                    let doc: serde_json::Value =
                        serde_json::from_slice(&std::fs::read(&paths.out).unwrap()).expect("a file that parses");
                    assert!(doc["profiles"].is_array());
                    assert!(r.slices >= last_slices, "a longer journal never holds less");
                    last_slices = r.slices;
                    assert!(!paths.journal.exists() && !paths.partial.exists());
                }
                Err(e) => {
                    assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "cut at {n}: {e}");
                    assert!(n <= MAGIC.len() + 40, "only a cut inside the header is 'empty' ({n})");
                }
            }
        }
        assert_eq!(last_slices, 20);
        // a clean finish: the output in place, no journal; the moment before the rename
        // is told by the journal's END record
        let paths = Paths::of(&out);
        assert!(!ends_complete(&paths.journal).unwrap());
        j.finish(&empty_info()).unwrap();
        assert!(out.exists() && !paths.journal.exists() && !paths.partial.exists());
        let mut ended = whole.clone();
        ended.push(END.len() as u8);
        ended.extend_from_slice(END);
        std::fs::write(&paths.journal, &ended).unwrap();
        assert!(ends_complete(&paths.journal).unwrap());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A capture of two processes killed before it finished: the repaired file keeps
    /// each slice and each sample count under its own process, and closes what was open
    /// in the process that had it open.
    #[test]
    fn a_journal_of_two_processes_replays_each_under_its_pid() {
        let dir = std::env::temp_dir().join(format!("vizattach-journal-two-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (
            CodeInfo::named(0, "main".into(), "/a.py".into(), 1),
            CodeInfo::named(1, "work".into(), "/b.py".into(), 5),
        );
        let frame =
            |code_id| crate::sampler::StackFrame { code_id, code: 0, frame: 0, offset: 0, locals: Default::default() };
        let codes = crate::timeline::CodeTable::default();
        for (name, format) in [("two.json", Format::Viztracer), ("two.collapsed", Format::Collapsed)] {
            let out = dir.join(name);
            let mut j = Journaled::create(&out, format, false, 42, "/".into(), "python3 a.py").unwrap();
            j.process(42, "python3 a.py").unwrap();
            j.code(&a).unwrap();
            j.thread(42, "MainThread").unwrap();
            j.open(42, &a, 1_000_000).unwrap();
            j.sample(42, &[frame(0)], &codes).unwrap();
            j.process(43, "python3 b.py").unwrap();
            j.code(&b).unwrap();
            j.open(43, &b, 1_500_000).unwrap();
            j.close(43, &b, 1_500_000, 1_800_000).unwrap();
            j.sample(43, &[frame(1)], &codes).unwrap();
            j.sample(43, &[frame(1)], &codes).unwrap();
            j.process(42, "python3 a.py").unwrap();
            j.checkpoint(&empty_info(), 2_000_000).unwrap();
            drop(j); // killed: no finish
            replay(&Paths::of(&out), |_| "/".into()).unwrap();
            let text = std::fs::read_to_string(&out).unwrap();
            if format == Format::Viztracer {
                let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
                let events = doc["traceEvents"].as_array().unwrap();
                let of = |name: &str| -> Vec<(i64, i64)> {
                    events
                        .iter()
                        .filter(|e| e["name"].as_str().is_some_and(|n| n.starts_with(name)))
                        .map(|e| (e["pid"].as_i64().unwrap(), e["tid"].as_i64().unwrap()))
                        .collect()
                };
                assert_eq!(of("process_name"), vec![(42, 42), (43, 43)]);
                assert_eq!(of("main ("), vec![(42, 42)], "closed at the end, in its own process");
                assert_eq!(of("work ("), vec![(43, 43)]);
                let names: Vec<(i64, &str)> = events
                    .iter()
                    .filter(|e| e["name"] == "thread_name")
                    .map(|e| (e["pid"].as_i64().unwrap(), e["args"]["name"].as_str().unwrap()))
                    .collect();
                assert_eq!(names, vec![(42, "MainThread"), (43, "thread 43")]);
            } else {
                let lines: Vec<&str> = text.lines().collect();
                assert_eq!(
                    lines,
                    vec![
                        "python3 a.py (pid 42);MainThread (tid 42);main (/a.py:1) 1",
                        "python3 b.py (pid 43);thread 43 (tid 43);work (/b.py:5) 2"
                    ]
                );
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn paths_from_any_of_the_three_names() {
        let p = Paths::from_any(Path::new("/t/a.json.gz.vizattach-journal"));
        assert_eq!(p.out, Path::new("/t/a.json.gz"));
        assert_eq!(p.partial, Path::new("/t/a.json.gz.vizattach-partial"));
        assert_eq!(Paths::from_any(Path::new("/t/a.svg.vizattach-partial")).out, Path::new("/t/a.svg"));
        assert_eq!(Paths::from_any(Path::new("/t/a.svg")).journal, Path::new("/t/a.svg.vizattach-journal"));
    }
}
