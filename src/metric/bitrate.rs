//! Played bitrate per report, lower is worse. Benchmarks carry no bitrate: a key is compared
//! with its own learned level. Off by default (`[metrics.bitrate_kbps] enabled = true`): a
//! lower bitrate is often the player adapting as it should.

use super::LogScale;

pub static BITRATE_KBPS: LogScale = LogScale {
    name: "bitrate_kbps",
    rules: ("bitrate_below_baseline", "bitrate_below_baseline"),
    label: "bitrate",
    unit: "kbps",
    value: |r| r.bitrate_kbps,
    benchmark: None,
    higher_is_worse: false,
    once_per_session: false,
    enabled_by_default: false,
    rank: u8::MAX,
    paired: false,
};

#[cfg(test)]
mod tests {
    use crate::decode::Report;
    use crate::detect::rules::MetricRule;
    use crate::engine::{Engine, Settings};
    use crate::incident::{Alert, Status};
    use crate::metric::Metric;

    const W: i64 = 60_000;

    /// 26 windows of 60 reports on each of two keys; from window 12 to 17 the sessions on
    /// `cdn-a` play at a third of their usual bitrate.
    fn run(cfg: &Settings) -> Vec<Alert> {
        let mut e = Engine::new(cfg);
        let mut out = Vec::new();
        for w in 0..26 {
            for n in 0..60 {
                for cdn in ["cdn-a", "cdn-b"] {
                    let usual = 3_500.0 * (1.0 + 0.15 * ((n * 7 + w) as f64).sin());
                    let dropped = cdn == "cdn-a" && (12..18).contains(&w);
                    let r = Report {
                        session_id: format!("s{n}").into(),
                        bitrate_kbps: Some(if dropped { usual / 3.0 } else { usual }),
                        ..Report::new("IN/MH/Mumbai", cdn, w * W + n * 1_000)
                    };
                    e.on_report(&r, None);
                }
            }
            out.extend(e.close_ready());
        }
        out.extend(e.close_until(27 * W));
        out
    }

    #[test]
    fn a_bitrate_drop_against_the_keys_own_level_fires_once_switched_on() {
        let off = run(&Settings::default());
        assert!(off.is_empty(), "off by default: {off:#?}");

        let mut on = Settings::default();
        let bitrate = Metric::named("bitrate_kbps").expect("registered");
        on.detect.metrics.insert(
            bitrate,
            MetricRule {
                enabled: Some(true),
                ..MetricRule::default()
            },
        );
        let alerts = run(&on);
        let firing = crate::incident::firing(&alerts);
        assert_eq!(firing.len(), 1, "{alerts:#?}");
        let a = firing[0];
        assert_eq!(
            (a.metric, a.rule.as_str(), a.scope.cdn.as_deref()),
            (bitrate, "bitrate_below_baseline", Some("cdn-a"))
        );
        assert!(a.observed < 0.4 * a.expected.unwrap_or(0.0), "{a:#?}");
        assert!(a.summary.contains("bitrate"), "{}", a.summary);
        assert!(
            alerts.iter().any(|a| a.status == Status::Resolved),
            "resolves when the bitrate is back: {alerts:#?}"
        );
    }
}
