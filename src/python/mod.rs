//! The interpreter model: from a process's memory to threads and their Python stacks.

pub mod bytecode;
pub mod code;
pub mod debug_offsets;
pub mod diagnose;
pub mod discover;
pub mod layout;
pub mod linetable;
pub mod locals;
pub mod objects;
pub mod paths;
pub mod resume;
pub mod scan;
pub mod snapshot;
pub mod stack;
pub mod strings;
pub mod thread_ids;
pub mod thread_names;
pub mod threads;
pub mod values;
pub mod version;
