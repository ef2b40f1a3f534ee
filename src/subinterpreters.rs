//! One OS thread, one stack: a thread that runs code in a subinterpreter has a thread
//! state in each interpreter it entered, and each holds part of its stack. The part in the
//! interpreter it entered last is on top (docs/ARCHITECTURE.md, "Subinterpreters").

use crate::sampler::{SampleBatch, StackFrame};

/// Where a thread state's interpreter stands in the order interpreters are entered:
/// 0 for the main interpreter, then by creation (a thread enters an interpreter from one
/// that existed before it).
pub type Rank = u32;

/// Reused buffers, so that joining allocates nothing once warm.
#[derive(Default)]
pub struct Joiner {
    order: Vec<(i32, Rank, usize)>,
    frames: Vec<StackFrame>,
    drop: Vec<bool>,
}

impl Joiner {
    /// Folds the samples of thread states that share an OS thread into the sample of the
    /// outermost one (its key keeps naming the thread), stack parts stacked by rank. If
    /// any part could not be read this tick, the joined sample has no stack either (the
    /// previous view stands) rather than a stack missing its top or bottom.
    pub fn join(&mut self, batch: &mut SampleBatch, rank: impl Fn(u64) -> Rank) {
        self.order.clear();
        self.order.extend(batch.threads.iter().enumerate().map(|(i, t)| (t.tid, rank(t.key), i)));
        self.order.sort_unstable();
        if !self.order.windows(2).any(|w| w[0].0 == w[1].0) {
            return;
        }
        self.drop.clear();
        self.drop.resize(batch.threads.len(), false);
        let mut start = 0;
        while start < self.order.len() {
            let tid = self.order[start].0;
            let end = start + self.order[start..].iter().take_while(|o| o.0 == tid).count();
            if end - start > 1 {
                let outer = self.order[start].2;
                let mut complete = true;
                let mut time = batch.threads[outer].time_ns;
                self.frames.clear();
                for &(_, _, i) in &self.order[start..end] {
                    let t = &batch.threads[i];
                    time = time.max(t.time_ns);
                    match batch.stack(t) {
                        Some(part) => self.frames.extend_from_slice(part),
                        None => complete = false,
                    }
                    if i != outer {
                        self.drop[i] = true;
                    }
                }
                let joined = if complete {
                    let a = batch.frames.len() as u32;
                    batch.frames.extend_from_slice(&self.frames);
                    Some((a, batch.frames.len() as u32))
                } else {
                    None
                };
                let t = &mut batch.threads[outer];
                t.frames = joined;
                t.time_ns = time;
            }
            start = end;
        }
        let mut i = 0;
        batch.threads.retain(|_| {
            i += 1;
            !self.drop[i - 1]
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::python::stack::Locals;
    use crate::sampler::ThreadSample;

    fn frame(code: u64) -> StackFrame {
        StackFrame { code_id: code as u32, code, frame: code * 16, offset: 0, locals: Locals::default() }
    }

    fn batch(parts: &[(u64, i32, Option<&[u64]>)]) -> SampleBatch {
        let mut b = SampleBatch::default();
        for &(key, tid, codes) in parts {
            let frames = codes.map(|c| {
                let a = b.frames.len() as u32;
                b.frames.extend(c.iter().map(|&c| frame(c)));
                (a, b.frames.len() as u32)
            });
            b.threads.push(ThreadSample::new(key, tid, key, frames, false));
        }
        b
    }

    fn codes(b: &SampleBatch, i: usize) -> Option<Vec<u64>> {
        b.stack(&b.threads[i]).map(|s| s.iter().map(|f| f.code).collect())
    }

    #[test]
    fn parts_of_one_thread_stack_by_rank() {
        // keys 100 and 300 are main-interpreter states, 200 a subinterpreter's
        let mut b = batch(&[(200, 7, Some(&[20, 21])), (100, 7, Some(&[10, 11, 12])), (300, 8, Some(&[30]))]);
        let rank = |key| if key == 200 { 1 } else { 0 };
        Joiner::default().join(&mut b, rank);
        assert_eq!(b.threads.len(), 2);
        assert_eq!(b.threads[0].key, 100);
        assert_eq!(codes(&b, 0), Some(vec![10, 11, 12, 20, 21]));
        assert_eq!(b.threads[0].time_ns, 200, "the joined sample is as recent as its newest part");
        assert_eq!(b.threads[1].key, 300);
        assert_eq!(codes(&b, 1), Some(vec![30]));
    }

    #[test]
    fn a_missing_part_leaves_no_stack() {
        let mut b = batch(&[(200, 7, None), (100, 7, Some(&[10]))]);
        Joiner::default().join(&mut b, |key| if key == 200 { 1 } else { 0 });
        assert_eq!(b.threads.len(), 1);
        assert_eq!(b.threads[0].key, 100);
        assert_eq!(codes(&b, 0), None);
    }

    #[test]
    fn distinct_threads_are_left_alone() {
        let mut b = batch(&[(100, 7, Some(&[10])), (200, 8, Some(&[20]))]);
        Joiner::default().join(&mut b, |key| if key == 200 { 1 } else { 0 });
        assert_eq!(b.threads.len(), 2);
        assert_eq!(codes(&b, 0), Some(vec![10]));
        assert_eq!(codes(&b, 1), Some(vec![20]));
    }
}
