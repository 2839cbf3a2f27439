//! qos-sentinel command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::sync::watch;

use qos_sentinel::config::Config;
use qos_sentinel::daemon::{self, RunOptions};
use qos_sentinel::sim::feed::{FeedOptions, feed};
use qos_sentinel::sim::{Labels, SimConfig, Simulator};
use qos_sentinel::{backtest, demo, notify, time};

#[derive(Parser)]
#[command(
    name = "qos-sentinel",
    version,
    about = "Finds the locations and CDNs giving viewers bad playback."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Check the arguments and exit (used by the docker-compose test).
    #[arg(long, global = true, hide = true)]
    parse_only: bool,
    /// Log lines as text (coloured only on a terminal) or as JSON objects, one a line
    /// (tracing's JSON format: `timestamp`, `level`, `fields`, `target`), for log shippers.
    #[arg(
        long,
        global = true,
        env = "QOS_SENTINEL_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Exit status of a configuration error (sysexits' `EX_CONFIG`): the systemd unit does not
/// restart on it, since the same file fails the same way.
const EX_CONFIG: u8 = 78;
/// Exit status of bad usage (as clap's own errors): an argument out of range.
const EX_USAGE: u8 = 2;

/// An argument that is unusable: exit status 2, as clap's own usage errors.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Usage(String);

/// Bails out with a [`Usage`] error unless `cond`.
macro_rules! usage_ensure {
    ($cond:expr, $($msg:tt)+) => {
        let ok: bool = $cond;
        if !ok {
            return Err(Usage(format!($($msg)+)).into());
        }
    };
}

#[derive(Subcommand)]
enum IncidentsCommand {
    /// State changes a running daemon kept, newest first (a page; --cursor for the next).
    List {
        /// The daemon's http.listen.
        #[arg(long, default_value = "http://127.0.0.1:9464")]
        url: String,
        /// firing or resolved.
        #[arg(long)]
        status: Option<String>,
        /// Scope pattern, e.g. cdn=cdn-a or location=IN/*.
        #[arg(long)]
        scope: Option<String>,
        /// From: RFC 3339, epoch ms, or a duration back from now (2h).
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Every state change of one incident, oldest first.
    Show {
        id: String,
        #[arg(long, default_value = "http://127.0.0.1:9464")]
        url: String,
    },
}

#[derive(Subcommand)]
enum RulesCommand {
    /// Check a rules file (e.g. alerts/rules.toml): every mistake with its line; exit 1 if any.
    Lint { file: PathBuf },
}

#[derive(clap::Args)]
struct SimulateArgs {
    /// Brokers to produce to; omit with --out-dir.
    #[arg(long)]
    brokers: Option<String>,
    /// Write reports.jsonl, benchmarks.jsonl and labels.json here instead.
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// Run the traffic straight through detection instead (no broker, no files) and
    /// print the alerts' score against the injected incidents: for long runs.
    #[arg(long)]
    score: bool,
    #[arg(long, default_value_t = 60)]
    minutes: u64,
    /// Simulated seconds per wall-clock second; 0 = as fast as possible.
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Inject the demo's incidents (otherwise quiet traffic).
    #[arg(long)]
    incidents: bool,
    #[arg(long, default_value_t = 24)]
    locations: usize,
    #[arg(long, default_value_t = 4)]
    cdns: usize,
    #[arg(long, default_value_t = 4_000)]
    peak_sessions: usize,
    /// Share of location+CDN keys that get no benchmark (watched against their own level).
    #[arg(long, default_value_t = 0.0)]
    unbenchmarked: f64,
    /// How viewers' networks differ: `even` (one log-normal quality per session) or
    /// `classes` (each session on a fast home, slow home or mobile network, heavy-tailed).
    #[arg(long, default_value = "even")]
    networks: qos_sentinel::sim::Networks,
    /// Seconds between two reports of a session (players that report per chunk send one
    /// every few seconds: more reports per session in a window, as correlated).
    #[arg(long, default_value_t = 20)]
    report_seconds: u64,
    /// Event time of the first report (RFC 3339); default: now minus the duration.
    #[arg(long)]
    start: Option<String>,
    #[arg(long, default_value = "qos.client-reports")]
    reports_topic: String,
    #[arg(long, default_value = "qos.cdn-benchmarks")]
    benchmarks_topic: String,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon against a Kafka cluster.
    Run {
        #[arg(
            long,
            env = "QOS_SENTINEL_CONFIG",
            default_value = "config/qos-sentinel.toml"
        )]
        config: PathBuf,
    },
    /// Move reports keyed by session (another topic) to the reports topic keyed by
    /// location, at least once; bad input to the dead-letter topic. Runs until SIGTERM.
    Rekey {
        #[arg(
            long,
            env = "QOS_SENTINEL_CONFIG",
            default_value = "config/qos-sentinel.toml"
        )]
        config: PathBuf,
        /// The session-keyed topic to read.
        #[arg(long)]
        from: String,
        /// Consumer group (default: kafka.group_id + "-rekey").
        #[arg(long)]
        group: Option<String>,
        /// Serve /metrics and /healthz here.
        #[arg(long)]
        http: Option<String>,
    },
    /// Validate a config file (with environment overrides applied) and exit.
    CheckConfig { file: PathBuf },
    /// A webhook receiver for trying notifications out: prints every alert POSTed to it,
    /// verifying the X-QoS-Signature when given the HMAC secret.
    Receive {
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: String,
        /// HMAC key (or env:NAME, file:/path) the sender signs with; unsigned or badly
        /// signed requests are then refused with 401.
        #[arg(long, env = "QOS_RECEIVE_HMAC_SECRET", hide_env_values = true)]
        hmac_secret: Option<String>,
    },
    /// In-process broker, simulated traffic with incidents, the daemon, alerts printed.
    Demo {
        /// Simulated minutes of traffic.
        #[arg(long, default_value_t = 60)]
        minutes: u64,
        /// Simulated seconds per wall-clock second.
        #[arg(long, default_value_t = 60.0)]
        speed: f64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Also serve /metrics, /healthz and /readyz on this address.
        #[arg(long)]
        http: Option<String>,
    },
    /// Feed a Kafka cluster with simulated traffic, or write it to files.
    Simulate(SimulateArgs),
    /// End-to-end benchmark: produce N simulated reports to a broker on loopback, measure
    /// a bare consumer (the ceiling), the daemon's rate, alert latency to a webhook, memory per
    /// key and restart time. Prints a Markdown table (stdout) and progress (stderr).
    Bench {
        #[arg(long, default_value_t = 1_000_000)]
        reports: u64,
        /// Partitions of the reports topic (the in-process broker keeps 5 MiB per partition).
        #[arg(long, default_value_t = 256)]
        partitions: i32,
        /// Active-key counts for the memory figure (comma separated); the largest also gets
        /// the restart figure.
        #[arg(long, value_delimiter = ',', default_value = "10000,100000,1000000")]
        keys: Vec<usize>,
        /// An external Kafka cluster instead of the in-process one.
        #[arg(long)]
        brokers: Option<String>,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Share of the reports topic's messages that are bad (each a dead letter), 0 to 0.99.
        #[arg(long, default_value_t = 0.0)]
        bad_share: f64,
        /// Also write the figures as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// One memory measurement of `bench`, run in a child process of its own.
    #[command(hide = true)]
    BenchMemory {
        #[arg(long)]
        keys: usize,
        #[arg(long)]
        restart: bool,
    },
    /// One report partition of `--keys` keys written to a changelog topic and taken over from
    /// it as a partition's next owner does (BENCHMARKS.md); prints the figures as JSON.
    BenchTakeover {
        #[arg(long, default_value_t = 100_000)]
        keys: usize,
        /// A Kafka broker with `--topic` created; without, librdkafka's in-process mock
        /// cluster, which keeps only 5 MiB a partition (about 3,000 keys).
        #[arg(long)]
        brokers: Option<String>,
        #[arg(long, default_value = "qos-sentinel-bench-changelog")]
        topic: String,
    },
    /// A running daemon's incident history.
    Incidents {
        #[command(subcommand)]
        command: IncidentsCommand,
    },
    /// A running daemon's silences and maintenance windows.
    Silence {
        #[command(subcommand)]
        command: qos_sentinel::silence::cli::SilenceCommand,
    },
    /// Detection rules files.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
    /// Run the daemon's detection over recorded files (docs/formats.md, `backtest`).
    Backtest {
        #[arg(long)]
        reports: PathBuf,
        #[arg(long)]
        benchmarks: PathBuf,
        #[arg(long)]
        config: Option<PathBuf>,
        /// Detection settings (TOML, the fields of the config's [detect] section).
        #[arg(long)]
        rules: Option<PathBuf>,
        #[arg(long)]
        out: PathBuf,
        /// Labelled incidents: print recall, precision and median detection delay.
        #[arg(long)]
        labels: Option<PathBuf>,
    },
}

fn load_config(path: &Path) -> anyhow::Result<Config> {
    Ok(Config::load(path, std::env::vars())?)
}

async fn shutdown_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            match signal(SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = ctrl_c => {}
                        _ = term.recv() => {}
                    }
                }
                Err(_) => {
                    let _ = ctrl_c.await;
                }
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        let _ = tx.send(true);
    });
    rx
}

/// The command line's dispatch: one function per command.
async fn real_main(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Bench {
            reports,
            partitions,
            keys,
            brokers,
            seed,
            bad_share,
            json,
        } => {
            let opts = qos_sentinel::bench::BenchOptions {
                reports,
                partitions,
                keys,
                brokers,
                seed,
                bad_share,
            };
            bench(opts, json).await
        }
        Command::BenchMemory { keys, restart } => {
            let m = qos_sentinel::bench::memory(keys, restart)?;
            println!("{}", serde_json::to_string(&m)?);
            Ok(())
        }
        Command::BenchTakeover {
            keys,
            brokers,
            topic,
        } => {
            let f = qos_sentinel::bench::takeover(brokers.as_deref(), &topic, keys).await?;
            println!("{}", serde_json::to_string(&f)?);
            Ok(())
        }
        Command::Rules {
            command: RulesCommand::Lint { file },
        } => qos_sentinel::detect::rules::lint_file(&file),
        Command::Incidents { command } => incidents(command).await,
        Command::Silence { command } => qos_sentinel::silence::cli::run(command).await,
        Command::Receive {
            listen,
            hmac_secret,
        } => receive(&listen, hmac_secret).await,
        Command::Run { config } => run(&config).await,
        Command::CheckConfig { file } => check_config(&file),
        Command::Rekey {
            config,
            from,
            group,
            http,
        } => rekey(&config, from, group, http).await,
        Command::Demo {
            minutes,
            speed,
            seed,
            http,
        } => {
            usage_ensure!(minutes >= 10, "--minutes ({minutes}) must be at least 10");
            usage_ensure!(speed > 0.0, "--speed ({speed}) must be positive");
            demo::run(demo::DemoOptions {
                minutes,
                speed,
                seed,
                http,
            })
            .await
        }
        Command::Simulate(args) => simulate(args).await,
        Command::Backtest {
            reports,
            benchmarks,
            config,
            rules,
            out,
            labels,
        } => backtest_files(config, rules, &reports, &benchmarks, &out, labels),
    }
}

async fn bench(
    opts: qos_sentinel::bench::BenchOptions,
    json: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    usage_ensure!(opts.reports > 0, "--reports must be at least 1");
    usage_ensure!(opts.partitions > 0, "--partitions must be at least 1");
    usage_ensure!(
        !opts.keys.is_empty() && opts.keys.iter().all(|k| *k > 0),
        "--keys must list positive counts"
    );
    let figures = qos_sentinel::bench::run(&opts).await?;
    print!("{}", qos_sentinel::bench::render(&figures));
    if let Some(path) = json {
        std::fs::write(&path, serde_json::to_vec_pretty(&figures)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

async fn incidents(command: IncidentsCommand) -> anyhow::Result<()> {
    use qos_sentinel::history::{print_incident, print_list};
    match command {
        IncidentsCommand::Show { id, url } => print_incident(&url, &id).await,
        IncidentsCommand::List {
            url,
            status,
            scope,
            since,
            until,
            limit,
            cursor,
        } => {
            // A duration is that long before now.
            let when = |t: String| match humantime::parse_duration(&t) {
                Ok(d) => (time::now_ms() - d.as_millis() as i64).to_string(),
                Err(_) => t,
            };
            let optional = [
                ("status", status),
                ("scope", scope),
                ("since", since.map(when)),
                ("until", until.map(when)),
                ("cursor", cursor),
            ];
            let mut params = vec![("limit", limit.to_string())];
            params.extend(optional.into_iter().filter_map(|(k, v)| Some((k, v?))));
            print_list(&url, &params).await
        }
    }
}

async fn receive(listen: &str, hmac_secret: Option<String>) -> anyhow::Result<()> {
    let secret = match hmac_secret {
        Some(s) => Some(
            qos_sentinel::config::Secret::resolve(&s)
                .map_err(|e| anyhow::anyhow!("--hmac-secret: {e}"))?,
        ),
        None => None,
    };
    if let Some(s) = &secret {
        usage_ensure!(
            notify::render::hmac_key(s.expose()).is_some(),
            "--hmac-secret starts with whsec_ but the rest is not base64 of a key"
        );
    }
    notify::receive::serve(listen, secret).await
}

async fn run(config: &Path) -> anyhow::Result<()> {
    let cfg = load_config(config)?;
    let stop = shutdown_signal().await;
    // A shutdown that hangs (a broker gone mid-commit) must not outlive its deadline.
    let mut watch_stop = stop.clone();
    let hard_stop = cfg.notify.flush_timeout + std::time::Duration::from_secs(20);
    tokio::spawn(async move {
        if watch_stop.wait_for(|s| *s).await.is_ok() {
            tokio::time::sleep(hard_stop).await;
            eprintln!("error: shutdown did not finish within {hard_stop:?}; exiting");
            std::process::exit(1);
        }
    });
    daemon::run(
        cfg,
        RunOptions {
            print_alerts: true,
            serve_http: true,
            config_path: Some(config.to_path_buf()),
            metrics: None,
        },
        stop,
    )
    .await
}

async fn rekey(
    config: &Path,
    from: String,
    group: Option<String>,
    http: Option<String>,
) -> anyhow::Result<()> {
    let cfg = load_config(config)?;
    let stop = shutdown_signal().await;
    qos_sentinel::rekey::command(&cfg, from, group, http, stop).await
}

fn check_config(file: &Path) -> anyhow::Result<()> {
    let cfg = load_config(file)?;
    println!("{}: ok", file.display());
    for r in &cfg.notify.receivers {
        // Names and routing only: URLs and keys are secrets.
        println!(
            "  receiver {}: {:?}, repeat {}, rate limit {}/min",
            r.name,
            r.kind,
            r.repeat().map_or_else(
                || "never".into(),
                |d| humantime::format_duration(d).to_string()
            ),
            r.rate_limit()
        );
    }
    Ok(())
}

/// `simulate --score`: backtests the simulated traffic against its own labels.
fn score_sim(sim: Simulator) -> anyhow::Result<()> {
    let cfg = Config::default();
    let labels = Labels::of(&sim, cfg.window_ms());
    let summary = backtest::run_stream(&cfg, sim);
    for a in &summary.alerts {
        eprintln!("{}", notify::render_line(a));
    }
    eprintln!("{}", summary.line());
    let s = backtest::score(&summary.alerts, &labels);
    println!("{}", serde_json::to_string(&s)?);
    Ok(())
}

/// `simulate`: the traffic to files, to the brokers' topics, or scored.
async fn simulate(a: SimulateArgs) -> anyhow::Result<()> {
    let duration = a.minutes as i64 * 60_000;
    let start = match &a.start {
        Some(s) => time::parse_rfc3339(s)
            .with_context(|| format!("--start ({s}) is not an RFC 3339 time"))?,
        None => time::now_ms().div_euclid(60_000) * 60_000 - duration,
    };
    let mut sc = if a.incidents {
        SimConfig::demo(a.seed, start, duration)
    } else {
        SimConfig::quiet(a.seed, start, duration)
    };
    sc.locations = a.locations;
    sc.cdns = a.cdns;
    sc.peak_sessions = a.peak_sessions;
    sc.unbenchmarked_share = a.unbenchmarked;
    sc.networks = a.networks;
    usage_ensure!(
        (1..=60).contains(&a.report_seconds),
        "--report-seconds ({}) must be within 1..=60",
        a.report_seconds
    );
    sc.report_interval = a.report_seconds as i64 * 1_000;
    let sim = Simulator::new(sc);
    if a.score {
        return score_sim(sim);
    }
    match (a.brokers, a.out_dir) {
        (_, Some(dir)) => write_sim(sim, &dir),
        (Some(brokers), None) => {
            let mut k = Config::default().kafka;
            k.brokers = brokers;
            let producer = qos_sentinel::kafka::producer(&k)?;
            let opts = FeedOptions {
                reports_topic: a.reports_topic,
                benchmarks_topic: a.benchmarks_topic,
                speed: a.speed,
                bad_every: 0,
            };
            let stop = shutdown_signal().await;
            let stats = feed(&producer, sim, &opts, Some(stop), |_, _| {}).await?;
            eprintln!(
                "simulate: sent {} reports and {} benchmarks",
                stats.reports, stats.benchmarks
            );
            Ok(())
        }
        (None, None) => Err(Usage("simulate needs --brokers or --out-dir".into()).into()),
    }
}

fn backtest_files(
    config: Option<std::path::PathBuf>,
    rules: Option<std::path::PathBuf>,
    reports: &Path,
    benchmarks: &Path,
    out: &Path,
    labels: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    let mut cfg = match config {
        Some(p) => load_config(&p)?,
        None => Config::default(),
    };
    if let Some(r) = rules {
        cfg.detect = qos_sentinel::config::load_rules(&r)?;
        cfg.validate()?;
    }
    let labels = labels.map(|l| backtest::read_labels(&l)).transpose()?;
    let summary = backtest::run(&cfg, reports, benchmarks, out)?;
    eprintln!("{}", summary.line());
    if let Some(l) = labels {
        let s = backtest::score(&summary.alerts, &l);
        println!("{}", serde_json::to_string(&s)?);
    }
    Ok(())
}

fn write_sim(sim: Simulator, dir: &Path) -> anyhow::Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let labels = Labels::of(&sim, 60_000);
    let open = |name: &str| -> anyhow::Result<std::io::BufWriter<std::fs::File>> {
        let p = dir.join(name);
        Ok(std::io::BufWriter::new(
            std::fs::File::create(&p).with_context(|| format!("cannot create {}", p.display()))?,
        ))
    };
    let (mut r, mut b) = (open("reports.jsonl")?, open("benchmarks.jsonl")?);
    for ev in sim {
        match ev {
            qos_sentinel::sim::Event::Report(x) => writeln!(r, "{}", serde_json::to_string(&x)?)?,
            qos_sentinel::sim::Event::Benchmark(x) => {
                writeln!(b, "{}", serde_json::to_string(&x)?)?
            }
        }
    }
    r.flush()?;
    b.flush()?;
    std::fs::write(
        dir.join("labels.json"),
        serde_json::to_string_pretty(&labels)?,
    )?;
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.parse_only {
        return ExitCode::SUCCESS;
    }
    // The demo prints its own story; the daemon logs what it does.
    let default_filter = match cli.command {
        Command::Demo { .. }
        | Command::Bench { .. }
        | Command::BenchMemory { .. }
        | Command::BenchTakeover { .. } => "warn",
        _ => "warn,qos_sentinel=info",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => {
            use std::io::IsTerminal;
            // Colours only for a person at a terminal: not in journald, files or pipes.
            let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            builder.with_ansi(ansi).init()
        }
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(real_main(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            exit_code(&e)
        }
    }
}

/// 78 for a configuration error (the config or a rules file), 2 for bad usage, 1 for
/// anything else.
fn exit_code(e: &anyhow::Error) -> ExitCode {
    let is = |f: &dyn Fn(&(dyn std::error::Error + 'static)) -> bool| e.chain().any(f);
    if is(&|c| {
        c.is::<qos_sentinel::config::ConfigError>()
            || c.is::<qos_sentinel::detect::config::RulesError>()
    }) {
        ExitCode::from(EX_CONFIG)
    } else if is(&|c| c.is::<Usage>()) {
        ExitCode::from(EX_USAGE)
    } else {
        ExitCode::FAILURE
    }
}
