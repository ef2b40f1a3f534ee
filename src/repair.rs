//! `vizattach repair FILE`: turns what a killed capture left into a file its viewers open.
//!
//! - A journaled format (everything but a plain `.pftrace`) left `FILE.vizattach-journal`
//!   (and `FILE.vizattach-partial`): the journal is replayed through the format's writer
//!   into `FILE` (output/journal.rs).
//! - A `.pftrace` loads as it is; a packet the kill cut in half is cut off here, so the
//!   file ends on a whole packet.
//! - A VizTracer JSON without its journal (removed, or written by an older vizattach) is
//!   closed as text: cut after its last whole event, then the closing lines. Slices still
//!   open at the kill were never written to it, so they are missing there.

use crate::error::{Error, Result};
use crate::output::journal::{self, Paths};
use crate::output::Format;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Repairs, and says what it did in a few lines.
pub fn repair(path: &Path) -> Result<String> {
    let paths = Paths::from_any(path);
    let out = paths.out.display();
    if paths.journal.exists() {
        if !paths.partial.exists() && paths.out.exists() {
            // killed between the final rename and the journal's removal: already complete
            std::fs::remove_file(&paths.journal).map_err(|e| io_error(&paths.journal, e))?;
            return Ok(format!("{out} was complete; removed its leftover journal"));
        }
        if paths.partial.exists() && journal::ends_complete(&paths.journal).map_err(|e| io_error(&paths.journal, e))? {
            // killed between the last write of a clean finish and the rename
            std::fs::rename(&paths.partial, &paths.out).map_err(|e| io_error(&paths.partial, e))?;
            std::fs::remove_file(&paths.journal).map_err(|e| io_error(&paths.journal, e))?;
            return Ok(format!("{out} was complete (vizattach was killed while finishing it); renamed into place"));
        }
        return replay(&paths);
    }
    if paths.partial.exists() && Format::from_path(&paths.out) == Some((Format::Viztracer, false)) {
        return close_json_text(&paths);
    }
    if !paths.out.exists() {
        return Err(Error::Usage(format!(
            "no such file: {out} (nor {}); give the -o path of the capture to repair",
            paths.journal.display()
        )));
    }
    match Format::from_path(&paths.out) {
        Some((Format::Perfetto, false)) => cut_to_whole_packets(&paths.out),
        _ => Ok(format!(
            "{out} has no journal next to it ({}): it was finished cleanly (or the journal was removed); nothing to repair",
            paths.journal.display()
        )),
    }
}

fn replay(paths: &Paths) -> Result<String> {
    let r = journal::replay(paths, |h| {
        // Sources for JSON's file_info: through the target's root while it runs, else ours.
        if h.root.exists() {
            h.root.clone()
        } else {
            PathBuf::from("/")
        }
    });
    let r = match r {
        Ok(r) => r,
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            // the kill came before the capture's first record: nothing to recover
            let _ = std::fs::remove_file(&paths.journal);
            let _ = std::fs::remove_file(&paths.partial);
            return Err(Error::Usage(format!(
                "{}: the capture was stopped before it recorded anything ({e}); nothing to recover, its leftovers are removed",
                paths.out.display()
            )));
        }
        Err(e) => return Err(io_error(&paths.journal, e)),
    };
    let what = if matches!(r.header.format, Format::Collapsed | Format::Flamegraph | Format::Pprof) {
        format!("{} samples counted", r.samples_counted)
    } else {
        format!(
            "{} slices ({} of them still open at the end, closed there)",
            r.slices + r.closed_at_end,
            r.closed_at_end
        )
    };
    let (first, last) = r.span_ns;
    // the metadata of the last checkpoint knows when the capture began; without one
    // (killed in its first half second) the journal's own times tell
    let secs = if r.info.duration_s > 0.0 { r.info.duration_s } else { last.saturating_sub(first) as f64 / 1e9 };
    let mut s = format!(
        "repaired {} ({}) from its journal: {what}, {} threads, the first {secs:.2} s of the capture",
        paths.out.display(),
        r.header.format.name(),
        r.threads,
    );
    if let Some(c) = &r.cut {
        s += &format!("\nthe journal ended early: {c}");
    }
    s += &format!("\nopen it with {}", crate::output::how_to_open(r.header.format, &paths.out));
    Ok(s)
}

/// Our JSON has one event per line (`{...},`): keeps the lines up to the last whole event
/// and appends the closing lines, with a `recovered` note and no sources.
fn close_json_text(paths: &Paths) -> Result<String> {
    use std::io::{BufRead, Write};
    let partial = &paths.partial;
    let r = BufReader::with_capacity(1 << 16, File::open(partial).map_err(|e| io_error(partial, e))?);
    let mut out = io::BufWriter::new(File::create(&paths.out).map_err(|e| io_error(&paths.out, e))?);
    let mut lines = r.split(b'\n');
    let first = lines.next().transpose().map_err(|e| io_error(partial, e))?.unwrap_or_default();
    if first != b"{\"traceEvents\":[" {
        let _ = std::fs::remove_file(&paths.out);
        return Err(Error::Usage(format!("{}: not a VizTracer JSON written by vizattach", partial.display())));
    }
    let write = |out: &mut io::BufWriter<File>, b: &[u8]| out.write_all(b).map_err(|e| io_error(&paths.out, e));
    write(&mut out, b"{\"traceEvents\":[")?;
    let mut events = 0u64;
    for line in lines {
        let line = line.map_err(|e| io_error(partial, e))?;
        let event = line.strip_suffix(b",").unwrap_or(&line);
        // a line the kill cut short does not parse: it and anything after it go
        if serde_json::from_slice::<serde_json::Value>(event).map_or(true, |v| !v.is_object()) {
            break;
        }
        write(&mut out, if events == 0 { b"\n" } else { b",\n" })?;
        write(&mut out, event)?;
        events += 1;
    }
    let note = "closed by `vizattach repair` from a capture that did not finish, without its journal: \
                slices still open at the kill are missing";
    let tail = format!(
        "\n],\n\"displayTimeUnit\":\"ns\",\n\"viztracer_metadata\":{{\"version\":\"vizattach {}\",\"overflow\":false,\"recovered\":{}}},\n\"file_info\":{{\"files\":{{}},\"functions\":{{}}}}}}\n",
        env!("CARGO_PKG_VERSION"),
        serde_json::Value::from(note)
    );
    write(&mut out, tail.as_bytes())?;
    out.flush().map_err(|e| io_error(&paths.out, e))?;
    drop(out);
    std::fs::remove_file(partial).map_err(|e| io_error(partial, e))?;
    Ok(format!(
        "closed {} as text (no journal beside it): {events} events kept; slices still open at the kill are missing\nopen it with {}",
        paths.out.display(),
        crate::output::how_to_open(Format::Viztracer, &paths.out)
    ))
}

/// The file is a `Trace` message: packets, each `0x0a`, a varint length, the packet.
fn cut_to_whole_packets(path: &Path) -> Result<String> {
    let f = File::options().read(true).write(true).open(path).map_err(|e| io_error(path, e))?;
    let len = f.metadata().map_err(|e| io_error(path, e))?.len();
    let mut r = BufReader::with_capacity(1 << 16, &f);
    let (mut at, mut packets) = (0u64, 0u64);
    let whole = loop {
        let mut tag = [0u8];
        if r.read(&mut tag).map_err(|e| io_error(path, e))? == 0 {
            break at;
        }
        if tag[0] != 0x0a {
            return Err(Error::Usage(format!(
                "{}: not a Perfetto trace written by vizattach (byte {at} starts no packet)",
                path.display()
            )));
        }
        let Some((n, size)) = read_varint(&mut r).map_err(|e| io_error(path, e))? else { break at };
        let end = at + 1 + size as u64 + n;
        if end > len {
            break at;
        }
        r.seek(SeekFrom::Start(end)).map_err(|e| io_error(path, e))?;
        at = end;
        packets += 1;
    };
    if whole == len {
        return Ok(format!("{}: {packets} whole packets, nothing to repair; it opens as it is", path.display()));
    }
    f.set_len(whole).map_err(|e| io_error(path, e))?;
    Ok(format!(
        "{}: cut {} bytes of a packet the kill cut short; {packets} whole packets kept\nopen it with {}",
        path.display(),
        len - whole,
        crate::output::how_to_open(Format::Perfetto, path)
    ))
}

/// A varint and how many bytes it took; None if the file ends inside it.
fn read_varint(r: &mut impl Read) -> io::Result<Option<(u64, usize)>> {
    let mut v = 0u64;
    for i in 0..10 {
        let mut b = [0u8];
        if r.read(&mut b)? == 0 {
            return Ok(None);
        }
        v |= u64::from(b[0] & 0x7f) << (7 * i);
        if b[0] & 0x80 == 0 {
            return Ok(Some((v, i + 1)));
        }
    }
    Err(io::Error::new(io::ErrorKind::InvalidData, "a packet length longer than 10 bytes"))
}

fn io_error(path: &Path, e: io::Error) -> Error {
    Error::Io(format!("cannot repair {}: {e}", path.display()))
}
