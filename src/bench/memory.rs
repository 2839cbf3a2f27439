//! The memory figure (step 4 of [`super`]): an engine filled with K active keys in a process
//! of its own, its resident bytes per key, and at the largest size how long checkpoints hold
//! the loop and how long a restart takes.

use std::time::Instant;

use serde::Serialize;

use super::START;
use crate::checkpoint::CheckpointStore;
use crate::config::Config;
use crate::decode::Report;
use crate::engine::Engine;
use crate::table::Expected;
use crate::table::store::{Change, TableStore};
use crate::time::now_ms;

/// Resident memory for K active keys, and the restart time from their checkpoint.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct MemoryFigures {
    pub keys: usize,
    /// Windows, incidents, baselines: the engine's own state per key.
    pub state_bytes_per_key: f64,
    /// The benchmark table (one row per key) on top.
    pub with_table_bytes_per_key: f64,
    pub checkpoint_bytes: Option<u64>,
    /// Open RocksDB, load the table and the checkpoint, restore the engine.
    pub restart_ms: Option<u64>,
    /// How long a checkpoint holds the engine's thread (encode what changed, write it to
    /// RocksDB): the loop's stall at each one. The first one (every record new), one after
    /// another window (every key's window and learned state changed), one with nothing
    /// changed. Milliseconds.
    #[serde(default)]
    pub checkpoint_stall_ms: Option<[u64; 3]>,
}

/// Runs [`memory`] in a child process (`qos-sentinel bench-memory`) and reads its figures.
pub(super) async fn memory_child(keys: usize, restart: bool) -> anyhow::Result<MemoryFigures> {
    let exe = std::env::current_exe()?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("bench-memory").arg("--keys").arg(keys.to_string());
    if restart {
        cmd.arg("--restart");
    }
    let out = cmd.output().await?;
    anyhow::ensure!(
        out.status.success(),
        "bench-memory --keys {keys} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Resident set size of this process, bytes.
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

const CDNS: [&str; 4] = ["cdn-a", "cdn-b", "cdn-c", "cdn-d"];

/// The locations of `keys` keys, 4 CDNs each.
pub(super) fn locations(keys: usize) -> Vec<String> {
    (0..keys.div_ceil(CDNS.len()))
        .map(|i| format!("XX/R{:02}/city-{i:07}", i % 97))
        .collect()
}

/// The first `keys` location+CDN pairs of `locations`.
pub(super) fn pairs_of(locations: &[String], keys: usize) -> impl Iterator<Item = (&str, &str)> {
    locations
        .iter()
        .flat_map(|l| CDNS.iter().map(move |c| (l.as_str(), *c)))
        .take(keys)
}

/// The engine's config with room for `keys` keys in every map: the defaults cap the
/// benchmark table and the learned state at 400,000 keys, which evicted most of a million
/// (and the restart figure then failed, finding 360,000 rows).
pub(super) fn config_for(keys: usize) -> Config {
    let mut cfg = Config::default();
    cfg.window.max_keys = keys * 2 + 16;
    cfg.window.max_benchmark_keys = keys * 2 + 16;
    cfg.window.max_learned_keys = keys * 2 + 16;
    cfg
}

/// Fills an engine with `keys` active location+CDN keys (4 CDNs per location): one benchmark
/// row each, then three one-minute windows with two reports per key, closing windows as the
/// watermark passes them. Measures RSS per key; with `restart`, checkpoints to RocksDB and
/// times open + load + restore.
pub fn memory(keys: usize, restart: bool) -> anyhow::Result<MemoryFigures> {
    let locations = locations(keys);
    let pairs = || pairs_of(&locations, keys);
    let cfg = config_for(keys);
    let base = rss_bytes();
    let mut engine = Engine::new(&cfg);
    let mut rows = Vec::with_capacity(keys);
    for (i, (l, c)) in pairs().enumerate() {
        engine.on_benchmark(l, c, START - 60_000, Some(memory_row(i)));
        rows.push((l.to_string(), c.to_string()));
    }
    let with_table = rss_bytes();
    for w in 0..3i64 {
        fill_window(&mut engine, pairs(), w, None);
        engine.close_ready();
    }
    let filled = rss_bytes();
    let state = filled.saturating_sub(with_table);
    let total = filled.saturating_sub(base);
    let (checkpoint_bytes, restart_ms, checkpoint_stall_ms) = if restart {
        let mut next_window = |engine: &mut Engine| {
            fill_window(engine, pairs(), 3, None);
            engine.close_ready();
        };
        let f = restart_figures(engine, &rows, &cfg, keys, &mut next_window)?;
        (Some(f.0), Some(f.1), Some(f.2))
    } else {
        (None, None, None)
    };
    Ok(MemoryFigures {
        keys,
        state_bytes_per_key: state as f64 / keys as f64,
        with_table_bytes_per_key: total as f64 / keys as f64,
        checkpoint_bytes,
        restart_ms,
        checkpoint_stall_ms,
    })
}

/// Two reports per key in one-minute window `w` of the memory figure, read from report
/// partition `partition` (offsets in the order sent) or from none.
pub(super) fn fill_window<'a>(
    engine: &mut Engine,
    pairs: impl Iterator<Item = (&'a str, &'a str)>,
    w: i64,
    partition: Option<i32>,
) {
    let mut offset = w << 32;
    for (i, (l, c)) in pairs.enumerate() {
        for j in 0..2i64 {
            let ts = START + w * 60_000 + ((i as i64 * 7 + j * 13_000) % 50_000);
            let r = Report {
                asn: Some(64_500 + (i % 7) as u32),
                device: Some("tv".into()),
                rebuffer_ms: (i % 3) as u64 * 100,
                startup_ms: Some(900),
                bitrate_kbps: Some(3_500.0),
                throughput_kbps: Some(5_000.0 + (i % 50) as f64),
                ..Report::new(l, c, ts)
            };
            offset += 1;
            engine.on_report(&r, partition.map(|p| (p, offset)));
        }
    }
}

/// Checkpoints `engine` and its table (`rows`) to RocksDB as the daemon does (timing each
/// checkpoint: the first, one after `next_window`, one with nothing changed), drops them and
/// times open, load and restore: the checkpoint's bytes, the restart's milliseconds and the
/// three checkpoints' milliseconds.
fn restart_figures(
    mut engine: Engine,
    rows: &[(String, String)],
    cfg: &Config,
    keys: usize,
    next_window: &mut dyn FnMut(&mut Engine),
) -> anyhow::Result<(u64, u64, [u64; 3])> {
    let dir = tempfile::tempdir()?;
    let mut checkpoint_bytes = 0;
    let mut stalls = [0u64; 3];
    {
        let store = TableStore::open(dir.path())?;
        let changes: Vec<Change<'_>> = rows
            .iter()
            .enumerate()
            .map(|(i, (l, c))| Change {
                location: l,
                cdn: c,
                ts: START - 60_000,
                row: Some(memory_row(i)),
            })
            .collect();
        for chunk in changes.chunks(50_000) {
            store.write(chunk, "bench", &[])?;
        }
        let ckpt = CheckpointStore::open(dir.path())?;
        let mut written = crate::checkpoint::Written::default();
        for (n, stall) in stalls.iter_mut().enumerate() {
            if n == 1 {
                next_window(&mut engine);
            }
            // What the daemon's loop does at a checkpoint (Checkpointer::save).
            let started = Instant::now();
            let delta = written.delta(&engine).map_err(|e| anyhow::anyhow!(e))?;
            ckpt.save("bench", Some((&delta, &Default::default())), &[], now_ms())?;
            *stall = started.elapsed().as_millis() as u64;
            if n == 0 {
                checkpoint_bytes = delta.bytes() as u64;
            }
        }
        // As the daemon stops cleanly.
        ckpt.flush()?;
        store.flush()?;
    }
    drop(engine);
    let started = Instant::now();
    let store = TableStore::open(dir.path())?;
    let table = store.load()?;
    let ckpt = CheckpointStore::open(dir.path())?;
    let restored = ckpt
        .load("bench")?
        .ok_or_else(|| anyhow::anyhow!("checkpoint not found"))?;
    let engine = ckpt
        .restore_engine(cfg, table, &restored.engine)
        .map_err(|(why, _)| anyhow::anyhow!("restore failed: {why}"))?;
    let restart_ms = started.elapsed().as_millis() as u64;
    anyhow::ensure!(
        engine.table().len() >= keys,
        "restored table has {} rows for {keys} keys",
        engine.table().len()
    );
    Ok((checkpoint_bytes, restart_ms, stalls))
}

/// The benchmark row of the memory figure's `i`-th key.
pub(super) fn memory_row(i: usize) -> Expected {
    Expected {
        throughput_kbps: Some(5_000.0 + (i % 100) as f64),
        rebuffer_ratio: Some(0.01),
        startup_ms: Some(900.0),
        error_rate: Some(0.005),
    }
}
