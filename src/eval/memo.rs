//! The memo: single-flight evaluation of identical subquestions.
//!
//! Each [`Instance`](crate::domain::Instance) owns one memo table, so every tree that holds the same
//! `Arc<Instance>` shares it, and the table is freed with the instance. An entry is a
//! `tokio::sync::OnceCell`: the first evaluation to arrive initialises it and every other one
//! (in the same tree or in a concurrent one) waits for that result instead of recomputing. If the
//! initialising tree is dropped mid-evaluation, `OnceCell` lets one of the waiters take over, so
//! cancellation of one tree never strands another.
//!
//! What makes two evaluations "the same" is the question, the answerer's identity and the
//! *horizon* (remaining depth), never the question alone: the shortest-path and union-find overseers
//! ask, as a guess to check, the very question they are computing, and keying on the horizon
//! guarantees that a node never waits on itself (its descendants have strictly smaller horizons).
//! In exact mode with no explicit depth budget, a well-founded overseer's answer does not depend on
//! depth, so the horizon is left out and the same subquestion is shared across depths.
//!
//! An answer that depended on budget exhaustion (a node or depth limit, a deadline) is *tainted*
//! by the tree that produced it: other trees ignore it and evaluate for themselves.

use std::hash::BuildHasherDefault;
use std::sync::Arc;

use dashmap::DashMap;
use rustc_hash::FxHasher;
use tokio::sync::OnceCell;

use crate::domain::Domain;

/// Identity of a tree within one process, used to scope tainted memo entries.
pub type TreeId = u64;

pub(crate) struct MemoKey<D: Domain> {
    pub question: D::Question,
    /// Remaining depth, or `None` where the answer cannot depend on it.
    pub horizon: Option<u32>,
    /// The answerer's key (0 when no answerer is involved: exact mode).
    pub answerer: u64,
}

// Written by hand: a derive would demand `D: Hash + Eq` rather than of the question.
impl<D: Domain> PartialEq for MemoKey<D> {
    fn eq(&self, other: &Self) -> bool {
        self.question == other.question
            && self.horizon == other.horizon
            && self.answerer == other.answerer
    }
}

impl<D: Domain> Eq for MemoKey<D> {}

impl<D: Domain> std::hash::Hash for MemoKey<D> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.question.hash(state);
        self.horizon.hash(state);
        self.answerer.hash(state);
    }
}

#[derive(Clone)]
pub(crate) struct Memoed<A> {
    pub answer: Option<A>,
    /// `Some(tree)` if the answer depended on that tree's budget running out.
    pub tainted_by: Option<TreeId>,
}

pub(crate) type Cell<D> = Arc<OnceCell<Memoed<<D as Domain>::Answer>>>;

/// Per-instance memo table (see the module docs).
pub struct Memo<D: Domain> {
    table: DashMap<MemoKey<D>, Cell<D>, BuildHasherDefault<FxHasher>>,
}

impl<D: Domain> Default for Memo<D> {
    fn default() -> Self {
        Self {
            // Few shards: a table serves one instance, and most instances see a few hundred keys.
            table: DashMap::with_capacity_and_hasher_and_shard_amount(0, Default::default(), 8),
        }
    }
}

impl<D: Domain> Memo<D> {
    /// The cell for `key`, created empty if absent.
    pub(crate) fn cell(&self, key: MemoKey<D>) -> Cell<D> {
        if let Some(cell) = self.table.get(&key) {
            return cell.clone();
        }
        self.table.entry(key).or_default().clone()
    }

    /// Number of distinct keys ever entered.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}
