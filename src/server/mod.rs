//! Serving: the gRPC servers of workers and coordinators on real sockets, with grpc.health.v1,
//! server reflection and graceful shutdown, and [`Cluster`], a coordinator and N workers in one
//! process (`hch up`, the demo, and the integration tests).
//!
//! Shutdown is graceful: when the shutdown future resolves the server stops accepting, lets
//! requests in flight finish (for at most [`SHUTDOWN_GRACE`]), then returns.

pub mod admin;
mod conn;
mod idle;

pub use conn::{PeerInfo, HANDSHAKE_TIMEOUT, MAX_ACCEPT_BACKOFF, MAX_HANDSHAKES};

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Server;
use tonic_health::ServingStatus;

use crate::coordinator::pool::{Pool, PoolConfig, WorkerSource};
use crate::coordinator::{CoordinatorConfig, CoordinatorService};
use crate::rpc::{limits, pb};
use crate::worker::{Serving, Worker, WorkerConfig, WorkerService};

type ServeResult = Result<(), tonic::transport::Error>;

/// After shutdown begins, requests in flight get this long to finish; then the remaining
/// connections (long-lived streams such as health watches) are closed.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs `serve` (built with the given shutdown signal) and returns when it has finished, or
/// [`SHUTDOWN_GRACE`] after shutdown began, whichever is first.
async fn with_grace<F, S>(shutdown: S, serve: impl FnOnce(BoxedSignal) -> F) -> ServeResult
where
    F: Future<Output = ServeResult>,
    S: Future<Output = ()> + Send + 'static,
{
    let (began_tx, began_rx) = oneshot::channel::<()>();
    let signal: BoxedSignal = Box::pin(async move {
        shutdown.await;
        let _ = began_tx.send(());
    });
    let serve = serve(signal);
    tokio::pin!(serve);
    tokio::select! {
        r = &mut serve => r,
        _ = async {
            if began_rx.await.is_ok() {
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } else {
                std::future::pending::<()>().await;
            }
        } => {
            tracing::warn!("shutdown grace period over: closing the remaining connections");
            Ok(())
        }
    }
}

type BoxedSignal = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

fn reflection() -> tonic_reflection::server::v1::ServerReflectionServer<
    impl tonic_reflection::server::v1::ServerReflection,
> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("the compiled descriptor sets are valid")
}

/// Serves a worker on `listener` (and its metrics and health on `admin`, if given) until
/// `shutdown` resolves. Health is NOT_SERVING until the worker has a model loaded.
pub async fn serve_worker(
    listener: TcpListener,
    admin: Option<TcpListener>,
    worker: Worker,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> ServeResult {
    let (reporter, health) = health_reporter().await;
    let service_name = "hch.v1.Worker";
    reporter
        .set_service_status(service_name, ServingStatus::NotServing)
        .await;
    reporter
        .set_service_status("", ServingStatus::NotServing)
        .await;
    let mut ready = worker.ready.clone();
    tokio::spawn(async move {
        if ready.wait_for(|&r| r).await.is_ok() {
            reporter
                .set_service_status(service_name, ServingStatus::Serving)
                .await;
            reporter
                .set_service_status("", ServingStatus::Serving)
                .await;
        }
    });
    let shutdown = shared(shutdown);
    let _admin = admin.map(|listener| {
        let mut registry = prometheus_client::registry::Registry::default();
        worker.service.register_metrics(&mut registry);
        spawn_admin(listener, registry, health.clone(), None, shutdown.clone())
    });
    let service = pb::worker_server::WorkerServer::new(worker.service.clone())
        .max_decoding_message_size(limits::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(limits::MAX_MESSAGE_BYTES);
    let idle = worker.idle_close;
    let _watch = worker.tls.as_ref().map(watch_tls);
    with_grace(shutdown, |signal| {
        Server::builder()
            .add_service(health)
            .add_service(reflection())
            .add_service(service)
            .serve_with_incoming_shutdown(conn::incoming(listener, idle, worker.tls), signal)
    })
    .await
}

/// Serves a coordinator on `listener` (and its metrics and health on `admin`, if given) until
/// `shutdown` resolves.
pub async fn serve_coordinator(
    listener: TcpListener,
    admin: Option<TcpListener>,
    service: Arc<CoordinatorService>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> ServeResult {
    let (reporter, health) = health_reporter().await;
    reporter
        .set_service_status("hch.v1.Coordinator", ServingStatus::Serving)
        .await;
    reporter
        .set_service_status("", ServingStatus::Serving)
        .await;
    let shutdown = shared(shutdown);
    let _admin = admin.map(|listener| {
        let mut registry = prometheus_client::registry::Registry::default();
        service.register_metrics(&mut registry);
        spawn_admin(
            listener,
            registry,
            health.clone(),
            service.viewer(),
            shutdown.clone(),
        )
    });
    // A unary tree is silent on its connection until it ends: a connection is idle only after
    // longer than the longest deadline a client may ask for.
    let idle = service.idle_close();
    let max_message = service.max_message_bytes();
    let tls = service.tls();
    let _watch = tls.as_ref().map(watch_tls);
    let service = pb::coordinator_server::CoordinatorServer::new(service)
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);
    with_grace(shutdown, |signal| {
        Server::builder()
            .add_service(health)
            .add_service(reflection())
            .add_service(service)
            .serve_with_incoming_shutdown(conn::incoming(listener, idle, tls), signal)
    })
    .await
}

/// How long a registry connection may stay silent (a worker asks every few seconds; a fetch
/// streams without pause).
pub const REGISTRY_IDLE: std::time::Duration = std::time::Duration::from_secs(300);

/// Serves the registry at `root` to workers on other nodes (see
/// [`crate::registry::service`]) on `listener`, with health on `admin` if given, until `shutdown`
/// resolves. With `tls`, callers must present a certificate from its client CA.
pub async fn serve_registry(
    listener: TcpListener,
    admin: Option<TcpListener>,
    root: std::path::PathBuf,
    tls: Option<Arc<crate::tls::ServerTls>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> ServeResult {
    let (reporter, health) = health_reporter().await;
    for name in ["", "hch.v1.Registry"] {
        reporter
            .set_service_status(name, ServingStatus::Serving)
            .await;
    }
    let shutdown = shared(shutdown);
    let _admin = admin.map(|listener| {
        let registry = prometheus_client::registry::Registry::default();
        spawn_admin(listener, registry, health.clone(), None, shutdown.clone())
    });
    let _watch = tls.as_ref().map(watch_tls);
    let service = crate::registry::service::RegistryService::new(root).server();
    with_grace(shutdown, |signal| {
        Server::builder()
            .add_service(health)
            .add_service(reflection())
            .add_service(service)
            .serve_with_incoming_shutdown(conn::incoming(listener, REGISTRY_IDLE, tls), signal)
    })
    .await
}

/// The name of the health service that is SERVING as long as the process serves at all: what a
/// liveness probe asks (`""` and the service's own name report readiness, NOT_SERVING while a
/// worker has no model, and a liveness probe on them would restart a worker that is waiting).
pub const LIVENESS: &str = "liveness";

/// A health reporter with [`LIVENESS`] already SERVING.
pub async fn health_reporter() -> (
    tonic_health::server::HealthReporter,
    tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
) {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status(LIVENESS, ServingStatus::Serving)
        .await;
    (reporter, health)
}

/// A shutdown future that several servers (a gRPC port and its admin port) can wait on.
type SharedSignal = futures::future::Shared<BoxedSignal>;

fn shared(shutdown: impl Future<Output = ()> + Send + 'static) -> SharedSignal {
    use futures::FutureExt;
    let boxed: BoxedSignal = Box::pin(shutdown);
    boxed.shared()
}

/// Serves the admin listener in the background until `shutdown`; aborted if dropped first.
fn spawn_admin<H: tonic_health::pb::health_server::Health>(
    listener: TcpListener,
    registry: prometheus_client::registry::Registry,
    health: tonic_health::pb::health_server::HealthServer<H>,
    viewer: Option<Arc<crate::coordinator::viewer::Viewer>>,
    shutdown: SharedSignal,
) -> AbortOnDrop {
    AbortOnDrop(tokio::spawn(async move {
        let registry = Arc::new(registry);
        if let Err(error) = admin::serve_admin(listener, registry, health, viewer, shutdown).await {
            tracing::error!(%error, "the admin listener failed");
        }
    }))
}

/// Re-reads a server's TLS files while it serves (until the returned guard is dropped).
fn watch_tls(tls: &Arc<crate::tls::ServerTls>) -> AbortOnDrop {
    AbortOnDrop(tls.watch(crate::tls::RELOAD_EVERY))
}

/// Aborts a background task when dropped.
pub struct AbortOnDrop(pub JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A server running in the background, stopped by [`Running::stop`] (or by dropping it).
pub struct Running {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<ServeResult>>,
}

impl Running {
    /// Starts graceful shutdown and waits for the server to finish its requests in flight.
    pub async fn stop(mut self) -> ServeResult {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.unwrap_or(Ok(())),
            None => Ok(()),
        }
    }
}

impl Running {
    /// Stops the server at once, dropping its connections and requests in flight (a crash, for
    /// tests of failure handling).
    pub fn abort(mut self) {
        self.stop.take();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn shutdown_channel() -> (
    oneshot::Sender<()>,
    impl Future<Output = ()> + Send + 'static,
) {
    let (tx, rx) = oneshot::channel::<()>();
    (tx, async move {
        let _ = rx.await;
    })
}

/// Starts a worker on `listen` (port 0 for any free port).
pub async fn start_worker(
    listen: SocketAddr,
    serving: Serving,
    config: WorkerConfig,
) -> std::io::Result<(Running, Arc<WorkerService>)> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let worker = Worker::start(serving, config);
    let service = worker.service.clone();
    let (stop, shutdown) = shutdown_channel();
    let task = tokio::spawn(serve_worker(listener, None, worker, shutdown));
    Ok((
        Running {
            addr,
            stop: Some(stop),
            task: Some(task),
        },
        service,
    ))
}

/// Starts a coordinator on `listen` over the workers of `pool`.
pub async fn start_coordinator(
    listen: SocketAddr,
    pool: PoolConfig,
    config: CoordinatorConfig,
) -> std::io::Result<(Running, Arc<CoordinatorService>)> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let pool = Pool::start(pool).await;
    let service = CoordinatorService::new(pool, config);
    let (stop, shutdown) = shutdown_channel();
    let task = tokio::spawn(serve_coordinator(listener, None, service.clone(), shutdown));
    Ok((
        Running {
            addr,
            stop: Some(stop),
            task: Some(task),
        },
        service,
    ))
}

/// What an in-process [`Cluster`] runs: `workers` workers serving `serving`, and a coordinator on
/// `coordinator_listen` over them. The default is two oracle workers and a coordinator on a free
/// loopback port, each with its default settings.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub workers: usize,
    pub serving: Serving,
    pub worker: WorkerConfig,
    pub coordinator_listen: SocketAddr,
    /// The pool's worker source is filled in with the workers' addresses.
    pub pool: PoolConfig,
    pub coordinator: CoordinatorConfig,
    /// An admin listener (metrics of the coordinator and of every worker, labelled
    /// `worker="0"`, ...; health), if wanted.
    pub admin_listen: Option<SocketAddr>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            workers: 2,
            serving: Serving::Oracle {
                delay: std::time::Duration::ZERO,
            },
            worker: WorkerConfig::default(),
            coordinator_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            pool: PoolConfig::default(),
            coordinator: CoordinatorConfig::default(),
            admin_listen: None,
        }
    }
}

/// A coordinator and its workers in one process, on loopback ports.
pub struct Cluster {
    pub coordinator: Running,
    pub coordinator_service: Arc<CoordinatorService>,
    pub workers: Vec<(Running, Arc<WorkerService>)>,
    /// The admin listener's address, if one was asked for.
    pub admin_addr: Option<SocketAddr>,
    admin: Option<AbortOnDrop>,
}

impl Cluster {
    /// Starts the workers, each on 127.0.0.1 with a free port, then the coordinator over them.
    pub async fn start(config: ClusterConfig) -> std::io::Result<Cluster> {
        let mut started = Vec::with_capacity(config.workers);
        for i in 0..config.workers {
            // The workers share their metric families, each labelled with its number.
            let worker = WorkerConfig {
                histograms: config.worker.histograms.for_worker(i.to_string()),
                ..config.worker.clone()
            };
            started.push(
                start_worker(
                    SocketAddr::from(([127, 0, 0, 1], 0)),
                    config.serving.clone(),
                    worker,
                )
                .await?,
            );
        }
        let addresses = started.iter().map(|(r, _)| r.addr.to_string()).collect();
        let (coordinator, coordinator_service) = start_coordinator(
            config.coordinator_listen,
            PoolConfig {
                source: WorkerSource::Static(addresses),
                ..config.pool
            },
            config.coordinator,
        )
        .await?;
        let (admin_addr, admin) = match config.admin_listen {
            None => (None, None),
            Some(listen) => {
                let listener = TcpListener::bind(listen).await?;
                let addr = listener.local_addr()?;
                let mut registry = prometheus_client::registry::Registry::default();
                coordinator_service.register_metrics(&mut registry);
                let workers: Vec<_> = started.iter().map(|(_, w)| w.clone()).collect();
                crate::worker::metrics::register(&mut registry, &workers);
                let (reporter, health) = health_reporter().await;
                reporter
                    .set_service_status("", ServingStatus::Serving)
                    .await;
                reporter
                    .set_service_status("hch.v1.Coordinator", ServingStatus::Serving)
                    .await;
                let admin = spawn_admin(
                    listener,
                    registry,
                    health,
                    coordinator_service.viewer(),
                    shared(std::future::pending()),
                );
                (Some(addr), Some(admin))
            }
        };
        Ok(Cluster {
            coordinator,
            coordinator_service,
            workers: started,
            admin_addr,
            admin,
        })
    }

    /// Stops the coordinator, then the workers, each gracefully.
    pub async fn stop(self) {
        drop(self.admin);
        let _ = self.coordinator.stop().await;
        for (w, _) in self.workers {
            let _ = w.stop().await;
        }
    }
}
