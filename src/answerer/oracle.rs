//! The ground-truth answerer.

use std::time::Duration;

use futures::future::BoxFuture;

use super::{Answerer, AnswererId, Answers, Query};
use crate::domain::Domain;

/// The ground-truth answerer. It exists for tests, evaluation and load tests; training targets must
/// never come from it (except in the explicit supervised baseline).
pub struct Oracle<D: Domain> {
    domain: D,
    delay: Duration,
}

impl<D: Domain> Oracle<D> {
    pub fn new(domain: D) -> Self {
        Self {
            domain,
            delay: Duration::ZERO,
        }
    }

    /// The oracle, answering each batch after `delay` (an oracle worker that simulates a
    /// model's latency, for load and cancellation tests).
    pub fn with_delay(domain: D, delay: Duration) -> Self {
        Self { domain, delay }
    }
}

impl<D: Domain> Answerer<D> for Oracle<D> {
    fn id(&self) -> AnswererId {
        AnswererId::oracle()
    }

    fn answer(&self, batch: Vec<Query<D>>) -> BoxFuture<'_, Answers<D::Answer>> {
        let truth = move || {
            Ok(batch
                .iter()
                .map(|q| Some(self.domain.truth(q.instance.facts(), &q.question)))
                .collect())
        };
        if self.delay.is_zero() {
            return Box::pin(std::future::ready(truth()));
        }
        Box::pin(async move {
            tokio::time::sleep(self.delay).await;
            truth()
        })
    }
}
