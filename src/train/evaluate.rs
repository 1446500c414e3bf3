//! Held-out evaluation, the one step of a round that reads the ground truth: the student's
//! accuracy at the round's stage (what the gate and the curriculum judge), at the target size (what
//! the run is for, per difficulty bucket), and of Amplify(H, student); and the accuracy of X_n it
//! is gated against.
//!
//! Held-out instances come from seeds no training instance uses (see [`HELDOUT_SEED_BASE`]), and
//! each size's set is the same every round and on every resume, so rounds are compared on the same
//! questions.

use std::collections::hash_map::{Entry, HashMap};
use std::sync::Arc;

use super::amplify;
use super::config::{HELDOUT_PER_INSTANCE, HELDOUT_SEED_BASE};
use super::decide::{self, Stage};
use super::{Run, TrainError};
use crate::answerer::batched::BatchedAnswerer;
use crate::answerer::{Answerer, AnswererId};
use crate::domain::Domain;
use crate::eval::{Budget, EvalOptions, Evaluator, Mode};
use crate::model::answerer::ModelAnswerer;
use crate::model::distill::{self, Accuracy, Example};
use crate::model::generation;
use crate::model::Model;

/// The held-out sets of one `train` call, and the accuracies of promoted generations on them.
pub(super) struct HeldOut<D: Domain> {
    /// At the target size.
    target: Vec<Example<D>>,
    /// At each curriculum size met so far (made on first use).
    by_size: HashMap<usize, Vec<Example<D>>>,
    /// Accuracy of a promoted generation at a stage. X_n's accuracy at a stage changes only with
    /// the stage or a promotion, so it is loaded and evaluated once per (generation, stage), not
    /// every round.
    reference: HashMap<(u64, Stage), f64>,
}

impl<D: Domain> HeldOut<D> {
    pub(super) fn new(target: Vec<Example<D>>) -> Self {
        Self {
            target,
            by_size: HashMap::new(),
            reference: HashMap::new(),
        }
    }
}

/// The student's held-out results in one round.
pub(super) struct Evaluation {
    /// At the round's stage.
    pub accuracy: f64,
    /// The hardest held-out difficulty at the round's size (where the difficulty cap stops).
    pub hardest: u32,
    /// At the target size.
    pub at_target: Accuracy,
    /// Of Amplify(H, student) at the target size (NaN without questions).
    pub amplified_target: f64,
}

impl<D: Domain + Copy> Run<D> {
    /// Held-out examples at `size` (ground truth: evaluation only).
    pub(super) fn heldout(&self, size: usize) -> Result<Vec<Example<D>>, TrainError> {
        let instances = self.config.heldout.div_ceil(HELDOUT_PER_INSTANCE);
        let mut examples = distill::supervised_examples(
            &self.domain,
            size,
            HELDOUT_SEED_BASE + ((size as u64) << 32) + self.config.seed,
            instances,
            HELDOUT_PER_INSTANCE,
        )
        .map_err(|e| TrainError::Config(e.to_string()))?;
        examples.truncate(self.config.heldout);
        Ok(examples)
    }

    /// The held-out set at `size`, made on first use.
    fn heldout_at<'h>(
        &self,
        heldout: &'h mut HeldOut<D>,
        size: usize,
    ) -> Result<&'h [Example<D>], TrainError> {
        Ok(match heldout.by_size.entry(size) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(self.heldout(size)?),
        })
    }

    /// Evaluates the student `model` after a round at `stage`.
    pub(super) async fn evaluate(
        &self,
        model: &Model<D>,
        heldout: &mut HeldOut<D>,
        stage: Stage,
    ) -> Result<Evaluation, TrainError> {
        let all = self.heldout_at(heldout, stage.size)?;
        let hardest = all.iter().map(|e| e.difficulty).max().unwrap_or(0);
        let at_stage = decide::stage(all, stage.max_difficulty);
        let accuracy = distill::evaluate(model, &at_stage, 512).fraction();
        let at_target = distill::evaluate(model, &heldout.target, 512);
        let amplified_target = amplified_accuracy(model, &heldout.target).await?;
        Ok(Evaluation {
            accuracy,
            hardest,
            at_target,
            amplified_target,
        })
    }

    /// The accuracy at `stage` of `generation` (X_n, which the student is gated against).
    pub(super) fn reference_accuracy(
        &self,
        heldout: &mut HeldOut<D>,
        generation: u64,
        stage: Stage,
    ) -> Result<f64, TrainError> {
        if let Some(&accuracy) = heldout.reference.get(&(generation, stage)) {
            return Ok(accuracy);
        }
        let reference = generation::load(
            &self.registry,
            Some(generation),
            self.domain,
            crate::model::pick_device(),
        )?;
        let at_stage = decide::stage(self.heldout_at(heldout, stage.size)?, stage.max_difficulty);
        let accuracy = distill::evaluate(&reference.model, &at_stage, 512).fraction();
        heldout.reference.insert((generation, stage), accuracy);
        Ok(accuracy)
    }
}

/// Accuracy of Amplify(H, model) on `examples`, evaluated in this process (evaluation only: it
/// compares with the ground truth).
pub async fn amplified_accuracy<D: Domain + Copy>(
    model: &Model<D>,
    examples: &[Example<D>],
) -> Result<f64, TrainError> {
    if examples.is_empty() {
        return Ok(f64::NAN);
    }
    let copy = model.duplicate()?;
    let answerer: Arc<dyn Answerer<D>> = Arc::new(ModelAnswerer::new(copy, AnswererId::student()));
    let batched = Arc::new(BatchedAnswerer::start(answerer, amplify::local_batching()));
    let domain = *model.domain();
    let evaluator = Evaluator::new(
        domain,
        Some(batched as Arc<dyn Answerer<D>>),
        // The memo is this evaluator's (dropped with it), so this round's student shares answers
        // only among its own trees, never with the next round's.
        EvalOptions {
            memo: true,
            trace: false,
        },
    );
    use futures::StreamExt;
    let correct: usize = futures::stream::iter(examples)
        .map(|e| {
            let evaluator = &evaluator;
            async move {
                let r = evaluator
                    .evaluate(
                        &e.instance,
                        e.question.clone(),
                        Mode::Amplified,
                        Budget::default(),
                    )
                    .await;
                matches!(r, Ok(r) if r.answer.as_ref() == Some(&e.target)) as usize
            }
        })
        .buffer_unordered(512)
        .fold(0, |a, b| async move { a + b })
        .await;
    Ok(correct as f64 / examples.len() as f64)
}
