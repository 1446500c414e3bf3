//! A model behind the [`Answerer`] interface: one forward pass per batch, each instance's facts
//! encoded once and kept in an [`EncodingCache`] (the weights of an answerer never change, so
//! neither do the encodings; a new generation gets a new answerer). Inference runs on tokio's blocking pool so that a forward pass
//! never stalls the tasks evaluating trees. libtorch tensors are `Send` but not `Sync`, so the
//! model sits behind a mutex: forward passes on one model are serial, and each uses libtorch's
//! intra-op threads (batching, not concurrency, is the lever).

use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;

use super::cache::{CacheStats, EncodingCache, DEFAULT_BUDGET_BYTES};
use super::Model;
use crate::answerer::{AnswerError, Answerer, AnswererId, Answers, Query};
use crate::domain::Domain;

pub struct ModelAnswerer<D: Domain> {
    served: Arc<Mutex<Served<D>>>,
    id: AnswererId,
    one_by_one: bool,
}

/// The model and the encodings of its instances, locked together: a forward pass needs both.
struct Served<D: Domain> {
    model: Model<D>,
    cache: EncodingCache,
}

impl<D: Domain> ModelAnswerer<D> {
    /// `id` must identify the weights (two answerers with the same key answer alike): a published
    /// generation's is [`AnswererId::model`] (see `generation::LoadedModel::answerer_id`), weights
    /// still in training are [`AnswererId::student`].
    pub fn new(model: Model<D>, id: AnswererId) -> Self {
        Self::with_cache(model, id, DEFAULT_BUDGET_BYTES, Arc::default())
    }

    /// An answerer whose encoding cache holds at most `cache_bytes` (0: none is kept) and counts
    /// into `stats`.
    pub fn with_cache(
        model: Model<D>,
        id: AnswererId,
        cache_bytes: usize,
        stats: Arc<CacheStats>,
    ) -> Self {
        let cache = EncodingCache::with_stats(cache_bytes, stats);
        Self {
            served: Arc::new(Mutex::new(Served { model, cache })),
            id,
            one_by_one: false,
        }
    }

    /// Answers each query of a batch in a forward pass of its own. Slower, but a query's answer
    /// then cannot depend on which other queries shared its batch (matrix kernels may sum in
    /// another order for another batch shape, and a near tie may flip), so a run that batches by
    /// timing still computes the same answers: what a reproducible training run needs.
    pub fn one_by_one(self) -> Self {
        Self {
            one_by_one: true,
            ..self
        }
    }
}

impl<D: Domain + Clone> Answerer<D> for ModelAnswerer<D> {
    fn id(&self) -> AnswererId {
        self.id.clone()
    }

    fn answer(&self, batch: Vec<Query<D>>) -> BoxFuture<'_, Answers<D::Answer>> {
        let served = self.served.clone();
        let one_by_one = self.one_by_one;
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let queries: Vec<_> = batch.iter().map(|q| (&q.instance, &q.question)).collect();
                let mut served = served.lock().unwrap_or_else(|p| p.into_inner());
                let Served { model, cache } = &mut *served;
                if one_by_one {
                    queries
                        .iter()
                        .flat_map(|q| model.predict_cached(&[*q], cache))
                        .collect()
                } else {
                    model.predict_cached(&queries, cache)
                }
            })
            .await
            .map(Ok)
            .unwrap_or_else(|e| {
                Err(AnswerError::Internal(format!(
                    "model inference failed: {e}"
                )))
            })
        })
    }
}
