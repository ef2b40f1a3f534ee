//! Unwinding one thread's C stack from its registers and the copy of its stack
//! (native/pause.rs), after the thread was resumed. Each step uses the DWARF call-frame
//! information of the module holding the return address (.eh_frame through its
//! .eh_frame_hdr index, or .debug_frame), and frame pointers where a module has none.
//! x86-64 only (the registers and their DWARF numbers are x86-64's).

use super::modules::Module;
use super::pause::Captured;
use crate::process::memory::ReadMem;
use gimli::{
    BaseAddresses, CfaRule, DebugFrame, EhFrame, EhFrameHdr, LittleEndian, Register, RegisterRule, UnwindContext,
    UnwindSection, X86_64,
};

/// Deeper than this is a loop in what we read.
const MAX_FRAMES: usize = 512;

#[derive(Debug, Clone)]
pub struct NativeFrame {
    /// the instruction pointer (innermost frame) or return address
    pub address: u64,
    pub function: Option<String>,
    pub library: Option<String>,
    /// source position, where debug information exists
    pub file: Option<String>,
    pub line: Option<u32>,
    /// inlined into the next frame (same address; no call of its own)
    pub inlined: bool,
}

/// Reads a word from the stack copy, or from the target's memory outside it.
struct StackMem<'a> {
    c: &'a Captured,
    rest: &'a dyn ReadMem,
}

impl StackMem<'_> {
    fn word(&self, addr: u64) -> Option<u64> {
        let off = usize::try_from(addr.checked_sub(self.c.stack_start)?).ok()?;
        match self.c.stack.get(off..off.checked_add(8)?) {
            Some(b) => Some(u64::from_le_bytes(b.try_into().ok()?)),
            None => self.rest.read_u64(addr).ok(),
        }
    }
}

/// The rule for one step: where the caller's frame (CFA) is and where its registers are.
struct Step {
    cfa: u64,
    ra: Option<u64>,
    bp: Option<u64>,
}

/// The thread's C stack, innermost first. `rest`: the target's memory, for what the
/// stack copy does not hold.
pub fn unwind(rest: &dyn ReadMem, modules: &[Module], c: &Captured) -> Vec<NativeFrame> {
    let mem = StackMem { c, rest };
    let mut ctx = Box::new(UnwindContext::new());
    let (mut ip, mut sp, mut bp) = (c.regs.ip, c.regs.sp, c.regs.bp);
    let mut out = Vec::new();
    for depth in 0..MAX_FRAMES {
        let module = modules.iter().find(|m| m.contains(if depth == 0 { ip } else { ip.wrapping_sub(1) }));
        let library = module.map(|m| m.file_name().to_string());
        match module {
            Some(m) => {
                for l in m.locate(if depth == 0 { ip } else { ip - 1 }) {
                    let (function, file, line, inlined) = (l.function, l.file, l.line, l.inlined);
                    out.push(NativeFrame { address: ip, function, library: library.clone(), file, line, inlined });
                }
            }
            None => {
                out.push(NativeFrame { address: ip, function: None, library, file: None, line: None, inlined: false })
            }
        }
        let Some(module) = module else { break };
        // a return address points after the call: look up the call itself
        let lookup = if depth == 0 { ip } else { ip - 1 };
        let step = match cfi_step(module, lookup, sp, bp, &mem, &mut ctx) {
            Some(s) => s,
            None => {
                // frame pointers: [bp] is the caller's bp, [bp+8] the return address
                if bp == 0 || bp < sp {
                    break;
                }
                Step { cfa: bp.wrapping_add(16), ra: mem.word(bp.wrapping_add(8)), bp: mem.word(bp) }
            }
        };
        let Some(ra) = step.ra.filter(|&r| r != 0) else { break };
        if step.cfa <= sp && depth > 0 {
            break; // the stack grows down: a caller's frame is always above its callee's
        }
        ip = ra;
        sp = step.cfa;
        if let Some(b) = step.bp {
            bp = b;
        }
    }
    out
}

fn cfi_step(m: &Module, addr: u64, sp: u64, bp: u64, mem: &StackMem, ctx: &mut UnwindContext<usize>) -> Option<Step> {
    let svma = addr.wrapping_sub(m.bias);
    let mut bases = BaseAddresses::default().set_text(m.text_vaddr);
    if let Some(eh) = &m.eh_frame {
        let section = EhFrame::new(&eh.data, LittleEndian);
        bases = bases.set_eh_frame(eh.vaddr);
        let fde = match &m.eh_frame_hdr {
            Some(hdr) => {
                bases = bases.set_eh_frame_hdr(hdr.vaddr);
                EhFrameHdr::new(&hdr.data, LittleEndian)
                    .parse(&bases, 8)
                    .ok()
                    .and_then(|h| h.table()?.fde_for_address(&section, &bases, svma, EhFrame::cie_from_offset).ok())
            }
            None => section.fde_for_address(&bases, svma, EhFrame::cie_from_offset).ok(),
        };
        if let Some(fde) = fde {
            if let Ok(row) = fde.unwind_info_for_address(&section, &bases, ctx, svma) {
                return apply(row.cfa(), row.register(X86_64::RA), row.register(X86_64::RBP), sp, bp, mem);
            }
        }
    }
    if let Some(df) = &m.debug_frame {
        let mut section = DebugFrame::new(&df.data, LittleEndian);
        section.set_address_size(8);
        let fde = section.fde_for_address(&bases, svma, DebugFrame::cie_from_offset).ok()?;
        let row = fde.unwind_info_for_address(&section, &bases, ctx, svma).ok()?;
        return apply(row.cfa(), row.register(X86_64::RA), row.register(X86_64::RBP), sp, bp, mem);
    }
    None
}

fn apply(
    cfa: &CfaRule<usize>,
    ra: RegisterRule<usize>,
    bp_rule: RegisterRule<usize>,
    sp: u64,
    bp: u64,
    mem: &StackMem,
) -> Option<Step> {
    let base = |r: Register| -> Option<u64> {
        match r {
            X86_64::RSP => Some(sp),
            X86_64::RBP => Some(bp),
            _ => None, // other registers are not tracked
        }
    };
    let cfa = match cfa {
        CfaRule::RegisterAndOffset { register, offset } => base(*register)?.wrapping_add(*offset as u64),
        CfaRule::Expression(_) => return None,
    };
    let ra = match ra {
        RegisterRule::Offset(o) => mem.word(cfa.wrapping_add(o as u64)),
        RegisterRule::Undefined => None, // the outermost frame (_start, clone3)
        _ => return None,
    };
    let bp = match bp_rule {
        RegisterRule::Offset(o) => mem.word(cfa.wrapping_add(o as u64)),
        _ => None, // unchanged
    };
    Some(Step { cfa, ra, bp })
}
