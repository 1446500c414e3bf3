//! Imitation learning: the model learns to give the target answer to (instance, question) pairs.
//!
//! The same code path serves distillation (targets are amplified answers, produced by the
//! evaluator from H and the previous generation) and the supervised baseline (targets are the
//! ground truth; [`supervised_examples`]). Training draws minibatches uniformly from a replay
//! window of the newest examples, with Adam and gradient-norm clipping; held-out accuracy is
//! reported per difficulty bucket.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tch::nn::{self, OptimizerConfig};
use tch::{Kind, Tensor};

use super::{Model, ModelError};
use crate::domain::{Domain, DomainError, Instance};
use crate::rng::Rng;

/// One training or evaluation example.
pub struct Example<D: Domain> {
    pub instance: Arc<Instance<D>>,
    pub question: D::Question,
    pub target: D::Answer,
    /// The domain's difficulty of the question, for per-bucket accuracy.
    pub difficulty: u32,
}

impl<D: Domain> Clone for Example<D> {
    fn clone(&self) -> Self {
        Self {
            instance: self.instance.clone(),
            question: self.question.clone(),
            target: self.target.clone(),
            difficulty: self.difficulty,
        }
    }
}

/// Optimisation settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub learning_rate: f64,
    pub batch_size: usize,
    /// Gradients are rescaled to at most this global norm.
    pub grad_clip: f64,
    /// Minibatches are drawn from the newest this-many examples.
    pub replay_window: usize,
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            learning_rate: 1e-3,
            batch_size: 64,
            grad_clip: 1.0,
            replay_window: 50_000,
            seed: 0,
        }
    }
}

/// The newest examples, bounded by the replay window.
pub struct ReplayBuffer<D: Domain> {
    examples: VecDeque<Example<D>>,
    capacity: usize,
}

impl<D: Domain> ReplayBuffer<D> {
    pub fn new(capacity: usize) -> Self {
        Self {
            examples: VecDeque::with_capacity(capacity.min(1 << 16)),
            capacity: capacity.max(1),
        }
    }

    pub fn extend(&mut self, examples: impl IntoIterator<Item = Example<D>>) {
        for e in examples {
            if self.examples.len() == self.capacity {
                self.examples.pop_front();
            }
            self.examples.push_back(e);
        }
    }

    pub fn len(&self) -> usize {
        self.examples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }

    fn sample<'a>(&'a self, rng: &mut Rng, n: usize) -> Vec<&'a Example<D>> {
        (0..n)
            .map(|_| &self.examples[rng.below(self.examples.len())])
            .collect()
    }
}

/// A model and its optimiser.
pub struct Trainer<D: Domain> {
    model: Model<D>,
    optimizer: nn::Optimizer,
    config: TrainConfig,
    rng: Rng,
    steps: u64,
}

impl<D: Domain> Trainer<D> {
    pub fn new(model: Model<D>, config: TrainConfig) -> Result<Self, ModelError> {
        let positive = |x: f64| x.is_finite() && x > 0.0;
        if config.batch_size == 0 || !positive(config.learning_rate) || !positive(config.grad_clip)
        {
            return Err(ModelError::Config(format!(
                "batch size, learning rate and gradient clip must be positive: {config:?}"
            )));
        }
        let optimizer = nn::Adam::default().build(model.var_store(), config.learning_rate)?;
        Ok(Self {
            rng: Rng::derived(config.seed, 0x7a1),
            model,
            optimizer,
            config,
            steps: 0,
        })
    }

    pub fn model(&self) -> &Model<D> {
        &self.model
    }

    pub fn into_model(self) -> Model<D> {
        self.model
    }

    /// Optimiser steps taken so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// One optimiser step on `batch`; returns the loss.
    pub fn step(&mut self, batch: &[&Example<D>]) -> f64 {
        let queries: Vec<_> = batch.iter().map(|e| (&e.instance, &e.question)).collect();
        let encoded = self.model.encode(&queries);
        let targets: Vec<i64> = batch
            .iter()
            .map(|e| self.model.domain().answer_class(&e.target) as i64)
            .collect();
        let targets = Tensor::from_slice(&targets).to_device(self.model.device());
        let loss = self
            .model
            .logits(&encoded)
            .cross_entropy_for_logits(&targets);
        self.optimizer
            .backward_step_clip_norm(&loss, self.config.grad_clip);
        self.steps += 1;
        loss.double_value(&[])
    }

    /// `steps` optimiser steps on minibatches drawn from `replay`; returns the mean loss.
    pub fn train(&mut self, replay: &ReplayBuffer<D>, steps: usize) -> f64 {
        if replay.is_empty() || steps == 0 {
            return f64::NAN;
        }
        let mut total = 0.0;
        for _ in 0..steps {
            let mut rng = self.rng.clone();
            let batch = replay.sample(&mut rng, self.config.batch_size);
            self.rng = rng;
            total += self.step(&batch);
        }
        total / steps as f64
    }
}

/// Accuracy overall and per difficulty bucket.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Accuracy {
    pub correct: usize,
    pub total: usize,
    /// difficulty -> (correct, total)
    pub by_difficulty: BTreeMap<u32, (usize, usize)>,
}

impl Accuracy {
    pub fn fraction(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.correct as f64 / self.total as f64
        }
    }

    pub fn record(&mut self, difficulty: u32, correct: bool) {
        self.total += 1;
        self.correct += correct as usize;
        let bucket = self.by_difficulty.entry(difficulty).or_default();
        bucket.1 += 1;
        bucket.0 += correct as usize;
    }
}

/// How often the model's answer equals each example's target, in batches of `batch_size`.
pub fn evaluate<D: Domain>(
    model: &Model<D>,
    examples: &[Example<D>],
    batch_size: usize,
) -> Accuracy {
    let mut acc = Accuracy::default();
    for chunk in examples.chunks(batch_size.max(1)) {
        let queries: Vec<_> = chunk.iter().map(|e| (&e.instance, &e.question)).collect();
        let answers = model.predict(&queries);
        for (e, a) in chunk.iter().zip(answers) {
            acc.record(e.difficulty, a.as_ref() == Some(&e.target));
        }
    }
    acc
}

/// Mean cross-entropy of the model on `examples` (no gradients).
pub fn loss<D: Domain>(model: &Model<D>, examples: &[Example<D>]) -> f64 {
    if examples.is_empty() {
        return f64::NAN;
    }
    tch::no_grad(|| {
        let queries: Vec<_> = examples
            .iter()
            .map(|e| (&e.instance, &e.question))
            .collect();
        let targets: Vec<i64> = examples
            .iter()
            .map(|e| model.domain().answer_class(&e.target) as i64)
            .collect();
        let targets = Tensor::from_slice(&targets).to_device(model.device());
        model
            .logits(&model.encode(&queries))
            .log_softmax(-1, Kind::Float)
            .nll_loss(&targets)
            .double_value(&[])
    })
}

/// Examples whose targets are the ground truth: the supervised baseline's target source, and
/// held-out evaluation sets. `instances` instances of `size` from seeds `first_seed..`, each with
/// `per_instance` sampled questions.
pub fn supervised_examples<D: Domain>(
    domain: &D,
    size: usize,
    first_seed: u64,
    instances: usize,
    per_instance: usize,
) -> Result<Vec<Example<D>>, DomainError> {
    let mut out = Vec::with_capacity(instances * per_instance);
    for seed in first_seed..first_seed + instances as u64 {
        let instance = Instance::generate(domain, size, seed)?;
        let mut rng = Rng::derived(seed, 0xe7a);
        for _ in 0..per_instance {
            let question = domain.sample_question(instance.facts(), &mut rng);
            out.push(Example {
                target: domain.truth(instance.facts(), &question),
                difficulty: domain.difficulty(instance.facts(), &question),
                instance: instance.clone(),
                question,
            });
        }
    }
    Ok(out)
}
