//! What the tree viewer shows (`--admin-viewer`): the recent trees, and each tree's nodes as they
//! open and are answered, read by the page on the admin port through two JSON endpoints (see
//! `server::admin`).
//!
//! A tree's nodes come from the same node events an AskStream client receives, recorded typed
//! (a clone of the question or answer, no text) and rendered to text only when the page asks.
//! What is kept is bounded: the newest `trees` trees (running trees are never dropped; there are
//! at most `max_trees` of them), and per tree the first `events_per_tree` events (a larger tree
//! shows how many more there were). Off by default, because the admin port has no
//! authentication and trees are the clients' data.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};

use crate::domain::{Domain, DomainKind};
use crate::eval::NodeEvent;
use crate::rpc::coordinator::{AskReply, TreeEvent};
use crate::rpc::ServiceError;

/// Viewer bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ViewerConfig {
    /// Trees listed (running ones always are).
    pub trees: usize,
    /// Node events kept per tree (two per node: opened, answered).
    pub events_per_tree: usize,
}

impl Default for ViewerConfig {
    fn default() -> Self {
        Self {
            trees: 64,
            events_per_tree: 20_000,
        }
    }
}

/// Most events one response carries; the page asks again from where it stopped.
const EVENTS_PER_RESPONSE: usize = 5_000;

/// The recent trees.
pub struct Viewer {
    config: ViewerConfig,
    /// Newest first.
    trees: Mutex<VecDeque<Arc<Record>>>,
}

/// What is known of a tree when it starts.
pub struct TreeStart {
    pub tree_id: String,
    pub domain: DomainKind,
    pub mode: String,
    pub question: String,
    pub client: Option<String>,
    pub trace_id: String,
    /// Who answers the leaves (the pool's answerer: "oracle", "model g3").
    pub answerer: String,
}

/// One tree, running or finished.
pub struct Record {
    start: TreeStart,
    started_unix_ms: u64,
    started: Instant,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    instance_id: Option<String>,
    log: Option<Arc<dyn NodeLog>>,
    outcome: Option<Value>,
    elapsed: Option<Duration>,
}

impl Viewer {
    pub fn new(config: ViewerConfig) -> Self {
        Self {
            config,
            trees: Mutex::new(VecDeque::new()),
        }
    }

    pub fn config(&self) -> ViewerConfig {
        self.config
    }

    /// Lists a starting tree; the oldest finished trees beyond the bound go.
    pub fn open(&self, start: TreeStart) -> Arc<Record> {
        let record = Arc::new(Record {
            start,
            started_unix_ms: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            started: Instant::now(),
            state: Mutex::new(State::default()),
        });
        let mut trees = self.trees.lock().unwrap_or_else(|p| p.into_inner());
        trees.push_front(record.clone());
        while trees.len() > self.config.trees.max(1) {
            match trees.iter().rposition(|r| !r.running()) {
                Some(oldest_finished) => {
                    trees.remove(oldest_finished);
                }
                None => break,
            }
        }
        record
    }

    /// `GET /api/trees`: the trees, newest first.
    pub fn list(&self) -> Value {
        let trees: Vec<Arc<Record>> = self
            .trees
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect();
        json!({ "trees": trees.iter().map(|r| r.summary()).collect::<Vec<_>>() })
    }

    /// `GET /api/trees/{id}?since=N`: the tree, and its node events from the N-th on.
    pub fn tree(&self, id: &str, since: usize) -> Option<Value> {
        let record = self
            .trees
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|r| r.start.tree_id == id)
            .cloned()?;
        let log = record
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .log
            .clone();
        let (events, next, recorded, dropped) = match log {
            Some(log) => {
                let (events, next) = log.render(since, EVENTS_PER_RESPONSE);
                let (recorded, dropped) = log.counts();
                (events, next, recorded, dropped)
            }
            None => (Vec::new(), since, 0, 0),
        };
        let mut tree = record.summary();
        tree["events"] = Value::Array(events);
        tree["next"] = json!(next);
        tree["events_recorded"] = json!(recorded);
        tree["events_not_kept"] = json!(dropped);
        Some(tree)
    }
}

impl Record {
    fn running(&self) -> bool {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .outcome
            .is_none()
    }

    /// Starts recording the tree's node events in `log`.
    pub(super) fn attach(&self, instance_id: String, log: Arc<dyn NodeLog>) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.instance_id = Some(instance_id);
        state.log = Some(log);
    }

    /// Records how the tree ended.
    pub(super) fn finish(&self, result: Result<&AskReply, &ServiceError>) {
        let outcome = match result {
            Ok(reply) => json!({
                "status": if reply.known { "answered" } else { "unknown" },
                "answer": reply.answer,
                "nodes": reply.stats.nodes,
                "memo_hits": reply.stats.memo_hits,
                "subquestions": reply.stats.answerer_queries,
                "exhausted": reply.exhausted.map(|e| e.name()),
                "answerer": reply.answerer,
                "generation": reply.generation,
            }),
            Err(e) => json!({
                "status": "error",
                "code": crate::metrics::code_label(e.code()),
                "error": e.to_string(),
            }),
        };
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Ok(reply) = result {
            state
                .instance_id
                .get_or_insert_with(|| reply.instance_id.clone());
        }
        state.elapsed = Some(self.started.elapsed());
        state.outcome = Some(outcome);
    }

    fn summary(&self) -> Value {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let s = &self.start;
        json!({
            "tree_id": s.tree_id,
            "domain": s.domain.name(),
            "mode": s.mode,
            "question": s.question,
            "client": s.client,
            "trace_id": s.trace_id,
            "answerer": s.answerer,
            "instance_id": state.instance_id,
            "started_unix_ms": self.started_unix_ms,
            "elapsed_ms": state.elapsed.unwrap_or_else(|| self.started.elapsed()).as_secs_f64() * 1e3,
            "running": state.outcome.is_none(),
            "outcome": state.outcome,
        })
    }
}

/// A tree's node events, typed by its domain (see [`TypedLog`]).
pub(super) trait NodeLog: Send + Sync {
    /// Events `since..` (at most `max`), as JSON, and the index to ask from next.
    fn render(&self, since: usize, max: usize) -> (Vec<Value>, usize);
    /// (events recorded, events not kept over the bound).
    fn counts(&self) -> (usize, usize);
}

/// The node events of one tree, as the evaluator sent them, stamped with their time.
pub(super) struct TypedLog<D: Domain> {
    domain: D,
    started: Instant,
    cap: usize,
    events: Mutex<Events<D>>,
}

/// The events kept (each with its time since the tree started), and the count of those not kept.
struct Events<D: Domain> {
    kept: Vec<(Duration, NodeEvent<D>)>,
    dropped: usize,
}

impl<D: Domain + Copy> TypedLog<D> {
    pub(super) fn new(domain: D, cap: usize) -> Self {
        Self {
            domain,
            started: Instant::now(),
            cap,
            events: Mutex::new(Events {
                kept: Vec::new(),
                dropped: 0,
            }),
        }
    }

    pub(super) fn push(&self, event: &NodeEvent<D>) {
        let at = self.started.elapsed();
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        if events.kept.len() < self.cap {
            events.kept.push((at, event.clone()));
        } else {
            events.dropped += 1;
        }
    }
}

impl<D: Domain + Copy> NodeLog for TypedLog<D> {
    fn render(&self, since: usize, max: usize) -> (Vec<Value>, usize) {
        // Copied out under the lock, rendered to text outside it.
        let slice: Vec<(Duration, NodeEvent<D>)> = {
            let events = self.events.lock().unwrap_or_else(|p| p.into_inner());
            let from = since.min(events.kept.len());
            let to = (from + max).min(events.kept.len());
            events.kept[from..to].to_vec()
        };
        let next = since.min(usize::MAX - slice.len()) + slice.len();
        // As an AskStream client receives them (the same text), with their time.
        let rendered = slice
            .into_iter()
            .filter_map(|(at, event)| {
                let at_ms = at.as_secs_f64() * 1e3;
                Some(match super::tree::tree_event(&self.domain, event) {
                    TreeEvent::Opened {
                        node,
                        parent,
                        depth,
                        question,
                    } => json!({
                        "type": "opened",
                        "id": node,
                        "parent": parent,
                        "depth": depth,
                        "question": question,
                        "at_ms": at_ms,
                    }),
                    TreeEvent::Answered {
                        node,
                        answer,
                        by,
                        exhausted,
                        elapsed,
                    } => json!({
                        "type": "answered",
                        "id": node,
                        "answer": answer,
                        "by": by.name(),
                        "exhausted": exhausted.map(|e| e.name()),
                        "elapsed_ms": elapsed.as_secs_f64() * 1e3,
                        "at_ms": at_ms,
                    }),
                    TreeEvent::Done(_) => return None,
                })
            })
            .collect();
        (rendered, next)
    }

    fn counts(&self) -> (usize, usize) {
        let events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        (events.kept.len() + events.dropped, events.dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::wildcard::Wildcard;
    use crate::eval::trace::AnsweredBy;

    fn start(id: &str) -> TreeStart {
        TreeStart {
            tree_id: id.to_string(),
            domain: DomainKind::Wildcard,
            mode: "hch:2".to_string(),
            question: "0*****".to_string(),
            client: None,
            trace_id: "ab".repeat(16),
            answerer: "oracle".to_string(),
        }
    }

    fn cancelled() -> ServiceError {
        ServiceError::Cancelled("gone".into())
    }

    #[test]
    fn finished_trees_beyond_the_bound_go_and_running_ones_stay() {
        let viewer = Viewer::new(ViewerConfig {
            trees: 2,
            events_per_tree: 10,
        });
        let a = viewer.open(start("a"));
        let b = viewer.open(start("b"));
        b.finish(Err(&cancelled()));
        let _c = viewer.open(start("c"));
        // "b" is the oldest finished tree: it goes; "a" still runs.
        let ids: Vec<String> = viewer.list()["trees"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["tree_id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(ids, ["c", "a"]);
        a.finish(Err(&cancelled()));
        let listed = viewer.list();
        assert_eq!(listed["trees"][1]["outcome"]["status"], "error");
        assert_eq!(listed["trees"][1]["running"], false);
        assert!(viewer.tree("b", 0).is_none());
    }

    #[test]
    fn node_events_are_paged_and_bounded() {
        let viewer = Viewer::new(ViewerConfig {
            trees: 4,
            events_per_tree: 3,
        });
        let record = viewer.open(start("t"));
        let d = Wildcard;
        let log = Arc::new(TypedLog::new(d, 3));
        record.attach("i1".to_string(), log.clone());
        let question = d.parse_question("0*****").unwrap();
        for id in 0..2 {
            log.push(&NodeEvent::Opened {
                id,
                parent: id.checked_sub(1),
                depth: id,
                question,
            });
        }
        log.push(&NodeEvent::Answered {
            id: 1,
            answer: None,
            by: AnsweredBy::Nobody,
            exhausted: Some(crate::eval::trace::Exhausted::Depth),
            elapsed: Duration::from_millis(2),
        });
        log.push(&NodeEvent::Answered {
            id: 0,
            answer: None,
            by: AnsweredBy::Overseer,
            exhausted: None,
            elapsed: Duration::from_millis(3),
        });
        let tree = viewer.tree("t", 0).unwrap();
        assert_eq!(tree["next"], 3);
        assert_eq!(tree["events_recorded"], 4);
        assert_eq!(tree["events_not_kept"], 1);
        assert_eq!(tree["instance_id"], "i1");
        let events = tree["events"].as_array().unwrap();
        assert_eq!(events[0]["type"], "opened");
        assert_eq!(events[0]["question"], "0*****");
        assert_eq!(events[1]["parent"], 0);
        assert_eq!(events[2]["by"], "unknown");
        assert_eq!(events[2]["exhausted"], "depth budget");
        assert_eq!(events[2]["answer"], "?");
        // From where the page stopped: nothing new.
        let later = viewer.tree("t", 3).unwrap();
        assert_eq!(later["events"].as_array().unwrap().len(), 0);
        assert_eq!(later["next"], 3);
        // A cursor past the end is not an error.
        assert_eq!(viewer.tree("t", 99).unwrap()["next"], 99);
    }
}
