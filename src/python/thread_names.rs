//! Thread names as Python knows them: threading._active maps each thread's ident to its
//! Thread object, whose _name is what the user gave it.
//!
//! Finding `_active` means looking `threading` up in sys.modules and `_active` in the
//! module's dict, one read per key compared: hundreds of reads in a real program (a
//! 3.12 http.server under VizTracer: 300-600 us). The sampler names every new thread, so
//! it keeps where `_active` is (`ActiveDict`) and reads only the names it lacks. Before
//! that, a thread whose outermost frame is `Thread._bootstrap` is named from that frame's
//! `self` (`is_bootstrap`, `thread_object_name`; the sampler takes `self` from its copy
//! of the frame): it runs before `_active` holds the thread, so threads that live less
//! than a lookup's retry get their names too.

use super::discover::Target;
use super::objects::{dict_get, dict_items, instance_attr, read_u64_int};
use super::strings::read_unicode;
use crate::process::memory::{ReadMem, ReadResult};
use std::collections::HashMap;

/// Where one interpreter's `threading._active` was found, and the type it had then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActiveDict {
    pub dict: u64,
    ob_type: u64,
}

impl ActiveDict {
    /// Looks `threading._active` up. None when threading was never imported.
    pub fn find(mem: &dyn ReadMem, t: &Target, interp: u64) -> ReadResult<Option<ActiveDict>> {
        let l = &t.layout;
        let modules = mem.read_u64(interp + l.interp.modules)?;
        if modules == 0 {
            return Ok(None);
        }
        let Some(threading) = dict_get(mem, l, modules, "threading")? else {
            return Ok(None);
        };
        let module_dict = mem.read_u64(threading + l.module.dict)?;
        let Some(dict) = dict_get(mem, l, module_dict, "_active")? else {
            return Ok(None);
        };
        Ok(Some(ActiveDict { dict, ob_type: mem.read_u64(dict + l.object.ob_type)? }))
    }

    /// Whether the object found is still there: a dict of the same type (the module keeps
    /// `_active` for its whole life; a freed one would have been reused by something else).
    pub fn still_there(&self, mem: &dyn ReadMem, t: &Target) -> bool {
        mem.read_u64(self.dict + t.layout.object.ob_type).is_ok_and(|ty| ty == self.ob_type)
    }

    /// The names of the threads among `idents` that `_active` holds (all when `idents` is
    /// None). Only their Thread objects are read.
    pub fn names(&self, mem: &dyn ReadMem, t: &Target, idents: Option<&[u64]>) -> ReadResult<HashMap<u64, String>> {
        let l = &t.layout;
        let mut names = HashMap::new();
        for (key, thread) in dict_items(mem, l, self.dict)? {
            let Some(ident) = read_u64_int(mem, l, key)? else {
                continue;
            };
            if idents.is_some_and(|wanted| !wanted.contains(&ident)) {
                continue;
            }
            if let Some(name) = thread_object_name(mem, t, thread)? {
                names.insert(ident, name);
            }
        }
        Ok(names)
    }
}

/// Whether a code object (its qualname on 3.11+, its name before, and its file) is
/// `threading.Thread._bootstrap`, the outermost frame of every thread `threading` starts.
pub fn is_bootstrap(name: &str, filename: &str) -> bool {
    (name == "Thread._bootstrap" || name == "_bootstrap") && filename.ends_with("threading.py")
}

/// The `_name` of a Thread object.
pub fn thread_object_name(mem: &dyn ReadMem, t: &Target, thread: u64) -> ReadResult<Option<String>> {
    let l = &t.layout;
    match instance_attr(mem, l, thread, "_name")? {
        Some(name) => Ok(read_unicode(mem, l, name).ok()),
        None => Ok(None),
    }
}

/// ident (pthread_t) -> name, for every thread the threading module knows. Empty when
/// threading was never imported.
pub fn read(mem: &dyn ReadMem, t: &Target, interp: u64) -> ReadResult<HashMap<u64, String>> {
    match ActiveDict::find(mem, t, interp)? {
        Some(active) => active.names(mem, t, None),
        None => Ok(HashMap::new()),
    }
}
