//! `hch loadtest`: subquestions per second through a coordinator and oracle workers on loopback,
//! against the raw rate of trivial unary gRPC calls (a worker's ModelInfo) measured in the same
//! run, with the same number of concurrent clients. With `--coordinator` it loads a running
//! deployment instead (and `--worker` names the raw baseline's target). With `--model` or
//! `--registry` the workers serve a model, and the baseline is the model's own raw rate (see
//! [`model`]): how much of what the model can compute tree evaluation keeps it fed with.
//!
//! The baseline is the best raw rate over one, two and four HTTP/2 connections (one connection is
//! served by one task on each side, which leaves CPU idle on a multi-core machine), so the ratio
//! is not flattered by a throttled baseline. Every tree gets a fresh instance (a new seed), so the
//! memo cannot shortcut the work and the facts travel to a worker once per tree; the subquestion
//! count is what the trees report having sent to their answerer. The clients, the coordinator and
//! the workers share this process and its cores, so "cores busy" covers all of them (with
//! `--coordinator`, only the clients).
//!
//! One run's ratio moves by a third between runs of the same binary on a two-core VM (the raw
//! rate and a tree's CPU each drift by a fifth), so `--rounds N` repeats the pair in one run,
//! each tree phase against the raw phase just before it, and reports the lowest ratio.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;

use super::report;
use crate::coordinator::auth::attach;
use crate::coordinator::pool::{PoolConfig, WorkerSource};
use crate::coordinator::CoordinatorConfig;
use crate::domain::{Domain, DomainKind, FULL_SIZE};
use crate::eval::{Budget, Mode};
use crate::rng::Rng;
use crate::rpc::coordinator::{AskQuery, AskReply, InstanceSpec};
use crate::rpc::pb;
use crate::server::{Cluster, ClusterConfig};
use crate::with_domain;
use crate::worker::{BatchTotals, WorkerConfig};

mod load;
#[cfg(feature = "model")]
mod model;
mod raw;
mod rounds;

use load::{tree_phase, Load};
use rounds::{Round, Rounds};

#[derive(Args, Debug)]
pub struct LoadtestArgs {
    /// Workers to start (default: 2 oracle workers, or 1 model worker, which uses every core).
    #[arg(long)]
    workers: Option<usize>,
    /// Model workers serving a freshly initialised (untrained) model of this size: tiny, medium
    /// or paper. A model's speed does not depend on what it has learned.
    #[cfg(feature = "model")]
    #[arg(long, conflicts_with_all = ["coordinator", "registry"])]
    model: Option<crate::model::config::Preset>,
    /// Model workers serving the current generation of this registry (a directory, as `hch
    /// train` writes; its domain must be --domain).
    #[cfg(feature = "model")]
    #[arg(long, conflicts_with = "coordinator")]
    registry: Option<std::path::PathBuf>,
    /// libtorch threads of the model workers, and of the raw measurement (default: one fewer
    /// than the cores, at least one: the clients and the coordinator run in this process too,
    /// and a libtorch thread that has to share its core stalls every operation's other threads).
    #[cfg(feature = "model")]
    #[arg(long)]
    threads: Option<usize>,
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
    /// Rounds of raw calls then trees, each round's trees measured against its own raw phase
    /// (the first round picks the raw phases' connection count): one command for a figure over
    /// several runs, with the machine's drift shared by each pair. The lowest round's ratio is
    /// the run's figure. Oracle workers or --coordinator only.
    #[arg(long, default_value_t = 1, conflicts_with_all = ["json", "rate"])]
    rounds: u32,
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

/// A tree's facts and question in text, as a client sends them (printed once: no instance is
/// made here, whose hash the client would not use).
fn questions<D: Domain>(d: &D, size: usize, seed: u64, fixed: Option<&str>) -> (String, String) {
    let facts = d.generate(size, seed).expect("size checked");
    let question = match fixed {
        Some(q) => q.to_string(),
        None => d.print_question(&d.sample_question(&facts, &mut Rng::new(seed))),
    };
    (d.print_facts(&facts), question)
}

/// What the workers serve in an embedded cluster.
enum Workers {
    Oracle,
    #[cfg(feature = "model")]
    Model(model::Served),
}

impl Workers {
    fn of(args: &LoadtestArgs) -> Result<Workers> {
        #[cfg(feature = "model")]
        if args.model.is_some() || args.registry.is_some() {
            return Ok(Workers::Model(model::serve(
                args.domain,
                args.registry.as_deref(),
                args.model,
            )?));
        }
        let _ = args;
        Ok(Workers::Oracle)
    }

    fn is_model(&self) -> bool {
        !matches!(self, Workers::Oracle)
    }

    fn serving(&self, domain: DomainKind) -> crate::worker::Serving {
        let _ = domain; // only a model worker serves one domain
        match self {
            Workers::Oracle => crate::worker::Serving::Oracle {
                delay: Duration::ZERO,
            },
            #[cfg(feature = "model")]
            Workers::Model(served) => crate::worker::Serving::Registry {
                registry: served.registry.clone(),
                domain,
            },
        }
    }
}

pub async fn run(args: LoadtestArgs) -> Result<()> {
    crate::domain::check_size_for(args.domain, args.size)?;
    let question = match (&args.question, args.domain) {
        (Some(q), _) => Some(q.clone()),
        (None, DomainKind::Wildcard) if !args.sample => Some("******".to_string()),
        (None, _) => None,
    };
    // Held to the end: a temporary registry is removed when this is dropped.
    let workers = Workers::of(&args)?;
    anyhow::ensure!(
        args.rounds >= 1,
        "--rounds must be at least 1 (one raw phase and one tree phase)"
    );
    anyhow::ensure!(
        args.rounds == 1 || !workers.is_model(),
        "--rounds applies to oracle workers and --coordinator; a model's raw rate is measured once"
    );
    let worker_count = args
        .workers
        .unwrap_or(if workers.is_model() { 1 } else { 2 })
        .max(1);
    let serving = workers.serving(args.domain);
    let mut worker_config = WorkerConfig::default();
    #[cfg(feature = "model")]
    if workers.is_model() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        worker_config.threads = args.threads.unwrap_or(cores.saturating_sub(1)).max(1);
    }
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
    let served = match &workers {
        Workers::Oracle => "oracle".to_string(),
        #[cfg(feature = "model")]
        Workers::Model(m) => format!("model ({})", m.describe),
    };
    println!(
        "loadtest: {worker_count} {served} workers, {} clients, {:.1} s per phase, {} {} at size {}, question {}, {}",
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
                workers: worker_count,
                serving,
                worker: worker_config.clone(),
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

    // The trees: a fresh instance for every tree (seeds from 1), or a cycle over a few.
    // Subquestions are counted from the trees' own statistics (questions sent to the answerer),
    // which a client sees whether the cluster is embedded or remote.
    let channels = connect(&coordinator_addr, args.connections, &args.tls).await?;
    let subquestions = Arc::new(AtomicU64::new(0));
    let (domain, size, instances, mode) = (args.domain, args.size, args.instances, args.mode);
    let tree = {
        let (channels, question) = (Arc::new(channels), question.clone());
        let (subquestions, token) = (subquestions.clone(), args.token.clone());
        move |seq: u64| {
            let mut client = pb::coordinator_client::CoordinatorClient::new(
                channels[seq as usize % channels.len()].clone(),
            );
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

    // Phase 1, the baseline: the model's raw rate, or trivial unary calls (and, for those, the CPU
    // one took, to put a tree's cost in raw calls).
    let (raw_rate, raw_all_cores, raw_cpu_per_call, raw_connections) = match &workers {
        #[cfg(feature = "model")]
        Workers::Model(served) => {
            let cluster = cluster.as_ref().expect("model workers run embedded");
            model::loaded(cluster, served.generation, Duration::from_secs(120)).await?;
            // A few trees first, to learn how many subquestions a tree asks: the raw batches are
            // made of as many questions per instance.
            const PROBES: u64 = 4;
            for probe in 0..PROBES {
                let (code, degraded) = tree(u64::MAX - 1 - probe).await;
                anyhow::ensure!(
                    code == tonic::Code::Ok && !degraded,
                    "a first tree {}; is the model serving --domain?",
                    if degraded {
                        "ran out of budget".to_string()
                    } else {
                        format!("failed ({code:?})")
                    }
                );
            }
            let asked = subquestions.swap(0, Ordering::Relaxed);
            anyhow::ensure!(
                asked > 0,
                "the first trees asked the model nothing (their leaves were H's): nothing to measure; \
                 choose a mode or question that reaches the model"
            );
            let per_tree = (asked / PROBES).max(1) as usize;
            let spec = model::RawSpec {
                domain,
                registry: served.registry.clone(),
                size,
                per_instance: per_tree,
                instances: match args.instances {
                    0 => crate::model::throughput::Instances::Fresh,
                    n => crate::model::throughput::Instances::Recurring(n),
                },
                each: (period / 4).max(Duration::from_millis(500)),
                cache_bytes: worker_config.encoding_cache_bytes,
            };
            let (rate, all_cores) =
                model::baseline(spec, worker_config.batch.max_batch, worker_config.threads).await?;
            (rate, all_cores, None, 1)
        }
        Workers::Oracle => {
            let (raw, connections) =
                raw::unary_baseline(&args, &cluster, &coordinator_addr, period).await?;
            (raw.rate(), None, Some(raw.cpu_per_call()), connections)
        }
    };

    // Phase 2: trees through the coordinator.
    let worker_totals = |cluster: &Option<Cluster>| {
        cluster
            .iter()
            .flat_map(|c| &c.workers)
            .fold(BatchTotals::default(), |t, (_, w)| t + w.batch_totals())
    };
    let before = worker_totals(&cluster);
    let load = match args.rate {
        Some(rate) if rate > 0.0 => Load::Open(rate),
        Some(rate) => anyhow::bail!("--rate must be above 0 trees a second, not {rate}"),
        None => Load::Closed(args.clients.max(1)),
    };
    let trees = tree_phase(load, period, tree.clone()).await?;
    let done = worker_totals(&cluster) - before;
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
            "batching:             {:>10.1} subquestions per worker call, {:.1} calls per forward pass, {:.1} questions per forward pass ({} calls)",
            done.questions as f64 / done.calls.max(1) as f64,
            done.calls as f64 / done.batches.max(1) as f64,
            done.questions as f64 / done.batches.max(1) as f64,
            done.calls
        );
    }
    if workers.is_model() {
        let busy = done.compute_us as f64 / 1e6 / trees.elapsed / worker_count as f64;
        println!(
            "where the time goes:  model computing {:.0}% of the phase, a call queued {:.2} ms on average; {:.2} cores busy in all ({} encodings reused, {} computed)",
            busy * 100.0,
            done.queue_us as f64 / 1e3 / done.calls.max(1) as f64,
            trees.cores,
            done.encoding_hits,
            done.encoding_misses
        );
        println!(
            "ratio:                {:>10.2} of the raw model rate{}",
            sub_rate / raw_rate.max(1e-9),
            raw_all_cores.map_or(String::new(), |all: f64| format!(
                " ({:.2} of its all-core rate)",
                sub_rate / all.max(1e-9)
            ))
        );
    } else {
        let first = Round {
            raw: raw_rate,
            // Only where this process holds the whole system: with --coordinator its CPU is the
            // clients' alone.
            raw_cpu_per_call: raw_cpu_per_call.filter(|_| cluster.is_some()),
            subquestions: sub_rate,
            trees: trees.samples.succeeded(),
            failed: trees.samples.failed(),
            tree_cpu: trees.cores * trees.elapsed,
        };
        println!(
            "ratio:                {:>10.1}x the raw unary rate",
            first.ratio()
        );
        if let (Some(cost), Some(per_tree), Some(per_call)) =
            (first.cost(), first.cpu_per_tree(), first.raw_cpu_per_call)
        {
            let subquestions_per_tree =
                subquestions.load(Ordering::Relaxed) as f64 / first.trees as f64;
            println!(
                "cost:                 {:>10.2} raw calls of CPU per tree ({:.0} us a tree, {:.0} us a raw call; 10x the raw rate allows {:.2})",
                cost,
                per_tree * 1e6,
                per_call * 1e6,
                subquestions_per_tree / 10.0
            );
        }
        if args.rounds > 1 {
            let shared = Rounds {
                cluster: &cluster,
                coordinator_addr: &coordinator_addr,
                connections: raw_connections,
                period,
                load,
                subquestions: &subquestions,
            };
            rounds::more(&args, first, shared, tree).await?;
        }
    }
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
