//! vizattach: attach to a running CPython process and read what every thread is doing.
//!
//! Data flows one way: process memory -> interpreter model -> samples -> timeline -> writers.

pub mod activity;
pub mod addr_map;
pub mod clock;
pub mod demo;
pub mod dump;
pub mod error;
pub mod fleet;
pub mod native;
pub mod output;
pub mod pausing;
pub mod process;
pub mod python;
pub mod record;
pub mod repair;
pub mod sampler;
pub mod sampling_thread;
pub mod subinterpreters;
pub mod timeline;
