//! qos-sentinel: finds the locations and CDNs giving viewers bad playback, from Kafka, in
//! event time, with statistics.
//!
//! Stages, in the order the data walks them:
//! [`source`] (Kafka consumers) → [`decode`] → [`table`] (CDN benchmarks, as-of join) →
//! [`window`] → [`detect`] → [`incident`] → [`notify`]. [`engine`] is the pure core that
//! chains join, windows, detection and incidents; [`daemon`] is the async shell around it.

pub mod backtest;
pub mod bench;
pub mod changelog;
pub mod checkpoint;
pub mod config;
pub mod daemon;
pub mod decode;
pub mod demo;
pub mod detect;
pub mod engine;
pub mod field;
pub mod glob;
pub mod hash;
pub mod history;
pub mod http;
pub mod incident;
pub mod kafka;
pub mod metric;
pub mod metrics;
pub mod notify;
pub mod rekey;
pub mod retry;
pub mod silence;
pub mod sim;
pub mod source;
pub mod table;
pub mod time;
pub mod window;
