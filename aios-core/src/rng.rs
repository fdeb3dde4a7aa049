//! A tiny seeded generator, so that nothing in the library draws entropy from the system
//! behind the host's back; and [`os_seed`], the one place where a production default takes a
//! seed from the operating system.

/// A deterministic pseudo-random generator (SplitMix64) seeded by the host.
///
/// Used for id entropy and retry jitter. It is not cryptographic; nothing in AIOS needs it to
/// be: ids are unique by construction (time plus a sequence), jitter only spreads load.
///
/// ```
/// use aios_core::SeededRng;
/// let mut a = SeededRng::new(7);
/// let mut b = SeededRng::new(7);
/// assert_eq!(a.next_u64(), b.next_u64());
/// ```
#[derive(Debug, Clone)]
pub struct SeededRng {
    state: u64,
}

impl SeededRng {
    /// A generator whose whole sequence is determined by `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64 pseudo-random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A float uniformly distributed in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// A seed drawn from the operating system's entropy source.
///
/// The production defaults (`OrchestratorConfig::default()`, the SQLite store's id seeds,
/// worker ids) call this so that two processes never share a seed: ids drawn in the same
/// millisecond by two processes differ, and two workers never claim one identity. Tests that
/// need reproducible ids pass a fixed seed instead.
///
/// If the operating system cannot provide entropy, the seed comes from the standard library's
/// per-process random hash keys (themselves seeded by the operating system), mixed with the
/// process id, so it is still distinct per process.
///
/// ```
/// let (a, b) = (aios_core::os_seed(), aios_core::os_seed());
/// assert_ne!(a, b);
/// ```
pub fn os_seed() -> u64 {
    let mut buf = [0u8; 8];
    if getrandom::getrandom(&mut buf).is_ok() {
        return u64::from_le_bytes(buf);
    }
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.finish()
}
