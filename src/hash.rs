//! The hasher of the hot maps.

use std::collections::{HashMap, HashSet};

/// The hasher of the maps keyed by location+CDN keys and names, hashed for every report and
/// every key of every window close: foldhash, several times faster than the standard
/// library's SipHash on short strings (SipHash was 30-48 % of a report's instructions), and
/// seeded per process, so that names sent to collide cannot be computed offline.
pub type Fast = foldhash::fast::RandomState;
/// A map with the [`Fast`] hasher.
pub type FastMap<K, V> = HashMap<K, V, Fast>;
/// A set with the [`Fast`] hasher.
pub type FastSet<K> = HashSet<K, Fast>;
