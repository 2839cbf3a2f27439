//! What each live session of a partition has shown so far: the evidence of a change that
//! every session of a key sees at once.
//!
//! A key's viewers mix fast home, slow home and mobile networks, each session keeping its own
//! for its life, so a small key's window mean moves a lot with which sessions happen to play
//! (its sample of sessions), and a drop to a third is only a few standard errors of it. The
//! same drop seen *within* each session (this report against the session's own earlier
//! reports) is many: the network mix cancels out. So for each metric that pairs
//! ([`crate::metric::Kind::pairs`]: per-report throughput) a session's mean of logs over its
//! reports of earlier windows is kept, and each report is folded with its difference from it
//! ([`crate::metric::Normal::session`]); the metric tests those differences as well as the
//! level (see [`crate::metric::LogScale`]).
//!
//! Bounded: a session is forgotten once it has sent nothing for a window (players report
//! every 6-30 s), and at most `window.max_sessions` are kept per partition, the least recently
//! seen forgotten first (`qos_sentinel_keys_evicted_total{state="sessions"}`). Checkpointed
//! with the partition, so that a restored or taken-over partition pairs as it would have.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::metric::SessionMark;
use crate::time::Millis;

/// One session's history of one metric: its reports of earlier windows, summed, and those of
/// the window it is in.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
struct Level {
    sum: f64,
    n: u32,
    now_sum: f64,
    now_n: u32,
    /// Start of the window `now_*` belong to.
    window: Millis,
}

/// Some sessions' levels: one record of the state store.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub(super) struct SessionBucket(Vec<((u64, u8), Level)>);

/// Which of `n` buckets a session (its id's hash) goes in.
pub(super) fn bucket_of(session: u64, n: u16) -> usize {
    (session.rotate_left(17) % u64::from(n.max(1))) as usize
}

/// Reports of earlier windows a session needs before its own level is trusted.
const MIN_HISTORY: u32 = 2;

/// Per live session (its id's hash) and pairing metric (its index), what it has shown.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub(super) struct SessionLevels {
    levels: HashMap<(u64, u8), Level, BuildHasherDefault<Hashed>>,
}

/// The map's hasher: its keys are hashes already (FNV-1a of the session id), so they are
/// only mixed with the metric, not hashed again (SipHash would double the cost of a lookup).
#[derive(Default)]
struct Hashed(u64);

impl Hasher for Hashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn write_u64(&mut self, x: u64) {
        self.0 ^= x;
    }
    fn write_u8(&mut self, x: u8) {
        self.0 = (self.0 ^ u64::from(x)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

impl SessionLevels {
    /// The session's (the hash of its id) own level of metric `m` (mean of `ln x` over its reports of windows
    /// before `window`), if it has enough history; then folds `ln_x`, a report of `window`.
    /// A report of a window older than the session's newest is not folded and not paired.
    /// `hold`: the session's key is under suspicion (its last tested window deviated on a
    /// pairing metric), so the window the session leaves now is not folded into its level:
    /// a session keeps comparing itself with what it showed before the change, where it would
    /// otherwise learn the drop within a window or two and the evidence fade.
    pub(super) fn observe(
        &mut self,
        session: u64,
        m: usize,
        window: Millis,
        ln_x: f64,
        hold: bool,
    ) -> Option<f64> {
        let id = (session, m as u8);
        let l = self.levels.entry(id).or_insert(Level {
            window,
            ..Level::default()
        });
        if window < l.window || !ln_x.is_finite() {
            return None;
        }
        if window > l.window {
            if !hold {
                l.sum += l.now_sum;
                l.n = l.n.saturating_add(l.now_n);
            }
            (l.now_sum, l.now_n, l.window) = (0.0, 0, window);
        }
        let own = (l.n >= MIN_HISTORY).then(|| l.sum / f64::from(l.n));
        l.now_sum += ln_x;
        l.now_n = l.now_n.saturating_add(1);
        own
    }

    /// For a metric that counts sessions: notes a report of the session in `window`, an
    /// event or not, and returns what the session has shown ([`SessionMark`]). A report of a
    /// window older than the session's newest counts for nothing. `hold`: the key is under
    /// suspicion, so the window the session leaves now does not join its history (as
    /// [`SessionLevels::observe`]). `size`: the windows' length (a session's first report of
    /// a window is marked `continued` when it reported in the window right before).
    pub(super) fn mark(
        &mut self,
        session: u64,
        m: usize,
        (window, size): (Millis, Millis),
        event: bool,
        hold: bool,
    ) -> SessionMark {
        let l = self.levels.entry((session, m as u8)).or_insert(Level {
            window,
            ..Level::default()
        });
        if window < l.window {
            return SessionMark::default();
        }
        let continued = window > l.window && l.now_n > 0 && l.window + size == window;
        if window > l.window {
            if !hold && l.now_n > 0 {
                l.n = l.n.saturating_add(1);
                l.sum += f64::from(u8::from(l.now_sum > 0.0));
            }
            (l.now_sum, l.now_n, l.window) = (0.0, 0, window);
        }
        let mark = SessionMark {
            first: l.now_n == 0,
            first_event: event && l.now_sum == 0.0,
            continued,
            windows: l.n,
            event_windows: l.sum as u32,
            session,
        };
        l.now_n = l.now_n.saturating_add(1);
        if event {
            l.now_sum += 1.0;
        }
        mark
    }

    /// Forgets the sessions whose newest report is of a window before `horizon`, then the
    /// least recently seen beyond `max` (down to nine tenths of it). Returns how many were
    /// evicted by the cap (ended sessions are not counted).
    pub(super) fn prune(&mut self, horizon: Millis, max: usize) -> u64 {
        self.levels.retain(|_, l| l.window >= horizon);
        if self.levels.len() <= max {
            return 0;
        }
        let keep = max - max / 10;
        let excess = self.levels.len() - keep;
        // Oldest first; ties by id, so that a restored copy evicts the same sessions.
        let mut by_age: Vec<(Millis, (u64, u8))> =
            self.levels.iter().map(|(id, l)| (l.window, *id)).collect();
        by_age.select_nth_unstable(excess - 1);
        let gone: std::collections::HashSet<(u64, u8)> =
            by_age[..excess].iter().map(|(_, id)| *id).collect();
        self.levels.retain(|id, _| !gone.contains(id));
        gone.len() as u64
    }

    /// Sessions and metrics held.
    pub(super) fn len(&self) -> usize {
        self.levels.len()
    }

    /// The sessions split by their id's hash into `n` buckets (the state store's session
    /// records), each sorted so that equal state encodes to equal bytes.
    pub(super) fn buckets(&self, n: u16) -> Vec<SessionBucket> {
        let mut out = vec![SessionBucket::default(); usize::from(n.max(1))];
        for (id, l) in &self.levels {
            out[bucket_of(id.0, n)].0.push((*id, *l));
        }
        for b in &mut out {
            b.0.sort_unstable_by_key(|(id, _)| *id);
        }
        out
    }

    /// Puts back one bucket of [`SessionLevels::buckets`] (a restore).
    pub(super) fn put_bucket(&mut self, bucket: SessionBucket) {
        self.levels.extend(bucket.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::sessions::hash as h;

    #[test]
    fn a_session_is_compared_with_its_own_earlier_windows() {
        let mut s = SessionLevels::default();
        // Two reports in window 0: no history yet.
        assert_eq!(s.observe(h("a"), 0, 0, 1.0, false), None);
        assert_eq!(s.observe(h("a"), 0, 0, 3.0, false), None);
        // In window 60 its level is the mean of window 0's, whatever it reports now.
        assert_eq!(s.observe(h("a"), 0, 60, 10.0, false), Some(2.0));
        assert_eq!(s.observe(h("a"), 0, 60, 10.0, false), Some(2.0));
        // Window 120: window 60's reports have joined its history.
        assert_eq!(s.observe(h("a"), 0, 120, 0.0, false), Some(6.0));
        // A late report of an older window is neither paired nor folded.
        assert_eq!(s.observe(h("a"), 0, 60, 100.0, false), None);
        assert_eq!(s.observe(h("a"), 0, 120, 0.0, false), Some(6.0));
        // Metrics and sessions are apart.
        assert_eq!(s.observe(h("a"), 1, 120, 5.0, false), None);
        assert_eq!(s.observe(h("b"), 0, 120, 5.0, false), None);
        assert_eq!(s.len(), 3);
    }

    #[test]
    fn a_session_counts_once_a_window_and_keeps_its_history() {
        let mut s = SessionLevels::default();
        let m = |s: &mut SessionLevels, id: &str, w: Millis, event: bool, hold: bool| {
            let k = s.mark(h(id), 1, (w, 60), event, hold);
            (k.first, k.first_event, k.windows, k.event_windows)
        };
        assert_eq!(m(&mut s, "a", 0, false, false), (true, false, 0, 0));
        assert_eq!(m(&mut s, "a", 0, true, false), (false, true, 0, 0));
        assert_eq!(m(&mut s, "a", 0, true, false), (false, false, 0, 0));
        // A new window: counted again; window 0 (with an event) is history now.
        assert_eq!(m(&mut s, "a", 60, false, false), (true, false, 1, 1));
        // A late report of an older window counts for nothing.
        assert_eq!(m(&mut s, "a", 0, true, false), (false, false, 0, 0));
        assert_eq!(m(&mut s, "a", 120, false, false), (true, false, 2, 1));
        // Held: the window left (120) does not join the history; the next one does.
        assert_eq!(m(&mut s, "a", 180, true, true), (true, true, 2, 1));
        assert_eq!(m(&mut s, "a", 240, true, false), (true, true, 3, 2));
        assert_eq!(m(&mut s, "b", 60, false, false), (true, false, 0, 0));
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn a_session_continues_when_it_reported_in_the_window_right_before() {
        let mut s = SessionLevels::default();
        let mut m = |id: &str, w: Millis| {
            let k = s.mark(h(id), 1, (w, 60), false, false);
            (k.first, k.continued)
        };
        assert_eq!(m("a", 0), (true, false), "new");
        assert_eq!(
            m("a", 0),
            (false, false),
            "not its first report of the window"
        );
        assert_eq!(m("a", 60), (true, true));
        assert_eq!(m("a", 60), (false, false));
        assert_eq!(m("a", 180), (true, false), "a window without it in between");
        assert_eq!(
            m("a", 120),
            (false, false),
            "a late report of an older window"
        );
        assert_eq!(m("a", 240), (true, true));
    }

    #[test]
    fn ended_sessions_are_forgotten_and_the_cap_holds() {
        let mut s = SessionLevels::default();
        for i in 0..1_000 {
            s.observe(h(&format!("s{i}")), 0, (i / 100) * 60, 1.0, false);
        }
        // Sessions last seen before window 300 have ended.
        assert_eq!(s.prune(300, 10_000), 0);
        assert_eq!(s.len(), 500);
        // Past the cap the least recently seen go, down to nine tenths of it.
        assert_eq!(s.prune(0, 100), 410);
        assert_eq!(s.len(), 90);
        assert!(s.levels.values().all(|l| l.window == 540));
    }
}
