//! Answerers: anything that answers a batch of (instance, question) pairs.
//!
//! The evaluator asks an answerer at the leaves of a tree (and, in distilled mode, at the root).
//! Implementations: [`Oracle`] (ground truth; tests, evaluation and load tests only, never the
//! product path), a tch model (`model::answerer`), a pool of remote workers (the coordinator's
//! `RemoteAnswerer`), and [`batched::BatchedAnswerer`], a layer over any of them that merges the
//! batches of concurrent callers into one (a worker's calls, the trainer's trees).

pub mod batched;
mod oracle;

use std::fmt;
use std::sync::Arc;

use futures::future::BoxFuture;

use crate::domain::{Domain, Instance};
pub use oracle::Oracle;

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

/// Who an answerer is, for memo keys, traces and provenance: two answerers with the same key must
/// give the same answers (the oracle, or one generation of a model).
///
/// Identities are made by the named constructors below and never parsed from labels. The key
/// space is divided once, here:
///
/// | key | who |
/// |---|---|
/// | 0 | nobody: no answerer is involved (exact mode); the evaluator uses it, no answerer has it |
/// | 1 | [`AnswererId::not_loaded`]: a worker that has no model yet (answers nothing) |
/// | 2 | [`AnswererId::no_workers`]: a remote pool with no worker serving the domain |
/// | 3 ..= 2^64-3 | [`AnswererId::model`] (from the weights' hash) and [`AnswererId::mixed`] |
/// | 2^64-2 | [`AnswererId::student`]: weights in training, published by nobody yet |
/// | 2^64-1 | [`AnswererId::oracle`]: the ground truth |
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AnswererId {
    key: u64,
    /// Human-readable label for traces: "oracle", "model g3".
    label: Arc<str>,
    /// The generation, when the answerer is one generation of a model.
    generation: Option<u64>,
}

impl AnswererId {
    /// The key the evaluator uses where no answerer is involved.
    pub const NONE_KEY: u64 = 0;
    const NOT_LOADED_KEY: u64 = 1;
    const NO_WORKERS_KEY: u64 = 2;
    const FIRST_HASHED_KEY: u64 = 3;
    const STUDENT_KEY: u64 = u64::MAX - 1;
    const ORACLE_KEY: u64 = u64::MAX;

    /// The ground truth.
    pub fn oracle() -> Self {
        static ID: std::sync::OnceLock<AnswererId> = std::sync::OnceLock::new();
        ID.get_or_init(|| Self::reserved(Self::ORACLE_KEY, "oracle"))
            .clone()
    }

    /// A worker that has not loaded a model yet.
    pub fn not_loaded() -> Self {
        Self::reserved(Self::NOT_LOADED_KEY, "none")
    }

    /// A remote pool in which no worker serves the domain.
    pub fn no_workers() -> Self {
        Self::reserved(Self::NO_WORKERS_KEY, "remote (no workers)")
    }

    /// Weights being trained (the trainer's student), which no generation has published yet.
    pub fn student() -> Self {
        Self::reserved(Self::STUDENT_KEY, "student")
    }

    /// Generation `generation` of a model, whose weights hash to `weights_sha256` (hex): the key
    /// comes from the hash, so two workers serving the same weights share memo entries and any
    /// change of weights changes the key.
    pub fn model(generation: u64, weights_sha256: &str) -> Self {
        let prefix = weights_sha256.get(..16).unwrap_or(weights_sha256);
        let mut bytes = [0u8; 8];
        if let Ok(raw) = hex::decode(prefix) {
            let n = raw.len().min(8);
            bytes[..n].copy_from_slice(&raw[..n]);
        }
        Self {
            key: Self::hashed(u64::from_le_bytes(bytes)),
            label: Arc::from(format!("model g{generation}")),
            generation: Some(generation),
        }
    }

    /// Several answerers at once (workers on different generations during a rollout): a key of
    /// its own, shared with none of them, so memo entries made by one are never served as another's.
    pub fn mixed(ids: &[AnswererId]) -> Self {
        let mut keys: Vec<u64> = ids.iter().map(|id| id.key).collect();
        keys.sort_unstable();
        keys.dedup();
        let hash = keys.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, k| {
            (h ^ k).wrapping_mul(0x100_0000_01b3)
        });
        Self {
            key: Self::hashed(hash),
            label: Arc::from("mixed generations"),
            generation: None,
        }
    }

    /// An answerer outside the roles above (a test fixture, a wrapper with answers of its own):
    /// `seed` is mapped into the hashed range, away from every reserved key.
    pub fn custom(seed: u64, label: &str) -> Self {
        Self {
            key: Self::hashed(seed),
            label: Arc::from(label),
            generation: None,
        }
    }

    /// Rebuilds an identity received from another process (a worker's `ModelInfo`), keeping its
    /// key as sent: keys are the worker's to define. `None` for key 0, which no answerer has.
    pub fn from_parts(key: u64, label: &str, generation: Option<u64>) -> Option<Self> {
        (key != Self::NONE_KEY).then(|| Self {
            key,
            label: Arc::from(label),
            generation,
        })
    }

    fn reserved(key: u64, label: &str) -> Self {
        Self {
            key,
            label: Arc::from(label),
            generation: None,
        }
    }

    fn hashed(seed: u64) -> u64 {
        seed.clamp(Self::FIRST_HASHED_KEY, Self::STUDENT_KEY - 1)
    }

    /// Stable numeric identity: equal keys give equal answers.
    pub fn key(&self) -> u64 {
        self.key
    }

    pub fn label(&self) -> &Arc<str> {
        &self.label
    }

    /// The model generation, if this is one.
    pub fn generation(&self) -> Option<u64> {
        self.generation
    }

    pub fn is_oracle(&self) -> bool {
        self.key == Self::ORACLE_KEY
    }
}

impl fmt::Display for AnswererId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label)
    }
}

/// Why an answerer could not answer a batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    /// Not able to answer now (no model loaded, no worker reachable, shutting down): try again
    /// elsewhere or later.
    #[error("answerer unavailable: {0}")]
    Unavailable(String),
    /// A bounded queue is full: try again later.
    #[error("answerer overloaded: {0}")]
    Overloaded(String),
    /// The batch itself is wrong (a question the answerer cannot take): retrying will not help.
    #[error("answerer rejected the batch: {0}")]
    Rejected(String),
    /// A bug or an unexpected failure inside the answerer.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_keys_are_never_hashed_into() {
        for seed in [0, 1, 2, 3, u64::MAX - 1, u64::MAX] {
            let k = AnswererId::custom(seed, "x").key();
            assert!((3..u64::MAX - 1).contains(&k), "{seed} -> {k}");
        }
        let reserved = [
            AnswererId::not_loaded().key(),
            AnswererId::no_workers().key(),
            AnswererId::student().key(),
            AnswererId::oracle().key(),
        ];
        assert_eq!(reserved, [1, 2, u64::MAX - 1, u64::MAX]);
        assert!(AnswererId::oracle().is_oracle());
        assert!(AnswererId::from_parts(0, "nobody", None).is_none());
    }

    #[test]
    fn a_model_is_identified_by_its_weights_and_carries_its_generation() {
        let a = AnswererId::model(3, "00112233445566778899");
        let b = AnswererId::model(3, "00112233445566778899");
        let c = AnswererId::model(3, "ff112233445566778899");
        assert_eq!(a, b);
        assert_ne!(a.key(), c.key());
        assert_eq!(a.generation(), Some(3));
        assert_eq!(&**a.label(), "model g3");
        // A malformed hash still yields a key in the model range.
        assert!(AnswererId::model(1, "zz").key() >= 3);
        let mixed = AnswererId::mixed(&[a.clone(), c.clone()]);
        assert_ne!(mixed.key(), a.key());
        assert_ne!(mixed.key(), c.key());
        assert_eq!(mixed, AnswererId::mixed(&[c, a]));
        assert_eq!(mixed.generation(), None);
    }
}
