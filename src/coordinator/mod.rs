//! The coordinator: evaluates trees for clients, with H running here and every leaf question
//! answered by the worker pool.
//!
//! Per request: the domain, instance, question, mode and budget are validated (INVALID_ARGUMENT
//! with a message on any problem); a slot among `max_trees` concurrent trees is taken (or
//! RESOURCE_EXHAUSTED); the instance is interned, so concurrent trees about the same facts share a
//! memo; the tree's deadline is the least of the budget's and the client's gRPC deadline; the tree
//! runs inside the request's future, so a client that goes away drops the tree, which drops its
//! pending worker calls (cancelling them on the workers). Finished traces are kept (boundedly) for
//! GetTrace.

pub mod pool;
pub mod remote;

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use dashmap::DashMap;
use futures::future::BoxFuture;
use futures::Stream;
use tokio::sync::{mpsc, Semaphore};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::answerer::Answerer;
use crate::domain::{parse_question_for, print_reply, Domain, DomainKind, Instance, InstanceId};
use crate::eval::{Budget, EvalOptions, Evaluator, Mode, NodeEvent, MAX_TREE_DEPTH};
use crate::rpc::trace_context;
use crate::rpc::{exhausted_name, limits, pb, request_timeout, trace_to_pb, ServiceError};
use crate::with_domain;
use pool::Pool;
use remote::{RemoteAnswerer, RemoteConfig, TreeContext, CURRENT_TREE};

/// Coordinator limits and defaults.
#[derive(Clone, Debug)]
pub struct CoordinatorConfig {
    /// Trees evaluated at once; more are refused with RESOURCE_EXHAUSTED.
    pub max_trees: usize,
    /// Budget fields a request leaves unset.
    pub default_budget: Budget,
    /// The largest budget a request may ask for.
    pub max_nodes: u64,
    pub max_deadline: Duration,
    /// Finished traces kept for GetTrace.
    pub traces_kept: usize,
    pub remote: RemoteConfig,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        Self {
            max_trees: 1024,
            default_budget: Budget {
                max_depth: None,
                max_nodes: Some(100_000),
                deadline: Some(Duration::from_secs(30)),
            },
            max_nodes: 10_000_000,
            max_deadline: Duration::from_secs(600),
            traces_kept: 1024,
            remote: RemoteConfig::default(),
        }
    }
}

type EventSender = mpsc::Sender<Result<pb::TreeEvent, Status>>;

/// One domain's evaluator over the pool (type-erased so the service can hold all five).
trait DomainCoordinator: Send + Sync {
    fn ask(
        &self,
        request: pb::AskRequest,
        budget: Budget,
        tree_id: String,
        events: Option<EventSender>,
    ) -> BoxFuture<'_, Result<(pb::AskResponse, Option<StoredTrace>), ServiceError>>;
}

/// A finished tree's trace, kept typed; `render` turns it into its wire form on demand.
struct StoredTrace {
    tree_id: String,
    answerer: String,
    render: Box<dyn Fn() -> pb::Trace + Send + Sync>,
}

struct Typed<D: Domain> {
    domain: D,
    evaluator: Evaluator<D>,
    /// Live instances by content hash: concurrent trees on the same facts share one memo.
    live: DashMap<InstanceId, Weak<Instance<D>>>,
}

impl<D: Domain + Copy> Typed<D> {
    fn intern(&self, instance: Arc<Instance<D>>) -> Arc<Instance<D>> {
        if self.live.len() > 4096 {
            self.live.retain(|_, w| w.strong_count() > 0);
        }
        let mut entry = self.live.entry(instance.id()).or_default();
        match entry.upgrade() {
            Some(existing) => existing,
            None => {
                *entry = Arc::downgrade(&instance);
                instance
            }
        }
    }

    async fn ask_typed(
        &self,
        request: pb::AskRequest,
        budget: Budget,
        tree_id: String,
        events: Option<EventSender>,
    ) -> Result<(pb::AskResponse, Option<StoredTrace>), ServiceError> {
        let d = &self.domain;
        let instance = match request.instance {
            Some(pb::ask_request::Instance::InstanceText(text)) => {
                if text.len() > limits::MAX_FACTS_BYTES {
                    return Err(ServiceError::invalid(format!(
                        "instance text is {} bytes; the limit is {}",
                        text.len(),
                        limits::MAX_FACTS_BYTES
                    )));
                }
                Instance::parse(d, &text)?
            }
            Some(pb::ask_request::Instance::Generated(g)) => {
                Instance::generate(d, g.size as usize, g.seed)?
            }
            None => {
                return Err(ServiceError::invalid(
                    "the request has no instance: set instance_text or generated",
                ))
            }
        };
        let instance = self.intern(instance);
        if request.question.len() > limits::MAX_QUESTION_BYTES {
            return Err(ServiceError::invalid(format!(
                "question is {} bytes; the limit is {}",
                request.question.len(),
                limits::MAX_QUESTION_BYTES
            )));
        }
        let question = parse_question_for(d, instance.facts(), &request.question)?;
        let mode: Mode = if request.mode.is_empty() {
            Mode::Amplified
        } else {
            request
                .mode
                .parse()
                .map_err(ServiceError::InvalidArgument)?
        };

        let (node_tx, forward) = match events {
            Some(events) => {
                let (tx, mut rx) = mpsc::unbounded_channel::<NodeEvent<D>>();
                let domain = *d;
                let forward = async move {
                    while let Some(e) = rx.recv().await {
                        let event = match e {
                            NodeEvent::Opened {
                                id,
                                parent,
                                depth,
                                question,
                            } => pb::tree_event::Event::Opened(pb::NodeOpened {
                                node: id,
                                parent,
                                depth,
                                question: domain.print_question(&question),
                            }),
                            NodeEvent::Answered {
                                id,
                                answer,
                                by,
                                exhausted,
                                elapsed,
                            } => pb::tree_event::Event::Answered(pb::NodeAnswered {
                                node: id,
                                answer: print_reply(&domain, &answer),
                                by: by.name().to_string(),
                                exhausted: exhausted_name(exhausted),
                                elapsed_us: elapsed.as_micros() as u64,
                            }),
                        };
                        if events
                            .send(Ok(pb::TreeEvent { event: Some(event) }))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                };
                (Some(tx), Some(forward))
            }
            None => (None, None),
        };
        let evaluation = self
            .evaluator
            .evaluate_observed(&instance, question, mode, budget, node_tx);
        let result = match forward {
            Some(forward) => {
                let (result, ()) = tokio::join!(evaluation, forward);
                result
            }
            None => evaluation.await,
        }?;
        // Traces are kept typed and rendered to text only when someone asks for one.
        let trace = result.trace.map(|t| {
            let (domain, id, t) = (*d, tree_id.clone(), Arc::new(t));
            StoredTrace {
                tree_id: tree_id.clone(),
                answerer: t.answerer.as_deref().unwrap_or("").to_string(),
                render: Box::new(move || trace_to_pb(&domain, &id, &t)),
            }
        });
        let response = pb::AskResponse {
            answer: print_reply(d, &result.answer),
            known: result.answer.is_some(),
            tree_id,
            instance_id: instance.id().to_string(),
            stats: Some(pb::TreeStats {
                nodes: result.stats.nodes,
                memo_hits: result.stats.memo_hits,
                answerer_queries: result.stats.answerer_queries,
                elapsed_us: result.elapsed.as_micros() as u64,
            }),
            exhausted: exhausted_name(result.exhausted),
            answerer: trace
                .as_ref()
                .map(|t| t.answerer.clone())
                .unwrap_or_default(),
            trace: None,
        };
        Ok((response, trace))
    }
}

impl<D: Domain + Copy> DomainCoordinator for Typed<D> {
    fn ask(
        &self,
        request: pb::AskRequest,
        budget: Budget,
        tree_id: String,
        events: Option<EventSender>,
    ) -> BoxFuture<'_, Result<(pb::AskResponse, Option<StoredTrace>), ServiceError>> {
        Box::pin(self.ask_typed(request, budget, tree_id, events))
    }
}

/// The coordinator's gRPC service.
pub struct CoordinatorService {
    domains: HashMap<DomainKind, Arc<dyn DomainCoordinator>>,
    pool: Arc<Pool>,
    trees: Arc<Semaphore>,
    trees_total: AtomicU64,
    traces: Mutex<VecDeque<StoredTrace>>,
    config: CoordinatorConfig,
}

impl CoordinatorService {
    /// Needs a tokio runtime (each domain starts its coalescing task).
    pub fn new(pool: Arc<Pool>, config: CoordinatorConfig) -> Arc<Self> {
        let mut domains: HashMap<DomainKind, Arc<dyn DomainCoordinator>> = HashMap::new();
        for kind in DomainKind::ALL {
            let typed: Arc<dyn DomainCoordinator> = with_domain!(kind, d => {
                let answerer: Arc<dyn Answerer<_>> =
                    Arc::new(RemoteAnswerer::new(d, pool.clone(), config.remote));
                Arc::new(Typed {
                    domain: d,
                    evaluator: Evaluator::new(d, Some(answerer), EvalOptions::default()),
                    live: DashMap::new(),
                })
            });
            domains.insert(kind, typed);
        }
        Arc::new(Self {
            domains,
            pool,
            trees: Arc::new(Semaphore::new(config.max_trees.max(1))),
            trees_total: AtomicU64::new(0),
            traces: Mutex::new(VecDeque::new()),
            config,
        })
    }

    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// The request's budget: its fields, else the defaults, bounded by the limits and the gRPC
    /// deadline of the call.
    fn budget(
        &self,
        request: &pb::AskRequest,
        client_timeout: Option<Duration>,
    ) -> Result<Budget, ServiceError> {
        let wire = request.budget.unwrap_or_default();
        let defaults = self.config.default_budget;
        if let Some(d) = wire.max_depth.filter(|&d| d > MAX_TREE_DEPTH) {
            return Err(ServiceError::invalid(format!(
                "budget max_depth {d} exceeds the maximum {MAX_TREE_DEPTH}"
            )));
        }
        if let Some(n) = wire
            .max_nodes
            .filter(|&n| n > self.config.max_nodes || n == 0)
        {
            return Err(ServiceError::invalid(format!(
                "budget max_nodes {n} is out of range 1..={}",
                self.config.max_nodes
            )));
        }
        let deadline = wire.deadline_ms.map(Duration::from_millis);
        if let Some(d) = deadline.filter(|&d| d > self.config.max_deadline || d.is_zero()) {
            return Err(ServiceError::invalid(format!(
                "budget deadline {} ms is out of range 1..={} ms",
                d.as_millis(),
                self.config.max_deadline.as_millis()
            )));
        }
        let deadline = [deadline.or(defaults.deadline), client_timeout]
            .into_iter()
            .flatten()
            .min();
        Ok(Budget {
            max_depth: wire.max_depth.or(defaults.max_depth),
            max_nodes: wire.max_nodes.or(defaults.max_nodes),
            deadline,
        })
    }

    async fn run(
        &self,
        request: pb::AskRequest,
        client_timeout: Option<Duration>,
        events: Option<EventSender>,
        parent: Option<(u128, u64)>,
    ) -> Result<pb::AskResponse, ServiceError> {
        let kind: DomainKind = request.domain.parse()?;
        let budget = self.budget(&request, client_timeout)?;
        let _slot = self.trees.clone().try_acquire_owned().map_err(|_| {
            ServiceError::ResourceExhausted(format!(
                "the coordinator is evaluating its maximum of {} trees: retry later",
                self.config.max_trees
            ))
        })?;
        let n = self.trees_total.fetch_add(1, Ordering::Relaxed);
        let tree_id = format!("t{n}-{:08x}", rand_suffix(n));
        let want_trace = request.want_trace;
        // The client's trace continues here if it sent one; otherwise the tree starts a trace.
        let trace_id = parent.map_or_else(trace_context::fresh_id, |(t, _)| t);
        let span = tracing::info_span!(
            "tree",
            tree = %tree_id,
            domain = %kind,
            trace_id = %format_args!("{trace_id:032x}")
        );
        let context = TreeContext {
            tree_id: Arc::from(tree_id.as_str()),
            trace_id,
        };
        let (mut response, trace) = CURRENT_TREE
            .scope(
                context,
                self.domains[&kind]
                    .ask(request, budget, tree_id, events)
                    .instrument(span),
            )
            .await?;
        if let Some(trace) = trace {
            if want_trace {
                response.trace = Some((trace.render)());
            }
            let mut traces = self.traces.lock().unwrap_or_else(|p| p.into_inner());
            traces.push_back(trace);
            while traces.len() > self.config.traces_kept {
                traces.pop_front();
            }
        }
        Ok(response)
    }
}

fn rand_suffix(n: u64) -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    ((t ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15)) >> 16) as u32
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::TreeEvent, Status>> + Send>>;

#[tonic::async_trait]
impl pb::coordinator_server::Coordinator for Arc<CoordinatorService> {
    async fn ask(
        &self,
        request: Request<pb::AskRequest>,
    ) -> Result<Response<pb::AskResponse>, Status> {
        let timeout = request_timeout(&request);
        let (parent, _) = trace_context::of_request(&request);
        Ok(Response::new(
            self.run(request.into_inner(), timeout, None, parent)
                .await?,
        ))
    }

    type AskStreamStream = EventStream;

    async fn ask_stream(
        &self,
        request: Request<pb::AskRequest>,
    ) -> Result<Response<Self::AskStreamStream>, Status> {
        let timeout = request_timeout(&request);
        let (parent, _) = trace_context::of_request(&request);
        let request = request.into_inner();
        // Validate before streaming, so bad requests get a status rather than a broken stream.
        request
            .domain
            .parse::<DomainKind>()
            .map_err(ServiceError::from)?;
        self.budget(&request, timeout)?;
        let (tx, rx) = mpsc::channel(256);
        let service = self.clone();
        tokio::spawn(async move {
            let events = tx.clone();
            // The tree lives as long as the client listens: when the stream is dropped, `closed`
            // fires and the tree future (and its worker calls) are dropped.
            tokio::select! {
                result = service.run(request, timeout, Some(events), parent) => {
                    let message = result
                        .map(|r| pb::TreeEvent { event: Some(pb::tree_event::Event::Done(r)) })
                        .map_err(Status::from);
                    let _ = tx.send(message).await;
                }
                _ = tx.closed() => {}
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn get_trace(
        &self,
        request: Request<pb::GetTraceRequest>,
    ) -> Result<Response<pb::Trace>, Status> {
        let id = request.into_inner().tree_id;
        let traces = self.traces.lock().unwrap_or_else(|p| p.into_inner());
        traces
            .iter()
            .rev()
            .find(|t| t.tree_id == id)
            .map(|t| Response::new((t.render)()))
            .ok_or_else(|| {
                ServiceError::NotFound(format!(
                    "no stored trace for tree {id:?} (the last {} are kept)",
                    self.config.traces_kept
                ))
                .into()
            })
    }

    async fn status(
        &self,
        _: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        Ok(Response::new(pb::StatusResponse {
            workers: self.pool.status(),
            trees_in_flight: (self.config.max_trees - self.trees.available_permits()) as u32,
            max_trees: self.config.max_trees as u32,
            trees_total: self.trees_total.load(Ordering::Relaxed),
        }))
    }
}
