//! The coordinator's view of its workers: where they are (a static list, or a DNS name such as a
//! Kubernetes headless Service, re-resolved periodically), what they serve, whether they are up,
//! and how busy they are. Requests are balanced per call, not per connection: each batch goes to
//! the least-busy worker that serves its domain, whatever connections exist.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use dashmap::DashSet;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

use crate::answerer::AnswererId;
use crate::domain::{DomainKind, InstanceId};
use crate::rpc::coordinator::WorkerStatus;
use crate::rpc::worker::WorkerInfo;
use crate::rpc::{limits, pb};

/// Where workers are found.
#[derive(Clone, Debug)]
pub enum WorkerSource {
    /// Fixed `host:port` addresses.
    Static(Vec<String>),
    /// A `host:port` whose host resolves to one address per worker (a headless Service).
    Dns(String),
}

#[derive(Clone, Debug)]
pub struct PoolConfig {
    pub source: WorkerSource,
    /// How often worker info is refreshed and the DNS name re-resolved.
    pub refresh_every: Duration,
    /// How long a worker that failed is avoided.
    pub down_for: Duration,
    /// Calls in flight per worker; further batches wait (and grow) until one finishes. Enough to
    /// cover the round trip (a worker merges concurrent calls into one forward pass anyway): at 4,
    /// the loadtest left half of the machine idle waiting on replies.
    pub max_in_flight_per_worker: usize,
    /// Instance ids remembered per worker as "already has the facts".
    pub known_facts_per_worker: usize,
    /// Mutual TLS to the workers: the CA their certificates chain to, the coordinator's client
    /// certificate, and the name to verify them as. `None`: plain TCP.
    pub tls: Option<Arc<crate::tls::ClientTls>>,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            source: WorkerSource::Static(Vec::new()),
            refresh_every: Duration::from_secs(2),
            down_for: Duration::from_secs(1),
            max_in_flight_per_worker: 16,
            known_facts_per_worker: 65_536,
            tls: None,
        }
    }
}

/// One worker, as the coordinator sees it.
pub struct WorkerHandle {
    pub address: String,
    client: pb::worker_client::WorkerClient<Channel>,
    slots: Arc<Semaphore>,
    pub items_sent: AtomicU64,
    pub failures: AtomicU64,
    down_until: Mutex<Option<Instant>>,
    info: RwLock<Option<WorkerInfo>>,
    known: DashSet<InstanceId>,
    known_cap: usize,
    max_in_flight: usize,
}

impl WorkerHandle {
    fn new(address: String, config: &PoolConfig) -> Option<Self> {
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .ok()?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        let channel = crate::tls::lazy_channel(endpoint, config.tls.clone());
        let client = pb::worker_client::WorkerClient::new(channel)
            .max_decoding_message_size(limits::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(limits::MAX_MESSAGE_BYTES);
        Some(Self {
            address,
            client,
            slots: Arc::new(Semaphore::new(config.max_in_flight_per_worker.max(1))),
            items_sent: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            down_until: Mutex::new(Some(Instant::now())),
            info: RwLock::new(None),
            known: DashSet::new(),
            known_cap: config.known_facts_per_worker,
            max_in_flight: config.max_in_flight_per_worker.max(1),
        })
    }

    pub fn client(&self) -> pb::worker_client::WorkerClient<Channel> {
        self.client.clone()
    }

    pub fn in_flight(&self) -> usize {
        self.max_in_flight - self.slots.available_permits()
    }

    pub fn info(&self) -> Option<WorkerInfo> {
        self.read_info().clone()
    }

    fn read_info(&self) -> std::sync::RwLockReadGuard<'_, Option<WorkerInfo>> {
        self.info.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_up(&self) -> bool {
        let down = self.down_until.lock().unwrap_or_else(|p| p.into_inner());
        match *down {
            None => true,
            Some(until) => Instant::now() >= until && self.read_info().is_some(),
        }
    }

    /// Read in place: every call picks a worker by asking each whether it serves the domain.
    pub fn serves(&self, domain: DomainKind) -> bool {
        self.read_info().as_ref().is_some_and(|i| i.serves(domain))
    }

    /// Avoid this worker for `period` (it failed or refused).
    pub fn mark_down(&self, period: Duration) {
        *self.down_until.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + period);
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    fn mark_up(&self, info: WorkerInfo) {
        *self.info.write().unwrap_or_else(|p| p.into_inner()) = Some(info);
        *self.down_until.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    pub fn knows(&self, id: &InstanceId) -> bool {
        self.known.contains(id)
    }

    pub fn remember(&self, id: InstanceId) {
        if self.known.len() >= self.known_cap {
            // Forgetting costs only a resend of some facts.
            self.known.clear();
        }
        self.known.insert(id);
    }

    pub fn forget(&self, id: &InstanceId) {
        self.known.remove(id);
    }

    pub async fn slot(&self) -> OwnedSemaphorePermit {
        self.slots
            .clone()
            .acquire_owned()
            .await
            .expect("worker slots are never closed")
    }

    async fn refresh(&self) {
        let mut client = self.client();
        let mut request = tonic::Request::new(pb::ModelInfoRequest {});
        request.set_timeout(Duration::from_secs(1));
        let info = client
            .model_info(request)
            .await
            .map_err(crate::rpc::ServiceError::from)
            .and_then(|info| WorkerInfo::decode(info.into_inner()));
        match info {
            Ok(info) => self.mark_up(info),
            Err(error) => {
                tracing::debug!(worker = %self.address, %error, "worker is not answering");
                *self.down_until.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
                *self.info.write().unwrap_or_else(|p| p.into_inner()) = None;
            }
        }
    }
}

/// The common answerer of those of `workers` that serve `domain` (see [`Pool::answerer_id`]).
fn identity(workers: &[Arc<WorkerHandle>], domain: DomainKind) -> AnswererId {
    let mut ids: Vec<AnswererId> = workers
        .iter()
        .filter_map(|w| {
            let info = w.read_info();
            info.as_ref()
                .filter(|i| i.serves(domain))
                .map(|i| i.answerer.clone())
        })
        .collect();
    ids.sort_by_key(AnswererId::key);
    ids.dedup_by_key(|id| id.key());
    match ids.as_slice() {
        [] => AnswererId::no_workers(),
        [one] => one.clone(),
        // Mixed generations during a rollout.
        many => AnswererId::mixed(many),
    }
}

/// The set of workers.
pub struct Pool {
    workers: RwLock<Vec<Arc<WorkerHandle>>>,
    /// Who answers each domain (see [`Pool::answerer_id`]), by `DomainKind::ALL`'s order: worked
    /// out as each refresh ends, not per tree, so that a tree's cost does not grow with the
    /// number of workers (it took a copy of every worker's info, and sorted them, per tree).
    identities: RwLock<[AnswererId; DomainKind::ALL.len()]>,
    config: PoolConfig,
    next: AtomicUsize,
    /// Re-reads the TLS files while the pool lives (new connections use the newest).
    _tls_watch: Option<crate::server::AbortOnDrop>,
    metrics: super::metrics::CallMetrics,
}

impl Pool {
    /// Resolves the workers, asks each what it serves, and keeps refreshing in the background
    /// (until the pool is dropped). Needs a tokio runtime.
    pub async fn start(config: PoolConfig) -> Arc<Pool> {
        let pool = Arc::new(Pool {
            workers: RwLock::new(Vec::new()),
            identities: RwLock::new(std::array::from_fn(|_| AnswererId::no_workers())),
            _tls_watch: config
                .tls
                .as_ref()
                .map(|tls| crate::server::AbortOnDrop(tls.watch(crate::tls::RELOAD_EVERY))),
            config,
            next: AtomicUsize::new(0),
            metrics: super::metrics::CallMetrics::default(),
        });
        pool.refresh().await;
        let weak = Arc::downgrade(&pool);
        tokio::spawn(refresh_loop(weak, pool.config.refresh_every));
        pool
    }

    pub fn config(&self) -> &PoolConfig {
        &self.config
    }

    /// What calls to the workers record.
    pub fn metrics(&self) -> &super::metrics::CallMetrics {
        &self.metrics
    }

    pub fn workers(&self) -> Vec<Arc<WorkerHandle>> {
        self.workers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    async fn resolve(&self) -> Vec<String> {
        match &self.config.source {
            WorkerSource::Static(list) => list.clone(),
            WorkerSource::Dns(name) => match tokio::net::lookup_host(name.as_str()).await {
                Ok(addrs) => {
                    let mut v: Vec<String> = addrs.map(|a| a.to_string()).collect();
                    v.sort();
                    v.dedup();
                    v
                }
                Err(e) => {
                    tracing::warn!(name = %name, error = %e, "cannot resolve workers");
                    self.workers().iter().map(|w| w.address.clone()).collect()
                }
            },
        }
    }

    /// Re-resolves the worker list and refreshes every worker's info.
    pub async fn refresh(&self) {
        let addresses = self.resolve().await;
        let wanted: HashSet<&String> = addresses.iter().collect();
        let current = self.workers();
        let mut next: Vec<Arc<WorkerHandle>> = current
            .iter()
            .filter(|w| wanted.contains(&w.address))
            .cloned()
            .collect();
        for address in &addresses {
            if !next.iter().any(|w| &w.address == address) {
                match WorkerHandle::new(address.clone(), &self.config) {
                    Some(handle) => next.push(Arc::new(handle)),
                    None => tracing::warn!(%address, "invalid worker address"),
                }
            }
        }
        // Every worker, not only those without info: a worker that hot-loads a new generation
        // changes its answerer, and with it the memo key of every tree sent to it.
        futures::future::join_all(next.iter().map(|w| w.refresh())).await;
        let identities = DomainKind::ALL.map(|domain| identity(&next, domain));
        *self.workers.write().unwrap_or_else(|p| p.into_inner()) = next;
        *self.identities.write().unwrap_or_else(|p| p.into_inner()) = identities;
    }

    /// The least busy worker that is up, serves `domain` and is not in `exclude`.
    pub fn pick(&self, domain: DomainKind, exclude: &[String]) -> Option<Arc<WorkerHandle>> {
        let workers = self.workers();
        let n = workers.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &workers[(start + i) % n])
            .filter(|w| w.is_up() && w.serves(domain) && !exclude.contains(&w.address))
            .min_by_key(|w| w.in_flight())
            .cloned()
    }

    /// Who answers `domain`: the workers' common answerer, so that memo entries made with one
    /// generation are never served for another. As of the last refresh, which is also when the
    /// coordinator learns that a worker loaded another generation.
    pub fn answerer_id(&self, domain: DomainKind) -> AnswererId {
        let identities = self.identities.read().unwrap_or_else(|p| p.into_inner());
        DomainKind::ALL
            .iter()
            .position(|&d| d == domain)
            .map_or_else(AnswererId::no_workers, |at| identities[at].clone())
    }

    pub fn status(&self) -> Vec<WorkerStatus> {
        self.workers()
            .iter()
            .map(|w| {
                let info = w.info();
                WorkerStatus {
                    address: w.address.clone(),
                    healthy: w.is_up(),
                    answerer: info.as_ref().map(|i| i.answerer.label().to_string()),
                    generation: info.as_ref().and_then(|i| i.answerer.generation()),
                    domains: info.map(|i| i.domains).unwrap_or_default(),
                    calls_in_flight: w.in_flight() as u64,
                    items_sent: w.items_sent.load(Ordering::Relaxed),
                    failures: w.failures.load(Ordering::Relaxed),
                }
            })
            .collect()
    }
}

async fn refresh_loop(pool: Weak<Pool>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(pool) = pool.upgrade() else { return };
        pool.refresh().await;
    }
}
