//! Producers compress: reports in batches compressed with each codec Kafka has (gzip, snappy,
//! lz4, zstd) are consumed by the daemon through a real Kafka-protocol broker (librdkafka's
//! mock cluster), every one of them counted and none dead-lettered, and the incident they
//! carry fires. Before rdkafka was built with zstd a zstd batch could not be read at all.

mod common;

use qos_sentinel::incident::Status;

const CODECS: [&str; 4] = ["gzip", "snappy", "lz4", "zstd"];

/// The test kit's bulk producer, compressing with `codec`.
fn producer(brokers: &str, codec: &str) -> common::Producer {
    let mut k = common::kafka_at(brokers);
    k.options.insert("compression.type".into(), codec.into());
    qos_sentinel::kafka::bulk_producer(&k)
        .unwrap_or_else(|e| panic!("a producer compressing with {codec}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_batches_in_every_codec_are_consumed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = common::test_config(dir.path());
    cfg.http.listen = common::free_addr();
    let broker = common::mock_cluster(&mut cfg, 1);
    let brokers = broker.bootstrap_servers();
    common::mumbai_benchmarks(&producer(&brokers, "none"), &cfg.kafka.benchmarks_topic);
    // Windows 0-11, three per codec: clean, then failing from window 3 (snappy) to 8 (lz4),
    // then clean; two windows past the last close them.
    let mut sent = 0;
    for (i, codec) in CODECS.iter().enumerate() {
        let p = producer(&brokers, codec);
        let first = i as i64 * 3;
        for w in first..first + 3 {
            common::mumbai_windows(&p, &cfg.kafka.reports_topic, w..w + 1, (3..9).contains(&w));
            sent += 160;
        }
    }
    let p = producer(&brokers, "zstd");
    common::mumbai_windows(&p, &cfg.kafka.reports_topic, 12..14, false);
    sent += 320;

    let daemon = common::start_daemon(&cfg);
    let alerts = common::alerts_until_resolved(&brokers, &cfg.kafka.alerts_topic).await;
    let base = format!("http://{}", cfg.http.listen);
    let metrics = common::scrape(&base).await;
    daemon.stop().await;
    let read = common::metric(&metrics, "qos_sentinel_records_in_total{input=\"reports\"}");
    let failed = common::decode_failures(&metrics);
    assert_eq!(read, sent as f64, "every report read, whatever its codec");
    assert_eq!(failed, 0.0, "none dead-lettered");
    assert!(
        alerts
            .iter()
            .any(|a| a.status == Status::Firing && a.scope.cdn.as_deref() == Some("cdn-a")),
        "the failures in the snappy, lz4 and zstd batches fire: {alerts:#?}"
    );
}
