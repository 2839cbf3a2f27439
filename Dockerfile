# syntax=docker/dockerfile:1
# qos-sentinel: multi-stage build, small non-root runtime image.
#   docker build -t qos-sentinel .
#   docker run --rm -v $PWD/my.toml:/etc/qos-sentinel/qos-sentinel.toml:ro qos-sentinel
FROM rust:1.95-bookworm AS build
# libclang for RocksDB's bindings; g++ builds RocksDB and librdkafka; libssl for TLS.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libclang-dev g++ make pkg-config libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY benches benches
RUN cargo build --release --locked --bin qos-sentinel \
 && strip target/release/qos-sentinel

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin qos \
 && mkdir -p /var/lib/qos-sentinel /etc/qos-sentinel \
 && chown qos /var/lib/qos-sentinel
COPY --from=build /src/target/release/qos-sentinel /usr/local/bin/qos-sentinel
# The image's default config; mount your own over it (read-only is fine).
COPY config/container.toml /etc/qos-sentinel/qos-sentinel.toml
USER 10001
ENV QOS_SENTINEL_CONFIG=/etc/qos-sentinel/qos-sentinel.toml
VOLUME ["/var/lib/qos-sentinel"]
EXPOSE 9464
ENTRYPOINT ["/usr/local/bin/qos-sentinel"]
CMD ["run"]
