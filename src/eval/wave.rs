//! Leaves a wave at a time: a tree's leaf questions wait in its [`Leaves`] until a walk of the tree
//! has reached every leaf it can, then go to the answerer as one batch; the tree is walked again
//! once the batch's answers are all in place (see `TreeState::drive` and the module docs of
//! `eval`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;

use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use futures::task::AtomicWaker;

use super::trace::{AnsweredBy, Exhausted};
use super::{NodeOutcome, TreeState};
use crate::answerer::{AnswerError, Answers, Query};
use crate::domain::Domain;

/// The leaves of one tree: questions asked and not yet sent, and answers not yet taken.
pub(super) struct Leaves<D: Domain> {
    /// Asked since the last batch was sent: the questions of the last `asked.len()` slots.
    asked: Vec<Query<D>>,
    /// Answers by slot; `None` until the answer arrives, and again once the leaf has taken it.
    slots: Vec<Option<Result<Option<D::Answer>, AnswerError>>>,
}

impl<D: Domain> Default for Leaves<D> {
    fn default() -> Self {
        Self {
            asked: Vec::new(),
            slots: Vec::new(),
        }
    }
}

/// Wakes a tree's task on behalf of the tree itself (a memo entry it waits on, a timer, a message),
/// and records that it did, so that the driver knows the tree needs a walk.
struct TreeWake {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl futures::task::ArcWake for TreeWake {
    fn wake_by_ref(this: &Arc<Self>) {
        this.woken.store(true, Ordering::Release);
        this.task.wake();
    }
}

/// A batch of one tree's leaves on its way through the answerer: its first slot and its answers.
type LeafBatch<'a, A> = BoxFuture<'a, (usize, usize, Answers<A>)>;

impl<D: Domain> TreeState<D> {
    pub(super) async fn leaf(
        &self,
        question: &D::Question,
        exhausted: Option<Exhausted>,
    ) -> NodeOutcome<D::Answer> {
        if self.answerer.is_none() {
            self.exhaust(Exhausted::AnswererFailed);
            return (None, AnsweredBy::Nobody, Some(Exhausted::AnswererFailed));
        }
        super::bump(&self.answerer_queries);
        let slot = {
            let mut leaves = self.lock_leaves();
            leaves.asked.push(Query {
                instance: self.instance.clone(),
                question: question.clone(),
            });
            leaves.slots.push(None);
            leaves.slots.len() - 1
        };
        // No waker is registered: `drive` polls the tree again after every batch it delivers.
        let answer = std::future::poll_fn(|_| match self.lock_leaves().slots[slot].take() {
            Some(answer) => Poll::Ready(answer),
            None => Poll::Pending,
        })
        .await;
        match answer {
            Ok(answer) => (answer, AnsweredBy::Answerer, exhausted),
            Err(error) => {
                tracing::debug!(%error, "answerer failed; node is unknown");
                self.exhaust(Exhausted::AnswererFailed);
                (None, AnsweredBy::Nobody, Some(Exhausted::AnswererFailed))
            }
        }
    }

    fn lock_leaves(&self) -> std::sync::MutexGuard<'_, Leaves<D>> {
        self.leaves.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs the tree rooted at `root`, sending its leaves to the answerer a wave at a time.
    ///
    /// One pass over the tree reaches every leaf it can before anything is answered; those leaves
    /// go to the answerer as one batch, and when the batch's answers arrive they are all put in
    /// place before the tree is walked again. A tree whose leaves fan out costs one answerer call
    /// and one walk per wave instead of one call per leaf and one walk per answer (a remote
    /// answer wakes the tree's task; a join re-polls every pending node under it).
    pub(super) async fn drive<'a>(
        &'a self,
        root: BoxFuture<'a, Option<D::Answer>>,
    ) -> Option<D::Answer> {
        let mut root = root;
        let mut batches: FuturesUnordered<LeafBatch<'a, D::Answer>> = FuturesUnordered::new();
        // The tree is polled with its own waker, so a wake from an answerer call in flight (which
        // may wake the task many times before its answers are complete) does not walk the tree.
        let tree_wake = Arc::new(TreeWake {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        let tree_waker = futures::task::waker(tree_wake.clone());
        std::future::poll_fn(move |cx| {
            tree_wake.task.register(cx.waker());
            loop {
                let mut walk = tree_wake.woken.swap(false, Ordering::AcqRel);
                while let Poll::Ready(Some((first, n, answers))) = batches.poll_next_unpin(cx) {
                    self.deliver(first, n, answers);
                    walk = true;
                }
                if !walk {
                    return Poll::Pending;
                }
                let mut tree_cx = std::task::Context::from_waker(&tree_waker);
                self.walked();
                if let Poll::Ready(answer) = root.as_mut().poll(&mut tree_cx) {
                    return Poll::Ready(answer);
                }
                let (first, asked) = {
                    let mut leaves = self.lock_leaves();
                    let asked = std::mem::take(&mut leaves.asked);
                    (leaves.slots.len() - asked.len(), asked)
                };
                if asked.is_empty() {
                    return Poll::Pending;
                }
                let n = asked.len();
                match self.answerer.clone() {
                    Some(answerer) => {
                        let mut batch: LeafBatch<'a, D::Answer> =
                            Box::pin(async move { (first, n, answerer.answer(asked).await) });
                        // An in-process answerer is often ready at once: then the batch never
                        // needs a place among those in flight.
                        match batch.as_mut().poll(cx) {
                            Poll::Ready((first, n, answers)) => {
                                self.deliver(first, n, answers);
                                tree_wake.woken.store(true, Ordering::Release);
                            }
                            Poll::Pending => batches.push(batch),
                        }
                    }
                    // `leaf` asks only when there is an answerer; this keeps the books straight.
                    None => {
                        let error = AnswerError::Unavailable("no answerer".to_string());
                        self.deliver(first, n, Err(error));
                        tree_wake.woken.store(true, Ordering::Release);
                    }
                }
            }
        })
        .await
    }

    /// Puts a batch's answers in their leaves' slots.
    fn deliver(&self, first: usize, n: usize, answers: Answers<D::Answer>) {
        let mut leaves = self.lock_leaves();
        let slots = &mut leaves.slots[first..first + n];
        match answers {
            Ok(answers) if answers.len() == n => {
                for (slot, answer) in slots.iter_mut().zip(answers) {
                    *slot = Some(Ok(answer));
                }
            }
            Ok(answers) => {
                tracing::warn!(
                    asked = n,
                    got = answers.len(),
                    "answerer returned the wrong number of answers"
                );
                let error = AnswerError::Internal(format!(
                    "answerer returned {} answers for {n} questions",
                    answers.len()
                ));
                slots.fill_with(|| Some(Err(error.clone())));
            }
            Err(error) => slots.fill_with(|| Some(Err(error.clone()))),
        }
    }
}
