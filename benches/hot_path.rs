//! The hot path with a realistic report mix (from the simulator): decode, as-of join plus
//! window update (on a fresh engine, and on one that has learned its keys' references over
//! ten closed windows, as a running daemon has), and window close plus detection.
//! `cargo bench --bench hot_path`; CI runs it in smoke mode (`cargo bench -- --test`).

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

use qos_sentinel::config::Config;
use qos_sentinel::decode::{Report, decode_report};
use qos_sentinel::engine::Engine;
use qos_sentinel::sim::{Event, SimConfig, Simulator};
use qos_sentinel::table::Expected;

const START: i64 = 1_767_297_600_000;

fn traffic(minutes: i64) -> (Vec<Report<'static>>, Vec<qos_sentinel::decode::Benchmark>) {
    let mut sc = SimConfig::quiet(9, START, minutes * 60_000);
    sc.locations = 200;
    sc.cdns = 4;
    sc.peak_sessions = 20_000;
    let (mut r, mut b) = (Vec::new(), Vec::new());
    for e in Simulator::new(sc) {
        match e {
            Event::Report(x) => r.push(x),
            Event::Benchmark(x) => b.push(x),
        }
    }
    (r, b)
}

fn engine_with(benchmarks: &[qos_sentinel::decode::Benchmark]) -> Engine {
    let mut e = Engine::new(&Config::default());
    for b in benchmarks {
        e.on_benchmark(&b.location, &b.cdn, b.ts, Some(Expected::from(b)));
    }
    e
}

/// The measured reports, in a function of its own: `valgrind --tool=callgrind
/// --toggle-collect='*hot_path*measured*'` counts its instructions alone (BENCHMARKS.md).
#[inline(never)]
fn measured(e: &mut Engine, reports: &[Report<'static>]) {
    for r in reports {
        e.on_report(r, None);
    }
}

fn bench(c: &mut Criterion) {
    let (reports, benchmarks) = traffic(3);
    let encoded: Vec<Vec<u8>> = reports
        .iter()
        .map(|r| serde_json::to_vec(r).unwrap())
        .collect();

    let mut g = c.benchmark_group("hot_path");
    g.throughput(Throughput::Elements(encoded.len() as u64));
    g.sample_size(10);
    g.bench_function("decode", |b| {
        b.iter(|| {
            for m in &encoded {
                std::hint::black_box(decode_report(m, 65_536).ok());
            }
        })
    });
    g.bench_function("join_and_window_update", |b| {
        b.iter_batched(
            || engine_with(&benchmarks),
            |mut e| {
                measured(&mut e, &reports);
                e
            },
            BatchSize::LargeInput,
        )
    });
    let (history, _) = traffic(13);
    let (warm, next): (Vec<_>, Vec<_>) = history
        .into_iter()
        .partition(|r| r.ts < START + 10 * 60_000);
    g.throughput(Throughput::Elements(next.len() as u64));
    g.bench_function("join_and_window_update_learned", |b| {
        b.iter_batched(
            || {
                let mut e = engine_with(&benchmarks);
                let mut minute = START;
                for r in &warm {
                    if r.ts >= minute + 60_000 {
                        e.close_until(minute);
                        minute += 60_000;
                    }
                    e.on_report(r, None);
                }
                e.close_until(START + 10 * 60_000);
                e
            },
            |mut e| {
                measured(&mut e, &next);
                e
            },
            BatchSize::LargeInput,
        )
    });
    g.throughput(Throughput::Elements(encoded.len() as u64));
    g.bench_function("close_and_detect", |b| {
        b.iter_batched(
            || {
                let mut e = engine_with(&benchmarks);
                for r in &reports {
                    e.on_report(r, None);
                }
                e
            },
            |mut e| std::hint::black_box(e.close_until(i64::MAX / 2)),
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
