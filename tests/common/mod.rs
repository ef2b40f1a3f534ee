//! Shared helpers for the vizattach integration tests: the interpreter manifest,
//! targets started in or out of a chroot (killed on drop), running vizattach, and
//! comparing its `dump --json` output with what a fixture recorded about itself.
#![allow(dead_code)]

pub mod cores;
pub mod dumps;
pub mod interpreters;
pub mod processes;
pub mod recording;
pub mod run;
pub mod ship;
pub mod trace;
pub mod traced;
pub mod workdir;

pub use dumps::*;
pub use interpreters::*;
pub use processes::*;
pub use run::*;
pub use workdir::*;

// What the helper modules share (each does `use super::*`).
pub use serde_json::Value;
pub use std::collections::{BTreeMap, BTreeSet};
pub use std::fs;
pub use std::io::Read;
pub use std::path::{Path, PathBuf};
pub use std::process::{Child, Command, ExitStatus, Stdio};
pub use std::sync::atomic::{AtomicUsize, Ordering};
pub use std::sync::{Mutex, OnceLock};
pub use std::time::{Duration, Instant};

pub mod tp;

/// The Python fixtures, copied into every target's work directory.
pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
/// Host interpreter for the embedder and deleted-executable targets and its config tool.
pub const HOST_PYTHON311: &str = "/usr/bin/python3.11";
pub const HOST_PYTHON311_CONFIG: &str = "/usr/bin/python3.11-config";
/// Work directories live here, inside the target's root (so ROOT/tmp/vizattach-tests/...).
pub const WORK_BASE: &str = "/tmp/vizattach-tests";
