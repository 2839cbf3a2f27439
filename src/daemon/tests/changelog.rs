//! The changelog's records against a real (mock) Kafka broker: one record per key, only what
//! changed, tombstones for keys gone, a head that commits them, and the whole share older
//! versions wrote still taken over.

use std::collections::HashMap;

use rdkafka::Message;

use super::*;
use crate::changelog::{self, Header, Records, State};
use crate::engine::{Engine, Record, key_id};

type Rec = (Vec<u8>, Vec<u8>);

/// A record as read: offset, key, value (`None`: a tombstone).
type Raw = (i64, Vec<u8>, Option<Vec<u8>>);

/// Writes partition 0's state with `next` as its read position.
async fn write(w: &mut state::ChangelogWriter, e: &Engine, next: i64) -> bool {
    let counter = prometheus::IntCounter::new("retries", "retries").expect("counter");
    let next = HashMap::from([(0, next)]);
    w.write(e, &next, &[], &HashMap::new(), counter).await
}

/// Keys `keys` (location `XX/<k>`, CDN `cdn-a`), 4 reports each from second `from` of window
/// `w` of partition 0.
fn reports(e: &mut Engine, keys: std::ops::Range<usize>, w: i64, from: i64) {
    for k in keys {
        for n in from..from + 4 {
            let r = Report {
                session_id: format!("s{k}-{n}").into(),
                throughput_kbps: Some(4_000.0 + n as f64),
                ..Report::new(format!("XX/{k}"), "cdn-a".to_string(), w * W + n * 1_000)
            };
            e.on_report(&r, Some((0, w * 10_000 + k as i64 * 8 + n)));
        }
    }
}

/// An engine with partition 0's keys `keys`, in windows 0 and 2.
fn engine_of(cfg: &Config, keys: std::ops::Range<usize>) -> Engine {
    let mut e = Engine::with_table(cfg, crate::table::BenchmarkTable::new());
    e.add_partition(0);
    reports(&mut e, keys.clone(), 0, 0);
    reports(&mut e, keys, 2, 0);
    e.close_ready();
    e
}

/// Partition 0's key records (id, bytes), in the order of their ids, and its other records
/// (head and sessions) as the changelog keys them.
fn records_of(e: &Engine) -> (Vec<Rec>, Vec<Rec>) {
    let (mut keys, mut other) = (Vec::new(), Vec::new());
    e.partition_records(0, |r| match r {
        Record::Head(_, v) => other.push((b"head".to_vec(), v)),
        Record::Sessions(_, b, v) => other.push((changelog::session_record(b), v)),
        Record::Key(_, k, v) => keys.push((key_id(k), v)),
        Record::Engine(_) => {}
    })
    .expect("records");
    keys.sort();
    other.sort();
    (keys, other)
}

/// A key's id.
fn id(k: usize) -> Vec<u8> {
    key_id(&crate::window::Key {
        location: format!("XX/{k}").into(),
        cdn: "cdn-a".into(),
    })
}

/// Every record of the topic's partition 0: (offset, key, value; `None`: a tombstone).
fn raw(cfg: &Config, topic: &str) -> Vec<Raw> {
    let reader = kafka::end_reader(&cfg.kafka, "-test", "earliest", false).expect("reader");
    let how = crate::kafka::read::Read {
        timeout: Duration::from_secs(10),
        fail_on_error: true,
        end_after_a_record: false,
    };
    let mut out = Vec::new();
    crate::kafka::read::read_to_end(
        &reader,
        topic,
        &[(0, rdkafka::Offset::Beginning)],
        how,
        |m| {
            out.push((
                m.offset(),
                m.key().unwrap_or_default().to_vec(),
                m.payload().map(<[u8]>::to_vec),
            ));
            crate::kafka::read::Next::More
        },
    )
    .expect("read");
    out
}

/// Partition 0's state as read from the changelog, in records.
fn read_records(cfg: &Config, topic: &str) -> (Header, Records) {
    match changelog::read_partition(&cfg.kafka, topic, 0, Duration::from_secs(10))
        .expect("read")
        .expect("a state")
    {
        (h, State::Records(r)) => (h, r),
        (_, State::Whole(_)) => panic!("a whole share, not records"),
    }
}

/// An engine that took partition 0 over from `r`.
fn absorbed(cfg: &Config, r: &Records) -> Engine {
    let mut e = Engine::with_table(cfg, crate::table::BenchmarkTable::new());
    e.absorb_records(0, &r.head, &r.sessions, &r.keys)
        .expect("absorbed");
    e
}

fn setup(
    topic: &str,
) -> (
    MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    Config,
) {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let mut cfg = Config::default();
    cfg.kafka.brokers = cluster.bootstrap_servers();
    cfg.kafka
        .options
        .insert("message.max.bytes".into(), "65536".into());
    cluster.create_topic(topic, 1, 1).expect("topic");
    (cluster, cfg)
}

fn writer(cfg: &Config, topic: &str) -> state::ChangelogWriter {
    let producer = kafka::producer(&cfg.kafka).expect("producer");
    let mut w = state::ChangelogWriter::new(producer, topic, &cfg.kafka);
    w.own([0]);
    w
}

/// Produces one record (a tombstone without `value`) to partition 0 of `topic`, as another
/// writer would.
async fn produce(cfg: &Config, topic: &str, key: Vec<u8>, value: Option<Vec<u8>>) {
    let p = kafka::producer(&cfg.kafka).expect("producer");
    let mut r = rdkafka::producer::FutureRecord::<[u8], [u8]>::to(topic)
        .partition(0)
        .key(&key);
    if let Some(v) = &value {
        r = r.payload(v);
    }
    let f = p.send_result(r).expect("queued");
    f.await.expect("sent").expect("written");
}

/// Counts of a write's key records after `offset`: (values, tombstones).
fn key_writes(records: &[Raw], after: i64) -> (usize, usize) {
    let keys = records
        .iter()
        .filter(|(o, k, _)| *o > after && k.starts_with(b"k/"));
    keys.fold((0, 0), |(v, t), (_, _, p)| match p {
        Some(_) => (v + 1, t),
        None => (v, t + 1),
    })
}

/// A partition of 3,000 keys (a 3.9 MB share, which one record can not carry under a 64 KiB
/// `message.max.bytes`: before, the producer refused it and with alerts pending the write
/// retried forever) goes to the changelog one record per key, each under the limit, and reads
/// back into an engine with the same records. The next write sends only the keys that
/// changed, and tombstones for the keys that left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitions_state_goes_to_the_changelog_one_record_per_key_and_only_what_changed() {
    let topic = "changelog";
    let (_cluster, cfg) = setup(topic);
    let mut a = engine_of(&cfg, 0..3_000);
    let mut w = writer(&cfg, topic);
    assert!(write(&mut w, &a, 42).await);
    let first = raw(&cfg, topic);
    assert!(
        first
            .iter()
            .all(|(_, _, v)| v.as_ref().is_none_or(|v| v.len() < 65_536)),
        "every record under the producer's limit"
    );
    assert_eq!(key_writes(&first, -1), (3_000, 0), "one record per key");
    let (header, r) = read_records(&cfg, topic);
    assert_eq!((header.next, header.format), (42, changelog::RECORDS));
    assert_eq!((r.ahead, r.missing, r.keys.len()), (0, 0, 3_000));
    assert_eq!(records_of(&absorbed(&cfg, &r)), records_of(&a));

    // Ten keys change: ten key records (and the head, and their sessions' buckets).
    reports(&mut a, 0..10, 2, 4);
    let end = first.last().map_or(-1, |(o, _, _)| *o);
    assert!(write(&mut w, &a, 43).await);
    let second = raw(&cfg, topic);
    assert_eq!(key_writes(&second, end), (10, 0));
    let (header, r) = read_records(&cfg, topic);
    assert_eq!(header.next, 43);
    assert_eq!(records_of(&absorbed(&cfg, &r)), records_of(&a));

    // The state without keys 2,990 and on, and those ten keys as before: ten records back
    // as they were, ten tombstones.
    let c = engine_of(&cfg, 0..2_990);
    let end = second.last().map_or(-1, |(o, _, _)| *o);
    assert!(write(&mut w, &c, 44).await);
    let third = raw(&cfg, topic);
    assert_eq!(key_writes(&third, end), (10, 10));
    let gone: Vec<Vec<u8>> = third
        .iter()
        .filter(|(o, _, v)| *o > end && v.is_none())
        .map(|(_, k, _)| k.clone())
        .collect();
    let want: Vec<Vec<u8>> = (2_990..3_000)
        .map(|k| changelog::key_record(&id(k)))
        .collect();
    assert_eq!(gone.len(), want.len());
    assert!(want.iter().all(|k| gone.contains(k)));
    let (_, r) = read_records(&cfg, topic);
    assert_eq!(r.keys.len(), 2_990);
    assert_eq!(records_of(&absorbed(&cfg, &r)), records_of(&c));
}

/// A writer that died between its records and its head: a reader takes the state the last
/// head committed, not the unfinished write's records (those of a key that has nothing before
/// them are all there is: taken, and counted), and the next owner writes those keys again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfinished_write_is_not_taken_and_its_keys_are_written_again() {
    let topic = "changelog-unfinished";
    let (_cluster, cfg) = setup(topic);
    let a = engine_of(&cfg, 0..50);
    let mut w = writer(&cfg, topic);
    assert!(write(&mut w, &a, 42).await);
    let (a_keys, _) = records_of(&a);
    let of = |k: usize| {
        a_keys
            .iter()
            .find(|(i, _)| *i == id(k))
            .expect("key")
            .1
            .clone()
    };
    // The unfinished write: key 5 with key 6's record, key 8 deleted, a key never written.
    let new = id(1_000);
    let send = |key: Vec<u8>, v: Option<Vec<u8>>| produce(&cfg, topic, key, v);
    send(changelog::key_record(&id(5)), Some(of(6))).await;
    send(changelog::key_record(&id(8)), None).await;
    send(changelog::key_record(&new), Some(of(7))).await;

    let (header, r) = read_records(&cfg, topic);
    assert_eq!((header.next, r.ahead), (42, 1));
    let b = absorbed(&cfg, &r);
    let (b_keys, _) = records_of(&b);
    assert_eq!(b_keys.len(), 51);
    let back = |k: &[u8]| b_keys.iter().find(|(i, _)| i == k).map(|(_, v)| v.clone());
    assert_eq!(
        back(&id(5)),
        Some(of(5)),
        "the committed record, not the unfinished one"
    );
    assert_eq!(
        back(&id(8)),
        Some(of(8)),
        "not deleted by an unfinished write"
    );
    assert_eq!(back(&new), Some(of(7)), "nothing before it: taken");
    for k in [id(5), id(8), new.clone()] {
        assert_eq!(r.written.get(&changelog::key_record(&k)), Some(&0));
    }

    // The next owner, knowing the records as read, writes the first owner's state: keys 5
    // and 8 again, the key it does not have deleted; nothing else.
    let end = raw(&cfg, topic).last().map_or(-1, |(o, _, _)| *o);
    let mut next = writer(&cfg, topic);
    next.written.insert(0, r.written);
    assert!(write(&mut next, &a, 43).await);
    let after: Vec<(Vec<u8>, bool)> = raw(&cfg, topic)
        .into_iter()
        .filter(|(o, k, _)| *o > end && k.starts_with(b"k/"))
        .map(|(_, k, v)| (k, v.is_some()))
        .collect();
    assert_eq!(after.len(), 3, "{after:?}");
    assert!(after.contains(&(changelog::key_record(&id(5)), true)));
    assert!(after.contains(&(changelog::key_record(&id(8)), true)));
    assert!(after.contains(&(changelog::key_record(&new), false)));
    let (_, r) = read_records(&cfg, topic);
    assert_eq!(records_of(&absorbed(&cfg, &r)), records_of(&a));
}

/// The changelog as the version before per-key records wrote it (the partition's whole share
/// under its key) is taken over, and the next write goes in records. A head over the
/// producer's limit goes in chunks and a manifest; a newer head deletes the chunks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_share_of_the_version_before_is_taken_over_and_a_large_head_goes_in_chunks() {
    let topic = "changelog-before";
    let (_cluster, cfg) = setup(topic);
    let a = engine_of(&cfg, 0..40);
    let share = a.export_partition(0).expect("share").expect("partition 0");
    let header = Header {
        reports_topic: cfg.kafka.reports_topic.clone(),
        partition: 0,
        next: 42,
        pending: Vec::new(),
        delivered: HashMap::new(),
        chunks: Vec::new(),
        format: 0,
        records: 0,
    };
    let value = changelog::encode(&header, &share).expect("encoded");
    // As the version before wrote it: no `format` in the header.
    assert!(!String::from_utf8_lossy(&value).contains("format"));
    produce(&cfg, topic, b"0".to_vec(), Some(value)).await;
    let (header, state) = changelog::read_partition(&cfg.kafka, topic, 0, Duration::from_secs(10))
        .expect("read")
        .expect("a state");
    let State::Whole(whole) = state else {
        panic!("records, not the whole share")
    };
    assert_eq!((header.next, &whole), (42, &share));
    let mut b = Engine::with_table(&cfg, crate::table::BenchmarkTable::new());
    b.absorb_partition(0, &whole).expect("absorbed");
    assert_eq!(records_of(&b), records_of(&a));

    // Its next write, with a head three chunks long.
    let mut w = writer(&cfg, topic);
    let head = records_of(&b)
        .1
        .into_iter()
        .find(|(k, _)| k == b"head")
        .expect("head")
        .1;
    w.chunk = head.len() / 3;
    assert!(write(&mut w, &b, 43).await);
    let (header, r) = read_records(&cfg, topic);
    assert_eq!(header.next, 43);
    assert_eq!(records_of(&absorbed(&cfg, &r)), records_of(&a));
    let chunks = w.chunks[&0].clone();
    assert!(chunks.len() >= 3, "{chunks:?}");
    assert_eq!(
        header.chunks, chunks,
        "a next owner learns them from the read"
    );
    w.chunk = changelog::chunk_limit(&cfg.kafka);
    assert!(write(&mut w, &b, 44).await);
    let deleted: Vec<String> = raw(&cfg, topic)
        .into_iter()
        .filter(|(_, _, v)| v.is_none())
        .map(|(_, k, _)| String::from_utf8_lossy(&k).into_owned())
        .collect();
    assert!(chunks.iter().all(|k| deleted.contains(k)), "{deleted:?}");
    assert_eq!(read_records(&cfg, topic).0.next, 44);
}

/// State of another layout version (a newer qos-sentinel's, after a downgrade) is refused as a
/// whole with an error naming both versions: the take-over then starts the partition empty at
/// its committed offset instead of misreading it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_of_another_state_version_are_refused_naming_both() {
    let topic = "changelog-version";
    let (_cluster, cfg) = setup(topic);
    let a = engine_of(&cfg, 0..10);
    let mut w = writer(&cfg, topic);
    assert!(write(&mut w, &a, 42).await);
    let (mut header, r) = read_records(&cfg, topic);
    header.format = changelog::RECORDS + 1;
    let value = changelog::encode(&header, &r.head).expect("encoded");
    produce(&cfg, topic, b"0".to_vec(), Some(value)).await;
    let read = changelog::read_partition(&cfg.kafka, topic, 0, Duration::from_secs(10));
    let err = match read {
        Err(e) => e,
        Ok(_) => panic!("state of another version taken"),
    };
    assert!(!err.is_transient());
    let text = err.to_string();
    let (found, supported) = (changelog::RECORDS + 1, changelog::RECORDS);
    assert!(
        text.contains(&format!("version {found}")) && text.contains(&format!("reads {supported}")),
        "{text}"
    );
}

/// An instance whose own state of a partition is newer than the changelog's keeps its own, yet
/// its next write deletes the changelog's keys it does not have: a later owner reading the
/// changelog must not find them alive again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_ahead_of_the_changelog_deletes_the_keys_it_lacks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = MockCluster::new(1).expect("mock cluster");
    let cfg = with_changelog(&cluster, dir.path(), "ahead-test", 1);
    let topic = cfg.kafka.changelog_topic.clone().expect("changelog");
    let mut w = writer(&cfg, &topic);
    assert!(write(&mut w, &engine_of(&cfg, 0..5), 10).await);

    let mut r = super::runner(&cfg);
    r.engine.add_partition(0);
    reports(&mut r.engine, 0..3, 0, 0);
    r.pos.next.insert(0, 100);
    let lost = super::takeover::take_over(
        &r.cfg,
        &mut r.engine,
        &mut r.pos,
        &mut r.ckpt,
        &r.outputs,
        &[0],
    )
    .await;
    assert!(lost.is_empty());
    assert_eq!(r.pos.next[&0], 100, "its own state kept");
    let mut own = r.ckpt.changelog.take().expect("a changelog writer");
    own.own([0]);
    assert!(write(&mut own, &r.engine, 100).await);
    let (header, back) = read_records(&cfg, &topic);
    assert_eq!(header.next, 100);
    let ids: Vec<Vec<u8>> = back.keys.iter().map(|(id, _)| id.clone()).collect();
    let mut want: Vec<Vec<u8>> = (0..3).map(id).collect();
    want.sort();
    assert_eq!(ids, want, "keys 3 and 4 deleted");
}

/// A partition whose records take longer to read than the read's timeout (here: 16 KiB
/// fetches from a broker 50 ms away, a timeout of 1 s) is read to its end as long as records
/// keep coming: the timeout bounds a stretch without progress. Before, the timeout bounded the
/// whole read: a large partition on a slow link was never taken over and started empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_slower_to_read_than_the_timeout_is_read_while_records_come() {
    let topic = "changelog-slow";
    let (cluster, cfg) = setup(topic);
    let a = engine_of(&cfg, 0..3_000);
    let mut w = writer(&cfg, topic);
    assert!(write(&mut w, &a, 42).await);
    let mut slow = cfg.clone();
    for option in [
        "max.partition.fetch.bytes",
        "fetch.max.bytes",
        "message.max.bytes",
    ] {
        slow.kafka.options.insert(option.into(), "16384".into());
    }
    cluster
        .broker_round_trip_time(1, Duration::from_millis(50))
        .expect("round trip");
    let started = Instant::now();
    let read = tokio::task::block_in_place(|| {
        changelog::read_partition(&slow.kafka, topic, 0, Duration::from_secs(1))
    });
    let took = started.elapsed();
    let Ok(Some((header, State::Records(r)))) = read else {
        panic!("not read: {:?}", read.err());
    };
    assert!(
        took > Duration::from_millis(600),
        "read in {took:?}: not slow enough to test"
    );
    assert_eq!((header.next, r.keys.len(), r.missing), (42, 3_000, 0));
}

/// The checkpoint's pass feeds the changelog's writer (`see`) so that keys are encoded once a
/// checkpoint: what it writes is what a writer encoding the state itself writes, record for
/// record, on a first write and on one after ten keys changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_seen_in_the_checkpoints_pass_write_what_encoding_them_again_writes() {
    let (seen_topic, own_topic) = ("changelog-seen", "changelog-own");
    let (cluster, cfg) = setup(seen_topic);
    cluster.create_topic(own_topic, 1, 1).expect("topic");
    let mut e = engine_of(&cfg, 0..2_000);
    let (mut seeing, mut own) = (writer(&cfg, seen_topic), writer(&cfg, own_topic));
    let mut checkpoint = crate::checkpoint::Written::default();
    let records = |topic: &str| -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        // In the order of their keys: each pass gathers keys in a map's order.
        let mut r: Vec<_> = raw(&cfg, topic)
            .into_iter()
            .map(|(_, k, v)| (k, v))
            .collect();
        r.sort();
        r
    };
    for (round, next) in [(0, 42), (1, 43)] {
        if round == 1 {
            reports(&mut e, 0..10, 2, 4);
        }
        checkpoint
            .delta_seen(&e, |r, fp| seeing.see(r, fp))
            .expect("delta");
        assert!(
            !seeing.seen.is_empty(),
            "the pass kept partition 0's records"
        );
        assert!(write(&mut seeing, &e, next).await);
        assert!(write(&mut own, &e, next).await);
        assert!(records(seen_topic) == records(own_topic), "round {round}");
    }
    let (_, r) = read_records(&cfg, seen_topic);
    assert_eq!(records_of(&absorbed(&cfg, &r)), records_of(&e));
}
