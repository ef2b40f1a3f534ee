//! Finding the interpreter inside a process: which binary holds the runtime, where
//! `_PyRuntime` is in memory, which version it is, and its layout.

use super::layout::Layout;
use super::version::Version;
use super::{debug_offsets, scan};
use crate::error::{Error, Result};
use crate::process::elf::ElfInfo;
use crate::process::image::Image;
use crate::process::MapEntry;

/// Everything the reader needs to know about the target's interpreter.
pub struct Target {
    pub version: Version,
    pub layout: Layout,
    pub runtime: u64,
    /// Address of PyCode_Type: a frame's code object must have this type.
    pub code_type: u64,
    /// The executable as the target sees it.
    pub executable: String,
    /// The libpython the runtime lives in, when it is not the executable.
    pub libpython: Option<String>,
    /// Differences between our table and the target's _Py_DebugOffsets (for --verbose).
    pub notes: Vec<String>,
}

struct Candidate<'a> {
    map: &'a MapEntry,
    elf: ElfInfo,
    is_lib: bool,
}

/// How to find `_PyRuntime`: by the binary's symbols and sections (and by scanning only
/// if those are missing), or by scanning only (to exercise the fallback).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discovery {
    Symbols,
    Scan,
}

pub fn discover(image: &dyn Image, how: Discovery) -> Result<Target> {
    let candidates = candidates(image)?;
    let exe_display = image.exe().trim_end_matches(" (deleted)").to_string();
    let by_symbol = match how {
        Discovery::Symbols => {
            candidates.iter().find_map(|c| runtime_vaddr(&c.elf).map(|r| (c, c.elf.to_memory(r, c.map.start))))
        }
        Discovery::Scan => None,
    };
    let found = by_symbol.or_else(|| {
        // A stripped Python: look for a runtime whose structures hold together.
        candidates.iter().find_map(|c| {
            let (major, minor) = minor_hint(image.memory(), c)?;
            let layout = Layout::for_minor(major, minor)?;
            scan::find_runtime(image, c.map, &layout).map(|r| (c, r))
        })
    });
    let Some((cand, runtime)) = found else {
        if let Some(c) = candidates.first() {
            // A Python binary we cannot read: say what we know instead of guessing.
            if let Some(v) = version_from_name(c.map.file_name()) {
                let why = match how {
                    Discovery::Symbols => format!("{} has no _PyRuntime symbol or .PyRuntime section", c.map.path),
                    Discovery::Scan => format!("no runtime found by scanning the data of {}", c.map.path),
                };
                return Err(Error::UnsupportedVersion { version: format!("{}.{}", v.0, v.1), why });
            }
        }
        return Err(image.not_python());
    };
    let base = cand.map.start;
    let mem = image.memory();

    let version = if let Some((vaddr, _)) = cand.elf.symbol("Py_Version") {
        let hex = mem.read_u64(cand.elf.to_memory(vaddr, base)).map_err(|e| image.read_error(e))?;
        Version::from_hex(hex & 0xffff_ffff)
    } else {
        // Before 3.11 nothing exports the version: the file name or PY_VERSION in .rodata
        // give the minor (enough to pick a layout), sys.version gives the rest.
        let rodata = cand.elf.find_version_string(version_from_name(cand.map.file_name()).map(|v| v.1));
        let minor = version_from_name(cand.map.file_name())
            .or_else(|| rodata.as_deref().and_then(Version::parse).map(|v| (v.major, v.minor)))
            .ok_or_else(|| Error::UnsupportedVersion {
                version: "unknown".into(),
                why: format!("no version information found in {}", cand.map.path),
            })?;
        let from_sys = Layout::for_minor(minor.0, minor.1)
            .and_then(|l| sys_version(mem, &l, runtime))
            .filter(|v| (v.major, v.minor) == minor);
        from_sys.or_else(|| rodata.as_deref().and_then(Version::parse)).unwrap_or(Version {
            major: minor.0,
            minor: minor.1,
            micro: 0,
            level: 0xF,
            serial: 0,
        })
    };
    if version.major != 3 {
        return Err(Error::UnsupportedVersion { version: version.to_string(), why: "not CPython 3".into() });
    }
    let mut layout = Layout::for_minor(version.major, version.minor).ok_or_else(|| {
        Error::UnsupportedVersion {
            // without a table we could not read sys.version, so only the minor is known
            version: format!("{}.{}", version.major, version.minor),
            why: "no layout table for this minor version".into(),
        }
    })?;
    if !version.is_final() && !layout.model.debug_offsets {
        return Err(Error::UnsupportedVersion {
            version: version.to_string(),
            why: "pre-releases change layouts and this one does not describe itself (_Py_DebugOffsets is 3.13+)".into(),
        });
    }
    let mut notes = Vec::new();
    if layout.model.debug_offsets {
        notes = debug_offsets::apply(mem, runtime, &version, &mut layout).map_err(|e| match e {
            debug_offsets::Problem::Read(r) => image.read_error(r),
            debug_offsets::Problem::Refuse(why) => Error::UnsupportedVersion { version: version.to_string(), why },
        })?;
    }
    let code_type = match (how, cand.elf.symbol("PyCode_Type")) {
        (Discovery::Symbols, Some((v, _))) => cand.elf.to_memory(v, base),
        _ => scan::find_code_type(mem, &layout, runtime).ok_or_else(|| {
            Error::Inconsistent(format!(
                "{} exports no PyCode_Type and no running frame showed it; try again while the program runs Python code",
                cand.map.path
            ))
        })?,
    };
    Ok(Target {
        version,
        layout,
        runtime,
        code_type,
        executable: exe_display,
        libpython: cand.is_lib.then(|| cand.map.path.trim_end_matches(" (deleted)").to_string()),
        notes,
    })
}

/// The runtime lives in libpython when one is loaded (shared builds, embedders),
/// otherwise in the executable. Each candidate is the mapping of file offset 0.
fn candidates(image: &dyn Image) -> Result<Vec<Candidate<'_>>> {
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let libs = image.maps().iter().filter(|m| m.offset == 0 && is_libpython(m.file_name()));
    let exe = image.maps().iter().filter(|m| m.offset == 0 && m.path == image.exe());
    for (map, is_lib) in libs.map(|m| (m, true)).chain(exe.map(|m| (m, false))) {
        if !seen.insert(&map.path) {
            continue;
        }
        let path = image.file_path(map);
        match ElfInfo::open(&path) {
            Ok(elf) => out.push(Candidate { map, elf, is_lib }),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                return Err(Error::PermissionDenied { pid: image.pid(), what: format!("{}", path.display()) })
            }
            Err(_) => continue,
        }
    }
    Ok(out)
}

/// The version a candidate binary says it is, before any layout is known.
fn minor_hint(mem: &dyn crate::process::memory::ReadMem, c: &Candidate) -> Option<(u32, u32)> {
    if let Some((vaddr, _)) = c.elf.symbol("Py_Version") {
        if let Ok(hex) = mem.read_u64(c.elf.to_memory(vaddr, c.map.start)) {
            let v = Version::from_hex(hex & 0xffff_ffff);
            return Some((v.major, v.minor));
        }
    }
    version_from_name(c.map.file_name())
        .or_else(|| c.elf.find_version_string(None).as_deref().and_then(Version::parse).map(|v| (v.major, v.minor)))
}

/// sys.version of the main interpreter, read through sys.modules.
fn sys_version(mem: &dyn crate::process::memory::ReadMem, l: &Layout, runtime: u64) -> Option<Version> {
    use super::objects::dict_get;
    let interp = mem.read_u64(runtime + l.runtime.interpreters_main).ok()?;
    let modules = mem.read_u64(interp + l.interp.modules).ok()?;
    let sys = dict_get(mem, l, modules, "sys").ok()??;
    let sys_dict = mem.read_u64(sys + l.module.dict).ok()?;
    let v = dict_get(mem, l, sys_dict, "version").ok()??;
    let text = super::strings::read_unicode(mem, l, v).ok()?;
    Version::parse(text.split_whitespace().next()?)
}

fn runtime_vaddr(elf: &ElfInfo) -> Option<u64> {
    elf.symbol("_PyRuntime").map(|s| s.0).or_else(|| elf.section(".PyRuntime").map(|s| s.0))
}

fn is_libpython(name: &str) -> bool {
    name.starts_with("libpython3.") && name.contains(".so")
}

/// (3, 11) from "python3.11", "libpython3.11.so.1.0", "python3.13t".
fn version_from_name(name: &str) -> Option<(u32, u32)> {
    let i = name.find("python3.")?;
    let rest = &name[i + "python3.".len()..];
    let n = rest.bytes().take_while(|c| c.is_ascii_digit()).count();
    Some((3, rest[..n].parse().ok()?))
}

#[cfg(test)]
mod tests {
    #[test]
    fn names() {
        assert_eq!(super::version_from_name("libpython3.11.so.1.0"), Some((3, 11)));
        assert_eq!(super::version_from_name("python3.9"), Some((3, 9)));
        assert_eq!(super::version_from_name("python"), None);
        assert!(super::is_libpython("libpython3.11.so.1.0"));
        assert!(!super::is_libpython("libpthread.so.0"));
    }
}
