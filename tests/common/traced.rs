//! Running a script that traces real code and prints, per code object, its bytecode and
//! the offsets each run of it executed (tests/yields.rs, tests/call_paths.rs), and
//! analysing those code objects as the sampler would.

use super::*;
use vizattach::python::bytecode::{analyze, CallProofs, CodeShape, Opcodes};

/// One traced code object: "file:qualname", its analysis, and its runs (frame id and
/// offsets in order), from the script's `codes` entries.
pub struct Traced {
    pub name: String,
    pub qualname: String,
    pub proofs: CallProofs,
    pub runs: Vec<(u64, Vec<i64>)>,
}

/// What a tracing script ends with: every code object of its `RES` (code -> runs, each a
/// frame id and the offsets it executed), printed as JSON.
const PRINT_CODES: &str = r#"
import json as _json, os as _os, sys as _sys
_out = []
for co, runs in RES.items():
    _out.append({
        "name": co.co_qualname if hasattr(co, "co_qualname") else co.co_name,
        "file": _os.path.basename(co.co_filename),
        "code": co.co_code.hex(),
        "table": co.co_exceptiontable.hex(),
        "runs": runs,
    })
print(_json.dumps({"minor": "%d.%d" % _sys.version_info[:2], "codes": _out}))
"#;

/// Runs `script` (which fills `RES`) on `interp` and analyses every code object it traced
/// (`resumable`: analysed as a generator's).
pub fn traced_codes(interp: &Interpreter, script: &str, resumable: bool) -> Result<(String, Vec<Traced>), String> {
    let mut cmd = python_command(interp);
    let out = cmd.args(["-I", "-c", &format!("{script}{PRINT_CODES}")]).output().map_err(|e| format!("spawn: {e}"))?;
    if !out.status.success() {
        return Err(format!("script failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let doc: Value = serde_json::from_slice(&out.stdout).map_err(|e| format!("bad JSON: {e}"))?;
    let minor = doc["minor"].as_str().ok_or("no minor")?.to_string();
    let ops = Opcodes::for_minor(&minor).ok_or("no opcode table")?;
    let mut codes = Vec::new();
    for c in doc["codes"].as_array().ok_or("no codes")? {
        let qualname = c["name"].as_str().unwrap_or("?").to_string();
        let code = hex(c["code"].as_str().unwrap_or(""));
        let table = hex(c["table"].as_str().unwrap_or(""));
        let shape = CodeShape { bytecode: &code, exception_table: &table, resumable, ..Default::default() };
        let runs = c["runs"]
            .as_array()
            .ok_or("a code object without runs")?
            .iter()
            .map(|r| {
                (r[0].as_u64().unwrap_or(0), r[1].as_array().into_iter().flatten().filter_map(|o| o.as_i64()).collect())
            })
            .collect();
        codes.push(Traced {
            name: format!("{}:{qualname}", c["file"].as_str().unwrap_or("?")),
            qualname,
            proofs: analyze(ops, &shape),
            runs,
        });
    }
    Ok((minor, codes))
}

/// The first pair of `offsets` (in order, over `pairs`) that `holds` refuses, if any:
/// one traced run's offsets that a proof would have taken for two runs. Counts the pairs
/// tried into `checked`.
pub fn first_refused(offsets: &[i64], checked: &mut usize, holds: impl Fn(i64, i64) -> bool) -> Option<(i64, i64)> {
    for (i, j) in pairs(offsets.len()) {
        *checked += 1;
        if !holds(offsets[i], offsets[j]) {
            return Some((offsets[i], offsets[j]));
        }
    }
    None
}

/// Index pairs (i < j) of a sequence of `n`: all of them for short ones, a grid of
/// about 80 x 80 for long ones.
pub fn pairs(n: usize) -> Vec<(usize, usize)> {
    let step = n.div_ceil(80).max(1);
    let mut v = Vec::new();
    for i in (0..n).step_by(step) {
        for j in (i + 1..n).step_by(step) {
            v.push((i, j));
        }
        if i + 1 < n {
            v.push((i, i + 1));
        }
    }
    v
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len() / 2).map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap_or(0)).collect()
}

/// Runs `check` on every 3.11+ interpreter of the manifest (the tracing scripts need
/// opcode events or sys.monitoring, and the analysis the 3.11+ bytecode).
pub fn on_traceable_interpreters(check: fn(&Interpreter) -> Result<(), String>) {
    let all: Vec<Interpreter> = analysis_targets().into_iter().filter(|i| i.version_tuple() >= (3, 11, 0)).collect();
    for_each_interpreter(&all, 4, check);
}

/// A check's verdict: the first 20 of its errors, if any.
pub fn verdict(mut errors: Vec<String>) -> Result<(), String> {
    errors.truncate(20);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("\n"))
    }
}
