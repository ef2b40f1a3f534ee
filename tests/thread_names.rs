//! Naming threads without looking `threading._active` up each time (src/python/
//! thread_names.rs): on every interpreter of the manifest, the fixture's own record of its
//! threads (ident -> name) is what `ActiveDict` reads, for all of them and for one asked
//! alone, and the lookup the sampler keeps is the bulk of the reads.
//!
//! (Before, the sampler looked `threading` up in sys.modules and `_active` in its dict at
//! every tick that found a new thread: 300-600 us per new thread on a 3.12 http.server
//! under VizTracer, a sampling gap at every request.)
//!
//!     cargo test --test thread_names -- --nocapture

mod common;

use common::*;
use std::cell::Cell;
use std::collections::HashMap;
use vizattach::process::image::Image;
use vizattach::process::memory::{ReadMem, ReadResult, Span};
use vizattach::python::snapshot::Reader;
use vizattach::python::thread_names::{self, ActiveDict};
use vizattach::python::threads;

/// The process, counting the spans it is asked to read.
struct Counting<'a> {
    inner: &'a dyn ReadMem,
    spans: Cell<usize>,
}

impl ReadMem for Counting<'_> {
    fn read_spans(&self, spans: &[Span], buf: &mut [u8]) -> ReadResult<usize> {
        self.spans.set(self.spans.get() + spans.len());
        self.inner.read_spans(spans, buf)
    }
}

fn check(interp: &Interpreter) -> Result<(), String> {
    let mut target = Target::start(interp, "main_fixture.py")?;
    let expected = target.wait_expected()?;
    let want: HashMap<u64, String> =
        expected.threads.iter().filter_map(|t| Some((t.thread_id?, t.name.clone()?))).collect();
    if want.len() < 2 {
        return Err(format!("the fixture recorded {} named threads", want.len()));
    }
    let reader = Reader::attach(target.pid as i32).map_err(|e| e.to_string())?;
    let (mem, t) = (reader.source.memory(), &reader.target);
    let addr = *threads::interpreters(mem, t).map_err(|e| format!("{e:?}"))?.last().ok_or("no interpreter")?;
    // (the fixture's threads are parked: `_active` holds still while it is read)
    let counting = Counting { inner: mem, spans: Cell::new(0) };
    let active = ActiveDict::find(&counting, t, addr).map_err(|e| format!("{e:?}"))?.ok_or("no threading._active")?;
    let finding = counting.spans.replace(0);
    if !active.still_there(mem, t) {
        return Err("a live _active is not still there".into());
    }

    let all = active.names(mem, t, None).map_err(|e| format!("{e:?}"))?;
    let mut missing: Vec<_> = want.iter().filter(|(id, name)| all.get(id) != Some(name)).collect();
    missing.sort();
    if !missing.is_empty() {
        return Err(format!("names read {all:?}, missing or wrong: {missing:?}"));
    }
    if thread_names::read(mem, t, addr).map_err(|e| format!("{e:?}"))? != all {
        return Err("thread_names::read and ActiveDict::names disagree".into());
    }

    // One thread asked alone: its name only, for a fraction of the reads of finding `_active`.
    let (&ident, name) = want.iter().find(|(_, n)| n.as_str() == "recurser").ok_or("no thread named recurser")?;
    let one = active.names(&counting, t, Some(&[ident])).map_err(|e| format!("{e:?}"))?;
    let naming = counting.spans.get();
    if one.len() != 1 || one.get(&ident) != Some(name) {
        return Err(format!("asked for {ident} ({name}) alone, got {one:?}"));
    }
    eprintln!("{}: finding _active read {finding} spans, naming one thread {naming}", interp.name);
    if naming * 3 > finding {
        return Err(format!(
            "naming one thread took {naming} spans against {finding} for finding _active: keeping it saves little"
        ));
    }
    Ok(())
}

#[test]
fn thread_names_come_from_a_kept_active_dict_on_every_interpreter() {
    let Some(targets) = dump_targets() else {
        return;
    };
    for_each_interpreter(&targets, 3, check);
}
