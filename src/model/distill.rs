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
use tch::nn;
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
    /// The teacher is an exponential moving average of the student whose horizon ramps up with
    /// the steps taken, to at most this many steps (the paper uses 1000); 0 makes the teacher the
    /// student itself.
    pub ema_horizon: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            learning_rate: 1e-3,
            batch_size: 64,
            grad_clip: 1.0,
            replay_window: 50_000,
            seed: 0,
            ema_horizon: 0,
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

/// Adam (Kingma and Ba; PyTorch's defaults: β = (0.9, 0.999), ε = 1e-8, no weight decay), kept
/// here rather than in libtorch's optimiser so that its moment estimates can be saved with a run
/// and restored: a resumed run then continues exactly as it would have.
struct Adam {
    /// The student's trainable variables, by name (sorted), and their moments.
    names: Vec<String>,
    params: Vec<Tensor>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
}

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPSILON: f64 = 1e-8;

impl Adam {
    fn new(vs: &nn::VarStore) -> Self {
        let mut named: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let zeros = |named: &[(String, Tensor)]| -> Vec<Tensor> {
            named.iter().map(|(_, t)| t.zeros_like()).collect()
        };
        Self {
            m: zeros(&named),
            v: zeros(&named),
            names: named.iter().map(|(n, _)| n.clone()).collect(),
            params: named.into_iter().map(|(_, t)| t).collect(),
        }
    }

    fn zero_grad(&mut self) {
        for p in &mut self.params {
            p.zero_grad();
        }
    }

    /// Rescales the gradients to a global norm of at most `max`.
    fn clip(&self, max: f64) {
        tch::no_grad(|| {
            let norms: Vec<Tensor> = self
                .params
                .iter()
                .map(|p| p.grad())
                .filter(Tensor::defined)
                .map(|g| g.norm())
                .collect();
            if norms.is_empty() {
                return;
            }
            let total = Tensor::stack(&norms, 0).norm().double_value(&[]);
            let coefficient = max / (total + 1e-6);
            if coefficient < 1.0 {
                for p in &self.params {
                    let mut g = p.grad();
                    if g.defined() {
                        let _ = g.g_mul_scalar_(coefficient);
                    }
                }
            }
        })
    }

    /// Step `t` (counting from 1) with learning rate `lr`.
    fn step(&mut self, t: u64, lr: f64) {
        let bias1 = 1.0 - BETA1.powi(t as i32);
        let bias2 = 1.0 - BETA2.powi(t as i32);
        tch::no_grad(|| {
            for ((p, m), v) in self.params.iter_mut().zip(&mut self.m).zip(&mut self.v) {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let _ = m.lerp_(&g, 1.0 - BETA1);
                let _ = v.g_mul_scalar_(BETA2).addcmul_(&g, &(&g * (1.0 - BETA2)));
                let denominator = v.sqrt() / bias2.sqrt() + EPSILON;
                let _ = p.addcdiv_(&(&*m * (-lr / bias1)), &denominator);
            }
        })
    }
}

/// A student, its optimiser, and (with an EMA horizon) its teacher.
///
/// The teacher is what the run publishes and serves: an exponential moving average of the
/// student's weights, `teacher += (student - teacher) / min(steps, horizon)`, so at first the
/// plain average of every student so far, later of about the last `horizon` steps. It smooths the
/// noise of the last minibatches out of the model that amplifies (the paper's choice).
pub struct Trainer<D: Domain> {
    model: Model<D>,
    teacher: Option<Model<D>>,
    adam: Adam,
    config: TrainConfig,
    rng: Rng,
    steps: u64,
}

/// Everything a [`Trainer`] carries from one step to the next besides its weights' values: what
/// a checkpoint stores so that a resumed run continues exactly.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrainerCounters {
    /// Optimiser steps taken.
    pub steps: u64,
    /// The minibatch sampler's state.
    pub rng: [u64; 4],
}

/// Names of a checkpoint's tensors: the student's weights, Adam's moments and the teacher's
/// weights, each under its own prefix.
const STUDENT: &str = "student/";
const MOMENT1: &str = "adam.m/";
const MOMENT2: &str = "adam.v/";
const TEACHER: &str = "teacher/";

impl<D: Domain + Clone> Trainer<D> {
    /// A fresh optimiser for `model`; the teacher (if any) starts as a copy of it.
    pub fn new(model: Model<D>, config: TrainConfig) -> Result<Self, ModelError> {
        let positive = |x: f64| x.is_finite() && x > 0.0;
        if config.batch_size == 0 || !positive(config.learning_rate) || !positive(config.grad_clip)
        {
            return Err(ModelError::Config(format!(
                "batch size, learning rate and gradient clip must be positive: {config:?}"
            )));
        }
        let teacher = match config.ema_horizon {
            0 => None,
            _ => Some(model.duplicate()?),
        };
        Ok(Self {
            adam: Adam::new(model.var_store()),
            rng: Rng::derived(config.seed, 0x7a1),
            model,
            teacher,
            config,
            steps: 0,
        })
    }

    /// The tensors a checkpoint stores (see [`Trainer::restore`]).
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        let student = self.model.var_store().variables();
        let teacher = self.teacher.as_ref().map(|t| t.var_store().variables());
        for (i, name) in self.adam.names.iter().enumerate() {
            out.push((format!("{STUDENT}{name}"), student[name].shallow_clone()));
            out.push((format!("{MOMENT1}{name}"), self.adam.m[i].shallow_clone()));
            out.push((format!("{MOMENT2}{name}"), self.adam.v[i].shallow_clone()));
            if let Some(teacher) = &teacher {
                out.push((format!("{TEACHER}{name}"), teacher[name].shallow_clone()));
            }
        }
        out
    }

    pub fn counters(&self) -> TrainerCounters {
        TrainerCounters {
            steps: self.steps,
            rng: self.rng.state(),
        }
    }

    /// A trainer exactly where the one that wrote `tensors` (its [`Trainer::state_tensors`]) and
    /// `counters` was: `model` (any weights of the right architecture) takes the student's weights.
    /// Every tensor must be present with the right shape and finite.
    pub fn restore(
        model: Model<D>,
        config: TrainConfig,
        tensors: Vec<(String, Tensor)>,
        counters: &TrainerCounters,
    ) -> Result<Self, ModelError> {
        let mut trainer = Self::new(model, config)?;
        let mut tensors: std::collections::HashMap<String, Tensor> = tensors.into_iter().collect();
        let mut take = |name: String, like: &Tensor| -> Result<Tensor, ModelError> {
            let t = tensors.remove(&name).ok_or_else(|| ModelError::Weights {
                path: "checkpoint".into(),
                message: format!("tensor {name:?} is missing"),
            })?;
            if t.size() != like.size() || t.isfinite().all().int64_value(&[]) == 0 {
                return Err(ModelError::Weights {
                    path: "checkpoint".into(),
                    message: format!("tensor {name:?} has the wrong shape or is not finite"),
                });
            }
            Ok(t.to_device(like.device()))
        };
        let teacher = trainer.teacher.as_ref().map(|t| t.var_store().variables());
        tch::no_grad(|| -> Result<(), ModelError> {
            for i in 0..trainer.adam.names.len() {
                let name = trainer.adam.names[i].clone();
                let student = take(format!("{STUDENT}{name}"), &trainer.adam.params[i])?;
                trainer.adam.params[i].copy_(&student);
                let m = take(format!("{MOMENT1}{name}"), &trainer.adam.m[i])?;
                trainer.adam.m[i].copy_(&m);
                let v = take(format!("{MOMENT2}{name}"), &trainer.adam.v[i])?;
                trainer.adam.v[i].copy_(&v);
                if let Some(teacher) = &teacher {
                    let mut var = teacher[&name].shallow_clone();
                    var.copy_(&take(format!("{TEACHER}{name}"), &var)?);
                }
            }
            Ok(())
        })?;
        if let Some(name) = tensors.keys().next() {
            return Err(ModelError::Weights {
                path: "checkpoint".into(),
                message: format!("unexpected tensor {name:?}"),
            });
        }
        trainer.steps = counters.steps;
        trainer.rng = Rng::from_state(counters.rng);
        Ok(trainer)
    }
}

impl<D: Domain> Trainer<D> {
    /// The student: the model the optimiser trains.
    pub fn model(&self) -> &Model<D> {
        &self.model
    }

    /// The teacher: the moving average of the student, or the student itself without an EMA
    /// horizon. What a run publishes.
    pub fn teacher(&self) -> &Model<D> {
        self.teacher.as_ref().unwrap_or(&self.model)
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
        self.adam.zero_grad();
        loss.backward();
        self.adam.clip(self.config.grad_clip);
        self.steps += 1;
        self.adam.step(self.steps, self.config.learning_rate);
        self.update_teacher();
        loss.double_value(&[])
    }

    fn update_teacher(&mut self) {
        let Some(teacher) = &self.teacher else {
            return;
        };
        let weight = 1.0 / self.steps.clamp(1, self.config.ema_horizon.max(1)) as f64;
        let teacher = teacher.var_store().variables();
        tch::no_grad(|| {
            for (name, p) in self.adam.names.iter().zip(&self.adam.params) {
                let _ = teacher[name].shallow_clone().lerp_(p, weight);
            }
        });
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

/// A question about an instance, without its answer.
pub type Question<D> = (Arc<Instance<D>>, <D as Domain>::Question);

/// Questions about fresh instances: `instances` instances of `size` from seeds `first_seed..`,
/// each with `per_instance` sampled questions. No ground truth: what the training loop may judge
/// a model by (its agreement with amplified answers to them).
pub fn sample_questions<D: Domain>(
    domain: &D,
    size: usize,
    first_seed: u64,
    instances: usize,
    per_instance: usize,
) -> Result<Vec<Question<D>>, DomainError> {
    let mut out = Vec::with_capacity(instances * per_instance);
    for seed in first_seed..first_seed + instances as u64 {
        let instance = Instance::generate(domain, size, seed)?;
        let mut rng = Rng::derived(seed, 0xe7a);
        for _ in 0..per_instance {
            let question = domain.sample_question(instance.facts(), &mut rng);
            out.push((instance.clone(), question));
        }
    }
    Ok(out)
}

/// Examples whose targets are the ground truth: the supervised baseline's target source, and
/// held-out evaluation sets. The questions of [`sample_questions`] with the same arguments, each
/// with its true answer and difficulty.
pub fn supervised_examples<D: Domain>(
    domain: &D,
    size: usize,
    first_seed: u64,
    instances: usize,
    per_instance: usize,
) -> Result<Vec<Example<D>>, DomainError> {
    Ok(
        sample_questions(domain, size, first_seed, instances, per_instance)?
            .into_iter()
            .map(|(instance, question)| Example {
                target: domain.truth(instance.facts(), &question),
                difficulty: domain.difficulty(instance.facts(), &question),
                instance,
                question,
            })
            .collect(),
    )
}

/// The model's answers to `queries`, in forward passes of at most `batch_size` in order (so the
/// same queries give the same batches, and the same answers, every time).
pub fn predict_all<D: Domain>(
    model: &Model<D>,
    queries: &[Question<D>],
    batch_size: usize,
) -> Vec<Option<D::Answer>> {
    queries
        .chunks(batch_size.max(1))
        .flat_map(|chunk| {
            let refs: Vec<_> = chunk.iter().map(|(i, q)| (i, q)).collect();
            model.predict(&refs)
        })
        .collect()
}
