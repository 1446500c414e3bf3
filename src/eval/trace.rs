//! Traces: the record of one tree, node by node.
//!
//! A trace is what a person looks at (`hch ask --tree`) and what training consumes (the root's
//! question and amplified answer). Nodes are recorded when they finish, in a vector behind an
//! uncontended mutex; ids are handed out when they start, so children can name their parent before
//! it finishes. A subtree abandoned when the deadline cut the tree short leaves no nodes.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::domain::{print_reply, Domain};

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
    /// Start and end, relative to the start of the tree.
    pub start: Duration,
    pub end: Duration,
}

/// The nodes of one tree, ordered by id (so a parent precedes its children).
#[derive(Clone, Debug)]
pub struct Trace<D: Domain> {
    pub nodes: Vec<TraceNode<D>>,
    /// Label of the answerer at the leaves ("oracle", "model g3"), if any.
    pub answerer: Option<Arc<str>>,
}

impl<D: Domain> Trace<D> {
    pub fn root(&self) -> Option<&TraceNode<D>> {
        self.nodes.first().filter(|n| n.id == 0)
    }

    /// Children of each node, indexed by position in `nodes`.
    fn children(&self) -> Vec<Vec<usize>> {
        let mut pos = vec![
            usize::MAX;
            self.nodes
                .iter()
                .map(|n| n.id as usize + 1)
                .max()
                .unwrap_or(0)
        ];
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
    pub fn render(&self, domain: &D) -> String {
        let children = self.children();
        let mut out = String::new();
        let mut stack: Vec<(usize, usize)> = Vec::new();
        if !self.nodes.is_empty() && self.nodes[0].parent.is_none() {
            stack.push((0, 0));
        }
        while let Some((i, indent)) = stack.pop() {
            let n = &self.nodes[i];
            let who = match (n.by, &self.answerer) {
                (AnsweredBy::Answerer, Some(label)) => label.to_string(),
                (by, _) => by.name().to_string(),
            };
            let _ = write!(
                out,
                "{}{} = {}  [{}",
                "  ".repeat(indent),
                domain.print_question(&n.question),
                print_reply(domain, &n.answer),
                who
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
pub(crate) struct Recorder<D: Domain> {
    nodes: Mutex<Vec<TraceNode<D>>>,
}

impl<D: Domain> Recorder<D> {
    pub fn new() -> Self {
        Self {
            nodes: Mutex::new(Vec::with_capacity(16)),
        }
    }

    pub fn close(&self, node: TraceNode<D>) {
        self.nodes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(node);
    }

    pub fn finish(self, answerer: Option<Arc<str>>) -> Trace<D> {
        let mut nodes = self
            .nodes
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        nodes.sort_unstable_by_key(|n| n.id);
        Trace { nodes, answerer }
    }
}
