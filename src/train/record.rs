//! What a round leaves behind ([`RoundRecord`]) and what the loop reports as it goes
//! ([`Progress`]).

use std::collections::BTreeMap;

use super::decide::Stage;
use crate::model::distill::Accuracy;
use crate::registry::Manifest;

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
    /// The stage this generation's round trained at.
    pub fn stage(&self) -> Stage {
        Stage {
            size: self.size,
            max_difficulty: self.max_difficulty,
        }
    }

    /// The stage the next round trains at (chosen by the curriculum after this round).
    pub fn next_stage(&self) -> Stage {
        Stage {
            size: self.next_size,
            max_difficulty: self.next_max_difficulty,
        }
    }

    pub(super) fn to_metrics(&self) -> BTreeMap<String, f64> {
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

pub(super) fn by_difficulty(acc: &Accuracy) -> BTreeMap<u32, f64> {
    acc.by_difficulty
        .iter()
        .map(|(d, (c, t))| (*d, *c as f64 / (*t).max(1) as f64))
        .collect()
}
