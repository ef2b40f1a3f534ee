//! Hash maps keyed by an address or a thread id, hashed by one multiplication.
//!
//! The sampler looks up every thread, thread file and code object by such a key at every
//! tick; std's SipHash cost 5 % of the sampler's CPU on 33 threads at 1 kHz (perf,
//! `scripts/bench`'s idle_workers). SipHash resists keys chosen to collide; these keys are
//! addresses the target's allocator chose, and a target that arranged collisions could
//! only slow its own profile down.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

pub type AddrMap<K, V> = HashMap<K, V, BuildHasherDefault<AddrHasher>>;

/// Fibonacci hashing: multiply by 2^64 / phi, whose high half is well mixed, and swap
/// the halves, since the table indexes by the low bits (an address's low bits are
/// alignment zeros).
#[derive(Default, Clone, Copy)]
pub struct AddrHasher(u64);

const PHI: u64 = 0x9e37_79b9_7f4a_7c15;

impl Hasher for AddrHasher {
    fn finish(&self) -> u64 {
        self.0.rotate_left(32)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(b as u64);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(PHI);
    }

    fn write_i32(&mut self, n: i32) {
        self.write_u64(n as u32 as u64);
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(n as u64);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_addresses_spread_over_the_low_bits() {
        // 4096 objects 64 bytes apart: their low 6 bits are all zero, yet the bits a
        // table of 4096 buckets indexes by take nearly every value
        let hash = |a: u64| {
            let mut h = AddrHasher::default();
            h.write_u64(a);
            h.finish()
        };
        let buckets: std::collections::HashSet<u64> =
            (0..4096u64).map(|i| hash(0x7f00_0000_0000 + i * 64) & 4095).collect();
        assert!(buckets.len() > 2400, "{} distinct buckets of 4096", buckets.len());
        let mut m: AddrMap<u64, u32> = AddrMap::default();
        m.insert(0x7f00_1000, 1);
        m.insert(0x7f00_1040, 2);
        assert_eq!((m.get(&0x7f00_1000), m.get(&0x7f00_1040), m.get(&0x7f00_1080)), (Some(&1), Some(&2), None));
    }
}
