//! The worker: answers batches of (instance, question) pairs for coordinators.
//!
//! A worker serves either one generation of a model from a registry (hot-loading newer ones as
//! they are promoted) or, explicitly flagged, the oracle for every domain (tests and load tests).
//! Per domain it keeps a [`FactsCache`] (facts arrive once, then by hash) and a [`Batcher`] (calls
//! from many trees become one forward pass). Health reports NOT_SERVING until a model is loaded.
//!
//! A call reads: decode (`rpc::worker`: limits, facts by hash, questions parsed), answer through
//! the batcher, encode; every error becomes a status through `rpc::error`, once.

pub mod facts;
pub mod metrics;
#[cfg(feature = "model")]
mod reload;

use std::collections::HashMap;
#[cfg(feature = "model")]
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::future::BoxFuture;
use tonic::{Request, Response, Status};

use crate::answerer::batched::{BatchConfig, BatchStats, Batcher, SharedAnswerer};
use crate::answerer::{Answerer, AnswererId, Oracle};
use crate::domain::{Domain, DomainKind};
use crate::otel::{KeyValue, Kind, Parent, Tracer};
use crate::rpc::telemetry::{self, TraceContext};
use crate::rpc::worker::{AnswerCall, AnswerReply, Resolved, WorkerInfo};
use crate::rpc::{pb, ServiceError};
use crate::with_domain;
use facts::FactsCache;

/// What a worker answers with.
#[derive(Clone, Debug)]
pub enum Serving {
    /// The ground truth, for every domain, after an optional artificial delay per batch (to
    /// simulate model latency in load and cancellation tests). Never the product path.
    Oracle { delay: Duration },
    /// The current generation of a model for `domain` in the registry at `registry`.
    #[cfg(feature = "model")]
    Registry {
        registry: PathBuf,
        domain: DomainKind,
    },
    /// The current generation of a registry served over the network (see
    /// [`crate::registry::service`]): each promoted generation is copied into the local registry
    /// `cache`, verified, and served from there.
    #[cfg(feature = "model")]
    Mirror {
        /// The registry service's address, for messages.
        url: String,
        channel: tonic::transport::Channel,
        cache: PathBuf,
        domain: DomainKind,
    },
}

/// Worker limits.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub batch: BatchConfig,
    /// Instances kept per domain.
    pub facts_cache: usize,
    /// Bytes of encoded facts a model keeps (see [`crate::model::cache`]; 0: none).
    pub encoding_cache_bytes: usize,
    /// How often the registry is checked for a newly promoted generation.
    pub reload_every: Duration,
    /// libtorch threads for inference (0: libtorch's default).
    pub threads: usize,
    /// A connection without traffic for this long is closed (a worker call lasts at most the
    /// coordinator's call timeout, seconds).
    pub idle_close: Duration,
    /// TLS for the worker's listener: its certificate, and the CA whose client certificates
    /// (coordinators', the trainer's) it requires. `None`: plain TCP.
    pub tls: Option<Arc<crate::tls::ServerTls>>,
    /// Where the batchers record their distributions (shared, and labelled per worker, by the
    /// workers of one process).
    pub histograms: metrics::WorkerHistograms,
    /// Where the spans of calls and batches go (see [`crate::otel`]); off by default.
    pub tracer: Tracer,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            batch: BatchConfig::default(),
            facts_cache: 4096,
            encoding_cache_bytes: 256 << 20,
            reload_every: Duration::from_secs(2),
            threads: 0,
            idle_close: Duration::from_secs(300),
            tls: None,
            histograms: metrics::WorkerHistograms::default(),
            tracer: Tracer::off(),
        }
    }
}

/// One domain's serving state (type-erased so the service can hold all five).
trait DomainWorker: Send + Sync {
    fn answer(
        &self,
        call: AnswerCall,
        trace: Option<TraceContext>,
    ) -> BoxFuture<'_, Result<AnswerReply, ServiceError>>;
    fn stats(&self) -> &BatchStats;
    /// Calls waiting for a batch.
    fn queued(&self) -> usize;
    /// The facts cache's (hits, misses, instances held).
    fn facts_cache(&self) -> (u64, u64, usize);
    /// The model's encoding cache (hits, misses, evictions, bytes, instances), if a model serves.
    fn encoding_cache(&self) -> Option<(u64, u64, u64, u64, u64)>;
}

struct Typed<D: Domain> {
    domain: D,
    cache: FactsCache<D>,
    batcher: Batcher<D>,
    #[cfg(feature = "model")]
    encodings: Option<Arc<crate::model::cache::CacheStats>>,
}

impl<D: Domain + Copy> Typed<D> {
    async fn answer_typed(
        &self,
        call: AnswerCall,
        trace: Option<TraceContext>,
    ) -> Result<AnswerReply, ServiceError> {
        let queries = match call.resolve(&self.domain, |id| self.cache.get(id))? {
            Resolved::MissingFacts(ids) => return Ok(AnswerReply::MissingFacts(ids)),
            Resolved::Queries { queries, received } => {
                for instance in received {
                    self.cache.insert(instance);
                }
                queries
            }
        };
        let answered = self.batcher.submit_traced(queries, trace).await?;
        Ok(AnswerReply::of_answers(
            &self.domain,
            &answered.answers,
            answered.queue,
            answered.compute,
        ))
    }
}

impl<D: Domain + Copy> DomainWorker for Typed<D> {
    fn answer(
        &self,
        call: AnswerCall,
        trace: Option<TraceContext>,
    ) -> BoxFuture<'_, Result<AnswerReply, ServiceError>> {
        Box::pin(self.answer_typed(call, trace))
    }

    fn stats(&self) -> &BatchStats {
        &self.batcher.stats
    }

    fn queued(&self) -> usize {
        self.batcher.queued()
    }

    fn facts_cache(&self) -> (u64, u64, usize) {
        self.cache.counts()
    }

    #[cfg(feature = "model")]
    fn encoding_cache(&self) -> Option<(u64, u64, u64, u64, u64)> {
        self.encodings.as_ref().map(|s| s.read())
    }

    #[cfg(not(feature = "model"))]
    fn encoding_cache(&self) -> Option<(u64, u64, u64, u64, u64)> {
        None
    }
}

/// The worker's gRPC service.
pub struct WorkerService {
    domains: HashMap<DomainKind, Arc<dyn DomainWorker>>,
    info: Arc<RwLock<WorkerInfo>>,
    histograms: metrics::WorkerHistograms,
    tracer: Tracer,
}

/// A started worker: its service plus what keeps it current.
pub struct Worker {
    pub service: Arc<WorkerService>,
    /// Becomes true once a model (or the oracle) is loaded.
    pub ready: tokio::sync::watch::Receiver<bool>,
    /// See [`WorkerConfig::idle_close`].
    pub idle_close: Duration,
    /// See [`WorkerConfig::tls`].
    pub tls: Option<Arc<crate::tls::ServerTls>>,
}

impl Worker {
    /// Builds the service and, for a registry, starts loading (and later reloading) the current
    /// generation in the background. Needs a tokio runtime.
    pub fn start(serving: Serving, config: WorkerConfig) -> Worker {
        #[cfg(feature = "model")]
        crate::model::set_threads(config.threads);
        let info = Arc::new(RwLock::new(WorkerInfo {
            domains: Vec::new(),
            answerer: AnswererId::not_loaded(),
            max_batch: config.batch.max_batch as u32,
            queue_capacity: config.batch.queue_capacity as u32,
        }));
        let (ready_tx, ready) = tokio::sync::watch::channel(false);
        let histograms = config.histograms.clone();
        let mut domains: HashMap<DomainKind, Arc<dyn DomainWorker>> = HashMap::new();
        match serving {
            Serving::Oracle { delay } => {
                for kind in DomainKind::ALL {
                    let worker: Arc<dyn DomainWorker> = with_domain!(kind, d => {
                        let answerer: Arc<dyn Answerer<_>> =
                            Arc::new(Oracle::with_delay(d, delay));
                        Arc::new(typed(d, Arc::new(RwLock::new(answerer)), &config, &histograms))
                    });
                    domains.insert(kind, worker);
                }
                let mut i = info.write().unwrap_or_else(|p| p.into_inner());
                i.domains = DomainKind::ALL.to_vec();
                i.answerer = AnswererId::oracle();
                drop(i);
                let _ = ready_tx.send(true);
            }
            #[cfg(feature = "model")]
            Serving::Registry { .. } | Serving::Mirror { .. } => {
                let (registry, domain) = match serving {
                    Serving::Mirror {
                        url,
                        channel,
                        cache,
                        domain,
                    } => {
                        tokio::spawn(crate::registry::service::mirror_loop(
                            channel,
                            url,
                            cache.clone(),
                            config.reload_every,
                        ));
                        (cache, domain)
                    }
                    Serving::Registry { registry, domain } => (registry, domain),
                    Serving::Oracle { .. } => unreachable!("matched above"),
                };
                let worker: Arc<dyn DomainWorker> = with_domain!(domain, d => {
                    let shared: SharedAnswerer<_> =
                        Arc::new(RwLock::new(Arc::new(reload::NotLoaded)));
                    let encodings = Arc::new(crate::model::cache::CacheStats::default());
                    tokio::spawn(reload::reload_loop(
                        d,
                        registry.clone(),
                        shared.clone(),
                        info.clone(),
                        config.reload_every,
                        (config.encoding_cache_bytes, encodings.clone()),
                        ready_tx,
                    ));
                    let mut worker = typed(d, shared, &config, &histograms);
                    worker.encodings = Some(encodings);
                    Arc::new(worker)
                });
                domains.insert(domain, worker);
                let mut i = info.write().unwrap_or_else(|p| p.into_inner());
                i.domains = vec![domain];
            }
        }
        Worker {
            service: Arc::new(WorkerService {
                domains,
                info,
                histograms,
                tracer: config.tracer.clone(),
            }),
            ready,
            idle_close: config.idle_close,
            tls: config.tls.clone(),
        }
    }
}

fn typed<D: Domain + Copy>(
    domain: D,
    answerer: SharedAnswerer<D>,
    config: &WorkerConfig,
    histograms: &metrics::WorkerHistograms,
) -> Typed<D> {
    Typed {
        domain,
        cache: FactsCache::new(config.facts_cache),
        batcher: Batcher::start_observed(
            answerer,
            config.batch,
            Some(histograms.for_domain(D::KIND)),
            config.tracer.clone(),
        ),
        #[cfg(feature = "model")]
        encodings: None,
    }
}

impl WorkerService {
    /// Registers the worker's metrics in `registry` (see [`metrics`]).
    pub fn register_metrics(
        self: &Arc<Self>,
        registry: &mut prometheus_client::registry::Registry,
    ) {
        metrics::register(registry, std::slice::from_ref(self));
    }

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

    /// Totals of the batchers over all domains since the worker started.
    pub fn batch_totals(&self) -> BatchTotals {
        let mut t = BatchTotals::default();
        for d in self.domains.values() {
            let s = d.stats();
            t.calls += s.calls.load(Ordering::Relaxed);
            t.batches += s.batches.load(Ordering::Relaxed);
            t.questions += s.questions.load(Ordering::Relaxed);
            t.queue_us += s.queue_us_total.load(Ordering::Relaxed);
            t.compute_us += s.compute_us_total.load(Ordering::Relaxed);
            if let Some((hits, misses, ..)) = d.encoding_cache() {
                t.encoding_hits += hits;
                t.encoding_misses += misses;
            }
        }
        t
    }

    pub fn info(&self) -> WorkerInfo {
        self.info.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// What a worker's batchers have done (see [`WorkerService::batch_totals`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchTotals {
    pub calls: u64,
    pub batches: u64,
    pub questions: u64,
    /// Microseconds calls waited for their batch, summed over calls.
    pub queue_us: u64,
    /// Microseconds of answering (forward passes), summed over batches.
    pub compute_us: u64,
    /// Instances whose encoding a model found in its cache, and those it encoded.
    pub encoding_hits: u64,
    pub encoding_misses: u64,
}

impl std::ops::Sub for BatchTotals {
    type Output = BatchTotals;
    fn sub(self, o: BatchTotals) -> BatchTotals {
        BatchTotals {
            calls: self.calls - o.calls,
            batches: self.batches - o.batches,
            questions: self.questions - o.questions,
            queue_us: self.queue_us - o.queue_us,
            compute_us: self.compute_us - o.compute_us,
            encoding_hits: self.encoding_hits - o.encoding_hits,
            encoding_misses: self.encoding_misses - o.encoding_misses,
        }
    }
}

impl std::ops::Add for BatchTotals {
    type Output = BatchTotals;
    fn add(self, o: BatchTotals) -> BatchTotals {
        BatchTotals {
            calls: self.calls + o.calls,
            batches: self.batches + o.batches,
            questions: self.questions + o.questions,
            queue_us: self.queue_us + o.queue_us,
            compute_us: self.compute_us + o.compute_us,
            encoding_hits: self.encoding_hits + o.encoding_hits,
            encoding_misses: self.encoding_misses + o.encoding_misses,
        }
    }
}

#[tonic::async_trait]
impl pb::worker_server::Worker for Arc<WorkerService> {
    async fn answer(
        &self,
        request: Request<pb::AnswerRequest>,
    ) -> Result<Response<pb::AnswerResponse>, Status> {
        use tracing::Instrument;
        let (parent, trees) = telemetry::of_request(&request);
        let mut span = self.tracer.start(
            "hch.Worker/Answer",
            Kind::Server,
            Parent::remote(parent),
            &[],
            || {
                vec![
                    KeyValue::new("rpc.system", "grpc"),
                    KeyValue::new("rpc.service", "hch.Worker"),
                    KeyValue::new("rpc.method", "Answer"),
                    KeyValue::new("hch.tree_ids", trees.clone()),
                ]
            },
        );
        let result = async {
            let call = AnswerCall::decode(request.into_inner())?;
            span.set(|| {
                vec![
                    KeyValue::new("hch.domain", call.domain.name()),
                    KeyValue::new("hch.items", call.len() as i64),
                ]
            });
            let log = tracing::info_span!(
                "worker.answer",
                domain = %call.domain,
                items = call.len(),
                trace_id = %span.context().trace_hex(),
                parent_span = %parent.map(|p| format!("{:016x}", p.span_id)).unwrap_or_default(),
                trees = %trees,
            );
            self.answer_traced(call, Some(span.context()))
                .instrument(log)
                .await
        }
        .await;
        match &result {
            Ok(reply) => {
                span.set(|| self.reply_attributes(reply));
                span.ok();
            }
            Err(e) => span.fail(e.code(), &e.to_string()),
        }
        Ok(Response::new(result?.encode()))
    }

    async fn model_info(
        &self,
        _: Request<pb::ModelInfoRequest>,
    ) -> Result<Response<pb::ModelInfoResponse>, Status> {
        Ok(Response::new(self.info().encode()))
    }
}

impl WorkerService {
    /// Answers one decoded call.
    pub async fn answer_call(&self, call: AnswerCall) -> Result<AnswerReply, ServiceError> {
        self.answer_traced(call, None).await
    }

    /// What a served call's span says of its reply.
    fn reply_attributes(&self, reply: &AnswerReply) -> Vec<KeyValue> {
        match reply {
            AnswerReply::MissingFacts(ids) => {
                vec![KeyValue::new("hch.missing_facts", ids.len() as i64)]
            }
            AnswerReply::Answered { queue, compute, .. } => {
                let mut a = vec![
                    KeyValue::new("hch.queue_seconds", queue.as_secs_f64()),
                    KeyValue::new("hch.compute_seconds", compute.as_secs_f64()),
                ];
                if let Some(g) = self.info().answerer.generation() {
                    a.push(KeyValue::new("hch.generation", g as i64));
                }
                a
            }
        }
    }

    /// [`WorkerService::answer_call`] within the span `trace`.
    async fn answer_traced(
        &self,
        call: AnswerCall,
        trace: Option<TraceContext>,
    ) -> Result<AnswerReply, ServiceError> {
        let worker = self.domains.get(&call.domain).ok_or_else(|| {
            let serves: Vec<&str> = self.info().domains.iter().map(|d| d.name()).collect();
            ServiceError::FailedPrecondition(format!(
                "this worker serves {}, not {}",
                serves.join(", "),
                call.domain
            ))
        })?;
        worker.answer(call, trace).await
    }
}
