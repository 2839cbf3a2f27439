//! How many distinct sessions a window's reports came from, in 16 bytes: linear counting
//! (Whang et al., 1990) over a 128-bit bitmap of hashed session ids. Exact enough for the
//! small keys where it matters (a few percent up to a hundred sessions), mergeable by OR
//! across keys, windows and partitions, and saturated (no estimate) past about 500 sessions,
//! where reports are plenty anyway.
//!
//! A session's reports in a window repeat its network: the window's sample of independent
//! evidence is its sessions, not its reports (reports per session is its design effect,
//! measured, not assumed).

const BITS: f64 = 128.0;

/// A bitmap of hashed session ids.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Sessions(pub [u64; 2]);

/// FNV-1a: stable across runs and versions (the bitmap is stored in checkpoints).
pub fn hash(id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // FNV's low bits mix poorly for short ids: fold the high half in.
    h ^ (h >> 29)
}

impl Sessions {
    pub fn add(&mut self, session_id: &str) {
        let bit = hash(session_id) % 128;
        self.0[(bit / 64) as usize] |= 1 << (bit % 64);
    }

    pub fn merge(&mut self, o: &Sessions) {
        self.0[0] |= o.0[0];
        self.0[1] |= o.0[1];
    }

    /// Estimated distinct sessions; `None` when saturated, or for state written before
    /// sessions were counted (an empty bitmap over reports).
    pub fn estimate(&self, reports: u64) -> Option<f64> {
        let set = f64::from(self.0[0].count_ones() + self.0[1].count_ones());
        if set == 0.0 {
            return (reports == 0).then_some(0.0);
        }
        let zeros = BITS - set;
        (zeros > 0.0).then(|| (-BITS * (zeros / BITS).ln()).min(reports as f64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_sessions_not_reports() {
        for n in [1usize, 5, 20, 60, 150] {
            let mut s = Sessions::default();
            for i in 0..n {
                for _ in 0..10 {
                    s.add(&format!("s{:08x}", i * 7919));
                }
            }
            let e = s.estimate(10 * n as u64).unwrap();
            let tolerance = 1.0 + 0.12 * n as f64;
            assert!((e - n as f64).abs() <= tolerance, "{n} sessions: {e}");
        }
        let mut full = Sessions::default();
        for i in 0..5_000 {
            full.add(&i.to_string());
        }
        assert_eq!(full.estimate(5_000), None, "saturated");
        assert_eq!(Sessions::default().estimate(0), Some(0.0));
        assert_eq!(
            Sessions::default().estimate(30),
            None,
            "state without sessions"
        );
        let (mut a, mut b) = (Sessions::default(), Sessions::default());
        a.add("x");
        b.add("x");
        b.add("y");
        a.merge(&b);
        assert_eq!(a, b);
    }
}
