//! The consumer side of a capture of several processes: one lane per process, each with
//! its own channel and timeline, all feeding one set of writers. Before a lane's messages
//! the writers are told whose they are (Sink::process); a lane whose channel closes (its
//! process exited, or the capture ended) ends its slices at each thread's last sample.

use crate::output::{ProcessInfo, Sink};
use crate::process::tasks::Tasks;
use crate::sampler::{Message, SampleBatch};
use crate::timeline::{Timeline, ToldApart};
use crossbeam_channel::{Receiver, Sender, TryRecvError};
use std::io;

/// One process's stream, as the sampling thread hands it over when the process joins.
pub struct Lane {
    pub pid: i32,
    pub info: ProcessInfo,
    pub rx: Receiver<Message>,
    /// sample buffers go back to the process's sampler, so it never allocates
    pub recycle: Sender<SampleBatch>,
    pub timeline: Timeline,
}

/// What the lanes add up to, finished ones included.
#[derive(Default)]
pub struct Totals {
    pub samples: u64,
    pub slices: u64,
    pub threads: usize,
    pub told_apart: ToldApart,
    pub last_ns: u64,
    /// every process that joined, in order
    pub processes: Vec<ProcessInfo>,
}

impl Totals {
    fn add(&mut self, t: &Timeline) {
        self.samples += t.samples;
        self.slices += t.slices;
        self.threads += t.threads_seen();
        self.told_apart += t.told_apart;
        self.last_ns = self.last_ns.max(t.last_ns);
    }
}

/// Messages taken from one lane before the next gets its turn.
const TURN: usize = 256;

#[derive(Default)]
pub struct Lanes {
    live: Vec<(u64, Lane)>,
    next_serial: u64,
    /// the lane the writers were last told about
    current: Option<u64>,
    finished: Totals,
}

impl Lanes {
    pub fn join(&mut self, lane: Lane) {
        self.finished.processes.push(lane.info.clone());
        self.live.push((self.next_serial, lane));
        self.next_serial += 1;
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// Takes what is queued in every lane; whether there was anything. Lanes whose
    /// channel closed are finished.
    pub fn drain(&mut self, sink: &mut dyn Sink) -> io::Result<bool> {
        let mut got = false;
        let mut i = 0;
        while i < self.live.len() {
            let mut closed = false;
            for _ in 0..TURN {
                let (serial, lane) = &mut self.live[i];
                match lane.rx.try_recv() {
                    Ok(msg) => {
                        got = true;
                        enter(&mut self.current, *serial, lane, sink)?;
                        let r = lane.timeline.handle(&msg, sink);
                        if let Message::Sample(batch) = msg {
                            let _ = lane.recycle.try_send(batch);
                        }
                        r?;
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
            }
            if closed {
                let (serial, mut lane) = self.live.remove(i);
                enter(&mut self.current, serial, &lane, sink)?;
                finish(&mut lane, sink)?;
                self.finished.add(&lane.timeline);
                got = true;
            } else {
                i += 1;
            }
        }
        Ok(got)
    }

    /// The totals as of now.
    pub fn totals(&self) -> Totals {
        let mut t = Totals {
            processes: self.finished.processes.clone(),
            samples: self.finished.samples,
            slices: self.finished.slices,
            threads: self.finished.threads,
            told_apart: self.finished.told_apart,
            last_ns: self.finished.last_ns,
        };
        for (_, lane) in &self.live {
            t.add(&lane.timeline);
        }
        t
    }
}

fn enter(current: &mut Option<u64>, serial: u64, lane: &Lane, sink: &mut dyn Sink) -> io::Result<()> {
    if *current != Some(serial) {
        *current = Some(serial);
        sink.process(lane.pid, &lane.info.command_line)?;
    }
    Ok(())
}

/// Ends a lane: what is open closes at each thread's last sample; threads Python never
/// named take their OS name while the process is there to ask.
fn finish(lane: &mut Lane, sink: &mut dyn Sink) -> io::Result<()> {
    let pid = lane.pid;
    let comm_of = |tid: i32| Tasks::comm(pid, tid).unwrap_or_else(|| format!("thread {tid}"));
    lane.timeline.finish(sink, &comm_of)
}
