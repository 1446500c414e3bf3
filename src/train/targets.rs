//! Producing a round's targets: root questions on fresh instances, a random path of subquestions
//! below each, amplified (or answered by the truth) and committed to the store in parts; and
//! reading stored targets back as training examples.

use std::collections::HashMap;
use std::sync::Arc;

use super::amplify::{Produced, TargetSource, Task};
use super::config::HELDOUT_SEED_BASE;
use super::decide::{self, Stage};
use super::store::{TargetOrigin, TargetRow};
use super::{Progress, Run, TrainError};
use crate::domain::{Domain, Instance};
use crate::model::distill::Example;
use crate::rng::Rng;

impl<D: Domain + Copy> Run<D> {
    /// Produces and commits the target parts of `round` not committed yet; returns the new rows
    /// and the number of unknown (dropped) answers.
    pub(super) async fn produce(
        &mut self,
        source: &dyn TargetSource<D>,
        round: u64,
        stage: Stage,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(Vec<TargetRow>, u64), TrainError> {
        let c = &self.config;
        let parts = c.parts_per_round();
        let mut new_rows = Vec::new();
        let mut unknown = 0;
        for part in 0..parts {
            let first = part as usize * c.roots_per_part;
            let last = (first + c.roots_per_part).min(c.roots_per_round);
            if !self.store.has_part(round, part) {
                let roots: Vec<Task<D>> = (first..last)
                    .map(|i| self.root_task(round, i as u64, stage))
                    .collect::<Result<_, _>>()?;
                // Each root, then a random path down its tree: one of the subquestions H asked,
                // amplified in turn, then one of its subquestions, ... to H's base case or the
                // descent limit. Every level is a target, so X learns the questions it is asked
                // at every depth, most of all the easy ones the bootstrap starts from.
                let stride = c.descent as u64 + 1;
                let mut rows = Vec::new();
                let mut frontier: Vec<(usize, Task<D>)> = roots
                    .into_iter()
                    .enumerate()
                    .map(|(k, t)| (first + k, t))
                    .collect();
                for level in 0..=c.descent as u64 {
                    if frontier.is_empty() {
                        break;
                    }
                    let tasks: Vec<Task<D>> = frontier.iter().map(|(_, t)| t.clone()).collect();
                    let produced = source.produce(&tasks).await?;
                    let mut next = Vec::new();
                    for ((i, task), p) in frontier.iter().zip(&produced) {
                        let index = *i as u64 * stride + level;
                        unknown += self.push_row(&mut rows, round, index, task, p) as u64;
                        if !p.subquestions.is_empty() {
                            let mut rng = Rng::derived(c.seed ^ round.rotate_left(32), index);
                            let pick = rng.below(p.subquestions.len());
                            next.push((
                                *i,
                                Task {
                                    question: p.subquestions[pick].clone(),
                                    ..task.clone()
                                },
                            ));
                        }
                    }
                    frontier = next;
                }
                rows.sort_by_key(|r| r.index);
                self.store.commit(round, part, &rows)?;
                new_rows.extend(rows);
            }
            progress(Progress::Targets {
                done: last,
                total: c.roots_per_round,
            });
        }
        Ok((new_rows, unknown))
    }

    /// Appends the row for `p` unless its answer is unknown; returns whether it was unknown.
    fn push_row(
        &self,
        rows: &mut Vec<TargetRow>,
        round: u64,
        index: u64,
        task: &Task<D>,
        p: &Produced<D>,
    ) -> bool {
        let d = &self.domain;
        // Unknown answers, and answers no model could give (H can combine wrong subanswers into
        // a value outside the answer vocabulary), are not targets.
        let Some(answer) = p
            .answer
            .as_ref()
            .filter(|a| d.class_answer(d.answer_class(a)).as_ref() == Some(*a))
        else {
            return true;
        };
        rows.push(TargetRow {
            domain: D::KIND.name().to_string(),
            size: task.size,
            instance_seed: task.seed,
            instance_id: task.instance.id().to_string(),
            facts: d.print_facts(task.instance.facts()),
            question: d.print_question(&task.question),
            answer: d.print_answer(answer),
            // The difficulty the question's text shows: a solver's would be ground truth.
            difficulty: d.visible_difficulty(&task.question).unwrap_or(0),
            source: if self.config.supervised {
                TargetOrigin::Truth
            } else {
                TargetOrigin::Amplified
            },
            answered_by_generation: p.generation,
            answerer: p.answerer.clone(),
            tree_id: p.tree_id.clone(),
            nodes: p.nodes,
            time_us: p.time_us,
            round,
            index,
        });
        false
    }

    /// Root question `index` of `round`: a fresh instance from a seed derived from the run seed,
    /// shared by `questions_per_instance` consecutive roots, its question within the stage's
    /// difficulty cap ([`sample_within`]).
    pub(super) fn root_task(
        &self,
        round: u64,
        index: u64,
        stage: Stage,
    ) -> Result<Task<D>, TrainError> {
        let Stage {
            size,
            max_difficulty: cap,
        } = stage;
        let per = self.config.questions_per_instance.max(1) as u64;
        let mut rng = Rng::derived(self.config.seed.wrapping_add(round << 40), index / per);
        let seed = rng.next_u64() % HELDOUT_SEED_BASE;
        let instance = Instance::generate(&self.domain, size, seed)
            .map_err(|e| TrainError::Config(e.to_string()))?;
        let mut rng = Rng::derived(seed, 0x9e57 + index % per);
        let question = sample_within(&self.domain, instance.facts(), &mut rng, cap);
        Ok(Task {
            size: size as u32,
            seed,
            question,
            instance,
        })
    }

    /// A stored row as a training example (its facts parsed and shared per instance).
    pub(super) fn example(
        &self,
        row: &TargetRow,
        instances: &mut InstanceCache<D>,
    ) -> Result<Example<D>, TrainError> {
        let d = &self.domain;
        let bad = |what: &str, e: String| TrainError::Run {
            path: self.store.dir().to_path_buf(),
            message: format!("round {} target {}: bad {what}: {e}", row.round, row.index),
        };
        let instance = match instances.0.get(&row.instance_id) {
            Some(i) => i.clone(),
            None => {
                let facts = d
                    .parse_facts(&row.facts)
                    .map_err(|e| bad("facts", e.to_string()))?;
                let instance = Instance::new(d, facts);
                if instance.id().to_string() != row.instance_id {
                    return Err(bad("instance id", "it does not match the facts".into()));
                }
                if instances.0.len() > 1 << 16 {
                    instances.0.clear();
                }
                instances
                    .0
                    .insert(row.instance_id.clone(), instance.clone());
                instance
            }
        };
        let question = d
            .parse_question(&row.question)
            .map_err(|e| bad("question", e.to_string()))?;
        d.check_question(instance.facts(), &question)
            .map_err(|e| bad("question", e))?;
        let target = d
            .parse_answer(&row.answer)
            .map_err(|e| bad("answer", e.to_string()))?;
        Ok(Example {
            difficulty: row.difficulty,
            instance,
            question,
            target,
        })
    }
}

/// A question about `facts` within the difficulty cap `cap`, by its visible difficulty: questions
/// are drawn until one is within it (the least difficult of a bounded number of draws otherwise).
/// Nothing here consults a solver.
pub(super) fn sample_within<D: Domain>(
    d: &D,
    facts: &D::Facts,
    rng: &mut Rng,
    cap: Option<u32>,
) -> D::Question {
    let mut question = d.sample_question(facts, rng);
    if cap.is_some() {
        let visible = |q: &D::Question| d.visible_difficulty(q).unwrap_or(0);
        for _ in 0..256 {
            if decide::within_cap(d, &question, cap) {
                break;
            }
            let q = d.sample_question(facts, rng);
            if visible(&q) < visible(&question) {
                question = q;
            }
        }
    }
    question
}

/// Parsed instances by id, so that the replay window shares them.
pub(super) struct InstanceCache<D: Domain>(HashMap<String, Arc<Instance<D>>>);

impl<D: Domain> Default for InstanceCache<D> {
    fn default() -> Self {
        Self(HashMap::new())
    }
}
