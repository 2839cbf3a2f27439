//! Reading partitions to their end, the one implementation. The end is where fetching
//! reports it (partition EOF), never the offset lookup's high watermark: some brokers
//! (tansu 0.6) answer that one short of the last batch. Used to look alerts up on their
//! topic, to read a partition's last changelog share, and to check a checkpoint's positions.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};

/// What the reader does after a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Read on.
    More,
    /// This record's partition needs no more reading (it does not count as ended).
    DonePartition,
    /// Stop reading every partition.
    Stop,
}

/// How a read goes.
#[derive(Debug, Clone, Copy)]
pub struct Read {
    /// Give up after this long (see [`Ended::complete`]).
    pub timeout: Duration,
    /// A consumer error other than EOF ends the read with that error; otherwise it is
    /// skipped and reading goes on.
    pub fail_on_error: bool,
    /// A partition's end counts only after it delivered a record (a read started just below
    /// the last record, which must arrive first).
    pub end_after_a_record: bool,
}

/// How a read ended.
#[derive(Debug, Default)]
pub struct Ended {
    /// Partitions read to their end (an EOF while still being read).
    pub ended: HashSet<i32>,
    /// Whether every partition ended or was done, or the reader said stop, before the timeout.
    pub complete: bool,
}

/// Reads `topic` from each `(partition, offset)` until each partition ends or is done, the
/// reader says stop, or `how.timeout` passes; `on_record` sees every record. Blocking.
pub fn read_to_end<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    from: &[(i32, Offset)],
    how: Read,
    mut on_record: impl FnMut(&BorrowedMessage<'_>) -> Next,
) -> Result<Ended, KafkaError> {
    let mut out = Ended::default();
    let mut tpl = TopicPartitionList::new();
    for (p, o) in from {
        tpl.add_partition_offset(topic, *p, *o)?;
    }
    let mut open: HashSet<i32> = from.iter().map(|(p, _)| *p).collect();
    if open.is_empty() {
        out.complete = true;
        return Ok(out);
    }
    consumer.assign(&tpl)?;
    let mut delivered: HashSet<i32> = HashSet::new();
    let started = Instant::now();
    while !open.is_empty() {
        let left = how.timeout.saturating_sub(started.elapsed());
        if left.is_zero() {
            return Ok(out);
        }
        match consumer.poll(left.min(Duration::from_millis(100))) {
            Some(Ok(m)) => {
                let p = m.partition();
                delivered.insert(p);
                match on_record(&m) {
                    Next::More => {}
                    Next::DonePartition => {
                        open.remove(&p);
                    }
                    Next::Stop => break,
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                if (!how.end_after_a_record || delivered.contains(&p)) && open.remove(&p) {
                    out.ended.insert(p);
                }
            }
            Some(Err(e)) if how.fail_on_error => return Err(e),
            Some(Err(_)) | None => {}
        }
    }
    out.complete = true;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::KafkaConfig;
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{BaseRecord, Producer};

    /// A mock cluster (real wire protocol on loopback) with `topic` holding `per_partition`
    /// records on each of 2 partitions, payloads "p:i".
    fn filled(
        topic: &str,
        per_partition: usize,
    ) -> (
        MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
        KafkaConfig,
    ) {
        let cluster = MockCluster::new(1).expect("mock cluster");
        cluster.create_topic(topic, 2, 1).expect("topic");
        let k = KafkaConfig {
            brokers: cluster.bootstrap_servers(),
            group_id: "read-test".into(),
            ..Default::default()
        };
        let producer = crate::kafka::metadata_client(&k).expect("producer");
        for p in 0..2 {
            for i in 0..per_partition {
                let v = format!("{p}:{i}");
                producer
                    .send(BaseRecord::<(), str>::to(topic).partition(p).payload(&v))
                    .map_err(|(e, _)| e)
                    .expect("queued");
            }
        }
        producer.flush(Duration::from_secs(10)).expect("flushed");
        (cluster, k)
    }

    fn how() -> Read {
        Read {
            timeout: Duration::from_secs(20),
            fail_on_error: true,
            end_after_a_record: false,
        }
    }

    #[test]
    fn reads_every_partition_to_its_end_and_stops_when_asked() {
        let (_cluster, k) = filled("t", 5);
        let reader = crate::kafka::end_reader(&k, ".a", "earliest", false).expect("reader");
        let from = [(0, Offset::Beginning), (1, Offset::Offset(3))];
        let mut seen = Vec::new();
        let end = read_to_end(&reader, "t", &from, how(), |m| {
            seen.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned());
            Next::More
        })
        .expect("read");
        assert!(end.complete);
        assert_eq!(end.ended, HashSet::from([0, 1]));
        seen.sort();
        assert_eq!(seen, ["0:0", "0:1", "0:2", "0:3", "0:4", "1:3", "1:4"]);

        let reader = crate::kafka::end_reader(&k, ".b", "earliest", false).expect("reader");
        let mut n = 0;
        let end = read_to_end(&reader, "t", &from, how(), |_| {
            n += 1;
            if n == 2 { Next::Stop } else { Next::More }
        })
        .expect("read");
        assert!(end.complete);
        assert_eq!(n, 2);
    }

    #[test]
    fn a_partition_that_ends_before_the_offset_is_told_from_one_that_has_it() {
        let (_cluster, k) = filled("u", 4);
        // Partition 0 has offset 3 (its last record); partition 1 is asked from past its end.
        let reader = crate::kafka::end_reader(&k, ".c", "latest", true).expect("reader");
        let from = [(0, Offset::Offset(3)), (1, Offset::Offset(9))];
        let end = read_to_end(&reader, "u", &from, how(), |_| Next::DonePartition).expect("read");
        assert!(end.complete);
        assert_eq!(end.ended, HashSet::from([1]));
    }
}
