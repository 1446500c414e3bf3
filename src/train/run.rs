//! An open run: its directory, settings, registry and target store, and generation 0. The rounds
//! are in [`round`](super::round).

use std::path::{Path, PathBuf};

use super::checkpoint::Checkpoints;
use super::config::{differences, RUN_FILE};
use super::decide::{self, Stage};
use super::record::{by_difficulty, read_record, read_records};
use super::store::TargetStore;
use super::{Progress, RoundRecord, RunConfig, TrainError};
use crate::domain::Domain;
use crate::fsutil;
use crate::model::distill;
use crate::model::generation;
use crate::model::Model;
use crate::registry::{Manifest, Registry};

/// An open run directory: settings, registry and target store.
pub struct Run<D: Domain + Copy> {
    pub(super) domain: D,
    pub(super) dir: PathBuf,
    pub(super) config: RunConfig,
    pub(super) registry: Registry,
    pub(super) store: TargetStore,
    pub(super) checkpoints: Checkpoints,
}

impl<D: Domain + Copy> Run<D> {
    /// Opens the run in `dir`, creating it with `config` if it is new (generation 0 comes with
    /// [`Run::initialise`]). An existing run must have been started with the same settings.
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
        let checkpoints = Checkpoints::open(dir.join("checkpoints"))?;
        Ok(Self {
            domain,
            dir,
            config,
            registry,
            store,
            checkpoints,
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

    /// Makes sure generation 0 exists and something is promoted; returns the newest manifest.
    /// Call before starting workers that serve this run's registry.
    pub fn initialise(&self, progress: &mut dyn FnMut(Progress)) -> Result<Manifest, TrainError> {
        let manifests = self.registry.list()?;
        if let Some(latest) = manifests.last() {
            // A crash between publishing a generation that passed its gate and promoting it.
            if read_record(&self.registry, latest)?.promoted
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
        let curriculum = self.config.curriculum();
        let questions = self.heldout_questions(Stage {
            size: curriculum.start_size,
            max_difficulty: None,
        })?;
        let easiest = self.difficulty_range(&questions).map(|(e, _)| e);
        let stage = decide::first_stage(&curriculum, easiest);
        // The report on the random weights, against the truth.
        let heldout = self.heldout(stage)?;
        let target = self.heldout(Stage {
            size: self.config.target_size,
            max_difficulty: None,
        })?;
        let accuracy = distill::evaluate(&model, &heldout, 512);
        let at_target = distill::evaluate(&model, &target, 512);
        let record = RoundRecord {
            generation: 0,
            round: None,
            amplified_by: None,
            size: stage.size,
            next_size: stage.size,
            max_difficulty: stage.max_difficulty,
            next_max_difficulty: stage.max_difficulty,
            targets: 0,
            unknown: 0,
            targets_total: 0,
            steps: 0,
            loss: None,
            agreement: None,
            gate_agreement: None,
            gate_reference: None,
            accuracy: accuracy.fraction(),
            accuracy_target: at_target.fraction(),
            amplified_target: None,
            gap: None,
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
            record.to_value(),
            "random initial weights",
        )?;
        self.registry.promote(manifest.generation)?;
        progress(Progress::Published(Box::new(RoundRecord {
            generation: manifest.generation,
            ..record
        })));
        Ok(manifest)
    }

    /// The per-generation records of this run so far, oldest first.
    pub fn records(&self) -> Result<Vec<RoundRecord>, TrainError> {
        read_records(&self.registry)
    }
}
