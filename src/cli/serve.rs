//! `hch worker`, `hch coordinator`, `hch up`: the servers. Each prints `listening on ADDR` once
//! bound (scripts read it to find a port-0 server) and shuts down gracefully on SIGTERM or Ctrl-C:
//! it stops accepting, lets requests in flight finish, then exits.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use tokio::net::TcpListener;

use crate::answerer::batched::BatchConfig;
use crate::coordinator::peers::PeerConfig;
use crate::coordinator::pool::{PoolConfig, WorkerSource};
use crate::coordinator::viewer::ViewerConfig;
use crate::coordinator::CoordinatorConfig;
use crate::domain::DomainKind;
use crate::otel::Otel;
use crate::rpc::coordinator::AskLimits;
use crate::server::{self, Cluster, ClusterConfig};
use crate::tls::{ClientAuth, ClientTls, ClientTlsFiles, ServerTls, ServerTlsFiles};
use crate::worker::{Serving, Worker, WorkerConfig};

/// What the workers answer with.
#[derive(Args, Debug, Clone)]
pub struct ServingArgs {
    /// Serve the ground truth for every domain. For tests and load tests only.
    #[arg(long, conflicts_with = "registry")]
    oracle: bool,
    /// Artificial delay per batch for the oracle, in milliseconds (simulates model latency).
    #[arg(long, default_value_t = 0, requires = "oracle")]
    oracle_delay_ms: u64,
    /// Serve the current generation of this registry (hot-loading newer ones).
    #[arg(long, requires = "domain", conflicts_with = "registry_url")]
    registry: Option<PathBuf>,
    /// Serve the current generation of the registry service at this address
    /// (`hch registry serve`, `hch train --serve-registry`): each promoted generation is copied
    /// into --registry-cache, verified, and hot-loaded; no shared filesystem is needed.
    #[arg(long, requires_all = ["domain", "registry_cache"], conflicts_with = "oracle")]
    registry_url: Option<String>,
    /// Where a --registry-url worker keeps its verified copies (a registry directory of its own).
    #[arg(long, requires = "registry_url")]
    registry_cache: Option<PathBuf>,
    /// Mutual TLS to the registry service: the CA its certificate chains to (PEM) ...
    #[arg(long, requires = "registry_url")]
    registry_tls_ca: Option<PathBuf>,
    /// ... this worker's client certificate chain (PEM) ...
    #[arg(long, requires_all = ["registry_tls_ca", "registry_tls_key"])]
    registry_tls_cert: Option<PathBuf>,
    /// ... its private key (PEM) ...
    #[arg(long, requires = "registry_tls_cert")]
    registry_tls_key: Option<PathBuf>,
    /// ... and the name to verify the registry's certificate as.
    #[arg(long, requires = "registry_tls_ca")]
    registry_tls_name: Option<String>,
    /// The registry's domain.
    #[arg(long)]
    domain: Option<DomainKind>,
    /// Most questions per forward pass.
    #[arg(long, default_value_t = BatchConfig::default().max_batch)]
    max_batch: usize,
    /// Longest a batch waits to fill, in microseconds (0: go as soon as the model is free).
    #[arg(long, default_value_t = BatchConfig::default().max_wait.as_micros() as u64)]
    max_wait_us: u64,
    /// Calls that may wait in a worker's queue before RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = BatchConfig::default().queue_capacity)]
    queue: usize,
    /// Instances a worker keeps per domain.
    #[arg(long, default_value_t = WorkerConfig::default().facts_cache)]
    facts_cache: usize,
    /// MiB of encoded facts a model worker keeps (on the model's device), so that questions
    /// about an instance it has seen run the question decoder alone; 0 keeps none.
    #[arg(long, default_value_t = WorkerConfig::default().encoding_cache_bytes >> 20)]
    encoding_cache_mib: usize,
    /// libtorch threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

impl ServingArgs {
    fn serving(&self) -> Result<Serving> {
        #[cfg(feature = "model")]
        if let (Some(url), Some(cache), Some(domain)) =
            (&self.registry_url, &self.registry_cache, self.domain)
        {
            let tls = client_tls(
                self.registry_tls_ca.as_ref(),
                self.registry_tls_cert
                    .as_ref()
                    .zip(self.registry_tls_key.as_ref()),
                self.registry_tls_name.as_ref(),
            )?;
            let endpoint = crate::tls::endpoint(url).map_err(anyhow::Error::msg)?;
            return Ok(Serving::Mirror {
                url: url.clone(),
                channel: crate::tls::lazy_channel(endpoint, tls),
                cache: cache.clone(),
                domain,
            });
        }
        #[cfg(not(feature = "model"))]
        if self.registry_url.is_some() {
            return Err(super::needs_model("serving a model (--registry-url)"));
        }
        match (&self.registry, self.domain, self.oracle) {
            #[cfg(feature = "model")]
            (Some(registry), Some(domain), false) => Ok(Serving::Registry {
                registry: registry.clone(),
                domain,
            }),
            #[cfg(not(feature = "model"))]
            (Some(_), Some(_), false) => Err(super::needs_model("serving a model (--registry)")),
            (None, _, true) => Ok(Serving::Oracle {
                delay: Duration::from_millis(self.oracle_delay_ms),
            }),
            _ => bail!(
                "choose what to serve: --registry DIR --domain D, --registry-url URL \
                 --registry-cache DIR --domain D, or --oracle (tests only)"
            ),
        }
    }

    fn config(&self) -> WorkerConfig {
        WorkerConfig {
            batch: BatchConfig {
                max_batch: self.max_batch.max(1),
                max_wait: Duration::from_micros(self.max_wait_us),
                queue_capacity: self.queue.max(1),
            },
            facts_cache: self.facts_cache.max(1),
            encoding_cache_bytes: self.encoding_cache_mib.saturating_mul(1 << 20),
            threads: self.threads,
            ..WorkerConfig::default()
        }
    }
}

/// TLS on a server's listener. The files are re-read every few seconds; a change that loads is
/// used for new connections, one that does not is logged and ignored.
#[derive(Args, Debug, Clone)]
pub struct ServerTlsArgs {
    /// Serve TLS with this certificate chain (PEM, leaf first) ...
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// ... and this private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Verify client certificates against this CA (PEM). A worker requires one from every
    /// caller; a coordinator accepts clients with or without one.
    #[arg(long, requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
}

impl ServerTlsArgs {
    fn load(&self, client_cert_required: bool) -> Result<Option<Arc<ServerTls>>> {
        server_tls(
            self.tls_cert.as_ref().zip(self.tls_key.as_ref()),
            self.tls_client_ca.as_ref(),
            client_cert_required,
        )
    }
}

/// A server's TLS from its certificate and key (`None`: plain TCP), verifying clients against
/// `client_ca`; `client_cert_required` makes a certificate from it a condition of every call.
pub(super) fn server_tls(
    identity: Option<(&PathBuf, &PathBuf)>,
    client_ca: Option<&PathBuf>,
    client_cert_required: bool,
) -> Result<Option<Arc<ServerTls>>> {
    let Some((cert, key)) = identity else {
        return Ok(None);
    };
    let client_auth = match (client_ca, client_cert_required) {
        (None, false) => ClientAuth::None,
        (None, true) => bail!(
            "a worker or registry over TLS needs --tls-client-ca: only callers with a \
             certificate from that CA (coordinators, workers, the trainer) may call it"
        ),
        (Some(ca), false) => ClientAuth::Optional(ca.clone()),
        (Some(ca), true) => ClientAuth::Required(ca.clone()),
    };
    Ok(Some(ServerTls::load(ServerTlsFiles {
        cert: cert.clone(),
        key: key.clone(),
        client_auth,
    })?))
}

/// A client's TLS, trusting servers under `ca` (`None`: plain TCP), presenting `identity`
/// (certificate, key) for mutual TLS, and verifying servers as `server_name` if given.
fn client_tls(
    ca: Option<&PathBuf>,
    identity: Option<(&PathBuf, &PathBuf)>,
    server_name: Option<&String>,
) -> Result<Option<Arc<ClientTls>>> {
    let Some(ca) = ca else {
        return Ok(None);
    };
    Ok(Some(ClientTls::load(ClientTlsFiles {
        ca: ca.clone(),
        identity: identity.map(|(c, k)| (c.clone(), k.clone())),
        server_name: server_name.cloned(),
    })?))
}

#[derive(Args, Debug)]
pub struct WorkerArgs {
    /// Address to listen on (port 0: any free port). Loopback unless told otherwise: a worker
    /// answers anyone who reaches its port (pass `--listen 0.0.0.0:50051` to serve other hosts).
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Serve metrics (GET /metrics, Prometheus) and health (grpc.health.v1) on this address:
    /// plain HTTP without authentication, so bind it where only the cluster reaches it.
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    #[command(flatten)]
    serving: ServingArgs,
    #[command(flatten)]
    tls: ServerTlsArgs,
}

#[derive(Args, Debug, Clone)]
pub struct CoordinatorOptions {
    /// Trees evaluated at once; more are refused with RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = CoordinatorConfig::default().max_trees)]
    max_trees: usize,
    /// Trees one client (a token's name; without tokens, a connection) may have in flight.
    #[arg(long, default_value_t = CoordinatorConfig::default().max_trees_per_client)]
    max_trees_per_client: usize,
    /// Trees one client may start per second on average (0: no limit); over it, a client gets
    /// RESOURCE_EXHAUSTED with the wait in `grpc-retry-pushback-ms`.
    #[arg(long, default_value_t = 0.0)]
    max_tree_rate_per_client: f64,
    /// ... in bursts of at most this many (default: one second's worth).
    #[arg(long)]
    tree_burst_per_client: Option<u32>,
    /// Calls in flight per worker (batches grow while they wait).
    #[arg(long, default_value_t = PoolConfig::default().max_in_flight_per_worker)]
    max_in_flight_per_worker: usize,
    /// The deepest tree a client may ask for (hch:D or a depth budget).
    #[arg(long, default_value_t = AskLimits::default().max_depth)]
    max_depth: u32,
    /// The largest node budget a client may ask for.
    #[arg(long, default_value_t = AskLimits::default().max_nodes)]
    max_nodes: u64,
    /// The longest deadline a client may ask for, in milliseconds.
    #[arg(long, default_value_t = AskLimits::default().max_deadline.as_millis() as u64)]
    max_deadline_ms: u64,
    /// How long before a call's gRPC deadline its tree stops, in milliseconds (at most a tenth
    /// of the deadline), so that the client hears DEADLINE_EXCEEDED and why from the
    /// coordinator rather than its own timer's CANCELLED: raise it on a loaded coordinator.
    #[arg(long, default_value_t = CoordinatorConfig::default().call_deadline_margin.as_millis() as u64)]
    call_deadline_margin_ms: u64,
    /// The longest instance text a client may send, in bytes.
    #[arg(long, default_value_t = AskLimits::default().max_instance_bytes)]
    max_instance_bytes: usize,
    /// The largest gRPC message a client may send or receive, in MiB.
    #[arg(long, default_value_t = CoordinatorConfig::default().max_message_bytes >> 20)]
    max_message_mib: usize,
    /// Client tokens (JSON; see `hch token`): every call then needs a token with the right to
    /// it. Without it, anyone who reaches the port may ask.
    #[arg(long)]
    tokens: Option<PathBuf>,
    /// Finished traces kept for GetTrace (the newest), ...
    #[arg(long, default_value_t = CoordinatorConfig::default().traces_kept)]
    traces_kept: usize,
    /// ... holding at most this many MiB together.
    #[arg(long, default_value_t = CoordinatorConfig::default().trace_bytes >> 20)]
    trace_memory_mib: usize,
    /// Serve the tree viewer on the admin listener (GET /trees): the recent trees and their
    /// nodes, live. Off by default: the admin port has no authentication, and trees are the
    /// clients' data.
    #[arg(long, requires = "admin_listen")]
    admin_viewer: bool,
    /// Trees the viewer lists (running ones always are) ...
    #[arg(long, default_value_t = ViewerConfig::default().trees, requires = "admin_viewer")]
    viewer_trees: usize,
    /// ... and node events it keeps per tree (two per node).
    #[arg(long, default_value_t = ViewerConfig::default().events_per_tree, requires = "admin_viewer")]
    viewer_events_per_tree: usize,
    #[command(flatten)]
    tls: ServerTlsArgs,
}

#[derive(Args, Debug)]
pub struct CoordinatorArgs {
    /// Address to listen on (port 0: any free port). Loopback unless told otherwise (pass
    /// `--listen 0.0.0.0:50050` to serve clients on other hosts).
    #[arg(long, default_value = "127.0.0.1:50050")]
    listen: SocketAddr,
    /// Serve metrics (GET /metrics, Prometheus) and health (grpc.health.v1) on this address:
    /// plain HTTP without authentication, so bind it where only the cluster reaches it.
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    /// Worker addresses, `host:port`, comma separated.
    #[arg(long, value_delimiter = ',', conflicts_with = "workers_dns")]
    workers: Vec<String>,
    /// A `host:port` whose name resolves to every worker (a Kubernetes headless Service),
    /// re-resolved every few seconds.
    #[arg(long)]
    workers_dns: Option<String>,
    /// Mutual TLS to the workers: the CA their certificates chain to (PEM) ...
    #[arg(long, requires = "worker_tls_cert")]
    worker_tls_ca: Option<PathBuf>,
    /// ... the coordinator's client certificate chain (PEM), from the CA the workers require ...
    #[arg(long, requires = "worker_tls_ca", requires = "worker_tls_key")]
    worker_tls_cert: Option<PathBuf>,
    /// ... its private key (PEM) ...
    #[arg(long, requires = "worker_tls_cert")]
    worker_tls_key: Option<PathBuf>,
    /// ... and the name to verify the workers' certificates as (workers found by DNS are
    /// dialled by address, which their certificates need not name).
    #[arg(long, requires = "worker_tls_ca")]
    worker_tls_name: Option<String>,
    /// A `host:port` resolving to every coordinator replica behind the same Service (a headless
    /// Service): a GetTrace for a tree another replica evaluated is answered by asking them.
    #[arg(long, conflicts_with = "peers")]
    peers_dns: Option<String>,
    /// The coordinator replicas as a list of `host:port` (instead of --peers-dns).
    #[arg(long, value_delimiter = ',')]
    peers: Vec<String>,
    /// TLS to the other replicas: the CA their certificates chain to (PEM) ...
    #[arg(long)]
    peer_tls_ca: Option<PathBuf>,
    /// ... and the name to verify them as (they are dialled by address).
    #[arg(long, requires = "peer_tls_ca")]
    peer_tls_name: Option<String>,
    #[command(flatten)]
    options: CoordinatorOptions,
}

impl CoordinatorArgs {
    fn peers(&self) -> Result<Option<PeerConfig>> {
        let source = match (&self.peers_dns, self.peers.is_empty()) {
            (Some(name), _) => WorkerSource::Dns(name.clone()),
            (None, false) => WorkerSource::Static(self.peers.clone()),
            (None, true) => return Ok(None),
        };
        let tls = client_tls(self.peer_tls_ca.as_ref(), None, self.peer_tls_name.as_ref())?;
        Ok(Some(PeerConfig::new(source, tls)))
    }

    fn worker_tls(&self) -> Result<Option<Arc<ClientTls>>> {
        client_tls(
            self.worker_tls_ca.as_ref(),
            self.worker_tls_cert
                .as_ref()
                .zip(self.worker_tls_key.as_ref()),
            self.worker_tls_name.as_ref(),
        )
    }
}

#[derive(Args, Debug)]
pub struct UpArgs {
    /// The coordinator's address (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:50050")]
    listen: SocketAddr,
    /// Serve metrics (GET /metrics, Prometheus) and health (grpc.health.v1) on this address:
    /// plain HTTP without authentication, so bind it where only the cluster reaches it.
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    /// Number of workers.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    #[command(flatten)]
    serving: ServingArgs,
    #[command(flatten)]
    options: CoordinatorOptions,
}

fn coordinator_config(o: &CoordinatorOptions) -> Result<CoordinatorConfig> {
    let tokens = match &o.tokens {
        Some(path) => Some(std::sync::Arc::new(
            crate::coordinator::auth::Tokens::load(path).map_err(anyhow::Error::msg)?,
        )),
        None => None,
    };
    Ok(CoordinatorConfig {
        max_trees: o.max_trees.max(1),
        max_trees_per_client: o.max_trees_per_client.max(1),
        tree_rate_per_client: (o.max_tree_rate_per_client > 0.0)
            .then_some(o.max_tree_rate_per_client),
        tree_burst_per_client: o
            .tree_burst_per_client
            .unwrap_or(o.max_tree_rate_per_client.ceil() as u32)
            .max(1),
        limits: AskLimits {
            max_depth: o.max_depth,
            max_nodes: o.max_nodes.max(1),
            max_deadline: Duration::from_millis(o.max_deadline_ms.max(1)),
            max_instance_bytes: o.max_instance_bytes.max(1),
        },
        max_message_bytes: o.max_message_mib.max(1) << 20,
        call_deadline_margin: Duration::from_millis(o.call_deadline_margin_ms),
        tokens,
        traces_kept: o.traces_kept,
        trace_bytes: o.trace_memory_mib << 20,
        tls: o.tls.load(false)?,
        viewer: o.admin_viewer.then_some(ViewerConfig {
            trees: o.viewer_trees.max(1),
            events_per_tree: o.viewer_events_per_tree,
        }),
        ..CoordinatorConfig::default()
    })
}

fn pool_config(o: &CoordinatorOptions, source: WorkerSource) -> PoolConfig {
    PoolConfig {
        source,
        max_in_flight_per_worker: o.max_in_flight_per_worker.max(1),
        ..PoolConfig::default()
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutting down: finishing requests in flight");
}

/// Binds the admin listener, if one is asked for, and says where (after the main address, which
/// scripts read from the first line).
async fn bind_admin(listen: Option<SocketAddr>) -> Result<Option<TcpListener>> {
    let Some(listen) = listen else {
        return Ok(None);
    };
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the admin listener {listen}"))?;
    announce("admin", listener.local_addr()?);
    Ok(Some(listener))
}

fn announce(what: &str, addr: SocketAddr) {
    use std::io::Write;
    println!("{what} listening on {addr}");
    let _ = std::io::stdout().flush();
}

/// Trace export as the environment asks (`OTEL_EXPORTER_OTLP_ENDPOINT` and the rest; see
/// [`crate::otel`]), on this runtime; `None` when it asks for none.
pub fn start_otel(service: &str) -> Result<Option<Otel>> {
    Otel::from_env(service)
        .map_err(anyhow::Error::msg)
        .context("configuring trace export (OTEL_* environment variables)")
}

/// Exports the spans still queued before the process exits.
pub async fn stop_otel(otel: Option<Otel>) {
    if let Some(otel) = otel {
        otel.shutdown().await;
    }
}

pub async fn worker(args: WorkerArgs) -> Result<()> {
    let serving = args.serving.serving()?;
    let otel = start_otel("hch-worker")?;
    let config = WorkerConfig {
        tls: args.tls.load(true)?,
        tracer: otel.as_ref().map(Otel::tracer).unwrap_or_default(),
        ..args.serving.config()
    };
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    announce("worker", listener.local_addr()?);
    let admin = bind_admin(args.admin_listen).await?;
    let worker = Worker::start(serving, config);
    server::serve_worker(listener, admin, worker, shutdown_signal()).await?;
    stop_otel(otel).await;
    Ok(())
}

pub async fn coordinator(args: CoordinatorArgs) -> Result<()> {
    let source = match (&args.workers_dns, args.workers.is_empty()) {
        (Some(name), _) => WorkerSource::Dns(name.clone()),
        (None, false) => WorkerSource::Static(args.workers.clone()),
        (None, true) => {
            bail!("give the workers: --workers host:port,... or --workers-dns name:port")
        }
    };
    let pool = PoolConfig {
        tls: args.worker_tls()?,
        ..pool_config(&args.options, source)
    };
    let otel = start_otel("hch-coordinator")?;
    let config = CoordinatorConfig {
        tracer: otel.as_ref().map(Otel::tracer).unwrap_or_default(),
        peers: args.peers()?,
        ..coordinator_config(&args.options)?
    };
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    announce("coordinator", listener.local_addr()?);
    let admin = bind_admin(args.admin_listen).await?;
    let pool = crate::coordinator::pool::Pool::start(pool).await;
    let service = crate::coordinator::CoordinatorService::new(pool, config);
    server::serve_coordinator(listener, admin, service, shutdown_signal()).await?;
    stop_otel(otel).await;
    Ok(())
}

pub async fn up(args: UpArgs) -> Result<()> {
    if args.workers == 0 {
        bail!("--workers must be at least 1");
    }
    let otel = start_otel("hch")?;
    let tracer = otel.as_ref().map(Otel::tracer).unwrap_or_default();
    let cluster = Cluster::start(ClusterConfig {
        workers: args.workers,
        serving: args.serving.serving()?,
        worker: WorkerConfig {
            tracer: tracer.clone(),
            ..args.serving.config()
        },
        coordinator_listen: args.listen,
        pool: pool_config(&args.options, WorkerSource::Static(Vec::new())),
        coordinator: CoordinatorConfig {
            tracer,
            ..coordinator_config(&args.options)?
        },
        admin_listen: args.admin_listen,
    })
    .await
    .with_context(|| format!("starting the cluster on {}", args.listen))?;
    for (w, _) in &cluster.workers {
        eprintln!("worker listening on {}", w.addr);
    }
    announce("coordinator", cluster.coordinator.addr);
    if let Some(addr) = cluster.admin_addr {
        announce("admin", addr);
    }
    shutdown_signal().await;
    cluster.stop().await;
    stop_otel(otel).await;
    Ok(())
}

#[derive(Args, Debug)]
pub struct OtlpSinkArgs {
    /// Address to receive OTLP/gRPC on.
    #[arg(long, default_value = "127.0.0.1:4317")]
    listen: SocketAddr,
    /// Print every span (service, name, trace and span ids, parent, attributes); without it, the
    /// count received each second.
    #[arg(long)]
    print: bool,
}

pub async fn otlp_sink(args: OtlpSinkArgs) -> Result<()> {
    use crate::otel::sink::Sink;
    let sink = if args.print {
        Sink::keeping()
    } else {
        Sink::counting()
    };
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    announce("otlp-sink", listener.local_addr()?);
    let serving = tokio::spawn({
        let sink = sink.clone();
        async move { sink.serve(listener, shutdown_signal()).await }
    });
    let mut tick =
        tokio::time::interval(Duration::from_millis(if args.print { 100 } else { 1000 }));
    let mut last = 0;
    while !serving.is_finished() {
        tick.tick().await;
        if args.print {
            for s in sink.take_spans() {
                let attributes: Vec<String> = s
                    .attributes
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                println!(
                    "{} {} trace={:032x} span={:016x} parent={} {:?} links={} {}",
                    s.service,
                    s.name,
                    s.trace_id,
                    s.span_id,
                    s.parent_span_id
                        .map_or("-".to_string(), |p| format!("{p:016x}")),
                    s.duration,
                    s.links.len(),
                    attributes.join(" ")
                );
            }
        } else {
            let now = sink.received();
            if now != last {
                println!("{} spans received ({} in the last second)", now, now - last);
                last = now;
            }
        }
    }
    serving
        .await
        .context("the receiver stopped")?
        .context("serving OTLP")?;
    Ok(())
}

#[derive(Args, Debug)]
pub struct RegistryArgs {
    #[command(subcommand)]
    command: RegistryCommand,
}

#[derive(clap::Subcommand, Debug)]
enum RegistryCommand {
    /// Serve the registry's current generation and its files over gRPC (the Registry service).
    Serve(RegistryServeArgs),
}

#[derive(Args, Debug)]
pub struct RegistryServeArgs {
    /// The registry directory (the trainer's `RUN/registry`, or any registry).
    #[arg(long)]
    registry: PathBuf,
    /// Address to listen on. Loopback unless told otherwise.
    #[arg(long, default_value = "127.0.0.1:50060")]
    listen: SocketAddr,
    /// Serve health (grpc.health.v1) on this address: plain HTTP, for probes.
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    #[command(flatten)]
    tls: ServerTlsArgs,
}

pub async fn registry(args: RegistryArgs) -> Result<()> {
    let RegistryCommand::Serve(args) = args.command;
    // Opening checks the directory is a registry (or makes an empty one) before serving it.
    crate::registry::Registry::open(&args.registry)
        .with_context(|| format!("opening the registry {}", args.registry.display()))?;
    // Like a worker's, the registry's callers must show a certificate from the cluster CA.
    let tls = args.tls.load(true)?;
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    announce("registry", listener.local_addr()?);
    let admin = bind_admin(args.admin_listen).await?;
    server::serve_registry(listener, admin, args.registry, tls, shutdown_signal()).await?;
    Ok(())
}
