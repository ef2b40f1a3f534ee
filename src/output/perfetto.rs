//! Perfetto protobuf: a stream of TracePackets, written as they happen.
//!
//! Layout of the stream:
//! - sequence 1: the process track, thread track descriptors, and at the end one instant
//!   event "vizattach capture" on the process track whose debug annotations carry the
//!   capture metadata (Perfetto shows them as the event's arguments; they land in the
//!   `args` table).
//! - one sequence per thread (2, 3, ...), like Perfetto's own SDK: its first packet
//!   clears incremental state and sets the sequence defaults (the thread's track, and
//!   clock 64, an incremental clock tied to CLOCK_MONOTONIC and CLOCK_BOOTTIME by a
//!   ClockSnapshot), so each slice event carries only a small time delta, the event type
//!   and interned ids for its name and source location. The BOOTTIME reading is what
//!   lines the trace up with system traces and `perf` of the same machine.
//! - clock 64 counts microseconds: a sample interval then fits a one-byte delta instead
//!   of three, which is most of what keeps a slice near 30 bytes. A sampler's timestamps
//!   are uncertain by half an interval (>= 0.5 us even at 1 MHz), so nothing real is lost.
//!
//! Events that would step back in time on their sequence (possible across tracks of a
//! thread id that was reused) are written with an absolute CLOCK_MONOTONIC timestamp.
//!
//! Whole packets are batched and written by us, not by a BufWriter: when a write fails
//! (disk full), the file is cut back to the last complete packet and stays a valid trace.

use super::{CaptureInfo, Sink};
use crate::activity::Activity;
use crate::python::code::CodeInfo;
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};

/// The few Perfetto messages we write, derived with prost by hand with the field numbers
/// of perfetto's protos/perfetto/trace/*.proto: no protoc, no build script and no
/// generated crate with thousands of messages for the dozen fields we use. Members of a
/// proto `oneof` are plain optional fields here (same wire format). Public so the tests
/// decode what we wrote with the same definitions.
pub mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Trace {
        #[prost(message, repeated, tag = "1")]
        pub packet: Vec<TracePacket>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TracePacket {
        #[prost(uint64, optional, tag = "8")]
        pub timestamp: Option<u64>,
        #[prost(uint32, optional, tag = "10")]
        pub trusted_packet_sequence_id: Option<u32>,
        #[prost(message, optional, tag = "11")]
        pub track_event: Option<TrackEvent>,
        #[prost(message, optional, tag = "12")]
        pub interned_data: Option<InternedData>,
        #[prost(uint32, optional, tag = "13")]
        pub sequence_flags: Option<u32>,
        #[prost(message, optional, tag = "6")]
        pub clock_snapshot: Option<ClockSnapshot>,
        #[prost(uint32, optional, tag = "58")]
        pub timestamp_clock_id: Option<u32>,
        #[prost(message, optional, tag = "59")]
        pub trace_packet_defaults: Option<TracePacketDefaults>,
        #[prost(message, optional, tag = "60")]
        pub track_descriptor: Option<TrackDescriptor>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TrackEvent {
        #[prost(int32, optional, tag = "9")]
        pub r#type: Option<i32>,
        #[prost(uint64, optional, tag = "10")]
        pub name_iid: Option<u64>,
        #[prost(string, optional, tag = "23")]
        pub name: Option<String>,
        #[prost(uint64, optional, tag = "11")]
        pub track_uuid: Option<u64>,
        #[prost(string, repeated, tag = "22")]
        pub categories: Vec<String>,
        #[prost(uint64, optional, tag = "34")]
        pub source_location_iid: Option<u64>,
        #[prost(message, repeated, tag = "4")]
        pub debug_annotations: Vec<DebugAnnotation>,
        #[prost(int64, optional, tag = "30")]
        pub counter_value: Option<i64>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct DebugAnnotation {
        #[prost(string, optional, tag = "10")]
        pub name: Option<String>,
        #[prost(uint64, optional, tag = "3")]
        pub uint_value: Option<u64>,
        #[prost(double, optional, tag = "5")]
        pub double_value: Option<f64>,
        #[prost(string, optional, tag = "6")]
        pub string_value: Option<String>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct InternedData {
        /// EventName entries (perfetto calls the field event_names)
        #[prost(message, repeated, tag = "2")]
        pub event_names: Vec<EventName>,
        #[prost(message, repeated, tag = "4")]
        pub source_locations: Vec<SourceLocation>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct EventName {
        #[prost(uint64, optional, tag = "1")]
        pub iid: Option<u64>,
        #[prost(string, optional, tag = "2")]
        pub name: Option<String>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct SourceLocation {
        #[prost(uint64, optional, tag = "1")]
        pub iid: Option<u64>,
        #[prost(string, optional, tag = "2")]
        pub file_name: Option<String>,
        #[prost(string, optional, tag = "3")]
        pub function_name: Option<String>,
        #[prost(uint32, optional, tag = "4")]
        pub line_number: Option<u32>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ClockSnapshot {
        #[prost(message, repeated, tag = "1")]
        pub clocks: Vec<Clock>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Clock {
        #[prost(uint32, optional, tag = "1")]
        pub clock_id: Option<u32>,
        #[prost(uint64, optional, tag = "2")]
        pub timestamp: Option<u64>,
        #[prost(bool, optional, tag = "3")]
        pub is_incremental: Option<bool>,
        #[prost(uint64, optional, tag = "4")]
        pub unit_multiplier_ns: Option<u64>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TracePacketDefaults {
        #[prost(uint32, optional, tag = "58")]
        pub timestamp_clock_id: Option<u32>,
        #[prost(message, optional, tag = "11")]
        pub track_event_defaults: Option<TrackEventDefaults>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TrackEventDefaults {
        #[prost(uint64, optional, tag = "11")]
        pub track_uuid: Option<u64>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TrackDescriptor {
        #[prost(uint64, optional, tag = "1")]
        pub uuid: Option<u64>,
        #[prost(uint64, optional, tag = "5")]
        pub parent_uuid: Option<u64>,
        #[prost(string, optional, tag = "2")]
        pub name: Option<String>,
        #[prost(message, optional, tag = "3")]
        pub process: Option<ProcessDescriptor>,
        #[prost(message, optional, tag = "4")]
        pub thread: Option<ThreadDescriptor>,
        #[prost(message, optional, tag = "8")]
        pub counter: Option<CounterDescriptor>,
    }

    /// Marks a track as a counter track (no fields needed: values are plain integers).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct CounterDescriptor {}

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ProcessDescriptor {
        #[prost(int32, optional, tag = "1")]
        pub pid: Option<i32>,
        #[prost(string, repeated, tag = "2")]
        pub cmdline: Vec<String>,
        #[prost(string, optional, tag = "6")]
        pub process_name: Option<String>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ThreadDescriptor {
        #[prost(int32, optional, tag = "1")]
        pub pid: Option<i32>,
        #[prost(int32, optional, tag = "2")]
        pub tid: Option<i32>,
        #[prost(string, optional, tag = "5")]
        pub thread_name: Option<String>,
    }

    pub const TYPE_SLICE_BEGIN: i32 = 1;
    pub const TYPE_SLICE_END: i32 = 2;
    pub const TYPE_INSTANT: i32 = 3;
    pub const TYPE_COUNTER: i32 = 4;
    pub const SEQ_INCREMENTAL_STATE_CLEARED: u32 = 1;
    pub const SEQ_NEEDS_INCREMENTAL_STATE: u32 = 2;
    pub const CLOCK_MONOTONIC: u32 = 3;
    pub const CLOCK_BOOTTIME: u32 = 6;
    /// The first sequence-scoped clock id; ours is incremental (deltas).
    pub const CLOCK_INCREMENTAL: u32 = 64;
}

use proto::*;

const PROCESS_SEQUENCE: u32 = 1;
const UNIT_NS: u64 = 1000;
/// Packets are handed to the file in batches of about this size.
const BATCH: usize = 1 << 16;

struct ThreadSeq {
    id: u32,
    uuid: u64,
    /// the incremental clock's value (in UNIT_NS): the last timestamp written relative to it
    last: u64,
    /// code id -> interned id (the same number serves the name and the source location)
    interned: HashMap<u32, u64>,
}

pub struct Perfetto {
    out: Box<dyn Write + Send>,
    /// the same file as `out`, when it is a plain file: cut back to whole packets on error
    file: Option<File>,
    failed: bool,
    /// the process events are written for now (Sink::process), and each one's name as
    /// last described
    pid: i32,
    process_uuid: u64,
    processes: HashMap<i32, String>,
    /// by track uuid (which mixes pid and tid)
    threads: HashMap<u64, ThreadSeq>,
    next_sequence: u32,
    /// CLOCK_MONOTONIC and CLOCK_BOOTTIME read together when the writer was made
    mono_base: u64,
    boot_base: u64,
    first_ns: Option<u64>,
    batch: Vec<u8>,
    /// ends of the packets in `batch`
    ends: Vec<usize>,
    /// bytes already in the file, all whole packets
    committed: u64,
    /// per thread: the activity last written to its counter tracks, and its last sample
    activity: HashMap<u64, (Activity, u64)>,
}

/// A thread's activity tracks, beside its slices: (bit that tells their uuids apart, name).
const ACTIVITY_TRACKS: [(u64, &str); 2] = [(1 << 56, "on CPU"), (1 << 57, "holds GIL")];

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes only into ts.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Track uuids are global to a trace: mix in the pid so traces of several processes merge.
fn uuid(pid: i32, tid: i32) -> u64 {
    0x7669_7a00_0000_0000 ^ ((pid as u32 as u64) << 24) ^ tid as u32 as u64
}

impl Perfetto {
    pub fn new(out: Box<dyn Write + Send>, file: Option<File>, pid: i32, process_name: &str) -> io::Result<Perfetto> {
        let mono_base = clock_ns(libc::CLOCK_MONOTONIC);
        let boot_base = clock_ns(libc::CLOCK_BOOTTIME);
        let mut p = Perfetto {
            out,
            file,
            failed: false,
            pid,
            process_uuid: uuid(pid, 0),
            processes: HashMap::new(),
            threads: HashMap::new(),
            next_sequence: PROCESS_SEQUENCE + 1,
            mono_base,
            boot_base,
            first_ns: None,
            batch: Vec::with_capacity(BATCH + 4096),
            ends: Vec::new(),
            committed: 0,
            activity: HashMap::new(),
        };
        p.describe_process(pid, process_name)?;
        Ok(p)
    }

    fn describe_process(&mut self, pid: i32, name: &str) -> io::Result<()> {
        self.processes.insert(pid, name.to_string());
        self.packet(&TracePacket {
            trusted_packet_sequence_id: Some(PROCESS_SEQUENCE),
            track_descriptor: Some(TrackDescriptor {
                uuid: Some(uuid(pid, 0)),
                process: Some(ProcessDescriptor {
                    pid: Some(pid),
                    cmdline: vec![name.to_string()],
                    process_name: Some(name.to_string()),
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    fn thread_descriptor(&self, tid: i32, name: Option<&str>) -> TracePacket {
        TracePacket {
            trusted_packet_sequence_id: Some(PROCESS_SEQUENCE),
            track_descriptor: Some(TrackDescriptor {
                uuid: Some(uuid(self.pid, tid)),
                parent_uuid: Some(self.process_uuid),
                thread: Some(ThreadDescriptor {
                    pid: Some(self.pid),
                    tid: Some(tid),
                    thread_name: name.map(String::from),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// The thread's sequence, started (track, defaults, clock) on first use.
    fn sequence(&mut self, tid: i32) -> io::Result<()> {
        if self.threads.contains_key(&uuid(self.pid, tid)) {
            return Ok(());
        }
        let base = self.mono_base / UNIT_NS;
        let seq = ThreadSeq { id: self.next_sequence, uuid: uuid(self.pid, tid), last: base, interned: HashMap::new() };
        self.next_sequence += 1;
        self.packet(&self.thread_descriptor(tid, None))?;
        self.packet(&TracePacket {
            trusted_packet_sequence_id: Some(seq.id),
            sequence_flags: Some(SEQ_INCREMENTAL_STATE_CLEARED),
            trace_packet_defaults: Some(TracePacketDefaults {
                timestamp_clock_id: Some(CLOCK_INCREMENTAL),
                track_event_defaults: Some(TrackEventDefaults { track_uuid: Some(seq.uuid) }),
            }),
            clock_snapshot: Some(ClockSnapshot {
                clocks: vec![
                    Clock {
                        clock_id: Some(CLOCK_INCREMENTAL),
                        timestamp: Some(base),
                        is_incremental: Some(true),
                        unit_multiplier_ns: Some(UNIT_NS),
                    },
                    Clock { clock_id: Some(CLOCK_MONOTONIC), timestamp: Some(base * UNIT_NS), ..Default::default() },
                    Clock {
                        clock_id: Some(CLOCK_BOOTTIME),
                        timestamp: Some(self.boot_base - self.mono_base % UNIT_NS),
                        ..Default::default()
                    },
                ],
            }),
            ..Default::default()
        })?;
        self.threads.insert(seq.uuid, seq);
        Ok(())
    }

    fn event(&mut self, tid: i32, ts: u64, event: TrackEvent, code: Option<&CodeInfo>) -> io::Result<()> {
        self.sequence(tid)?;
        self.first_ns.get_or_insert(ts);
        let seq = self.threads.get_mut(&uuid(self.pid, tid)).expect("sequence started above");
        let mut event = event;
        let mut interned_data = None;
        if let Some(code) = code {
            let next = seq.interned.len() as u64 + 1;
            let iid = *seq.interned.entry(code.id).or_insert(next);
            if iid == next {
                interned_data = Some(InternedData {
                    event_names: vec![EventName { iid: Some(iid), name: Some(super::chrome::slice_name(code)) }],
                    source_locations: vec![SourceLocation {
                        iid: Some(iid),
                        file_name: Some(code.filename.clone()),
                        function_name: Some(code.name.clone()),
                        line_number: Some(code.first_line.max(0) as u32),
                    }],
                });
            }
            event.name_iid = Some(iid);
            event.source_location_iid = Some(iid);
        }
        let (timestamp, clock) = if ts / UNIT_NS >= seq.last {
            let delta = ts / UNIT_NS - seq.last;
            seq.last = ts / UNIT_NS;
            (delta, None)
        } else {
            (ts, Some(CLOCK_MONOTONIC))
        };
        let packet = TracePacket {
            timestamp: Some(timestamp),
            timestamp_clock_id: clock,
            trusted_packet_sequence_id: Some(seq.id),
            sequence_flags: Some(SEQ_NEEDS_INCREMENTAL_STATE),
            track_event: Some(event),
            interned_data,
            ..Default::default()
        };
        self.packet(&packet)
    }

    fn packet(&mut self, packet: &TracePacket) -> io::Result<()> {
        if self.failed {
            return Err(io::Error::other("an earlier write failed"));
        }
        // Trace.packet is field 1, length-delimited: the file is a `Trace` message
        self.batch.push(0x0a);
        prost::Message::encode_length_delimited(packet, &mut self.batch).map_err(io::Error::other)?;
        self.ends.push(self.batch.len());
        if self.batch.len() >= BATCH {
            self.flush_batch()?;
        }
        Ok(())
    }

    fn flush_batch(&mut self) -> io::Result<()> {
        let mut done = 0;
        while done < self.batch.len() {
            match self.out.write(&self.batch[done..]) {
                Ok(0) => return self.fail(done, io::ErrorKind::WriteZero.into()),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.fail(done, e),
            }
        }
        self.committed += done as u64;
        self.batch.clear();
        self.ends.clear();
        Ok(())
    }

    /// Keeps what reached the file up to its last whole packet, so it still loads.
    fn fail(&mut self, written: usize, e: io::Error) -> io::Result<()> {
        self.failed = true;
        let whole = self.ends.iter().copied().filter(|&end| end <= written).max().unwrap_or(0);
        if let Some(f) = &self.file {
            let _ = f.set_len(self.committed + whole as u64);
        }
        self.batch.clear();
        Err(e)
    }

    fn metadata(&self, info: &CaptureInfo) -> TrackEvent {
        let s = |name: &str, v: &str| DebugAnnotation {
            name: Some(name.into()),
            string_value: Some(v.into()),
            ..Default::default()
        };
        let u =
            |name: &str, v: u64| DebugAnnotation { name: Some(name.into()), uint_value: Some(v), ..Default::default() };
        let f = |name: &str, v: f64| DebugAnnotation {
            name: Some(name.into()),
            double_value: Some(v),
            ..Default::default()
        };
        TrackEvent {
            r#type: Some(TYPE_INSTANT),
            name: Some("vizattach capture".into()),
            track_uuid: Some(uuid(info.pid, 0)),
            categories: vec!["vizattach".into()],
            debug_annotations: vec![
                s("vizattach_version", &info.vizattach_version),
                s("python_version", &info.python_version),
                s("command_line", &info.command_line),
                s("rate_requested", &info.rate_requested),
                f("rate_achieved", info.rate_achieved),
                u("samples", info.samples),
                u("missed_ticks", info.missed_ticks),
                u("dropped_samples", info.dropped_samples),
                u("thread_samples", info.thread_samples),
                u("lost_samples", info.lost_samples.get("total").copied().unwrap_or(0)),
                u("retried_samples", info.retried_samples),
                u("asleep_samples", info.asleep_samples),
                u("asleep_by_gil_samples", info.asleep_by_gil_samples),
                u("inferred_samples", info.inferred_samples),
                u("paused_samples", info.paused_samples),
                u("over_budget_samples", info.over_budget_samples),
                f("stopped_ms", info.stopped_ms),
                u("signals_handed_back", info.signals_handed_back),
                s("pausing", &info.pausing),
                s("sampler_priority", &info.sampler_priority),
                s("losses", &info.losses()),
                u("calls_told_apart_by_locals", info.calls_told_apart.get("locals").copied().unwrap_or(0)),
                u("calls_told_apart_by_offset", info.calls_told_apart.get("offset").copied().unwrap_or(0)),
                u("calls_told_apart_by_caller", info.calls_told_apart.get("caller").copied().unwrap_or(0)),
                u("calls_told_apart_by_yield", info.calls_told_apart.get("yield").copied().unwrap_or(0)),
                u("calls_told_apart_by_wake", info.calls_told_apart.get("wake").copied().unwrap_or(0)),
                u("calls_told_apart_by_stack_end", info.calls_told_apart.get("stack_end").copied().unwrap_or(0)),
                f("longest_lag_us", info.longest_lag_us),
                f("duration_s", info.duration_s),
                s("clock", info.clock),
            ]
            .into_iter()
            .chain(info.recovered.as_deref().map(|r| s("recovered", r)))
            .collect(),
            ..Default::default()
        }
    }
}

impl Sink for Perfetto {
    fn process(&mut self, pid: i32, name: &str) -> io::Result<()> {
        self.pid = pid;
        self.process_uuid = uuid(pid, 0);
        if self.processes.get(&pid).map(String::as_str) != Some(name) {
            self.describe_process(pid, name)?;
        }
        Ok(())
    }

    fn thread(&mut self, tid: i32, name: &str) -> io::Result<()> {
        self.sequence(tid)?;
        self.packet(&self.thread_descriptor(tid, Some(name)))
    }

    /// Two counter tracks per thread, "on CPU" and "holds GIL" (1 or 0), changed halfway
    /// between the samples that differ, like slice boundaries.
    fn activity(&mut self, tid: i32, time_ns: u64, activity: Activity) -> io::Result<()> {
        let key = uuid(self.pid, tid);
        let (at, before) = match self.activity.get(&key) {
            Some(&(a, last)) => (last + time_ns.saturating_sub(last) / 2, Some(a)),
            None => {
                self.sequence(tid)?;
                for (bit, name) in ACTIVITY_TRACKS {
                    self.packet(&TracePacket {
                        trusted_packet_sequence_id: Some(PROCESS_SEQUENCE),
                        track_descriptor: Some(TrackDescriptor {
                            uuid: Some(uuid(self.pid, tid) ^ bit),
                            parent_uuid: Some(uuid(self.pid, tid)),
                            name: Some(name.into()),
                            counter: Some(CounterDescriptor {}),
                            ..Default::default()
                        }),
                        ..Default::default()
                    })?;
                }
                (time_ns, None)
            }
        };
        self.activity.insert(key, (activity, time_ns));
        let values = [activity.on_cpu(), activity.holds_gil()];
        let old = before.map(|b| [b.on_cpu(), b.holds_gil()]);
        for (i, (bit, _)) in ACTIVITY_TRACKS.iter().enumerate() {
            if old.is_some_and(|o| o[i] == values[i]) {
                continue;
            }
            if let Some(v) = values[i] {
                let e = TrackEvent {
                    r#type: Some(TYPE_COUNTER),
                    track_uuid: Some(uuid(self.pid, tid) ^ bit),
                    counter_value: Some(v as i64),
                    ..Default::default()
                };
                self.event(tid, at, e, None)?;
            }
        }
        Ok(())
    }

    fn open(&mut self, tid: i32, code: &CodeInfo, start_ns: u64) -> io::Result<()> {
        let e = TrackEvent { r#type: Some(TYPE_SLICE_BEGIN), ..Default::default() };
        self.event(tid, start_ns, e, Some(code))
    }

    fn close(&mut self, tid: i32, _code: &CodeInfo, _start_ns: u64, end_ns: u64) -> io::Result<()> {
        let e = TrackEvent { r#type: Some(TYPE_SLICE_END), ..Default::default() };
        self.event(tid, end_ns, e, None)
    }

    /// Whole packets only reach the file, so what a kill leaves loads as it is.
    fn checkpoint(&mut self, _info: &CaptureInfo, _last_ns: u64) -> io::Result<()> {
        self.flush_batch()?;
        self.out.flush()
    }

    fn finish(&mut self, info: &CaptureInfo) -> io::Result<u64> {
        let at = self.first_ns.unwrap_or(self.mono_base);
        self.packet(&TracePacket {
            timestamp: Some(at),
            timestamp_clock_id: Some(CLOCK_MONOTONIC),
            trusted_packet_sequence_id: Some(PROCESS_SEQUENCE),
            track_event: Some(self.metadata(info)),
            ..Default::default()
        })?;
        self.flush_batch()?;
        self.out.flush()?;
        Ok(self.committed)
    }
}
