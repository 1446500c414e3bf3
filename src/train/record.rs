//! What a round leaves behind ([`RoundRecord`]) and what the loop reports as it goes
//! ([`Progress`]).
//!
//! A generation's record is stored in its registry manifest (the `record` field, whose schema
//! belongs to this module), so the per-generation table, the curriculum's next stage and the gate's
//! verdict survive a restart and can be read by `hch report` or any JSON reader.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::decide::Stage;
use super::TrainError;
use crate::model::distill::Accuracy;
use crate::registry::{Manifest, Registry, MANIFEST_FILE};

/// One round's outcome: a row of the per-generation table, stored in the generation's manifest.
/// A value that may be undefined is an `Option` (JSON has no NaN).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoundRecord {
    /// Not stored: the manifest's own `generation` (unknown until publishing allocates it).
    #[serde(skip)]
    pub generation: u64,
    /// The round that trained it (`None` for the random generation 0).
    pub round: Option<u64>,
    /// The generation that produced this round's targets (`None` for the ground truth).
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
    /// Optimiser steps in the run so far. Not stored: the manifest's `training_steps`.
    #[serde(skip)]
    pub steps: u64,
    /// Mean training loss of the round (`None` for generation 0, or if it was not finite).
    pub loss: Option<f64>,
    /// What the loop decided by (H and the models only, never the truth; `None` for generation
    /// 0): the agreement of the teacher that amplified this round (X_n) with the round's amplified
    /// targets on its fresh root questions (the curriculum's measure), and the gate's: this
    /// generation's and X_n's agreement with Amplify(H, X_n) on held-out questions at the stage.
    pub agreement: Option<f64>,
    pub gate_agreement: Option<f64>,
    pub gate_reference: Option<f64>,
    /// Reported, never decided by: held-out accuracy against the truth at this round's stage and
    /// at the target size.
    pub accuracy: f64,
    pub accuracy_target: f64,
    /// Accuracy of Amplify(H, this generation) at the target size, and its gap to the model alone
    /// (`None` for generation 0).
    pub amplified_target: Option<f64>,
    pub gap: Option<f64>,
    /// Held-out accuracy at the target size per difficulty bucket.
    pub by_difficulty: BTreeMap<u32, f64>,
    pub promoted: bool,
    /// Wall time of the run so far (rounds only; time a killed run was down is not counted).
    pub wall_seconds: f64,
    /// Ground-truth calls (true answers, or difficulties only a solver knows) made while this
    /// round's targets were produced.
    pub truth_calls_in_targets: u64,
}

impl RoundRecord {
    /// The stage the next round trains at (chosen by the curriculum after this round).
    pub fn next_stage(&self) -> Stage {
        Stage {
            size: self.next_size,
            max_difficulty: self.next_max_difficulty,
        }
    }

    /// The record as a manifest stores it.
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("a RoundRecord serialises")
    }

    /// Reads a record back from a generation's manifest.
    pub fn from_manifest(manifest: &Manifest) -> Result<Self, serde_json::Error> {
        let record = Self::deserialize(&manifest.record)?;
        Ok(Self {
            generation: manifest.generation,
            steps: manifest.training_steps,
            ..record
        })
    }
}

/// The record of `manifest`, a generation of `registry`. A manifest without a readable record is
/// an error naming it: a run's registry holds only generations the train module published.
pub(super) fn read_record(
    registry: &Registry,
    manifest: &Manifest,
) -> Result<RoundRecord, TrainError> {
    RoundRecord::from_manifest(manifest).map_err(|e| TrainError::Run {
        path: registry
            .generation_dir(manifest.generation)
            .join(MANIFEST_FILE),
        message: format!("no readable training round record: {e}"),
    })
}

/// The records of every generation in `registry`, oldest first.
pub(super) fn read_records(registry: &Registry) -> Result<Vec<RoundRecord>, TrainError> {
    registry
        .list()?
        .iter()
        .map(|manifest| read_record(registry, manifest))
        .collect()
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
    Published(Box<RoundRecord>),
}

/// `x` if it is a number (a loss or accuracy of nothing is NaN).
pub(super) fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

pub(super) fn by_difficulty(acc: &Accuracy) -> BTreeMap<u32, f64> {
    acc.by_difficulty
        .iter()
        .map(|(d, (c, t))| (*d, *c as f64 / (*t).max(1) as f64))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::MANIFEST_FORMAT;

    fn record() -> RoundRecord {
        RoundRecord {
            generation: 0,
            round: Some(4),
            amplified_by: Some(3),
            size: 6,
            next_size: 8,
            max_difficulty: Some(2),
            next_max_difficulty: None,
            targets: 500,
            unknown: 12,
            targets_total: 2400,
            steps: 0,
            loss: Some(0.75),
            agreement: Some(0.9),
            gate_agreement: Some(0.8),
            gate_reference: Some(0.7),
            accuracy: 0.875,
            accuracy_target: 0.5,
            amplified_target: None,
            gap: None,
            by_difficulty: BTreeMap::from([(0, 1.0), (3, 0.25)]),
            promoted: true,
            wall_seconds: 12.5,
            truth_calls_in_targets: 0,
        }
    }

    fn manifest(record: serde_json::Value) -> Manifest {
        Manifest {
            format: MANIFEST_FORMAT,
            domain: "permutation".into(),
            generation: 5,
            parent: Some(4),
            config: serde_json::Value::Null,
            weights_file: "weights.safetensors".into(),
            weights_sha256: "0".repeat(64),
            weights_bytes: 1,
            training_steps: 900,
            record,
            created_unix_ms: 0,
            note: String::new(),
        }
    }

    #[test]
    fn a_record_reads_back_from_its_manifest_with_the_manifests_numbers() {
        let stored = record().to_value();
        // Through the JSON text, as the registry stores it.
        let stored: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&stored).unwrap()).unwrap();
        let read = RoundRecord::from_manifest(&manifest(stored)).unwrap();
        assert_eq!(
            read,
            RoundRecord {
                generation: 5,
                steps: 900,
                ..record()
            }
        );
    }

    #[test]
    fn undefined_values_are_null_and_the_manifests_numbers_are_not_stored() {
        let stored = record().to_value();
        assert_eq!(stored["amplified_target"], serde_json::Value::Null);
        assert_eq!(stored["gap"], serde_json::Value::Null);
        assert_eq!(stored["next_max_difficulty"], serde_json::Value::Null);
        assert_eq!(stored["loss"], serde_json::json!(0.75));
        assert!(stored.get("generation").is_none() && stored.get("steps").is_none());
        assert_eq!(finite(f64::NAN), None);
        assert_eq!(finite(f64::INFINITY), None);
        assert_eq!(finite(0.5), Some(0.5));
    }

    #[test]
    fn a_record_with_unknown_or_missing_fields_is_refused() {
        let mut stored = record().to_value();
        stored["surprise"] = serde_json::json!(1);
        let err = RoundRecord::from_manifest(&manifest(stored)).unwrap_err();
        assert!(err.to_string().contains("surprise"), "{err}");

        let mut stored = record().to_value();
        stored.as_object_mut().unwrap().remove("accuracy");
        let err = RoundRecord::from_manifest(&manifest(stored)).unwrap_err();
        assert!(err.to_string().contains("accuracy"), "{err}");

        assert!(RoundRecord::from_manifest(&manifest(serde_json::Value::Null)).is_err());
    }
}
