//! The paths between yields (src/python/paths.rs) against traced runs of real
//! generators and coroutines on every 3.11+ interpreter.
//!
//! Each interpreter runs standard-library generators nobody here wrote (tokenize,
//! json's pure-Python encoder, ast.walk, os.walk, difflib's ndiff and unified_diff,
//! asyncio coroutines) and a few of our own (a compiled-template-like generator that
//! yields every few instructions, try/except/finally and with around yields, yield
//! from chains, throw()) under sys.settrace with opcode events (3.11) or
//! sys.monitoring's INSTRUCTION events (3.12+), recording the offset of every
//! instruction each resumption executes. For every code object we require:
//! - soundness: any two offsets of one resumption, in order, are on one path between
//!   yields (`one_resumption`, with `ran`: even a revisited offset). A violation is a
//!   split the timeline would make inside one VizTracer call;
//! - use: offsets of two consecutive resumptions of one frame are often proved apart,
//!   for the generators built to be (a floor per name, below).
//!
//!     cargo test --release --test yields -- --nocapture

mod common;

use common::traced::*;
use common::*;

const SCRIPT: &str = r#####"
import asyncio, ast, difflib, io, json, os, sys, tokenize
RES = {}
MAX_RESUMPTIONS, MAX_OFFSETS = 200, 400

ENDED = object()
CUR = {}

def start(frame, offsets):
    runs = RES.setdefault(frame.f_code, [])
    if len(runs) < MAX_RESUMPTIONS:
        runs.append((id(frame), offsets))
        CUR[frame] = offsets
    else:
        CUR[frame] = None

def tracer(frame, event, arg):
    if event != "call" or not (frame.f_code.co_flags & 0x3a0):
        return None
    start(frame, [frame.f_lasti])
    frame.f_trace_opcodes = True
    return local

# Some versions report a resumption to the frame's local trace function, or only by
# its opcodes: a return event (a yield too) ends the resumption in any case.
def local(frame, event, arg):
    if event == "call":
        start(frame, [frame.f_lasti])
    elif event == "return":
        CUR[frame] = ENDED
    elif event == "opcode":
        offsets = CUR.get(frame)
        if offsets is ENDED:
            offsets = []
            start(frame, offsets)
        if offsets is not None and len(offsets) < MAX_OFFSETS:
            offsets.append(frame.f_lasti)
    return local

def template(rows, escape=str):
    yield "<table>"
    for r in rows:
        yield '<tr class="'
        yield escape(r["cls"])
        yield '">'
        if r["note"]:
            yield "<td>"
            yield escape(r["note"])
            yield "</td>"
        for t in r["tags"]:
            yield escape(t)
            yield ", "
        yield "</tr>"
    yield "</table>"

def guarded(n):
    for i in range(n):
        try:
            with open(os.devnull) as f:
                yield i
                if i % 3 == 0:
                    raise ValueError(i)
        except ValueError:
            yield -i
        finally:
            i += 0

def inner(n):
    for i in range(n):
        yield i
    return n

def outer(n):
    total = yield from inner(n)
    yield total
    yield from inner(2)

def visit_like(node):
    if node % 2:
        yield from inner(node)
    else:
        yield from inner(node + 1)

async def leaf(i):
    await asyncio.sleep(0)
    return i

async def middle(n):
    s = 0
    for i in range(n):
        s += await leaf(i)
        if i % 4 == 0:
            await asyncio.sleep(0)
    return s

async def main():
    return sum(await asyncio.gather(*(middle(12) for _ in range(3))))

def work():
    rows = [{"cls": "odd" if i % 2 else "even", "note": "n" * (i % 3), "tags": ["a", "b"][: i % 3]}
            for i in range(40)]
    "".join(template(rows))
    list(guarded(12))
    g = guarded(6)
    next(g)
    g.throw(ValueError("in"))
    g.close()
    list(outer(5))
    for node in range(8):
        list(visit_like(node))
    src = open(tokenize.__file__).read()
    list(tokenize.generate_tokens(io.StringIO(src).readline))
    json.dumps({"a": [1, 2, {"b": [3, 4, None, True]}], "c": {"d": "e" * 5}} , indent=1)
    list(ast.walk(ast.parse(src)))
    list(os.walk(os.path.dirname(json.__file__)))
    a = src[:3000].splitlines(True)
    b = [l.replace("e", "E") if i % 5 == 0 else l for i, l in enumerate(a)]
    list(difflib.ndiff(a[:60], b[:60]))
    list(difflib.unified_diff(a, b))
    asyncio.run(main())

def resumed(code, offset, *rest):
    if not (code.co_flags & 0x3a0):
        return sys.monitoring.DISABLE
    start(sys._getframe(1), [])

def left(code, offset, *rest):
    if code.co_flags & 0x3a0:
        CUR[sys._getframe(1)] = ENDED

def instruction(code, offset):
    if not (code.co_flags & 0x3a0):
        return sys.monitoring.DISABLE
    frame = sys._getframe(1)
    offsets = CUR.get(frame)
    if offsets is ENDED:
        offsets = []
        start(frame, offsets)
    if offsets is not None and len(offsets) < MAX_OFFSETS:
        offsets.append(offset)

# 3.12.1's settrace ignores f_trace_opcodes set in the call event: 3.12+ use
# sys.monitoring, whose INSTRUCTION events report the offset each instruction runs at.
if sys.version_info >= (3, 12):
    M, E = sys.monitoring, sys.monitoring.events
    M.use_tool_id(3, "yields-test")
    for ev in (E.PY_START, E.PY_RESUME, E.PY_THROW):
        M.register_callback(3, ev, resumed)
    for ev in (E.PY_YIELD, E.PY_RETURN, E.PY_UNWIND):
        M.register_callback(3, ev, left)
    M.register_callback(3, E.INSTRUCTION, instruction)
    M.set_events(3, E.PY_START | E.PY_RESUME | E.PY_THROW | E.PY_YIELD | E.PY_RETURN | E.PY_UNWIND
                 | E.INSTRUCTION)
    work()
    M.set_events(3, 0)
else:
    sys.settrace(tracer)
    work()
    sys.settrace(None)
"#####;

/// Share of cross-resumption pairs proved apart, at least, for the generators built so
/// that most of their pairs are on no path between yields.
const FLOORS: &[(&str, f64)] = &[("template", 0.5), ("inner", 0.2)];

fn check(interp: &Interpreter) -> Result<(), String> {
    let (minor, traced) = traced_codes(interp, SCRIPT, true)?;
    let mut errors = Vec::new();
    let (mut codes, mut checked, mut cross, mut proved) = (0, 0usize, 0usize, 0usize);
    let (mut whole_checked, mut visit_pairs, mut visit_proved) = (0usize, 0usize, 0usize);
    let mut per_name: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for Traced { name, qualname, proofs, runs } in &traced {
        let Some(_) = proofs.paths.as_ref() else {
            errors.push(format!("{name}: no paths between yields were computed"));
            continue;
        };
        codes += 1;
        for (_, offsets) in runs {
            if let Some((a, b)) = first_refused(offsets, &mut checked, |x, y| proofs.one_resumption(x, y, true)) {
                let run = &offsets[..offsets.len().min(60)];
                errors
                    .push(format!("{name}: offsets {a} then {b} of one resumption proved apart (resumption {run:?})"));
            }
        }
        // One generator's whole call, its resumptions in order (`CUR` keeps every frame
        // alive, so a frame's id names one generator): any two offsets are on one path
        // through its yields (`one_call`), or the timeline would split a delegator that
        // only moved on.
        let mut whole: BTreeMap<u64, Vec<i64>> = BTreeMap::new();
        for (frame, offsets) in runs {
            whole.entry(*frame).or_default().extend(offsets);
        }
        for offsets in whole.values() {
            if let Some((a, b)) = first_refused(offsets, &mut whole_checked, |x, y| proofs.one_call(x, y)) {
                let call = &offsets[..offsets.len().min(60)];
                errors
                    .push(format!("{name}: offsets {a} then {b} of one generator's call proved apart (call {call:?})"));
            }
        }
        // two generators of `visit_like` one after the other, across its branches
        if qualname == "visit_like" {
            let gens: Vec<&Vec<i64>> = whole.values().collect();
            for w in gens.windows(2) {
                for &x in w[0].iter() {
                    for &y in w[1].iter() {
                        visit_pairs += 1;
                        visit_proved += !proofs.one_call(x, y) as usize;
                    }
                }
            }
        }
        // consecutive resumptions of one frame
        for w in runs.windows(2) {
            let ((f1, a), (f2, b)) = (&w[0], &w[1]);
            if f1 != f2 {
                continue;
            }
            let entry = per_name.entry(qualname.clone()).or_default();
            for &x in a.iter().step_by(a.len().div_ceil(40).max(1)) {
                for &y in b.iter().step_by(b.len().div_ceil(40).max(1)) {
                    cross += 1;
                    entry.0 += 1;
                    if !proofs.one_resumption(x, y, true) {
                        proved += 1;
                        entry.1 += 1;
                    }
                }
            }
        }
    }
    eprintln!(
        "{} ({minor}): {codes} generator code objects, {checked} pairs within resumptions, \
         {proved} of {cross} pairs across resumptions proved apart, {whole_checked} pairs within \
         generators' calls, visit_like: {visit_proved} of {visit_pairs} pairs across two generators \
         proved apart",
        interp.name
    );
    // a generator whose two `yield from` exclude each other, made again where the last
    // one lay: its offsets across the branches are two calls
    if visit_pairs == 0 || (visit_proved as f64) < 0.2 * visit_pairs as f64 {
        errors.push(format!("visit_like: only {visit_proved} of {visit_pairs} pairs across generators proved apart"));
    }
    for (name, floor) in FLOORS {
        match per_name.get(*name) {
            Some(&(n, p)) if n > 0 && p as f64 >= floor * n as f64 => {
                eprintln!("  {name}: {p} of {n} pairs across resumptions proved apart")
            }
            Some(&(n, p)) => errors.push(format!("{name}: only {p} of {n} pairs across resumptions proved apart")),
            None => errors.push(format!("{name}: never traced")),
        }
    }
    if codes < 10 || checked < 10_000 {
        errors.push(format!("only {codes} generator code objects traced, {checked} pairs within resumptions"));
    }
    verdict(errors)
}

#[test]
fn resumption_paths_hold_on_traced_generators() {
    on_traceable_interpreters(check);
}
