//! Paths through a code object's bytecode (3.11+): where one invocation can go, and so
//! when two samples of one frame cannot be one call.
//!
//! Two questions are asked of them.
//!
//! **Did a generator yield between two samples?** VizTracer logs each resumption of a generator or coroutine as a call of its own, and
//! a frame resumed from C (`"".join(gen)`, `list(gen)`, an event loop's `coro.send`)
//! has no Python caller whose locals could show the resumption (timeline.rs, the caller
//! proof). The generator's own offsets can: within one resumption the frame runs from
//! where it resumed to its next YIELD_VALUE, so two samples of one frame are one
//! resumption only if some path of its code leads from the first offset to the second
//! without executing a YIELD_VALUE. Where none does, it yielded and was resumed in
//! between: Jinja's compiled templates yield every few instructions, and a sample a
//! millisecond later is almost always on the far side of one.
//!
//! The paths are those of the control-flow graph of basic blocks (a block ends at a
//! jump, at a yield and where execution does not fall through), with an edge from every
//! block inside an exception table range to its handler. Extra edges only make fewer
//! proofs, so where in doubt there is an edge: a forward jump may also land one
//! instruction past its target, and an instruction not known to end the flow falls
//! through. Which blocks each block reaches without a yield is computed once per code
//! object, as one bitset row per block.
//!
//! One movement of the offset is not a path: RERAISE with an argument sets the offset
//! back to where the exception was raised, for the traceback, before unwinding. That
//! raise happened earlier in the same resumption, so from any sample taken before it
//! the raise point is reachable anyway; a sample taken inside a handler that may end
//! that way (any block reachable from a handler that saves the raise offset, through
//! yields too) proves nothing.
//!
//! A frame that delegates (SEND: `yield from`, `await`) yields each time its delegate
//! does: `delegating` lets the timeline carry a delegate's proof down the chain.
//!
//! **Can a frame come back to where it is?** A thread asleep in a C call (select, a lock)
//! at the same offset of the same frames in two samples, which the kernel put on a CPU
//! in between, woke: its C call returned. If no path of the frame's code leads from
//! that offset back to it (no loop around the call; for a generator, none without a
//! yield), the frame cannot have called again from there: it returned, and the frame
//! seen now is a new call (timeline.rs, the wake proof). Every function gets that one
//! bit per block; the rows for any two offsets are kept for generators only.
//!
//! 3.11+ only: earlier versions resume at the YIELD_VALUE itself and keep their handlers
//! on a block stack, which this does not model.

use super::bytecode::{slots_written, Handler, Instr, Opcodes};

/// Blocks at most: the rows take blocks² bits while they are computed. Code that is not
/// a generator's keeps one bit per block, and is given fewer.
const MAX_BLOCKS: usize = 2048;
const MAX_BLOCKS_PLAIN: usize = 512;
/// Code that is not a generator's keeps its rows (blocks² bits) only up to this many
/// blocks: 8 KiB at most per code object, a few hundred bytes for most.
const MAX_BLOCKS_ROWS: usize = 256;
/// Edges at most (exception ranges multiply them).
const MAX_EDGES: usize = 1 << 15;
const NONE: u32 = u32::MAX;
/// A generator's whole call (through its yields) is worked out for code of at most this
/// many words of blocks (256 blocks), on the stack; larger code proves nothing that way.
const GENERATOR_CALL_WORDS: usize = 4;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    /// first offset of each block, sorted; block i is [starts[i], starts[i + 1] or end)
    starts: Vec<i64>,
    end: i64,
    /// per block: the offset of the YIELD_VALUE that ends it, or -1
    yield_at: Vec<i64>,
    /// per block ending in a yield: the block resumed after it (NONE at the code's end)
    after_yield: Vec<u32>,
    /// words per row
    words: usize,
    /// row b: the blocks reachable from the start of block b by a non-empty path that
    /// executes no yield; for code that is not a generator's, kept only up to
    /// `MAX_BLOCKS_ROWS` blocks (empty otherwise)
    reach: Vec<u64>,
    /// the blocks on such a path back to themselves
    cyclic: Vec<u64>,
    /// blocks where a handler that restores the raise offset may be running
    in_handler: Vec<u64>,
    /// [at, after) of each SEND
    delegations: Vec<(i64, i64)>,
    resumable: bool,
    /// per block (code that is not a generator's only, else empty): the slots no path
    /// from the block back to itself writes, nor any handler that restores the raise
    /// offset (`kept_at`)
    kept: Vec<u64>,
}

/// Per block, a row of the blocks reachable from its start by a non-empty path along
/// `edges`; and the words per row.
fn reach_rows(edges: &[Vec<u32>]) -> (Vec<u64>, usize) {
    let n = edges.len();
    let words = n.div_ceil(64);
    let mut reach = vec![0u64; n * words];
    // Rows grow to a fixpoint; visiting blocks from the last makes forward edges
    // settle in one pass, so passes are about as many as loops are nested.
    let mut row = vec![0u64; words];
    loop {
        let mut changed = false;
        for b in (0..n).rev() {
            row.copy_from_slice(&reach[b * words..(b + 1) * words]);
            for &w in &edges[b] {
                let w = w as usize;
                row[w / 64] |= 1 << (w % 64);
                for k in 0..words {
                    row[k] |= reach[w * words + k];
                }
            }
            if row[..] != reach[b * words..(b + 1) * words] {
                reach[b * words..(b + 1) * words].copy_from_slice(&row);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    (reach, words)
}

/// Per block, the slots kept while one call stays at or comes back to the block
/// (`Paths::kept`). Between two samples at one offset of one call, the frame ran only
/// along a path from that offset back to it: every block of it is in the block's
/// strongly connected component, so a slot no block of the component writes holds the
/// same object (a block on no cycle: the frame did not move at all). The graph here
/// also has an edge for every downward move of the reported offset that is not a jump
/// (an instruction that rewinds it, a RERAISE that restores an earlier raise's offset),
/// and slots that handlers restoring a raise offset write are never kept: a sample in
/// one can show the offset of the raise, after the handler's stores.
fn kept_slots(
    ops: &Opcodes,
    instrs: &[Instr],
    starts: &[i64],
    edges: &[Vec<u32>],
    moves: &[(i64, i64)],
    in_handler: &[u64],
) -> Vec<u64> {
    let n = starts.len();
    let block = |o: i64| -> usize { starts.partition_point(|&s| s <= o).saturating_sub(1) };
    let mut writes = vec![0u64; n];
    for i in instrs {
        writes[block(i.at)] |= slots_written(ops, i, true);
    }
    let mut all: Vec<Vec<u32>> = edges.to_vec();
    for &(target, source) in moves {
        if target < 0 || source <= target {
            continue;
        }
        let from = block(source - 1);
        for b in block(target)..=from.min(n - 1) {
            all[from].push(b as u32);
        }
    }
    let (reach, words) = reach_rows(&all);
    let reaches = |a: usize, b: usize| reach[a * words + b / 64] & (1 << (b % 64)) != 0;
    let in_handlers = (0..n).filter(|&b| Paths::is_set(in_handler, b)).fold(0, |m, b| m | writes[b]);
    (0..n)
        .map(|b| {
            if Paths::is_set(in_handler, b) {
                return 0;
            }
            let on_cycle = (0..n).filter(|&c| reaches(b, c) && reaches(c, b)).fold(0, |m, c| m | writes[c]);
            !(on_cycle | in_handlers)
        })
        .collect()
}

impl Paths {
    /// The analysis of one code object; `resumable`: a generator's (or coroutine's), whose
    /// rows are kept. None when it is too large to afford.
    /// `moves`: (target, source) pairs, where the reported offset can move from below
    /// source down to target and above (bytecode.rs, `back_jumps`).
    pub fn build(
        ops: &Opcodes,
        instrs: &[Instr],
        len: i64,
        handlers: &[Handler],
        moves: &[(i64, i64)],
        resumable: bool,
    ) -> Option<Paths> {
        let mut starts = vec![0i64];
        for i in instrs {
            let targets = ops.targets(i);
            starts.extend(targets.iter().flatten());
            if targets[0].is_some() || ops.is_yield(i) || ops.ends_flow(i) {
                starts.push(i.after);
            }
        }
        for h in handlers {
            starts.extend([h.start, h.end, h.target]);
        }
        starts.retain(|&o| (0..len).contains(&o));
        starts.sort_unstable();
        starts.dedup();
        let n = starts.len();
        if n > if resumable { MAX_BLOCKS } else { MAX_BLOCKS_PLAIN } || len <= 0 {
            return None;
        }
        let block = |o: i64| -> usize { starts.partition_point(|&s| s <= o).saturating_sub(1) };
        let mut edges: Vec<Vec<u32>> = vec![Vec::new(); n];
        let mut yield_at = vec![-1i64; n];
        let mut after_yield = vec![NONE; n];
        let mut has_instr = vec![false; n];
        let mut delegations = Vec::new();
        for i in instrs {
            let b = block(i.at);
            has_instr[b] = true;
            for t in ops.targets(i).into_iter().flatten() {
                if (0..len).contains(&t) {
                    edges[b].push(block(t) as u32);
                }
            }
            let next = (i.after < len).then(|| block(i.after));
            if ops.is_yield(i) {
                yield_at[b] = i.at;
                after_yield[b] = next.map_or(NONE, |x| x as u32);
            } else if !ops.ends_flow(i) {
                if let Some(x) = next.filter(|&x| x != b) {
                    edges[b].push(x as u32);
                }
            }
            if ops.delegates(i) {
                delegations.push((i.at, i.after));
            }
        }
        // a block no instruction starts in (a target inside an instruction) leads on
        for b in 0..n.saturating_sub(1) {
            if !has_instr[b] {
                edges[b].push(b as u32 + 1);
            }
        }
        for h in handlers.iter().filter(|h| h.start < h.end && (0..len).contains(&h.target)) {
            let target = block(h.target) as u32;
            for e in &mut edges[block(h.start)..=block(h.end - 1)] {
                e.push(target);
            }
        }
        let mut total = 0;
        for e in &mut edges {
            e.sort_unstable();
            e.dedup();
            total += e.len();
        }
        if total > MAX_EDGES {
            return None;
        }
        let (mut reach, words) = reach_rows(&edges);
        // Handlers that restore the raise offset, and all they lead to, yields included.
        let mut in_handler = vec![0u64; words];
        let mut todo: Vec<usize> =
            handlers.iter().filter(|h| h.lasti && (0..len).contains(&h.target)).map(|h| block(h.target)).collect();
        while let Some(b) = todo.pop() {
            if in_handler[b / 64] & (1 << (b % 64)) != 0 {
                continue;
            }
            in_handler[b / 64] |= 1 << (b % 64);
            todo.extend(edges[b].iter().map(|&w| w as usize));
            if after_yield[b] != NONE {
                todo.push(after_yield[b] as usize);
            }
        }
        let mut cyclic = vec![0u64; words];
        for b in 0..n {
            if reach[b * words + b / 64] & (1 << (b % 64)) != 0 {
                cyclic[b / 64] |= 1 << (b % 64);
            }
        }
        let kept = if resumable { Vec::new() } else { kept_slots(ops, instrs, &starts, &edges, moves, &in_handler) };
        if !resumable && n > MAX_BLOCKS_ROWS {
            reach = Vec::new();
        }
        Some(Paths {
            starts,
            end: len,
            yield_at,
            after_yield,
            words,
            reach,
            cyclic,
            in_handler,
            delegations,
            resumable,
            kept,
        })
    }

    fn block(&self, offset: i64) -> Option<usize> {
        if !(0..self.end).contains(&offset) {
            return None;
        }
        Some(self.starts.partition_point(|&s| s <= offset) - 1)
    }

    fn reaches(&self, from_block: usize, to_block: usize) -> bool {
        self.reach.get(from_block * self.words + to_block / 64).is_some_and(|w| w & (1 << (to_block % 64)) != 0)
    }

    fn is_set(bits: &[u64], b: usize) -> bool {
        bits[b / 64] & (1 << (b % 64)) != 0
    }

    /// Whether one resumption of a generator can show offset `from` and later `to`.
    /// `ran`: the frame is known to have run in between (its locals changed), so at one
    /// offset it must have come back around. An offset outside the code, or code that is
    /// not a generator's, proves nothing.
    pub fn one_resumption(&self, from: i64, to: i64, ran: bool) -> bool {
        // (asked of every frame of every sample: the cheap answers first)
        if !self.resumable || (from == to && !ran) {
            return true;
        }
        let (Some(a), Some(b)) = (self.block(from), self.block(to)) else {
            return true;
        };
        if Paths::is_set(&self.in_handler, a) {
            return true;
        }
        if a == b && (to > from || (to == from && !ran)) {
            return true;
        }
        if self.reaches(a, b) {
            return true;
        }
        // A sample at the yield itself may have been taken as the frame resumed there
        // (or as it yielded): what follows the yield is then the same resumption.
        if self.yield_at[a] == from && self.after_yield[a] != NONE {
            let next = self.after_yield[a] as usize;
            return next == b || self.reaches(next, b);
        }
        false
    }

    /// Whether one call can show offset `from` and later `to`: some path of the code
    /// leads from the one to the other (the offset moves only along the graph's edges;
    /// a generator's also from each yield to where it resumes, across resumptions).
    /// None where the graph cannot tell: an offset outside the code, a handler that may
    /// restore an earlier raise's offset, code too large to keep rows for.
    pub fn one_call(&self, from: i64, to: i64) -> Option<bool> {
        if self.reach.is_empty() {
            return None;
        }
        let (a, b) = (self.block(from)?, self.block(to)?);
        if Paths::is_set(&self.in_handler, a) {
            return None;
        }
        if a == b && to >= from {
            return Some(true);
        }
        if !self.resumable {
            return Some(self.reaches(a, b));
        }
        // A generator's rows stop at its yields: follow each yield reached to the block
        // that resumes after it, until no new yield is reached (a few rounds: one per
        // yield at most, on at most `GENERATOR_CALL_WORDS` words of blocks).
        if self.words > GENERATOR_CALL_WORDS {
            return None;
        }
        let words = self.words;
        let mut seen = [0u64; GENERATOR_CALL_WORDS];
        seen[..words].copy_from_slice(&self.reach[a * words..(a + 1) * words]);
        let mut resumed = [0u64; GENERATOR_CALL_WORDS];
        loop {
            let mut grew = false;
            for x in 0..self.starts.len() {
                let next = self.after_yield[x];
                if next == NONE || Paths::is_set(&resumed, x) || !(x == a || Paths::is_set(&seen, x)) {
                    continue;
                }
                resumed[x / 64] |= 1 << (x % 64);
                let next = next as usize;
                seen[next / 64] |= 1 << (next % 64);
                for (w, r) in seen[..words].iter_mut().zip(&self.reach[next * words..(next + 1) * words]) {
                    *w |= r;
                }
                grew = true;
            }
            if !grew {
                break;
            }
        }
        Some(Paths::is_set(&seen, b))
    }

    /// Whether one invocation (one resumption, for a generator) can leave `offset` and
    /// come back to it. An offset outside the code may.
    pub fn may_come_back(&self, offset: i64) -> bool {
        self.block(offset).is_none_or(|b| Paths::is_set(&self.cyclic, b) || Paths::is_set(&self.in_handler, b))
    }

    /// The slots that keep their object while a call stays at `offset` or comes back to
    /// it: two samples of one frame at one offset whose slots differ there are two
    /// calls. 0 (none) for a generator's code and an offset outside the code.
    pub fn kept_at(&self, offset: i64) -> u64 {
        match self.block(offset) {
            Some(b) if !self.kept.is_empty() => self.kept[b],
            _ => 0,
        }
    }

    /// Whether a frame at `offset` is delegating to another generator (at a SEND).
    pub fn delegating(&self, offset: i64) -> bool {
        self.delegations.iter().any(|&(at, after)| (at..after).contains(&offset))
    }
}
