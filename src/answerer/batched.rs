//! Dynamic batching, as a layer over any [`Answerer`]: calls from many callers (a worker's RPCs
//! from many coordinators and trees, the trainer's concurrent trees) are queued and answered
//! together, up to a maximum batch size, waiting at most a maximum time for a batch to fill.
//!
//! The queue is bounded; when it is full, a call is refused at once with
//! [`AnswerError::Overloaded`] rather than queued without limit (a worker reports it as
//! RESOURCE_EXHAUSTED, and the coordinator retries on another worker). Calls whose caller has
//! gone away (the RPC was cancelled) are dropped from a batch before it is computed. The answerer
//! is read afresh for every batch, so a newly loaded generation takes over between batches while
//! batches in flight finish on the one they started with.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::{AnswerError, Answerer, AnswererId, Answers, Query};
use crate::domain::Domain;
use crate::otel::{KeyValue, Kind, Parent, Tracer};
use crate::rpc::telemetry::TraceContext;

/// Batching limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchConfig {
    /// Most questions in one forward pass (a single larger call is still answered whole).
    pub max_batch: usize,
    /// Longest a batch waits to fill once its first call arrived. Zero (the default) sends a batch
    /// as soon as the answerer is free: calls that arrive while it computes form the next batch,
    /// so under load batches are full anyway, and the coordinator has already merged each call's
    /// questions from many trees. A wait only buys fuller batches at moderate load, for latency.
    pub max_wait: Duration,
    /// Calls that may wait in the queue.
    pub queue_capacity: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_batch: 512,
            max_wait: Duration::ZERO,
            queue_capacity: 1024,
        }
    }
}

/// What a call gets back.
pub struct Answered<A> {
    pub answers: Vec<Option<A>>,
    pub queue: Duration,
    pub compute: Duration,
}

struct Job<D: Domain> {
    /// Moved into the batch when it runs; `len` keeps the count.
    queries: Vec<Query<D>>,
    len: usize,
    reply: oneshot::Sender<Result<Answered<D::Answer>, AnswerError>>,
    enqueued: Instant,
    /// The caller's span (a worker call), the parent of the batch's span.
    trace: Option<TraceContext>,
}

/// Where a batcher records its distributions (a worker's metrics; see `worker::metrics`).
#[derive(Clone, Debug)]
pub struct BatchHistograms {
    pub queue_seconds: prometheus_client::metrics::histogram::Histogram,
    pub batch_size: prometheus_client::metrics::histogram::Histogram,
    pub compute_seconds: prometheus_client::metrics::histogram::Histogram,
}

/// Counters, for status, metrics and tests.
#[derive(Default, Debug)]
pub struct BatchStats {
    /// Calls submitted (one per RPC).
    pub calls: AtomicU64,
    pub batches: AtomicU64,
    pub questions: AtomicU64,
    /// Calls dropped because their caller had gone away before their batch ran.
    pub cancelled_calls: AtomicU64,
    pub refused_calls: AtomicU64,
    pub queue_us_total: AtomicU64,
    pub compute_us_total: AtomicU64,
    /// Distributions, when someone exports them.
    pub histograms: Option<BatchHistograms>,
}

/// The answerer currently served; swapped whole when a new generation loads.
pub type SharedAnswerer<D> = Arc<RwLock<Arc<dyn Answerer<D>>>>;

pub struct Batcher<D: Domain> {
    tx: mpsc::Sender<Job<D>>,
    pub stats: Arc<BatchStats>,
    config: BatchConfig,
}

impl<D: Domain> Batcher<D> {
    /// Starts the batching task on the current tokio runtime. It ends when the batcher is dropped.
    pub fn start(answerer: SharedAnswerer<D>, config: BatchConfig) -> Self {
        Self::start_observed(answerer, config, None, Tracer::off())
    }

    /// Like [`Batcher::start`], recording queue times, batch sizes and compute times into
    /// `histograms`, and each batch that serves a sampled call as a span of `tracer`.
    pub fn start_observed(
        answerer: SharedAnswerer<D>,
        config: BatchConfig,
        histograms: Option<BatchHistograms>,
        tracer: Tracer,
    ) -> Self {
        let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
        let stats = Arc::new(BatchStats {
            histograms,
            ..BatchStats::default()
        });
        tokio::spawn(run(rx, answerer, config, stats.clone(), tracer));
        Self { tx, stats, config }
    }

    pub fn config(&self) -> BatchConfig {
        self.config
    }

    /// Calls waiting in the queue.
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Queues `queries` and waits for their answers.
    pub async fn submit(&self, queries: Vec<Query<D>>) -> Result<Answered<D::Answer>, AnswerError> {
        self.submit_traced(queries, None).await
    }

    /// [`Batcher::submit`] from within the span `trace` (a worker call), which the batch's span
    /// then hangs under (or links to).
    pub async fn submit_traced(
        &self,
        queries: Vec<Query<D>>,
        trace: Option<TraceContext>,
    ) -> Result<Answered<D::Answer>, AnswerError> {
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        let (reply, answer) = oneshot::channel();
        let job = Job {
            len: queries.len(),
            queries,
            reply,
            enqueued: Instant::now(),
            trace,
        };
        self.tx.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                self.stats.refused_calls.fetch_add(1, Ordering::Relaxed);
                AnswerError::Overloaded(format!(
                    "the batching queue is full ({} calls waiting): retry elsewhere or later",
                    self.config.queue_capacity
                ))
            }
            mpsc::error::TrySendError::Closed(_) => shutting_down(),
        })?;
        answer.await.map_err(|_| shutting_down())?
    }
}

fn shutting_down() -> AnswerError {
    AnswerError::Unavailable("the batcher is shutting down".to_string())
}

async fn run<D: Domain>(
    mut rx: mpsc::Receiver<Job<D>>,
    answerer: SharedAnswerer<D>,
    config: BatchConfig,
    stats: Arc<BatchStats>,
    tracer: Tracer,
) {
    while let Some(first) = rx.recv().await {
        let mut size = first.queries.len();
        let mut jobs = vec![first];
        let fill_until = Instant::now() + config.max_wait;
        while size < config.max_batch {
            let next = match rx.try_recv() {
                Ok(job) => Some(job),
                Err(mpsc::error::TryRecvError::Empty) if !config.max_wait.is_zero() => {
                    // Past `fill_until` the batch goes as it is.
                    tokio::time::timeout_at(fill_until, rx.recv())
                        .await
                        .ok()
                        .flatten()
                }
                Err(_) => None,
            };
            match next {
                Some(job) => {
                    size += job.queries.len();
                    jobs.push(job);
                }
                None => break,
            }
        }
        let before = jobs.len();
        jobs.retain(|j| !j.reply.is_closed());
        stats
            .cancelled_calls
            .fetch_add((before - jobs.len()) as u64, Ordering::Relaxed);
        if jobs.is_empty() {
            continue;
        }
        let current = answerer.read().unwrap_or_else(|p| p.into_inner()).clone();
        let mut queries: Vec<Query<D>> = Vec::with_capacity(jobs.iter().map(|j| j.len).sum());
        for job in &mut jobs {
            queries.append(&mut job.queries);
        }
        let asked = queries.len();
        let started = Instant::now();
        let span = tracer
            .is_on()
            .then(|| batch_span(&tracer, &jobs, &*current, asked, started));
        let result = current.answer(queries).await;
        let compute = started.elapsed();
        drop(span);
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats.questions.fetch_add(asked as u64, Ordering::Relaxed);
        stats
            .compute_us_total
            .fetch_add(compute.as_micros() as u64, Ordering::Relaxed);
        if let Some(h) = &stats.histograms {
            h.batch_size.observe(asked as f64);
            h.compute_seconds.observe(compute.as_secs_f64());
        }
        match result {
            Ok(answers) if answers.len() == asked => {
                let mut answers = answers.into_iter();
                for job in jobs {
                    let queue = started - job.enqueued;
                    stats
                        .queue_us_total
                        .fetch_add(queue.as_micros() as u64, Ordering::Relaxed);
                    if let Some(h) = &stats.histograms {
                        h.queue_seconds.observe(queue.as_secs_f64());
                    }
                    let mine: Vec<_> = answers.by_ref().take(job.len).collect();
                    let _ = job.reply.send(Ok(Answered {
                        answers: mine,
                        queue,
                        compute,
                    }));
                }
            }
            Ok(answers) => {
                let e = AnswerError::Internal(format!(
                    "answerer returned {} answers for {asked} questions",
                    answers.len(),
                ));
                for job in jobs {
                    let _ = job.reply.send(Err(e.clone()));
                }
            }
            Err(e) => {
                for job in jobs {
                    let _ = job.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// The span of a batch that serves at least one sampled call: a child of the first such call,
/// linked to the others (a batch is a fan-in of calls). `None` when no call is sampled.
fn batch_span<D: Domain>(
    tracer: &Tracer,
    jobs: &[Job<D>],
    answerer: &dyn Answerer<D>,
    asked: usize,
    started: Instant,
) -> Option<crate::otel::Span> {
    let mut sampled = jobs.iter().filter_map(|j| j.trace).filter(|c| c.sampled);
    let first = sampled.next()?;
    let links: Vec<TraceContext> = sampled.take(crate::otel::MAX_LINKS).collect();
    let longest_wait = jobs
        .iter()
        .map(|j| started.saturating_duration_since(j.enqueued))
        .max()
        .unwrap_or_default();
    Some(tracer.start(
        "hch.batch",
        Kind::Internal,
        Parent::Local(first),
        &links,
        || {
            let id = answerer.id();
            let mut a = vec![
                KeyValue::new("hch.domain", D::KIND.name()),
                KeyValue::new("hch.batch_size", asked as i64),
                KeyValue::new("hch.calls", jobs.len() as i64),
                KeyValue::new("hch.queue_seconds", longest_wait.as_secs_f64()),
                KeyValue::new("hch.answerer", id.label().to_string()),
            ];
            if let Some(g) = id.generation() {
                a.push(KeyValue::new("hch.generation", g as i64));
            }
            a
        },
    ))
}

/// A [`Batcher`] behind the [`Answerer`] interface, for in-process use: the trees of a local
/// evaluation (the trainer's amplification and held-out evaluation) share forward passes the way
/// a worker's callers do.
pub struct BatchedAnswerer<D: Domain> {
    answerer: SharedAnswerer<D>,
    batcher: Batcher<D>,
}

impl<D: Domain> BatchedAnswerer<D> {
    /// Starts a batcher over `answerer` on the current tokio runtime.
    pub fn start(answerer: Arc<dyn Answerer<D>>, config: BatchConfig) -> Self {
        let answerer: SharedAnswerer<D> = Arc::new(RwLock::new(answerer));
        Self {
            batcher: Batcher::start(answerer.clone(), config),
            answerer,
        }
    }

    /// Replaces the answerer between batches (a newly promoted generation).
    pub fn replace(&self, answerer: Arc<dyn Answerer<D>>) {
        *self.answerer.write().unwrap_or_else(|p| p.into_inner()) = answerer;
    }

    pub fn stats(&self) -> &BatchStats {
        &self.batcher.stats
    }
}

impl<D: Domain> Answerer<D> for BatchedAnswerer<D> {
    fn id(&self) -> AnswererId {
        self.answerer.read().unwrap_or_else(|p| p.into_inner()).id()
    }

    fn answer(&self, batch: Vec<Query<D>>) -> futures::future::BoxFuture<'_, Answers<D::Answer>> {
        Box::pin(async move { Ok(self.batcher.submit(batch).await?.answers) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::wildcard::Wildcard;
    use crate::domain::{Domain, Instance};

    /// Fails every batch with an internal error.
    struct Broken;

    impl Answerer<Wildcard> for Broken {
        fn id(&self) -> AnswererId {
            AnswererId::custom(5, "broken")
        }

        fn answer(
            &self,
            _: Vec<Query<Wildcard>>,
        ) -> futures::future::BoxFuture<'_, Answers<<Wildcard as Domain>::Answer>> {
            Box::pin(std::future::ready(Err(AnswerError::Internal(
                "the model produced NaN".into(),
            ))))
        }
    }

    fn query() -> Query<Wildcard> {
        Query {
            instance: Instance::generate(&Wildcard, 6, 1).unwrap(),
            question: Wildcard.parse_question("0*****").unwrap(),
        }
    }

    /// The layer passes its answerer's error through as it is: an internal failure stays internal
    /// (a worker then reports INTERNAL, not UNAVAILABLE), and the identity is the answerer's.
    #[tokio::test]
    async fn errors_keep_their_kind_through_the_layer() {
        let batched = BatchedAnswerer::start(Arc::new(Broken), BatchConfig::default());
        assert_eq!(batched.id(), AnswererId::custom(5, "broken"));
        let error = batched.answer(vec![query()]).await.unwrap_err();
        assert_eq!(
            error,
            AnswerError::Internal("the model produced NaN".into())
        );
        let status: tonic::Status = crate::rpc::ServiceError::from(error).into();
        assert_eq!(status.code(), tonic::Code::Internal);
    }

    /// A full queue refuses at once with Overloaded (RESOURCE_EXHAUSTED on the wire).
    #[tokio::test(start_paused = true)]
    async fn a_full_queue_refuses_with_overloaded() {
        let slow: Arc<dyn Answerer<Wildcard>> = Arc::new(super::super::Oracle::with_delay(
            Wildcard,
            Duration::from_secs(60),
        ));
        let config = BatchConfig {
            max_batch: 1,
            max_wait: Duration::ZERO,
            queue_capacity: 1,
        };
        let batcher = Batcher::start(Arc::new(RwLock::new(slow)), config);
        // The first call is taken into a batch (the oracle then sleeps), the second waits in the
        // queue, the third finds it full.
        let first = batcher.submit(vec![query()]);
        let second = batcher.submit(vec![query()]);
        tokio::pin!(first, second);
        assert!(futures::poll!(&mut first).is_pending());
        tokio::task::yield_now().await;
        assert!(futures::poll!(&mut second).is_pending());
        match batcher.submit(vec![query()]).await {
            Err(AnswerError::Overloaded(m)) => assert!(m.contains("queue is full"), "{m}"),
            Err(e) => panic!("expected Overloaded, got {e}"),
            Ok(_) => panic!("expected Overloaded, got answers"),
        }
        assert_eq!(batcher.stats.refused_calls.load(Ordering::Relaxed), 1);
    }
}
