//! An open run and its rounds.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use super::amplify::{self, TargetSource};
use super::config::{differences, HELDOUT_PER_INSTANCE, HELDOUT_SEED_BASE, RUN_FILE};
use super::record::by_difficulty;
use super::store::TargetStore;
use super::targets::InstanceCache;
use super::{Progress, RoundRecord, RunConfig, StopAt, TrainError};
use crate::answerer::Answerer;
use crate::domain::{self, Domain};
use crate::eval::{Budget, EvalOptions, Evaluator, Mode};
use crate::fsutil;
use crate::model::answerer::ModelAnswerer;
use crate::model::distill::{self, Example, ReplayBuffer, Trainer};
use crate::model::generation;
use crate::model::Model;
use crate::registry::{Manifest, Registry};
use crate::worker::batcher::BatchedAnswerer;

/// An open run directory: settings, registry and target store.
pub struct Run<D: Domain + Copy> {
    pub(super) domain: D,
    pub(super) dir: PathBuf,
    pub(super) config: RunConfig,
    pub(super) registry: Registry,
    pub(super) store: TargetStore,
}

impl<D: Domain + Copy> Run<D> {
    /// Opens the run in `dir`, creating it with `config` (and a random generation 0, promoted) if
    /// it is new. An existing run must have been started with the same settings.
    pub fn open(domain: D, dir: impl Into<PathBuf>, config: RunConfig) -> Result<Self, TrainError> {
        let dir = dir.into();
        config.check(&domain).map_err(TrainError::Config)?;
        std::fs::create_dir_all(&dir).map_err(|e| TrainError::Run {
            path: dir.clone(),
            message: e.to_string(),
        })?;
        let run_file = dir.join(RUN_FILE);
        match std::fs::read(&run_file) {
            Ok(bytes) => {
                let existing: RunConfig =
                    serde_json::from_slice(&bytes).map_err(|e| TrainError::Run {
                        path: run_file.clone(),
                        message: format!("not a valid run file: {e}"),
                    })?;
                if existing != config {
                    return Err(TrainError::Run {
                        path: run_file,
                        message: format!(
                            "this run was started with other settings ({}); pass the same \
                             settings to resume it, or use another run directory",
                            differences(&existing, &config)
                        ),
                    });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let json = serde_json::to_vec_pretty(&config).expect("RunConfig serialises");
                fsutil::write_atomic(&run_file, &json).map_err(|e| TrainError::Run {
                    path: run_file.clone(),
                    message: e.to_string(),
                })?;
            }
            Err(e) => {
                return Err(TrainError::Run {
                    path: run_file,
                    message: e.to_string(),
                })
            }
        }
        let registry = Registry::open(dir.join("registry"))?;
        let store = TargetStore::open(dir.join("targets"), D::KIND.name())?;
        Ok(Self {
            domain,
            dir,
            config,
            registry,
            store,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config(&self) -> &RunConfig {
        &self.config
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn store(&self) -> &TargetStore {
        &self.store
    }

    /// Held-out examples at `size` (ground truth: evaluation only).
    fn heldout(&self, size: usize) -> Result<Vec<Example<D>>, TrainError> {
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

    /// Makes sure generation 0 exists and something is promoted; returns the newest manifest.
    /// Call before starting workers that serve this run's registry.
    pub fn initialise(&self, progress: &mut dyn FnMut(Progress)) -> Result<Manifest, TrainError> {
        let manifests = self.registry.list()?;
        if let Some(latest) = manifests.last() {
            // A crash between publishing a generation that passed its gate and promoting it.
            if latest.metrics.get("promoted") == Some(&1.0)
                && self.registry.current()? != Some(latest.generation)
            {
                self.registry.promote(latest.generation)?;
            }
            if self.registry.current()?.is_none() {
                self.registry.promote(manifests[0].generation)?;
            }
            return Ok(latest.clone());
        }
        let model = Model::new(
            self.domain,
            self.config.model.clone(),
            crate::model::pick_device(),
            self.config.seed,
        )?;
        let size = self.config.start_size;
        let heldout = self.heldout(size)?;
        let cap = self
            .config
            .difficulty_curriculum
            .then(|| heldout.iter().map(|e| e.difficulty).min().unwrap_or(0));
        let heldout = stage(&heldout, cap);
        let target = self.heldout(self.config.target_size)?;
        let accuracy = distill::evaluate(&model, &heldout, 512);
        let at_target = distill::evaluate(&model, &target, 512);
        let record = RoundRecord {
            generation: 0,
            round: None,
            amplified_by: None,
            size,
            next_size: size,
            max_difficulty: cap,
            next_max_difficulty: cap,
            targets: 0,
            unknown: 0,
            targets_total: 0,
            steps: 0,
            loss: f64::NAN,
            accuracy: accuracy.fraction(),
            accuracy_target: at_target.fraction(),
            amplified_target: f64::NAN,
            gap: f64::NAN,
            by_difficulty: by_difficulty(&at_target),
            promoted: true,
            wall_seconds: 0.0,
            truth_calls_in_targets: 0,
        };
        let manifest = generation::publish(
            &self.registry,
            &model,
            None,
            0,
            record.to_metrics(),
            "random initial weights",
        )?;
        self.registry.promote(manifest.generation)?;
        progress(Progress::Published(RoundRecord {
            generation: manifest.generation,
            ..record
        }));
        Ok(manifest)
    }

    /// The per-generation records of this run so far, oldest first.
    pub fn records(&self) -> Result<Vec<RoundRecord>, TrainError> {
        Ok(self
            .registry
            .list()?
            .iter()
            .filter_map(RoundRecord::from_manifest)
            .collect())
    }

    /// Runs rounds until `stop`, with targets from `source`. Resumes where the run left off.
    pub async fn train(
        &mut self,
        source: &dyn TargetSource<D>,
        stop: StopAt,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Vec<RoundRecord>, TrainError> {
        if source.amplified() == self.config.supervised {
            return Err(TrainError::Config(format!(
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
            )));
        }
        let latest = self.initialise(progress)?;
        let current = self.registry.current()?.unwrap_or(0);
        source.serve(&self.registry.load(current)?.manifest).await?;

        // The student continues from the newest generation, promoted or not.
        let student = generation::load(
            &self.registry,
            Some(latest.generation),
            self.domain,
            crate::model::pick_device(),
        )?;
        let mut steps = student.manifest.training_steps;
        let mut trainer = Trainer::new(student.model, self.config.train.clone())?;
        let mut last = RoundRecord::from_manifest(&latest).ok_or_else(|| TrainError::Run {
            path: self.registry.generation_dir(latest.generation),
            message: "manifest lacks this run's metrics".to_string(),
        })?;
        let mut replay = ReplayBuffer::new(self.config.train.replay_window);
        let mut instances = InstanceCache::default();
        for row in self.store.newest(self.config.train.replay_window)? {
            replay.extend([self.example(&row, &mut instances)?]);
        }
        let target_heldout = self.heldout(self.config.target_size)?;
        let mut heldout_cache: HashMap<usize, Vec<Example<D>>> = HashMap::new();
        let mut reference_cache: HashMap<(u64, usize, Option<u32>), f64> = HashMap::new();
        let mut records = Vec::new();

        loop {
            let round = last.generation;
            let done = stop.rounds.is_some_and(|r| round >= r)
                || stop.accuracy.is_some_and(|a| {
                    let current = self.registry.current().ok().flatten();
                    last.promoted && current == Some(last.generation) && last.accuracy_target >= a
                })
                || stop
                    .wall
                    .is_some_and(|w| last.wall_seconds >= w.as_secs_f64());
            if done {
                return Ok(records);
            }
            let started = Instant::now();
            let size = last.next_size;
            let cap = last.next_max_difficulty;
            let amplifier = self.registry.current()?.unwrap_or(0);
            progress(Progress::Round {
                round,
                size,
                amplifier,
            });

            // 1. Targets.
            let truth_before = domain::truth_calls();
            let (new_rows, unknown) = self.produce(source, round, size, cap, progress).await?;
            let truth_calls_in_targets = domain::truth_calls() - truth_before;
            for row in &new_rows {
                replay.extend([self.example(row, &mut instances)?]);
            }
            let round_targets: u64 = self
                .store
                .shards()
                .iter()
                .filter(|s| s.round == round)
                .map(|s| s.rows)
                .sum();

            // 2. Distill.
            let mut loss_sum = 0.0;
            let total = self.config.steps_per_round;
            let chunk = (total / 20).max(1);
            let mut done_steps = 0;
            while done_steps < total {
                let n = chunk.min(total - done_steps);
                let loss = trainer.train(&replay, n);
                loss_sum += loss * n as f64;
                done_steps += n;
                progress(Progress::Training {
                    done: done_steps,
                    total,
                    loss,
                });
                tokio::task::yield_now().await;
            }
            steps += total as u64;

            // 3. Evaluate.
            progress(Progress::Evaluating);
            let all_heldout = match heldout_cache.get(&size) {
                Some(h) => h,
                None => {
                    let h = self.heldout(size)?;
                    heldout_cache.entry(size).or_insert(h)
                }
            };
            let hardest = all_heldout.iter().map(|e| e.difficulty).max().unwrap_or(0);
            let heldout = &stage(all_heldout, cap);
            let model = trainer.model();
            let accuracy = distill::evaluate(model, heldout, 512).fraction();
            let at_target = distill::evaluate(model, &target_heldout, 512);
            let amplified_target = amplified_accuracy(model, &target_heldout).await?;

            // 4. Gate: against the promoted generation at this round's size.
            // X_n's accuracy at this stage changes only with the stage or a promotion: loaded and
            // evaluated once per (generation, stage), not every round.
            let reference_accuracy = match reference_cache.get(&(amplifier, size, cap)) {
                Some(&a) => a,
                None => {
                    let reference = generation::load(
                        &self.registry,
                        Some(amplifier),
                        self.domain,
                        crate::model::pick_device(),
                    )?;
                    let a = distill::evaluate(&reference.model, heldout, 512).fraction();
                    reference_cache.insert((amplifier, size, cap), a);
                    a
                }
            };
            let promoted = accuracy + self.config.gate_tolerance >= reference_accuracy;

            // 5. Curriculum.
            let (next_size, next_max_difficulty) =
                match (promoted && accuracy >= self.config.advance_at, cap) {
                    (false, _) => (size, cap),
                    (true, Some(c)) if c < hardest => (size, Some(c + 1)),
                    (true, _) => (
                        (size + self.config.size_step).min(self.config.target_size),
                        cap,
                    ),
                };
            let record = RoundRecord {
                generation: 0, // filled in by publishing
                round: Some(round),
                amplified_by: (!self.config.supervised).then_some(amplifier),
                size,
                next_size,
                max_difficulty: cap,
                next_max_difficulty,
                targets: round_targets,
                unknown,
                targets_total: self.store.rows(),
                steps,
                loss: loss_sum / total as f64,
                accuracy,
                accuracy_target: at_target.fraction(),
                amplified_target,
                gap: amplified_target - at_target.fraction(),
                by_difficulty: by_difficulty(&at_target),
                promoted,
                wall_seconds: last.wall_seconds + started.elapsed().as_secs_f64(),
                truth_calls_in_targets,
            };
            let manifest = generation::publish(
                &self.registry,
                trainer.model(),
                Some(latest_generation(&self.registry)?),
                steps,
                record.to_metrics(),
                format!(
                    "round {round}: distilled from {} targets of {}",
                    round_targets,
                    if self.config.supervised {
                        "the ground truth".to_string()
                    } else {
                        format!("Amplify(H, g{amplifier})")
                    }
                ),
            )?;
            if promoted {
                self.registry.promote(manifest.generation)?;
                source.serve(&manifest).await?;
            }
            let record = RoundRecord {
                generation: manifest.generation,
                ..record
            };
            progress(Progress::Published(record.clone()));
            records.push(record.clone());
            last = record;
        }
    }
}

/// The held-out examples of a curriculum stage: those at most `cap` difficult (all without a cap,
/// or if none is that easy).
fn stage<D: Domain>(examples: &[Example<D>], cap: Option<u32>) -> Vec<Example<D>> {
    let within: Vec<Example<D>> = examples
        .iter()
        .filter(|e| cap.map_or(true, |c| e.difficulty <= c))
        .cloned()
        .collect();
    if within.is_empty() {
        examples.to_vec()
    } else {
        within
    }
}

fn latest_generation(registry: &Registry) -> Result<u64, TrainError> {
    Ok(registry
        .generation_numbers()?
        .last()
        .copied()
        .unwrap_or_default())
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
    // A key of its own: these weights are nobody's published generation yet.
    let answerer: Arc<dyn Answerer<D>> =
        Arc::new(ModelAnswerer::new(copy, u64::MAX - 1, "student"));
    let batched = Arc::new(BatchedAnswerer::start(answerer, amplify::local_batching()));
    let domain = *model.domain();
    let evaluator = Evaluator::new(
        domain,
        Some(batched as Arc<dyn Answerer<D>>),
        // No memo: held-out instances are reused every round, and memo entries live with the
        // instance, so a memo here would serve one round's student's answers to the next.
        EvalOptions {
            memo: false,
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
