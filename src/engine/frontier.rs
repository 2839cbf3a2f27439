//! When a window may be decided, for one instance alone or with the partitions spread over
//! several (peered), behind one interface; and the only bookkeeping of which partitions hold
//! windows back. A partition holds them back unless it is idle (no input for a while) or
//! revoked (moved to another instance in a rebalance); those close as far as the others have.

use std::collections::{BTreeMap, BTreeSet};

use super::part::Part;
use super::peers::Peers;
use crate::time::Millis;

/// Which partitions hold the decision of windows back.
#[derive(Debug, Default)]
pub(super) struct Frontier {
    /// Partitions that do not hold the decision of windows back: idle ones and revoked ones.
    idle: BTreeSet<i32>,
    /// Partitions revoked in a rebalance (their state stays until they come back).
    revoked: BTreeSet<i32>,
}

/// Every partition's (closed until, idle) by the summaries; `None` until all were heard of.
fn progress(peers: &Peers) -> Option<impl Iterator<Item = (Millis, bool)> + Clone + '_> {
    peers.heard_of_all()?;
    Some(peers.progress.values().copied())
}

/// The slowest value of those that hold windows back; with none holding, the furthest.
fn slowest<T: Ord>(items: impl Iterator<Item = (bool, T)> + Clone) -> Option<T> {
    let mut holding = items.clone().filter(|(h, _)| *h).map(|(_, t)| t).peekable();
    if holding.peek().is_some() {
        holding.min()
    } else {
        items.map(|(_, t)| t).max()
    }
}

impl Frontier {
    pub(super) fn is_revoked(&self, p: i32) -> bool {
        self.revoked.contains(&p)
    }

    pub(super) fn is_idle(&self, p: i32) -> bool {
        self.idle.contains(&p)
    }

    /// A record from `p`: an idle partition that is still owned holds windows back again.
    /// Returns whether that changed anything.
    pub(super) fn wake(&mut self, p: i32) -> bool {
        !self.idle.is_empty() && !self.revoked.contains(&p) && self.idle.remove(&p)
    }

    /// `p` is owned (again): windows wait for it.
    pub(super) fn own(&mut self, p: i32) {
        self.revoked.remove(&p);
        self.idle.remove(&p);
    }

    /// `p` had no input for a while; returns whether it was holding windows back.
    pub(super) fn set_idle(&mut self, p: i32) -> bool {
        self.idle.insert(p)
    }

    /// `p` moved to another instance: windows stop waiting for it.
    pub(super) fn revoke(&mut self, p: i32) {
        self.revoked.insert(p);
        self.idle.insert(p);
    }

    /// `p`'s state is gone from this instance.
    pub(super) fn forget(&mut self, p: i32) {
        self.idle.remove(&p);
        self.revoked.remove(&p);
    }

    /// Owned parts, each with whether it holds windows back.
    fn owned<'a>(
        &'a self,
        parts: &'a BTreeMap<i32, Part>,
    ) -> impl Iterator<Item = (bool, &'a Part)> + Clone + 'a {
        parts
            .iter()
            .filter(|(p, _)| !self.revoked.contains(p))
            .map(|(p, part)| (!self.idle.contains(p), part))
    }

    /// The slowest owned partition's watermark, over those that hold windows back; with
    /// every owned partition idle, the newest. `None` while one of them has sent nothing
    /// yet, or with none owned.
    pub(super) fn watermark(&self, parts: &BTreeMap<i32, Part>) -> Option<Millis> {
        slowest(
            self.owned(parts)
                .map(|(h, part)| (h, part.windows.watermark())),
        )
        .flatten()
    }

    /// How far the parts behind the others close before deciding (see
    /// [`Frontier::closes_behind`]): alone, as far as the owned parts holding windows back
    /// have closed; peered, as far as the summaries say the partitions holding them back have.
    pub(super) fn close_to(
        &self,
        parts: &BTreeMap<i32, Part>,
        peers: Option<&Peers>,
    ) -> Option<Millis> {
        match peers {
            None => self.local(parts),
            Some(peers) => slowest(progress(peers)?.map(|(c, idle)| (!idle, c))),
        }
        .filter(|f| *f != Millis::MIN)
    }

    /// Whether [`Frontier::close_to`] closes part `p` when it is behind: alone every part
    /// (revoked ones too: nothing else will close them); peered only idle owned ones (the
    /// others close by their own input, revoked ones on their new owner).
    pub(super) fn closes_behind(&self, p: i32, peered: bool) -> bool {
        !peered || (self.idle.contains(&p) && !self.revoked.contains(&p))
    }

    /// Windows ending at or before this have all their evidence and may be decided: alone,
    /// what the owned parts have closed; peered, what every partition has closed by the
    /// summaries (this instance's own included).
    pub(super) fn decidable(
        &self,
        parts: &BTreeMap<i32, Part>,
        peers: Option<&Peers>,
    ) -> Option<Millis> {
        match peers {
            None => self.local(parts),
            Some(peers) => progress(peers)?.map(|(c, _)| c).min(),
        }
        .filter(|f| *f != Millis::MIN)
    }

    /// How far the owned parts have closed. Revoked partitions count for nothing: with every
    /// partition revoked (before the first assignment, or while a broker is away) nothing is
    /// decided.
    fn local(&self, parts: &BTreeMap<i32, Part>) -> Option<Millis> {
        slowest(
            self.owned(parts)
                .map(|(h, part)| (h, part.windows.closed_until())),
        )
    }
}
