//! Delivery metrics per receiver.

use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts};

use super::config::ReceiverConfig;
use super::deliver::OUTCOMES;

/// Delivery metrics, registered in the daemon's registry.
#[derive(Clone)]
pub struct DeliveryMetrics {
    pub deliveries: IntCounterVec,
    pub outbox_depth: IntGaugeVec,
    pub latency: HistogramVec,
    /// Failed reads of the outbox (`qos_sentinel_retries_total{loop="outbox"}` in the daemon).
    pub outbox_retries: IntCounter,
}

impl DeliveryMetrics {
    /// Registers them in `r`; `retries` is the daemon's `qos_sentinel_retries_total`, if it
    /// has one.
    pub fn register(
        r: &prometheus::Registry,
        receivers: &[ReceiverConfig],
        retries: Option<&IntCounterVec>,
    ) -> Self {
        let deliveries = IntCounterVec::new(
            Opts::new(
                "qos_sentinel_deliveries_total",
                "Attempts to deliver a message to a receiver, by receiver and outcome.",
            ),
            &["receiver", "outcome"],
        )
        .expect("static metric definition");
        let outbox_depth = IntGaugeVec::new(
            Opts::new(
                "qos_sentinel_outbox_depth",
                "Messages waiting in the outbox, by receiver.",
            ),
            &["receiver"],
        )
        .expect("static metric definition");
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "qos_sentinel_delivery_duration_seconds",
                "From queueing a message to the receiver's 2xx, by receiver.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 300.0,
            ]),
            &["receiver"],
        )
        .expect("static metric definition");
        for rc in receivers {
            for o in OUTCOMES {
                deliveries.with_label_values(&[rc.name.as_str(), o]);
            }
            outbox_depth.with_label_values(&[rc.name.as_str()]);
            latency.with_label_values(&[rc.name.as_str()]);
        }
        for c in [
            Box::new(deliveries.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(outbox_depth.clone()),
            Box::new(latency.clone()),
        ] {
            // Registered once per registry; a second dispatcher on one registry keeps the first.
            let _ = r.register(c);
        }
        let outbox_retries = retries.map_or_else(
            || IntCounter::new("outbox_retries", "unregistered").expect("static metric definition"),
            |v| v.with_label_values(&["outbox"]),
        );
        DeliveryMetrics {
            deliveries,
            outbox_depth,
            latency,
            outbox_retries,
        }
    }
}
