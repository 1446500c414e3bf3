//! The memo: single-flight evaluation of identical subquestions.
//!
//! An [`Evaluator`](crate::eval::Evaluator) keeps one memo table per instance (by content hash) in
//! its [`MemoTables`]: every tree it is running on the same facts shares that table, and the table
//! is freed when the last of those trees finishes. The memo is the evaluator's, not the instance's:
//! an `Instance` is plain data, kept by callers for as long as they like (a training example, a
//! held-out set reused every round), and an evaluator's answers never outlive its trees in it, so
//! one round's answerer cannot leak into the next through instances they share. A slot is either
//! pending
//! (some node is computing it) or done. The first evaluation to arrive claims the slot and computes;
//! every other one, in the same tree or in a concurrent one, waits for that result instead of
//! recomputing. If the computing node is dropped (its tree was cancelled), its claim releases the
//! slot and wakes the waiters, one of which takes over: cancelling one tree never strands another.
//! A waiter list is allocated only when a second evaluation actually waits, so the common case
//! costs one map insert and one store by index.
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
use std::ops::Deref;
use std::sync::{Arc, Weak};

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use dashmap::DashMap;
use rustc_hash::FxHasher;
use tokio::sync::Notify;

use crate::domain::{Domain, InstanceId};

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

impl<D: Domain> Clone for MemoKey<D> {
    fn clone(&self) -> Self {
        Self {
            question: self.question.clone(),
            horizon: self.horizon,
            answerer: self.answerer,
        }
    }
}

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

enum Slot<A> {
    /// Being computed; the `Notify` exists once someone waits.
    Pending(Option<Arc<Notify>>),
    Done(Memoed<A>),
    /// Its computing node was cancelled before finishing: the next evaluation to arrive claims it.
    Released,
}

/// Where a question's slot is in its table (stable for the table's life).
pub(crate) type SlotIx = u32;

/// The outcome of [`Memo::claim`].
pub(crate) enum Claim<'m, D: Domain> {
    /// An identical evaluation has finished (possibly after this call waited for it).
    Hit(Memoed<D::Answer>),
    /// This caller must compute the value and hand it to [`Computing::finish`].
    Compute(Computing<'m, D>),
}

/// The right (and duty) to compute one memo slot. Dropping it unfinished releases the slot.
pub(crate) struct Computing<'m, D: Domain> {
    memo: &'m Memo<D>,
    /// `None` once finished.
    slot: Option<SlotIx>,
}

impl<D: Domain> Computing<'_, D> {
    /// Publishes the value and wakes everyone waiting for it.
    pub fn finish(mut self, value: Memoed<D::Answer>) {
        let Some(slot) = self.slot.take() else { return };
        let previous = std::mem::replace(
            &mut self.memo.lock().slots[slot as usize],
            Slot::Done(value),
        );
        if let Slot::Pending(Some(waiters)) = previous {
            waiters.notify_waiters();
        }
    }
}

impl<D: Domain> Drop for Computing<'_, D> {
    fn drop(&mut self) {
        // Unfinished: the computing node was cancelled. Free the slot for a waiter to claim.
        if let Some(slot) = self.slot.take() {
            let previous =
                std::mem::replace(&mut self.memo.lock().slots[slot as usize], Slot::Released);
            if let Slot::Pending(Some(waiters)) = previous {
                waiters.notify_waiters();
            }
        }
    }
}

/// Slots allocated up front for each instance's table: every tree puts at least its root there,
/// and growing from nothing to a load-test tree's 63 nodes rehashed the table four times.
const MEMO_INITIAL_CAPACITY: usize = 64;

/// Per-instance memo table (see the module docs).
///
/// Questions map to slots in a vector, so that a node looks its question up once (to claim it)
/// and publishes its answer by index, without hashing and probing again: on a table that has gone
/// cold while the node's subtree ran, the second lookup was half of the memo's cost. One lock for
/// the table: it is touched by the few trees about one instance, each holding the lock for a
/// probe or a store, and a plain mutex costs half of a sharded map's locking and hashing.
pub struct Memo<D: Domain> {
    table: Mutex<Table<D>>,
}

struct Table<D: Domain> {
    index: HashMap<MemoKey<D>, SlotIx, BuildHasherDefault<FxHasher>>,
    slots: Vec<Slot<D::Answer>>,
}

impl<D: Domain> Default for Memo<D> {
    fn default() -> Self {
        Self {
            table: Mutex::new(Table {
                index: HashMap::with_capacity_and_hasher(MEMO_INITIAL_CAPACITY, Default::default()),
                slots: Vec::with_capacity(MEMO_INITIAL_CAPACITY),
            }),
        }
    }
}

/// An evaluator's memo tables, one per instance with a tree running on it (see the module docs).
///
/// Keyed by content hash, not by `Arc` identity, so that two requests that carry the same facts
/// (parsed separately, by different clients) share one table.
pub struct MemoTables<D: Domain> {
    tables: DashMap<InstanceId, Weak<Memo<D>>, BuildHasherDefault<FxHasher>>,
}

impl<D: Domain> Default for MemoTables<D> {
    fn default() -> Self {
        Self {
            tables: DashMap::default(),
        }
    }
}

impl<D: Domain> MemoTables<D> {
    /// The table of instance `id`, made if no running tree holds it; held until the lease drops.
    pub fn lease(self: &Arc<Self>, id: InstanceId) -> MemoLease<D> {
        let memo = {
            let mut entry = self.tables.entry(id).or_default();
            match entry.upgrade() {
                Some(memo) => memo,
                None => {
                    let memo = Arc::new(Memo::default());
                    *entry = Arc::downgrade(&memo);
                    memo
                }
            }
        };
        MemoLease {
            tables: self.clone(),
            id,
            memo: Some(memo),
        }
    }

    /// Instances with a live table.
    pub fn len(&self) -> usize {
        self.tables.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }
}

/// One tree's hold on its instance's memo table. The last lease of a table removes it.
pub struct MemoLease<D: Domain> {
    tables: Arc<MemoTables<D>>,
    id: InstanceId,
    memo: Option<Arc<Memo<D>>>,
}

impl<D: Domain> Deref for MemoLease<D> {
    type Target = Memo<D>;

    fn deref(&self) -> &Memo<D> {
        self.memo
            .as_deref()
            .expect("a lease holds its table until dropped")
    }
}

impl<D: Domain> Drop for MemoLease<D> {
    fn drop(&mut self) {
        drop(self.memo.take());
        // Removed only if no tree holds it any more: a tree that leased it in the meantime keeps
        // it (and if one leases it after this, it makes a fresh one).
        self.tables
            .tables
            .remove_if(&self.id, |_, table| table.strong_count() == 0);
    }
}

impl<D: Domain> Memo<D> {
    fn lock(&self) -> MutexGuard<'_, Table<D>> {
        // A panic cannot leave a table half-updated: every change is one store.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Without waiting: the finished value for `key`, or the claim to compute it; `Err(slot)` if
    /// it is being computed (then [`Memo::claim`] waits for it).
    pub(crate) fn try_claim(&self, key: MemoKey<D>) -> Result<Claim<'_, D>, SlotIx> {
        let mut guard = self.lock();
        let table = &mut *guard;
        let slot = match table.index.entry(key) {
            Entry::Vacant(vacant) => {
                let slot = SlotIx::try_from(table.slots.len())
                    .expect("a table runs out of memory long before 2^32 slots");
                table.slots.push(Slot::Pending(None));
                vacant.insert(slot);
                return Ok(Claim::Compute(Computing {
                    memo: self,
                    slot: Some(slot),
                }));
            }
            Entry::Occupied(occupied) => *occupied.get(),
        };
        self.arrive(table, slot).ok_or(slot)
    }

    /// What an evaluation arriving at an existing slot gets without waiting: the value, or the
    /// claim of a slot whose computing node was cancelled; `None` while it is being computed.
    fn arrive(&self, table: &mut Table<D>, slot: SlotIx) -> Option<Claim<'_, D>> {
        let s = &mut table.slots[slot as usize];
        match s {
            Slot::Done(m) => Some(Claim::Hit(m.clone())),
            Slot::Released => {
                *s = Slot::Pending(None);
                Some(Claim::Compute(Computing {
                    memo: self,
                    slot: Some(slot),
                }))
            }
            Slot::Pending(_) => None,
        }
    }

    /// Returns the finished value of `slot`, waiting while it is being computed, or the claim to
    /// compute it (if its computing node was cancelled).
    pub(crate) async fn claim(&self, slot: SlotIx) -> Claim<'_, D> {
        loop {
            let waiter: Arc<Notify>;
            // The `Notified` is made while the lock is held: tokio counts every `notify_waiters`
            // from the moment a `Notified` exists. Made after the lock was released, it could
            // miss the wake-up of a computing node cancelled in between, while another evaluation
            // took the released slot over, leaving this one waiting on a `Notify` that nobody
            // would touch again.
            let notified = {
                let mut table = self.lock();
                match &mut table.slots[slot as usize] {
                    Slot::Pending(w) => waiter = w.get_or_insert_with(Default::default).clone(),
                    _ => match self.arrive(&mut table, slot) {
                        Some(claim) => return claim,
                        None => continue,
                    },
                }
                waiter.notified()
            };
            notified.await;
        }
    }

    /// Number of slots (finished or in flight).
    pub fn len(&self) -> usize {
        self.lock().index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
