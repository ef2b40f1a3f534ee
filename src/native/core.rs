//! `dump --core --native`: each thread's C stack, unwound from the registers the core
//! recorded (NT_PRSTATUS) and the stack memory it holds, by the same unwinder and
//! symbolizer as a live dump. Nothing is paused: a core is still by nature.

use super::modules;
use super::pause::{Captured, Regs, RED_ZONE, STACK_COPY};
use super::{unwind, NativeStacks};
use crate::process::core::Core;
use crate::process::memory::ReadMem;

pub fn capture(core: &Core, tids: &[i32]) -> NativeStacks {
    let debug_root = core.root.clone().unwrap_or_else(|| "/".into());
    let modules = modules::load(&core.maps, &|m| core.file_path(m), &debug_root);
    tids.iter().map(|&tid| (tid, one(core, &modules, tid))).collect()
}

fn one(core: &Core, modules: &[modules::Module], tid: i32) -> Result<Vec<unwind::NativeFrame>, String> {
    let t = core.thread(tid).ok_or("the core recorded no registers for this thread")?;
    let end = core
        .maps
        .iter()
        .find(|m| t.sp >= m.start && t.sp < m.end)
        .map(|m| m.end)
        .ok_or_else(|| format!("its stack pointer {:#x} is outside every mapping the core lists", t.sp))?;
    let start = t.sp.saturating_sub(RED_ZONE);
    let len = (end - start).min(STACK_COPY + RED_ZONE) as usize;
    let stack =
        core.memory.read_vec(start, len).map_err(|_| format!("the core does not hold its stack at {start:#x}"))?;
    let c = Captured { tid, regs: Regs { ip: t.ip, sp: t.sp, bp: t.bp }, stack_start: start, stack };
    Ok(unwind::unwind(&core.memory, modules, &c))
}
