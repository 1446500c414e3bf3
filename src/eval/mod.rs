//! Tree evaluation: H on a root question, subquestions answered by recursion or by the answerer.
//!
//! A tree is one `async` computation. Each node is a boxed future that runs the domain's overseer
//! with an [`Ask`] handle; asking a subquestion evaluates a child node in the same future (joined,
//! not spawned), so the whole tree is one owner of all its work: dropping the future returned by
//! [`Evaluator::evaluate`] cancels every node and every pending answerer call beneath it. Many trees
//! run concurrently by being polled concurrently (joined or spawned by the caller).
//!
//! Leaves are answered a wave at a time: a pass over the tree reaches every leaf it can, those
//! leaves go to the answerer as one batch, and the tree is walked again once their answers are in
//! place (see `TreeState::drive`). A tree whose H asks in parallel costs one answerer call per level
//! of sequential dependence, not one per leaf, and a remote answerer wakes it once per batch.
//!
//! Per node, in order:
//! 1. the deadline (if the tree has one) is checked: past it, the node is unknown;
//! 2. the memo (see [`memo`]) is consulted: an identical evaluation, finished or in flight, in this
//!    tree or a concurrent one on the same [`Instance`], supplies the answer;
//! 3. the node budget is charged: when it is used up the node degrades to the answerer (or unknown);
//! 4. at the mode's depth the answerer answers (a leaf); at the depth budget the node degrades;
//! 5. otherwise H runs and asks its subquestions one level deeper.
//!
//! Modes ([`Mode`]): distilled is the answerer alone (the root is a leaf), amplified is H over the
//! answerer (depth 1: the training-target generator), hch(d) recurses to depth d, and exact recurses
//! until H answers from the facts, with no answerer at all (only for well-founded domains).

pub mod memo;
mod mode;
pub mod trace;
mod wave;

pub use mode::{Budget, Mode, MAX_TREE_DEPTH};

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::{join_all, BoxFuture};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::answerer::{Answerer, AnswererId};
use crate::domain::{Domain, Instance};
use memo::{Claim, MemoKey, MemoLease, MemoTables, Memoed, TreeId};
use trace::{AnsweredBy, Exhausted, NodeId, Recorder, Trace, TraceNode};
use wave::Leaves;

/// Switches that change cost but not answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EvalOptions {
    /// Share identical evaluations within and across trees.
    pub memo: bool,
    /// Record a [`Trace`] of every tree.
    pub trace: bool,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self {
            memo: true,
            trace: true,
        }
    }
}

/// Why a tree could not be evaluated at all (as opposed to being degraded by its budget).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    #[error(
        "exact mode is not defined for domain {0}: its overseer relies on its answerer's guesses, \
         so its recursion is not well founded; use amplified or hch:D instead"
    )]
    ExactNotWellFounded(&'static str),
    #[error("mode {0} needs an answerer at the leaves, but none is configured")]
    NoAnswerer(Mode),
    #[error("invalid budget: {0}")]
    InvalidBudget(String),
    #[error("invalid question for this instance: {0}")]
    InvalidQuestion(String),
}

/// Counters of one tree.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TreeStats {
    /// Nodes evaluated (H runs, answerer leaves, degraded nodes); memo hits excluded.
    pub nodes: u64,
    /// Nodes answered by the memo.
    pub memo_hits: u64,
    /// Questions sent to the answerer.
    pub answerer_queries: u64,
}

/// A node of a tree as it happens (see [`Evaluator::evaluate_observed`]).
#[derive(Clone, Debug)]
pub enum NodeEvent<D: Domain> {
    Opened {
        id: NodeId,
        parent: Option<NodeId>,
        depth: u32,
        question: D::Question,
    },
    Answered {
        id: NodeId,
        answer: Option<D::Answer>,
        by: AnsweredBy,
        exhausted: Option<Exhausted>,
        elapsed: Duration,
    },
}

/// The outcome of one tree.
#[derive(Debug)]
pub struct TreeResult<D: Domain> {
    pub tree: TreeId,
    /// The root's answer; `None` is unknown.
    pub answer: Option<D::Answer>,
    /// The first budget or failure that degraded some node of this tree, if any.
    pub exhausted: Option<Exhausted>,
    pub stats: TreeStats,
    pub elapsed: Duration,
    pub trace: Option<Trace<D>>,
}

/// Evaluates trees of one domain over one answerer (or none, for exact mode).
pub struct Evaluator<D: Domain> {
    domain: Arc<D>,
    answerer: Option<Arc<dyn Answerer<D>>>,
    options: EvalOptions,
    next_tree: AtomicU64,
    /// The memo tables of the instances this evaluator's running trees are about.
    memos: Arc<MemoTables<D>>,
}

impl<D: Domain> Evaluator<D> {
    pub fn new(domain: D, answerer: Option<Arc<dyn Answerer<D>>>, options: EvalOptions) -> Self {
        Self {
            domain: Arc::new(domain),
            answerer,
            options,
            next_tree: AtomicU64::new(1),
            memos: Arc::default(),
        }
    }

    /// Instances with a live memo table (some tree on them is running).
    pub fn memo_tables(&self) -> usize {
        self.memos.len()
    }

    pub fn domain(&self) -> &D {
        &self.domain
    }

    pub fn answerer(&self) -> Option<&Arc<dyn Answerer<D>>> {
        self.answerer.as_ref()
    }

    /// Checks that `mode` and `budget` can be evaluated by this evaluator.
    pub fn check(&self, mode: Mode, budget: &Budget) -> Result<(), EvalError> {
        match mode {
            Mode::Exact if !D::WELL_FOUNDED => {
                return Err(EvalError::ExactNotWellFounded(D::KIND.name()))
            }
            Mode::Exact => {}
            _ if self.answerer.is_none() => return Err(EvalError::NoAnswerer(mode)),
            Mode::Hch(d) if d > MAX_TREE_DEPTH => {
                return Err(EvalError::InvalidBudget(format!(
                    "hch depth {d} exceeds the maximum {MAX_TREE_DEPTH}"
                )))
            }
            _ => {}
        }
        budget.check()
    }

    /// Evaluates one tree. Concurrent trees on the same instance (equal facts) share one memo
    /// table.
    pub async fn evaluate(
        &self,
        instance: &Arc<Instance<D>>,
        question: D::Question,
        mode: Mode,
        budget: Budget,
    ) -> Result<TreeResult<D>, EvalError> {
        self.evaluate_observed(instance, question, mode, budget, None)
            .await
    }

    /// [`Evaluator::evaluate`], also sending an event as each node opens and is answered (for
    /// clients that watch a tree grow).
    pub async fn evaluate_observed(
        &self,
        instance: &Arc<Instance<D>>,
        question: D::Question,
        mode: Mode,
        budget: Budget,
        events: Option<mpsc::UnboundedSender<NodeEvent<D>>>,
    ) -> Result<TreeResult<D>, EvalError> {
        self.check(mode, &budget)?;
        self.domain
            .check_question(instance.facts(), &question)
            .map_err(EvalError::InvalidQuestion)?;

        // Read per tree: a remote pool's identity changes when its workers load a new generation.
        let answerer_id: Option<AnswererId> = self.answerer.as_ref().map(|a| a.id());
        let tree = self.next_tree.fetch_add(1, Ordering::Relaxed);
        // tokio's clock (which tests can pause) only where a deadline needs it; the TSC otherwise.
        let started = quanta::Instant::now();
        let deadline_start = budget.deadline.map(|_| Instant::now());
        let leaf_depth = mode.leaf_depth();
        let depth_limit = match (leaf_depth, budget.max_depth) {
            (Some(l), Some(b)) => l.min(b),
            (Some(l), None) => l,
            (None, Some(b)) => b,
            (None, None) => MAX_TREE_DEPTH,
        };
        let ctx = TreeState {
            domain: self.domain.clone(),
            instance: instance.clone(),
            answerer: if mode == Mode::Exact {
                None
            } else {
                self.answerer.clone()
            },
            answerer_key: match (&answerer_id, mode) {
                (_, Mode::Exact) | (None, _) => AnswererId::NONE_KEY,
                (Some(id), _) => id.key(),
            },
            answerer_id: match mode {
                Mode::Exact => None,
                _ => answerer_id,
            },
            tree,
            leaf_depth: leaf_depth.unwrap_or(u32::MAX),
            depth_limit,
            horizon_free: mode == Mode::Exact && budget.max_depth.is_none(),
            max_nodes: budget.max_nodes.unwrap_or(u64::MAX),
            deadline: deadline_start.zip(budget.deadline).map(|(s, d)| s + d),
            past_deadline: AtomicBool::new(false),
            memo: self.options.memo.then(|| self.memos.lease(instance.id())),
            recorder: self.options.trace.then(Recorder::new),
            leaves: Mutex::new(Leaves::default()),
            events,
            next_node: AtomicU32::new(0),
            trace_epoch: quanta::Instant::now(),
            walked_at: AtomicU64::new(0),
            nodes: AtomicU64::new(0),
            memo_hits: AtomicU64::new(0),
            answerer_queries: AtomicU64::new(0),
            tainted: AtomicBool::new(false),
            exhausted: std::sync::Mutex::new(None),
        };

        let root = ctx.drive(ctx.eval(question.clone(), 0, None));
        let answer = match ctx.deadline {
            None => root.await,
            Some(deadline) => match tokio::time::timeout_at(deadline, root).await {
                Ok(answer) => answer,
                Err(_) => {
                    // The root was cut off mid-flight and never recorded itself: record it now.
                    ctx.exhaust(Exhausted::Deadline);
                    if let Some(r) = &ctx.recorder {
                        r.close(TraceNode {
                            id: 0,
                            parent: None,
                            depth: 0,
                            question,
                            answer: None,
                            by: AnsweredBy::Nobody,
                            exhausted: Some(Exhausted::Deadline),
                            start: Duration::ZERO,
                            end: ctx.trace_epoch.elapsed(),
                        });
                    }
                    None
                }
            },
        };
        let elapsed = deadline_start.map_or_else(|| started.elapsed(), |s| s.elapsed());
        let exhausted = *ctx.exhausted.lock().unwrap_or_else(|p| p.into_inner());
        let stats = TreeStats {
            nodes: ctx.nodes.load(Ordering::Relaxed),
            memo_hits: ctx.memo_hits.load(Ordering::Relaxed),
            answerer_queries: ctx.answerer_queries.load(Ordering::Relaxed),
        };
        let trace = ctx.recorder.map(|r| r.finish(ctx.answerer_id));
        Ok(TreeResult {
            tree,
            answer,
            exhausted,
            stats,
            elapsed,
            trace,
        })
    }
}

/// The handle H asks subquestions through. Each subquestion is evaluated one level deeper than the
/// node H is working on; `all` evaluates several concurrently.
pub struct Ask<'a, D: Domain> {
    tree: &'a TreeState<D>,
    depth: u32,
    parent: NodeId,
    asked: &'a AtomicU32,
    /// H is only being asked whether it can answer from the facts alone (see
    /// `TreeState::simple`): a subquestion is counted and never answered.
    probe: bool,
}

impl<D: Domain> Clone for Ask<'_, D> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<D: Domain> Copy for Ask<'_, D> {}

impl<'a, D: Domain> Ask<'a, D> {
    /// Asks one subquestion. `None` is an unknown answer.
    pub fn one(&self, question: D::Question) -> BoxFuture<'a, Option<D::Answer>> {
        bump(self.asked);
        if self.probe {
            return Box::pin(std::future::pending());
        }
        self.tree.eval(question, self.depth, Some(self.parent))
    }

    /// Asks independent subquestions concurrently; answers come back in order.
    pub async fn all(
        &self,
        questions: impl IntoIterator<Item = D::Question>,
    ) -> Vec<Option<D::Answer>> {
        join_all(questions.into_iter().map(|q| self.one(q))).await
    }

    /// Asks two independent subquestions concurrently.
    pub async fn two(
        &self,
        a: D::Question,
        b: D::Question,
    ) -> (Option<D::Answer>, Option<D::Answer>) {
        futures::join!(self.one(a), self.one(b))
    }

    /// Depth of the subquestions this handle asks (the asking node's depth plus one).
    pub fn depth(&self) -> u32 {
        self.depth
    }
}

/// Everything one tree's nodes share.
struct TreeState<D: Domain> {
    domain: Arc<D>,
    instance: Arc<Instance<D>>,
    answerer: Option<Arc<dyn Answerer<D>>>,
    answerer_key: u64,
    answerer_id: Option<AnswererId>,
    tree: TreeId,
    /// Depth at which the answerer answers (`u32::MAX` in exact mode).
    leaf_depth: u32,
    /// Depth at which nodes stop recursing: the leaf depth or the depth budget, whichever is less.
    depth_limit: u32,
    /// The answer cannot depend on remaining depth (exact mode without a depth budget).
    horizon_free: bool,
    max_nodes: u64,
    deadline: Option<Instant>,
    /// The deadline has been seen to pass (see [`TreeState::past_deadline`]).
    past_deadline: AtomicBool,
    /// This tree's hold on its instance's memo table, unless the memo is off.
    memo: Option<MemoLease<D>>,
    recorder: Option<Recorder<D>>,
    events: Option<mpsc::UnboundedSender<NodeEvent<D>>>,
    next_node: AtomicU32,
    /// Zero of the trace's timestamps.
    trace_epoch: quanta::Instant,
    /// When the current walk of the tree began, in nanoseconds since `trace_epoch`.
    walked_at: AtomicU64,
    nodes: AtomicU64,
    memo_hits: AtomicU64,
    answerer_queries: AtomicU64,
    /// Some node's answer depended on a budget or failure: memo entries this tree writes from now
    /// on are not shared with other trees.
    tainted: AtomicBool,
    exhausted: std::sync::Mutex<Option<Exhausted>>,
    /// Leaf questions waiting for the answerer (see [`TreeState::drive`]).
    leaves: Mutex<Leaves<D>>,
}

type NodeOutcome<A> = (Option<A>, AnsweredBy, Option<Exhausted>);

/// Adds one to a counter of one tree, returning its value before.
///
/// A tree is one future (its nodes are joined, never spawned: see the module docs), polled by one
/// task at a time, so its counters never have two writers at once, and a load and a store do what
/// `fetch_add` does without its locked instruction (about 20 cycles each, and a node bumped
/// three). The atomics are there for `Sync`, not for concurrent updates.
fn bump<T: Counter>(counter: &T) -> T::Value {
    counter.bump()
}

trait Counter {
    type Value;
    fn bump(&self) -> Self::Value;
}

impl Counter for AtomicU32 {
    type Value = u32;
    fn bump(&self) -> u32 {
        let v = self.load(Ordering::Relaxed);
        self.store(v.wrapping_add(1), Ordering::Relaxed);
        v
    }
}

impl Counter for AtomicU64 {
    type Value = u64;
    fn bump(&self) -> u64 {
        let v = self.load(Ordering::Relaxed);
        self.store(v.wrapping_add(1), Ordering::Relaxed);
        v
    }
}

impl<D: Domain> TreeState<D> {
    fn eval(
        &self,
        question: D::Question,
        depth: u32,
        parent: Option<NodeId>,
    ) -> BoxFuture<'_, Option<D::Answer>> {
        Box::pin(async move {
            let id = bump(&self.next_node);
            if let Some(events) = &self.events {
                let _ = events.send(NodeEvent::Opened {
                    id,
                    parent,
                    depth,
                    question: question.clone(),
                });
            }
            // Node times are those of the walks (see `TreeState::walked`) in which the node opened
            // and was answered: a clock read per walk, not two per node.
            let begin = self.observed().then(|| self.walk_time());
            let (answer, by, exhausted) = self.node(&question, depth, id).await;
            if let Some(begin) = begin {
                let end = self.walk_time();
                if let Some(events) = &self.events {
                    let _ = events.send(NodeEvent::Answered {
                        id,
                        answer: answer.clone(),
                        by,
                        exhausted,
                        elapsed: end.saturating_sub(begin),
                    });
                }
                if let Some(r) = &self.recorder {
                    r.close(TraceNode {
                        id,
                        parent,
                        depth,
                        question,
                        answer: answer.clone(),
                        by,
                        exhausted,
                        start: begin,
                        end,
                    });
                }
            }
            answer
        })
    }

    /// Whether node times are wanted (a trace is recorded or node events are sent).
    fn observed(&self) -> bool {
        self.recorder.is_some() || self.events.is_some()
    }

    /// Marks the start of a walk of the tree (see [`TreeState::drive`]). A walk runs every node
    /// that can progress, back to back without waiting, in microseconds; what a trace's times are
    /// for is the waiting between walks (for the answerer, for another tree's memo entry). So a
    /// node is stamped with the walk it opened in and the walk it was answered in, and the clock
    /// (the TSC through `quanta`) is read once per walk rather than twice per node, which was a
    /// tenth of the time of a tree evaluated in process.
    fn walked(&self) {
        if let Some(deadline) = self.deadline {
            if Instant::now() >= deadline {
                self.past_deadline.store(true, Ordering::Relaxed);
            }
        }
        if self.observed() {
            let now = self.trace_epoch.elapsed().as_nanos() as u64;
            self.walked_at.store(now, Ordering::Relaxed);
        }
    }

    /// Whether the tree's deadline has passed, as node `id` opens. The clock is read as each walk
    /// begins (see [`TreeState::walked`]) and at every 32nd node within a walk, not at every node:
    /// a walk that waits for nothing (an exact tree) still stops within 32 nodes of its deadline,
    /// and the clock, read per node, was 1.5% of a load-tested coordinator's time.
    fn past_deadline(&self, id: NodeId) -> bool {
        if self.past_deadline.load(Ordering::Relaxed) {
            return true;
        }
        let past = id % 32 == 0 && self.deadline.is_some_and(|d| Instant::now() >= d);
        if past {
            self.past_deadline.store(true, Ordering::Relaxed);
        }
        past
    }

    /// The time of the current walk, since the start of the tree.
    fn walk_time(&self) -> Duration {
        Duration::from_nanos(self.walked_at.load(Ordering::Relaxed))
    }

    async fn node(&self, question: &D::Question, depth: u32, id: NodeId) -> NodeOutcome<D::Answer> {
        if self.deadline.is_some() && self.past_deadline(id) {
            self.exhaust(Exhausted::Deadline);
            return (None, AnsweredBy::Nobody, Some(Exhausted::Deadline));
        }
        // The node's future lives in memory for as long as its subtree is in flight, and a tree
        // walk touches every pending node: the rare paths (waiting on another evaluation, budget
        // exhaustion) are boxed so that they do not widen every node's future.
        let claim = if let Some(memo) = &self.memo {
            let key = MemoKey {
                question: question.clone(),
                horizon: (!self.horizon_free).then(|| self.depth_limit.saturating_sub(depth)),
                answerer: if depth >= self.depth_limit || !self.horizon_free {
                    self.answerer_key
                } else {
                    0
                },
            };
            let claim = match memo.try_claim(key) {
                Ok(claim) => claim,
                Err(slot) => Box::pin(memo.claim(slot)).await,
            };
            match claim {
                Claim::Compute(claim) => Some(claim),
                // Taken unless it depended on another tree's exhausted budget.
                Claim::Hit(m) if m.tainted_by.map_or(true, |t| t == self.tree) => {
                    bump(&self.memo_hits);
                    return (m.answer, AnsweredBy::Memo, None);
                }
                Claim::Hit(_) => None,
            }
        } else {
            None
        };
        let (answer, by, exhausted) = self.compute(question, depth, id).await;
        if let Some(claim) = claim {
            claim.finish(Memoed {
                answer: answer.clone(),
                tainted_by: self.tainted.load(Ordering::Relaxed).then_some(self.tree),
            });
        }
        (answer, by, exhausted)
    }

    async fn compute(
        &self,
        question: &D::Question,
        depth: u32,
        id: NodeId,
    ) -> NodeOutcome<D::Answer> {
        if bump(&self.nodes) >= self.max_nodes {
            return Box::pin(self.degrade(question, Exhausted::Nodes)).await;
        }
        if depth >= self.depth_limit {
            return if depth >= self.leaf_depth {
                match self.simple(question, depth, id) {
                    Some(answer) => (answer, AnsweredBy::Simple, None),
                    None => self.leaf(question, None).await,
                }
            } else {
                Box::pin(self.degrade(question, Exhausted::Depth)).await
            };
        }
        let asked = AtomicU32::new(0);
        let ask = self.ask(depth, id, &asked, false);
        let answer = self
            .domain
            .oversee(self.instance.facts(), question, ask)
            .await;
        let by = if asked.load(Ordering::Relaxed) > 0 {
            AnsweredBy::Overseer
        } else {
            AnsweredBy::Simple
        };
        (answer, by, None)
    }

    /// The handle H, working on node `id` at `depth`, asks its subquestions through (counted in
    /// `asked`; with `probe`, recorded but never answered).
    fn ask<'a>(&'a self, depth: u32, id: NodeId, asked: &'a AtomicU32, probe: bool) -> Ask<'a, D> {
        Ask {
            tree: self,
            depth: depth + 1,
            parent: id,
            asked,
            probe,
        }
    }

    /// H's answer to a subquestion it can answer from the facts alone, without asking anything
    /// (a fact lookup), as the paper's overseer does (`answer_if_simple`): such a leaf is H's, not
    /// the answerer's, whatever the mode. `None` if H would ask (or gives up). The root (depth 0)
    /// is never answered this way, so distilled mode stays the answerer alone.
    ///
    /// H is run once with an [`Ask`] that records subquestions without answering them: finishing
    /// on the first poll without having asked means H answered from the facts. H has no side
    /// effects, so the abandoned probe of a question that is not simple leaves nothing behind.
    fn simple(&self, question: &D::Question, depth: u32, id: NodeId) -> Option<Option<D::Answer>> {
        if depth == 0 {
            return None;
        }
        let asked = AtomicU32::new(0);
        let ask = self.ask(depth, id, &asked, true);
        let answer = futures::FutureExt::now_or_never(self.domain.oversee(
            self.instance.facts(),
            question,
            ask,
        ))?;
        // An unknown without asking is H giving up, not answering: X may know better.
        (asked.load(Ordering::Relaxed) == 0 && answer.is_some()).then_some(answer)
    }

    /// A budget ran out at this node: the answerer answers if there is one, else unknown.
    async fn degrade(&self, question: &D::Question, why: Exhausted) -> NodeOutcome<D::Answer> {
        self.exhaust(why);
        if self.answerer.is_some() {
            let (answer, by, failed) = self.leaf(question, Some(why)).await;
            (answer, by, failed.or(Some(why)))
        } else {
            (None, AnsweredBy::Nobody, Some(why))
        }
    }

    fn exhaust(&self, why: Exhausted) {
        self.tainted.store(true, Ordering::Relaxed);
        let mut first = self.exhausted.lock().unwrap_or_else(|p| p.into_inner());
        first.get_or_insert(why);
    }
}
