//! The bytecode analysis behind the call proofs (src/python/bytecode.rs) against each
//! interpreter's own `dis` view of real functions.
//!
//! Each interpreter compiles a set of functions (loops, nested loops, while True,
//! try/except/finally in loops, with, comprehensions, del of arguments, reassigned
//! arguments, *args/**kwargs, closures and cells, generators, coroutines, walrus, a long
//! function with more than 64 locals and EXTENDED_ARG jumps), runs some of them often
//! enough to be specialised (3.11+) and some under sys.setprofile and sys.monitoring
//! (3.12+: instrumented opcodes, INSTRUMENTED_LINE on one function), computes the truth
//! with `dis` (stores/deletes per slot, downward moves of the offset), prints its code
//! objects and stays alive. For every code object we then require:
//! - the analysis of co_code (the deoptimised view) to equal the truth exactly;
//! - the analysis of the bytes as they lie in memory (3.11+ co_code_adaptive,
//!   specialised and instrumented) to equal it too, unless an opcode hides the real
//!   instruction (INSTRUMENTED_LINE ...), where it must prove nothing the truth denies;
//! - the code cache's entry, read from the live process, to carry those same proofs.
//!
//!     cargo test --release --test bytecode -- --nocapture
//!
//! Interpreters: the host python3.11 always, plus every supported one in
//! $VIZATTACH_PYTHONS/manifest.json (a skip note without it, a failure under CI=true).

mod common;

use common::*;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use vizattach::process::memory::Memory;
use vizattach::python::bytecode::{analyze, CallProofs, CodeShape, Opcodes};
use vizattach::python::code::CodeCache;
use vizattach::python::layout::Layout;

const SCRIPT: &str = r#####"
import dis, json, opcode, sys, types
V = sys.version_info[:2]
SRC = '''
import contextlib
def loop(n):
    t = 0
    for i in range(n):
        t += i
    return t
def nested(a, b):
    s = 0
    for i in range(a):
        j = 0
        while j < b:
            s += i * j
            j += 1
    return s
def forever(q):
    while True:
        x = q.pop() if q else None
        if x is None:
            break
    return x
def try_in_loop(items):
    out = []
    for it in items:
        try:
            out.append(1 // it)
        except ZeroDivisionError as e:
            out.append(str(e))
        finally:
            out.append(0)
    return out
def finally_return(n):
    for i in range(n):
        try:
            if i > 3:
                return i
        finally:
            n -= 1
    return n
def with_stmt(n):
    with contextlib.suppress(KeyError) as c:
        for i in range(n):
            pass
    return c
def comps(xs, k):
    a = [x * k for x in xs]
    b = {x: y for x, y in zip(xs, a)}
    g = sum(x for x in xs)
    return a, b, g
def del_arg(a, b, *args, **kw):
    del a
    c = b
    del c
    return args, kw
def reassign(a, b, /, c, *, d=1):
    a = a + 1
    return a, b, c, d
def varargs(*args, **kwargs):
    return len(args) + len(kwargs)
def closure(x, y):
    z = 3
    def inner(w):
        nonlocal z
        z += w
        return x + z
    return inner
def gen(n):
    for i in range(n):
        yield i
    yield from range(n)
async def coro(n, it):
    t = 0
    for i in range(n):
        t += i
    async for v in it:
        t += v
    async with it as c:
        t += c
    return t
def walrus(xs):
    if (n := len(xs)) > 2:
        return n
    return [y for x in xs if (y := x * 2)]
def cell_comp(xs):
    return [lambda: x for x in xs]
def unbound_later(q):
    while q:
        item = q.pop()
        del item
    return q
'''
# >64 locals and a loop body long enough for EXTENDED_ARG jumps
SRC += "def big(a, b):\n    w = 0\n    while a > 0:\n        a -= 1\n" + "".join(
    "        v%d = a + %d\n        if v%d > 7:\n            w += v%d\n" % (i, i, i, i) for i in range(90)) + "    return w\n"
ns = {}
exec(compile(SRC, "bytecode_fixture.py", "exec"), ns)

def warm():
    for _ in range(300):
        ns["loop"](20); ns["nested"](3, 3); ns["forever"]([1, 2, None, 3]); ns["try_in_loop"]([1, 0, 2])
        ns["finally_return"](6); ns["with_stmt"](3); ns["comps"]([1, 2, 3], 2); ns["del_arg"](1, 2, 3, k=4)
        ns["reassign"](1, 2, 3, d=4); ns["varargs"](1, x=2); ns["closure"](1, 2)(3); list(ns["gen"](4))
        ns["walrus"]([1, 2]); ns["cell_comp"]([1, 2]); ns["unbound_later"]([1, 2, 3]); ns["big"](3, 0)
warm()
if V >= (3, 12):
    M = sys.monitoring
    E = M.events
    M.use_tool_id(4, "bytecode-test")
    branch = getattr(E, "BRANCH_LEFT", 0) | getattr(E, "BRANCH_RIGHT", 0) or E.BRANCH
    M.set_local_events(4, ns["loop"].__code__, E.JUMP | branch)
    M.set_local_events(4, ns["nested"].__code__, E.LINE)
    sys.setprofile(lambda *a: None)
    warm()
    sys.setprofile(None)
    # run once more with profiling on, so these stay instrumented while we are read
    sys.setprofile(lambda *a: None)
    ns["try_in_loop"]([1, 0]); ns["comps"]([1], 1); ns["with_stmt"](2)

HIDDEN = {opcode.opmap[n] for n in ("INSTRUMENTED_LINE", "INSTRUMENTED_INSTRUCTION", "ENTER_EXECUTOR") if n in opcode.opmap}
allname = getattr(dis, "_all_opname", opcode.opname)
deopmap = dict(getattr(dis, "deoptmap", {}) or {})
ice = getattr(opcode, "_inline_cache_entries", None)
def caches_of(op):
    name = allname[op]
    base = deopmap.get(name, name)
    if base.startswith("INSTRUMENTED_") and base[13:] in opcode.opmap:
        base = base[13:]
    if ice is None:
        return 0
    if hasattr(ice, "get"):
        return ice.get(base, 0)
    return ice[opcode.opmap[base]]

def hidden(raw):
    i = 0
    while i + 1 < len(raw):
        if raw[i] in HIDDEN:
            return True
        i += 2 + 2 * caches_of(raw[i])
    return False

def truth(co):
    ins = [i for i in dis.get_instructions(co) if i.opname != "CACHE"]
    n = len(co.co_code)
    ends = [ins[k + 1].offset for k in range(len(ins) - 1)] + [n]
    handlers = dis._parse_exception_table(co) if V >= (3, 11) else []
    written, cleared, jumps, reraises, setups = set(), set(), set(), [], []
    resumed = False
    jumpops = set(opcode.hasjrel) | set(opcode.hasjabs) | set(getattr(opcode, "hasjump", []))
    for k, i in enumerate(ins):
        end, name, arg = ends[k], i.opname, i.arg
        if name == "STORE_FAST":
            written.add(arg)
        elif name == "STORE_FAST_STORE_FAST":
            written |= {arg >> 4, arg & 15}
        elif name == "STORE_FAST_LOAD_FAST":
            written.add(arg >> 4)
        elif name in ("DELETE_FAST", "LOAD_FAST_AND_CLEAR"):
            written.add(arg); cleared.add(arg)
        elif name == "MAKE_CELL" and resumed:
            written.add(arg)
        elif name == "RESUME":
            resumed = True
        elif name == "YIELD_FROM":
            jumps.add((i.offset - 2, end))
        elif name == "CALL_FINALLY":
            jumps.add((end, n))
        elif name == "RERAISE" and arg and V >= (3, 10):
            reraises.append(end)
        if name.startswith("SETUP_"):
            setups.append(i.offset)
        if i.opcode in jumpops:
            target = getattr(i, "jump_target", None)
            if target is None:
                target = i.argval
            if target < end:
                jumps.add((target, end))
    for end in reraises:
        if V >= (3, 11):
            starts = [h.start for h in handlers if h.lasti and h.start < end]
        else:
            starts = [s for s in setups if s < end]
        if starts:
            jumps.add((min(starts), end))
    for h in handlers:
        if h.target < h.end:
            jumps.add((h.target, h.end))
    nargs = co.co_argcount + co.co_kwonlyargcount + bool(co.co_flags & 4) + bool(co.co_flags & 8)
    if V >= (3, 11):
        names = list(co.co_varnames) + [c for c in co.co_cellvars if c not in co.co_varnames] + list(co.co_freevars)
        kinds = [(0x20 if nm in co.co_varnames else 0) | (0x40 if nm in co.co_cellvars else 0)
                 | (0x80 if k >= len(names) - len(co.co_freevars) else 0) for k, nm in enumerate(names)]
        cells = {k for k, kd in enumerate(kinds) if kd & 0x40 and not kd & 0x80}
        plain = {k for k, kd in enumerate(kinds) if not kd & 0xc0}
    else:
        kinds = None
        cells = set(range(co.co_nlocals, co.co_nlocals + len(co.co_cellvars)))
        plain = set(range(co.co_nlocals))
    mask = lambda s: sum(1 << b for b in s if b < 64)
    fixed = mask((set(range(nargs)) | cells) - written)
    undeletable = mask(plain - cleared)
    resumes = [i.offset for i in ins if i.opname == "RESUME"]
    returns = [i.offset for i in ins if i.opname in ("RETURN_VALUE", "RETURN_CONST")]
    return kinds, {"fixed": fixed, "undeletable": undeletable, "back_jumps": sorted(jumps), "resumes": resumes,
                   "returns": returns}

codes = []
def collect(co):
    codes.append(co)
    for c in co.co_consts:
        if isinstance(c, types.CodeType):
            collect(c)
for name, f in ns.items():
    if isinstance(f, types.FunctionType):
        collect(f.__code__)

out = []
for co in codes:
    raw = co._co_code_adaptive if V >= (3, 11) else co.co_code
    kinds, t = truth(co)
    out.append({
        "name": co.co_qualname if V >= (3, 11) else co.co_name, "addr": id(co),
        "raw": raw.hex(), "deopt": co.co_code.hex(), "hidden": hidden(raw),
        "argcount": co.co_argcount, "kwonlyargcount": co.co_kwonlyargcount,
        "varargs": bool(co.co_flags & 4), "varkeywords": bool(co.co_flags & 8),
        "resumable": bool(co.co_flags & 0x3a0),
        "nlocals": co.co_nlocals, "ncells": len(co.co_cellvars), "kinds": kinds,
        "exceptiontable": co.co_exceptiontable.hex() if V >= (3, 11) else "",
        "truth": t,
    })
print(json.dumps({"code_type": id(types.CodeType), "minor": "%d.%d" % V, "codes": out}), flush=True)
sys.stdin.read()
"#####;

fn proofs_json(p: &CallProofs) -> String {
    format!(
        "fixed={:#x} undeletable={:#x} back_jumps={:?} resume_points={:?} return_points={:?}",
        p.fixed_slots, p.undeletable, p.back_jumps, p.resume_points, p.return_points
    )
}

fn truth_of(v: &Value) -> CallProofs {
    let t = &v["truth"];
    CallProofs {
        fixed_slots: t["fixed"].as_u64().unwrap(),
        undeletable: t["undeletable"].as_u64().unwrap(),
        back_jumps: t["back_jumps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p[0].as_i64().unwrap(), p[1].as_i64().unwrap()))
            .collect(),
        resume_points: t["resumes"].as_array().unwrap().iter().map(|o| o.as_i64().unwrap()).collect(),
        return_points: t["returns"].as_array().unwrap().iter().map(|o| o.as_i64().unwrap()).collect(),
        paths: None,
    }
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len() / 2).map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap()).collect()
}

/// `got` proves nothing that `truth` denies.
fn sound(got: &CallProofs, truth: &CallProofs, len: i64) -> bool {
    got.fixed_slots & !truth.fixed_slots == 0
        && got.undeletable & !truth.undeletable == 0
        && (-1..=len).all(|to| !truth.offset_can_go_back(len + 1, to) || got.offset_can_go_back(len + 1, to))
        && got.resume_points.iter().all(|o| truth.resume_points.contains(o))
        && got.return_points.iter().all(|o| truth.return_points.contains(o))
}

fn check(interp: &Interpreter) -> Result<(), String> {
    let mut cmd = python_command(interp);
    cmd.args(["-I", "-c", SCRIPT]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("spawn: {e}"))?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).map_err(|e| e.to_string())?;
    let result = (|| {
        if line.trim().is_empty() {
            return Err("no output from the interpreter".to_string());
        }
        let doc: Value = serde_json::from_str(&line).map_err(|e| format!("bad JSON: {e}"))?;
        let minor = doc["minor"].as_str().unwrap();
        let (a, b) = minor.split_once('.').unwrap();
        let layout = Layout::for_minor(a.parse().unwrap(), b.parse().unwrap()).ok_or("no layout")?;
        let ops = Opcodes::for_minor(minor).ok_or("no opcode table")?;
        let code_type = doc["code_type"].as_u64().unwrap();
        let mem = Memory::new(child.id() as i32);
        let mut cache = CodeCache::default();
        let (mut n, mut specialised, mut hidden, mut exact_raw) = (0, 0, 0, 0);
        let mut errors = Vec::new();
        for c in doc["codes"].as_array().unwrap() {
            n += 1;
            let name = c["name"].as_str().unwrap();
            let truth = truth_of(c);
            let raw = hex(c["raw"].as_str().unwrap());
            let deopt = hex(c["deopt"].as_str().unwrap());
            let kinds: Option<Vec<u8>> =
                c["kinds"].as_array().map(|k| k.iter().map(|x| x.as_u64().unwrap() as u8).collect());
            let table = hex(c["exceptiontable"].as_str().unwrap());
            let mut shape = CodeShape {
                bytecode: &deopt,
                argcount: c["argcount"].as_u64().unwrap() as u32,
                kwonlyargcount: c["kwonlyargcount"].as_u64().unwrap() as u32,
                varargs: c["varargs"].as_bool().unwrap(),
                resumable: c["resumable"].as_bool().unwrap(),
                varkeywords: c["varkeywords"].as_bool().unwrap(),
                nlocals: c["nlocals"].as_u64().unwrap() as u32,
                ncells: c["ncells"].as_u64().unwrap() as u32,
                kinds: kinds.as_deref(),
                cell_bit: 0x40,
                free_bit: 0x80,
                exception_table: &table,
            };
            let from_deopt = analyze(ops, &shape);
            // The truth is dis's view of offsets and slots. The paths between yields
            // (python/paths.rs) are checked against traced runs in tests/yields.rs; here
            // only for coming out the same from memory as from co_code.
            let bare = |p: &CallProofs| CallProofs { paths: None, ..p.clone() };
            if bare(&from_deopt) != truth {
                errors.push(format!(
                    "{name}: co_code analysis differs\n  got   {}\n  truth {}",
                    proofs_json(&from_deopt),
                    proofs_json(&truth)
                ));
            }
            shape.bytecode = &raw;
            let from_raw = analyze(ops, &shape);
            let is_hidden = c["hidden"].as_bool().unwrap();
            if !is_hidden && from_raw.paths != from_deopt.paths {
                errors.push(format!("{name}: paths between yields differ between memory and co_code"));
            }
            specialised += (raw != deopt) as usize;
            hidden += is_hidden as usize;
            if is_hidden {
                if !sound(&bare(&from_raw), &truth, deopt.len() as i64) {
                    errors.push(format!(
                        "{name}: in-memory analysis (hidden opcodes) proves too much: {}",
                        proofs_json(&from_raw)
                    ));
                }
            } else if bare(&from_raw) != truth {
                errors.push(format!(
                    "{name}: in-memory bytecode analysis differs\n  got   {}\n  truth {}",
                    proofs_json(&from_raw),
                    proofs_json(&truth)
                ));
            } else {
                exact_raw += 1;
            }
            match cache.get(&mem, &layout, code_type, c["addr"].as_u64().unwrap()) {
                Ok(info) if info.proofs == from_raw => {}
                Ok(info) => errors.push(format!(
                    "{name}: code cache read from the live process differs\n  got   {}\n  bytes {}",
                    proofs_json(&info.proofs),
                    proofs_json(&from_raw)
                )),
                Err(e) => errors.push(format!("{name}: code cache read failed: {e:?}")),
            }
        }
        eprintln!(
            "{} ({minor}): {n} code objects, {specialised} specialised/instrumented in memory, \
             {hidden} with hidden opcodes, {exact_raw} exact from memory",
            interp.name
        );
        if n < 20 {
            errors.push(format!("only {n} code objects"));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("\n"))
        }
    })();
    let _ = child.kill();
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    result.map_err(|e| format!("{e}\nstderr: {}", String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn call_proofs_match_dis_on_every_interpreter() {
    let all = analysis_targets();
    for_each_interpreter(&all, 4, check);
}
