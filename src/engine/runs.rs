//! Evidence that adds up across windows for keys too small to decide in one: the accumulators
//! of a small key's last `detect.run_windows` windows. A metric short of samples in this window is
//! tested on the run (this window merged with the key's previous ones within reach): a test
//! over a sliding run of windows, so a key of 10 reports a window is decided within a few
//! windows instead of never. Each run test is one test of its window's family, under the same
//! Benjamini-Hochberg procedure and the same floors as a single window's; an incident still
//! needs `fire_after` consecutive bad windows (consecutive runs share windows, so for small
//! keys that is weaker evidence than for large ones: the floors carry it).

use std::collections::VecDeque;

use crate::time::Millis;
use crate::window::{Acc, FastMap, Key};

/// The recent windows of a partition's small keys.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub(super) struct Runs {
    pub(super) keys: FastMap<Key, VecDeque<(Millis, Acc)>>,
}

impl Runs {
    /// The runs that end with `acc` (the window starting at `start`), shortest first: `acc`
    /// merged with the key's newest earlier window within reach, then with the two newest,
    /// and so on up to `span` windows, this one included. Empty when the key has no earlier
    /// window within reach. A change that began in the last few windows shows best in the
    /// run that holds only those: the scan over run lengths (a windowed change-point test)
    /// decides a small key within a few windows of the change, not only after a whole run.
    pub(super) fn scan(&self, key: &Key, w: (Millis, Millis), span: usize, acc: &Acc) -> Vec<Acc> {
        let (start, size) = w;
        let reach = start - (span as Millis - 1) * size;
        let Some(earlier) = self.keys.get(key) else {
            return Vec::new();
        };
        let mut out: Vec<Acc> = Vec::new();
        for (_, a) in earlier
            .iter()
            .rev()
            .filter(|(s, _)| *s >= reach && *s < start)
        {
            let mut merged = out.last().unwrap_or(acc).clone();
            merged.merge(a);
            out.push(merged);
        }
        out
    }

    /// Keeps this window of the keys `short` says lack samples for the next windows' runs,
    /// and lets go of windows out of reach and keys with none left. Runs of `span` windows
    /// keep `span - 1` (none with a span of 1).
    pub(super) fn push(
        &mut self,
        w: (Millis, Millis),
        keys: &[(Key, Acc)],
        short: impl Fn(&Acc) -> bool,
        span: usize,
    ) {
        let (start, size) = w;
        let reach = start - (span as Millis - 2) * size;
        for (key, acc) in keys {
            if span < 2 || acc.reports == 0 || !short(acc) {
                continue;
            }
            let mut kept = Acc::default();
            kept.merge_sums(acc);
            self.keys
                .entry(key.clone())
                .or_default()
                .push_back((start, kept));
        }
        self.keys.retain(|_, run| {
            while run.front().is_some_and(|(s, _)| *s < reach) {
                run.pop_front();
            }
            !run.is_empty()
        });
    }

    /// Windows kept, over all keys (for the state-size gauge).
    pub(super) fn windows(&self) -> usize {
        self.keys.values().map(VecDeque::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::Report;

    fn acc(n: u64) -> Acc {
        let mut a = Acc::default();
        for _ in 0..n {
            a.add(&Report::new("L", "c", 0), None);
        }
        a
    }

    #[test]
    fn a_run_spans_the_last_windows_and_lets_go_of_older_ones() {
        let key = Key {
            location: "L".into(),
            cdn: "c".into(),
        };
        let mut runs = Runs::default();
        const SPAN: usize = 4;
        let small = |a: &Acc| a.reports < 100;
        assert_eq!(runs.scan(&key, (0, 60), SPAN, &acc(10)).pop(), None);
        for w in 0..6 {
            let now = acc(10);
            if w > 0 {
                let scan = runs.scan(&key, (w * 60, 60), SPAN, &now);
                // Shortest first: two windows, then three, ...
                let lengths: Vec<u64> = scan.iter().map(|a| a.reports / 10).collect();
                assert_eq!(
                    lengths,
                    (2..=w as u64 + 1).take(SPAN - 1).collect::<Vec<_>>()
                );
                let m = scan.last().expect("a run");
                let spans = (w as u64 + 1).min(SPAN as u64);
                assert_eq!(m.reports, 10 * spans, "window {w}");
            }
            runs.push((w * 60, 60), &[(key.clone(), now)], small, SPAN);
        }
        assert_eq!(runs.windows(), SPAN - 1);
        // A span of one window keeps nothing.
        let mut single = Runs::default();
        single.push((0, 60), &[(key.clone(), acc(10))], small, 1);
        assert_eq!(single.windows(), 0);
        // Large keys keep nothing; a key unseen for a run's length is forgotten.
        let large = Key {
            location: "M".into(),
            cdn: "c".into(),
        };
        runs.push((600, 60), &[(large, acc(500))], small, SPAN);
        assert_eq!(runs.windows(), 0);
    }
}
