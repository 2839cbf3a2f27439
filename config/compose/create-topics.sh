#!/bin/bash
# One-shot job of the docker-compose stack: creates qos-sentinel's topics.
# Reports are keyed and partitioned by location: partitions bound how many instances share
# the work. Benchmarks are log-compacted (key location|cdn): the table is the topic.
set -euo pipefail
topics=/opt/kafka/bin/kafka-topics.sh
b=kafka:9092
create() { "$topics" --bootstrap-server "$b" --create --if-not-exists --replication-factor 1 "$@"; }
create --topic qos.client-reports --partitions 12 --config retention.ms=86400000
create --topic qos.cdn-benchmarks --partitions 1 --config cleanup.policy=compact
create --topic qos.alerts --partitions 3
create --topic qos.dead-letter --partitions 3 --config retention.ms=604800000
# Partition state for hand-over between instances (kafka.changelog_topic): as many partitions
# as the reports topic, compacted. Needed only to run more than one instance.
create --topic qos.sentinel-changelog --partitions 12 --config cleanup.policy=compact --config max.message.bytes=67108864
# Partitions' per-window summaries for the CDN-wide stage across instances
# (kafka.summaries_topic): one partition, a day is plenty.
create --topic qos.sentinel-summaries --partitions 1 --config retention.ms=86400000
"$topics" --bootstrap-server "$b" --list
