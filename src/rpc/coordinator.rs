//! The Coordinator service's messages, as library types with their wire conversions side by side:
//! every message a client or the coordinator sends has an `encode` (library type to wire) and a
//! `decode` (wire to library type) next to each other, and a round-trip test below.
//!
//! Decoders are where requests are checked: the domain is known, the mode parses, the instance and
//! question fit their size limits, the budget lies within the bounds of [`Budget::check`] and the
//! operator's [`AskLimits`]. Anything else gets INVALID_ARGUMENT with a message naming the field.
//! The typed parse of an instance and question (which needs the domain's type) is here too
//! ([`AskQuery::instance`], [`AskQuery::question`]), so a handler reads: decode, do the work,
//! encode. Responses decoded on the client side are the server's word: a malformed one is INTERNAL.

use std::sync::Arc;
use std::time::Duration;

use super::{limits, pb, ServiceError};
use crate::domain::{self, Domain, DomainKind, Instance};
use crate::eval::trace::{AnsweredBy, Exhausted, NodeId, NodeView, TraceView};
use crate::eval::{Budget, Mode, TreeStats};

/// The operator's maximums for one tree (the coordinator's configuration).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AskLimits {
    /// The deepest tree a request may ask for, as `hch:D` or as a depth budget. Each level is a
    /// nested future on the coordinator's stack: the evaluator's own bound ([`crate::eval::MAX_TREE_DEPTH`])
    /// is for in-process use; a server keeps well below it (a release build handles 1024, a
    /// debug build overflows a 2 MiB worker stack near 512).
    pub max_depth: u32,
    /// The largest node budget a request may ask for.
    pub max_nodes: u64,
    /// The longest deadline a request may ask for.
    pub max_deadline: Duration,
    /// The longest instance text a request may carry, in bytes (a full-size instance is under
    /// 2 KiB; lower it to refuse padded requests early).
    pub max_instance_bytes: usize,
}

impl Default for AskLimits {
    fn default() -> Self {
        Self {
            max_depth: 256,
            max_nodes: 10_000_000,
            max_deadline: Duration::from_secs(600),
            max_instance_bytes: limits::MAX_FACTS_BYTES,
        }
    }
}

/// Where the instance of a question comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InstanceSpec {
    /// Facts in the domain's text syntax.
    Text(String),
    /// An instance generated from a size and a seed.
    Generated { size: u32, seed: u64 },
}

/// One question for a tree, as a client poses it.
#[derive(Clone, Debug, PartialEq)]
pub struct AskQuery {
    pub domain: DomainKind,
    pub instance: InstanceSpec,
    /// The question in the domain's text syntax.
    pub question: String,
    pub mode: Mode,
    /// Budget fields as the client set them; the coordinator fills the rest from its defaults.
    pub budget: Budget,
    pub want_trace: bool,
}

impl AskQuery {
    pub fn encode(self) -> pb::AskRequest {
        pb::AskRequest {
            domain: self.domain.name().to_string(),
            instance: Some(match self.instance {
                InstanceSpec::Text(text) => pb::ask_request::Instance::InstanceText(text),
                InstanceSpec::Generated { size, seed } => {
                    pb::ask_request::Instance::Generated(pb::GeneratedInstance { size, seed })
                }
            }),
            question: self.question,
            mode: self.mode.to_string(),
            budget: Some(pb::Budget {
                max_depth: self.budget.max_depth,
                max_nodes: self.budget.max_nodes,
                deadline_ms: self.budget.deadline.map(|d| d.as_millis() as u64),
            }),
            want_trace: self.want_trace,
        }
    }

    pub fn decode(request: pb::AskRequest, limits: &AskLimits) -> Result<Self, ServiceError> {
        let domain: DomainKind = request.domain.parse()?;
        let instance = match request.instance {
            Some(pb::ask_request::Instance::InstanceText(text)) => {
                limits::check_bytes("instance text", &text, limits.max_instance_bytes)?;
                InstanceSpec::Text(text)
            }
            Some(pb::ask_request::Instance::Generated(g)) => {
                domain::check_size_for(domain, g.size as usize)?;
                InstanceSpec::Generated {
                    size: g.size,
                    seed: g.seed,
                }
            }
            None => {
                return Err(ServiceError::invalid(
                    "the request has no instance: set instance_text or generated",
                ))
            }
        };
        limits::check_bytes("question", &request.question, limits::MAX_QUESTION_BYTES)?;
        let mode = if request.mode.is_empty() {
            Mode::Amplified
        } else {
            request
                .mode
                .parse()
                .map_err(ServiceError::InvalidArgument)?
        };
        let wire = request.budget.unwrap_or_default();
        let budget = Budget {
            max_depth: wire.max_depth,
            max_nodes: wire.max_nodes,
            deadline: wire.deadline_ms.map(Duration::from_millis),
        };
        budget
            .check()
            .map_err(|e| ServiceError::invalid(e.to_string()))?;
        let depth = match mode {
            Mode::Hch(d) => Some(("mode hch:D", d)),
            _ => None,
        };
        let depths = depth
            .into_iter()
            .chain(budget.max_depth.map(|d| ("budget max_depth", d)));
        for (what, d) in depths {
            if d > limits.max_depth {
                return Err(ServiceError::invalid(format!(
                    "{what} {d} is deeper than this coordinator allows ({})",
                    limits.max_depth
                )));
            }
        }
        if let Some(n) = budget.max_nodes.filter(|&n| n > limits.max_nodes) {
            return Err(ServiceError::invalid(format!(
                "budget max_nodes {n} is out of range 1..={}",
                limits.max_nodes
            )));
        }
        if let Some(d) = budget.deadline.filter(|&d| d > limits.max_deadline) {
            return Err(ServiceError::invalid(format!(
                "budget deadline {} ms is out of range 1..={} ms",
                d.as_millis(),
                limits.max_deadline.as_millis()
            )));
        }
        Ok(Self {
            domain,
            instance,
            question: request.question,
            mode,
            budget,
            want_trace: request.want_trace,
        })
    }

    /// The instance, parsed or generated (`domain` must be the query's).
    pub fn instance<D: Domain>(&self, domain: &D) -> Result<Arc<Instance<D>>, ServiceError> {
        debug_assert_eq!(D::KIND, self.domain);
        Ok(match &self.instance {
            InstanceSpec::Text(text) => Instance::parse(domain, text)?,
            InstanceSpec::Generated { size, seed } => {
                Instance::generate(domain, *size as usize, *seed)?
            }
        })
    }

    /// The question, parsed and checked against `facts`.
    pub fn question<D: Domain>(
        &self,
        domain: &D,
        facts: &D::Facts,
    ) -> Result<D::Question, ServiceError> {
        Ok(domain::parse_question_for(domain, facts, &self.question)?)
    }
}

/// A response the server sent that this client cannot read.
fn malformed(what: &str) -> ServiceError {
    ServiceError::Internal(format!("the coordinator sent a malformed {what}"))
}

fn encode_exhausted(e: Option<Exhausted>) -> String {
    e.map(|e| e.name().to_string()).unwrap_or_default()
}

fn decode_exhausted(name: &str) -> Result<Option<Exhausted>, ServiceError> {
    if name.is_empty() {
        return Ok(None);
    }
    Exhausted::from_name(name)
        .map(Some)
        .ok_or_else(|| malformed("exhausted budget name"))
}

/// The outcome of one tree.
#[derive(Clone, Debug, PartialEq)]
pub struct AskReply {
    /// The answer in the domain's text syntax, `?` when unknown.
    pub answer: String,
    pub known: bool,
    pub tree_id: String,
    /// SHA-256 (hex) of the instance's canonical text.
    pub instance_id: String,
    pub stats: TreeStats,
    pub elapsed: Duration,
    /// The first budget or failure that degraded the tree.
    pub exhausted: Option<Exhausted>,
    /// Who answered the leaves ("oracle", "model g3"), if anyone.
    pub answerer: Option<String>,
    /// The model generation that answered the leaves, when a model did.
    pub generation: Option<u64>,
    pub trace: Option<TraceView>,
}

impl AskReply {
    pub fn encode(self) -> pb::AskResponse {
        pb::AskResponse {
            answer: self.answer,
            known: self.known,
            tree_id: self.tree_id,
            instance_id: self.instance_id,
            stats: Some(pb::TreeStats {
                nodes: self.stats.nodes,
                memo_hits: self.stats.memo_hits,
                answerer_queries: self.stats.answerer_queries,
                elapsed_us: self.elapsed.as_micros() as u64,
            }),
            exhausted: encode_exhausted(self.exhausted),
            answerer: self.answerer.unwrap_or_default(),
            trace: self.trace.map(TraceView::encode),
            generation: self.generation,
        }
    }

    pub fn decode(response: pb::AskResponse) -> Result<Self, ServiceError> {
        let stats = response
            .stats
            .ok_or_else(|| malformed("answer (no stats)"))?;
        Ok(Self {
            answer: response.answer,
            known: response.known,
            tree_id: response.tree_id,
            instance_id: response.instance_id,
            stats: TreeStats {
                nodes: stats.nodes,
                memo_hits: stats.memo_hits,
                answerer_queries: stats.answerer_queries,
            },
            elapsed: Duration::from_micros(stats.elapsed_us),
            exhausted: decode_exhausted(&response.exhausted)?,
            answerer: Some(response.answerer).filter(|a| !a.is_empty()),
            generation: response.generation,
            trace: response.trace.map(TraceView::decode).transpose()?,
        })
    }
}

impl TraceView {
    pub fn encode(self) -> pb::Trace {
        pb::Trace {
            tree_id: self.tree_id,
            domain: self.domain.name().to_string(),
            answerer: self.answerer.unwrap_or_default(),
            generation: self.generation,
            nodes: self
                .nodes
                .into_iter()
                .map(|n| pb::TraceNode {
                    id: n.id,
                    parent: n.parent,
                    depth: n.depth,
                    question: n.question,
                    answer: n.answer,
                    by: n.by.name().to_string(),
                    exhausted: encode_exhausted(n.exhausted),
                    start_us: n.start.as_micros() as u64,
                    end_us: n.end.as_micros() as u64,
                })
                .collect(),
        }
    }

    pub fn decode(trace: pb::Trace) -> Result<Self, ServiceError> {
        let nodes = trace
            .nodes
            .into_iter()
            .map(|n| {
                Ok(NodeView {
                    id: n.id,
                    parent: n.parent,
                    depth: n.depth,
                    question: n.question,
                    answer: n.answer,
                    by: AnsweredBy::from_name(&n.by)
                        .ok_or_else(|| malformed("trace node (answered by)"))?,
                    exhausted: decode_exhausted(&n.exhausted)?,
                    start: Duration::from_micros(n.start_us),
                    end: Duration::from_micros(n.end_us),
                })
            })
            .collect::<Result<_, ServiceError>>()?;
        Ok(Self {
            tree_id: trace.tree_id,
            domain: trace
                .domain
                .parse()
                .map_err(|_| malformed("trace domain"))?,
            answerer: Some(trace.answerer).filter(|a| !a.is_empty()),
            generation: trace.generation,
            nodes,
        })
    }
}

/// What AskStream sends: nodes as they open and are answered, then the outcome.
#[derive(Clone, Debug, PartialEq)]
pub enum TreeEvent {
    Opened {
        node: NodeId,
        parent: Option<NodeId>,
        depth: u32,
        question: String,
    },
    Answered {
        node: NodeId,
        answer: String,
        by: AnsweredBy,
        exhausted: Option<Exhausted>,
        elapsed: Duration,
    },
    Done(Box<AskReply>),
}

impl TreeEvent {
    pub fn encode(self) -> pb::TreeEvent {
        use pb::tree_event::Event;
        let event = match self {
            TreeEvent::Opened {
                node,
                parent,
                depth,
                question,
            } => Event::Opened(pb::NodeOpened {
                node,
                parent,
                depth,
                question,
            }),
            TreeEvent::Answered {
                node,
                answer,
                by,
                exhausted,
                elapsed,
            } => Event::Answered(pb::NodeAnswered {
                node,
                answer,
                by: by.name().to_string(),
                exhausted: encode_exhausted(exhausted),
                elapsed_us: elapsed.as_micros() as u64,
            }),
            TreeEvent::Done(reply) => Event::Done((*reply).encode()),
        };
        pb::TreeEvent { event: Some(event) }
    }

    pub fn decode(event: pb::TreeEvent) -> Result<Self, ServiceError> {
        use pb::tree_event::Event;
        Ok(match event.event.ok_or_else(|| malformed("tree event"))? {
            Event::Opened(o) => TreeEvent::Opened {
                node: o.node,
                parent: o.parent,
                depth: o.depth,
                question: o.question,
            },
            Event::Answered(a) => TreeEvent::Answered {
                node: a.node,
                answer: a.answer,
                by: AnsweredBy::from_name(&a.by)
                    .ok_or_else(|| malformed("tree event (answered by)"))?,
                exhausted: decode_exhausted(&a.exhausted)?,
                elapsed: Duration::from_micros(a.elapsed_us),
            },
            Event::Done(r) => TreeEvent::Done(Box::new(AskReply::decode(r)?)),
        })
    }
}

/// Longest tree id GetTrace accepts (the coordinator's ids are far shorter).
pub const MAX_TREE_ID_BYTES: usize = 128;

/// A GetTrace request: the id an Ask returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceRequest {
    pub tree_id: String,
}

impl TraceRequest {
    pub fn encode(self) -> pb::GetTraceRequest {
        pb::GetTraceRequest {
            tree_id: self.tree_id,
        }
    }

    pub fn decode(request: pb::GetTraceRequest) -> Result<Self, ServiceError> {
        if request.tree_id.is_empty() {
            return Err(ServiceError::invalid(
                "tree_id is empty: pass the id an Ask returned",
            ));
        }
        limits::check_bytes("tree_id", &request.tree_id, MAX_TREE_ID_BYTES)?;
        Ok(Self {
            tree_id: request.tree_id,
        })
    }
}

/// One worker, as the coordinator's Status reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerStatus {
    pub address: String,
    pub healthy: bool,
    /// The worker's answerer ("oracle", "model g3"); `None` before the worker answered ModelInfo.
    pub answerer: Option<String>,
    pub generation: Option<u64>,
    pub domains: Vec<DomainKind>,
    pub calls_in_flight: u64,
    pub items_sent: u64,
    pub failures: u64,
}

/// The coordinator's Status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoordinatorStatus {
    pub workers: Vec<WorkerStatus>,
    pub trees_in_flight: u32,
    pub max_trees: u32,
    pub trees_total: u64,
}

impl CoordinatorStatus {
    pub fn encode(self) -> pb::StatusResponse {
        pb::StatusResponse {
            workers: self
                .workers
                .into_iter()
                .map(|w| pb::WorkerStatus {
                    address: w.address,
                    healthy: w.healthy,
                    answerer: w.answerer.unwrap_or_default(),
                    generation: w.generation,
                    domains: w.domains.iter().map(|d| d.name().to_string()).collect(),
                    calls_in_flight: w.calls_in_flight,
                    items_sent: w.items_sent,
                    failures: w.failures,
                })
                .collect(),
            trees_in_flight: self.trees_in_flight,
            max_trees: self.max_trees,
            trees_total: self.trees_total,
        }
    }

    pub fn decode(status: pb::StatusResponse) -> Result<Self, ServiceError> {
        let workers = status
            .workers
            .into_iter()
            .map(|w| {
                Ok(WorkerStatus {
                    domains: w
                        .domains
                        .iter()
                        .map(|d| d.parse().map_err(|_| malformed("worker domain")))
                        .collect::<Result<_, ServiceError>>()?,
                    address: w.address,
                    healthy: w.healthy,
                    answerer: Some(w.answerer).filter(|a| !a.is_empty()),
                    generation: w.generation,
                    calls_in_flight: w.calls_in_flight,
                    items_sent: w.items_sent,
                    failures: w.failures,
                })
            })
            .collect::<Result<_, ServiceError>>()?;
        Ok(Self {
            workers,
            trees_in_flight: status.trees_in_flight,
            max_trees: status.max_trees,
            trees_total: status.trees_total,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::wildcard::Wildcard;
    use tonic::Code;

    fn query() -> AskQuery {
        AskQuery {
            domain: DomainKind::Wildcard,
            instance: InstanceSpec::Text("010011:+1 110000:-1".into()),
            question: "*100**".into(),
            mode: Mode::Hch(3),
            budget: Budget {
                max_depth: Some(4),
                max_nodes: Some(1000),
                deadline: Some(Duration::from_millis(250)),
            },
            want_trace: true,
        }
    }

    fn view() -> TraceView {
        TraceView {
            tree_id: "t1-abc".into(),
            domain: DomainKind::Wildcard,
            answerer: Some("model g4".into()),
            generation: Some(4),
            nodes: vec![
                NodeView {
                    id: 0,
                    parent: None,
                    depth: 0,
                    question: "*1".into(),
                    answer: "?".into(),
                    by: AnsweredBy::Overseer,
                    exhausted: Some(Exhausted::Nodes),
                    start: Duration::ZERO,
                    end: Duration::from_micros(90),
                },
                NodeView {
                    id: 1,
                    parent: Some(0),
                    depth: 1,
                    question: "01".into(),
                    answer: "1".into(),
                    by: AnsweredBy::Answerer,
                    exhausted: None,
                    start: Duration::from_micros(3),
                    end: Duration::from_micros(40),
                },
            ],
        }
    }

    fn reply() -> AskReply {
        AskReply {
            answer: "2".into(),
            known: true,
            tree_id: "t1-abc".into(),
            instance_id: "ab".repeat(32),
            stats: TreeStats {
                nodes: 7,
                memo_hits: 2,
                answerer_queries: 4,
            },
            elapsed: Duration::from_micros(1234),
            exhausted: Some(Exhausted::Deadline),
            answerer: Some("model g4".into()),
            generation: Some(4),
            trace: Some(view()),
        }
    }

    #[test]
    fn ask_queries_round_trip() {
        let limits = AskLimits::default();
        let generated = AskQuery {
            instance: InstanceSpec::Generated { size: 8, seed: 3 },
            mode: Mode::Exact,
            budget: Budget::default(),
            want_trace: false,
            ..query()
        };
        for q in [query(), generated] {
            assert_eq!(AskQuery::decode(q.clone().encode(), &limits).unwrap(), q);
        }
    }

    #[test]
    fn replies_events_traces_and_status_round_trip() {
        let r = reply();
        assert_eq!(AskReply::decode(r.clone().encode()).unwrap(), r);
        let bare = AskReply {
            answerer: None,
            generation: None,
            exhausted: None,
            trace: None,
            ..reply()
        };
        assert_eq!(AskReply::decode(bare.clone().encode()).unwrap(), bare);
        assert_eq!(TraceView::decode(view().encode()).unwrap(), view());
        for e in [
            TreeEvent::Opened {
                node: 3,
                parent: Some(1),
                depth: 2,
                question: "0*".into(),
            },
            TreeEvent::Answered {
                node: 3,
                answer: "?".into(),
                by: AnsweredBy::Nobody,
                exhausted: Some(Exhausted::AnswererFailed),
                elapsed: Duration::from_micros(17),
            },
            TreeEvent::Done(Box::new(reply())),
        ] {
            assert_eq!(TreeEvent::decode(e.clone().encode()).unwrap(), e);
        }
        let t = TraceRequest {
            tree_id: "t9-0001".into(),
        };
        assert_eq!(TraceRequest::decode(t.clone().encode()).unwrap(), t);
        let status = CoordinatorStatus {
            workers: vec![WorkerStatus {
                address: "10.0.0.5:50051".into(),
                healthy: true,
                answerer: Some("model g2".into()),
                generation: Some(2),
                domains: vec![DomainKind::UnionFind, DomainKind::Wildcard],
                calls_in_flight: 3,
                items_sent: 1000,
                failures: 1,
            }],
            trees_in_flight: 5,
            max_trees: 64,
            trees_total: 99,
        };
        assert_eq!(
            CoordinatorStatus::decode(status.clone().encode()).unwrap(),
            status
        );
    }

    /// Each bad field gets INVALID_ARGUMENT with a message that names it.
    #[test]
    fn ask_decoding_refuses_bad_fields_by_name() {
        let limits = AskLimits {
            max_depth: 8,
            max_nodes: 100,
            max_deadline: Duration::from_secs(1),
            max_instance_bytes: 256,
        };
        let base = || query().encode();
        let cases: Vec<(pb::AskRequest, &str)> = vec![
            (
                pb::AskRequest {
                    domain: "chess".into(),
                    ..base()
                },
                "unknown domain",
            ),
            (
                pb::AskRequest {
                    instance: None,
                    ..base()
                },
                "no instance",
            ),
            (
                pb::AskRequest {
                    instance: Some(pb::ask_request::Instance::InstanceText("0".repeat(257))),
                    ..base()
                },
                "instance text is 257 bytes; the limit is 256",
            ),
            (
                pb::AskRequest {
                    instance: Some(pb::ask_request::Instance::Generated(
                        pb::GeneratedInstance { size: 65, seed: 0 },
                    )),
                    ..base()
                },
                "size 65",
            ),
            (
                pb::AskRequest {
                    question: "*".repeat(limits::MAX_QUESTION_BYTES + 1),
                    ..base()
                },
                "question is",
            ),
            (
                pb::AskRequest {
                    mode: "hch:x".into(),
                    ..base()
                },
                "mode",
            ),
            (
                pb::AskRequest {
                    mode: "hch:9".into(),
                    ..base()
                },
                "hch:D 9 is deeper",
            ),
            (
                pb::AskRequest {
                    budget: Some(pb::Budget {
                        max_depth: Some(9),
                        ..Default::default()
                    }),
                    ..base()
                },
                "max_depth 9 is deeper",
            ),
            (
                pb::AskRequest {
                    budget: Some(pb::Budget {
                        max_depth: Some(5000),
                        ..Default::default()
                    }),
                    ..base()
                },
                "max_depth 5000",
            ),
            (
                pb::AskRequest {
                    budget: Some(pb::Budget {
                        max_nodes: Some(0),
                        ..Default::default()
                    }),
                    ..base()
                },
                "max_nodes must be",
            ),
            (
                pb::AskRequest {
                    budget: Some(pb::Budget {
                        max_nodes: Some(101),
                        ..Default::default()
                    }),
                    ..base()
                },
                "max_nodes 101",
            ),
            (
                pb::AskRequest {
                    budget: Some(pb::Budget {
                        deadline_ms: Some(0),
                        ..Default::default()
                    }),
                    ..base()
                },
                "deadline",
            ),
            (
                pb::AskRequest {
                    budget: Some(pb::Budget {
                        deadline_ms: Some(1001),
                        ..Default::default()
                    }),
                    ..base()
                },
                "deadline 1001 ms",
            ),
        ];
        for (request, needle) in cases {
            let e = AskQuery::decode(request, &limits).unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{needle}: {e}");
            assert!(e.message().contains(needle), "{needle}: {e}");
        }
        let e = TraceRequest::decode(pb::GetTraceRequest {
            tree_id: String::new(),
        })
        .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        // The empty mode means amplified.
        let q = AskQuery::decode(
            pb::AskRequest {
                mode: String::new(),
                ..base()
            },
            &AskLimits::default(),
        )
        .unwrap();
        assert_eq!(q.mode, Mode::Amplified);
    }

    #[test]
    fn typed_parts_parse_against_the_domain() {
        let q = query();
        let instance = q.instance(&Wildcard).unwrap();
        let question = q.question(&Wildcard, instance.facts()).unwrap();
        assert_eq!(Wildcard.print_question(&question), "*100**");
        let bad = AskQuery {
            question: "*1".into(),
            ..query()
        };
        let e = bad.question(&Wildcard, instance.facts()).unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
    }

    #[test]
    fn malformed_responses_are_internal_errors() {
        let mut r = reply().encode();
        r.exhausted = "tiredness".into();
        assert_eq!(AskReply::decode(r).unwrap_err().code(), Code::Internal);
        let mut r = reply().encode();
        r.stats = None;
        assert_eq!(AskReply::decode(r).unwrap_err().code(), Code::Internal);
        let event = pb::TreeEvent { event: None };
        assert_eq!(TreeEvent::decode(event).unwrap_err().code(), Code::Internal);
    }
}
