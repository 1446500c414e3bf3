//! `hch train` and `hch report`: the amplify-distill loop from the command line (and the pieces
//! `hch demo` shares: run settings, progress, the embedded cluster).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::coordinator::pool::PoolConfig;
use crate::domain::{Domain, DomainKind};
use crate::model::config::{ModelConfig, Preset};
use crate::model::distill::TrainConfig;
use crate::server::{Cluster, ClusterConfig};
use crate::train::report::{self, RunSummary};
use crate::train::{
    GroundTruth, LocalAmplifier, Progress, RemoteAmplifier, RoundRecord, Run, RunConfig, StopAt,
    TargetSource, RUN_FORMAT,
};
use crate::with_domain;
use crate::worker::{Serving, WorkerConfig};

/// The run's settings (fixed when a run starts; a resumed run must be given the same).
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// The domain: permutation, assignments, wildcard, shortest-path or union-find.
    #[arg(short, long, default_value = "wildcard")]
    pub domain: DomainKind,
    /// Train on the ground truth instead of amplified answers (the supervised baseline).
    #[arg(long)]
    pub supervised: bool,
    /// Instance size the run is for: held-out accuracy is reported at it.
    #[arg(long, default_value_t = 8)]
    pub size: usize,
    /// Curriculum: first instance size (default: half the target size).
    #[arg(long)]
    pub start_size: Option<usize>,
    /// Curriculum: size increment (default: a quarter of the target size).
    #[arg(long)]
    pub size_step: Option<usize>,
    /// Curriculum: the teacher's agreement with a round's amplified targets that moves to the
    /// next stage (the paper's 85%).
    #[arg(long, default_value_t = 0.85)]
    pub advance_at: f64,
    /// Curriculum: within each size, raise the root questions' difficulty one level at a time
    /// (permutation and wildcard, whose difficulty shows in the question).
    #[arg(long)]
    pub difficulty_curriculum: bool,
    /// Root questions amplified per round.
    #[arg(long, default_value_t = 512)]
    pub roots: usize,
    /// Root questions asked about each fresh instance.
    #[arg(long, default_value_t = 4)]
    pub questions_per_instance: usize,
    /// The teacher (what is published and amplifies) is a moving average of the student over
    /// at most this many steps; 0: the student itself.
    #[arg(long, default_value_t = 1000)]
    pub ema_horizon: u64,
    /// Make the run a function of its settings alone (bit for bit on this machine): every model
    /// query in a forward pass of its own. Slower; needs --local.
    #[arg(long)]
    pub reproducible: bool,
    /// Below each root, amplify a random path of subquestions this many levels deep (targets
    /// at every depth of the trees X answers in).
    #[arg(long, default_value_t = 16)]
    pub descent: usize,
    /// Roots per committed target shard.
    #[arg(long, default_value_t = 256)]
    pub roots_per_part: usize,
    /// Optimiser steps per round.
    #[arg(long, default_value_t = 200)]
    pub steps: usize,
    /// Held-out questions per evaluated size.
    #[arg(long, default_value_t = 512)]
    pub heldout: usize,
    /// A generation more than this much less accurate than its predecessor is not promoted.
    #[arg(long, default_value_t = 0.02)]
    pub tolerance: f64,
    /// Model size: tiny, medium or paper.
    #[arg(long, default_value = "tiny")]
    pub model: Preset,
    /// The model answers "unknown" below this confidence. Amplification needs it: H gets an
    /// unknown subanswer instead of a guess, so early rounds produce targets only where X is
    /// already sure, and wrong guesses do not become targets.
    #[arg(long, default_value_t = 0.5)]
    pub abstain_below: f64,
    #[arg(long, default_value_t = 2e-3)]
    pub learning_rate: f64,
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Minibatches are drawn from the newest this-many targets.
    #[arg(long, default_value_t = 16_384)]
    pub replay_window: usize,
    /// Seed of the run (instances, questions, initial weights).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

impl RunArgs {
    pub(super) fn config<D: Domain>(&self, domain: &D) -> RunConfig {
        let start_size = self
            .start_size
            .unwrap_or((self.size / 2).max(D::MIN_SIZE).min(self.size));
        RunConfig {
            format: RUN_FORMAT,
            domain: D::KIND.name().to_string(),
            supervised: self.supervised,
            seed: self.seed,
            start_size,
            target_size: self.size,
            size_step: self.size_step.unwrap_or((self.size / 4).max(1)),
            advance_at: self.advance_at,
            difficulty_curriculum: self.difficulty_curriculum,
            roots_per_round: self.roots,
            questions_per_instance: self.questions_per_instance,
            reproducible: self.reproducible,
            descent: self.descent,
            roots_per_part: self.roots_per_part,
            steps_per_round: self.steps,
            heldout: self.heldout,
            gate_tolerance: self.tolerance,
            model: ModelConfig {
                unknown_below: self.abstain_below,
                ..ModelConfig::preset(domain, self.model)
            },
            train: TrainConfig {
                learning_rate: self.learning_rate,
                batch_size: self.batch,
                grad_clip: 1.0,
                replay_window: self.replay_window,
                seed: self.seed,
                ema_horizon: self.ema_horizon,
            },
        }
    }
}

/// Where amplified trees are evaluated.
#[derive(Args, Debug, Clone)]
pub struct EngineArgs {
    /// Start this many workers (and a coordinator) in this process, on loopback; they serve
    /// the run's registry and load each promoted generation.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Use a running coordinator instead; its workers must serve this run's registry
    /// (`hch worker --registry RUN/registry --domain D`).
    #[arg(long, conflicts_with = "local")]
    pub coordinator: Option<String>,
    /// The client token for a coordinator that requires one (`hch token`; it needs the ask and
    /// status rights).
    #[arg(long, requires = "coordinator")]
    pub token: Option<String>,
    /// TLS to the coordinator.
    #[command(flatten)]
    pub tls: super::ClientTlsArgs,
    /// Evaluate trees in this process without gRPC (fastest on one machine).
    #[arg(long)]
    pub local: bool,
}

/// When to stop (limits count the whole run, across resumes).
#[derive(Args, Debug, Clone)]
pub struct StopArgs {
    /// Stop after this many rounds in total.
    #[arg(long)]
    pub rounds: Option<u64>,
    /// Stop once a promoted generation reaches this held-out accuracy at the target size.
    #[arg(long)]
    pub until: Option<f64>,
    /// Stop after this many minutes of training in total.
    #[arg(long)]
    pub max_minutes: Option<f64>,
}

impl StopArgs {
    fn stop_at(&self) -> Result<StopAt> {
        if let Some(a) = self.until.filter(|a| !(0.0..=1.0).contains(a)) {
            bail!("--until takes an accuracy between 0 and 1, got {a}");
        }
        if let Some(m) = self.max_minutes.filter(|m| !m.is_finite() || *m < 0.0) {
            bail!("--max-minutes must be a non-negative number, got {m}");
        }
        if self.rounds.is_none() && self.until.is_none() && self.max_minutes.is_none() {
            bail!("say when to stop: --rounds N, --until ACCURACY and/or --max-minutes M");
        }
        Ok(StopAt {
            rounds: self.rounds,
            accuracy: self.until,
            wall: self.max_minutes.map(|m| Duration::from_secs_f64(m * 60.0)),
        })
    }
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Serve the trainer's metrics (GET /metrics: round, targets, steps, agreements, held-out
    /// accuracy, promoted generation) and health on this address: plain HTTP, unauthenticated.
    #[arg(long)]
    pub admin_listen: Option<std::net::SocketAddr>,
    /// Serve the run's registry to workers on other nodes (the Registry service, as
    /// `hch registry serve` does) on this address, so that `hch worker --registry-url` gets each
    /// promoted generation without a shared filesystem.
    #[arg(long)]
    pub serve_registry: Option<std::net::SocketAddr>,
    /// With --serve-registry: TLS on that listener (certificate chain, PEM) ...
    #[arg(long, requires_all = ["serve_registry", "registry_tls_key", "registry_tls_client_ca"])]
    pub registry_tls_cert: Option<PathBuf>,
    /// ... its private key (PEM) ...
    #[arg(long, requires = "registry_tls_cert")]
    pub registry_tls_key: Option<PathBuf>,
    /// ... and the CA whose client certificates (the workers') it requires.
    #[arg(long, requires = "registry_tls_cert")]
    pub registry_tls_client_ca: Option<PathBuf>,
    /// With --serve-registry: once training stops, keep serving the registry (and metrics)
    /// until SIGTERM, as a long-running trainer pod does.
    #[arg(long, requires = "serve_registry")]
    pub keep_serving: bool,
    /// The run directory (created, or resumed if it holds a run).
    #[arg(long)]
    pub run: Option<PathBuf>,
    #[command(flatten)]
    pub settings: RunArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
    #[command(flatten)]
    pub stop: StopArgs,
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Run directories to compare.
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// Accuracy for "steps to" and "time to".
    #[arg(long, default_value_t = 0.95)]
    pub accuracy: f64,
    /// Where to write the plot (default: report.svg in the first run directory).
    #[arg(long)]
    pub svg: Option<PathBuf>,
}

/// Progress on stderr: a redrawn bar on a terminal, a line per phase otherwise.
pub(super) struct ProgressView {
    tty: bool,
    round: u64,
    size: usize,
    amplifier: u64,
    last_line: String,
    table_header_done: bool,
    /// Set when a round is published, if the trainer exports metrics (`--admin-listen`).
    pub(super) metrics: Option<crate::metrics::TrainerMetrics>,
}

impl ProgressView {
    pub(super) fn new() -> Self {
        Self {
            tty: std::io::stderr().is_terminal(),
            round: 0,
            size: 0,
            amplifier: 0,
            last_line: String::new(),
            table_header_done: false,
            metrics: None,
        }
    }

    fn bar(done: usize, total: usize) -> String {
        const WIDTH: usize = 24;
        let filled = (WIDTH * done)
            .checked_div(total)
            .unwrap_or(WIDTH)
            .min(WIDTH);
        format!("[{}{}]", "#".repeat(filled), " ".repeat(WIDTH - filled))
    }

    fn status(&mut self, phase: &str, done: usize, total: usize, extra: &str) {
        let line = format!(
            "round {:>3}  size {:>2}  X=g{:<3} {phase:<9} {} {done:>5}/{total:<5} {extra}",
            self.round,
            self.size,
            self.amplifier,
            Self::bar(done, total)
        );
        if self.tty {
            eprint!("\r{line:<100}");
            let _ = std::io::stderr().flush();
        } else if done == total {
            eprintln!("{line}");
        }
        self.last_line = line;
    }

    fn clear(&mut self) {
        if self.tty && !self.last_line.is_empty() {
            eprint!("\r{:<100}\r", "");
        }
        self.last_line.clear();
    }

    fn on(&mut self, p: Progress) {
        match p {
            Progress::Round {
                round,
                size,
                amplifier,
            } => {
                self.round = round;
                self.size = size;
                self.amplifier = amplifier;
            }
            Progress::Targets { done, total } => self.status("amplify", done, total, ""),
            Progress::Training { done, total, loss } => {
                self.status("distill", done, total, &format!("loss {loss:.3}"))
            }
            Progress::Evaluating => self.status("evaluate", 0, 1, ""),
            Progress::Published(r) => {
                if let Some(m) = &self.metrics {
                    m.record(&r);
                }
                self.clear();
                if !self.table_header_done {
                    eprintln!(
                        "{:>4} {:>4} {:>4} {:>7} {:>6} | {:>6} {:>13} {:>8} | {:>10} {:>9} {:>6}",
                        "gen",
                        "size",
                        "diff",
                        "targets",
                        "steps",
                        "agree",
                        "gate new/old",
                        "promoted",
                        "acc@target",
                        "amplified",
                        "time"
                    );
                    eprintln!(
                        "{:>29} | {:<29} | reported (truth)",
                        "", "decided by (no truth)"
                    );
                    self.table_header_done = true;
                }
                eprintln!("{}", table_row(&r));
            }
        }
    }
}

fn table_row(r: &RoundRecord) -> String {
    let pct = |x: f64| {
        if x.is_finite() {
            format!("{:.1}%", 100.0 * x)
        } else {
            "-".into()
        }
    };
    let opt = |x: Option<f64>| x.map_or_else(|| "-".to_string(), pct);
    format!(
        "{:>4} {:>4} {:>4} {:>7} {:>6} | {:>6} {:>13} {:>8} | {:>10} {:>9} {:>5.0}s",
        format!("g{}", r.generation),
        r.size,
        r.max_difficulty
            .map_or_else(|| "all".to_string(), |d| format!("≤{d}")),
        r.targets,
        r.steps,
        opt(r.agreement),
        match (r.gate_agreement, r.gate_reference) {
            (Some(a), Some(b)) => format!("{}/{}", pct(a), pct(b)),
            _ => "-".to_string(),
        },
        if r.promoted { "yes" } else { "no" },
        pct(r.accuracy_target),
        opt(r.amplified_target),
        r.wall_seconds
    )
}

/// Starts `workers` workers serving `registry` and a coordinator over them, tuned to pick up a
/// promoted generation quickly.
async fn embedded_cluster(workers: usize, registry: &Path, domain: DomainKind) -> Result<Cluster> {
    if workers == 0 {
        bail!("--workers must be at least 1 (or use --local or --coordinator)");
    }
    Cluster::start(ClusterConfig {
        workers,
        serving: Serving::Registry {
            registry: registry.to_path_buf(),
            domain,
        },
        worker: WorkerConfig {
            reload_every: Duration::from_millis(50),
            ..WorkerConfig::default()
        },
        pool: PoolConfig {
            refresh_every: Duration::from_millis(50),
            ..PoolConfig::default()
        },
        ..ClusterConfig::default()
    })
    .await
    .context("starting the embedded coordinator and workers")
}

/// Trains `run` with the source its settings and `engine` call for; returns the records of this
/// invocation and the embedded cluster, if one was started (still running).
pub(super) async fn train_run<D: Domain + Copy>(
    domain: D,
    run: &mut Run<D>,
    engine: &EngineArgs,
    stop: StopAt,
    view: &mut ProgressView,
) -> Result<(Vec<RoundRecord>, Option<Cluster>)> {
    let mut on = |p: Progress| view.on(p);
    run.initialise(&mut on)?;
    let mut cluster = None;
    let reproducible = run.config().reproducible;
    if reproducible && crate::model::pick_device() != tch::Device::Cpu {
        bail!(
            "a reproducible run is bit for bit only on the CPU (libtorch's GPU kernels are not \
             all deterministic): run it with HCH_DEVICE=cpu"
        );
    }
    if reproducible && !run.config().supervised && !engine.local {
        bail!(
            "a reproducible run evaluates its trees in this process: add --local (workers batch \
             queries by timing)"
        );
    }
    let source: Box<dyn TargetSource<D>> = if run.config().supervised {
        Box::new(GroundTruth::new(domain))
    } else if engine.local {
        let current = run.registry().current()?.unwrap_or(0);
        let manifest = run.registry().load(current)?.manifest;
        Box::new(LocalAmplifier::start(
            domain,
            run.registry().clone(),
            &manifest,
            reproducible,
        )?)
    } else {
        let address = match &engine.coordinator {
            Some(a) => a.clone(),
            None => {
                let c = embedded_cluster(engine.workers, run.registry().root(), D::KIND).await?;
                let a = c.coordinator.addr.to_string();
                eprintln!(
                    "embedded coordinator on {a} with {} workers serving {}",
                    engine.workers,
                    run.registry().root().display()
                );
                cluster = Some(c);
                a
            }
        };
        let tls = engine.tls.load(&address)?;
        let mut remote = RemoteAmplifier::connect(domain, &address, tls).await?;
        remote.token = engine.token.clone();
        Box::new(remote)
    };
    let records = run.train(source.as_ref(), stop, &mut on).await?;
    Ok((records, cluster))
}

/// Serves the trainer's metrics and health on `listen` until the returned guard is dropped.
async fn serve_trainer_admin(
    listen: std::net::SocketAddr,
    metrics: crate::metrics::TrainerMetrics,
) -> Result<crate::server::AbortOnDrop> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the admin listener {listen}"))?;
    eprintln!("admin listening on {}", listener.local_addr()?);
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let (reporter, health) = crate::server::health_reporter().await;
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    Ok(crate::server::AbortOnDrop(tokio::spawn(async move {
        let served = crate::server::admin::serve_admin(
            listener,
            std::sync::Arc::new(registry),
            health,
            None,
            std::future::pending(),
        )
        .await;
        if let Err(error) = served {
            tracing::error!(%error, "the admin listener failed");
        }
    })))
}

/// Serves the run's registry in the background (until the returned guard is dropped).
async fn serve_run_registry(
    listen: std::net::SocketAddr,
    root: &Path,
    tls: Option<std::sync::Arc<crate::tls::ServerTls>>,
) -> Result<crate::server::AbortOnDrop> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the registry listener {listen}"))?;
    eprintln!("registry listening on {}", listener.local_addr()?);
    let root = root.to_path_buf();
    Ok(crate::server::AbortOnDrop(tokio::spawn(async move {
        let served =
            crate::server::serve_registry(listener, None, root, tls, std::future::pending()).await;
        if let Err(error) = served {
            tracing::error!(%error, "the registry listener failed");
        }
    })))
}

pub async fn train(args: TrainArgs) -> Result<()> {
    let stop = args.stop.stop_at()?;
    let kind = args.settings.domain;
    let dir = args.run.clone().unwrap_or_else(|| {
        PathBuf::from(format!(
            "runs/{}-{}",
            kind.name(),
            if args.settings.supervised {
                "supervised"
            } else {
                "amplified"
            }
        ))
    });
    with_domain!(kind, domain => {
        let config = args.settings.config(&domain);
        let mut run = Run::open(domain, &dir, config)?;
        eprintln!("run directory {}", dir.display());
        let mut view = ProgressView::new();
        let _admin = match args.admin_listen {
            Some(listen) => {
                let metrics = crate::metrics::TrainerMetrics::default();
                view.metrics = Some(metrics.clone());
                Some(serve_trainer_admin(listen, metrics).await?)
            }
            None => None,
        };
        // Like `hch registry serve`: callers must show the cluster CA's certificates.
        let registry_tls = super::serve::server_tls(
            args.registry_tls_cert.as_ref().zip(args.registry_tls_key.as_ref()),
            args.registry_tls_client_ca.as_ref(),
            true,
        )?;
        let _registry = match args.serve_registry {
            Some(listen) => {
                Some(serve_run_registry(listen, run.registry().root(), registry_tls).await?)
            }
            None => None,
        };
        let (_, cluster) = train_run(domain, &mut run, &args.engine, stop, &mut view).await?;
        if let Some(c) = cluster {
            c.stop().await;
        }
        finish_report(std::slice::from_ref(&dir), 0.95, None)?;
        if args.keep_serving {
            eprintln!("training stopped: serving the registry until SIGTERM");
            super::serve::shutdown_signal().await;
        }
        Ok(())
    })
}

/// Prints the comparison and per-run tables and writes the plot; returns the plot's path.
pub(super) fn finish_report(
    dirs: &[PathBuf],
    accuracy: f64,
    svg: Option<PathBuf>,
) -> Result<PathBuf> {
    let runs: Vec<RunSummary> = dirs
        .iter()
        .map(|d| RunSummary::read(d))
        .collect::<Result<_, _>>()?;
    let mut text = String::new();
    for run in &runs {
        text.push_str(&format!("## {}\n\n", run.label()));
        text.push_str(&report::generation_table(run));
        text.push('\n');
    }
    text.push_str(&report::comparison(&runs, accuracy));
    text.push('\n');
    text.push_str(&report::task_table(&runs));
    let svg_path = svg.unwrap_or_else(|| dirs[0].join("report.svg"));
    crate::fsutil::write_atomic(&svg_path, report::svg(&runs).as_bytes())
        .with_context(|| format!("writing {}", svg_path.display()))?;
    let md_path = svg_path.with_extension("md");
    crate::fsutil::write_atomic(&md_path, text.as_bytes())
        .with_context(|| format!("writing {}", md_path.display()))?;
    println!("{text}");
    println!(
        "plot: {}\ntables: {}",
        svg_path.display(),
        md_path.display()
    );
    Ok(svg_path)
}

pub async fn report(args: ReportArgs) -> Result<()> {
    if !(0.0..=1.0).contains(&args.accuracy) {
        bail!("--accuracy must lie between 0 and 1");
    }
    finish_report(&args.runs, args.accuracy, args.svg)?;
    Ok(())
}
