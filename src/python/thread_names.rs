//! Thread names as Python knows them: threading._active maps each thread's ident to its
//! Thread object, whose _name is what the user gave it.

use super::discover::Target;
use super::objects::{dict_get, dict_items, instance_attr, read_u64_int};
use super::strings::read_unicode;
use crate::process::memory::{ReadMem, ReadResult};
use std::collections::HashMap;

/// ident (pthread_t) -> name, for every thread the threading module knows. Empty when
/// threading was never imported.
pub fn read(mem: &dyn ReadMem, t: &Target, interp: u64) -> ReadResult<HashMap<u64, String>> {
    let l = &t.layout;
    let mut names = HashMap::new();
    let modules = mem.read_u64(interp + l.interp.modules)?;
    if modules == 0 {
        return Ok(names);
    }
    let Some(threading) = dict_get(mem, l, modules, "threading")? else {
        return Ok(names);
    };
    let module_dict = mem.read_u64(threading + l.module.dict)?;
    let Some(active) = dict_get(mem, l, module_dict, "_active")? else {
        return Ok(names);
    };
    for (key, thread) in dict_items(mem, l, active)? {
        let Some(ident) = read_u64_int(mem, l, key)? else {
            continue;
        };
        if let Some(name) = instance_attr(mem, l, thread, "_name")? {
            if let Ok(s) = read_unicode(mem, l, name) {
                names.insert(ident, s);
            }
        }
    }
    Ok(names)
}
