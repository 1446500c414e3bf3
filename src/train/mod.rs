//! Amplify, distill, iterate: the training loop.
//!
//! A *run* lives in one directory:
//!
//! ```text
//! run/
//!   run.json        the run's settings (checked on resume: a run continues as it started)
//!   registry/       generations g000000 (random weights), g000001, …; CURRENT is the promoted X
//!   targets/        the training-target store (Parquet shards, see [`store`])
//! ```
//!
//! Round n (producing generation n+1):
//! 1. **Amplify.** Sample root questions on fresh instances at the curriculum's size; evaluate
//!    Amplify(H, X_n) on each (a [`TargetSource`]: in this process, or through a coordinator and
//!    its workers), and also on some of the subquestions H asked at each root, so X learns the
//!    questions it is asked inside trees. Commit the targets to the store in parts.
//! 2. **Distill.** Continue training the student on minibatches from the replay window (the newest
//!    targets).
//! 3. **Evaluate** the student on held-out questions against the ground truth, per difficulty
//!    bucket, at the curriculum's size and at the target size, with the amplification gap
//!    (accuracy of Amplify(H, student) minus the student's own).
//! 4. **Gate and publish.** Publish the student as generation n+1; promote it (so workers load it)
//!    unless its accuracy at the curriculum's size regresses by more than the tolerance against
//!    X_n's. A rejected generation stays in the registry for the record; X_n keeps amplifying.
//! 5. **Curriculum.** Once the promoted X's accuracy at the curriculum's size passes the threshold,
//!    the next round samples larger instances, up to the target size.
//!
//! # Ground truth stays out of targets
//!
//! Only evaluation and the explicit supervised baseline ([`amplify::GroundTruth`]) call
//! [`Domain::truth`]. Each [`RoundRecord`] carries the number of ground-truth calls made while its
//! targets were produced, which the isolation test checks is zero for amplification.
//!
//! # Resume
//!
//! Everything a round decides is a function of (run seed, round, index), and everything it
//! finishes is committed atomically: target parts to the store, generations to the registry. A
//! restarted run reads the newest generation, skips the target parts of its round that are already
//! committed, and goes on; it loses no committed target and writes none twice. (The optimiser's
//! moment estimates are not saved: a resumed student restarts Adam from its weights.)

pub mod amplify;
pub mod report;
pub mod store;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use amplify::{GroundTruth, LocalAmplifier, Produced, RemoteAmplifier, TargetSource, Task};
use store::{TargetOrigin, TargetRow, TargetStore};

use crate::answerer::Answerer;
use crate::domain::{self, Domain, Instance};
use crate::eval::{Budget, EvalOptions, Evaluator, Mode};
use crate::fsutil;
use crate::model::answerer::ModelAnswerer;
use crate::model::config::ModelConfig;
use crate::model::distill::{self, Accuracy, Example, ReplayBuffer, TrainConfig, Trainer};
use crate::model::generation::{self, GenerationError};
use crate::model::{Model, ModelError};
use crate::registry::{Manifest, Registry, RegistryError};
use crate::rng::Rng;
use crate::worker::batcher::BatchedAnswerer;

/// The run settings format this build writes and reads.
pub const RUN_FORMAT: u32 = 1;
pub const RUN_FILE: &str = "run.json";

/// Held-out instances are generated from seeds at or above this; training seeds stay below.
const HELDOUT_SEED_BASE: u64 = 1 << 62;
/// Held-out questions per held-out instance.
const HELDOUT_PER_INSTANCE: usize = 8;

/// A run's settings, fixed when it starts (`run.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub format: u32,
    pub domain: String,
    /// Targets from the ground truth instead of amplification (the baseline).
    pub supervised: bool,
    pub seed: u64,
    /// Curriculum: instance sizes from `start_size` up to `target_size` in steps of `size_step`,
    /// advancing when held-out accuracy at the current size reaches `advance_at`.
    pub start_size: usize,
    pub target_size: usize,
    pub size_step: usize,
    pub advance_at: f64,
    /// Within each size, also raise the questions' difficulty one level at a time (starting at
    /// the easiest), by the same threshold: H's decompositions make a level's targets right only
    /// once X is right one level below, so training on levels X cannot support yet mostly
    /// teaches it wrong answers.
    pub difficulty_curriculum: bool,
    /// Root questions amplified per round.
    pub roots_per_round: usize,
    /// Below each root, a random path of subquestions this many levels deep is amplified too.
    pub descent: usize,
    /// Roots per committed store part.
    pub roots_per_part: usize,
    /// Optimiser steps per round.
    pub steps_per_round: usize,
    /// Held-out questions per evaluated size.
    pub heldout: usize,
    /// A student whose accuracy falls more than this below X_n's is not promoted.
    pub gate_tolerance: f64,
    pub model: ModelConfig,
    pub train: TrainConfig,
}

impl RunConfig {
    /// Checks the settings against the domain; the message names the offending setting.
    pub fn check<D: Domain>(&self, domain: &D) -> Result<(), String> {
        if self.format != RUN_FORMAT {
            return Err(format!(
                "run format {} (this build reads {RUN_FORMAT})",
                self.format
            ));
        }
        if self.domain != D::KIND.name() {
            return Err(format!("the run is for domain {}", self.domain));
        }
        for size in [self.start_size, self.target_size] {
            domain::check_size_of(domain, size).map_err(|e| e.to_string())?;
        }
        if self.start_size > self.target_size {
            return Err(format!(
                "start size {} is above the target size {}",
                self.start_size, self.target_size
            ));
        }
        let positive = [
            ("size step", self.size_step),
            ("roots per round", self.roots_per_round),
            ("roots per part", self.roots_per_part),
            ("steps per round", self.steps_per_round),
            ("held-out questions", self.heldout),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{name} must be at least 1"));
        }
        if !(0.0..=1.0).contains(&self.advance_at) || !(0.0..=1.0).contains(&self.gate_tolerance) {
            return Err(format!(
                "the curriculum threshold ({}) and gate tolerance ({}) must lie in 0..=1",
                self.advance_at, self.gate_tolerance
            ));
        }
        if self.seed >= HELDOUT_SEED_BASE {
            return Err(format!("seed must be below 2^62, got {}", self.seed));
        }
        self.model.check_for(domain)
    }

    fn parts_per_round(&self) -> u32 {
        self.roots_per_round.div_ceil(self.roots_per_part) as u32
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Generation(#[from] GenerationError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("{path}: {message}")]
    Run { path: PathBuf, message: String },
    #[error("producing targets: {0}")]
    Source(String),
}

/// When to stop. Limits count the whole run, so re-running the same command after a crash
/// finishes the same run.
#[derive(Clone, Copy, Debug, Default)]
pub struct StopAt {
    /// Total rounds.
    pub rounds: Option<u64>,
    /// Held-out accuracy of the promoted generation at the target size.
    pub accuracy: Option<f64>,
    /// Total wall time spent in rounds.
    pub wall: Option<Duration>,
}

/// One round's outcome: a row of the per-generation table, also stored in the generation's
/// manifest metrics.
#[derive(Clone, Debug, PartialEq)]
pub struct RoundRecord {
    pub generation: u64,
    /// The round that trained it (`None` for the random generation 0).
    pub round: Option<u64>,
    /// The generation that produced this round's targets.
    pub amplified_by: Option<u64>,
    /// Instance size of this round's targets, and of the next round's.
    pub size: usize,
    pub next_size: usize,
    /// The difficulty curriculum's cap on root questions this round and the next (if enabled).
    pub max_difficulty: Option<u32>,
    pub next_max_difficulty: Option<u32>,
    /// Targets committed this round (unknown answers are not targets), and in the run so far.
    pub targets: u64,
    pub unknown: u64,
    pub targets_total: u64,
    /// Optimiser steps in the run so far.
    pub steps: u64,
    pub loss: f64,
    /// Held-out accuracy at this round's size and at the target size.
    pub accuracy: f64,
    pub accuracy_target: f64,
    /// Accuracy of Amplify(H, this generation) at the target size, and its gap to the model alone.
    pub amplified_target: f64,
    pub gap: f64,
    /// Held-out accuracy at the target size per difficulty bucket.
    pub by_difficulty: BTreeMap<u32, f64>,
    pub promoted: bool,
    /// Wall time of the run so far (rounds only; time a killed run was down is not counted).
    pub wall_seconds: f64,
    /// Ground-truth calls made while this round's targets were produced.
    pub truth_calls_in_targets: u64,
}

impl RoundRecord {
    fn to_metrics(&self) -> BTreeMap<String, f64> {
        let mut m = BTreeMap::new();
        if let Some(r) = self.round {
            m.insert("round".into(), r as f64);
        }
        if let Some(g) = self.amplified_by {
            m.insert("amplified_by".into(), g as f64);
        }
        if let Some(d) = self.max_difficulty {
            m.insert("max_difficulty".into(), d as f64);
        }
        if let Some(d) = self.next_max_difficulty {
            m.insert("next_max_difficulty".into(), d as f64);
        }
        for (k, v) in [
            ("size", self.size as f64),
            ("next_size", self.next_size as f64),
            ("targets", self.targets as f64),
            ("unknown", self.unknown as f64),
            ("targets_total", self.targets_total as f64),
            ("loss", self.loss),
            ("accuracy", self.accuracy),
            ("accuracy_target", self.accuracy_target),
            ("amplified_target", self.amplified_target),
            ("gap", self.gap),
            ("promoted", self.promoted as u8 as f64),
            ("wall_seconds", self.wall_seconds),
            ("truth_calls_in_targets", self.truth_calls_in_targets as f64),
        ] {
            if v.is_finite() {
                m.insert(k.into(), v);
            }
        }
        for (d, acc) in &self.by_difficulty {
            m.insert(format!("accuracy_target_d{d}"), *acc);
        }
        m
    }

    /// Reads a record back from a generation's manifest.
    pub fn from_manifest(manifest: &Manifest) -> Option<Self> {
        let m = &manifest.metrics;
        let get = |k: &str| m.get(k).copied();
        let by_difficulty = m
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("accuracy_target_d")?.parse().ok()?, *v)))
            .collect();
        Some(Self {
            generation: manifest.generation,
            round: get("round").map(|r| r as u64),
            amplified_by: get("amplified_by").map(|g| g as u64),
            size: get("size")? as usize,
            next_size: get("next_size")? as usize,
            max_difficulty: get("max_difficulty").map(|d| d as u32),
            next_max_difficulty: get("next_max_difficulty").map(|d| d as u32),
            targets: get("targets").unwrap_or(0.0) as u64,
            unknown: get("unknown").unwrap_or(0.0) as u64,
            targets_total: get("targets_total").unwrap_or(0.0) as u64,
            steps: manifest.training_steps,
            loss: get("loss").unwrap_or(f64::NAN),
            accuracy: get("accuracy")?,
            accuracy_target: get("accuracy_target")?,
            amplified_target: get("amplified_target").unwrap_or(f64::NAN),
            gap: get("gap").unwrap_or(f64::NAN),
            by_difficulty,
            promoted: get("promoted") == Some(1.0),
            wall_seconds: get("wall_seconds").unwrap_or(0.0),
            truth_calls_in_targets: get("truth_calls_in_targets").unwrap_or(0.0) as u64,
        })
    }
}

/// What the loop reports as it goes, for progress bars.
#[derive(Clone, Debug)]
pub enum Progress {
    /// A round begins.
    Round {
        round: u64,
        size: usize,
        amplifier: u64,
    },
    /// Target roots produced so far this round (resumed parts included).
    Targets { done: usize, total: usize },
    /// Optimiser steps taken so far this round.
    Training {
        done: usize,
        total: usize,
        loss: f64,
    },
    /// Held-out evaluation is running.
    Evaluating,
    /// A generation was published (also generation 0 at the start).
    Published(RoundRecord),
}

/// An open run directory: settings, registry and target store.
pub struct Run<D: Domain + Copy> {
    domain: D,
    dir: PathBuf,
    config: RunConfig,
    registry: Registry,
    store: TargetStore,
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

    /// Produces and commits the target parts of `round` not committed yet; returns the new rows
    /// and the number of unknown (dropped) answers.
    async fn produce(
        &mut self,
        source: &dyn TargetSource<D>,
        round: u64,
        size: usize,
        cap: Option<u32>,
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
                    .map(|i| self.root_task(round, i as u64, size, cap))
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
            difficulty: d.difficulty(task.instance.facts(), &task.question),
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

    /// Root question `index` of `round`: a fresh instance from a seed derived from the run seed.
    /// Under a difficulty cap, questions are drawn until one is at most the cap (the easiest of a
    /// bounded number of draws otherwise).
    fn root_task(
        &self,
        round: u64,
        index: u64,
        size: usize,
        cap: Option<u32>,
    ) -> Result<Task<D>, TrainError> {
        let mut rng = Rng::derived(self.config.seed.wrapping_add(round << 40), index);
        let seed = rng.next_u64() % HELDOUT_SEED_BASE;
        let instance = Instance::generate(&self.domain, size, seed)
            .map_err(|e| TrainError::Config(e.to_string()))?;
        let d = &self.domain;
        let mut question = d.sample_question(instance.facts(), &mut rng);
        if let Some(cap) = cap {
            let mut best = d.difficulty(instance.facts(), &question);
            for _ in 0..256 {
                if best <= cap {
                    break;
                }
                let q = d.sample_question(instance.facts(), &mut rng);
                let difficulty = d.difficulty(instance.facts(), &q);
                if difficulty < best {
                    best = difficulty;
                    question = q;
                }
            }
        }
        Ok(Task {
            size: size as u32,
            seed,
            question,
            instance,
        })
    }

    /// A stored row as a training example (its facts parsed and shared per instance).
    fn example(
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

/// Parsed instances by id, so that the replay window shares them.
struct InstanceCache<D: Domain>(HashMap<String, Arc<Instance<D>>>);

impl<D: Domain> Default for InstanceCache<D> {
    fn default() -> Self {
        Self(HashMap::new())
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

fn by_difficulty(acc: &Accuracy) -> BTreeMap<u32, f64> {
    acc.by_difficulty
        .iter()
        .map(|(d, (c, t))| (*d, *c as f64 / (*t).max(1) as f64))
        .collect()
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

/// The fields in which two run settings differ, for the resume error.
fn differences(a: &RunConfig, b: &RunConfig) -> String {
    let (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) =
        (serde_json::to_value(a), serde_json::to_value(b))
    else {
        return "unknown difference".to_string();
    };
    a.iter()
        .filter(|(k, v)| b.get(*k) != Some(v))
        .map(|(k, v)| {
            format!(
                "{k}: was {v}, now {}",
                b.get(k).unwrap_or(&serde_json::Value::Null)
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}
