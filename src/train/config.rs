//! A run's settings (`run.json`) and when to stop.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::decide::Curriculum;

use crate::domain::{self, Domain};
use crate::model::config::ModelConfig;
use crate::model::distill::TrainConfig;

/// The run settings format this build writes and reads.
pub const RUN_FORMAT: u32 = 2;
pub const RUN_FILE: &str = "run.json";

/// Held-out instances are generated from seeds at or above this; training seeds stay below.
pub(super) const HELDOUT_SEED_BASE: u64 = 1 << 62;
/// Held-out questions per held-out instance.
pub(super) const HELDOUT_PER_INSTANCE: usize = 8;

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
    /// advancing when the teacher agrees with the amplified targets of a round on at least
    /// `advance_at` of its root questions (the paper uses 85%).
    pub start_size: usize,
    pub target_size: usize,
    pub size_step: usize,
    pub advance_at: f64,
    /// Within each size, also raise the questions' difficulty one level at a time (starting at
    /// the easiest), by the same rule: H's decompositions make a level's targets right only once
    /// X is right one level below, so training on levels X cannot support yet mostly teaches it
    /// wrong answers. Only for domains whose difficulty shows in a question's text
    /// ([`Domain::visible_difficulty`]: permutation, wildcard); elsewhere it would take a solver.
    pub difficulty_curriculum: bool,
    /// Root questions amplified per round.
    pub roots_per_round: usize,
    /// Root questions asked about each fresh instance (as the paper asks many per instance: the
    /// trees share a memo, and a batch encodes the facts once).
    pub questions_per_instance: usize,
    /// Answer every model query of the run in a forward pass of its own, so that the run is a
    /// function of its settings alone: the same targets and weights bit for bit on the same
    /// machine and thread count, on the CPU (libtorch's GPU kernels are not all deterministic),
    /// whatever the timing of batches (see
    /// [`ModelAnswerer::one_by_one`](crate::model::answerer::ModelAnswerer::one_by_one)).
    /// Slower; for the in-process target source only.
    pub reproducible: bool,
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
        if self.difficulty_curriculum {
            let facts = domain
                .generate(self.start_size, 0)
                .map_err(|e| e.to_string())?;
            let question = domain.sample_question(&facts, &mut crate::rng::Rng::new(0));
            if domain.visible_difficulty(&question).is_none() {
                return Err(format!(
                    "the difficulty curriculum needs a difficulty that shows in the question's \
                     text, and {}'s does not (it takes a solver); use the size curriculum alone",
                    self.domain
                ));
            }
        }
        let positive = [
            ("size step", self.size_step),
            ("roots per round", self.roots_per_round),
            ("questions per instance", self.questions_per_instance),
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

    /// The settings the curriculum decides by.
    pub fn curriculum(&self) -> Curriculum {
        Curriculum {
            start_size: self.start_size,
            target_size: self.target_size,
            size_step: self.size_step,
            advance_at: self.advance_at,
            difficulty_curriculum: self.difficulty_curriculum,
        }
    }

    pub(super) fn parts_per_round(&self) -> u32 {
        self.roots_per_round.div_ceil(self.roots_per_part) as u32
    }
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

/// The fields in which two run settings differ, for the resume error.
pub(super) fn differences(a: &RunConfig, b: &RunConfig) -> String {
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
