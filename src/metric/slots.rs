//! Every metric's window state in one boxed slice, laid out by the registry, and its
//! serialised form: a map from metric name to its slots.

use std::sync::LazyLock;

use super::{Expected, Metric, Normals, REGISTRY, Report};

pub(super) struct Layout {
    /// Start of each metric's slots, and the total at the end.
    pub(super) offsets: Vec<usize>,
}

pub(super) static LAYOUT: LazyLock<Layout> = LazyLock::new(|| {
    let mut offsets = vec![0];
    for k in REGISTRY {
        offsets.push(offsets[offsets.len() - 1] + k.slots());
    }
    Layout { offsets }
});

/// Every metric's window state, one after the other. Serialised as a map from metric name to
/// its slots, so that state written before a metric was registered still reads (its slots
/// start at zero).
#[derive(Debug, Clone, PartialEq)]
pub struct Slots(Box<[f64]>);

impl Default for Slots {
    fn default() -> Self {
        Slots(vec![0.0; LAYOUT.offsets[REGISTRY.len()]].into_boxed_slice())
    }
}

impl Slots {
    pub fn of(&self, m: Metric) -> &[f64] {
        &self.0[m.range()]
    }

    pub fn of_mut(&mut self, m: Metric) -> &mut [f64] {
        &mut self.0[m.range()]
    }

    /// Folds one report into every metric's slots.
    pub fn add(&mut self, r: &Report, expected: Option<&Expected>, normals: &Normals) {
        for m in Metric::all() {
            m.kind()
                .add(self.of_mut(m), r, expected, normals[m.index()]);
        }
    }

    pub fn merge(&mut self, o: &Slots) {
        for m in Metric::all() {
            let range = m.range();
            m.kind().merge(&mut self.0[range.clone()], &o.0[range]);
        }
    }
}

impl serde::Serialize for Slots {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(REGISTRY.len()))?;
        for m in Metric::all() {
            map.serialize_entry(m.as_str(), self.of(m))?;
        }
        map.end()
    }
}

impl<'de> serde::Deserialize<'de> for Slots {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(SlotsVisitor)
    }
}

/// Reads each metric's values straight into its slots (a restore reads millions: no map or
/// vector per metric). A metric no longer registered is skipped; one with another layout
/// starts anew, unless slots were only appended to it.
struct SlotsVisitor;

impl<'de> serde::de::Visitor<'de> for SlotsVisitor {
    type Value = Slots;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a map from metric name to its slots")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Slots, A::Error> {
        let mut out = Slots::default();
        while let Some(MetricKey(m)) = map.next_key()? {
            match m {
                Some(m) => map.next_value_seed(MetricSlots(out.of_mut(m), m))?,
                None => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(out)
    }
}

/// A metric's name as a map key: `None` for one not registered.
struct MetricKey(Option<Metric>);

impl<'de> serde::Deserialize<'de> for MetricKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = MetricKey;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a metric name")
            }
            fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<MetricKey, E> {
                Ok(MetricKey(Metric::named(name)))
            }
        }
        d.deserialize_str(V)
    }
}

/// One metric's values into its slots, if there are as many as it has now or had before
/// its last slots were appended.
struct MetricSlots<'a>(&'a mut [f64], Metric);

impl<'de> serde::de::DeserializeSeed<'de> for MetricSlots<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for MetricSlots<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a metric's slots")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let MetricSlots(out, m) = self;
        let mut read = [0.0; 64];
        let mut n = 0;
        while let Some(v) = seq.next_element::<f64>()? {
            if let Some(slot) = read.get_mut(n) {
                *slot = v;
            }
            n += 1;
        }
        let before = m.kind().slots_before().unwrap_or(m.kind().slots());
        if (before..=m.kind().slots()).contains(&n) {
            out[..n].copy_from_slice(&read[..n]);
        }
        Ok(())
    }
}
