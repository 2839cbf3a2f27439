//! The take-over figure (issue #19): one report partition of K keys written to a changelog
//! topic as the daemon writes it (one record per key), then read back and put into a new
//! engine as a partition's next owner does. `qos-sentinel bench-takeover`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::START;
use super::memory::{config_for, fill_window, locations, memory_row, pairs_of};
use crate::changelog::{self, State};
use crate::daemon::ChangelogWriter;
use crate::engine::{Engine, Record};
use crate::table::BenchmarkTable;

/// Writing and taking over one partition of `keys` keys through a changelog topic.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct TakeoverFigures {
    pub keys: usize,
    /// The partition's records (keys, session buckets, head) and their bytes.
    pub records: usize,
    pub bytes: usize,
    /// The first write (every record new) and one after another window (every key changed),
    /// until the broker acknowledged the head. Milliseconds.
    pub write_ms: u64,
    pub rewrite_ms: u64,
    /// Reading the changelog partition from its start to its end, and putting the records
    /// into a new engine (decoded on every core). Milliseconds.
    pub read_ms: u64,
    pub absorb_ms: u64,
    /// Both: the take-over.
    pub takeover_ms: u64,
}

/// Fills partition 0 of an engine with `keys` keys (the memory figure's keys: a benchmark
/// row each, three windows of two reports), writes it to `topic` twice (the second after one
/// more window), then takes it over. Without `brokers`, on librdkafka's in-process mock
/// cluster, which keeps only the newest 5 MiB of a partition (about 3,000 keys): larger runs
/// need a broker (`--brokers`, with `topic` created, one partition at least).
pub async fn takeover(
    brokers: Option<&str>,
    topic: &str,
    keys: usize,
) -> anyhow::Result<TakeoverFigures> {
    let mut cfg = config_for(keys);
    let _cluster = match brokers {
        Some(b) => {
            cfg.kafka.brokers = b.to_string();
            None
        }
        None => {
            let cluster = rdkafka::mocking::MockCluster::new(1)?;
            cluster.create_topic(topic, 1, 1)?;
            cfg.kafka.brokers = cluster.bootstrap_servers();
            Some(cluster)
        }
    };
    let locations = locations(keys);
    let pairs = || pairs_of(&locations, keys);
    let mut engine = Engine::new(&cfg);
    engine.add_partition(0);
    for (i, (l, c)) in pairs().enumerate() {
        engine.on_benchmark(l, c, START - 60_000, Some(memory_row(i)));
    }
    for w in 0..3i64 {
        fill_window(&mut engine, pairs(), w, Some(0));
        engine.close_ready();
    }
    let (mut records, mut bytes) = (0, 0);
    engine
        .partition_records(0, |r| {
            records += 1;
            bytes += match r {
                Record::Engine(v) | Record::Head(_, v) | Record::Sessions(_, _, v) => v.len(),
                Record::Key(_, _, v) => v.len(),
            };
        })
        .map_err(|e| anyhow::anyhow!(e))?;

    let producer = crate::kafka::producer(&cfg.kafka)?;
    let mut writer = ChangelogWriter::new(producer, topic, &cfg.kafka);
    writer.own([0]);
    let retries = prometheus::IntCounter::new("retries", "retries")?;
    let mut write = async |engine: &Engine, next: i64| -> anyhow::Result<u64> {
        let started = Instant::now();
        let next = HashMap::from([(0, next)]);
        let ok = writer
            .write(engine, &next, &[], &HashMap::new(), retries.clone())
            .await;
        anyhow::ensure!(ok, "the changelog write failed (see the log)");
        Ok(started.elapsed().as_millis() as u64)
    };
    let write_ms = write(&engine, 1).await?;
    fill_window(&mut engine, pairs(), 3, Some(0));
    engine.close_ready();
    let rewrite_ms = write(&engine, 2).await?;
    drop(engine);

    let started = Instant::now();
    let (k, t) = (cfg.kafka.clone(), topic.to_string());
    let read = tokio::task::spawn_blocking(move || {
        changelog::read_partition(&k, &t, 0, Duration::from_secs(60))
    })
    .await??;
    let read_ms = started.elapsed().as_millis() as u64;
    let Some((header, State::Records(r))) = read else {
        anyhow::bail!("{topic} holds no state in records for partition 0");
    };
    anyhow::ensure!(
        header.next == 2 && r.missing == 0 && r.keys.len() == keys,
        "{topic} gave back {} keys of {keys} ({} records missing, the write of position {}): \
         the broker kept less than a partition's state (the mock cluster keeps 5 MiB: use \
         --brokers), or the topic held other state",
        r.keys.len(),
        r.missing,
        header.next
    );
    let absorbing = Instant::now();
    let mut next_owner = Engine::with_table(&cfg, BenchmarkTable::new());
    next_owner
        .absorb_records(0, &r.head, &r.sessions, &r.keys)
        .map_err(|e| anyhow::anyhow!(e))?;
    let absorb_ms = absorbing.elapsed().as_millis() as u64;
    Ok(TakeoverFigures {
        keys,
        records,
        bytes,
        write_ms,
        rewrite_ms,
        read_ms,
        absorb_ms,
        takeover_ms: started.elapsed().as_millis() as u64,
    })
}
