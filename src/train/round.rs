//! The training loop: [`Run::train`] runs rounds until [`decide::stop`] says so, and a round is
//! its steps, in order: produce targets, distill, evaluate, gate, next stage, publish. The steps
//! do the work; what they decide is in [`decide`].

use std::time::Instant;

use super::amplify::TargetSource;
use super::decide::{self, Stage};
use super::evaluate::Judge;
use super::record::{by_difficulty, finite, read_record};
use super::targets::InstanceCache;
use super::{Progress, RoundRecord, Run, StopAt, TrainError};
use crate::domain::{self, Domain};
use crate::model::distill::{ReplayBuffer, Trainer};
use crate::model::generation;
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
        let mut judge = Judge::new(self.heldout(Stage {
            size: self.config.target_size,
            max_difficulty: None,
        })?);
        let mut last = read_record(&self.registry, &latest)?;
        let mut records = Vec::new();
        while !decide::stop(&stop, &last, self.registry.current().ok().flatten()) {
            last = self
                .round(source, &mut student, &mut judge, &last, progress)
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

    /// The student continues where the newest generation's round left it: its weights, Adam's
    /// moments, the teacher and the sampler from the checkpoint (see [`checkpoint`]), with a
    /// replay window refilled from the store. Generation 0 starts a fresh trainer.
    ///
    /// [`checkpoint`]: super::checkpoint
    fn resume_student(&self, latest: &Manifest) -> Result<Student<D>, TrainError> {
        let loaded = generation::load(
            &self.registry,
            Some(latest.generation),
            self.domain,
            crate::model::pick_device(),
        )?;
        let config = self.config.train.clone();
        let checkpoint = if latest.generation == 0 {
            None
        } else {
            let model = loaded.model.duplicate()?;
            self.checkpoints
                .load(latest.generation, model, config.clone())?
        };
        let trainer = match checkpoint {
            Some(trainer) => trainer,
            None if latest.generation == 0 => Trainer::new(loaded.model, config)?,
            None => {
                // Only if the checkpoint was removed by hand: the run goes on from the published
                // (teacher's) weights with a fresh optimiser, no longer exactly as it would have.
                tracing::warn!(
                    generation = latest.generation,
                    "no checkpoint of the newest generation: the student restarts from its \
                     published weights with a fresh optimiser"
                );
                Trainer::new(loaded.model, config)?
            }
        };
        let mut student = Student {
            steps: loaded.manifest.training_steps,
            trainer,
            replay: ReplayBuffer::new(self.config.train.replay_window),
            instances: InstanceCache::default(),
        };
        for row in self.store.newest(self.config.train.replay_window)? {
            let example = self.example(&row, &mut student.instances)?;
            student.replay.extend([example]);
        }
        Ok(student)
    }

    /// Round n: the stage `last` chose, targets from X_n, the student distilled on them, its
    /// teacher gated against X_n, and published as generation n+1 with the stage of round n+1.
    /// Every decision reads agreements with amplified answers; the truth only fills the report.
    async fn round(
        &mut self,
        source: &dyn TargetSource<D>,
        student: &mut Student<D>,
        judge: &mut Judge<D>,
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
        let agreement = self.teacher_agreement(judge, amplifier, round, stage)?;
        let loss = self.distill(student, progress).await;
        progress(Progress::Evaluating);
        let candidate = student.trainer.teacher();
        let verdict = self
            .gate_measure(judge, candidate, amplifier, stage)
            .await?;
        let promoted = decide::promote(
            verdict.agreement,
            verdict.reference,
            self.config.gate_tolerance,
        );
        let hardest = self.hardest(judge, stage.size)?;
        let next = decide::next_stage(&self.config.curriculum(), stage, agreement, hardest);

        let report = self.report(candidate, judge, stage).await?;
        let at_target = report.at_target.fraction();
        let amplified_target = finite(report.amplified_target);
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
            agreement: Some(agreement),
            gate_agreement: Some(verdict.agreement),
            gate_reference: Some(verdict.reference),
            accuracy: report.accuracy,
            accuracy_target: at_target,
            amplified_target,
            gap: amplified_target.map(|a| a - at_target),
            by_difficulty: by_difficulty(&report.at_target),
            promoted,
            wall_seconds: last.wall_seconds + started.elapsed().as_secs_f64(),
            truth_calls_in_targets: targets.truth_calls,
        };
        self.publish(source, &student.trainer, record, progress)
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

    /// Publish: the teacher becomes the next generation whatever the gate said (a rejected one
    /// stays in the registry for the record); if promoted, it becomes current and `source`
    /// amplifies with it from now on. The trainer's checkpoint is written first, so the newest
    /// generation always has one.
    async fn publish(
        &self,
        source: &dyn TargetSource<D>,
        trainer: &Trainer<D>,
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
        let parent = latest_generation(&self.registry)?;
        self.checkpoints.save(parent + 1, trainer)?;
        let manifest = generation::publish(
            &self.registry,
            trainer.teacher(),
            Some(parent),
            record.steps,
            record.to_value(),
            note,
        )?;
        debug_assert_eq!(manifest.generation, parent + 1);
        self.checkpoints.prune(manifest.generation)?;
        if record.promoted {
            self.registry.promote(manifest.generation)?;
            source.serve(&manifest).await?;
        }
        let record = RoundRecord {
            generation: manifest.generation,
            ..record
        };
        progress(Progress::Published(Box::new(record.clone())));
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
