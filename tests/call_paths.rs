//! The paths of a call (src/python/paths.rs, `CallProofs::one_call`) against traced runs
//! of real code on every 3.11+ interpreter.
//!
//! Two samples of one frame at one call site are two calls when the second offset lies
//! on no path of the code from the first: a move back into a loop the frame had left, or
//! across branches that exclude each other. Each interpreter runs standard-library code
//! nobody here wrote (the pure-Python JSON encoder and decoder, tokenize, ast's
//! unparser and visitors, difflib, textwrap, the email parser, the regular-expression
//! compiler, pprint, configparser, string formatting) and two functions of our own (one
//! shaped like waitress' `poll`, a loop before a C call and one after; one with
//! try/except/finally and `with`) under sys.settrace with opcode events (3.11) or
//! sys.monitoring's INSTRUCTION events (3.12+), recording the offset of every
//! instruction each call of a function that is not a generator executes. For every code
//! object we require:
//! - soundness: any two offsets of one call, in order, are on one path
//!   (`one_call`). A violation is a split the timeline would make inside one call;
//! - use: offsets of two consecutive calls of `poll_like` from one site are mostly
//!   proved apart (the jump-range rule alone proves none of its moves back into its
//!   first loop).
//!
//!     cargo test --release --test call_paths -- --nocapture

mod common;

use common::traced::*;
use common::*;

const SCRIPT: &str = r#####"
import ast, configparser, difflib, email, io, json, json.decoder, json.encoder, os, pprint, re, select
import socket, string, sys, textwrap, tokenize
RES = {}
MAX_CALLS, MAX_OFFSETS = 200, 400
CUR = {}
ENDED = object()
PLAIN = lambda code: not (code.co_flags & 0x3a0)

def start(frame, offsets):
    calls = RES.setdefault(frame.f_code, [])
    if len(calls) < MAX_CALLS:
        calls.append((id(frame), offsets))
        CUR[frame] = offsets
    else:
        CUR[frame] = None

def tracer(frame, event, arg):
    if event != "call" or not PLAIN(frame.f_code):
        return None
    start(frame, [frame.f_lasti])
    frame.f_trace_opcodes = True
    return local

def local(frame, event, arg):
    if event == "return":
        CUR[frame] = ENDED
    elif event == "opcode":
        offsets = CUR.get(frame)
        if offsets is not None and offsets is not ENDED and len(offsets) < MAX_OFFSETS:
            offsets.append(frame.f_lasti)
    return local

A, B = socket.socketpair()

def poll_like(items, timeout):
    ready = []
    for x in items:
        if x % 3:
            ready.append(x)
    select.select([A], [], [], timeout)
    total = 0
    for x in ready:
        total += x
    return total

def guarded(path, n):
    out = 0
    try:
        with open(path) as f:
            for i, line in enumerate(f):
                if i == n:
                    raise KeyError(i)
                out += len(line)
    except KeyError as e:
        out = -out
    finally:
        out += 1
    return out

def work():
    for _ in range(30):
        poll_like(range(12), 0)
    for n in range(8):
        guarded(json.__file__, n * 7)
    src = open(tokenize.__file__).read()
    list(tokenize.generate_tokens(io.StringIO(src).readline))
    tree = ast.parse(src)
    ast.unparse(tree)
    ast.dump(tree)
    ast.NodeTransformer().visit(ast.parse(open(textwrap.__file__).read()))
    doc = {"a": [1, 2.5, {"b": [3, None, True, "x\n\u00e9"]}], "c": {"d": "e" * 5}}
    enc = json.encoder.JSONEncoder(indent=2, sort_keys=True)
    enc.c_make_encoder = None
    json.encoder.c_make_encoder = None
    text = "".join(json.encoder.JSONEncoder(indent=2).iterencode(doc))
    json.decoder.JSONDecoder().decode(text)
    json.decoder.py_scanstring('"ab\\n\\u00e9cd"', 1)
    a = src[:4000].splitlines(True)
    b = [l.replace("e", "E") if i % 5 == 0 else l for i, l in enumerate(a)]
    difflib.SequenceMatcher(None, a, b).get_opcodes()
    difflib.get_close_matches("tokenize", dir(tokenize))
    textwrap.fill(src[:6000], width=50)
    textwrap.dedent("    a\n      b\n    c\n")
    msg = email.message_from_string("From: a@b\nTo: c@d\nSubject: hi\nContent-Type: text/plain\n\nbody\n" * 1)
    msg.get_payload(); msg.items(); str(msg)
    for p in [r"(?P<x>a|b)+c{2,3}[^d-f]\d*?", r"^(\w+)\s*=\s*(.*?)\s*$", r"(?i)x(?=y)|z(?!w)"]:
        re.compile(p + "#")
    pprint.pformat({"k%d" % i: list(range(i)) for i in range(30)}, width=40)
    cp = configparser.ConfigParser()
    cp.read_string("[s]\na = 1\nb = %(a)s2\n[t]\nc = x\n")
    cp.get("s", "b")
    string.Template("$a and ${b}").substitute(a=1, b=2)
    "{0:>{1}} {x!r}".format("v", 8, x=[1])

if sys.version_info >= (3, 12):
    M, E = sys.monitoring, sys.monitoring.events
    def started(code, offset):
        if not PLAIN(code):
            return M.DISABLE
        start(sys._getframe(1), [])
    def left(code, offset, *rest):
        if PLAIN(code):
            CUR[sys._getframe(1)] = ENDED
    def instruction(code, offset):
        if not PLAIN(code):
            return M.DISABLE
        offsets = CUR.get(sys._getframe(1))
        if offsets is not None and offsets is not ENDED and len(offsets) < MAX_OFFSETS:
            offsets.append(offset)
    M.use_tool_id(3, "call-paths-test")
    M.register_callback(3, E.PY_START, started)
    for ev in (E.PY_RETURN, E.PY_UNWIND):
        M.register_callback(3, ev, left)
    M.register_callback(3, E.INSTRUCTION, instruction)
    M.set_events(3, E.PY_START | E.PY_RETURN | E.PY_UNWIND | E.INSTRUCTION)
    work()
    M.set_events(3, 0)
else:
    sys.settrace(tracer)
    work()
    sys.settrace(None)
"#####;

fn check(interp: &Interpreter) -> Result<(), String> {
    let (minor, traced) = traced_codes(interp, SCRIPT, false)?;
    let mut errors = Vec::new();
    let (mut codes, mut with_paths, mut checked) = (0usize, 0usize, 0usize);
    let (mut poll_pairs, mut poll_proved, mut poll_by_jumps) = (0usize, 0usize, 0usize);
    for Traced { name, qualname, proofs, runs } in &traced {
        codes += 1;
        with_paths += proofs.paths.is_some() as usize;
        for (_, offsets) in runs {
            if let Some((a, b)) = first_refused(offsets, &mut checked, |x, y| proofs.one_call(x, y)) {
                let call = &offsets[..offsets.len().min(60)];
                errors.push(format!("{name}: offsets {a} then {b} of one call proved apart (call {call:?})"));
            }
        }
        if qualname == "poll_like" {
            for w in runs.windows(2) {
                for &x in &w[0].1 {
                    for &y in &w[1].1 {
                        poll_pairs += 1;
                        poll_proved += !proofs.one_call(x, y) as usize;
                        poll_by_jumps += !proofs.offset_can_go_back(x, y) as usize;
                    }
                }
            }
        }
    }
    eprintln!(
        "{} ({minor}): {codes} code objects ({with_paths} with paths), {checked} pairs within calls, \
         poll_like: {poll_proved} of {poll_pairs} pairs across calls proved apart ({poll_by_jumps} by backward \
         jumps alone)",
        interp.name
    );
    if codes < 200 || checked < 100_000 {
        errors.push(format!("only {codes} code objects traced, {checked} pairs within calls"));
    }
    // poll_like's pairs across calls: its first loop's offsets after anything past the
    // select are moves back into a loop it left (a quarter of all pairs, against
    // 4 % by the backward jumps alone on 3.11-3.15)
    if poll_pairs == 0 || (poll_proved as f64) < 0.2 * poll_pairs as f64 || poll_proved <= poll_by_jumps {
        errors.push(format!(
            "poll_like: only {poll_proved} of {poll_pairs} pairs across calls proved apart ({poll_by_jumps} by \
             backward jumps alone)"
        ));
    }
    verdict(errors)
}

#[test]
fn call_paths_hold_on_traced_calls() {
    on_traceable_interpreters(check);
}
