//! The pool of workers behind the [`Answerer`] interface.
//!
//! Each tree hands its leaf questions over a wave at a time (see `eval`), as one group; the groups
//! of every tree of a domain go into one queue. A coalescing task takes the first group, waits for
//! a free call slot on the least busy worker (while it waits, more groups pile up), then takes
//! whole groups queued (up to a maximum batch of questions) and sends them as one call. Each group
//! gets its answers back through one channel, so a tree is woken once per call that answers it.
//! Facts go to a worker once; afterwards only their hash, and a worker that lost them says so and
//! gets the text again. A failed or overloaded worker's batch is retried on another one. When every
//! tree waiting on a batch has gone away (the client cancelled, or a deadline passed), the call is
//! dropped, which cancels it on the worker too.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};

use super::pool::{Pool, WorkerHandle};
use crate::answerer::{AnswerError, Answerer, AnswererId, Answers, Query};
use crate::domain::{parse_reply, Domain};
use crate::otel::{KeyValue, Kind, Parent, Tracer};
use crate::rpc::telemetry::{self, TraceContext};
use crate::rpc::worker::{AnswerCall, AnswerReply};
use crate::rpc::{limits, ServiceError};

/// Settings of the remote answerer.
#[derive(Clone, Copy, Debug)]
pub struct RemoteConfig {
    /// Most questions in one call to a worker.
    pub max_batch: usize,
    /// Attempts per batch (on different workers where possible).
    pub attempts: usize,
    /// Longest a single call may take. A call that takes longer (a frozen or partitioned worker)
    /// is given up and re-sent to another worker; the worker is avoided for a while. A worker
    /// holds at most `PoolConfig::max_in_flight_per_worker` calls of one coordinator (about a
    /// second of queue for the tiny model on two cores at full load), so this is well above what
    /// a live worker takes.
    pub call_timeout: Duration,
}

impl Default for RemoteConfig {
    fn default() -> Self {
        Self {
            max_batch: 1024,
            attempts: 3,
            call_timeout: Duration::from_secs(5),
        }
    }
}

/// The tree a leaf question comes from, for telemetry: set by the coordinator around each tree's
/// evaluation, carried to the workers in each call's metadata.
#[derive(Clone, Debug)]
pub struct TreeTelemetry {
    pub tree_id: Arc<str>,
    /// The tree's span: its worker calls are its children.
    pub context: TraceContext,
}

tokio::task_local! {
    /// The tree being evaluated in this task (read when a leaf question is queued).
    pub static CURRENT_TREE: TreeTelemetry;
}

/// Questions of one tree that travel together, and where their answers go.
struct Pending<D: Domain> {
    tree: Option<TreeTelemetry>,
    queries: Vec<Query<D>>,
    reply: oneshot::Sender<Answers<D::Answer>>,
}

pub struct RemoteAnswerer<D: Domain> {
    pool: Arc<Pool>,
    queue: mpsc::UnboundedSender<Pending<D>>,
    max_batch: usize,
}

impl<D: Domain + Copy> RemoteAnswerer<D> {
    /// Starts the coalescing task on the current tokio runtime; it ends with the answerer. Each
    /// call attempt is a span of `tracer`.
    pub fn new(domain: D, pool: Arc<Pool>, config: RemoteConfig, tracer: Tracer) -> Self {
        let (queue, rx) = mpsc::unbounded_channel();
        let max_batch = config.max_batch.clamp(1, limits::MAX_BATCH_ITEMS);
        tokio::spawn(coalesce(
            domain,
            pool.clone(),
            rx,
            config,
            max_batch,
            tracer,
        ));
        Self {
            pool,
            queue,
            max_batch,
        }
    }
}

impl<D: Domain + Copy> Answerer<D> for RemoteAnswerer<D> {
    fn id(&self) -> AnswererId {
        self.pool.answerer_id(D::KIND)
    }

    fn answer(&self, mut batch: Vec<Query<D>>) -> BoxFuture<'_, Answers<D::Answer>> {
        let tree = CURRENT_TREE.try_with(|t| t.clone()).ok();
        // A group never spans calls: larger batches are split into groups of at most `max_batch`.
        let mut receivers = Vec::with_capacity(batch.len().div_ceil(self.max_batch));
        while !batch.is_empty() {
            let rest = batch.split_off(batch.len().min(self.max_batch));
            let (reply, rx) = oneshot::channel();
            let _ = self.queue.send(Pending {
                tree: tree.clone(),
                queries: std::mem::replace(&mut batch, rest),
                reply,
            });
            receivers.push(rx);
        }
        Box::pin(async move {
            let closed =
                || AnswerError::Unavailable("the coordinator's worker queue closed".to_string());
            // Usually one group: its answers are the batch's, without a copy.
            let mut answers: Option<Vec<_>> = None;
            for rx in receivers {
                let group = rx.await.map_err(|_| closed())??;
                match &mut answers {
                    None => answers = Some(group),
                    Some(all) => all.extend(group),
                }
            }
            Ok(answers.unwrap_or_default())
        })
    }
}

async fn coalesce<D: Domain + Copy>(
    domain: D,
    pool: Arc<Pool>,
    mut rx: mpsc::UnboundedReceiver<Pending<D>>,
    config: RemoteConfig,
    max_batch: usize,
    tracer: Tracer,
) {
    // A group that did not fit in the previous call opens the next one.
    let mut carried: Option<Pending<D>> = None;
    loop {
        let first = match carried.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        let mut size = first.queries.len();
        let mut batch = vec![first];
        let Some(worker) = pool.pick(D::KIND, &[]) else {
            while let Ok(p) = rx.try_recv() {
                batch.push(p);
            }
            fail(
                batch,
                AnswerError::Unavailable(format!("no healthy worker serves domain {}", D::KIND)),
            );
            continue;
        };
        // While this waits for a free slot, more groups queue up and join the batch.
        let slot = worker.slot().await;
        while size < max_batch {
            match rx.try_recv() {
                Ok(p) if size + p.queries.len() > max_batch => {
                    carried = Some(p);
                    break;
                }
                Ok(p) => {
                    size += p.queries.len();
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        batch.retain(|p| !p.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        tokio::spawn(send(
            domain,
            pool.clone(),
            worker,
            slot,
            batch,
            config,
            tracer.clone(),
        ));
    }
}

fn fail<D: Domain>(batch: Vec<Pending<D>>, error: AnswerError) {
    for p in batch {
        let _ = p.reply.send(Err(error.clone()));
    }
}

/// Resolves once every tree waiting on `batch` has gone away.
async fn abandoned<D: Domain>(batch: &mut [Pending<D>]) {
    futures::future::join_all(batch.iter_mut().map(|p| p.reply.closed())).await;
}

#[tracing::instrument(skip_all, fields(domain = %D::KIND, items = batch.len()))]
async fn send<D: Domain + Copy>(
    domain: D,
    pool: Arc<Pool>,
    mut worker: Arc<WorkerHandle>,
    mut slot: OwnedSemaphorePermit,
    mut batch: Vec<Pending<D>>,
    config: RemoteConfig,
    tracer: Tracer,
) {
    let (parent, links) = parents(&batch);
    let mut tried: Vec<String> = Vec::new();
    let mut last_error = AnswerError::Unavailable("no attempt made".to_string());
    let mut attempt = 0;
    while attempt < config.attempts.max(1) {
        attempt += 1;
        let queries = batch.iter().flat_map(|p| &p.queries);
        let asked = batch.iter().map(|p| p.queries.len()).sum();
        let message = AnswerCall::of_queries(&domain, queries, |id| worker.knows(id)).encode();
        let mut call = tonic::Request::new(message);
        call.set_timeout(config.call_timeout);
        let mut span = tracer.start("hch.Worker/Answer", Kind::Client, parent, &links, || {
            vec![
                KeyValue::new("rpc.system", "grpc"),
                KeyValue::new("rpc.service", "hch.Worker"),
                KeyValue::new("rpc.method", "Answer"),
                KeyValue::new("server.address", worker.address.clone()),
                KeyValue::new("hch.domain", D::KIND.name()),
                KeyValue::new("hch.items", asked as i64),
                KeyValue::new("hch.trees", batch.len() as i64),
                KeyValue::new("hch.attempt", attempt as i64),
            ]
        });
        attach_telemetry(&mut call, &batch, &span.context());
        let mut client = worker.client();
        let started = std::time::Instant::now();
        let outcome = tokio::select! {
            r = tokio::time::timeout(config.call_timeout, client.answer(call)) => {
                r.unwrap_or_else(|_| Err(tonic::Status::unavailable(format!(
                    "worker {} did not answer within {:?}: re-sending the batch elsewhere",
                    worker.address, config.call_timeout
                ))))
            }
            _ = abandoned(&mut batch) => {
                tracing::debug!(worker = %worker.address, "batch abandoned by its trees: call cancelled");
                span.fail(tonic::Code::Cancelled, "every tree waiting on the call went away");
                return;
            }
        };
        let reply = outcome
            .map_err(|status| {
                // A status made by the transport (the connection broke: the worker died mid-call)
                // carries its cause; one the worker sent does not. The former is the worker's
                // loss, not the batch's fault, whatever its code.
                let transport = std::error::Error::source(&status).is_some();
                match ServiceError::from(status) {
                    ServiceError::Internal(m) if transport => ServiceError::Unavailable(m),
                    // The worker gave up on the call's deadline: as slow as a frozen one, and
                    // the batch may well be answered elsewhere.
                    ServiceError::DeadlineExceeded(m) => ServiceError::Unavailable(m),
                    other => other,
                }
            })
            .and_then(|r| AnswerReply::decode(r.into_inner(), asked));
        let status = match &reply {
            Ok(AnswerReply::MissingFacts(_)) => "missing_facts",
            Ok(AnswerReply::Answered { .. }) => "ok",
            Err(e) => crate::metrics::code_label(e.code()),
        };
        match &reply {
            Ok(_) => {
                span.set(|| vec![KeyValue::new("hch.outcome", status)]);
                span.ok();
            }
            Err(e) => span.fail(e.code(), &e.to_string()),
        }
        drop(span);
        pool.metrics()
            .observe(&worker.address, status, started.elapsed().as_secs_f64());
        match reply {
            Ok(AnswerReply::MissingFacts(ids)) => {
                for id in &ids {
                    worker.forget(id);
                }
                continue;
            }
            Ok(AnswerReply::Answered { answers, .. }) => {
                worker.items_sent.fetch_add(asked as u64, Ordering::Relaxed);
                let mut remembered = None;
                for query in batch.iter().flat_map(|p| &p.queries) {
                    let id = query.instance.id();
                    if remembered != Some(id) {
                        worker.remember(id);
                        remembered = Some(id);
                    }
                }
                deliver(&domain, batch, &answers);
                return;
            }
            Err(error) => {
                tracing::debug!(worker = %worker.address, %error, "worker call failed");
                last_error = error.clone().into();
                if !error.is_retryable() {
                    break;
                }
                worker.mark_down(pool.config().down_for);
                tried.push(worker.address.clone());
                drop(slot);
                let Some(next) = pool
                    .pick(D::KIND, &tried)
                    .or_else(|| pool.pick(D::KIND, &[]))
                else {
                    break;
                };
                worker = next;
                pool.metrics().retries.inc();
                slot = worker.slot().await;
            }
        }
    }
    fail(batch, last_error);
}

/// Where a call of `batch` hangs in the traces: under its first sampled tree (or its first
/// tree), linked to the other trees it serves (a call is a fan-in of trees).
fn parents<D: Domain>(batch: &[Pending<D>]) -> (Parent, Vec<TraceContext>) {
    let mut trees = batch
        .iter()
        .filter_map(|p| p.tree.as_ref().map(|t| t.context));
    let Some(first) = trees.clone().find(|c| c.sampled).or_else(|| trees.next()) else {
        return (Parent::Root, Vec::new());
    };
    let mut links: Vec<TraceContext> = batch
        .iter()
        .filter_map(|p| p.tree.as_ref().map(|t| t.context))
        .filter(|c| c.sampled && *c != first)
        .take(crate::otel::MAX_LINKS)
        .collect();
    links.dedup();
    (Parent::Local(first), links)
}

/// Carries the call's trace context and the ids of the trees it serves to the worker (see
/// `rpc::telemetry`).
fn attach_telemetry<D: Domain, T>(
    call: &mut tonic::Request<T>,
    batch: &[Pending<D>],
    context: &TraceContext,
) {
    let mut trees: Vec<&str> = batch
        .iter()
        .filter_map(|p| p.tree.as_ref().map(|t| &*t.tree_id))
        .collect();
    trees.sort_unstable();
    trees.dedup();
    telemetry::attach(call, context);
    let md = call.metadata_mut();
    // At most 32 tree ids: enough to find a tree's calls, bounded in size.
    let listed = trees.iter().take(32).copied().collect::<Vec<_>>().join(",");
    if let Ok(v) = listed.parse() {
        md.insert(telemetry::TREES, v);
    }
}

/// Hands each group its answers: `answers` is the reply's text, a line per question, in order
/// (as many as asked: checked by its decoder).
fn deliver<D: Domain>(domain: &D, batch: Vec<Pending<D>>, answers: &str) {
    let mut lines = answers.split_terminator('\n');
    for p in batch {
        // An unreadable answer fails its group only; the other trees get theirs.
        let answers: Answers<D::Answer> = lines
            .by_ref()
            .take(p.queries.len())
            .map(|text| {
                parse_reply(domain, text).map_err(|e| {
                    AnswerError::Internal(format!("worker sent an unreadable answer: {e}"))
                })
            })
            .collect();
        let _ = p.reply.send(answers);
    }
}
