//! The worker: answers batches of (instance, question) pairs for coordinators.
//!
//! A worker serves either one generation of a model from a registry (hot-loading newer ones as
//! they are promoted) or, explicitly flagged, the oracle for every domain (tests and load tests).
//! Per domain it keeps a [`FactsCache`] (facts arrive once, then by hash) and a [`Batcher`] (calls
//! from many trees become one forward pass). Health reports NOT_SERVING until a model is loaded.

pub mod batcher;
pub mod facts;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::future::BoxFuture;
use tonic::{Request, Response, Status};

use crate::answerer::{AnswerError, Answerer, AnswererId, Answers, Oracle, Query};
use crate::domain::{parse_question_for, print_reply, Domain, DomainKind, Instance, InstanceId};
use crate::rpc::{limits, pb, ServiceError};
use crate::with_domain;
use batcher::{BatchConfig, Batcher, SharedAnswerer};
use facts::FactsCache;

/// What a worker answers with.
#[derive(Clone, Debug)]
pub enum Serving {
    /// The ground truth, for every domain, after an optional artificial delay per batch (to
    /// simulate model latency in load and cancellation tests). Never the product path.
    Oracle { delay: Duration },
    /// The current generation of a model for `domain` in the registry at `registry`.
    Registry {
        registry: PathBuf,
        domain: DomainKind,
    },
}

/// Worker limits.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub batch: BatchConfig,
    /// Instances kept per domain.
    pub facts_cache: usize,
    /// How often the registry is checked for a newly promoted generation.
    pub reload_every: Duration,
    /// libtorch threads for inference (0: libtorch's default).
    pub threads: usize,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            batch: BatchConfig::default(),
            facts_cache: 4096,
            reload_every: Duration::from_secs(2),
            threads: 0,
        }
    }
}

/// The oracle, slowed down on request.
struct SlowOracle<D: Domain> {
    oracle: Oracle<D>,
    delay: Duration,
}

impl<D: Domain> Answerer<D> for SlowOracle<D> {
    fn id(&self) -> AnswererId {
        AnswererId::oracle()
    }

    fn answer(&self, batch: Vec<Query<D>>) -> BoxFuture<'_, Answers<D::Answer>> {
        Box::pin(async move {
            if !self.delay.is_zero() {
                tokio::time::sleep(self.delay).await;
            }
            self.oracle.answer(batch).await
        })
    }
}

/// Stands in until the first generation is loaded.
struct NotLoaded;

impl<D: Domain> Answerer<D> for NotLoaded {
    fn id(&self) -> AnswererId {
        AnswererId {
            key: 1,
            label: Arc::from("none"),
        }
    }

    fn answer(&self, _: Vec<Query<D>>) -> BoxFuture<'_, Answers<D::Answer>> {
        Box::pin(std::future::ready(Err(AnswerError::Unavailable(
            "this worker has no model loaded yet".to_string(),
        ))))
    }
}

/// One domain's serving state (type-erased so the service can hold all five).
trait DomainWorker: Send + Sync {
    fn answer(
        &self,
        request: pb::AnswerRequest,
    ) -> BoxFuture<'_, Result<pb::AnswerResponse, ServiceError>>;
    fn stats(&self) -> &batcher::BatchStats;
}

struct Typed<D: Domain> {
    domain: D,
    cache: FactsCache<D>,
    batcher: Batcher<D>,
}

impl<D: Domain + Copy> Typed<D> {
    async fn answer_typed(
        &self,
        request: pb::AnswerRequest,
    ) -> Result<pb::AnswerResponse, ServiceError> {
        if request.items.len() > limits::MAX_BATCH_ITEMS {
            return Err(ServiceError::invalid(format!(
                "{} items in one call; the limit is {}",
                request.items.len(),
                limits::MAX_BATCH_ITEMS
            )));
        }
        if request.instances.len() > limits::MAX_BATCH_INSTANCES {
            return Err(ServiceError::invalid(format!(
                "{} instances in one call; the limit is {}",
                request.instances.len(),
                limits::MAX_BATCH_INSTANCES
            )));
        }
        let mut instances = Vec::with_capacity(request.instances.len());
        let mut missing = Vec::new();
        for (i, facts) in request.instances.iter().enumerate() {
            let id: [u8; 32] = facts.id.as_slice().try_into().map_err(|_| {
                ServiceError::invalid(format!(
                    "instance {i}: id must be the 32-byte SHA-256 of the facts text, got {} bytes",
                    facts.id.len()
                ))
            })?;
            let id = InstanceId(id);
            if facts.text.is_empty() {
                match self.cache.get(&id) {
                    Some(instance) => instances.push(Some(instance)),
                    None => {
                        missing.push(facts.id.clone());
                        instances.push(None);
                    }
                }
                continue;
            }
            if facts.text.len() > limits::MAX_FACTS_BYTES {
                return Err(ServiceError::invalid(format!(
                    "instance {i}: facts text is {} bytes; the limit is {}",
                    facts.text.len(),
                    limits::MAX_FACTS_BYTES
                )));
            }
            let instance = Instance::parse(&self.domain, &facts.text)
                .map_err(|e| ServiceError::invalid(format!("instance {i}: {e}")))?;
            if instance.id() != id {
                return Err(ServiceError::invalid(format!(
                    "instance {i}: id {id} is not the SHA-256 of the facts' canonical text ({})",
                    instance.id()
                )));
            }
            self.cache.insert(instance.clone());
            instances.push(Some(instance));
        }
        if !missing.is_empty() {
            return Ok(pb::AnswerResponse {
                missing_facts: missing,
                ..Default::default()
            });
        }
        let mut queries = Vec::with_capacity(request.items.len());
        for (i, item) in request.items.iter().enumerate() {
            let instance = instances
                .get(item.instance as usize)
                .and_then(|x| x.clone())
                .ok_or_else(|| {
                    ServiceError::invalid(format!(
                        "item {i}: instance index {} is out of range ({} instances sent)",
                        item.instance,
                        instances.len()
                    ))
                })?;
            if item.question.len() > limits::MAX_QUESTION_BYTES {
                return Err(ServiceError::invalid(format!(
                    "item {i}: question is {} bytes; the limit is {}",
                    item.question.len(),
                    limits::MAX_QUESTION_BYTES
                )));
            }
            let question = parse_question_for(&self.domain, instance.facts(), &item.question)
                .map_err(|e| ServiceError::invalid(format!("item {i}: {e}")))?;
            queries.push(Query { instance, question });
        }
        let answered = self.batcher.submit(queries).await?;
        Ok(pb::AnswerResponse {
            replies: answered
                .answers
                .iter()
                .map(|a| pb::Reply {
                    known: a.is_some(),
                    answer: a
                        .as_ref()
                        .map(|_| print_reply(&self.domain, a))
                        .unwrap_or_default(),
                })
                .collect(),
            missing_facts: Vec::new(),
            queue_us: answered.queue.as_micros() as u64,
            compute_us: answered.compute.as_micros() as u64,
        })
    }
}

impl<D: Domain + Copy> DomainWorker for Typed<D> {
    fn answer(
        &self,
        request: pb::AnswerRequest,
    ) -> BoxFuture<'_, Result<pb::AnswerResponse, ServiceError>> {
        Box::pin(self.answer_typed(request))
    }

    fn stats(&self) -> &batcher::BatchStats {
        &self.batcher.stats
    }
}

/// The worker's gRPC service.
pub struct WorkerService {
    domains: HashMap<DomainKind, Arc<dyn DomainWorker>>,
    info: Arc<RwLock<pb::ModelInfoResponse>>,
}

/// A started worker: its service plus what keeps it current.
pub struct Worker {
    pub service: Arc<WorkerService>,
    /// Becomes true once a model (or the oracle) is loaded.
    pub ready: tokio::sync::watch::Receiver<bool>,
}

impl Worker {
    /// Builds the service and, for a registry, starts loading (and later reloading) the current
    /// generation in the background. Needs a tokio runtime.
    pub fn start(serving: Serving, config: WorkerConfig) -> Worker {
        crate::model::set_threads(config.threads);
        let info = Arc::new(RwLock::new(pb::ModelInfoResponse {
            max_batch: config.batch.max_batch as u32,
            queue_capacity: config.batch.queue_capacity as u32,
            ..Default::default()
        }));
        let (ready_tx, ready) = tokio::sync::watch::channel(false);
        let mut domains: HashMap<DomainKind, Arc<dyn DomainWorker>> = HashMap::new();
        match serving {
            Serving::Oracle { delay } => {
                for kind in DomainKind::ALL {
                    let worker: Arc<dyn DomainWorker> = with_domain!(kind, d => {
                        let answerer: Arc<dyn Answerer<_>> =
                            Arc::new(SlowOracle { oracle: Oracle::new(d), delay });
                        Arc::new(typed(d, Arc::new(RwLock::new(answerer)), &config))
                    });
                    domains.insert(kind, worker);
                }
                let mut i = info.write().unwrap_or_else(|p| p.into_inner());
                i.domains = DomainKind::NAMES.iter().map(|s| s.to_string()).collect();
                i.answerer = "oracle".to_string();
                i.answerer_key = AnswererId::ORACLE_KEY;
                drop(i);
                let _ = ready_tx.send(true);
            }
            Serving::Registry { registry, domain } => {
                let worker: Arc<dyn DomainWorker> = with_domain!(domain, d => {
                    let shared: SharedAnswerer<_> = Arc::new(RwLock::new(Arc::new(NotLoaded)));
                    tokio::spawn(reload_loop(
                        d,
                        registry.clone(),
                        shared.clone(),
                        info.clone(),
                        config.reload_every,
                        ready_tx,
                    ));
                    Arc::new(typed(d, shared, &config))
                });
                domains.insert(domain, worker);
                let mut i = info.write().unwrap_or_else(|p| p.into_inner());
                i.domains = vec![domain.name().to_string()];
                i.answerer = "none".to_string();
            }
        }
        Worker {
            service: Arc::new(WorkerService { domains, info }),
            ready,
        }
    }
}

fn typed<D: Domain + Copy>(
    domain: D,
    answerer: SharedAnswerer<D>,
    config: &WorkerConfig,
) -> Typed<D> {
    Typed {
        domain,
        cache: FactsCache::new(config.facts_cache),
        batcher: Batcher::start(answerer, config.batch),
    }
}

/// Loads the registry's current generation whenever it changes; batches in flight keep the
/// model they started with.
async fn reload_loop<D: Domain + Copy>(
    domain: D,
    registry: PathBuf,
    shared: SharedAnswerer<D>,
    info: Arc<RwLock<pb::ModelInfoResponse>>,
    every: Duration,
    ready: tokio::sync::watch::Sender<bool>,
) {
    let mut loaded: Option<u64> = None;
    loop {
        let registry_path = registry.clone();
        let result = tokio::task::spawn_blocking(move || -> Result<Option<_>, String> {
            let registry =
                crate::registry::Registry::open(&registry_path).map_err(|e| e.to_string())?;
            let Some(current) = registry.current().map_err(|e| e.to_string())? else {
                return Ok(None);
            };
            if Some(current) == loaded {
                return Ok(None);
            }
            let model = crate::model::generation::load(
                &registry,
                Some(current),
                domain,
                crate::model::pick_device(),
            )
            .map_err(|e| e.to_string())?;
            Ok(Some(model))
        })
        .await;
        match result {
            Ok(Ok(Some(model))) => {
                let id = model.answerer_id();
                let generation = model.manifest.generation;
                let answerer: Arc<dyn Answerer<D>> =
                    Arc::new(crate::model::answerer::ModelAnswerer::new(
                        model.model,
                        id.key,
                        id.label.clone(),
                    ));
                *shared.write().unwrap_or_else(|p| p.into_inner()) = answerer;
                {
                    let mut i = info.write().unwrap_or_else(|p| p.into_inner());
                    i.answerer = id.label.to_string();
                    i.answerer_key = id.key;
                    i.generation = Some(generation);
                }
                loaded = Some(generation);
                tracing::info!(generation, "worker loaded generation");
                let _ = ready.send(true);
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "worker could not load the current generation")
            }
            Err(e) => tracing::error!(error = %e, "generation loading task failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = ready.closed() => return,
        }
    }
}

impl WorkerService {
    /// Calls dropped because their caller went away, over all domains.
    pub fn cancelled_calls(&self) -> u64 {
        self.domains
            .values()
            .map(|d| d.stats().cancelled_calls.load(Ordering::Relaxed))
            .sum()
    }

    /// Questions answered, over all domains.
    pub fn questions_answered(&self) -> u64 {
        self.domains
            .values()
            .map(|d| d.stats().questions.load(Ordering::Relaxed))
            .sum()
    }

    /// (calls, batches) over all domains: calls per batch is the worker's batching factor.
    pub fn calls_and_batches(&self) -> (u64, u64) {
        self.domains.values().fold((0, 0), |(c, b), d| {
            let s = d.stats();
            (
                c + s.calls.load(Ordering::Relaxed),
                b + s.batches.load(Ordering::Relaxed),
            )
        })
    }

    pub fn info(&self) -> pb::ModelInfoResponse {
        self.info.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[tonic::async_trait]
impl pb::worker_server::Worker for Arc<WorkerService> {
    async fn answer(
        &self,
        request: Request<pb::AnswerRequest>,
    ) -> Result<Response<pb::AnswerResponse>, Status> {
        use tracing::Instrument;
        let (parent, trees) = crate::rpc::trace_context::of_request(&request);
        let request = request.into_inner();
        let span = tracing::info_span!(
            "worker.answer",
            domain = %request.domain,
            items = request.items.len(),
            trace_id = %parent.map(|(t, _)| format!("{t:032x}")).unwrap_or_default(),
            parent_span = %parent.map(|(_, s)| format!("{s:016x}")).unwrap_or_default(),
            trees = %trees,
        );
        self.answer_in(request).instrument(span).await
    }

    async fn model_info(
        &self,
        _: Request<pb::ModelInfoRequest>,
    ) -> Result<Response<pb::ModelInfoResponse>, Status> {
        Ok(Response::new(self.info()))
    }
}

impl WorkerService {
    async fn answer_in(
        &self,
        request: pb::AnswerRequest,
    ) -> Result<Response<pb::AnswerResponse>, Status> {
        let kind: DomainKind = request.domain.parse().map_err(ServiceError::from)?;
        let worker = self.domains.get(&kind).ok_or_else(|| {
            ServiceError::FailedPrecondition(format!(
                "this worker serves {}, not {kind}",
                self.info().domains.join(", ")
            ))
        })?;
        Ok(Response::new(worker.answer(request).await?))
    }
}
