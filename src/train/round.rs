//! The training loop: [`Run::train`] runs rounds until [`decide::stop`] says so, and a round is
//! its steps, in order: produce targets, distill, evaluate, gate, next stage, publish. The steps
//! do the work; what they decide is in [`decide`].

use std::time::Instant;

use super::amplify::TargetSource;
use super::decide::{self, Stage};
use super::evaluate::HeldOut;
use super::record::{by_difficulty, finite, read_record};
use super::targets::InstanceCache;
use super::{Progress, RoundRecord, Run, StopAt, TrainError};
use crate::domain::{self, Domain};
use crate::model::distill::{ReplayBuffer, Trainer};
use crate::model::generation;
use crate::model::Model;
use crate::registry::{Manifest, Registry};

/// The model being trained and what it trains on, carried from one round to the next.
struct Student<D: Domain> {
    trainer: Trainer<D>,
    /// Optimiser steps behind it, over the whole run.
    steps: u64,
    /// The newest targets, as examples.
    replay: ReplayBuffer<D>,
    instances: InstanceCache<D>,
}

/// What producing a round's targets left in the store.
struct RoundTargets {
    /// Targets of the round committed (resumed parts included).
    committed: u64,
    /// Unknown answers dropped in this call (not counting resumed parts).
    unknown: u64,
    /// Ground-truth calls made while producing them.
    truth_calls: u64,
}

impl<D: Domain + Copy> Run<D> {
    /// Runs rounds until `stop`, with targets from `source`. Resumes where the run left off.
    pub async fn train(
        &mut self,
        source: &dyn TargetSource<D>,
        stop: StopAt,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Vec<RoundRecord>, TrainError> {
        self.check_source(source)?;
        let latest = self.initialise(progress)?;
        let current = self.registry.current()?.unwrap_or(0);
        source.serve(&self.registry.load(current)?.manifest).await?;
        let mut student = self.resume_student(&latest)?;
        let mut heldout = HeldOut::new(self.heldout(self.config.target_size)?);
        let mut last = read_record(&self.registry, &latest)?;
        let mut records = Vec::new();
        while !decide::stop(&stop, &last, self.registry.current().ok().flatten()) {
            last = self
                .round(source, &mut student, &mut heldout, &last, progress)
                .await?;
            records.push(last.clone());
        }
        Ok(records)
    }

    /// A run keeps its kind: an amplified run's targets never come from the ground truth, and the
    /// supervised baseline's always do.
    fn check_source(&self, source: &dyn TargetSource<D>) -> Result<(), TrainError> {
        if source.amplified() != self.config.supervised {
            return Ok(());
        }
        Err(TrainError::Config(format!(
            "this run is {}, but the target source {}",
            if self.config.supervised {
                "supervised (ground-truth targets)"
            } else {
                "amplified"
            },
            if source.amplified() {
                "amplifies"
            } else {
                "is the ground truth"
            }
        )))
    }

    /// The student continues from the newest generation, promoted or not, with a replay window
    /// refilled from the store (Adam's moments are not saved: they restart).
    fn resume_student(&self, latest: &Manifest) -> Result<Student<D>, TrainError> {
        let loaded = generation::load(
            &self.registry,
            Some(latest.generation),
            self.domain,
            crate::model::pick_device(),
        )?;
        let mut student = Student {
            steps: loaded.manifest.training_steps,
            trainer: Trainer::new(loaded.model, self.config.train.clone())?,
            replay: ReplayBuffer::new(self.config.train.replay_window),
            instances: InstanceCache::default(),
        };
        for row in self.store.newest(self.config.train.replay_window)? {
            let example = self.example(&row, &mut student.instances)?;
            student.replay.extend([example]);
        }
        Ok(student)
    }

    /// Round n: the stage `last` chose, targets from X_n, the student distilled on them,
    /// evaluated, gated against X_n, and published as generation n+1 with the stage of round n+1.
    async fn round(
        &mut self,
        source: &dyn TargetSource<D>,
        student: &mut Student<D>,
        heldout: &mut HeldOut<D>,
        last: &RoundRecord,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<RoundRecord, TrainError> {
        let started = Instant::now();
        let round = last.generation;
        let stage = last.next_stage();
        let amplifier = self.registry.current()?.unwrap_or(0);
        progress(Progress::Round {
            round,
            size: stage.size,
            amplifier,
        });

        let targets = self
            .produce_targets(source, student, round, stage, progress)
            .await?;
        let loss = self.distill(student, progress).await;
        progress(Progress::Evaluating);
        let evaluation = self
            .evaluate(student.trainer.model(), heldout, stage)
            .await?;
        let promoted = self.gate(heldout, amplifier, stage, evaluation.accuracy)?;
        let next = decide::next_stage(
            &self.config.curriculum(),
            stage,
            promoted,
            evaluation.accuracy,
            evaluation.hardest,
        );

        let at_target = evaluation.at_target.fraction();
        let amplified_target = finite(evaluation.amplified_target);
        let record = RoundRecord {
            generation: 0, // filled in by publishing
            round: Some(round),
            amplified_by: (!self.config.supervised).then_some(amplifier),
            size: stage.size,
            next_size: next.size,
            max_difficulty: stage.max_difficulty,
            next_max_difficulty: next.max_difficulty,
            targets: targets.committed,
            unknown: targets.unknown,
            targets_total: self.store.rows(),
            steps: student.steps,
            loss: finite(loss),
            accuracy: evaluation.accuracy,
            accuracy_target: at_target,
            amplified_target,
            gap: amplified_target.map(|a| a - at_target),
            by_difficulty: by_difficulty(&evaluation.at_target),
            promoted,
            wall_seconds: last.wall_seconds + started.elapsed().as_secs_f64(),
            truth_calls_in_targets: targets.truth_calls,
        };
        self.publish(source, student.trainer.model(), record, progress)
            .await
    }

    /// Produce targets: commits the round's target parts not committed yet (a resumed round
    /// skips the others) and adds them to the student's replay window. Counts the ground-truth
    /// calls made meanwhile, which must be none for an amplified run.
    async fn produce_targets(
        &mut self,
        source: &dyn TargetSource<D>,
        student: &mut Student<D>,
        round: u64,
        stage: Stage,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<RoundTargets, TrainError> {
        let truth_before = domain::truth_calls();
        let (new_rows, unknown) = self.produce(source, round, stage, progress).await?;
        let truth_calls = domain::truth_calls() - truth_before;
        for row in &new_rows {
            let example = self.example(row, &mut student.instances)?;
            student.replay.extend([example]);
        }
        let committed = self
            .store
            .shards()
            .iter()
            .filter(|s| s.round == round)
            .map(|s| s.rows)
            .sum();
        Ok(RoundTargets {
            committed,
            unknown,
            truth_calls,
        })
    }

    /// Distill: the round's optimiser steps on minibatches from the replay window, reported in
    /// about twenty chunks (yielding between them, so a progress bar and other tasks keep up).
    /// Returns the mean loss.
    async fn distill(&self, student: &mut Student<D>, progress: &mut dyn FnMut(Progress)) -> f64 {
        let mut loss_sum = 0.0;
        let total = self.config.steps_per_round;
        let chunk = (total / 20).max(1);
        let mut done = 0;
        while done < total {
            let n = chunk.min(total - done);
            let loss = student.trainer.train(&student.replay, n);
            loss_sum += loss * n as f64;
            done += n;
            progress(Progress::Training { done, total, loss });
            tokio::task::yield_now().await;
        }
        student.steps += total as u64;
        loss_sum / total as f64
    }

    /// Gate: whether the student, `accuracy` at `stage`, replaces `amplifier` (X_n) as the
    /// promoted generation; judged against X_n at the same stage.
    fn gate(
        &self,
        heldout: &mut HeldOut<D>,
        amplifier: u64,
        stage: Stage,
        accuracy: f64,
    ) -> Result<bool, TrainError> {
        let reference = self.reference_accuracy(heldout, amplifier, stage)?;
        Ok(decide::promote(
            accuracy,
            reference,
            self.config.gate_tolerance,
        ))
    }

    /// Publish: the student becomes the next generation whatever the gate said (a rejected one
    /// stays in the registry for the record); if promoted, it becomes current and `source`
    /// amplifies with it from now on.
    async fn publish(
        &self,
        source: &dyn TargetSource<D>,
        model: &Model<D>,
        record: RoundRecord,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<RoundRecord, TrainError> {
        let note = format!(
            "round {}: distilled from {} targets of {}",
            record.round.unwrap_or_default(),
            record.targets,
            match record.amplified_by {
                Some(g) => format!("Amplify(H, g{g})"),
                None => "the ground truth".to_string(),
            }
        );
        let manifest = generation::publish(
            &self.registry,
            model,
            Some(latest_generation(&self.registry)?),
            record.steps,
            record.to_value(),
            note,
        )?;
        if record.promoted {
            self.registry.promote(manifest.generation)?;
            source.serve(&manifest).await?;
        }
        let record = RoundRecord {
            generation: manifest.generation,
            ..record
        };
        progress(Progress::Published(record.clone()));
        Ok(record)
    }
}

fn latest_generation(registry: &Registry) -> Result<u64, TrainError> {
    Ok(registry
        .generation_numbers()?
        .last()
        .copied()
        .unwrap_or_default())
}
