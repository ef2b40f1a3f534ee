//! The per-version layout tables (python_versions/3.X.toml), compiled in. This is the
//! one place that knows which minor versions exist and how they differ; everything
//! else reads a `Layout`.

use serde::Deserialize;

macro_rules! tables {
    ($($minor:literal),*) => {
        &[$(($minor, include_str!(concat!("../../python_versions/", $minor, ".toml")))),*]
    };
}
const TABLES: &[(&str, &str)] = tables!("3.8", "3.9", "3.10", "3.11", "3.12", "3.13", "3.14", "3.15");

#[derive(Debug, Clone, Deserialize)]
pub struct About {
    pub minor: String,
    pub headers: String,
    pub source: String,
    pub tested: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FrameModel {
    /// 3.8-3.10: PyFrameObject linked by f_back, position in f_lasti.
    FrameObject,
    /// 3.11+: _PyInterpreterFrame linked by previous, position as an instruction pointer.
    InterpreterFrame,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LineTable {
    Lnotab,
    Linetable310,
    Locations,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GilHome {
    Runtime,
    Interp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DictModel {
    Legacy,
    Compact,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LongModel {
    ObSize,
    LvTag,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceAttrs {
    /// a dict pointer at tp_dictoffset
    InstanceDict,
    /// 3.11: values pointer at -4 words, dict pointer at -3 words
    ValuesPointer,
    /// 3.12: one tagged word at -3 words: values (low bit set) or dict
    DictOrValues,
    /// 3.13+: values inline after the object, dict pointer at -3 words
    InlineValues,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Model {
    pub frames: FrameModel,
    pub line_table: LineTable,
    pub lasti_unit: u64,
    pub frame_via_cframe: bool,
    pub gil: GilHome,
    pub debug_offsets: bool,
    pub dict: DictModel,
    pub long: LongModel,
    pub instance_attrs: InstanceAttrs,
    /// A frame waiting at a RESUME has already been reported to tracers as called or
    /// resumed (3.12 only: its instrumented RESUME fires the event before the eval
    /// breaker's GIL wait), so it is shown (docs/ARCHITECTURE.md, "Frames that have not
    /// started")
    #[serde(default)]
    pub resume_wait_in_call: bool,
    /// 3.11: the tracer hears of a call between two eval-breaker checks at the frame's
    /// first RESUME and makes the frame's object for it, so a frame there with a frame
    /// object waits inside its call, and is shown; one without waits before it
    #[serde(default)]
    pub resume_call_between_checks: bool,
    #[serde(default)]
    pub owner_generator: Option<u8>,
    /// gi_frame_state of a running generator, and of one not started yet (3.11+;
    /// suspended ones lie between)
    #[serde(default)]
    pub frame_executing: Option<i64>,
    #[serde(default)]
    pub frame_created: Option<i64>,
    #[serde(default)]
    pub owner_first_non_python: Option<u8>,
    #[serde(default)]
    pub stackref_tag_mask: u64,
    #[serde(default)]
    pub tp_flags_managed_dict: u64,
    #[serde(default)]
    pub tp_flags_inline_values: u64,
    /// co_flags bits: the function takes *args / **kwargs
    #[serde(default)]
    pub co_varargs: Option<u64>,
    #[serde(default)]
    pub co_varkeywords: Option<u64>,
    /// co_flags bits of code whose frame is resumed: generators, coroutines, async generators
    #[serde(default)]
    pub co_resumable: Option<u64>,
    /// co_localspluskinds bits (3.11+): the slot holds a cell / a free variable
    #[serde(default)]
    pub co_fast_cell: Option<u64>,
    #[serde(default)]
    pub co_fast_free: Option<u64>,
    /// Py_TPFLAGS_HEAPTYPE: a type defined in Python (never shown by value in --locals)
    #[serde(default)]
    pub tp_flags_heaptype: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RuntimeOffsets {
    pub interpreters_head: u64,
    pub interpreters_main: u64,
    #[serde(default)]
    pub gil_locked: Option<u64>,
    #[serde(default)]
    pub gil_holder: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct InterpOffsets {
    /// the interpreter's id (0 for the main one): what dump shows per frame
    pub id: u64,
    pub next: u64,
    pub threads_head: u64,
    pub modules: u64,
    #[serde(default)]
    pub gil_locked: Option<u64>,
    #[serde(default)]
    pub gil_holder: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TstateOffsets {
    pub next: u64,
    pub interp: u64,
    pub frame: u64,
    #[serde(default)]
    pub cframe_current_frame: Option<u64>,
    pub thread_id: u64,
    #[serde(default)]
    pub native_thread_id: Option<u64>,
    #[serde(default)]
    pub datastack_chunk: Option<u64>,
    #[serde(default)]
    pub datastack_top: Option<u64>,
    pub size: u64,
}

#[derive(Debug, Clone, Deserialize, Default)]
pub struct ChunkOffsets {
    pub previous: u64,
    pub size: u64,
    pub top: u64,
    pub data: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct FrameOffsets {
    pub previous: u64,
    pub code: u64,
    #[serde(default)]
    pub lasti: Option<u64>,
    #[serde(default)]
    pub instr: Option<u64>,
    #[serde(default)]
    pub owner: Option<u64>,
    pub size: u64,
    /// where the arguments, locals, cells and free variables start, one word each
    /// (3.8-3.10 PyFrameObject.f_localsplus, 3.11+ _PyInterpreterFrame.localsplus)
    #[serde(default)]
    pub localsplus: Option<u64>,
    /// the frame's module globals dict (f_globals)
    #[serde(default)]
    pub globals: Option<u64>,
    /// 3.11: the first frame of an evaluation-loop call
    #[serde(default)]
    pub is_entry: Option<u64>,
    /// 3.11: the frame's PyFrameObject, made on demand (by a tracer's call event, for one)
    #[serde(default)]
    pub frame_object: Option<u64>,
    /// a suspended caller's saved value stack: `stacktop` a slot index from localsplus
    /// (3.12-3.13), `stackpointer` an address (3.14+)
    #[serde(default)]
    pub stacktop: Option<u64>,
    #[serde(default)]
    pub stackpointer: Option<u64>,
}

/// Where a generator object keeps its frame (3.12+; see python/resume.rs).
#[derive(Debug, Clone, Deserialize, Default)]
pub struct GenOffsets {
    #[serde(default)]
    pub iframe: Option<u64>,
    #[serde(default)]
    pub frame_state: Option<u64>,
}

impl Layout {
    /// Where a generator frame's state byte (gi_frame_state) is, as a distance before
    /// the frame (3.11+): the byte every read of a frame starts at, so that one read
    /// says both what a frame holds and, for a generator's, whether it runs.
    pub fn frame_state_before(&self) -> Option<u64> {
        let (iframe, state) = (self.gen.iframe?, self.gen.frame_state?);
        iframe.checked_sub(state).filter(|&d| d <= FRAME_LEAD)
    }
}

/// Bytes read before every frame (3.11+), to take a generator's state with its frame.
pub const FRAME_LEAD: u64 = 8;

#[derive(Debug, Clone, Deserialize)]
pub struct CodeOffsets {
    pub filename: u64,
    pub name: u64,
    #[serde(default)]
    pub qualname: Option<u64>,
    pub firstlineno: u64,
    pub linetable: u64,
    #[serde(default)]
    pub code_adaptive: Option<u64>,
    #[serde(default)]
    pub firsttraceable: Option<u64>,
    /// co_code, a bytes object (3.8-3.10)
    #[serde(default)]
    pub code: Option<u64>,
    /// ob_size of the code object: the length of co_code_adaptive in code units (3.11+)
    #[serde(default)]
    pub ob_size: Option<u64>,
    #[serde(default)]
    pub argcount: Option<u64>,
    #[serde(default)]
    pub posonlyargcount: Option<u64>,
    #[serde(default)]
    pub kwonlyargcount: Option<u64>,
    #[serde(default)]
    pub flags: Option<u64>,
    /// co_nlocals and the co_cellvars tuple (3.8-3.10: cells follow the locals in f_localsplus)
    #[serde(default)]
    pub nlocals: Option<u64>,
    #[serde(default)]
    pub cellvars: Option<u64>,
    /// variable names: co_varnames and co_freevars tuples (3.8-3.10), co_localsplusnames (3.11+)
    #[serde(default)]
    pub varnames: Option<u64>,
    #[serde(default)]
    pub freevars: Option<u64>,
    #[serde(default)]
    pub localsplusnames: Option<u64>,
    /// co_nlocalsplus, co_localspluskinds (bytes) and co_exceptiontable (bytes), 3.11+
    #[serde(default)]
    pub nlocalsplus: Option<u64>,
    #[serde(default)]
    pub localspluskinds: Option<u64>,
    #[serde(default)]
    pub exceptiontable: Option<u64>,
    /// co_framesize: the words a frame of this code takes on the data stack (3.12+)
    #[serde(default)]
    pub framesize: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ObjectOffsets {
    pub ob_type: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TypeOffsets {
    pub tp_name: u64,
    pub tp_flags: u64,
    pub tp_basicsize: u64,
    pub tp_dictoffset: u64,
    pub ht_cached_keys: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct BytesOffsets {
    pub size: u64,
    pub data: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct UnicodeOffsets {
    pub length: u64,
    pub state: u64,
    pub ascii_data: u64,
    pub compact_data: u64,
    pub legacy_data: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LongOffsets {
    pub digits: u64,
    pub size: u64,
    pub digit_bits: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ModuleOffsets {
    pub dict: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DictOffsets {
    pub used: u64,
    pub keys: u64,
    pub values: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DictKeysOffsets {
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default)]
    pub log2_size: Option<u64>,
    #[serde(default)]
    pub log2_index_bytes: Option<u64>,
    #[serde(default)]
    pub kind: Option<u64>,
    pub nentries: u64,
    pub indices: u64,
}

#[derive(Debug, Clone, Deserialize, Default)]
pub struct DictValuesOffsets {
    pub values: u64,
    #[serde(default)]
    pub valid: Option<u64>,
}

/// Objects `dump --locals` shows by value (python/values.rs).
#[derive(Debug, Clone, Deserialize, Default)]
pub struct SeqOffsets {
    pub size: u64,
    pub items: u64,
}

#[derive(Debug, Clone, Deserialize, Default)]
pub struct FloatOffsets {
    pub value: u64,
}

#[derive(Debug, Clone, Deserialize, Default)]
pub struct SetOffsets {
    pub used: u64,
    pub mask: u64,
    pub table: u64,
    pub entry_size: u64,
}

#[derive(Debug, Clone, Deserialize, Default)]
pub struct CellOffsets {
    pub r#ref: u64,
}

/// struct _gil_runtime_state: its extent, found from the holder field's address.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct GilOffsets {
    pub last_holder: u64,
    pub size: u64,
    /// how many times a thread other than the last holder took it
    #[serde(default)]
    pub switch_number: Option<u64>,
}

/// _thread.lock / _thread.RLock objects in both layouts (a semaphore pointer, or an
/// inline PyMutex; 0 where the version has none), and 3.13+'s parking-lot wait entry.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
pub struct LockOffsets {
    pub sem_size: u64,
    pub sem_mutex: u64,
    pub sem_locked: u64,
    pub pymutex_size: u64,
    pub pymutex: u64,
    pub rlock_sem_size: u64,
    pub rlock_sem_mutex: u64,
    pub rlock_sem_owner: u64,
    pub rlock_pymutex_size: u64,
    pub rlock_pymutex: u64,
    pub rlock_pymutex_owner: u64,
    pub wait_entry_addr: u64,
    pub wait_entry_sema: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DebugHeader {
    pub cookie: u64,
    pub version: u64,
    pub free_threaded: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Layout {
    pub about: About,
    pub model: Model,
    pub runtime: RuntimeOffsets,
    pub interp: InterpOffsets,
    pub tstate: TstateOffsets,
    #[serde(default)]
    pub chunk: ChunkOffsets,
    pub frame: FrameOffsets,
    #[serde(default)]
    pub gen: GenOffsets,
    pub code: CodeOffsets,
    pub object: ObjectOffsets,
    #[serde(rename = "type")]
    pub type_: TypeOffsets,
    pub bytes: BytesOffsets,
    pub unicode: UnicodeOffsets,
    pub long: LongOffsets,
    pub module: ModuleOffsets,
    pub dict: DictOffsets,
    pub dictkeys: DictKeysOffsets,
    #[serde(default)]
    pub dictvalues: DictValuesOffsets,
    #[serde(default)]
    pub tuple: SeqOffsets,
    #[serde(default)]
    pub list: SeqOffsets,
    #[serde(default)]
    pub float: FloatOffsets,
    #[serde(default)]
    pub set: SetOffsets,
    #[serde(default)]
    pub cell: CellOffsets,
    #[serde(default)]
    pub gil: GilOffsets,
    #[serde(default)]
    pub lock: LockOffsets,
    #[serde(default)]
    pub debug: Option<DebugHeader>,
    /// field name ("tstate.next") -> offset in _PyRuntime of the u64 that holds it
    #[serde(default)]
    pub debug_offsets: std::collections::BTreeMap<String, u64>,
}

impl Layout {
    pub fn for_minor(major: u32, minor: u32) -> Option<Layout> {
        let key = format!("{major}.{minor}");
        let (_, text) = TABLES.iter().find(|(m, _)| *m == key)?;
        Some(toml::from_str(text).unwrap_or_else(|e| panic!("python_versions/{key}.toml is malformed: {e}")))
    }

    /// Mutable access to a field by its table name, for overlaying the target's own offsets.
    pub fn field_mut(&mut self, name: &str) -> Option<&mut u64> {
        let (sec, f) = name.split_once('.')?;
        Some(match (sec, f) {
            ("runtime", "interpreters_head") => &mut self.runtime.interpreters_head,
            ("interp", "id") => &mut self.interp.id,
            ("interp", "next") => &mut self.interp.next,
            ("interp", "threads_head") => &mut self.interp.threads_head,
            ("interp", "modules") => &mut self.interp.modules,
            ("interp", "gil_locked") => self.interp.gil_locked.get_or_insert(0),
            ("interp", "gil_holder") => self.interp.gil_holder.get_or_insert(0),
            ("tstate", "next") => &mut self.tstate.next,
            ("tstate", "interp") => &mut self.tstate.interp,
            ("tstate", "frame") => &mut self.tstate.frame,
            ("tstate", "thread_id") => &mut self.tstate.thread_id,
            ("tstate", "native_thread_id") => self.tstate.native_thread_id.get_or_insert(0),
            ("tstate", "datastack_chunk") => self.tstate.datastack_chunk.get_or_insert(0),
            ("tstate", "datastack_top") => self.tstate.datastack_top.get_or_insert(0),
            ("tstate", "size") => &mut self.tstate.size,
            ("frame", "previous") => &mut self.frame.previous,
            ("frame", "code") => &mut self.frame.code,
            ("frame", "instr") => self.frame.instr.get_or_insert(0),
            ("frame", "owner") => self.frame.owner.get_or_insert(0),
            ("frame", "size") => &mut self.frame.size,
            ("frame", "localsplus") => self.frame.localsplus.get_or_insert(0),
            ("code", "filename") => &mut self.code.filename,
            ("code", "name") => &mut self.code.name,
            ("code", "qualname") => self.code.qualname.get_or_insert(0),
            ("code", "firstlineno") => &mut self.code.firstlineno,
            ("code", "linetable") => &mut self.code.linetable,
            ("code", "code_adaptive") => self.code.code_adaptive.get_or_insert(0),
            ("code", "argcount") => self.code.argcount.get_or_insert(0),
            ("code", "localspluskinds") => self.code.localspluskinds.get_or_insert(0),
            ("object", "ob_type") => &mut self.object.ob_type,
            ("type", "tp_flags") => &mut self.type_.tp_flags,
            ("dict", "keys") => &mut self.dict.keys,
            ("dict", "values") => &mut self.dict.values,
            ("bytes", "size") => &mut self.bytes.size,
            ("bytes", "data") => &mut self.bytes.data,
            ("unicode", "state") => &mut self.unicode.state,
            ("unicode", "length") => &mut self.unicode.length,
            ("unicode", "ascii_data") => &mut self.unicode.ascii_data,
            ("long", "size") => &mut self.long.size,
            ("long", "digits") => &mut self.long.digits,
            _ => return None,
        })
    }
}

/// Every minor version we have a table for, with how it was checked.
pub fn all() -> Vec<Layout> {
    TABLES
        .iter()
        .map(|(m, _)| {
            let (a, b) = m.split_once('.').unwrap();
            Layout::for_minor(a.parse().unwrap(), b.parse().unwrap()).unwrap()
        })
        .collect()
}

pub fn supported_list() -> String {
    let first = TABLES.first().map(|t| t.0).unwrap_or("");
    let last = TABLES.last().map(|t| t.0).unwrap_or("");
    format!("CPython {first} to {last}, default (GIL) builds, final releases (see `vizattach versions`)")
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_table_parses_and_names_its_minor() {
        for (m, _) in super::TABLES {
            let (a, b) = m.split_once('.').unwrap();
            let l = super::Layout::for_minor(a.parse().unwrap(), b.parse().unwrap()).unwrap();
            assert_eq!(&l.about.minor, m);
            for k in l.debug_offsets.keys() {
                let mut l2 = l.clone();
                assert!(l2.field_mut(k).is_some(), "{m}: debug offset {k} has no field");
            }
        }
    }
}
