//! RocksDB cache of the benchmark table and of how far the benchmark topic was read.
//!
//! On restart the table is loaded from here and the topic is read on from the stored offsets,
//! so the whole compacted topic need not be re-read. Rows and the offsets they came from are
//! written in one atomic batch: after a crash the cache never claims an offset whose row it lost.

use std::path::Path;

use rocksdb::{DB, Options, WriteBatch};

use super::{BenchmarkTable, Expected};
use crate::time::Millis;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("RocksDB at {path}: {error}")]
    Db { path: String, error: rocksdb::Error },
    #[error("corrupt entry in benchmark cache: {0}")]
    Corrupt(String),
}

const ROW: u8 = b'r';
const OFFSET: u8 = b'o';

pub struct TableStore {
    db: DB,
    path: String,
}

/// One change to persist: a row version and the topic position it was read at.
pub struct Change<'a> {
    pub location: &'a str,
    pub cdn: &'a str,
    pub ts: Millis,
    pub row: Option<Expected>,
}

fn row_key(location: &str, cdn: &str, ts: Millis) -> Vec<u8> {
    // r <location> 0x00 <cdn> 0x00 <ts big-endian>: ordered by key then time.
    let mut k = Vec::with_capacity(location.len() + cdn.len() + 11);
    k.push(ROW);
    k.extend_from_slice(location.as_bytes());
    k.push(0);
    k.extend_from_slice(cdn.as_bytes());
    k.push(0);
    k.extend_from_slice(&ts.to_be_bytes());
    k
}

fn offset_key(topic: &str, partition: i32) -> Vec<u8> {
    let mut k = vec![OFFSET];
    k.extend_from_slice(topic.as_bytes());
    k.push(0);
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

/// Opens (creating it if missing) one of the daemon's RocksDB databases, LZ4-compressed.
pub fn open_db(path: &Path) -> Result<DB, rocksdb::Error> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
    DB::open(&opts, path)
}

/// Bytes a RocksDB database holds: SST files plus memtables.
pub fn db_size(db: &DB) -> u64 {
    let prop = |name: &str| db.property_int_value(name).ok().flatten().unwrap_or(0);
    prop("rocksdb.total-sst-files-size") + prop("rocksdb.cur-size-all-mem-tables")
}

impl TableStore {
    /// Bytes on disk and in memtables.
    pub fn size_bytes(&self) -> u64 {
        db_size(&self.db)
    }

    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join("benchmarks");
        let p = path.display().to_string();
        let db = open_db(&path).map_err(|error| StoreError::Db {
            path: p.clone(),
            error,
        })?;
        Ok(Self { db, path: p })
    }

    fn err(&self, error: rocksdb::Error) -> StoreError {
        StoreError::Db {
            path: self.path.clone(),
            error,
        }
    }

    /// Writes row versions together with the next offset to read per partition, atomically.
    pub fn write(
        &self,
        changes: &[Change<'_>],
        topic: &str,
        next_offsets: &[(i32, i64)],
    ) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        for c in changes {
            let value = serde_json::to_vec(&c.row)
                .map_err(|e| StoreError::Corrupt(format!("cannot encode row: {e}")))?;
            batch.put(row_key(c.location, c.cdn, c.ts), value);
        }
        for (p, o) in next_offsets {
            batch.put(offset_key(topic, *p), o.to_be_bytes());
        }
        self.db.write(batch).map_err(|e| self.err(e))
    }

    /// Writes what the memtables hold to disk (a clean stop: the next open replays no log).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(|e| self.err(e))
    }

    /// Removes versions that the in-memory table pruned.
    pub fn delete_rows(&self, rows: &[(String, String, Millis)]) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        for (l, c, t) in rows {
            batch.delete(row_key(l, c, *t));
        }
        self.db.write(batch).map_err(|e| self.err(e))
    }

    /// Next offset to read for `partition` of `topic`, if this cache has read it before.
    pub fn next_offset(&self, topic: &str, partition: i32) -> Result<Option<i64>, StoreError> {
        match self
            .db
            .get(offset_key(topic, partition))
            .map_err(|e| self.err(e))?
        {
            None => Ok(None),
            Some(v) => {
                let b: [u8; 8] = v
                    .as_slice()
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("offset is not 8 bytes".into()))?;
                Ok(Some(i64::from_be_bytes(b)))
            }
        }
    }

    /// Loads every cached version into a fresh table, one that keeps what it removes for
    /// [`TableStore::delete_rows`].
    pub fn load(&self) -> Result<BenchmarkTable, StoreError> {
        let mut table = BenchmarkTable::tracked();
        // Capped by the engine that takes it (`window.max_benchmark_keys`), not while loading.
        table.set_max_keys(usize::MAX);
        for item in self.db.prefix_iterator([ROW]) {
            let (k, v) = item.map_err(|e| self.err(e))?;
            if k.first() != Some(&ROW) {
                break;
            }
            let corrupt =
                || StoreError::Corrupt(format!("row key {:?}", String::from_utf8_lossy(&k)));
            let body = &k[1..];
            if body.len() < 10 {
                return Err(corrupt());
            }
            let (names, ts) = body.split_at(body.len() - 8);
            let ts = i64::from_be_bytes(ts.try_into().map_err(|_| corrupt())?);
            let names = names.strip_suffix(&[0]).ok_or_else(corrupt)?;
            let mut parts = names.splitn(2, |b| *b == 0);
            let loc =
                std::str::from_utf8(parts.next().ok_or_else(corrupt)?).map_err(|_| corrupt())?;
            let cdn =
                std::str::from_utf8(parts.next().ok_or_else(corrupt)?).map_err(|_| corrupt())?;
            let row: Option<Expected> = serde_json::from_slice(&v)
                .map_err(|e| StoreError::Corrupt(format!("row value: {e}")))?;
            table.upsert(loc, cdn, ts, row);
        }
        Ok(table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_and_offsets_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = TableStore::open(dir.path()).unwrap();
            let row = Some(Expected {
                error_rate: Some(0.01),
                ..Default::default()
            });
            s.write(
                &[
                    Change {
                        location: "IN/MH/Mumbai",
                        cdn: "cdn-a",
                        ts: 1_000,
                        row,
                    },
                    Change {
                        location: "IN/MH/Mumbai",
                        cdn: "cdn-a",
                        ts: 2_000,
                        row: None,
                    },
                ],
                "bench",
                &[(0, 42)],
            )
            .unwrap();
        }
        let s = TableStore::open(dir.path()).unwrap();
        assert_eq!(s.next_offset("bench", 0).unwrap(), Some(42));
        assert_eq!(s.next_offset("bench", 1).unwrap(), None);
        let t = s.load().unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(
            t.as_of("IN/MH/Mumbai", "cdn-a", 1_500).unwrap().error_rate,
            Some(0.01)
        );
        assert!(t.as_of("IN/MH/Mumbai", "cdn-a", 2_500).is_none());
    }
}
