//! Judging a round: what the loop decides by, and what it reports.
//!
//! **Decided by** (H and the models only): the agreement of the teacher that amplified a round
//! (X_n) with that round's amplified targets, which moves the curriculum on; and, for the gate,
//! the agreement of the new generation and of X_n with Amplify(H, X_n) on held-out questions at
//! the round's stage. These read questions about held-out instances ([`sample_questions`]), never
//! their true answers.
//!
//! **Reported** (the ground truth, for people): held-out accuracy at the stage and at the target
//! size, per difficulty bucket, and the accuracy of Amplify(H, generation). Nothing decides by it.
//!
//! Held-out instances come from seeds no training instance uses (see [`HELDOUT_SEED_BASE`]), and
//! each size's set is the same every round and on every resume, so rounds are compared on the same
//! questions.

use std::collections::hash_map::{Entry, HashMap};
use std::sync::Arc;

use super::amplify;
use super::config::{HELDOUT_PER_INSTANCE, HELDOUT_SEED_BASE};
use super::decide::{self, Stage};
use super::targets::sample_within;
use super::{Run, TrainError};
use crate::answerer::batched::BatchedAnswerer;
use crate::answerer::{Answerer, AnswererId};
use crate::domain::{Domain, Instance};
use crate::eval::{Budget, EvalOptions, Evaluator, Mode};
use crate::model::answerer::ModelAnswerer;
use crate::model::distill::{self, Accuracy, Example, Question};
use crate::model::generation;
use crate::model::Model;
use crate::rng::Rng;

/// Forward passes of held-out evaluation.
const EVAL_BATCH: usize = 512;

/// X_n's amplified answers to the held-out questions of a stage, and X_n's agreement with them:
/// what a new generation is gated against.
struct Gate<D: Domain> {
    questions: Vec<Question<D>>,
    amplified: Vec<Option<D::Answer>>,
    reference: f64,
}

/// The held-out sets of one `train` call, the promoted generation X_n, and what the gate measured
/// of it.
pub(super) struct Judge<D: Domain> {
    /// Reported: at the target size, with true answers.
    target: Vec<Example<D>>,
    /// Reported: at each curriculum stage met so far (made on first use), with true answers.
    examples: HashMap<Stage, Vec<Example<D>>>,
    /// Decided by: the same questions without answers, by stage.
    questions: HashMap<Stage, Vec<Question<D>>>,
    /// X_n, loaded once per promotion.
    amplifier: Option<(u64, Model<D>)>,
    /// X_n's gate at a stage changes only with the stage or a promotion, so it is computed once
    /// per (generation, stage), not every round.
    gates: HashMap<(u64, Stage), Gate<D>>,
}

impl<D: Domain> Judge<D> {
    pub(super) fn new(target: Vec<Example<D>>) -> Self {
        Self {
            target,
            examples: HashMap::new(),
            questions: HashMap::new(),
            amplifier: None,
            gates: HashMap::new(),
        }
    }
}

/// The gate's verdict on a new generation.
pub(super) struct Verdict {
    /// Its agreement with Amplify(H, X_n) on held-out questions at the stage, and X_n's.
    pub agreement: f64,
    pub reference: f64,
}

/// What is reported of a new generation (measured against the truth; read by nothing that
/// decides).
pub(super) struct Report {
    /// At the round's stage.
    pub accuracy: f64,
    /// At the target size.
    pub at_target: Accuracy,
    /// Of Amplify(H, generation) at the target size (NaN without questions).
    pub amplified_target: f64,
}

impl<D: Domain + Copy> Run<D> {
    fn heldout_seed(&self, size: usize) -> u64 {
        HELDOUT_SEED_BASE + ((size as u64) << 32) + self.config.seed
    }

    fn heldout_instances(&self) -> usize {
        self.config.heldout.div_ceil(HELDOUT_PER_INSTANCE)
    }

    /// Held-out questions at `stage`, without answers: the held-out instances of its size, each
    /// question drawn within the stage's difficulty cap (see [`sample_within`]), so that a stage
    /// is judged on as many questions as any other.
    pub(super) fn heldout_questions(&self, stage: Stage) -> Result<Vec<Question<D>>, TrainError> {
        let first = self.heldout_seed(stage.size);
        let mut questions = Vec::with_capacity(self.config.heldout);
        for seed in first..first + self.heldout_instances() as u64 {
            let instance = Instance::generate(&self.domain, stage.size, seed)
                .map_err(|e| TrainError::Config(e.to_string()))?;
            let mut rng = Rng::derived(seed, 0xe7a);
            for _ in 0..HELDOUT_PER_INSTANCE {
                let question = sample_within(
                    &self.domain,
                    instance.facts(),
                    &mut rng,
                    stage.max_difficulty,
                );
                questions.push((instance.clone(), question));
            }
        }
        questions.truncate(self.config.heldout);
        Ok(questions)
    }

    /// The same held-out questions with their true answers and difficulties (ground truth:
    /// reports only).
    pub(super) fn heldout(&self, stage: Stage) -> Result<Vec<Example<D>>, TrainError> {
        Ok(self.with_truth(self.heldout_questions(stage)?))
    }

    /// `questions` with their true answers and difficulties (ground truth: reports only).
    fn with_truth(&self, questions: Vec<Question<D>>) -> Vec<Example<D>> {
        let d = &self.domain;
        questions
            .into_iter()
            .map(|(instance, question)| Example {
                target: d.truth(instance.facts(), &question),
                difficulty: d.difficulty(instance.facts(), &question),
                instance,
                question,
            })
            .collect()
    }

    /// The range of `questions`' visible difficulties: (easiest, hardest), `None` for a domain
    /// without visible difficulty.
    pub(super) fn difficulty_range(&self, questions: &[Question<D>]) -> Option<(u32, u32)> {
        let visible: Vec<u32> = questions
            .iter()
            .filter_map(|(_, q)| self.domain.visible_difficulty(q))
            .collect();
        Some((*visible.iter().min()?, *visible.iter().max()?))
    }

    fn questions_at<'j>(
        &self,
        judge: &'j mut Judge<D>,
        stage: Stage,
    ) -> Result<&'j [Question<D>], TrainError> {
        Ok(match judge.questions.entry(stage) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(self.heldout_questions(stage)?),
        })
    }

    /// The hardest visible difficulty of the held-out questions at `size` (0 without one): where
    /// the difficulty curriculum stops raising its cap.
    pub(super) fn hardest(&self, judge: &mut Judge<D>, size: usize) -> Result<u32, TrainError> {
        let uncapped = Stage {
            size,
            max_difficulty: None,
        };
        let questions = self.questions_at(judge, uncapped)?;
        Ok(self.difficulty_range(questions).map_or(0, |(_, h)| h))
    }

    /// X_n, the promoted generation `generation`, loaded on first use after each promotion.
    fn amplifier<'j>(
        &self,
        judge: &'j mut Judge<D>,
        generation: u64,
    ) -> Result<&'j Model<D>, TrainError> {
        if judge.amplifier.as_ref().map(|(g, _)| *g) != Some(generation) {
            let loaded = generation::load(
                &self.registry,
                Some(generation),
                self.domain,
                crate::model::pick_device(),
            )?;
            judge.amplifier = Some((generation, loaded.model));
        }
        Ok(&judge.amplifier.as_ref().expect("loaded above").1)
    }

    /// The agreement of X_n (`amplifier`) with the amplified targets of `round`, on its root
    /// questions: a root whose answer was unknown (no target) counts as a disagreement. Read from
    /// the store, so a resumed round measures what was committed before the crash too.
    pub(super) fn teacher_agreement(
        &self,
        judge: &mut Judge<D>,
        amplifier: u64,
        round: u64,
        stage: Stage,
    ) -> Result<f64, TrainError> {
        let stride = self.config.descent as u64 + 1;
        let mut targets: Vec<Option<D::Answer>> = vec![None; self.config.roots_per_round];
        for shard in self.store.shards().iter().filter(|s| s.round == round) {
            for row in self.store.read_shard(shard)? {
                let root = (row.index % stride == 0)
                    .then(|| (row.index / stride) as usize)
                    .filter(|&i| i < targets.len());
                if let Some(i) = root {
                    let answer =
                        self.domain
                            .parse_answer(&row.answer)
                            .map_err(|e| TrainError::Run {
                                path: self.store.dir().to_path_buf(),
                                message: format!(
                                    "round {round} target {}: bad answer: {e}",
                                    row.index
                                ),
                            })?;
                    targets[i] = Some(answer);
                }
            }
        }
        let questions: Vec<Question<D>> = (0..self.config.roots_per_round as u64)
            .map(|i| {
                self.root_task(round, i, stage)
                    .map(|t| (t.instance, t.question))
            })
            .collect::<Result<_, _>>()?;
        let model = self.amplifier(judge, amplifier)?;
        let answers = distill::predict_all(model, &questions, EVAL_BATCH);
        Ok(decide::agreement(&answers, &targets))
    }

    /// The gate's measurements of `candidate` after a round at `stage` amplified by X_n
    /// (`amplifier`): its agreement and X_n's with Amplify(H, X_n) on the held-out questions at
    /// the stage.
    pub(super) async fn gate_measure(
        &self,
        judge: &mut Judge<D>,
        candidate: &Model<D>,
        amplifier: u64,
        stage: Stage,
    ) -> Result<Verdict, TrainError> {
        if !judge.gates.contains_key(&(amplifier, stage)) {
            let questions = self.questions_at(judge, stage)?.to_vec();
            let x = self.amplifier(judge, amplifier)?;
            let amplified = amplify_all(x, &questions, self.config.reproducible).await?;
            let reference =
                decide::agreement(&distill::predict_all(x, &questions, EVAL_BATCH), &amplified);
            judge.gates.insert(
                (amplifier, stage),
                Gate {
                    questions,
                    amplified,
                    reference,
                },
            );
        }
        let gate = &judge.gates[&(amplifier, stage)];
        let answers = distill::predict_all(candidate, &gate.questions, EVAL_BATCH);
        Ok(Verdict {
            agreement: decide::agreement(&answers, &gate.amplified),
            reference: gate.reference,
        })
    }

    fn examples_at<'j>(
        &self,
        judge: &'j mut Judge<D>,
        stage: Stage,
    ) -> Result<&'j [Example<D>], TrainError> {
        if !judge.examples.contains_key(&stage) {
            // The questions the gate judged the stage on, with their answers.
            let questions = self.questions_at(judge, stage)?.to_vec();
            judge.examples.insert(stage, self.with_truth(questions));
        }
        Ok(&judge.examples[&stage])
    }

    /// The report on `model` after a round at `stage`: accuracies against the truth.
    pub(super) async fn report(
        &self,
        model: &Model<D>,
        judge: &mut Judge<D>,
        stage: Stage,
    ) -> Result<Report, TrainError> {
        let at_stage = self.examples_at(judge, stage)?;
        let accuracy = distill::evaluate(model, at_stage, EVAL_BATCH).fraction();
        let at_target = distill::evaluate(model, &judge.target, EVAL_BATCH);
        let amplified_target = amplified_accuracy(model, &judge.target).await?;
        Ok(Report {
            accuracy,
            at_target,
            amplified_target,
        })
    }
}

/// Amplify(H, model) on each question, evaluated in this process; with `reproducible`, every
/// model query in a forward pass of its own (see [`ModelAnswerer::one_by_one`]).
pub(super) async fn amplify_all<D: Domain + Copy>(
    model: &Model<D>,
    questions: &[Question<D>],
    reproducible: bool,
) -> Result<Vec<Option<D::Answer>>, TrainError> {
    let copy = model.duplicate()?;
    let answerer = ModelAnswerer::new(copy, AnswererId::student());
    let answerer: Arc<dyn Answerer<D>> = Arc::new(if reproducible {
        answerer.one_by_one()
    } else {
        answerer
    });
    let batched = Arc::new(BatchedAnswerer::start(answerer, amplify::local_batching()));
    let evaluator = Evaluator::new(
        *model.domain(),
        Some(batched as Arc<dyn Answerer<D>>),
        // The memo is this evaluator's (dropped with it), so this model shares answers only among
        // its own trees, never with another model's.
        EvalOptions {
            memo: true,
            trace: false,
        },
    );
    use futures::StreamExt;
    let answers: Vec<Option<D::Answer>> = futures::stream::iter(questions)
        .map(|(instance, question)| {
            let evaluator = &evaluator;
            async move {
                evaluator
                    .evaluate(
                        instance,
                        question.clone(),
                        Mode::Amplified,
                        Budget::default(),
                    )
                    .await
                    .ok()
                    .and_then(|r| r.answer)
            }
        })
        .buffered(512)
        .collect()
        .await;
    Ok(answers)
}

/// Accuracy of Amplify(H, model) on `examples`, evaluated in this process (a report: it compares
/// with the ground truth).
pub async fn amplified_accuracy<D: Domain + Copy>(
    model: &Model<D>,
    examples: &[Example<D>],
) -> Result<f64, TrainError> {
    if examples.is_empty() {
        return Ok(f64::NAN);
    }
    let questions: Vec<Question<D>> = examples
        .iter()
        .map(|e| (e.instance.clone(), e.question.clone()))
        .collect();
    let answers = amplify_all(model, &questions, false).await?;
    let correct = answers
        .iter()
        .zip(examples)
        .filter(|(a, e)| a.as_ref() == Some(&e.target))
        .count();
    Ok(correct as f64 / examples.len() as f64)
}
