//! vizattach: attach to a running CPython process and read what every thread is doing.
//!
//! Data flows one way: process memory -> interpreter model -> samples -> timeline -> writers.

pub mod activity;
pub mod clock;
pub mod dump;
pub mod error;
pub mod output;
pub mod process;
pub mod python;
pub mod record;
pub mod sampler;
pub mod timeline;
