//! One tree of one domain: the evaluator over the worker pool, and the tree's node events sent
//! on as they happen, to an AskStream client (as text, through a bounded buffer) and to the
//! viewer (typed). The service in `mod.rs` admits the tree and records it; this holds what
//! differs by domain, type-erased behind [`DomainCoordinator`] so the service holds all five.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tonic::Status;

use super::traces::StoredTrace;
use super::viewer;
use crate::domain::{print_reply, Domain};
use crate::eval::trace::TraceNode;
use crate::eval::{Budget, Evaluator, NodeEvent};
use crate::rpc::coordinator::{AskQuery, AskReply, TreeEvent};
use crate::rpc::{pb, ServiceError};

/// Where a streamed tree's events go: the response stream's bounded buffer. A client that stops
/// reading is cut off after `stall` with the buffer full, and its tree stopped; its events are
/// not buffered without end, and its tree does not keep its slot.
#[derive(Clone)]
pub(super) struct EventSender {
    pub(super) tx: mpsc::Sender<Result<pb::TreeEvent, Status>>,
    pub(super) stall: Duration,
}

impl EventSender {
    pub(super) async fn send(
        &self,
        event: Result<pb::TreeEvent, Status>,
    ) -> Result<(), ServiceError> {
        use mpsc::error::SendTimeoutError;
        self.tx
            .send_timeout(event, self.stall)
            .await
            .map_err(|e| match e {
                SendTimeoutError::Timeout(_) => ServiceError::ResourceExhausted(format!(
                    "the client read nothing of its stream for {:?} with {} events waiting: the \
                     tree was stopped",
                    self.stall,
                    self.tx.max_capacity()
                )),
                SendTimeoutError::Closed(_) => {
                    ServiceError::Cancelled("the client closed its stream".to_string())
                }
            })
    }
}

/// One domain's evaluator over the pool (type-erased so the service can hold all five).
pub(super) trait DomainCoordinator: Send + Sync {
    fn ask(
        &self,
        query: AskQuery,
        budget: Budget,
        tree_id: String,
        events: Option<EventSender>,
        live: Option<Arc<viewer::Record>>,
    ) -> BoxFuture<'_, Result<(AskReply, Option<StoredTrace>), ServiceError>>;
}

pub(super) struct Typed<D: Domain> {
    pub(super) domain: D,
    /// Node events the viewer keeps per tree.
    pub(super) viewer_events: usize,
    /// Keeps a memo table per instance while trees on it run, so concurrent trees about the same
    /// facts share one memo.
    pub(super) evaluator: Evaluator<D>,
}

impl<D: Domain + Copy> Typed<D> {
    async fn ask_typed(
        &self,
        query: AskQuery,
        budget: Budget,
        tree_id: String,
        events: Option<EventSender>,
        live: Option<Arc<viewer::Record>>,
    ) -> Result<(AskReply, Option<StoredTrace>), ServiceError> {
        let d = &self.domain;
        let instance = query.instance(d)?;
        let question = query.question(d, instance.facts())?;

        // The viewer records the node events typed; a stream sends them as text.
        let log = live.map(|record| {
            let log = Arc::new(viewer::TypedLog::new(*d, self.viewer_events));
            record.attach(instance.id().to_string(), log.clone());
            log
        });
        let (node_tx, forward) = if events.is_some() || log.is_some() {
            let (tx, mut rx) = mpsc::unbounded_channel::<NodeEvent<D>>();
            let domain = *d;
            let forward = async move {
                while let Some(e) = rx.recv().await {
                    if let Some(log) = &log {
                        log.push(&e);
                    }
                    if let Some(events) = &events {
                        events.send(Ok(tree_event(&domain, e).encode())).await?;
                    }
                }
                Ok::<(), ServiceError>(())
            };
            (Some(tx), Some(forward))
        } else {
            (None, None)
        };
        let evaluation = self
            .evaluator
            .evaluate_observed(&instance, question, query.mode, budget, node_tx);
        let result = match forward {
            // A stream cut off (or closed) stops the tree: the evaluation is dropped.
            Some(forward) => {
                let evaluation = async { evaluation.await.map_err(ServiceError::from) };
                let (result, ()) = tokio::try_join!(evaluation, forward)?;
                result
            }
            None => evaluation.await?,
        };
        let answerer = result.trace.as_ref().and_then(|t| t.answerer.clone());
        // Traces are kept typed and rendered to text only when someone asks for one.
        let trace = result.trace.map(|t| {
            let (domain, id, t) = (*d, tree_id.clone(), Arc::new(t));
            let bytes = std::mem::size_of::<StoredTrace>()
                + 2 * tree_id.len()
                + t.nodes.capacity() * std::mem::size_of::<TraceNode<D>>();
            StoredTrace {
                tree_id: tree_id.clone(),
                owner: None,
                bytes,
                render: Box::new(move || t.view(&domain, &id)),
            }
        });
        let reply = AskReply {
            answer: print_reply(d, &result.answer),
            known: result.answer.is_some(),
            tree_id,
            instance_id: instance.id().to_string(),
            stats: result.stats,
            elapsed: result.elapsed,
            exhausted: result.exhausted,
            answerer: answerer.as_ref().map(|a| a.label().to_string()),
            generation: answerer.as_ref().and_then(|a| a.generation()),
            trace: None,
        };
        Ok((reply, trace))
    }
}

impl<D: Domain + Copy> DomainCoordinator for Typed<D> {
    fn ask(
        &self,
        query: AskQuery,
        budget: Budget,
        tree_id: String,
        events: Option<EventSender>,
        live: Option<Arc<viewer::Record>>,
    ) -> BoxFuture<'_, Result<(AskReply, Option<StoredTrace>), ServiceError>> {
        Box::pin(self.ask_typed(query, budget, tree_id, events, live))
    }
}

/// A node event as an AskStream client receives it.
pub(super) fn tree_event<D: Domain>(domain: &D, event: NodeEvent<D>) -> TreeEvent {
    match event {
        NodeEvent::Opened {
            id,
            parent,
            depth,
            question,
        } => TreeEvent::Opened {
            node: id,
            parent,
            depth,
            question: domain.print_question(&question),
        },
        NodeEvent::Answered {
            id,
            answer,
            by,
            exhausted,
            elapsed,
        } => TreeEvent::Answered {
            node: id,
            answer: print_reply(domain, &answer),
            by,
            exhausted,
            elapsed,
        },
    }
}
