//! The checkpoint store: saves, deltas, restores.
use super::*;
use crate::sim::{Event, SimConfig, Simulator};

const START: i64 = 1_767_290_400_000;

/// An engine fed `minutes` of the demo's traffic from `from` (minutes after START).
fn feed(e: &mut Engine, from: i64, minutes: i64) {
    let sim = SimConfig::demo(7, START + from * 60_000, minutes * 60_000);
    for ev in Simulator::new(sim) {
        match ev {
            Event::Benchmark(b) => {
                e.on_benchmark(&b.location, &b.cdn, b.ts, Some((&b).into()));
            }
            Event::Report(r) => {
                e.on_report(&r, Some((0, 0)));
                e.close_ready();
            }
        }
    }
}

/// Every record of an engine, by store key.
fn records(e: &Engine) -> std::collections::BTreeMap<Vec<u8>, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    e.records(|r| {
        let v = match &r {
            Record::Engine(v) | Record::Head(_, v) | Record::Sessions(_, _, v) => v.clone(),
            Record::Key(_, _, v) => v.clone(),
        };
        out.insert(record_key(&r), v);
    })
    .unwrap();
    out
}

#[test]
fn saves_and_loads_state_positions_and_emitted_alerts() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Settings::default();
    let mut engine = Engine::new(&cfg);
    feed(&mut engine, 0, 5);
    {
        let s = CheckpointStore::open(dir.path()).unwrap();
        assert!(s.load("reports").unwrap().is_none());
        let next: HashMap<i32, i64> = [(0, 10), (3, 7)].into();
        let mut w = Written::default();
        s.save(
            "reports",
            Some((&w.delta(&engine).unwrap(), &next)),
            &[("a:firing".into(), b"{1}".to_vec())],
            1_000,
        )
        .unwrap();
        s.confirm(&["a:firing".into()], &[(0, 41), (2, 5), (0, 40)])
            .unwrap();
        s.save(
            "reports",
            Some((&w.delta(&engine).unwrap(), &next)),
            &[("a:resolved".into(), b"{2}".to_vec())],
            2_000,
        )
        .unwrap();
    }
    let s = CheckpointStore::open(dir.path()).unwrap();
    assert!(s.load("other-topic").unwrap().is_none());
    let r = s.load("reports").unwrap().unwrap();
    let back = s
        .restore_engine(&cfg, BenchmarkTable::new(), &r.engine)
        .map_err(|e| e.0)
        .unwrap();
    assert!(records(&back) == records(&engine));
    assert_eq!(r.next, [(0, 10), (3, 7)].into());
    assert_eq!(
        r.emitted,
        ["a:firing".to_string(), "a:resolved".to_string()].into()
    );
    // Only the unacknowledged alert is pending; positions are one past the last ack.
    assert_eq!(
        s.pending().unwrap(),
        vec![("a:resolved".into(), b"{2}".to_vec())]
    );
    assert_eq!(s.delivered().unwrap(), [(0, 42), (2, 6)].into());
    assert_eq!(s.prune_emitted(1_500).unwrap(), 1);
    let r = s.load("reports").unwrap().unwrap();
    assert_eq!(r.emitted, ["a:resolved".to_string()].into());
}

/// A save writes only the records that changed since the last one and deletes those that
/// are gone; the store then holds exactly the engine's records. The first save of a
/// process clears what an earlier run left; state of the layout before records (one
/// value) is read once and deleted by the next save.
#[test]
fn a_save_writes_only_what_changed_and_the_store_equals_the_engine() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Settings::default();
    let next = HashMap::new();
    let s = CheckpointStore::open(dir.path()).unwrap();
    // What an earlier run left: a key no engine here has, and a legacy whole-state value.
    let stale = {
        let k = Key {
            location: "XX/gone".into(),
            cdn: "cdn-z".into(),
        };
        key_key(0, &k)
    };
    s.db.put(&stale, b"old").unwrap();
    let mut old = Engine::new(&cfg);
    feed(&mut old, 0, 3);
    s.db.put(ENGINE, old.snapshot().unwrap()).unwrap();
    let r = s.load("x").unwrap();
    assert!(r.is_none(), "no positions, no checkpoint");
    s.db.put(NEXT, serde_json::to_vec(&("reports", &next)).unwrap())
        .unwrap();
    let legacy = s.load("reports").unwrap().unwrap();
    let Saved::Legacy(_) = &legacy.engine else {
        panic!("the legacy value is read as such")
    };
    let mut engine = s
        .restore_engine(&cfg, BenchmarkTable::new(), &legacy.engine)
        .map_err(|e| e.0)
        .unwrap();

    let mut w = Written::default();
    let first = w.delta(&engine).unwrap();
    let all = records(&engine).len();
    assert_eq!(first.counts(), (all, 0));
    s.save("reports", Some((&first, &next)), &[], 0).unwrap();
    assert!(s.db.get(&stale).unwrap().is_none(), "stale record cleared");
    assert!(s.db.get(ENGINE).unwrap().is_none(), "legacy value deleted");

    // Nothing changed: nothing is written.
    let same = w.delta(&engine).unwrap();
    assert_eq!(same.counts(), (0, 0));

    // A few more minutes: what changed is written, what left is deleted, nothing else.
    let before = records(&engine);
    feed(&mut engine, 3, 4);
    let after = records(&engine);
    let d = w.delta(&engine).unwrap();
    let changed = after
        .iter()
        .filter(|(k, v)| before.get(*k) != Some(*v))
        .count();
    let gone = before.keys().filter(|k| !after.contains_key(*k)).count();
    assert_eq!(d.counts(), (changed, gone));
    assert!(
        changed < after.len(),
        "{changed} of {} written",
        after.len()
    );
    s.save("reports", Some((&d, &next)), &[], 0).unwrap();
    let r = s.load("reports").unwrap().unwrap();
    let back = s
        .restore_engine(&cfg, BenchmarkTable::new(), &r.engine)
        .map_err(|e| e.0)
        .unwrap();
    assert!(
        records(&back) == after,
        "the store holds the engine's records"
    );
    assert_eq!(back.counters(), engine.counters());
}

/// A store of thousands of keys (many decoding batches on every core) restores every
/// key; one record that does not decode, among them, fails the restore with its error
/// (no hang, no partial engine) and hands the table back.
#[test]
fn thousands_of_keys_restore_on_every_core_and_a_bad_one_fails_the_restore() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Settings::default();
    let s = CheckpointStore::open(dir.path()).unwrap();
    let mut engine = Engine::new(&cfg);
    feed(&mut engine, 0, 5);
    let first = Written::default().delta(&engine).unwrap();
    s.save("reports", Some((&first, &HashMap::new())), &[], 0)
        .unwrap();
    // Every key's record again under 40 other locations each.
    let keys: Vec<(Vec<u8>, Vec<u8>)> = records(&engine)
        .into_iter()
        .filter(|(k, _)| k.starts_with(KEYS))
        .collect();
    let mut copies = 0;
    for (k, v) in &keys {
        let p = partition_of(&k[KEYS.len()..]).unwrap();
        let (location, cdn) = crate::engine::parse_key_id(&k[KEYS.len() + 4..]).unwrap();
        for i in 0..40 {
            let copy = Key {
                location: format!("{location}/copy-{i}").into(),
                cdn: cdn.into(),
            };
            s.db.put(key_key(p, &copy), v).unwrap();
            copies += 1;
        }
    }
    assert!(copies > 10 * 256, "{copies} copies");
    let restored = s.load("reports").unwrap().unwrap();
    let back = s
        .restore_engine(&cfg, BenchmarkTable::new(), &restored.engine)
        .map_err(|e| e.0)
        .unwrap();
    let back_keys = records(&back)
        .into_keys()
        .filter(|k| k.starts_with(KEYS))
        .count();
    assert_eq!(back_keys, keys.len() + copies);

    let bad = key_key(
        0,
        &Key {
            location: "XX/bad".into(),
            cdn: "cdn-a".into(),
        },
    );
    s.db.put(&bad, b"\xff not cbor").unwrap();
    let mut table = BenchmarkTable::new();
    table.upsert("XX/kept", "cdn-a", 0, None);
    let Err((e, table)) = s.restore_engine(&cfg, table, &restored.engine) else {
        panic!("a record that does not decode fails the restore");
    };
    assert!(matches!(e, StateError::Decode(_)), "{e}");
    assert_eq!(table.keys(), 1, "the table is handed back");
}
