//! `hch loadtest`: subquestions per second through a coordinator and oracle workers on loopback,
//! against the raw rate of trivial unary gRPC calls (a worker's ModelInfo) measured in the same
//! run, with the same number of concurrent clients. With `--coordinator` it loads a running
//! deployment instead (and `--worker` names the raw baseline's target).
//!
//! The baseline is the best raw rate over one, two and four HTTP/2 connections (one connection is
//! served by one task on each side, which leaves CPU idle on a multi-core machine), so the ratio
//! is not flattered by a throttled baseline. Every tree gets a fresh instance (a new seed), so the
//! memo cannot shortcut the work and the facts travel to a worker once per tree; the subquestion
//! count is what the trees report having sent to their answerer. The clients, the coordinator and
//! the workers share this process and its cores, so "cores busy" covers all of them (with
//! `--coordinator`, only the clients).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;

use super::report;
use crate::coordinator::auth::attach;
use crate::coordinator::pool::{PoolConfig, WorkerSource};
use crate::coordinator::CoordinatorConfig;
use crate::domain::{Domain, DomainKind, Instance, FULL_SIZE};
use crate::eval::{Budget, Mode};
use crate::rng::Rng;
use crate::rpc::coordinator::{AskQuery, AskReply, InstanceSpec};
use crate::rpc::pb;
use crate::server::{Cluster, ClusterConfig};
use crate::with_domain;
use crate::worker::WorkerConfig;

#[derive(Args, Debug)]
pub struct LoadtestArgs {
    /// Oracle workers to start.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Concurrent clients, in both phases (each keeps one tree or call in flight; enough to
    /// keep a two-core machine busy).
    #[arg(long, default_value_t = 512)]
    clients: usize,
    /// Seconds per phase.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    #[arg(long, default_value = "wildcard")]
    domain: DomainKind,
    /// Mode of the trees.
    #[arg(long, default_value = "hch:5")]
    mode: Mode,
    /// Instance size.
    #[arg(long, default_value_t = FULL_SIZE)]
    size: usize,
    /// Ask this question (text syntax) of every tree. Default: for wildcard, "******" (the widest
    /// tree: 32 leaves of one `*` each at hch:5, which go to the workers; at hch:6 the leaves are
    /// plain strings, which H reads from the facts itself); for the other domains, a question
    /// sampled per tree.
    #[arg(long, conflicts_with = "sample")]
    question: Option<String>,
    /// Sample a question per tree, whatever the domain.
    #[arg(long)]
    sample: bool,
    /// Cycle over this many distinct instances (0: a fresh instance for every tree). Workers
    /// then hold the facts and only their hashes travel.
    #[arg(long, default_value_t = 0)]
    instances: u64,
    /// HTTP/2 connections the clients share in the tree phase (callers are spread over them).
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Longest a worker waits for a batch to fill, in microseconds (default: the worker's).
    #[arg(long)]
    max_wait_us: Option<u64>,
    /// Calls in flight per worker from the coordinator (default: the coordinator's).
    #[arg(long)]
    in_flight: Option<usize>,
    /// Most questions in one coordinator-to-worker call (default: the coordinator's).
    #[arg(long)]
    max_batch: Option<usize>,
    /// Record every tree for the tree viewer, as `--admin-viewer` does (to measure its cost).
    #[arg(long, conflicts_with = "coordinator")]
    viewer: bool,
    /// Load this running coordinator (`host:port` or a URL) instead of starting one here with
    /// oracle workers; its workers must serve the domain.
    #[arg(long)]
    coordinator: Option<String>,
    /// With --coordinator: a worker whose ModelInfo calls are the raw baseline (default: the
    /// coordinator's Status calls).
    #[arg(long, requires = "coordinator")]
    worker: Option<String>,
    /// With --coordinator: the client token, for a coordinator that requires one (`hch token`;
    /// the raw baseline's Status calls need the status right).
    #[arg(long, requires = "coordinator")]
    token: Option<String>,
    /// Open loop: start this many trees a second on a fixed schedule, whether or not earlier
    /// ones have finished, and measure each tree's latency from when it was due (no coordinated
    /// omission). Without it, the tree phase is closed loop: `--clients` trees in flight.
    #[arg(long)]
    rate: Option<f64>,
    /// Write the tree phase's report as JSON shaped like ghz's (`ghz --format json`) to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<std::path::PathBuf>,
    /// With --coordinator: TLS to it (and to --worker).
    #[command(flatten)]
    tls: super::ClientTlsArgs,
}

fn url(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    }
}

/// What one phase measured.
struct Phase {
    count: u64,
    elapsed: f64,
    cores: f64,
    latencies: Vec<Duration>,
    failed: u64,
}

impl Phase {
    fn rate(&self) -> f64 {
        self.count as f64 / self.elapsed.max(1e-9)
    }
}

/// Runs one load client per `make(i)` for `period`, each calling its closure in a loop, and counts
/// the calls that succeed (and their latencies) and those that do not.
async fn phase<M, C, Fut>(clients: usize, period: Duration, make: M) -> Result<Phase>
where
    M: Fn(usize) -> C,
    C: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send + 'static,
{
    let failed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let cpu_start = cpu_time();
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            let mut call = make(i);
            let failed = failed.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while start.elapsed() < period {
                    let t = Instant::now();
                    if call().await {
                        latencies.push(t.elapsed());
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.context("a load client panicked")?);
    }
    let elapsed = start.elapsed().as_secs_f64();
    Ok(Phase {
        count: latencies.len() as u64,
        elapsed,
        cores: (cpu_time() - cpu_start).as_secs_f64() / elapsed,
        latencies,
        failed: failed.load(Ordering::Relaxed),
    })
}

/// How the tree phase loads the coordinator.
#[derive(Clone, Copy, Debug)]
enum Load {
    /// This many clients, each with one tree in flight.
    Closed(usize),
    /// Trees started at this rate (a second) on a fixed schedule.
    Open(f64),
}

/// What the tree phase measured.
struct TreePhase {
    samples: report::Samples,
    elapsed: f64,
    cores: f64,
}

/// Runs trees for `period` under `load`; `tree(seq)` asks the `seq`th and says how it went (its
/// status, and whether it was degraded). An open-loop tree's latency counts from when it was
/// due, so a stalled server shows up as latency rather than as trees never sent. The phase ends
/// when the last tree started within `period` has finished.
async fn tree_phase<F, Fut>(load: Load, period: Duration, tree: F) -> Result<TreePhase>
where
    F: Fn(u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = (tonic::Code, bool)> + Send + 'static,
{
    let start = Instant::now();
    let cpu_start = cpu_time();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<report::Sample>();
    match load {
        Load::Closed(clients) => {
            let seq = Arc::new(AtomicU64::new(0));
            for _ in 0..clients {
                let (tree, tx, seq) = (tree.clone(), tx.clone(), seq.clone());
                tokio::spawn(async move {
                    while start.elapsed() < period {
                        let sent = Instant::now();
                        let (code, degraded) = tree(seq.fetch_add(1, Ordering::Relaxed)).await;
                        let _ = tx.send(report::Sample {
                            latency: sent.elapsed(),
                            code,
                            degraded,
                        });
                    }
                });
            }
        }
        Load::Open(rate) => {
            for i in 0u64.. {
                let due = start + Duration::from_secs_f64(i as f64 / rate);
                if due >= start + period {
                    break;
                }
                tokio::time::sleep_until(tokio::time::Instant::from_std(due)).await;
                let (tree, tx) = (tree.clone(), tx.clone());
                tokio::spawn(async move {
                    let (code, degraded) = tree(i).await;
                    let _ = tx.send(report::Sample {
                        latency: due.elapsed(),
                        code,
                        degraded,
                    });
                });
            }
        }
    }
    drop(tx);
    let mut samples = report::Samples::default();
    // Ends when every tree's task has finished (and dropped its sender).
    while let Some(sample) = rx.recv().await {
        samples.add(sample);
    }
    let elapsed = start.elapsed().as_secs_f64();
    Ok(TreePhase {
        samples,
        elapsed,
        cores: (cpu_time() - cpu_start).as_secs_f64() / elapsed,
    })
}

/// CPU time (user + system, all threads) this process has used so far, from /proc/self/stat
/// (Linux; zero elsewhere). The kernel reports it in USER_HZ ticks, 100 per second on Linux.
fn cpu_time() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return Duration::ZERO;
    };
    // The command name (field 2) may contain spaces; the fields after its closing paren are plain.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return Duration::ZERO;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the paren.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    Duration::from_millis(ticks * 10)
}

fn percentiles(mut v: Vec<Duration>) -> String {
    if v.is_empty() {
        return "no samples".to_string();
    }
    v.sort();
    let at = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    format!(
        "p50 {:?}, p90 {:?}, p99 {:?}, max {:?}",
        at(0.5),
        at(0.9),
        at(0.99),
        v[v.len() - 1]
    )
}

async fn connect(
    addr: &str,
    n: usize,
    tls: &super::ClientTlsArgs,
) -> Result<Vec<tonic::transport::Channel>> {
    let mut channels = Vec::new();
    for _ in 0..n.max(1) {
        channels.push(tls.connect(addr).await?);
    }
    Ok(channels)
}

fn questions<D: Domain>(d: &D, size: usize, seed: u64, fixed: Option<&str>) -> (String, String) {
    let instance = Instance::generate(d, size, seed).expect("size checked");
    let question = match fixed {
        Some(q) => q.to_string(),
        None => d.print_question(&d.sample_question(instance.facts(), &mut Rng::new(seed))),
    };
    (d.print_facts(instance.facts()), question)
}

pub async fn run(args: LoadtestArgs) -> Result<()> {
    crate::domain::check_size_for(args.domain, args.size)?;
    let question = match (&args.question, args.domain) {
        (Some(q), _) => Some(q.clone()),
        (None, DomainKind::Wildcard) if !args.sample => Some("******".to_string()),
        (None, _) => None,
    };
    let mut worker_config = WorkerConfig::default();
    if let Some(us) = args.max_wait_us {
        worker_config.batch.max_wait = Duration::from_micros(us);
    }
    let mut pool_config = PoolConfig {
        source: WorkerSource::Static(Vec::new()),
        ..PoolConfig::default()
    };
    if let Some(n) = args.in_flight {
        pool_config.max_in_flight_per_worker = n.max(1);
    }
    let mut coordinator_config = CoordinatorConfig {
        max_trees: args.clients.max(1) * 2,
        ..CoordinatorConfig::default()
    };
    if let Some(n) = args.max_batch {
        coordinator_config.remote.max_batch = n.max(1);
    }
    if args.viewer {
        coordinator_config.viewer = Some(Default::default());
    }
    println!(
        "loadtest: {} oracle workers, {} clients, {:.1} s per phase, {} {} at size {}, question {}, {}",
        args.workers,
        args.clients,
        args.seconds,
        args.domain,
        args.mode,
        args.size,
        question.as_deref().unwrap_or("sampled per tree"),
        if args.instances == 0 {
            "a fresh instance per tree".to_string()
        } else {
            format!("{} instances", args.instances)
        }
    );
    // The embedded cluster exports spans as the environment says, like `hch up` (to measure
    // what tracing costs); a remote one is configured where it runs.
    let otel = match &args.coordinator {
        Some(_) => None,
        None => super::serve::start_otel("hch")?,
    };
    let (cluster, coordinator_addr) = match &args.coordinator {
        Some(addr) => {
            println!("target: the coordinator at {}", url(addr));
            (None, url(addr))
        }
        None => {
            if let Some(otel) = &otel {
                let tracer = otel.tracer();
                worker_config.tracer = tracer.clone();
                coordinator_config.tracer = tracer;
                println!("trace export: on ({})", otel.describe());
            }
            println!(
                "settings: {} calls in flight per worker, {} questions per call at most, worker wait {} us",
                pool_config.max_in_flight_per_worker,
                coordinator_config.remote.max_batch,
                worker_config.batch.max_wait.as_micros()
            );
            let cluster = Cluster::start(ClusterConfig {
                workers: args.workers.max(1),
                worker: worker_config,
                pool: pool_config,
                coordinator: coordinator_config,
                ..ClusterConfig::default()
            })
            .await
            .context("starting the cluster")?;
            let addr = format!("http://{}", cluster.coordinator.addr);
            (Some(cluster), addr)
        }
    };
    let period = Duration::from_secs_f64(args.seconds.max(0.1));
    // The raw baseline: a worker's ModelInfo, or the coordinator's Status when no worker is given.
    let raw_target = match (&cluster, &args.worker) {
        (Some(c), _) => Some(format!("http://{}", c.workers[0].0.addr)),
        (None, Some(addr)) => Some(url(addr)),
        (None, None) => None,
    };

    // Phase 1: trivial unary calls, over 1, 2 and 4 connections; the best is the baseline.
    let mut best: Option<Phase> = None;
    for connections in [1, 2, 4] {
        let raw = match &raw_target {
            Some(worker) => {
                let channels = connect(worker, connections, &args.tls).await?;
                phase(args.clients, period, |i| {
                    let client =
                        pb::worker_client::WorkerClient::new(channels[i % connections].clone());
                    move || {
                        let mut client = client.clone();
                        async move { client.model_info(pb::ModelInfoRequest {}).await.is_ok() }
                    }
                })
                .await?
            }
            None => {
                let channels = connect(&coordinator_addr, connections, &args.tls).await?;
                phase(args.clients, period, |i| {
                    let client = pb::coordinator_client::CoordinatorClient::new(
                        channels[i % connections].clone(),
                    );
                    let token = args.token.clone();
                    move || {
                        let mut client = client.clone();
                        let mut request = tonic::Request::new(pb::StatusRequest {});
                        attach(&mut request, token.as_deref());
                        async move { client.status(request).await.is_ok() }
                    }
                })
                .await?
            }
        };
        println!(
            "raw unary calls:      {:>10.0} calls/s over {connections} connection(s), {:.2} cores busy, {} failed",
            raw.rate(),
            raw.cores,
            raw.failed
        );
        if best.as_ref().map_or(true, |b| raw.rate() > b.rate()) {
            best = Some(raw);
        }
    }
    let raw = best.expect("three raw phases ran");
    let raw_rate = raw.rate();
    println!(
        "raw baseline:         {raw_rate:>10.0} calls/s   (latency {})",
        percentiles(raw.latencies)
    );

    // Phase 2: trees through the coordinator.
    // Subquestions are counted from the trees' own statistics (questions sent to the answerer),
    // which a client sees whether the cluster is embedded or remote.
    let channels = connect(&coordinator_addr, args.connections, &args.tls).await?;
    let worker_totals = |cluster: &Option<Cluster>| {
        cluster
            .iter()
            .flat_map(|c| &c.workers)
            .fold((0, 0, 0), |(q, c, b), (_, w)| {
                let (wc, wb) = w.calls_and_batches();
                (q + w.questions_answered(), c + wc, b + wb)
            })
    };
    let before = worker_totals(&cluster);
    let subquestions = Arc::new(AtomicU64::new(0));
    let (domain, size, instances, mode) = (args.domain, args.size, args.instances, args.mode);
    let load = match args.rate {
        Some(rate) if rate > 0.0 => Load::Open(rate),
        Some(rate) => anyhow::bail!("--rate must be above 0 trees a second, not {rate}"),
        None => Load::Closed(args.clients.max(1)),
    };
    let tree = {
        let (channels, question) = (Arc::new(channels), question.clone());
        let (subquestions, token) = (subquestions.clone(), args.token.clone());
        move |seq: u64| {
            let mut client = pb::coordinator_client::CoordinatorClient::new(
                channels[seq as usize % channels.len()].clone(),
            );
            // A fresh instance for every tree (seeds from 1), or a cycle over a few.
            let mut seed = seq + 1;
            if instances > 0 {
                seed %= instances;
            }
            let (facts, question) =
                with_domain!(domain, d => questions(&d, size, seed, question.as_deref()));
            let request = AskQuery {
                domain,
                instance: InstanceSpec::Text(facts),
                question,
                mode,
                budget: Budget::default(),
                want_trace: false,
            }
            .encode();
            let mut request = tonic::Request::new(request);
            attach(&mut request, token.as_deref());
            let subquestions = subquestions.clone();
            async move {
                match client.ask(request).await {
                    Ok(reply) => match AskReply::decode(reply.into_inner()) {
                        Ok(r) if r.exhausted.is_none() => {
                            subquestions.fetch_add(r.stats.answerer_queries, Ordering::Relaxed);
                            (tonic::Code::Ok, false)
                        }
                        Ok(_) => (tonic::Code::Ok, true),
                        Err(e) => (e.code(), false),
                    },
                    Err(status) => (status.code(), false),
                }
            }
        }
    };
    let trees = tree_phase(load, period, tree).await?;
    let after = worker_totals(&cluster);
    let (answered, calls, batches) = (after.0 - before.0, after.1 - before.1, after.2 - before.2);
    let sub_rate = subquestions.load(Ordering::Relaxed) as f64 / trees.elapsed;
    println!(
        "subquestions:         {sub_rate:>10.0} subquestions/s ({:.0} trees/s, {} degraded or failed, {:.2} cores busy{})",
        trees.samples.succeeded() as f64 / trees.elapsed.max(1e-9),
        trees.samples.failed(),
        trees.cores,
        if cluster.is_some() { "" } else { " by the clients" }
    );
    println!(
        "tree latency:         {}{}",
        trees.samples.percentiles(),
        match load {
            Load::Open(rate) => format!(" (open loop at {rate} trees/s, from when each was due)"),
            Load::Closed(_) => String::new(),
        }
    );
    if let Some(path) = &args.json {
        let options = report::Options {
            call: "hch.v1.Coordinator.Ask".into(),
            host: coordinator_addr.clone(),
            concurrency: match load {
                Load::Closed(clients) => Some(clients),
                Load::Open(_) => None,
            },
            rps: match load {
                Load::Open(rate) => Some(rate),
                Load::Closed(_) => None,
            },
            duration: period.as_nanos() as u64,
        };
        let report = trees
            .samples
            .report(Duration::from_secs_f64(trees.elapsed), options);
        let json = serde_json::to_vec_pretty(&report)?;
        crate::fsutil::write_atomic(path, &json)
            .with_context(|| format!("writing the report {}", path.display()))?;
        println!("report:               {}", path.display());
    }
    if cluster.is_some() {
        println!(
            "batching:             {:>10.1} subquestions per worker call, {:.1} calls per forward pass ({calls} calls)",
            answered as f64 / calls.max(1) as f64,
            calls as f64 / batches.max(1) as f64
        );
    }
    println!(
        "ratio:                {:>10.1}x the raw unary rate",
        sub_rate / raw_rate.max(1e-9)
    );
    if let Some(cluster) = cluster {
        cluster.stop().await;
        if let Some(otel) = otel {
            otel.flush().await;
            let stats = otel.stats();
            println!(
                "trace export: {} spans exported, {} lost",
                stats
                    .exported_spans
                    .load(std::sync::atomic::Ordering::Relaxed),
                stats
                    .failed_spans
                    .load(std::sync::atomic::Ordering::Relaxed)
            );
            otel.shutdown().await;
        }
    }
    Ok(())
}
