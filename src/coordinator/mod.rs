//! The coordinator: evaluates trees for clients, with H running here and every leaf question
//! answered by the worker pool.
//!
//! Per request: the request is decoded (`rpc::coordinator`: the domain, instance, question, mode
//! and budget are checked, INVALID_ARGUMENT with a message on any problem); a slot among
//! `max_trees` concurrent trees is taken (or RESOURCE_EXHAUSTED); the domain's evaluator runs the
//! tree, sharing one memo table among concurrent trees about the same facts; the tree's deadline is the least of the budget's and the client's gRPC deadline; the tree
//! runs inside the request's future, so a client that goes away drops the tree, which drops its
//! pending worker calls (cancelling them on the workers). Finished traces are kept (boundedly) for
//! GetTrace.

pub mod auth;
pub mod limit;
pub mod metrics;
pub mod peers;
pub mod pool;
pub mod remote;
mod traces;
mod tree;
pub mod viewer;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::sync::{mpsc, Semaphore};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::answerer::Answerer;
use crate::domain::DomainKind;
use crate::eval::trace::{Exhausted, TraceView};
use crate::eval::{Budget, EvalOptions, Evaluator};
use crate::otel::{KeyValue, Kind, Parent};
use crate::rpc::coordinator::{
    AskLimits, AskQuery, AskReply, CoordinatorStatus, TraceRequest, TreeEvent,
};
use crate::rpc::telemetry::{self, TraceContext};
use crate::rpc::{pb, request_timeout, ServiceError};
use crate::with_domain;
use auth::{ClientName, Right, Tokens};
use pool::Pool;
use remote::{RemoteAnswerer, RemoteConfig, TreeTelemetry, CURRENT_TREE};
use traces::TraceStore;
use tree::{DomainCoordinator, EventSender, Typed};

/// Coordinator limits and defaults.
#[derive(Clone, Debug)]
pub struct CoordinatorConfig {
    /// Trees evaluated at once; more are refused with RESOURCE_EXHAUSTED.
    pub max_trees: usize,
    /// Budget fields a request leaves unset.
    pub default_budget: Budget,
    /// The largest budget a request may ask for.
    pub limits: AskLimits,
    /// The largest gRPC message a client may send or be sent.
    pub max_message_bytes: usize,
    /// Finished traces kept for GetTrace: at most this many, holding at most `trace_bytes` of
    /// memory together (the oldest go first; a trace larger than that alone is not kept).
    pub traces_kept: usize,
    pub trace_bytes: usize,
    /// Events an AskStream buffers for its client, and how long a full buffer may wait for the
    /// client to read before the stream is cut off (RESOURCE_EXHAUSTED) and its tree stopped.
    pub stream_buffer: usize,
    pub stream_stall: Duration,
    pub remote: RemoteConfig,
    /// Client tokens (see [`auth`]); `None` lets every caller in as one anonymous client.
    pub tokens: Option<Arc<Tokens>>,
    /// Trees one client may have in flight at once (a client is its token's name, or without
    /// tokens its connection): no single client can take every slot.
    pub max_trees_per_client: usize,
    /// Trees one client may start per second on average (token bucket), in bursts of at most
    /// `tree_burst_per_client`; `None`: no rate limit (trees in flight are still capped).
    pub tree_rate_per_client: Option<f64>,
    pub tree_burst_per_client: u32,
    /// A client connection without traffic for this long is closed (at least a second longer
    /// than `limits.max_deadline`, since a unary tree is silent until it ends).
    pub idle_close: Duration,
    /// How long before a call's gRPC deadline a tree bound by it stops (at most a tenth of the
    /// deadline), so that the coordinator, not tonic's timer, ends the call and says why. A
    /// loaded coordinator needs more: its reply must reach the client within the margin.
    pub call_deadline_margin: Duration,
    /// TLS for the coordinator's listener: its certificate, and optionally a CA whose client
    /// certificates it accepts. `None`: plain TCP.
    pub tls: Option<Arc<crate::tls::ServerTls>>,
    /// Where the spans of trees and worker calls go (see [`crate::otel`]); off by default.
    pub tracer: crate::otel::Tracer,
    /// The tree viewer's records (see [`viewer`]), served on the admin port; `None`: off.
    pub viewer: Option<viewer::ViewerConfig>,
    /// The other replicas behind the same Service, asked for a trace this one does not hold
    /// (see [`peers`]); `None`: a single replica.
    pub peers: Option<peers::PeerConfig>,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        Self {
            max_trees: 1024,
            max_trees_per_client: 512,
            tree_rate_per_client: None,
            tree_burst_per_client: 1,
            default_budget: Budget {
                max_depth: None,
                max_nodes: Some(100_000),
                deadline: Some(Duration::from_secs(30)),
            },
            limits: AskLimits::default(),
            max_message_bytes: crate::rpc::limits::MAX_MESSAGE_BYTES,
            traces_kept: 1024,
            trace_bytes: 64 << 20,
            stream_buffer: 256,
            stream_stall: Duration::from_secs(10),
            remote: RemoteConfig::default(),
            tokens: None,
            idle_close: Duration::from_secs(660),
            call_deadline_margin: CALL_DEADLINE_MARGIN,
            tls: None,
            tracer: crate::otel::Tracer::off(),
            viewer: None,
            peers: None,
        }
    }
}

/// The default [`CoordinatorConfig::call_deadline_margin`].
pub const CALL_DEADLINE_MARGIN: Duration = Duration::from_millis(20);

/// The coordinator's gRPC service.
pub struct CoordinatorService {
    domains: HashMap<DomainKind, Arc<dyn DomainCoordinator>>,
    pool: Arc<Pool>,
    trees: Arc<Semaphore>,
    trees_total: AtomicU64,
    traces: Mutex<TraceStore>,
    /// Each client's trees in flight and rate.
    per_client: limit::PerClient,
    config: CoordinatorConfig,
    metrics: metrics::TreeMetrics,
    viewer: Option<Arc<viewer::Viewer>>,
}

/// A tree to run, as a call asked for it.
struct TreeCall {
    /// Who asked (the token's name), and whom the tree counts against for the per-client caps.
    client: ClientName,
    key: limit::ClientKey,
    query: AskQuery,
    /// The gRPC deadline of the call, if it has one.
    client_timeout: Option<Duration>,
    /// Where an AskStream's events go.
    events: Option<EventSender>,
    /// The caller's trace context, if it sent one.
    parent: Option<TraceContext>,
    /// The RPC method (`Ask`, `AskStream`), for the tree's span.
    method: &'static str,
}

impl CoordinatorService {
    /// Needs a tokio runtime (each domain starts its coalescing task).
    pub fn new(pool: Arc<Pool>, config: CoordinatorConfig) -> Arc<Self> {
        let mut domains: HashMap<DomainKind, Arc<dyn DomainCoordinator>> = HashMap::new();
        for kind in DomainKind::ALL {
            let typed: Arc<dyn DomainCoordinator> = with_domain!(kind, d => {
                let answerer: Arc<dyn Answerer<_>> = Arc::new(RemoteAnswerer::new(
                    d,
                    pool.clone(),
                    config.remote,
                    config.tracer.clone(),
                ));
                Arc::new(Typed {
                    domain: d,
                    viewer_events: config.viewer.unwrap_or_default().events_per_tree,
                    evaluator: Evaluator::new(d, Some(answerer), EvalOptions::default()),
                })
            });
            domains.insert(kind, typed);
        }
        Arc::new(Self {
            domains,
            pool,
            trees: Arc::new(Semaphore::new(config.max_trees.max(1))),
            trees_total: AtomicU64::new(0),
            traces: Mutex::new(TraceStore::default()),
            per_client: limit::PerClient::new(
                config.max_trees_per_client,
                config
                    .tree_rate_per_client
                    .filter(|r| *r > 0.0)
                    .map(|r| limit::RateLimiter::new(r, config.tree_burst_per_client)),
            ),
            metrics: metrics::TreeMetrics::default(),
            viewer: config.viewer.map(|c| Arc::new(viewer::Viewer::new(c))),
            config,
        })
    }

    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// Registers the coordinator's metrics in `registry` (see [`metrics`]).
    pub fn register_metrics(
        self: &Arc<Self>,
        registry: &mut prometheus_client::registry::Registry,
    ) {
        let service = Arc::downgrade(self);
        let max = self.config.max_trees.max(1);
        let in_flight = Arc::new(move || {
            let busy = service
                .upgrade()
                .map_or(0, |s| max - s.trees.available_permits());
            (busy, max)
        });
        metrics::register(registry, &self.metrics, &self.pool, in_flight);
    }

    /// The tree viewer's records, if the viewer is on.
    pub fn viewer(&self) -> Option<Arc<viewer::Viewer>> {
        self.viewer.clone()
    }

    /// The listener's TLS configuration, if any.
    pub fn tls(&self) -> Option<Arc<crate::tls::ServerTls>> {
        self.config.tls.clone()
    }

    /// The largest gRPC message a client may send or be sent.
    pub fn max_message_bytes(&self) -> usize {
        self.config.max_message_bytes
    }

    /// How long a client connection may stay silent: the setting, or a second more than the
    /// longest deadline a client may ask for if that is longer (a tree ends at its deadline).
    pub fn idle_close(&self) -> Duration {
        self.config
            .idle_close
            .max(self.config.limits.max_deadline + Duration::from_secs(1))
    }

    /// The tree's budget: the request's fields, else the defaults, bounded by the gRPC deadline
    /// of the call; and whether that deadline is the one that binds. (The decoder has checked the
    /// request's fields against the limits.)
    ///
    /// The tree stops a little before the call's deadline (`call_deadline_margin`): tonic's own
    /// timer would otherwise end the call first, as CANCELLED, and the tree's work would be lost
    /// without a word. Stopping first, the coordinator reports DEADLINE_EXCEEDED itself.
    fn budget(&self, query: &AskQuery, client_timeout: Option<Duration>) -> (Budget, bool) {
        let defaults = self.config.default_budget;
        let own = query.budget.deadline.or(defaults.deadline);
        let call =
            client_timeout.map(|t| t.saturating_sub(self.config.call_deadline_margin.min(t / 10)));
        let call_binds = match (own, call) {
            (Some(own), Some(call)) => call < own,
            (None, Some(_)) => true,
            (_, None) => false,
        };
        let budget = Budget {
            max_depth: query.budget.max_depth.or(defaults.max_depth),
            max_nodes: query.budget.max_nodes.or(defaults.max_nodes),
            deadline: if call_binds { call } else { own },
        };
        (budget, call_binds)
    }

    /// The client `request` comes from, if it may do `right`.
    fn authorize<T>(&self, request: &Request<T>, right: Right) -> Result<ClientName, ServiceError> {
        match &self.config.tokens {
            None => Ok(None),
            Some(tokens) => tokens.authorize(request.metadata(), right).map(Some),
        }
    }

    /// Runs a tree (see [`CoordinatorService::run_tree`]) and records it in the metrics and in
    /// its span, the root of the tree's trace (or a child of the client's span).
    async fn run(&self, call: TreeCall) -> Result<AskReply, ServiceError> {
        let (kind, mode) = (call.query.domain, call.query.mode.to_string());
        let domain = kind.name();
        let mut span = self.config.tracer.start(
            "hch.tree",
            Kind::Server,
            Parent::remote(call.parent),
            &[],
            || {
                let mut a = vec![
                    KeyValue::new("rpc.system", "grpc"),
                    KeyValue::new("rpc.service", "hch.Coordinator"),
                    KeyValue::new("rpc.method", call.method),
                    KeyValue::new("hch.domain", domain),
                    KeyValue::new("hch.mode", mode.clone()),
                ];
                if let Some(client) = &call.client {
                    a.push(KeyValue::new("hch.client", client.to_string()));
                }
                a
            },
        );
        let started = std::time::Instant::now();
        let result = self.run_tree(call, span.context()).await;
        match &result {
            Ok(reply) => {
                span.set(|| tree_attributes(reply));
                span.ok();
            }
            Err(e) => span.fail(e.code(), &e.to_string()),
        }
        drop(span);
        let outcome = match &result {
            Ok(reply) if reply.known => "answered",
            Ok(_) => "unknown",
            Err(e) => crate::metrics::code_label(e.code()),
        };
        self.metrics
            .trees
            .get_or_create(&metrics::TreeLabels {
                domain: domain.to_string(),
                mode,
                outcome: outcome.to_string(),
            })
            .inc();
        if let Ok(reply) = &result {
            let (stats, m) = (&reply.stats, self.metrics.of(kind));
            m.duration.observe(started.elapsed().as_secs_f64());
            m.nodes.observe(stats.nodes as f64);
            m.nodes_evaluated.inc_by(stats.nodes);
            m.memo_hits.inc_by(stats.memo_hits);
            m.answerer_queries.inc_by(stats.answerer_queries);
        }
        result
    }

    /// Admits and evaluates one tree (see [`CoordinatorService::run`], which records it), in the
    /// trace context of its span, `context`.
    async fn run_tree(
        &self,
        call: TreeCall,
        context: TraceContext,
    ) -> Result<AskReply, ServiceError> {
        let TreeCall {
            client,
            key,
            query,
            client_timeout,
            events,
            ..
        } = call;
        let (budget, call_deadline) = self.budget(&query, client_timeout);
        let _client_slot = self.per_client.slot(key)?;
        let _slot = self.trees.clone().try_acquire_owned().map_err(|_| {
            ServiceError::ResourceExhausted(format!(
                "the coordinator is evaluating its maximum of {} trees: retry later",
                self.config.max_trees
            ))
        })?;
        self.trees_total.fetch_add(1, Ordering::Relaxed);
        let tree_id = fresh_tree_id()?;
        let (kind, want_trace) = (query.domain, query.want_trace);
        let live = self.viewer.as_ref().map(|v| {
            v.open(viewer::TreeStart {
                tree_id: tree_id.clone(),
                domain: kind,
                mode: query.mode.to_string(),
                question: query.question.clone(),
                client: client.as_deref().map(str::to_string),
                trace_id: context.trace_hex(),
                answerer: self.pool.answerer_id(kind).label().to_string(),
            })
        });
        let span = tracing::info_span!(
            "tree",
            tree = %tree_id,
            domain = %kind,
            trace_id = %context.trace_hex()
        );
        let context = TreeTelemetry {
            tree_id: Arc::from(tree_id.as_str()),
            context,
        };
        let result = CURRENT_TREE
            .scope(
                context,
                self.domains[&kind]
                    .ask(query, budget, tree_id, events, live.clone())
                    .instrument(span),
            )
            .await;
        if let Some(record) = &live {
            record.finish(result.as_ref().map(|(reply, _)| reply));
        }
        let (mut reply, trace) = result?;
        // The tree's own deadline degrades its answer (an unknown, reported as such); the call's
        // deadline means the client has stopped waiting: that is the call's status.
        if call_deadline && reply.exhausted == Some(Exhausted::Deadline) {
            return Err(ServiceError::DeadlineExceeded(format!(
                "the call's deadline ({:?}) ran out before the tree finished ({} nodes \
                 evaluated): allow more time, or ask for a smaller tree",
                client_timeout.unwrap_or_default(),
                reply.stats.nodes
            )));
        }
        if let Some(mut trace) = trace {
            trace.owner = client;
            if want_trace {
                reply.trace = Some((trace.render)());
            }
            let (count, bytes) = (self.config.traces_kept, self.config.trace_bytes);
            let mut traces = self.traces.lock().unwrap_or_else(|p| p.into_inner());
            if !traces.keep(trace, count, bytes) {
                tracing::debug!(
                    tree = %reply.tree_id,
                    "trace not kept: larger than the {bytes} bytes kept for traces"
                );
            }
        }
        Ok(reply)
    }

    /// The coordinator's status: its workers and its load.
    pub fn status(&self) -> CoordinatorStatus {
        CoordinatorStatus {
            workers: self.pool.status(),
            trees_in_flight: (self.config.max_trees - self.trees.available_permits()) as u32,
            max_trees: self.config.max_trees as u32,
            trees_total: self.trees_total.load(Ordering::Relaxed),
        }
    }

    /// The stored trace of tree `id`, in text, if `client` asked for that tree. Another client's
    /// tree is reported as not found, like one that never existed.
    pub fn trace(&self, id: &str, client: &ClientName) -> Result<TraceView, ServiceError> {
        let traces = self.traces.lock().unwrap_or_else(|p| p.into_inner());
        traces
            .find(id, client)
            .map(|t| (t.render)())
            .ok_or_else(|| {
                ServiceError::NotFound(format!(
                    "no stored trace for tree {id:?} (the newest {} traces, up to {} MiB, are \
                     kept)",
                    self.config.traces_kept,
                    self.config.trace_bytes >> 20
                ))
            })
    }
}

/// What a finished tree's span says about it: what a person filters traces on.
fn tree_attributes(reply: &AskReply) -> Vec<KeyValue> {
    let stats = &reply.stats;
    let mut a = vec![
        KeyValue::new("hch.tree_id", reply.tree_id.clone()),
        KeyValue::new("hch.instance_id", reply.instance_id.clone()),
        KeyValue::new("hch.known", reply.known),
        KeyValue::new("hch.nodes", stats.nodes as i64),
        KeyValue::new("hch.memo_hits", stats.memo_hits as i64),
        KeyValue::new("hch.subquestions_sent", stats.answerer_queries as i64),
    ];
    if let Some(e) = reply.exhausted {
        a.push(KeyValue::new("hch.exhausted", e.name()));
    }
    if let Some(answerer) = &reply.answerer {
        a.push(KeyValue::new("hch.answerer", answerer.clone()));
    }
    if let Some(g) = reply.generation {
        a.push(KeyValue::new("hch.generation", g as i64));
    }
    a
}

/// A tree id: 128 bits from the operating system's random source, so that no client can find
/// another's trees (and read their traces) from its own ids. The bytes are drawn for 32 ids at a
/// time per thread, one system call per 32 trees rather than per tree; each is used once.
fn fresh_tree_id() -> Result<String, ServiceError> {
    const ID: usize = 16;
    const DRAW: usize = 32 * ID;
    thread_local! {
        /// Drawn bytes, and how many of them are used.
        static DRAWN: std::cell::RefCell<([u8; DRAW], usize)> =
            const { std::cell::RefCell::new(([0; DRAW], DRAW)) };
    }
    DRAWN.with_borrow_mut(|(bytes, used)| {
        if *used == DRAW {
            getrandom::fill(bytes).map_err(|e| {
                ServiceError::Internal(format!("no randomness for a tree id from the system: {e}"))
            })?;
            *used = 0;
        }
        let id = &bytes[*used..*used + ID];
        *used += ID;
        Ok(format!("t{}", hex::encode(id)))
    })
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::TreeEvent, Status>> + Send>>;

#[tonic::async_trait]
impl pb::coordinator_server::Coordinator for Arc<CoordinatorService> {
    async fn ask(
        &self,
        request: Request<pb::AskRequest>,
    ) -> Result<Response<pb::AskResponse>, Status> {
        let client = self.authorize(&request, Right::Ask)?;
        let key = limit::client_key(&client, &request);
        self.per_client.admit(&key).inspect_err(|_| {
            self.metrics.rate_limited.inc();
        })?;
        let timeout = request_timeout(&request);
        let (parent, _) = telemetry::of_request(&request);
        let query = AskQuery::decode(request.into_inner(), &self.config.limits)?;
        let reply = self
            .run(TreeCall {
                client,
                key,
                query,
                client_timeout: timeout,
                events: None,
                parent,
                method: "Ask",
            })
            .await?;
        Ok(Response::new(reply.encode()))
    }

    type AskStreamStream = EventStream;

    async fn ask_stream(
        &self,
        request: Request<pb::AskRequest>,
    ) -> Result<Response<Self::AskStreamStream>, Status> {
        let client = self.authorize(&request, Right::Ask)?;
        let key = limit::client_key(&client, &request);
        self.per_client.admit(&key).inspect_err(|_| {
            self.metrics.rate_limited.inc();
        })?;
        let timeout = request_timeout(&request);
        let (parent, _) = telemetry::of_request(&request);
        // Decoded before streaming, so bad requests get a status rather than a broken stream.
        let query = AskQuery::decode(request.into_inner(), &self.config.limits)?;
        let (tx, rx) = mpsc::channel(self.config.stream_buffer.max(1));
        // The last word of a stream that was cut off, delivered after the events it holds.
        let (cut_tx, cut_rx) = tokio::sync::oneshot::channel::<Status>();
        let service = self.clone();
        let events = EventSender {
            tx: tx.clone(),
            stall: self.config.stream_stall,
        };
        tokio::spawn(async move {
            // The tree lives as long as the client listens: when the stream is dropped, `closed`
            // fires and the tree future (and its worker calls) are dropped.
            tokio::select! {
                result = service.run(TreeCall {
                    client,
                    key,
                    query,
                    client_timeout: timeout,
                    events: Some(events.clone()),
                    parent,
                    method: "AskStream",
                }) => {
                    let sent = match result {
                        Ok(reply) => events.send(Ok(TreeEvent::Done(Box::new(reply)).encode())).await,
                        Err(e) => Err(e),
                    };
                    if let Err(e) = sent {
                        let _ = cut_tx.send(e.into());
                    }
                }
                _ = tx.closed() => {}
            }
        });
        let last =
            futures::stream::once(cut_rx).filter_map(|cut| std::future::ready(cut.ok().map(Err)));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx).chain(last),
        )))
    }

    async fn get_trace(
        &self,
        request: Request<pb::GetTraceRequest>,
    ) -> Result<Response<pb::Trace>, Status> {
        let client = self.authorize(&request, Right::Ask)?;
        let forwarded = request.metadata().contains_key(peers::FORWARDED);
        let metadata = request.metadata().clone();
        let request = TraceRequest::decode(request.into_inner())?;
        match (self.trace(&request.tree_id, &client), &self.config.peers) {
            (Ok(trace), _) => Ok(Response::new(trace.encode())),
            // Another replica may have evaluated it (a forwarded call is answered from here only).
            (Err(ServiceError::NotFound(_)), Some(peers)) if !forwarded => Ok(Response::new(
                peers.find_trace(&request.tree_id, &metadata).await?,
            )),
            (Err(e), _) => Err(e.into()),
        }
    }

    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        self.authorize(&request, Right::Status)?;
        Ok(Response::new(CoordinatorService::status(self).encode()))
    }
}

#[cfg(test)]
mod tests {
    use super::fresh_tree_id;

    #[test]
    fn tree_ids_are_fresh_across_draws_and_threads() {
        let draw = |n| (0..n).map(|_| fresh_tree_id().unwrap()).collect::<Vec<_>>();
        // Several draws of 32 on each of two threads.
        let other = std::thread::spawn(move || draw(100));
        let mut ids = draw(100);
        ids.extend(other.join().unwrap());
        for id in &ids {
            assert_eq!(id.len(), 33, "{id}");
            assert!(id.starts_with('t') && id[1..].bytes().all(|b| b.is_ascii_hexdigit()));
        }
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 200, "an id was handed out twice");
    }
}
