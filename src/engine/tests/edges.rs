//! Numeric edges: reports the decoder accepts, with full-range values (any `u64` durations,
//! `played_ms + rebuffer_ms` past `u64::MAX`, huge or tiny rates, benchmarks of extreme
//! values, now and then an event time anywhere in `i64`), never panic the engine in a debug build (overflow checks on), through window
//! closes, detection and incidents.

use proptest::prelude::*;

use super::*;

fn duration() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        Just(u64::MAX),
        Just(u64::MAX / 2 + 1),
        Just(i64::MAX as u64),
        any::<u64>(),
        0u64..60_000,
    ]
}

fn rate() -> impl Strategy<Value = Option<f64>> {
    prop_oneof![
        Just(None),
        Just(Some(0.0)),
        Just(Some(f64::MAX)),
        Just(Some(f64::MIN_POSITIVE)),
        Just(Some(1e300)),
        (0.0..1e12f64).prop_map(Some),
    ]
}

fn ratio() -> impl Strategy<Value = Option<f64>> {
    prop_oneof![
        Just(None),
        Just(Some(0.0)),
        Just(Some(1.0)),
        (0.0..=1.0f64).prop_map(Some)
    ]
}

type Row = (
    usize,
    i64,
    u64,
    u64,
    Option<u64>,
    Option<f64>,
    Option<f64>,
    bool,
);

fn row() -> impl Strategy<Value = Row> {
    (
        0usize..3,
        prop_oneof![
            8 => 0i64..8 * W,
            1 => Just(i64::MIN),
            1 => Just(i64::MAX),
            1 => any::<i64>(),
        ],
        duration(),
        duration(),
        prop::option::of(duration()),
        rate(),
        rate(),
        any::<bool>(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn full_range_values_never_panic_the_engine(
        rows in prop::collection::vec(row(), 1..400),
        throughput in rate(),
        startup in rate(),
        rebuffer in ratio(),
        errors in ratio(),
    ) {
        let mut e = Engine::new(Settings::default());
        let row = Expected {
            throughput_kbps: throughput,
            rebuffer_ratio: rebuffer,
            startup_ms: startup,
            error_rate: errors,
        };
        e.on_benchmark("L0", "c", 0, Some(row));
        e.on_benchmark("L1", "c", 0, Some(row));
        for (i, (k, ts, played, stalled, start, thr, bit, failed)) in rows.iter().enumerate() {
            let r = Report {
                session_id: format!("s{}", i % 7).into(),
                played_ms: *played,
                rebuffer_ms: *stalled,
                startup_ms: *start,
                throughput_kbps: *thr,
                bitrate_kbps: *bit,
                error: failed.then(|| "E".into()),
                ..Report::new(format!("L{k}"), "c", *ts)
            };
            e.on_report(&r, None);
            let _ = e.close_ready();
        }
        // The property is that nothing above panicked (overflow checks are on in tests).
        let _ = e.close_until(12 * W);
    }
}
