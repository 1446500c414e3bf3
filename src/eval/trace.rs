//! Traces: the record of one tree, node by node.
//!
//! A trace is what a person looks at (`hch ask --tree`) and what training consumes (the root's
//! question and amplified answer). Nodes are recorded when they finish, in a vector behind an
//! uncontended mutex; ids are handed out when they start, so children can name their parent before
//! it finishes. A subtree abandoned when the deadline cut the tree short leaves no nodes.
//!
//! A [`Trace`] is typed (questions and answers of its domain); its [`TraceView`] is the same tree
//! in text, which is what crosses the wire (`rpc::coordinator`) and what is rendered for people,
//! by one renderer whether the tree was evaluated here or by a coordinator.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use crate::answerer::AnswererId;
use crate::domain::{print_reply, Domain, DomainKind};

/// Index of a node within its trace; the root is 0.
pub type NodeId = u32;

/// Who produced a node's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AnsweredBy {
    /// H answered from the facts without asking anything.
    Simple,
    /// H asked subquestions (the node's children) and combined their answers.
    Overseer,
    /// The answerer (model, oracle, remote pool) answered: a leaf.
    Answerer,
    /// An identical evaluation (same question, horizon and answerer) already gave the answer.
    Memo,
    /// Nobody: a budget ran out or the answerer failed, and the answer is unknown.
    Nobody,
}

impl AnsweredBy {
    pub const ALL: [AnsweredBy; 5] = [
        AnsweredBy::Simple,
        AnsweredBy::Overseer,
        AnsweredBy::Answerer,
        AnsweredBy::Memo,
        AnsweredBy::Nobody,
    ];

    /// The inverse of [`AnsweredBy::name`].
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|b| b.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            AnsweredBy::Simple => "simple",
            AnsweredBy::Overseer => "overseer",
            AnsweredBy::Answerer => "answerer",
            AnsweredBy::Memo => "memo",
            AnsweredBy::Nobody => "unknown",
        }
    }
}

/// Why a node's answer is degraded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Exhausted {
    /// The depth budget stopped recursion here.
    Depth,
    /// The node budget was used up.
    Nodes,
    /// The deadline passed.
    Deadline,
    /// The answerer could not answer.
    AnswererFailed,
}

impl Exhausted {
    pub const ALL: [Exhausted; 4] = [
        Exhausted::Depth,
        Exhausted::Nodes,
        Exhausted::Deadline,
        Exhausted::AnswererFailed,
    ];

    /// The inverse of [`Exhausted::name`].
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Exhausted::Depth => "depth budget",
            Exhausted::Nodes => "node budget",
            Exhausted::Deadline => "deadline",
            Exhausted::AnswererFailed => "answerer failed",
        }
    }
}

/// One node of a trace.
#[derive(Clone, Debug)]
pub struct TraceNode<D: Domain> {
    pub id: NodeId,
    pub parent: Option<NodeId>,
    pub depth: u32,
    pub question: D::Question,
    pub answer: Option<D::Answer>,
    pub by: AnsweredBy,
    /// Set when the answer is degraded by a budget or failure.
    pub exhausted: Option<Exhausted>,
    /// Start and end, relative to the start of the tree: the times of the walks of the tree in
    /// which the node opened and was answered (nodes computed back to back within one walk share
    /// its time; see `TreeState::walked`).
    pub start: Duration,
    pub end: Duration,
}

/// The nodes of one tree, ordered by id (so a parent precedes its children).
#[derive(Clone, Debug)]
pub struct Trace<D: Domain> {
    pub nodes: Vec<TraceNode<D>>,
    /// The answerer at the leaves, if any.
    pub answerer: Option<AnswererId>,
}

impl<D: Domain> Trace<D> {
    pub fn root(&self) -> Option<&TraceNode<D>> {
        self.nodes.first().filter(|n| n.id == 0)
    }

    /// The tree in text, for people and for the wire.
    pub fn view(&self, domain: &D, tree_id: &str) -> TraceView {
        TraceView {
            tree_id: tree_id.to_string(),
            domain: D::KIND,
            answerer: self.answerer.as_ref().map(|a| a.label().to_string()),
            generation: self.answerer.as_ref().and_then(AnswererId::generation),
            nodes: self
                .nodes
                .iter()
                .map(|n| NodeView {
                    id: n.id,
                    parent: n.parent,
                    depth: n.depth,
                    question: domain.print_question(&n.question),
                    answer: print_reply(domain, &n.answer),
                    by: n.by,
                    exhausted: n.exhausted,
                    start: n.start,
                    end: n.end,
                })
                .collect(),
        }
    }

    /// Renders the tree for a person (see [`TraceView::render`]).
    pub fn render(&self, domain: &D) -> String {
        self.view(domain, "").render()
    }
}

/// A trace in the domains' text syntax (see [`Trace::view`]).
#[derive(Clone, Debug, PartialEq)]
pub struct TraceView {
    pub tree_id: String,
    pub domain: DomainKind,
    /// Label of the answerer at the leaves ("oracle", "model g3"), if any.
    pub answerer: Option<String>,
    /// The model generation at the leaves, if a model answered.
    pub generation: Option<u64>,
    /// Ordered by id, so a parent precedes its children.
    pub nodes: Vec<NodeView>,
}

/// One node of a [`TraceView`].
#[derive(Clone, Debug, PartialEq)]
pub struct NodeView {
    pub id: NodeId,
    pub parent: Option<NodeId>,
    pub depth: u32,
    pub question: String,
    /// The answer, `?` when unknown.
    pub answer: String,
    pub by: AnsweredBy,
    pub exhausted: Option<Exhausted>,
    /// Start and end, relative to the start of the tree.
    pub start: Duration,
    pub end: Duration,
}

impl TraceView {
    /// Children of each node, indexed by position in `nodes`.
    fn children(&self) -> Vec<Vec<usize>> {
        let slots = self
            .nodes
            .iter()
            .map(|n| n.id as usize + 1)
            .max()
            .unwrap_or(0);
        let mut pos = vec![usize::MAX; slots];
        for (i, n) in self.nodes.iter().enumerate() {
            pos[n.id as usize] = i;
        }
        let mut children = vec![Vec::new(); self.nodes.len()];
        for (i, n) in self.nodes.iter().enumerate() {
            if let Some(p) = n.parent {
                if let Some(&pi) = pos.get(p as usize).filter(|&&pi| pi != usize::MAX) {
                    children[pi].push(i);
                }
            }
        }
        children
    }

    /// Renders the tree with one line per node, children indented under their parent:
    /// `question = answer  [who, time]`.
    pub fn render(&self) -> String {
        let children = self.children();
        let mut out = String::new();
        let mut stack: Vec<(usize, usize)> = Vec::new();
        if let Some(root) = self.nodes.iter().position(|n| n.parent.is_none()) {
            stack.push((root, 0));
        }
        while let Some((i, indent)) = stack.pop() {
            let n = &self.nodes[i];
            let who = match (n.by, &self.answerer) {
                (AnsweredBy::Answerer, Some(label)) => label.as_str(),
                (by, _) => by.name(),
            };
            let _ = write!(
                out,
                "{}{} = {}  [{who}",
                "  ".repeat(indent),
                n.question,
                n.answer,
            );
            if let Some(e) = n.exhausted {
                let _ = write!(out, ", {}", e.name());
            }
            let _ = writeln!(out, ", {:?}]", n.end.saturating_sub(n.start));
            for &c in children[i].iter().rev() {
                stack.push((c, indent + 1));
            }
        }
        out
    }
}

/// Collects nodes while a tree runs.
///
/// Node ids are handed out densely as nodes open, and nodes close children first: each node is
/// put in its place (by id) as it closes, so that finishing the trace is one pass that drops the
/// places left empty (a subtree cut off by the deadline leaves its ids empty). Sorting the nodes at
/// the end moved each many times; placing them at the end moved each twice.
pub(crate) struct Recorder<D: Domain> {
    nodes: Mutex<Vec<Option<TraceNode<D>>>>,
}

impl<D: Domain> Recorder<D> {
    pub fn new() -> Self {
        Self {
            nodes: Mutex::new(Vec::with_capacity(16)),
        }
    }

    pub fn close(&self, node: TraceNode<D>) {
        let mut nodes = self
            .nodes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let id = node.id as usize;
        if id >= nodes.len() {
            nodes.resize_with(id + 1, || None);
        }
        nodes[id] = Some(node);
    }

    pub fn finish(self, answerer: Option<AnswererId>) -> Trace<D> {
        let placed = self
            .nodes
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Trace {
            nodes: placed.into_iter().flatten().collect(),
            answerer,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for by in AnsweredBy::ALL {
            assert_eq!(AnsweredBy::from_name(by.name()), Some(by));
        }
        for e in Exhausted::ALL {
            assert_eq!(Exhausted::from_name(e.name()), Some(e));
        }
        assert_eq!(AnsweredBy::from_name("model"), None);
        assert_eq!(Exhausted::from_name(""), None);
    }

    #[test]
    fn renders_children_under_their_parent_in_order() {
        let node = |id, parent, depth, q: &str, by| NodeView {
            id,
            parent,
            depth,
            question: q.to_string(),
            answer: "1".to_string(),
            by,
            exhausted: None,
            start: Duration::ZERO,
            end: Duration::from_micros(5),
        };
        let view = TraceView {
            tree_id: "t".into(),
            domain: DomainKind::Wildcard,
            answerer: Some("model g2".into()),
            generation: Some(2),
            nodes: vec![
                node(0, None, 0, "root", AnsweredBy::Overseer),
                node(1, Some(0), 1, "a", AnsweredBy::Answerer),
                node(2, Some(0), 1, "b", AnsweredBy::Memo),
            ],
        };
        assert_eq!(
            view.render(),
            "root = 1  [overseer, 5µs]\n  a = 1  [model g2, 5µs]\n  b = 1  [memo, 5µs]\n"
        );
    }
}
