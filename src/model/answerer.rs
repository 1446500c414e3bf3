//! A model behind the [`Answerer`] interface: one forward pass per batch, facts encoded once per
//! distinct instance in the batch. Inference runs on tokio's blocking pool so that a forward pass
//! never stalls the tasks evaluating trees. libtorch tensors are `Send` but not `Sync`, so the
//! model sits behind a mutex: forward passes on one model are serial, and each uses libtorch's
//! intra-op threads (batching, not concurrency, is the lever).

use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;

use super::Model;
use crate::answerer::{AnswerError, Answerer, AnswererId, Answers, Query};
use crate::domain::Domain;

pub struct ModelAnswerer<D: Domain> {
    model: Arc<Mutex<Model<D>>>,
    id: AnswererId,
    one_by_one: bool,
}

impl<D: Domain> ModelAnswerer<D> {
    /// `id` must identify the weights (two answerers with the same key answer alike): a published
    /// generation's is [`AnswererId::model`] (see `generation::LoadedModel::answerer_id`), weights
    /// still in training are [`AnswererId::student`].
    pub fn new(model: Model<D>, id: AnswererId) -> Self {
        Self {
            model: Arc::new(Mutex::new(model)),
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

    /// The model, for callers that need it directly (evaluation, saving).
    pub fn model(&self) -> &Arc<Mutex<Model<D>>> {
        &self.model
    }
}

impl<D: Domain + Clone> Answerer<D> for ModelAnswerer<D> {
    fn id(&self) -> AnswererId {
        self.id.clone()
    }

    fn answer(&self, batch: Vec<Query<D>>) -> BoxFuture<'_, Answers<D::Answer>> {
        let model = self.model.clone();
        let one_by_one = self.one_by_one;
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let queries: Vec<_> = batch.iter().map(|q| (&q.instance, &q.question)).collect();
                let model = model.lock().unwrap_or_else(|p| p.into_inner());
                if one_by_one {
                    queries.iter().flat_map(|q| model.predict(&[*q])).collect()
                } else {
                    model.predict(&queries)
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
