//! vizattach: attach to a running CPython process and read what every thread is doing.
//!
//! Data flows one way: process memory -> interpreter model -> samples -> timeline -> writers.

pub mod dump;
pub mod error;
pub mod process;
pub mod python;
