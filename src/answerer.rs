//! Answerers: anything that answers a batch of (instance, question) pairs.
//!
//! The evaluator asks an answerer at the leaves of a tree (and, in distilled mode, at the root).
//! Implementations: [`Oracle`] (ground truth; tests, evaluation and load tests only, never the
//! product path), a tch model (see the model module), a pool of remote workers (the coordinator).

use std::fmt;
use std::sync::Arc;

use futures::future::BoxFuture;

use crate::domain::{Domain, Instance};

/// One question about one instance, as an answerer receives it.
pub struct Query<D: Domain> {
    pub instance: Arc<Instance<D>>,
    pub question: D::Question,
}

impl<D: Domain> Clone for Query<D> {
    fn clone(&self) -> Self {
        Self {
            instance: self.instance.clone(),
            question: self.question.clone(),
        }
    }
}

impl<D: Domain> fmt::Debug for Query<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Query")
            .field("instance", &self.instance.id())
            .field("question", &self.question)
            .finish()
    }
}

/// Who an answerer is, for memo keys and traces: two answerers with the same key must give the same
/// answers (the oracle, or one generation of a model).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AnswererId {
    /// Stable numeric identity (0 is reserved for "no answerer").
    pub key: u64,
    /// Human-readable label for traces: "oracle", "model g3".
    pub label: Arc<str>,
}

impl AnswererId {
    pub const ORACLE_KEY: u64 = u64::MAX;

    pub fn oracle() -> Self {
        static LABEL: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
        Self {
            key: Self::ORACLE_KEY,
            label: LABEL.get_or_init(|| Arc::from("oracle")).clone(),
        }
    }
}

/// Why an answerer could not answer a batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    #[error("answerer unavailable: {0}")]
    Unavailable(String),
    #[error("answerer overloaded: {0}")]
    Overloaded(String),
    #[error("answerer rejected the batch: {0}")]
    Rejected(String),
    #[error("answerer failed: {0}")]
    Internal(String),
}

/// Answers of one batch, in order; `None` is "unknown".
pub type Answers<A> = Result<Vec<Option<A>>, AnswerError>;

/// Answers batches of (instance, question) pairs.
pub trait Answerer<D: Domain>: Send + Sync + 'static {
    fn id(&self) -> AnswererId;

    /// Answers every query of `batch`, in order. Implementations batch internally where that pays
    /// (one forward pass per batch, one RPC per worker). The batch is theirs: answerers that hand
    /// it to another task or thread (a worker pool, a model on a blocking thread) move it there.
    fn answer(&self, batch: Vec<Query<D>>) -> BoxFuture<'_, Answers<D::Answer>>;
}

/// The ground-truth answerer. It exists for tests, evaluation and load tests; training targets must
/// never come from it (except in the explicit supervised baseline).
pub struct Oracle<D: Domain> {
    domain: D,
}

impl<D: Domain> Oracle<D> {
    pub fn new(domain: D) -> Self {
        Self { domain }
    }
}

impl<D: Domain> Answerer<D> for Oracle<D> {
    fn id(&self) -> AnswererId {
        AnswererId::oracle()
    }

    fn answer(&self, batch: Vec<Query<D>>) -> BoxFuture<'_, Answers<D::Answer>> {
        let answers = batch
            .iter()
            .map(|q| Some(self.domain.truth(q.instance.facts(), &q.question)))
            .collect();
        Box::pin(std::future::ready(Ok(answers)))
    }
}
