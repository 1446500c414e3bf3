//! The trainer's state after each round, so that a resumed run continues exactly: the student's
//! weights (which are not published: the teacher is), Adam's moment estimates, the teacher's
//! weights, the step count and the minibatch sampler's position.
//!
//! ```text
//! run/checkpoints/
//!   g000005.safetensors   tensors: student/…, adam.m/…, adam.v/…, teacher/…
//!   g000005.json          {format, generation, counters: {steps, rng}, sha256, bytes}
//! ```
//!
//! The checkpoint of generation n is written (atomically, the tensors before the JSON that
//! vouches for them) *before* generation n is published, and older checkpoints are removed only
//! after: whenever a crash strikes, the newest published generation has its checkpoint. On read,
//! the tensors' SHA-256 must match the JSON's and every tensor must be present, shaped right and
//! finite.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::TrainError;
use crate::domain::Domain;
use crate::fsutil;
use crate::model::distill::{TrainConfig, Trainer, TrainerCounters};
use crate::model::Model;

/// The checkpoint format this build writes and reads.
const CHECKPOINT_FORMAT: u32 = 1;
/// Largest checkpoint JSON read (it is a few hundred bytes).
const MAX_JSON_BYTES: u64 = 64 << 10;

#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckpointFile {
    format: u32,
    generation: u64,
    counters: TrainerCounters,
    sha256: String,
    bytes: u64,
}

/// A run's checkpoint directory.
pub(super) struct Checkpoints {
    dir: PathBuf,
}

impl Checkpoints {
    /// Opens (creating) the directory, removing what a crash mid-write left behind.
    pub(super) fn open(dir: PathBuf) -> Result<Self, TrainError> {
        std::fs::create_dir_all(&dir).map_err(|e| run_error(&dir, e))?;
        let entries = std::fs::read_dir(&dir).map_err(|e| run_error(&dir, e))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.contains(".tmp-") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(Self { dir })
    }

    fn tensors_path(&self, generation: u64) -> PathBuf {
        self.dir.join(format!("g{generation:06}.safetensors"))
    }

    fn json_path(&self, generation: u64) -> PathBuf {
        self.dir.join(format!("g{generation:06}.json"))
    }

    /// Writes `trainer`'s state as the checkpoint of `generation`.
    pub(super) fn save<D: Domain + Clone>(
        &self,
        generation: u64,
        trainer: &Trainer<D>,
    ) -> Result<(), TrainError> {
        let path = self.tensors_path(generation);
        let tmp = self.dir.join(format!(
            "{}{}",
            fsutil::tmp_prefix(&path.file_name().unwrap_or_default().to_string_lossy()),
            std::process::id()
        ));
        let tensors = trainer.state_tensors();
        // A diverged run (NaN weights or moments) could never resume from it: say so now.
        if let Some((name, _)) = tensors
            .iter()
            .find(|(_, t)| t.isfinite().all().int64_value(&[]) == 0)
        {
            return Err(TrainError::Run {
                path: path.clone(),
                message: format!(
                    "training diverged: {name} holds values that are not finite (lower the \
                     learning rate or the gradient clip)"
                ),
            });
        }
        let written = tch::Tensor::write_safetensors(&tensors, &tmp)
            .map_err(|e| TrainError::Run {
                path: tmp.clone(),
                message: format!("writing the checkpoint: {e}"),
            })
            .and_then(|()| fsutil::sync_file(&tmp).map_err(|e| run_error(&tmp, e)))
            .and_then(|()| fsutil::sha256_file(&tmp).map_err(|e| run_error(&tmp, e)))
            .and_then(|hash| {
                std::fs::rename(&tmp, &path).map_err(|e| run_error(&path, e))?;
                fsutil::sync_dir(&self.dir).map_err(|e| run_error(&self.dir, e))?;
                Ok(hash)
            });
        let (sha256, bytes) = match written {
            Ok(hash) => hash,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        let file = CheckpointFile {
            format: CHECKPOINT_FORMAT,
            generation,
            counters: trainer.counters(),
            sha256,
            bytes,
        };
        let json = serde_json::to_vec_pretty(&file).expect("a checkpoint serialises");
        let json_path = self.json_path(generation);
        fsutil::write_atomic(&json_path, &json).map_err(|e| run_error(&json_path, e))
    }

    /// The trainer of `generation`'s checkpoint, its student in `model` (any weights of the
    /// run's architecture); `None` if there is no checkpoint of it.
    pub(super) fn load<D: Domain + Clone>(
        &self,
        generation: u64,
        model: Model<D>,
        config: TrainConfig,
    ) -> Result<Option<Trainer<D>>, TrainError> {
        let json_path = self.json_path(generation);
        let bytes = match fsutil::read_small(&json_path, MAX_JSON_BYTES) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(run_error(&json_path, e)),
        };
        let bad = |path: &Path, message: String| TrainError::Run {
            path: path.to_path_buf(),
            message,
        };
        let file: CheckpointFile = serde_json::from_slice(&bytes)
            .map_err(|e| bad(&json_path, format!("not a valid checkpoint: {e}")))?;
        if file.format != CHECKPOINT_FORMAT || file.generation != generation {
            return Err(bad(
                &json_path,
                format!(
                    "checkpoint format {} of generation {} (expected format {CHECKPOINT_FORMAT}, \
                     generation {generation})",
                    file.format, file.generation
                ),
            ));
        }
        let path = self.tensors_path(generation);
        let (sha256, size) = fsutil::sha256_file(&path).map_err(|e| run_error(&path, e))?;
        if sha256 != file.sha256 || size != file.bytes {
            return Err(bad(
                &path,
                format!(
                    "the checkpoint is damaged: {size} bytes with SHA-256 {sha256}, its record \
                     says {} bytes with {}",
                    file.bytes, file.sha256
                ),
            ));
        }
        if file.counters.rng == [0; 4] {
            return Err(bad(
                &json_path,
                "the sampler's state is all zero".to_string(),
            ));
        }
        let tensors = tch::Tensor::read_safetensors(&path)
            .map_err(|e| bad(&path, format!("unreadable checkpoint: {e}")))?;
        let trainer = Trainer::restore(model, config, tensors, &file.counters)
            .map_err(|e| bad(&path, e.to_string()))?;
        Ok(Some(trainer))
    }

    /// Removes the checkpoints of generations before `keep`.
    pub(super) fn prune(&self, keep: u64) -> Result<(), TrainError> {
        let entries = std::fs::read_dir(&self.dir).map_err(|e| run_error(&self.dir, e))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let generation = name
                .strip_prefix('g')
                .and_then(|rest| rest.split('.').next())
                .and_then(|n| n.parse::<u64>().ok());
            if generation.is_some_and(|g| g < keep) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(())
    }
}

fn run_error(path: &Path, e: std::io::Error) -> TrainError {
    TrainError::Run {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::permutation::Permutation;
    use crate::model::config::{ModelConfig, Preset};
    use crate::model::distill::supervised_examples;

    fn trainer(seed: u64) -> Trainer<Permutation> {
        let d = Permutation;
        let model = Model::new(
            d,
            ModelConfig::preset(&d, Preset::Tiny),
            tch::Device::Cpu,
            seed,
        );
        let config = TrainConfig {
            ema_horizon: 10,
            ..TrainConfig::default()
        };
        Trainer::new(model.unwrap(), config).unwrap()
    }

    #[test]
    fn a_checkpoint_restores_the_trainer_exactly_and_refuses_damage() {
        let dir = std::env::temp_dir().join(format!("hch-checkpoint-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let checkpoints = Checkpoints::open(dir.clone()).unwrap();
        let examples = supervised_examples(&Permutation, 6, 0, 4, 8).unwrap();
        let batch: Vec<_> = examples.iter().collect();
        let mut original = trainer(1);
        for _ in 0..3 {
            original.step(&batch);
        }
        checkpoints.save(4, &original).unwrap();
        assert!(checkpoints
            .load(3, trainer(2).into_model(), original_config())
            .unwrap()
            .is_none());

        // Restored into a model with other weights, it continues as the original does.
        let mut restored = checkpoints
            .load(4, trainer(2).into_model(), original_config())
            .unwrap()
            .expect("the checkpoint of generation 4");
        assert_eq!(restored.counters(), original.counters());
        original.step(&batch);
        restored.step(&batch);
        for ((name, a), (_, b)) in original
            .state_tensors()
            .iter()
            .zip(restored.state_tensors().iter())
        {
            assert!(a.equal(b), "{name}");
        }

        // Older checkpoints go once a newer generation is published.
        checkpoints.save(5, &original).unwrap();
        checkpoints.prune(5).unwrap();
        assert!(!dir.join("g000004.json").exists() && dir.join("g000005.json").exists());

        // One flipped byte in the tensors: refused, naming the file.
        let path = dir.join("g000005.safetensors");
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let err = checkpoints
            .load(5, trainer(2).into_model(), original_config())
            .err()
            .expect("a damaged checkpoint is refused")
            .to_string();
        assert!(
            err.contains("damaged") && err.contains("g000005.safetensors"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn original_config() -> TrainConfig {
        TrainConfig {
            ema_horizon: 10,
            ..TrainConfig::default()
        }
    }
}
