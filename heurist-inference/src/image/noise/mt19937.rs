//! The Mersenne Twister MT19937 as PyTorch's CPU generator runs it.
//!
//! Invariant: after [`Mt19937::new`]`(seed)` the output stream equals the stream of
//! `torch.Generator("cpu").manual_seed(seed)`'s engine, 32 bits per call. torch keeps a 64-bit
//! seed but initialises the state from its low 32 bits only (Matsumoto and Nishimura's
//! `init_genrand`), so seeds that agree modulo 2^32 give the same noise; that is torch's
//! behaviour and is kept on purpose.

/// State words.
const N: usize = 624;
/// Middle word offset of the recurrence.
const M: usize = 397;
const MATRIX_A: u32 = 0x9908_b0df;
const UPPER_MASK: u32 = 0x8000_0000;
const LOWER_MASK: u32 = 0x7fff_ffff;

/// The MT19937 engine (32-bit outputs).
#[derive(Clone)]
pub(crate) struct Mt19937 {
    state: [u32; N],
    /// Index of the next word to temper; `N` means the state must be regenerated first.
    next: usize,
}

impl Mt19937 {
    /// The engine seeded the way `manual_seed(seed)` seeds torch's (low 32 bits of `seed`).
    pub(crate) fn new(seed: u64) -> Self {
        let mut state = [0u32; N];
        // Truncation is torch's: its engine is initialised from `seed & 0xffffffff`.
        state[0] = (seed & 0xffff_ffff) as u32;
        for j in 1..N {
            let prev = state[j - 1];
            state[j] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(j as u32);
        }
        Self { state, next: N }
    }

    /// The next 32 random bits.
    pub(crate) fn next_u32(&mut self) -> u32 {
        if self.next >= N {
            self.twist();
        }
        let mut y = self.state[self.next];
        self.next += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^= y >> 18;
        y
    }

    /// 64 random bits as torch's `random64()` makes them: the first word is the high half.
    pub(crate) fn next_u64(&mut self) -> u64 {
        let hi = u64::from(self.next_u32());
        let lo = u64::from(self.next_u32());
        (hi << 32) | lo
    }

    fn twist(&mut self) {
        for i in 0..N {
            let y = (self.state[i] & UPPER_MASK) | (self.state[(i + 1) % N] & LOWER_MASK);
            let mag = if y & 1 == 1 { MATRIX_A } else { 0 };
            self.state[i] = self.state[(i + M) % N] ^ (y >> 1) ^ mag;
        }
        self.next = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference implementation's published first outputs for its default seed 5489
    /// (also the first outputs of C++'s `std::mt19937`, whose 10000th output is 4123659995).
    #[test]
    fn matches_the_reference_stream() {
        let mut mt = Mt19937::new(5489);
        assert_eq!(mt.next_u32(), 3_499_211_612);
        assert_eq!(mt.next_u32(), 581_869_302);
        let mut mt = Mt19937::new(5489);
        let mut last = 0;
        for _ in 0..10_000 {
            last = mt.next_u32();
        }
        assert_eq!(last, 4_123_659_995);
    }

    #[test]
    fn seed_uses_low_32_bits() {
        let mut a = Mt19937::new(7);
        let mut b = Mt19937::new(7 + (1 << 32));
        assert_eq!(a.next_u64(), b.next_u64());
    }
}
